//! Replication, sans-IO: the active's [`Shipper`] (one per standby and domain) and the
//! standby's [`Follower`] (one per domain), the protocol [`message`]s and durability
//! [`Confirmations`].
//!
//! Nothing here touches tokio, quinn or redb. Each state machine takes events (a message,
//! a local commit, a tick with an explicit `now`) and returns actions (send, apply, build a
//! snapshot, close). `domsync_node` drives them over QUIC and the store; the simulation
//! tests drive them over an in-memory network.

mod active;
pub mod authorize;
mod durability;
pub mod message;
pub mod promotion;
mod retention;
pub mod roles;
mod standby;
mod status;

pub use active::{decide, fork_point, LocalView, ShipAction, ShipConfig, Shipper};
pub use durability::{Confirmations, Durability, Unconfirmed};
pub use message::{
    Ack, Answer, Follow, Message, ProbeAnswer, RecordBytes, RejectReason, SnapshotHeader, TakeOver,
};
pub use retention::{retention_cut, RetentionInput};
pub use standby::{Backoff, FollowAction, Follower, StandbyView};
pub use status::SyncStatus;
