//! Replication, sans-IO: the active's [`Shipper`] (one per standby and domain) and the
//! standby's [`Follower`] (one per domain), the protocol messages ([`Message`]) and durability
//! [`Confirmations`].
//!
//! Nothing here touches tokio, quinn or redb. Each state machine takes events (a message,
//! a local commit, a tick with an explicit `now`) and returns actions (send, apply, build a
//! snapshot, close). `domsync_node` drives them over QUIC and the store; the simulation
//! tests drive them over an in-memory network.

mod active;
mod authorize;
mod durability;
mod message;
mod promotion;
mod retention;
pub mod roles;
mod standby;
mod status;

pub use active::{decide, fork_point, LocalView, ShipAction, ShipConfig, Shipper};
pub use authorize::{
    authorize, check_epoch, next_epoch, Ask, EpochRefusal, LocalDomain, PeerRefusal, MAX_TERM_STEP,
};
pub use durability::{Confirmations, Durability, Unconfirmed};
pub use message::{
    decode_message, encode_message, Ack, Answer, Follow, Message, ProbeAnswer, RecordBytes,
    RejectReason, SnapshotHeader, SnapshotWhy, TakeOver, HISTORY_TAIL, MAX_INBOUND_BYTES,
    MAX_MESSAGE_BYTES,
};
pub use promotion::{
    check_fence, check_promotion, epoch_at, holds_more, FenceInput, FenceRefusal, FenceReply,
    FenceVerdict, GuardInput, PeerProbe, Refusal, Seer, Sighting, Verdict,
};
pub use retention::{retention_cut, RetentionInput};
pub use standby::{Backoff, FollowAction, Follower, StandbyView};
pub use status::SyncStatus;
