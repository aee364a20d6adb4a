//! What the metrics show, gathered from the daemon at one time: the table of definitions
//! reads every sample from a [`Snapshot`].

use crate::{Daemon, Placement};
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Role};
use domsync_proto::repl::SyncStatus;
use domsync_store::WriterStats;

/// The daemon's state the metrics are rendered from, gathered at one time.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    /// Every placed domain, in name order.
    pub(super) domains: Vec<DomainMetrics>,
    /// Gateway answers by result.
    pub(super) gateway_requests: Vec<(&'static str, u64)>,
    /// Gateway connections open.
    pub(super) gateway_connections: usize,
    /// Certificates: identity, `own` or `peer`, end of validity (seconds since the Unix
    /// epoch).
    pub(super) certificates: Vec<(String, &'static str, i64)>,
    /// Descriptors the configuration needs, the open-file limit, and the descriptors open
    /// now (`None` when `/proc/self/fd` cannot be read).
    pub(super) descriptors: (u64, u64, Option<u64>),
}

/// One placed domain.
#[derive(Debug, Clone)]
pub(super) struct DomainMetrics {
    pub(super) name: DomainId,
    pub(super) placement: Placement,
    /// The replica open here, if any.
    pub(super) replica: Option<ReplicaMetrics>,
    /// Records and bytes shipped (active here).
    pub(super) shipped: Option<(u64, u64)>,
    /// Records the log's size cap dropped unreplicated (active here).
    pub(super) unreplicated_trimmed: Option<u64>,
    /// Each standby and its sync status (active here).
    pub(super) standbys: Vec<(NodeId, SyncStatus)>,
    /// The active followed and the sync status (standby here).
    pub(super) follower: Option<(NodeId, SyncStatus)>,
}

/// The replica of a domain open here.
#[derive(Debug, Clone)]
pub(super) struct ReplicaMetrics {
    /// Read live (a domain can step down on its own); `None` when it cannot be read.
    pub(super) status: Option<ReplicaStatus>,
    /// Commit counters.
    pub(super) stats: WriterStats,
    /// Each CRL's issuer, kind (`base`, `delta`, `legacy`) and next update (seconds since
    /// the Unix epoch).
    pub(super) crls: Vec<(String, &'static str, Option<i64>)>,
}

/// What the metrics use of a replica's status.
#[derive(Debug, Clone)]
pub(super) struct ReplicaStatus {
    pub(super) role: Role,
    pub(super) epoch: Epoch,
    pub(super) lsn: Lsn,
    pub(super) log_bytes: u64,
}

/// Gathers what the metrics show.
pub(super) fn gather(daemon: &Daemon) -> Snapshot {
    let node = daemon.node();
    let domains = daemon
        .placements()
        .into_iter()
        .map(|(name, placement)| {
            let replica = node.replica(&name).map(|r| ReplicaMetrics {
                status: r.status().ok().map(|s| ReplicaStatus {
                    role: s.role,
                    epoch: s.epoch,
                    lsn: s.position.lsn,
                    log_bytes: s.log_bytes,
                }),
                stats: r.stats(),
                crls: crl_gauges(&r),
            });
            DomainMetrics {
                shipped: node.shipped(&name),
                unreplicated_trimmed: node.unreplicated_trimmed(&name),
                standbys: node
                    .sync_status(&name)
                    .into_iter()
                    .map(|r| (r.node, r.status))
                    .collect(),
                follower: node.follower_status(&name).map(|f| (f.active, f.status)),
                name,
                placement,
                replica,
            }
        })
        .collect();
    Snapshot {
        domains,
        gateway_requests: node.gateway_requests(),
        gateway_connections: node.gateway_connections(),
        certificates: daemon
            .certificates()
            .into_iter()
            .map(|(c, own)| (c.identity, if own { "own" } else { "peer" }, c.not_after))
            .collect(),
        descriptors: {
            let (needed, limit) = daemon.descriptor_budget();
            (needed, limit, open_descriptors())
        },
    }
}

/// The descriptors this process holds open now (entries of `/proc/self/fd`, less the one
/// reading it).
fn open_descriptors() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    u64::try_from(n.saturating_sub(1)).ok()
}

impl Snapshot {
    /// Domains with a replica open here.
    pub(super) fn replicas(&self) -> impl Iterator<Item = (&DomainMetrics, &ReplicaMetrics)> {
        self.domains
            .iter()
            .filter_map(|d| d.replica.as_ref().map(|r| (d, r)))
    }

    /// Domains whose replica status could be read.
    pub(super) fn statuses(&self) -> impl Iterator<Item = (&DomainMetrics, &ReplicaStatus)> {
        self.replicas()
            .filter_map(|(d, r)| r.status.as_ref().map(|s| (d, s)))
    }

    /// Every standby of the domains active here.
    pub(super) fn standbys(&self) -> impl Iterator<Item = (&DomainMetrics, &NodeId, &SyncStatus)> {
        self.domains
            .iter()
            .flat_map(|d| d.standbys.iter().map(move |(n, s)| (d, n, s)))
    }
}

/// Each CRL held by `domain` (bases, deltas, legacy) with its next update.
fn crl_gauges(domain: &domsync_store::Domain) -> Vec<(String, &'static str, Option<i64>)> {
    let mut out: Vec<(String, &'static str, Option<i64>)> = domain
        .held_crls()
        .map(|read| {
            read.value
                .into_iter()
                .map(|c| {
                    let kind = if c.delta_base.is_some() {
                        "delta"
                    } else {
                        "base"
                    };
                    (c.issuer.to_string(), kind, c.next_update)
                })
                .collect()
        })
        .unwrap_or_default();
    if let Ok(read) = domain.legacy_crls() {
        out.extend(
            read.value
                .into_iter()
                .map(|c| (c.issuer, "legacy", c.next_update)),
        );
    }
    out
}
