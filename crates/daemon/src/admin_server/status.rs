//! The status of every configured domain here, as `domsync status` shows it.

use std::time::{SystemTime, UNIX_EPOCH};

use super::dispatch::me;
use crate::{Daemon, Placement};
use domsync_proto::admin::{
    CertificateExpiry, CrlState, DomainReport, FollowerState, Lag, NodeStatus, PlacementState,
    ReplicaState, StandbyState,
};

/// Milliseconds since the Unix epoch (0 before it).
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Daemon {
    /// The status of every configured domain here, as `domsync status` shows it.
    pub fn status(&self) -> NodeStatus {
        status(self)
    }
}

/// The answer to [`Request::Status`](domsync_proto::admin::Request::Status).
pub(super) fn status(daemon: &Daemon) -> NodeStatus {
    let node = daemon.node();
    let mut domains = Vec::new();
    for (name, placement) in daemon.placements() {
        let placement = match placement {
            Placement::Serving(_) => PlacementState::Serving,
            Placement::Waiting(w) => PlacementState::Waiting(w),
            Placement::Failed(f) => PlacementState::Failed(f),
        };
        let mut report = DomainReport {
            domain: name.clone(),
            placement: placement.clone(),
            replica: None,
            standbys: Vec::new(),
            follower: None,
            collisions: 0,
            accept_unverified_crls: false,
            crls: Vec::new(),
        };
        if placement == PlacementState::Serving {
            match daemon.store().domain(&name).and_then(|d| {
                let s = d.status()?;
                let (records, corrupt) = d.archive()?;
                let c = (records.len() + corrupt.len()) as u64;
                report.accept_unverified_crls = d.accepts_unverified_crls();
                report.crls = crl_states(&d)?;
                Ok((s, c))
            }) {
                Ok((s, c)) => {
                    report.replica = Some(ReplicaState {
                        role: s.role,
                        epoch: s.epoch,
                        position: s.position,
                        digest: s.digest.to_string(),
                    });
                    report.collisions = c;
                }
                Err(e) => report.placement = PlacementState::Failed(e.to_string()),
            }
        }
        report.standbys = node
            .sync_status(&name)
            .into_iter()
            .map(|r| StandbyState {
                lag: Lag::of(&r.status),
                node: r.node,
                status: r.status,
                durable: r.ack.durable,
                last_sync_ms: r.last_sync.map(millis),
                connected: r.connected,
            })
            .collect();
        report.follower = node.follower_status(&name).map(|f| FollowerState {
            lag: Lag::of(&f.status),
            active: f.active,
            status: f.status,
            last_sync_ms: f.last_sync.map(millis),
            last_error: f.last_error,
            recent_errors: f
                .recent_errors
                .into_iter()
                .map(|(at, why)| (millis(at), why))
                .collect(),
            connected: f.connected,
            clock_skew_ms: f.clock_skew_ms,
        });
        domains.push(report);
    }
    let certificates = daemon
        .certificates()
        .into_iter()
        .map(|(c, own)| CertificateExpiry {
            identity: c.identity,
            own,
            serial: c.serial,
            not_after_s: c.not_after,
        })
        .collect();
    NodeStatus {
        node: me(daemon),
        domains,
        certificates,
    }
}

/// The CRLs a domain holds, as status shows them.
fn crl_states(d: &domsync_store::Domain) -> Result<Vec<CrlState>, domsync_store::StoreError> {
    let mut out: Vec<CrlState> = d
        .held_crls()?
        .value
        .into_iter()
        .map(|c| CrlState {
            issuer: c.issuer.to_string(),
            kind: if c.delta_base.is_some() {
                "delta"
            } else {
                "base"
            }
            .into(),
            number: c.number,
            next_update: c.next_update,
            verified: c.verified_by.is_some(),
        })
        .collect();
    out.extend(d.legacy_crls()?.value.into_iter().map(|c| CrlState {
        issuer: c.issuer,
        kind: "legacy".into(),
        number: c.number,
        next_update: c.next_update,
        verified: false,
    }));
    Ok(out)
}
