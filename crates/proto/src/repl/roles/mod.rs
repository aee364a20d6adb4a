//! The role protocol of one replica of one domain, sans-IO (DESIGN.md §6, §7): manual
//! promotion with its guard and fencing rounds, switchover and what happens when it fails,
//! the target's side of a hand-over, probes (and the epochs they carry), and stepping down
//! when a higher epoch shows up.
//!
//! [`Roles`] takes [`Input`]s (an operator command, a peer's message with its authenticated
//! sender, a peer's answer, the result of a store command) together with an explicit `now`
//! and the replica's [`Facts`] as the store and the node see them at that moment, and
//! returns [`Action`]s (send a probe or a hand-over, reply, run a store command, follow,
//! serve, stop serving, wait for a standby's durable ack, log). Nothing here touches tokio,
//! quinn or redb: `domsync_node` executes the actions over QUIC and the store, the simulation
//! tests execute them over an in-memory network, and both run this same code.
//!
//! # Executor contract
//! - Actions are taken with [`Roles::poll_action`] and executed in order.
//! - [`Action::Store`] is executed before the next action, and its result is fed back at
//!   once with [`Input::Stored`] (no other input in between): store commands are the only
//!   synchronous steps.
//! - [`Action::Probe`] and [`Action::TakeOver`] are sent; their answers come back later as
//!   [`Input::Answer`] / [`Input::TookOver`] with the same `req`, or never (the machine's
//!   own timers, [`Roles::poll_timeout`] / [`Roles::handle_timeout`], decide when a peer
//!   counts as unreachable). `fresh` asks for a new connection (a cached one may be dead: a
//!   peer restarted a moment ago looks alive until its idle timeout).
//! - [`Action::Reply`] / [`Action::ReplyStanding`] answer the request that carried the same
//!   `reply` token.
//! - Only one operation (promotion or switchover) runs per domain; its result is taken with
//!   [`Roles::take_outcome`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::authorize::{authorize, check_epoch, next_epoch, Ask, EpochRefusal, LocalDomain};
use super::message::{Message, ProbeAnswer, TakeOver};
use super::promotion::{
    check_fence, check_promotion, FenceInput, FenceRefusal, FenceReply, GuardInput, PeerProbe,
    Refusal, Sighting,
};
use super::Durability;
use crate::model::{DomainId, Epoch, HistoryEntry, Lsn, NodeId, Position, Role};

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

/// A promotion under way.
#[derive(Debug, Clone)]
enum Promote {
    /// Round 1: the split-brain guard's probes.
    Guard { round: Round },
    /// This replica records the candidate epoch.
    SelfFence {
        probes: Vec<(NodeId, PeerProbe)>,
        candidate: Epoch,
        behind_records: u64,
    },
    /// Round 2: every other replica records the candidate epoch.
    Fencing {
        round: Round,
        out_of_reach: Vec<(NodeId, String)>,
        candidate: Epoch,
        behind_records: u64,
    },
    /// The store makes this replica active.
    Promoting { done: Promoted },
}

/// A switchover under way.
#[derive(Debug, Clone)]
enum Switch {
    /// The target is reached before writes stop.
    Reach { round: Round },
    /// This replica records the offered epoch (no more writes here).
    Demoting { offered: Epoch },
    /// Waiting for the target to hold the last write durably.
    Draining {
        offered: Epoch,
        last: Position,
        deadline: Instant,
    },
    /// The target is asked once more, on a connection that answers, where it stands.
    Confirm {
        offered: Epoch,
        last: Position,
        round: Round,
    },
    /// The hand-over was sent.
    HandOver {
        offered: Epoch,
        last: Position,
        req: u64,
        deadline: Instant,
    },
    /// It failed: who is active now?
    Failing {
        offered: Epoch,
        error: String,
        round: Round,
    },
    /// It failed and the target did not take over: every other replica records a new epoch
    /// of this node before it takes writes again.
    Refencing {
        error: String,
        again: Epoch,
        round: Round,
    },
    /// The store makes this replica active again.
    Resuming { error: String },
}

#[derive(Debug, Clone)]
struct SwitchOp {
    to: NodeId,
    timeout: Duration,
    started: Instant,
    step: Switch,
}

#[derive(Debug, Clone)]
struct PromoteOp {
    force: bool,
    followed: NodeId,
    sightings: Vec<Sighting>,
    window: Duration,
    step: Promote,
}

#[derive(Debug, Clone)]
enum Op {
    Promote(PromoteOp),
    Switch(SwitchOp),
}

/// What to do once the pending store command is done.
#[derive(Debug, Clone)]
enum Then {
    /// The running operation continues.
    Operation,
    /// A higher epoch was recorded: stop serving (when this node was serving), follow its
    /// node (when set), then answer the probe that carried it (when set).
    Learned {
        reply: Option<u64>,
        follow: Option<NodeId>,
        stop_serving: bool,
    },
    /// A hand-over is answered.
    TookOver {
        reply: u64,
        from: NodeId,
        position: Position,
    },
}

/// The role protocol of one replica of one domain. See the module documentation.
///
/// ```
/// use std::time::Instant;
/// use domsync_proto::model::{DomainId, NodeId, Role};
/// use domsync_proto::repl::roles::{Action, Facts, Input, Roles};
///
/// let (a, x) = (NodeId::new("a")?, NodeId::new("x")?);
/// let mut roles = Roles::new(a.clone(), DomainId::new("t1")?);
/// let facts = Facts { role: Some(Role::Active), replicas: vec![a.clone()], ..Facts::none(&a) };
/// // A node that is not a replica of the domain learns nothing.
/// roles.handle(Instant::now(), &facts, Input::Probe { from: x, epoch: None, reply: 7 });
/// assert!(matches!(roles.poll_action(), Some(Action::Log { .. })));
/// assert!(matches!(roles.poll_action(), Some(Action::Reply { reply: 7, .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Roles {
    me: NodeId,
    domain: DomainId,
    op: Option<Op>,
    then: Option<Then>,
    out: VecDeque<Action>,
    ids: u64,
    outcome: Option<Outcome>,
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

    fn local(&self) -> Option<LocalDomain<'_>> {
        (self.role.is_some() && !self.replicas.is_empty()).then_some(LocalDomain {
            replicas: &self.replicas,
            followed: self.followed.as_ref(),
        })
    }
}

impl Roles {
    /// The role machine of node `me` for `domain`.
    pub fn new(me: NodeId, domain: DomainId) -> Roles {
        Roles {
            me,
            domain,
            op: None,
            then: None,
            out: VecDeque::new(),
            ids: 0,
            outcome: None,
        }
    }

    /// Whether a promotion or switchover is under way.
    pub fn busy(&self) -> bool {
        self.op.is_some()
    }

    /// The next action to execute.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// When [`Roles::handle_timeout`] must be called next (`None`: no timer runs).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.op.as_ref()? {
            Op::Promote(p) => match &p.step {
                Promote::Guard { round } | Promote::Fencing { round, .. } => round.deadline(),
                Promote::SelfFence { .. } | Promote::Promoting { .. } => None,
            },
            Op::Switch(s) => match &s.step {
                Switch::Reach { round }
                | Switch::Confirm { round, .. }
                | Switch::Failing { round, .. }
                | Switch::Refencing { round, .. } => round.deadline(),
                Switch::Draining { deadline, .. } | Switch::HandOver { deadline, .. } => {
                    Some(*deadline)
                }
                Switch::Demoting { .. } | Switch::Resuming { .. } => None,
            },
        }
    }

    /// The result of the operation that ended, once.
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    fn log(&mut self, warn: bool, line: String) {
        self.out.push_back(Action::Log { warn, line });
    }

    fn store(&mut self, cmd: StoreCommand, then: Then) {
        debug_assert!(self.then.is_none(), "one store command at a time");
        self.then = Some(then);
        self.out.push_back(Action::Store(cmd));
    }

    /// Takes one input. `facts` is the replica as it stands now.
    pub fn handle(&mut self, now: Instant, facts: &Facts, input: Input) {
        // The executor feeds a store result before anything else.
        debug_assert!(
            self.then.is_none() || matches!(input, Input::Stored(_)),
            "input {input:?} while a store command is pending"
        );
        match input {
            Input::Promote {
                force,
                peers,
                sightings,
                window,
            } => self.start_promote(now, facts, force, &peers, sightings, window),
            Input::Switchover { to, timeout } => self.start_switchover(now, facts, to, timeout),
            Input::Probe { from, epoch, reply } => self.on_probe(facts, &from, epoch, reply),
            Input::TakeOver { from, take, reply } => self.on_take_over(facts, &from, &take, reply),
            Input::HigherEpoch { from, epoch } => self.on_higher_epoch(facts, &from, &epoch),
            Input::Answer { req, result } => self.on_answer(now, facts, req, result),
            Input::TookOver { req, result } => self.on_took_over(now, facts, req, result),
            Input::Stored(result) => self.on_stored(now, facts, result),
            Input::Durable { peer, lsn } => self.on_durable(now, facts, &peer, lsn),
        }
    }

    /// Fires the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, facts: &Facts) {
        let Some(op) = self.op.as_mut() else { return };
        let ids = &mut self.ids;
        let out = &mut self.out;
        let mut fail: Option<String> = None;
        match op {
            Op::Promote(p) => match &mut p.step {
                Promote::Guard { round } | Promote::Fencing { round, .. } => {
                    round.timeout(now, ids, out);
                }
                _ => {}
            },
            Op::Switch(s) => match &mut s.step {
                Switch::Reach { round }
                | Switch::Confirm { round, .. }
                | Switch::Failing { round, .. }
                | Switch::Refencing { round, .. } => round.timeout(now, ids, out),
                Switch::Draining { last, deadline, .. } if *deadline <= now => {
                    fail = Some(format!(
                        "it did not reach lsn {} in {:?}",
                        last.lsn, s.timeout
                    ));
                }
                Switch::HandOver { deadline, .. } if *deadline <= now => {
                    fail = Some(format!(
                        "no answer to the hand-over within {TAKE_OVER_TIMEOUT:?}"
                    ));
                }
                _ => {}
            },
        }
        if let Some(why) = fail {
            self.switch_failed(now, facts, why);
        }
        self.advance(now, facts);
    }

    fn on_answer(
        &mut self,
        now: Instant,
        facts: &Facts,
        req: u64,
        result: Result<Option<ProbeAnswer>, String>,
    ) {
        let ids = &mut self.ids;
        let out = &mut self.out;
        let taken = match self.op.as_mut() {
            Some(Op::Promote(p)) => match &mut p.step {
                Promote::Guard { round } | Promote::Fencing { round, .. } => {
                    round.answered(now, req, result, ids, out)
                }
                _ => false,
            },
            Some(Op::Switch(s)) => match &mut s.step {
                Switch::Reach { round }
                | Switch::Confirm { round, .. }
                | Switch::Failing { round, .. }
                | Switch::Refencing { round, .. } => round.answered(now, req, result, ids, out),
                _ => false,
            },
            None => false,
        };
        if taken {
            self.advance(now, facts);
        }
    }

    fn on_stored(&mut self, now: Instant, facts: &Facts, result: Result<(), String>) {
        let Some(then) = self.then.take() else {
            debug_assert!(false, "a store result without a store command");
            return;
        };
        match then {
            Then::Learned {
                reply,
                follow,
                stop_serving,
            } => {
                if stop_serving {
                    self.out.push_back(Action::StopServing);
                }
                match result {
                    Ok(()) => {
                        if let Some(n) = follow {
                            self.out.push_back(Action::Follow(n));
                        }
                    }
                    Err(e) => self.log(
                        true,
                        format!("{}: cannot record a higher epoch: {e}", self.domain),
                    ),
                }
                if let Some(reply) = reply {
                    self.out.push_back(Action::ReplyStanding { reply });
                }
            }
            Then::TookOver {
                reply,
                from,
                position,
            } => match result {
                Ok(()) => {
                    self.out.push_back(Action::Serve);
                    self.log(
                        false,
                        format!(
                            "{}: took over as active in epoch {} from {from}",
                            self.domain, facts.epoch
                        ),
                    );
                    self.out.push_back(Action::Reply {
                        reply,
                        message: Message::TookOver(Ok(position)),
                    });
                }
                Err(e) => {
                    self.out.push_back(Action::Follow(from));
                    self.out.push_back(Action::Reply {
                        reply,
                        message: Message::TookOver(Err(e)),
                    });
                }
            },
            Then::Operation => self.op_stored(now, facts, result),
        }
    }

    /// A store command of the running operation finished.
    fn op_stored(&mut self, now: Instant, facts: &Facts, result: Result<(), String>) {
        let Some(op) = self.op.take() else { return };
        match op {
            Op::Promote(mut p) => {
                let step = std::mem::replace(
                    &mut p.step,
                    Promote::Promoting {
                        done: Promoted {
                            epoch: facts.epoch.clone(),
                            position: facts.position.clone(),
                            behind_records: 0,
                            unreachable: Vec::new(),
                            holders: Vec::new(),
                        },
                    },
                );
                match (step, result) {
                    (_, Err(e)) => {
                        // Nothing more happens; the replica keeps following.
                        self.out.push_back(Action::Follow(p.followed.clone()));
                        self.outcome = Some(Outcome::Promotion(Err(PromoteFailure::Store(e))));
                    }
                    (
                        Promote::SelfFence {
                            probes,
                            candidate,
                            behind_records,
                        },
                        Ok(()),
                    ) => {
                        self.out.push_back(Action::Unfollow);
                        // A replica found out of reach by the guard round a moment ago (on a
                        // fresh connection) is not waited for again: without force that can
                        // only be the old active.
                        let mut out_of_reach = Vec::new();
                        let mut reach = Vec::new();
                        for (n, probe) in probes {
                            match probe {
                                PeerProbe::Unreachable(why) => out_of_reach.push((n, why)),
                                PeerProbe::Answered(_) => reach.push(n),
                            }
                        }
                        let round = Round::start(
                            now,
                            &reach,
                            Some(&candidate),
                            &facts.connected,
                            &mut self.ids,
                            &mut self.out,
                        );
                        p.step = Promote::Fencing {
                            round,
                            out_of_reach,
                            candidate,
                            behind_records,
                        };
                        self.op = Some(Op::Promote(p));
                        self.advance(now, facts);
                    }
                    (Promote::Promoting { done }, Ok(())) => {
                        debug_assert_eq!(facts.role, Some(Role::Active));
                        debug_assert_eq!(facts.epoch, done.epoch);
                        self.out.push_back(Action::Serve);
                        self.log(
                            true,
                            format!(
                                "{}: promoted to active in epoch {} (forced: {}, {} records behind)",
                                self.domain, done.epoch, p.force, done.behind_records
                            ),
                        );
                        self.outcome = Some(Outcome::Promotion(Ok(Promoted {
                            position: facts.position.clone(),
                            ..done
                        })));
                    }
                    (step, Ok(())) => {
                        debug_assert!(false, "store result in promotion step {step:?}");
                        p.step = step;
                        self.op = Some(Op::Promote(p));
                    }
                }
            }
            Op::Switch(mut s) => match (&s.step, result) {
                (Switch::Demoting { offered }, Ok(())) => {
                    debug_assert_eq!(facts.role, Some(Role::Standby));
                    let last = facts.position.clone();
                    self.out.push_back(Action::AwaitDurable {
                        peer: s.to.clone(),
                        lsn: last.lsn,
                    });
                    s.step = Switch::Draining {
                        offered: offered.clone(),
                        last,
                        deadline: now + s.timeout,
                    };
                    self.op = Some(Op::Switch(s));
                }
                (Switch::Demoting { .. }, Err(e)) => {
                    // Nothing was recorded: still active.
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Store(e))));
                }
                (Switch::Resuming { error }, Ok(())) => {
                    self.log(
                        true,
                        format!(
                            "switchover of {} failed ({error}); active again in epoch {}",
                            self.domain, facts.epoch
                        ),
                    );
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Failed(
                        error.clone(),
                    ))));
                }
                (Switch::Resuming { error }, Err(e)) => {
                    let to = s.to.clone();
                    self.stand_by(&to);
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Unknown(format!(
                        "{error}; taking writes back failed: {e}"
                    )))));
                }
                (step, _) => {
                    debug_assert!(false, "store result in switchover step {step:?}");
                    self.op = Some(Op::Switch(s));
                }
            },
        }
    }

    /// Moves the running operation on once a round completed.
    fn advance(&mut self, now: Instant, facts: &Facts) {
        let Some(op) = self.op.take() else { return };
        match op {
            Op::Promote(p) => self.advance_promote(now, facts, p),
            Op::Switch(s) => self.advance_switch(now, facts, s),
        }
    }
}

mod peers;
mod promote;
mod round;
mod switch;

use round::{next_req, Round};

#[cfg(test)]
mod tests;
