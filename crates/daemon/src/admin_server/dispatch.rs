//! One request, one answer: what each [`Request`] does against the [`Daemon`], logged when
//! it changes something.

use std::sync::Arc;
use std::time::Duration;

use super::{domains, status, Client};
use crate::{Daemon, Placement};
use domsync_node::WriteError;
use domsync_proto::admin::{AdminError, Answer, ArchivedInfo, Request};
use domsync_proto::model::{DomainId, NodeId, Op, Role};
use domsync_store::{ArchivedRecord, Domain, StoreError};

/// How long a switchover waits for its target to hold the last write.
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The request in a few words, for the logs.
fn describe(req: &Request) -> String {
    match req {
        Request::Status => "status".into(),
        Request::Promote { domain, force } => {
            format!("promote {domain}{}", if *force { " --force" } else { "" })
        }
        Request::Switchover { domain, to } => format!("switchover {domain} to {to}"),
        Request::Write { domain, ops } => format!("write {domain} ({} ops)", ops.len()),
        Request::Collisions { domain } => format!("collisions list {domain}"),
        Request::CollisionShow { domain, id } => format!("collisions show {domain} {id}"),
        Request::Reapply { domain, id } => format!("collisions reapply {domain} {id}"),
        Request::Discard { domain, id } => format!("collisions discard {domain} {id}"),
        Request::DomainAdd(spec) => format!(
            "domain add {} (replicas {})",
            spec.name,
            spec.replicas.join(",")
        ),
        Request::DomainRemove { domain } => format!("domain remove {domain}"),
        Request::Plan => "plan".into(),
        Request::Trust { domain } => format!("trust {domain}"),
        Request::Compact { domain } => format!("compact {domain}"),
    }
}

/// Answers one request.
pub(super) async fn handle(daemon: &Arc<Daemon>, client: &Client, req: Request) -> Answer {
    let what = describe(&req);
    let changes = !matches!(
        req,
        Request::Status
            | Request::Collisions { .. }
            | Request::CollisionShow { .. }
            | Request::Plan
            | Request::Trust { .. }
    );
    let answer = match req {
        Request::Status => Ok(Answer::Status(status::status(daemon))),
        Request::Promote { domain, force } => promote(daemon, domain, force).await,
        Request::Switchover { domain, to } => switchover(daemon, domain, to).await,
        Request::Write { domain, ops } => write(daemon, &domain, ops)
            .await
            .map(|position| Answer::Written { domain, position }),
        Request::Trust { domain } => held(daemon, &domain).and_then(|d| trust(&d, domain)),
        Request::Collisions { domain } => held(daemon, &domain).and_then(|d| {
            let list = archive(daemon, &d)?.iter().map(info).collect();
            Ok(Answer::Collisions { domain, list })
        }),
        Request::CollisionShow { domain, id } => held(daemon, &domain).and_then(|d| {
            let a = archived(daemon, &d, id)?;
            Ok(Answer::Collision {
                domain,
                info: info(&a),
                ops: a.record.ops,
            })
        }),
        Request::Reapply { domain, id } => reapply(daemon, domain, id).await,
        Request::Discard { domain, id } => {
            held(daemon, &domain).and_then(|d| match d.discard_collision(id) {
                Ok(true) => {
                    daemon.node().collisions_changed(&domain);
                    Ok(Answer::Discarded { domain, id })
                }
                Ok(false) => Err(AdminError::NoSuchCollision {
                    domain,
                    node: me(daemon),
                    id,
                }),
                Err(e) => Err(AdminError::Failed(e.to_string())),
            })
        }
        Request::DomainAdd(spec) => domains::add(daemon, spec).await,
        Request::DomainRemove { domain } => domains::remove(daemon, domain).await,
        Request::Plan => Ok(Answer::Plan(domains::plan(daemon).await)),
        Request::Compact { domain } => match held(daemon, &domain) {
            Ok(d) => match tokio::task::spawn_blocking(move || d.compact()).await {
                Ok(Ok((before, after))) => Ok(Answer::Compacted {
                    domain,
                    before,
                    after,
                }),
                Ok(Err(e)) => Err(AdminError::Failed(e.to_string())),
                Err(e) => Err(AdminError::Failed(format!(
                    "compaction of domain {domain} stopped: {e}"
                ))),
            },
            Err(e) => Err(e),
        },
    };
    match answer {
        Ok(a) => {
            if changes {
                tracing::info!(target: super::LOG, client = %client, "admin: {what}: done");
            }
            a
        }
        Err(e) => {
            if changes {
                tracing::warn!(target: super::LOG, client = %client, "admin: {what}: {e}");
            }
            Answer::Error(e)
        }
    }
}

/// This node.
pub(super) fn me(daemon: &Daemon) -> NodeId {
    daemon.node().id().clone()
}

/// The domain's store, when the domain is configured and open here.
fn held(daemon: &Daemon, domain: &DomainId) -> Result<Domain, AdminError> {
    let unknown = || AdminError::UnknownDomain {
        domain: domain.clone(),
        node: me(daemon),
    };
    match daemon.placements().get(domain) {
        Some(Placement::Serving(_)) => {}
        Some(Placement::Waiting(w)) => {
            return Err(AdminError::Failed(format!(
                "domain {domain} is not open yet on node {}: {w}",
                me(daemon)
            )))
        }
        Some(Placement::Failed(f)) => {
            return Err(AdminError::Failed(format!(
                "domain {domain} failed on node {}: {f}",
                me(daemon)
            )))
        }
        None => return Err(unknown()),
    }
    daemon.store().domain(domain).map_err(|e| match e {
        StoreError::UnknownDomain { .. } => unknown(),
        other => AdminError::Failed(other.to_string()),
    })
}

fn archive(daemon: &Daemon, d: &Domain) -> Result<Vec<ArchivedRecord>, AdminError> {
    d.collisions().map_err(|e| {
        AdminError::Failed(format!(
            "cannot read the collision archive on node {}: {e}",
            me(daemon)
        ))
    })
}

fn archived(daemon: &Daemon, d: &Domain, id: u64) -> Result<ArchivedRecord, AdminError> {
    archive(daemon, d)?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| AdminError::NoSuchCollision {
            domain: d.id().clone(),
            node: me(daemon),
            id,
        })
}

fn info(a: &ArchivedRecord) -> ArchivedInfo {
    ArchivedInfo {
        id: a.id,
        epoch: a.record.epoch.clone(),
        lsn: a.record.lsn,
        time: a.record.time,
        ops: a.record.ops.len() as u64,
        bytes: a.bytes.len() as u64,
    }
}

/// The active this node knows for a domain it does not serve as active.
fn known_active(daemon: &Daemon, domain: &DomainId) -> Option<NodeId> {
    if let Some(f) = daemon.node().follower_status(domain) {
        return Some(f.active);
    }
    // The highest epoch recorded here (a fence included) names the newest active known.
    let d = daemon.store().domain(domain).ok()?;
    let epoch = d.highest_epoch().ok()?;
    (epoch.term > 0 && epoch.node != *daemon.node().id()).then_some(epoch.node)
}

async fn write(
    daemon: &Daemon,
    domain: &DomainId,
    ops: Vec<Op>,
) -> Result<domsync_proto::model::Position, AdminError> {
    if ops.is_empty() {
        return Err(AdminError::BadRequest(
            "a write needs at least one op".into(),
        ));
    }
    match daemon.node().write(domain, ops).await {
        Ok(p) => Ok(p),
        Err(WriteError::NotServed { .. }) => {
            held(daemon, domain)?;
            Err(AdminError::NotActive {
                domain: domain.clone(),
                node: me(daemon),
                active: known_active(daemon, domain),
            })
        }
        Err(WriteError::Store(StoreError::NotActive { active, .. })) => {
            Err(AdminError::NotActive {
                domain: domain.clone(),
                node: me(daemon),
                active: active.or_else(|| known_active(daemon, domain)),
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn promote(
    daemon: &Arc<Daemon>,
    domain: DomainId,
    force: bool,
) -> Result<Answer, AdminError> {
    held(daemon, &domain)?;
    let me = me(daemon);
    let dc = daemon
        .config()
        .domains
        .into_iter()
        .find(|d| d.name == domain && d.replicas.contains(&me))
        .ok_or_else(|| AdminError::UnknownDomain {
            domain: domain.clone(),
            node: me.clone(),
        })?;
    let peers: Vec<NodeId> = dc.replicas.iter().filter(|r| **r != me).cloned().collect();
    let config = daemon.active_config(&dc);
    match daemon.node().promote(&domain, &peers, config, force).await {
        Ok(p) => {
            daemon.set_placement(&domain, Placement::Serving(Role::Active));
            Ok(Answer::Promoted {
                domain,
                epoch: p.epoch,
                position: p.position,
                behind_records: p.behind_records,
                unreachable: p.unreachable,
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn switchover(
    daemon: &Arc<Daemon>,
    domain: DomainId,
    to: NodeId,
) -> Result<Answer, AdminError> {
    held(daemon, &domain)?;
    match daemon
        .node()
        .switchover(&domain, &to, SWITCHOVER_TIMEOUT)
        .await
    {
        Ok(s) => {
            daemon.set_placement(&domain, Placement::Serving(Role::Standby));
            Ok(Answer::SwitchedOver {
                domain,
                to,
                epoch: s.epoch,
                position: s.position,
                pause_ms: u64::try_from(s.pause.as_millis()).unwrap_or(u64::MAX),
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn reapply(daemon: &Daemon, domain: DomainId, id: u64) -> Result<Answer, AdminError> {
    let d = held(daemon, &domain)?;
    let a = archived(daemon, &d, id)?;
    let position = write(daemon, &domain, a.record.ops).await?;
    match d.discard_collision(id) {
        Ok(_) => {
            daemon.node().collisions_changed(&domain);
            Ok(Answer::Reapplied {
                domain,
                id,
                position,
            })
        }
        Err(e) => Err(AdminError::Failed(format!(
            "record {id} was written again at {position} but could not be removed from the archive ({e}): run `domsync collisions discard {domain} {id}`"
        ))),
    }
}

/// The trust material of a domain, without the CRLs' bytes.
fn trust(d: &Domain, domain: DomainId) -> Result<Answer, AdminError> {
    crate::trust_report(d, domain)
        .map(Answer::Trust)
        .map_err(|e| AdminError::Failed(e.to_string()))
}
