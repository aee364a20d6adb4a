//! The messages of the replication protocol (ALPN `domsync-repl/1`), one stream per domain.
//!
//! On the wire each message is one checked frame (see [`crate::codec`]): version, `u32`
//! length, postcard payload, CRC32. The encoding is pinned by golden vectors: only append
//! enum variants, never reorder or remove them.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, MAX_RECORD_BYTES};
use crate::model::{DomainId, DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Position};
use crate::model::{Heard, SnapshotItem, StateDigest};

/// Largest encoded message: one full-size record (or snapshot row) plus its envelope.
pub const MAX_MESSAGE_BYTES: usize = MAX_RECORD_BYTES + 64 * 1024;

/// Largest message a node reads on a stream its peer opened: [`Follow`], [`Ack`],
/// [`Message::Probe`] and [`TakeOver`] are a few hundred bytes (a `Follow` carries at most
/// [`HISTORY_TAIL`] history entries). Bulk data (records, snapshot rows) only flows towards the
/// side that opened a stream, so this small cap bounds what a peer can make a node buffer per
/// stream.
pub const MAX_INBOUND_BYTES: usize = 64 * 1024;

/// How many history entries a standby sends in [`Follow`].
pub const HISTORY_TAIL: usize = 16;

/// A replication message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// standby → active: the first message of a stream.
    Follow(Follow),
    /// active → standby: the answer to [`Follow`]; exactly one per stream.
    Answer(Answer),
    /// active → standby: encoded record frames, in lsn order, contiguous.
    Records(Vec<RecordBytes>),
    /// active → standby: a snapshot starts; its rows follow.
    SnapshotBegin(SnapshotHeader),
    /// active → standby: rows of the snapshot in progress.
    SnapshotRows(Vec<SnapshotItem>),
    /// active → standby: the snapshot is complete with this many rows; records follow.
    SnapshotEnd {
        /// Rows sent in all.
        rows: u64,
    },
    /// active → standby: sent when idle, so the standby knows where the active stands.
    Heartbeat {
        /// The active's position.
        position: Position,
        /// The active's clock, microseconds since the Unix epoch.
        time: u64,
    },
    /// standby → active: what the standby holds.
    Ack(Ack),
    /// any node → any node, first message of its own stream: where do you stand on `domain`?
    /// Asked before a promotion (split-brain guard).
    Probe {
        /// The domain.
        domain: DomainId,
        /// The asker's epoch when it is active: a lower active that hears it steps down.
        epoch: Option<Epoch>,
    },
    /// The answer to [`Message::Probe`]; `None` when the node has no replica of the domain.
    ProbeAnswer(Option<ProbeAnswer>),
    /// active → standby, first message of its own stream (switchover): the active stopped
    /// taking writes at `last`; become active in `epoch` if you hold exactly `last`.
    TakeOver(TakeOver),
    /// The answer to [`Message::TakeOver`]: the new active's position, or why it refused.
    TookOver(Result<Position, String>),
}

/// A planned hand-over of the active role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeOver {
    /// The domain.
    pub domain: DomainId,
    /// The epoch the new active takes.
    pub epoch: Epoch,
    /// The old active's last position; the new active must hold exactly this.
    pub last: Position,
    /// Durability the new active serves with.
    pub durability: super::Durability,
    /// The new active's standbys (the old active among them).
    pub standbys: Vec<NodeId>,
}

/// How a replica stands, as told to a node that is about to promote its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    /// The answering node's role for the domain.
    pub role: crate::model::Role,
    /// The highest epoch it has seen.
    pub epoch: Epoch,
    /// Its position.
    pub position: Position,
    /// When it is a standby connected to an active: that active, and how long ago it last
    /// heard from it (split-brain guard).
    pub heard_active: Option<Heard>,
}

/// One encoded record, exactly as stored in the active's log (checked frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The standby's request to follow a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    /// The domain.
    pub domain: DomainId,
    /// The incarnation the standby holds; `None` if it never synchronized.
    pub uid: Option<DomainUid>,
    /// The standby's position.
    pub position: Position,
    /// The highest epoch the standby has seen.
    pub epoch: Epoch,
    /// The last [`HISTORY_TAIL`] entries of the standby's history.
    pub history_tail: Vec<HistoryEntry>,
    /// When the standby's collision archive holds records: the fork point they diverged
    /// after. The active reports `Collision` until an operator resolves the archive.
    pub collision_fork: Option<Lsn>,
}

/// The active's answer to [`Follow`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Records from this lsn follow.
    Stream {
        /// First lsn that will be sent (`standby position + 1`).
        from: Lsn,
    },
    /// A snapshot follows ([`Message::SnapshotBegin`] ...), then records.
    Snapshot {
        /// Why a snapshot is needed, for the operator.
        why: SnapshotWhy,
    },
    /// The standby holds records after `fork` that the active does not have: it must set them
    /// aside (collision archive); a snapshot follows.
    Rewind {
        /// Last lsn both histories share.
        fork: Lsn,
    },
    /// The active will not serve this standby.
    Reject {
        /// Why.
        reason: RejectReason,
        /// The active the answering node knows, if any.
        active: Option<NodeId>,
    },
}

/// Why the active sends a snapshot instead of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotWhy {
    /// The standby never synchronized.
    NeverSynchronized,
    /// The records the standby needs are no longer retained.
    BehindRetention,
}

/// Why an active refuses a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The answering node is not active for the domain.
    NotActive,
    /// The answering node has no replica of the domain.
    UnknownDomain,
    /// The standby holds another incarnation of the domain (different uid).
    OtherIncarnation,
    /// The standby has seen a higher epoch than the answering node: the node is stale.
    StaleEpoch,
    /// The standby's node is not a configured replica of the domain.
    NotReplica,
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::NotActive => "the node is not active for the domain",
            RejectReason::UnknownDomain => "the node has no replica of the domain",
            RejectReason::OtherIncarnation => {
                "the standby holds another incarnation of the domain (different uid)"
            }
            RejectReason::StaleEpoch => "the standby has seen a newer epoch than the node",
            RejectReason::NotReplica => {
                "the standby's node is not a configured replica of the domain"
            }
        })
    }
}

/// What a snapshot is taken at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// Incarnation id of the domain.
    pub uid: DomainUid,
    /// Position of the state.
    pub position: Position,
    /// Highest epoch seen by the active.
    pub epoch: Epoch,
    /// History up to `position`.
    pub history: Vec<HistoryEntry>,
    /// Content digest the standby must reach after loading every row.
    pub digest: StateDigest,
}

/// The standby's progress. `received`: handed over by the network; `durable`: fsynced;
/// `applied`: visible to reads. A standby applies a batch in one step of its writer: the
/// records are appended to its segment log and `fdatasync`ed (durable), then folded into its
/// tables without an fsync (applied); it acknowledges after that step, so `durable` and
/// `applied` are sent together and neither waits for a table fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// Highest lsn received.
    pub received: Lsn,
    /// Highest lsn durable on the standby.
    pub durable: Lsn,
    /// Highest lsn applied on the standby.
    pub applied: Lsn,
}

/// Encodes a message as one checked frame.
///
/// # Errors
/// [`CodecError::TooLarge`] above [`MAX_MESSAGE_BYTES`].
pub fn encode_message(message: &Message) -> Result<Vec<u8>, CodecError> {
    codec::seal(message, MAX_MESSAGE_BYTES)
}

/// Decodes one checked frame into a message.
///
/// # Errors
/// A [`CodecError`] saying what is wrong with the bytes.
pub fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    codec::open(bytes, MAX_MESSAGE_BYTES)
}
