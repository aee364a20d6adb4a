//! The messages of administration: the same frames on the local Unix socket and on the remote
//! QUIC protocol `domsync-admin/1`.
//!
//! A client sends one [`Request`] frame and reads one [`Answer`] frame. On the Unix socket a
//! connection carries any number of request/answer pairs in turn; on QUIC each request has
//! its own bidirectional stream (the client finishes its side after the request). Every frame
//! is a checked frame (see [`crate::codec`]): version, `u32` length, postcard payload, CRC32;
//! requests are capped at [`MAX_REQUEST_BYTES`] and answers at [`MAX_ANSWER_BYTES`], checked
//! before anything is allocated. Only append enum variants, never reorder or remove them.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::model::{
    Crl, CrlNumber, DomainId, Epoch, HeldCrl, IssuerCert, Lsn, NodeId, Op, Position, Role,
};
use crate::repl::SyncStatus;

/// Largest encoded request: a write carrying a full-size policy package.
pub const MAX_REQUEST_BYTES: usize = codec::MAX_RECORD_BYTES + 64 * 1024;

/// Largest encoded answer: an archived record (as large as a record) plus its envelope, or
/// the status of many domains.
pub const MAX_ANSWER_BYTES: usize = codec::MAX_RECORD_BYTES + 1024 * 1024;

/// One request of an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// How every domain stands on this node: [`Answer::Status`].
    Status,
    /// Promote this node's standby replica of `domain` (manual failover):
    /// [`Answer::Promoted`].
    Promote {
        /// The domain.
        domain: DomainId,
        /// Promote even when the split-brain guard or a lag says no.
        force: bool,
    },
    /// Move the active role of `domain` from this node to its standby `to`:
    /// [`Answer::SwitchedOver`].
    Switchover {
        /// The domain.
        domain: DomainId,
        /// The standby that becomes active.
        to: NodeId,
    },
    /// Commit `ops` as one write on this node, which must be the domain's active:
    /// [`Answer::Written`].
    Write {
        /// The domain.
        domain: DomainId,
        /// The changes, committed atomically as one record.
        ops: Vec<Op>,
    },
    /// The collision archive of `domain` here: [`Answer::Collisions`].
    Collisions {
        /// The domain.
        domain: DomainId,
    },
    /// One archived record with its ops: [`Answer::Collision`].
    CollisionShow {
        /// The domain.
        domain: DomainId,
        /// Archive id.
        id: u64,
    },
    /// Write an archived record's ops again as a new write (this node must be the domain's
    /// active), then remove it from the archive: [`Answer::Reapplied`]. When the archive is
    /// on a standby, the client writes the ops on the active itself ([`Request::Write`]) and
    /// then sends [`Request::Discard`] here.
    Reapply {
        /// The domain.
        domain: DomainId,
        /// Archive id.
        id: u64,
    },
    /// Remove an archived record without writing it again: [`Answer::Discarded`].
    Discard {
        /// The domain.
        domain: DomainId,
        /// Archive id.
        id: u64,
    },
    /// Add a domain at runtime (checked like a `[[domains]]` entry, kept in
    /// `<state_dir>/admin-domains.toml`, placed at once): [`Answer::DomainAdded`]. Every
    /// replica's daemon must be told.
    DomainAdd(DomainSpec),
    /// Stop serving a domain added at runtime and forget it (its store files stay):
    /// [`Answer::DomainRemoved`]. A domain of the configuration file is refused.
    DomainRemove {
        /// The domain.
        domain: DomainId,
    },
    /// The placement plan of every configured domain: [`Answer::Plan`].
    Plan,
    /// The issuer certificates and CRLs of `domain` here, without the CRLs' bytes:
    /// [`Answer::Trust`].
    Trust {
        /// The domain.
        domain: DomainId,
    },
    /// Return the space freed by deletes and overwrites in this node's database of
    /// `domain` to the file system: [`Answer::Compacted`].
    Compact {
        /// The domain.
        domain: DomainId,
    },
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// The node's status.
    Status(NodeStatus),
    /// The promotion happened.
    Promoted {
        /// The domain.
        domain: DomainId,
        /// The new epoch.
        epoch: Epoch,
        /// Where the new active starts.
        position: Position,
        /// Records a peer held beyond this replica (lost to the collision archive; only for a
        /// forced promotion).
        behind_records: u64,
        /// Peers that did not answer the guard's probe.
        unreachable: Vec<NodeId>,
    },
    /// The switchover happened.
    SwitchedOver {
        /// The domain.
        domain: DomainId,
        /// The new active.
        to: NodeId,
        /// The epoch it took.
        epoch: Epoch,
        /// The last position of the old active, held by the new one.
        position: Position,
        /// How long writes were refused, in milliseconds.
        pause_ms: u64,
    },
    /// The write committed (and met the domain's durability).
    Written {
        /// The domain.
        domain: DomainId,
        /// Its position.
        position: Position,
    },
    /// The collision archive.
    Collisions {
        /// The domain.
        domain: DomainId,
        /// The archived records, oldest first.
        list: Vec<ArchivedInfo>,
    },
    /// One archived record.
    Collision {
        /// The domain.
        domain: DomainId,
        /// The record's summary.
        info: ArchivedInfo,
        /// Its ops.
        ops: Vec<Op>,
    },
    /// The archived record was written again and removed from the archive.
    Reapplied {
        /// The domain.
        domain: DomainId,
        /// Archive id.
        id: u64,
        /// Position of the new write.
        position: Position,
    },
    /// The archived record was removed.
    Discarded {
        /// The domain.
        domain: DomainId,
        /// Archive id.
        id: u64,
    },
    /// The request failed; nothing (or what the message says) happened.
    Error(AdminError),
    /// The domain was added.
    DomainAdded {
        /// The domain.
        domain: DomainId,
        /// True when this node is one of its replicas (it is being placed here); false when
        /// it is only recorded (for placement).
        replica_here: bool,
    },
    /// The domain is no longer served here (its store files stay).
    DomainRemoved {
        /// The domain.
        domain: DomainId,
    },
    /// The placement plan.
    Plan(PlanReport),
    /// The trust material of a domain.
    Trust(TrustReport),
    /// The domain's database was compacted.
    Compacted {
        /// The domain.
        domain: DomainId,
        /// Size of its database file before, in bytes.
        before: u64,
        /// Size after.
        after: u64,
    },
}

/// The issuer certificates and CRLs a domain holds on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustReport {
    /// The domain.
    pub domain: DomainId,
    /// Whether the domain accepts CRLs of issuers it holds no certificate of.
    pub accept_unverified_crls: bool,
    /// The issuer certificates, with their DER.
    pub issuers: Vec<IssuerCert>,
    /// The CRLs held, bases and deltas, with `der` left empty.
    pub crls: Vec<HeldCrl>,
    /// CRLs stored by an earlier release, unverified, with `der` left empty.
    pub legacy: Vec<Crl>,
    /// Where the node read them.
    pub position: Position,
}

/// A placement plan as a daemon sees it (made by the daemon's placement planner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanReport {
    /// The node answering.
    pub node: NodeId,
    /// Every node (this one and its peers) with its region, its admin-reachable address and
    /// its load once the plan is carried out.
    pub nodes: Vec<PlanNode>,
    /// Every configured domain: where it is active now and where the plan puts it.
    pub domains: Vec<PlanDomain>,
    /// The switchovers that carry the plan out, heaviest domain first.
    pub moves: Vec<PlanMove>,
}

/// One node of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanNode {
    /// The node.
    pub id: NodeId,
    /// Its region, if configured.
    pub region: Option<String>,
    /// Its QUIC address (replication, gateways and remote admin), as configured.
    pub address: std::net::SocketAddr,
    /// Total weight of the actives it holds now.
    pub load_now: u64,
    /// Total weight of the actives it holds once the plan is carried out.
    pub load: u64,
}

/// One domain of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDomain {
    /// The domain.
    pub domain: DomainId,
    /// Its weight.
    pub weight: u32,
    /// Its region, if configured.
    pub region: Option<String>,
    /// Where it is active now (`None`: no replica answered as active).
    pub active: Option<NodeId>,
    /// Where the plan puts it.
    pub planned: Option<NodeId>,
}

/// One switchover of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMove {
    /// The domain.
    pub domain: DomainId,
    /// Where it is active now (`None` when unknown: then no switchover can move it).
    pub from: Option<NodeId>,
    /// Where it should be active.
    pub to: NodeId,
}

/// A domain to add at runtime, as `domsync domain add` gives it: checked exactly like a
/// `[[domains]]` entry of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DomainSpec {
    /// The domain.
    pub name: String,
    /// Replica nodes in order, the primary first.
    pub replicas: Vec<String>,
    /// `local`, `standby` (default) or `all`.
    pub durability: Option<String>,
    /// Gateways granted the domain.
    pub gateways: Vec<String>,
    /// Most bytes of change log kept.
    pub retention_bytes: Option<u64>,
    /// Relative load (placement), default 1.
    pub weight: Option<u32>,
    /// Region whose node should hold the active (placement).
    pub region: Option<String>,
}

/// Why a request failed: one line saying what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AdminError {
    /// The client may not administer this node.
    #[error("refused: {0}")]
    Refused(String),
    /// The domain is not held by this node.
    #[error("domain {domain} is not held by node {node}: `domsync status` lists the domains here")]
    UnknownDomain {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
    },
    /// A write reached a node that is not the domain's active; nothing was written.
    #[error("domain {domain} is not active on node {node}: {}", match active { Some(a) => format!("its active is {a}: run the command against {a}"), None => "this node does not know which node is active: run `domsync status` on the domain's other replicas, and promote one only if none is active".to_owned() })]
    NotActive {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
        /// The active this node knows of.
        active: Option<NodeId>,
    },
    /// No such record in the collision archive.
    #[error("no record {id} in the collision archive of {domain} on node {node}: `domsync collisions list {domain}` shows the ids")]
    NoSuchCollision {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
        /// Archive id.
        id: u64,
    },
    /// The request was malformed or out of bounds.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The operation failed; the message says what happened and what to do.
    #[error("{0}")]
    Failed(String),
}

/// How every domain stands on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node answering.
    pub node: NodeId,
    /// Every configured domain with a replica here, by name.
    pub domains: Vec<DomainReport>,
    /// This node's certificate in force (first) and the certificate each configured peer
    /// presented on its latest handshake here.
    pub certificates: Vec<CertificateExpiry>,
}

/// When a certificate stops being valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateExpiry {
    /// Its `domsync://<role>/<id>` identity.
    pub identity: String,
    /// True for this node's own certificate, false for a peer's.
    pub own: bool,
    /// Its serial (hex bytes joined by colons).
    pub serial: String,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after_s: i64,
}

/// How a configured domain is placed on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlacementState {
    /// Open and served.
    Serving,
    /// The primary waits for the other replicas before creating the domain.
    Waiting(String),
    /// The domain failed here (the others are unaffected).
    Failed(String),
}

/// One domain on the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainReport {
    /// The domain.
    pub domain: DomainId,
    /// How it is placed.
    pub placement: PlacementState,
    /// Where the replica stands (`None` when it is not open).
    pub replica: Option<ReplicaState>,
    /// Per standby, on the active.
    pub standbys: Vec<StandbyState>,
    /// On a standby: how it follows its active.
    pub follower: Option<FollowerState>,
    /// Records in the collision archive here.
    pub collisions: u64,
    /// Whether the domain accepts CRLs of issuers it holds no certificate of.
    pub accept_unverified_crls: bool,
    /// The CRLs held here (bases, deltas, legacy).
    pub crls: Vec<CrlState>,
}

/// A CRL held by a domain, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlState {
    /// Issuer (RFC 4514; for a legacy CRL the text it was stored under).
    pub issuer: String,
    /// CRL number.
    pub number: CrlNumber,
    /// `base`, `delta` or `legacy` (stored by an earlier release, unverified).
    pub kind: String,
    /// nextUpdate, seconds since the Unix epoch.
    pub next_update: Option<i64>,
    /// Verified against a held issuer certificate.
    pub verified: bool,
}

/// Where a replica stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Its role.
    pub role: Role,
    /// The highest epoch it has seen.
    pub epoch: Epoch,
    /// Its last applied record.
    pub position: Position,
    /// Content digest at `position` (hex).
    pub digest: String,
}

/// Lag of a standby behind the active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lag {
    /// Records behind.
    pub records: u64,
    /// Bytes of records behind.
    pub bytes: u64,
    /// Age of the oldest commit not yet held, milliseconds.
    pub ms: u64,
}

impl Lag {
    /// The lag a sync status tells (zero unless lagging).
    pub fn of(status: &SyncStatus) -> Lag {
        match status {
            SyncStatus::Lagging {
                records,
                bytes,
                behind,
            } => Lag {
                records: *records,
                bytes: *bytes,
                ms: u64::try_from(behind.as_millis()).unwrap_or(u64::MAX),
            },
            _ => Lag::default(),
        }
    }
}

/// One standby as its active sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandbyState {
    /// The standby node.
    pub node: NodeId,
    /// Its sync status.
    pub status: SyncStatus,
    /// Its lag.
    pub lag: Lag,
    /// The last lsn it acknowledged as durable.
    pub durable: Lsn,
    /// When it last held everything, milliseconds since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// True while its stream is open.
    pub connected: bool,
}

/// A standby replica following its active.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowerState {
    /// The active followed.
    pub active: NodeId,
    /// Its sync status, from what the active told it.
    pub status: SyncStatus,
    /// Its lag.
    pub lag: Lag,
    /// When it last held everything, milliseconds since the Unix epoch.
    pub last_sync_ms: Option<u64>,
    /// The current error or refusal (`None` once the link recovered).
    pub last_error: Option<String>,
    /// The latest errors and refusals, oldest first: when (milliseconds since the Unix
    /// epoch) and what.
    pub recent_errors: Vec<(u64, String)>,
    /// True while a stream to the active is open.
    pub connected: bool,
    /// This node's clock minus the active's, in milliseconds, from the active's latest
    /// heartbeat (includes the one-way delay); `None` before one arrived.
    pub clock_skew_ms: Option<i64>,
}

/// A record of the collision archive, without its ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedInfo {
    /// Archive id.
    pub id: u64,
    /// The epoch it was written in.
    pub epoch: Epoch,
    /// Its lsn in that epoch's history.
    pub lsn: Lsn,
    /// When it was written, microseconds since the Unix epoch.
    pub time: u64,
    /// Number of ops.
    pub ops: u64,
    /// Bytes of the record.
    pub bytes: u64,
}
