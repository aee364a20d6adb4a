//! One request, one answer: what each [`Request`] (other than a watch) reads or writes, with
//! the client's grant checked first.

// An `AppError` is the answer itself, sent as it is: boxing it would only move it.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use super::Access;
use crate::{Daemon, Placement};
use domsync_node::WriteError;
use domsync_proto::app::{
    Answer, AppError, AtLeast, Continuation, DomainState, Page, Request, Scan, Txn, MAX_CONDITIONS,
    MAX_PAGE_BYTES, MAX_PAGE_ENTRIES, MAX_WAIT_MS, PROTOCOL_VERSION,
};
use domsync_proto::gateway::Served;
use domsync_proto::model::{DomainId, IssuerKey, NodeId, Role};
use domsync_store::{Domain, Read, StoreError};

/// Answers one request.
pub(super) async fn answer(daemon: &Daemon, access: &Access, req: Request) -> Answer {
    let result = match req {
        Request::Hello => Ok(hello(daemon, access)),
        Request::Get {
            domain,
            key,
            at_least,
        } => get(daemon, access, &domain, &key, at_least).await,
        Request::Scan(scan) => page(daemon, access, scan).await,
        Request::Txn(txn) => transaction(daemon, access, txn).await,
        Request::GetPolicy {
            domain,
            name,
            at_least,
        } => policy(daemon, access, domain, name, at_least).await,
        Request::GetCrl {
            domain,
            issuer,
            delta,
            at_least,
        } => crl(daemon, access, domain, &issuer, delta, at_least).await,
        Request::Watch { .. } => Err(AppError::BadRequest(
            "a watch is served by the connection loop".into(),
        )),
    };
    match result {
        Ok(a) => a,
        Err(e) => Answer::Error(e),
    }
}

/// This node.
pub(super) fn me(daemon: &Daemon) -> NodeId {
    daemon.node().id().clone()
}

/// Who served a read.
pub(super) fn served<T>(daemon: &Daemon, read: &Read<T>) -> Served {
    Served {
        node: me(daemon),
        role: read.role,
        epoch: read.epoch.clone(),
        position: read.position.clone(),
    }
}

/// The domain's replica, when this client may read it and it is held here; otherwise
/// [`AppError::Forbidden`] (not granted and not held are told apart to no one).
pub(super) fn readable(
    daemon: &Daemon,
    access: &Access,
    domain: &DomainId,
) -> Result<Domain, AppError> {
    let forbidden = || AppError::Forbidden {
        domain: domain.clone(),
        node: me(daemon),
    };
    if !access.may_read(&daemon.config().apps, domain) {
        tracing::debug!(client = %access, domain = %domain, "application refused: domain not granted");
        return Err(forbidden());
    }
    if !matches!(daemon.placements().get(domain), Some(Placement::Serving(_))) {
        return Err(forbidden());
    }
    daemon
        .node()
        .replica(domain)
        .or_else(|| daemon.store().domain(domain).ok())
        .ok_or_else(forbidden)
}

/// A store failure on a read, as the client sees it.
pub(super) fn store_failed(daemon: &Daemon, e: StoreError) -> AppError {
    AppError::Unavailable(format!("node {}: {e}", me(daemon)))
}

/// The active this node knows for a domain it does not serve as active.
pub(super) fn known_active(daemon: &Daemon, domain: &DomainId) -> Option<NodeId> {
    if let Some(f) = daemon.node().follower_status(domain) {
        return Some(f.active);
    }
    let d = daemon.store().domain(domain).ok()?;
    let epoch = d.highest_epoch().ok()?;
    (epoch.term > 0 && epoch.node != *daemon.node().id()).then_some(epoch.node)
}

/// Waits until the domain's applied position reaches `at_least.lsn`, at most
/// `min(wait_ms, MAX_WAIT_MS)`; [`AppError::Behind`] when it does not.
pub(super) async fn wait_ready(
    daemon: &Daemon,
    d: &Domain,
    at_least: AtLeast,
) -> Result<(), AppError> {
    if at_least.lsn.0 == 0 {
        return Ok(());
    }
    let mut rx = d.subscribe();
    let wait = Duration::from_millis(u64::from(at_least.wait_ms.min(MAX_WAIT_MS)));
    let reached = rx.borrow_and_update().lsn >= at_least.lsn
        || matches!(
            tokio::time::timeout(wait, rx.wait_for(|p| p.lsn >= at_least.lsn)).await,
            Ok(Ok(_))
        );
    if reached {
        return Ok(());
    }
    let status = d.status().map_err(|e| store_failed(daemon, e))?;
    Err(AppError::Behind {
        domain: d.id().clone(),
        served: Served {
            node: me(daemon),
            role: status.role,
            epoch: status.epoch,
            position: status.position,
        },
        want: at_least.lsn,
    })
}

/// A read at least at `at_least`: [`AppError::Behind`] when the state read is older (the
/// position can only move forward between the wait and the read, unless the replica was
/// rewound).
fn check_read<T>(
    daemon: &Daemon,
    d: &Domain,
    read: &Read<T>,
    at_least: AtLeast,
) -> Result<(), AppError> {
    if read.position.lsn < at_least.lsn {
        return Err(AppError::Behind {
            domain: d.id().clone(),
            served: served(daemon, read),
            want: at_least.lsn,
        });
    }
    Ok(())
}

fn hello(daemon: &Daemon, access: &Access) -> Answer {
    let node = daemon.node();
    let apps = daemon.config().apps;
    let mut domains = Vec::new();
    for (name, placement) in daemon.placements() {
        if !matches!(placement, Placement::Serving(_)) || !access.may_read(&apps, &name) {
            continue;
        }
        let Some(d) = node
            .replica(&name)
            .or_else(|| daemon.store().domain(&name).ok())
        else {
            continue;
        };
        let Ok(status) = d.status() else {
            continue;
        };
        let follower = node.follower_status(&name);
        let active = match status.role {
            Role::Active => Some(me(daemon)),
            _ => known_active(daemon, &name),
        };
        domains.push(DomainState {
            writable: access.may_write(&apps, &name),
            domain: name,
            role: status.role,
            epoch: status.epoch,
            position: status.position,
            active,
            sync: follower.map(|f| f.status),
        });
    }
    Answer::Hello {
        protocol: PROTOCOL_VERSION,
        node: me(daemon),
        domains,
    }
}

async fn get(
    daemon: &Daemon,
    access: &Access,
    domain: &DomainId,
    key: &[u8],
    at_least: AtLeast,
) -> Result<Answer, AppError> {
    let d = readable(daemon, access, domain)?;
    wait_ready(daemon, &d, at_least).await?;
    let read = d.get_entry(key).map_err(|e| store_failed(daemon, e))?;
    check_read(daemon, &d, &read, at_least)?;
    Ok(Answer::Value {
        served: served(daemon, &read),
        entry: read.value,
    })
}

async fn page(daemon: &Daemon, access: &Access, scan: Scan) -> Result<Answer, AppError> {
    let d = readable(daemon, access, &scan.domain)?;
    wait_ready(daemon, &d, scan.at_least).await?;
    let limit = if scan.limit == 0 || scan.limit > MAX_PAGE_ENTRIES {
        MAX_PAGE_ENTRIES
    } else {
        scan.limit
    };
    let after = scan.continuation.as_ref().map(|c| c.after.as_slice());
    let read = d
        .scan(
            &scan.range,
            after,
            usize::try_from(limit).unwrap_or(usize::MAX),
            MAX_PAGE_BYTES,
            scan.keys_only,
        )
        .map_err(|e| store_failed(daemon, e))?;
    check_read(daemon, &d, &read, scan.at_least)?;
    let mut served = served(daemon, &read);
    if let Some(c) = &scan.continuation {
        if c.position != read.position {
            // The page was read at a later position: it is the page at the scan's position
            // when nothing in the rest of the range changed since.
            match d
                .changed_since(&c.position, &scan.range, &c.after)
                .map_err(|e| store_failed(daemon, e))?
            {
                Some(false) => served.position = c.position.clone(),
                Some(true) | None => {
                    return Err(AppError::ContinuationGone {
                        domain: scan.domain,
                        at: c.position.clone(),
                        now: read.position,
                    })
                }
            }
        }
    }
    let more = match (read.value.more, read.value.entries.last()) {
        (true, Some(last)) => Some(Continuation {
            after: last.key.clone(),
            position: served.position.clone(),
        }),
        _ => None,
    };
    Ok(Answer::Page(Page {
        served,
        entries: read.value.entries,
        more,
    }))
}

async fn transaction(daemon: &Daemon, access: &Access, txn: Txn) -> Result<Answer, AppError> {
    let domain = txn.domain;
    readable(daemon, access, &domain)?;
    if !access.may_write(&daemon.config().apps, &domain) {
        return Err(AppError::ReadOnly {
            domain,
            node: me(daemon),
        });
    }
    if txn.conditions.len() > MAX_CONDITIONS {
        return Err(AppError::BadRequest(format!(
            "{} conditions; a transaction may carry at most {MAX_CONDITIONS}",
            txn.conditions.len()
        )));
    }
    if txn.ops.is_empty() {
        return Err(AppError::BadRequest(
            "a transaction needs at least one op".into(),
        ));
    }
    let written = daemon
        .node()
        .write_if(&domain, txn.conditions, txn.ops)
        .await;
    let not_active = |active: Option<NodeId>| AppError::NotActive {
        domain: domain.clone(),
        node: me(daemon),
        active: active.or_else(|| known_active(daemon, &domain)),
    };
    match written {
        Ok(position) => {
            tracing::debug!(client = %access, domain = %domain, lsn = position.lsn.0, "application transaction committed");
            Ok(Answer::Committed { position })
        }
        Err(WriteError::NotServed { .. }) => Err(not_active(None)),
        Err(WriteError::Store(StoreError::NotActive { active, .. })) => Err(not_active(active)),
        Err(WriteError::Store(StoreError::Conflict {
            index,
            key,
            current,
            ..
        })) => Err(AppError::Conflict {
            index,
            key,
            current,
        }),
        Err(WriteError::Unconfirmed { position, .. }) => {
            let why = written_why(&domain);
            Err(AppError::Unconfirmed {
                domain,
                position,
                why,
            })
        }
        Err(WriteError::Store(
            e @ (StoreError::InvalidWrite { .. }
            | StoreError::Crl { .. }
            | StoreError::CrlOutdated { .. }
            | StoreError::AmbiguousIssuer { .. }
            | StoreError::CrlDeltaWithoutBase { .. }
            | StoreError::CrlConflict { .. }),
        )) => Err(AppError::Refused(e.to_string())),
        Err(WriteError::Store(e)) => Err(store_failed(daemon, e)),
    }
}

fn written_why(domain: &DomainId) -> String {
    format!("the standbys of {domain} did not confirm it within the confirmation timeout; check them with `domsync status` (the write is kept on the active)")
}

async fn policy(
    daemon: &Daemon,
    access: &Access,
    domain: DomainId,
    name: String,
    at_least: AtLeast,
) -> Result<Answer, AppError> {
    let d = readable(daemon, access, &domain)?;
    wait_ready(daemon, &d, at_least).await?;
    let read = d.policy(&name).map_err(|e| store_failed(daemon, e))?;
    check_read(daemon, &d, &read, at_least)?;
    let served = served(daemon, &read);
    match read.value {
        Some(p) => Ok(Answer::Policy {
            served,
            info: p.info,
            content: p.content,
        }),
        None => Err(AppError::NoSuchPolicy {
            domain,
            name,
            served,
        }),
    }
}

async fn crl(
    daemon: &Daemon,
    access: &Access,
    domain: DomainId,
    issuer: &IssuerKey,
    delta: bool,
    at_least: AtLeast,
) -> Result<Answer, AppError> {
    let d = readable(daemon, access, &domain)?;
    wait_ready(daemon, &d, at_least).await?;
    let read = d
        .crl_of(issuer, delta)
        .map_err(|e| store_failed(daemon, e))?;
    check_read(daemon, &d, &read, at_least)?;
    Ok(Answer::Crl {
        served: served(daemon, &read),
        crl: read.value,
    })
}
