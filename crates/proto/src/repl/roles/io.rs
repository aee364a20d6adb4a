//! What goes into the role machine and what comes out: the replica's facts, the inputs, the
//! actions the node executes, the store commands and the outcomes of operations.

use std::time::Duration;

use crate::model::{Epoch, HistoryEntry, Lsn, NodeId, Position, Role};
use crate::repl::authorize::{EpochRefusal, LocalDomain};
use crate::repl::message::{Message, ProbeAnswer, TakeOver};
use crate::repl::promotion::{FenceRefusal, Refusal, Sighting};
use crate::repl::Durability;

/// How long a peer may take to answer a probe, fresh connection and retry included, before
/// it counts as unreachable.
pub const PROBE_BUDGET: Duration = Duration::from_secs(3);

/// How long the first attempt of a probe waits before the connection is replaced and the
/// probe tried once more (only when the first attempt used a cached connection).
pub const PROBE_ATTEMPT: Duration = Duration::from_millis(1000);

/// How long a hand-over may take to be answered.
pub const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the store and the node say about this replica right now. The executor reads it
/// before every input; the machine keeps none of it between inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The replica's role; `None` when this node holds no replica of the domain.
    pub role: Option<Role>,
    /// The epoch the replica's store records as its own (meta).
    pub epoch: Epoch,
    /// The highest epoch the store recorded (a fence above `epoch` included).
    pub highest: Epoch,
    /// The replica's position.
    pub position: Position,
    /// Which epoch wrote which lsn range here.
    pub history: Vec<HistoryEntry>,
    /// The active this replica follows, when it is a standby.
    pub followed: Option<NodeId>,
    /// When following: how many records it knows it lags that active.
    pub lag: Option<(NodeId, u64)>,
    /// The domain's replicas in the local configuration (this node among them).
    pub replicas: Vec<NodeId>,
    /// The standbys this node serves (when active) or would serve (local configuration).
    pub standbys: Vec<NodeId>,
    /// The durability it serves with.
    pub durability: Durability,
    /// Whether a local configuration to serve the domain with exists.
    pub configured: bool,
    /// Whether this node serves the domain as active right now (during a switchover it
    /// still does while its store already says standby).
    pub serving: bool,
    /// Peers with a connection in place right now (a probe on it may meet a dead one).
    pub connected: Vec<NodeId>,
}

/// A command for the replica's store. The executor runs it durably and feeds
/// [`Input::Stored`] back before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreCommand {
    /// Record `epoch` and become (or stay) standby: nothing of a lower epoch is applied or
    /// written any more.
    Demote(Epoch),
    /// Become active in `epoch`.
    PromoteTo(Epoch),
}

/// Something the executor must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask `peer` where it stands (`epoch`: record this epoch first).
    Probe {
        /// Request id for the answer.
        req: u64,
        /// The peer.
        peer: NodeId,
        /// The epoch to record (fencing) or announce.
        epoch: Option<Epoch>,
        /// Drop any cached connection to `peer` and dial a new one.
        fresh: bool,
    },
    /// Hand the active role over to `peer` (switchover).
    TakeOver {
        /// Request id for the answer.
        req: u64,
        /// The target.
        peer: NodeId,
        /// The hand-over.
        take: TakeOver,
    },
    /// Answer the request that carried `reply` with `message`.
    Reply {
        /// The request's token.
        reply: u64,
        /// The answer.
        message: Message,
    },
    /// Answer the probe that carried `reply` with this replica's standing now.
    ReplyStanding {
        /// The request's token.
        reply: u64,
    },
    /// Run a store command, then feed [`Input::Stored`].
    Store(StoreCommand),
    /// Serve the domain as active with its local configuration.
    Serve,
    /// Stop serving the domain as active (its shippers and loops end).
    StopServing,
    /// Follow `0` as standby.
    Follow(NodeId),
    /// Stop following.
    Unfollow,
    /// The replica holds everything of the active it now follows (a switchover handed over
    /// at exactly its position): its follower starts synchronized, with its last sync now.
    HandedOver,
    /// Feed [`Input::Durable`] once `peer` holds `lsn` durably.
    AwaitDurable {
        /// The standby.
        peer: NodeId,
        /// The lsn.
        lsn: Lsn,
    },
    /// A line for the log.
    Log {
        /// Warning (`true`) or information.
        warn: bool,
        /// The line.
        line: String,
    },
}

/// What comes in.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The operator promotes this standby (failover).
    Promote {
        /// Promote whatever the guard and the fencing round say.
        force: bool,
        /// Further nodes to probe besides the configured replicas.
        peers: Vec<NodeId>,
        /// Gateways' reports of an active.
        sightings: Vec<Sighting>,
        /// An active heard from within this window counts as alive.
        window: Duration,
    },
    /// The operator moves the active role to standby `to`.
    Switchover {
        /// The target.
        to: NodeId,
        /// How long the target may take to hold the last write.
        timeout: Duration,
    },
    /// A peer asks where this replica stands (`epoch`: to be recorded).
    Probe {
        /// The authenticated sender.
        from: NodeId,
        /// The epoch it carries.
        epoch: Option<Epoch>,
        /// Token for the reply.
        reply: u64,
    },
    /// The active this replica follows hands the active role over.
    TakeOver {
        /// The authenticated sender.
        from: NodeId,
        /// The hand-over.
        take: TakeOver,
        /// Token for the reply.
        reply: u64,
    },
    /// A peer asked to follow this active with a higher epoch than its own.
    HigherEpoch {
        /// The authenticated sender.
        from: NodeId,
        /// The epoch it carries.
        epoch: Epoch,
    },
    /// The answer to [`Action::Probe`] `req` (an error: the exchange failed).
    Answer {
        /// The request id.
        req: u64,
        /// The answer.
        result: Result<Option<ProbeAnswer>, String>,
    },
    /// The answer to [`Action::TakeOver`] `req`.
    TookOver {
        /// The request id.
        req: u64,
        /// The answer.
        result: Result<Position, String>,
    },
    /// The result of the last [`Action::Store`].
    Stored(Result<(), String>),
    /// `peer` holds `lsn` durably (after [`Action::AwaitDurable`]).
    Durable {
        /// The standby.
        peer: NodeId,
        /// The lsn.
        lsn: Lsn,
    },
}

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    /// The new epoch.
    pub epoch: Epoch,
    /// The position the new active starts from.
    pub position: Position,
    /// Records the most advanced peer held beyond this replica (0 when none); only non-zero
    /// for a forced promotion.
    pub behind_records: u64,
    /// Replicas not reached (without force, only the old active can be among them).
    pub unreachable: Vec<NodeId>,
    /// Replicas that held records this replica lacks (only with force).
    pub holders: Vec<NodeId>,
}

/// Why a promotion did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteFailure {
    /// The domain is not followed as standby here.
    #[error("not a standby here")]
    NotStandby,
    /// Another promotion or switchover of the domain is under way here.
    #[error("another promotion or switchover of the domain is under way on this node")]
    Busy,
    /// The split-brain guard refused.
    #[error(transparent)]
    Guard(Refusal),
    /// The fencing round (or the reachability rule before it) refused.
    #[error(transparent)]
    Fence(FenceRefusal),
    /// No epoch above the highest known can be taken.
    #[error(transparent)]
    Epoch(EpochRefusal),
    /// A higher epoch appeared while the promotion ran (another promotion): this replica
    /// recorded it and follows its node.
    #[error("a higher epoch {0} appeared while the promotion ran")]
    Overtaken(Epoch),
    /// A store command failed.
    #[error("the store refused: {0}")]
    Store(String),
}

/// What a switchover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// The epoch the new active took.
    pub epoch: Epoch,
    /// The old active's last position, now held by the new one.
    pub position: Position,
    /// How long writes were refused.
    pub pause: Duration,
}

/// Why a switchover did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchFailure {
    /// The domain is not active here.
    #[error("not active here")]
    NotActive,
    /// The target is not one of the configured standbys.
    #[error("not a configured standby")]
    NotStandby,
    /// Another promotion or switchover of the domain is under way here.
    #[error("another promotion or switchover of the domain is under way on this node")]
    Busy,
    /// It failed, and this node is active again (in a new epoch of its own), or follows the
    /// target or a newer active that is known to have taken over.
    #[error("{0}")]
    Failed(String),
    /// It failed, and whether the target took over is not known: this node stays standby.
    #[error("{0}")]
    Unknown(String),
    /// A store command failed.
    #[error("the store refused: {0}")]
    Store(String),
}

/// The end of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A promotion ended.
    Promotion(Result<Promoted, PromoteFailure>),
    /// A switchover ended.
    Switchover(Result<Switched, SwitchFailure>),
}

impl Facts {
    /// Facts of node `me` that holds no replica of the domain.
    pub fn none(me: &NodeId) -> Facts {
        let position = Position::empty(me.clone());
        Facts {
            role: None,
            epoch: position.epoch.clone(),
            highest: position.epoch.clone(),
            position,
            history: Vec::new(),
            followed: None,
            lag: None,
            replicas: Vec::new(),
            standbys: Vec::new(),
            durability: Durability::Local,
            configured: false,
            serving: false,
            connected: Vec::new(),
        }
    }

    pub(super) fn local(&self) -> Option<LocalDomain<'_>> {
        (self.role.is_some() && !self.replicas.is_empty()).then_some(LocalDomain {
            replicas: &self.replicas,
            followed: self.followed.as_ref(),
        })
    }
}
