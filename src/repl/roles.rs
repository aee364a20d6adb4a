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
//! quinn or redb: `crate::node` executes the actions over QUIC and the store, the simulation
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
    check, check_fence, FenceInput, FenceRefusal, FenceReply, GuardInput, PeerProbe, Refusal,
    Sighting,
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

/// One peer's probe: a first attempt (on the cached connection when there is one) and, if
/// that one was on a cached connection and failed or did not answer in [`PROBE_ATTEMPT`],
/// one more on a fresh connection within [`PROBE_BUDGET`].
#[derive(Debug, Clone)]
struct PeerAsk {
    peer: NodeId,
    req: u64,
    fresh: bool,
    deadline: Instant,
    budget_end: Instant,
    first: Option<String>,
    result: Option<Result<Option<ProbeAnswer>, String>>,
}

/// A round of probes to several peers at once.
#[derive(Debug, Clone)]
struct Round {
    epoch: Option<Epoch>,
    asks: Vec<PeerAsk>,
}

impl Round {
    fn start(
        now: Instant,
        peers: &[NodeId],
        epoch: Option<&Epoch>,
        connected: &[NodeId],
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) -> Round {
        let mut asks = Vec::with_capacity(peers.len());
        for peer in peers {
            let fresh = !connected.contains(peer);
            let req = next_req(ids);
            out.push_back(Action::Probe {
                req,
                peer: peer.clone(),
                epoch: epoch.cloned(),
                fresh,
            });
            asks.push(PeerAsk {
                peer: peer.clone(),
                req,
                fresh,
                deadline: now + PROBE_ATTEMPT,
                budget_end: now + PROBE_BUDGET,
                first: None,
                result: None,
            });
        }
        Round {
            epoch: epoch.cloned(),
            asks,
        }
    }

    /// Takes the answer to `req`; false when it belongs to no pending ask of this round.
    fn answered(
        &mut self,
        now: Instant,
        req: u64,
        result: Result<Option<ProbeAnswer>, String>,
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) -> bool {
        let Some(i) = self
            .asks
            .iter()
            .position(|a| a.req == req && a.result.is_none())
        else {
            return false;
        };
        match result {
            Ok(answer) => self.asks[i].result = Some(Ok(answer)),
            Err(why) => self.failed(i, now, why, ids, out),
        }
        true
    }

    fn failed(
        &mut self,
        i: usize,
        now: Instant,
        why: String,
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) {
        let epoch = self.epoch.clone();
        let ask = &mut self.asks[i];
        if !ask.fresh && now < ask.budget_end {
            // The cached connection may be dead without knowing it: once more, afresh.
            ask.req = next_req(ids);
            ask.fresh = true;
            ask.deadline = ask.budget_end;
            ask.first = Some(why);
            out.push_back(Action::Probe {
                req: ask.req,
                peer: ask.peer.clone(),
                epoch,
                fresh: true,
            });
            return;
        }
        let why = match ask.first.take() {
            Some(first) => format!("{why} (first attempt: {first})"),
            None => why,
        };
        ask.result = Some(Err(why));
    }

    fn timeout(&mut self, now: Instant, ids: &mut u64, out: &mut VecDeque<Action>) {
        for i in 0..self.asks.len() {
            let a = &self.asks[i];
            if a.result.is_none() && a.deadline <= now {
                let waited = if a.fresh && a.first.is_some() {
                    PROBE_BUDGET
                } else {
                    PROBE_ATTEMPT
                };
                let why = if a.fresh && a.first.is_some() {
                    format!("no answer within {waited:?} on a fresh connection")
                } else {
                    format!("no answer within {waited:?}")
                };
                self.failed(i, now, why, ids, out);
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.asks
            .iter()
            .filter(|a| a.result.is_none())
            .map(|a| a.deadline)
            .min()
    }

    fn done(&self) -> bool {
        self.asks.iter().all(|a| a.result.is_some())
    }

    fn results(&self) -> Vec<(NodeId, Result<Option<ProbeAnswer>, String>)> {
        self.asks
            .iter()
            .map(|a| {
                let r = a.result.clone().unwrap_or_else(|| Err("not asked".into()));
                (a.peer.clone(), r)
            })
            .collect()
    }
}

fn next_req(ids: &mut u64) -> u64 {
    *ids = ids.wrapping_add(1);
    *ids
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
/// use domsync::model::{DomainId, NodeId, Role};
/// use domsync::repl::roles::{Action, Facts, Input, Roles};
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

    // ---- Answers to peers ------------------------------------------------------------

    /// A peer's probe: only a replica of the domain in the local configuration learns
    /// anything (others get the answer of an unknown domain). An epoch above the highest
    /// known here is recorded first, once it passes [`check_epoch`].
    fn on_probe(&mut self, facts: &Facts, from: &NodeId, epoch: Option<Epoch>, reply: u64) {
        if let Err(refusal) = authorize(from, Ask::Probe, facts.local()) {
            self.log(
                true,
                format!("probe of {} from {from} refused: {refusal}", self.domain),
            );
            self.out.push_back(Action::Reply {
                reply,
                message: Message::ProbeAnswer(None),
            });
            return;
        }
        if let Some(epoch) = epoch.filter(|e| *e > facts.highest) {
            match check_epoch(&epoch, &facts.highest, &facts.replicas) {
                Ok(()) => {
                    if self.learn(facts, &epoch, Some(reply)) {
                        return;
                    }
                }
                Err(e) => self.log(
                    true,
                    format!("epoch from {from}'s probe of {} ignored: {e}", self.domain),
                ),
            }
        }
        self.out.push_back(Action::ReplyStanding { reply });
    }

    /// A higher `epoch` (checked) exists: an active here stops serving and records it; a
    /// standby records it (it acknowledges nothing to a lower active any more) and follows
    /// the epoch's node. An epoch naming this node is one it is being handed and is left to
    /// the hand-over. Returns whether a store command was issued (`then` runs after it).
    fn learn(&mut self, facts: &Facts, epoch: &Epoch, reply: Option<u64>) -> bool {
        if epoch.node == self.me || facts.epoch >= *epoch {
            return false;
        }
        // An active records the epoch first and stops serving after: from the record on, a
        // write is refused naming the new epoch's node (not "no active known").
        let stop_serving = facts.serving || facts.role == Some(Role::Active);
        let follow = match facts.role {
            Some(_) if stop_serving => {
                self.log(
                    true,
                    format!(
                        "{}: a higher epoch {epoch} exists: stepping down to standby, following {}",
                        self.domain, epoch.node
                    ),
                );
                Some(epoch.node.clone())
            }
            Some(_) => (facts.followed.as_ref() != Some(&epoch.node)).then(|| epoch.node.clone()),
            None => return false,
        };
        // The operation under way was overtaken: whatever it was about to do is void (a
        // switchover must not take writes back, a promotion must not go on).
        if let Some(op) = self.op.take() {
            self.log(
                true,
                format!(
                    "{}: a higher epoch {epoch} appeared: the {} under way stops",
                    self.domain,
                    match op {
                        Op::Promote(_) => "promotion",
                        Op::Switch(_) => "switchover",
                    }
                ),
            );
            self.outcome = Some(match op {
                Op::Promote(_) => Outcome::Promotion(Err(PromoteFailure::Overtaken(epoch.clone()))),
                Op::Switch(_) => Outcome::Switchover(Err(SwitchFailure::Failed(format!(
                    "a higher epoch {epoch} appeared meanwhile; this node follows {}",
                    epoch.node
                )))),
            });
        }
        self.store(
            StoreCommand::Demote(epoch.clone()),
            Then::Learned {
                reply,
                follow,
                stop_serving,
            },
        );
        true
    }

    /// A `Follow` with an epoch above this active's own: step down once the epoch passes
    /// [`check_epoch`] (invariant 1: a higher epoch exists, stop taking writes at once).
    fn on_higher_epoch(&mut self, facts: &Facts, from: &NodeId, epoch: &Epoch) {
        if let Err(refusal) = authorize(from, Ask::Follow, facts.local()) {
            self.log(
                true,
                format!("follow of {} from {from} refused: {refusal}", self.domain),
            );
            return;
        }
        if *epoch <= facts.highest {
            return;
        }
        match check_epoch(epoch, &facts.highest, &facts.replicas) {
            Ok(()) => {
                self.learn(facts, epoch, None);
            }
            Err(e) => self.log(
                true,
                format!("epoch in {from}'s follow of {} ignored: {e}", self.domain),
            ),
        }
    }

    /// The target side of a switchover: accepted only from the active this replica
    /// follows, for a replica of the domain in the local configuration, in a new epoch of
    /// this node within [`check_epoch`]'s bounds, at exactly the old active's last position.
    /// The new active serves with its local configuration; what the message says of
    /// durability and standbys is not used.
    fn on_take_over(&mut self, facts: &Facts, from: &NodeId, take: &TakeOver, reply: u64) {
        let refuse = |roles: &mut Roles, why: String| {
            roles.out.push_back(Action::Reply {
                reply,
                message: Message::TookOver(Err(why)),
            });
        };
        let not_standby = format!("{} is not a standby of {} here", self.me, self.domain);
        if let Err(refusal) = authorize(from, Ask::TakeOver, facts.local()) {
            self.log(
                true,
                format!(
                    "hand-over of {} from {from} refused: {refusal}",
                    self.domain
                ),
            );
            return refuse(self, not_standby);
        }
        if facts.role != Some(Role::Standby) || self.op.is_some() {
            return refuse(self, not_standby);
        }
        if !facts.configured {
            return refuse(
                self,
                format!(
                    "{me} has no local configuration of {d} to serve it with (durability, standbys): configure the domain on {me} first",
                    me = self.me,
                    d = self.domain
                ),
            );
        }
        if take.epoch.node != self.me || take.epoch <= facts.highest {
            return refuse(
                self,
                format!(
                    "epoch {} is not a new epoch of {} above {}",
                    take.epoch, self.me, facts.highest
                ),
            );
        }
        if let Err(e) = check_epoch(&take.epoch, &facts.highest, &facts.replicas) {
            self.log(
                true,
                format!("hand-over of {} from {from} refused: {e}", self.domain),
            );
            return refuse(self, e.to_string());
        }
        if facts.position != take.last {
            return refuse(
                self,
                format!(
                    "this replica is at {} and the old active at {}",
                    facts.position, take.last
                ),
            );
        }
        self.out.push_back(Action::Unfollow);
        self.store(
            StoreCommand::PromoteTo(take.epoch.clone()),
            Then::TookOver {
                reply,
                from: from.clone(),
                position: facts.position.clone(),
            },
        );
    }

    // ---- Operations ------------------------------------------------------------------

    fn start_promote(
        &mut self,
        now: Instant,
        facts: &Facts,
        force: bool,
        peers: &[NodeId],
        sightings: Vec<Sighting>,
        window: Duration,
    ) {
        if self.op.is_some() {
            self.outcome = Some(Outcome::Promotion(Err(PromoteFailure::Busy)));
            return;
        }
        let (Some(Role::Standby), Some(followed)) = (facts.role, facts.followed.clone()) else {
            self.outcome = Some(Outcome::Promotion(Err(PromoteFailure::NotStandby)));
            return;
        };
        let mut others: Vec<NodeId> = Vec::new();
        for n in peers.iter().chain(facts.replicas.iter()) {
            if *n != self.me && !others.contains(n) {
                others.push(n.clone());
            }
        }
        let round = Round::start(
            now,
            &others,
            None,
            &facts.connected,
            &mut self.ids,
            &mut self.out,
        );
        self.op = Some(Op::Promote(PromoteOp {
            force,
            followed,
            sightings,
            window,
            step: Promote::Guard { round },
        }));
        self.advance(now, facts);
    }

    fn start_switchover(&mut self, now: Instant, facts: &Facts, to: NodeId, timeout: Duration) {
        let refused = if self.op.is_some() {
            Some(SwitchFailure::Busy)
        } else if facts.role != Some(Role::Active) {
            Some(SwitchFailure::NotActive)
        } else if !facts.standbys.contains(&to) || to == self.me {
            Some(SwitchFailure::NotStandby)
        } else {
            None
        };
        if let Some(f) = refused {
            self.outcome = Some(Outcome::Switchover(Err(f)));
            return;
        }
        // Reach the target on a live connection before writes stop (a target restarted a
        // moment ago is otherwise found out only while writers wait).
        let round = Round::start(
            now,
            std::slice::from_ref(&to),
            None,
            &facts.connected,
            &mut self.ids,
            &mut self.out,
        );
        self.op = Some(Op::Switch(SwitchOp {
            to,
            timeout,
            started: now,
            step: Switch::Reach { round },
        }));
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

    fn on_took_over(
        &mut self,
        now: Instant,
        facts: &Facts,
        req: u64,
        result: Result<Position, String>,
    ) {
        let Some(Op::Switch(s)) = self.op.as_mut() else {
            return;
        };
        let Switch::HandOver {
            offered,
            last,
            req: sent,
            ..
        } = &s.step
        else {
            return;
        };
        if *sent != req {
            return;
        }
        match result {
            Ok(_) => {
                let (epoch, position, to) = (offered.clone(), last.clone(), s.to.clone());
                let pause = now.saturating_duration_since(s.started);
                self.op = None;
                self.out.push_back(Action::StopServing);
                self.out.push_back(Action::Follow(to.clone()));
                self.out.push_back(Action::HandedOver);
                self.log(
                    false,
                    format!(
                        "switchover of {} to {to} complete in epoch {epoch} ({} ms of refused writes)",
                        self.domain,
                        pause.as_millis()
                    ),
                );
                self.outcome = Some(Outcome::Switchover(Ok(Switched {
                    epoch,
                    position,
                    pause,
                })));
            }
            Err(why) => {
                self.switch_failed(now, facts, why);
                self.advance(now, facts);
            }
        }
    }

    fn on_durable(&mut self, now: Instant, facts: &Facts, peer: &NodeId, lsn: Lsn) {
        let Some(Op::Switch(s)) = self.op.as_mut() else {
            return;
        };
        let Switch::Draining { offered, last, .. } = &s.step else {
            return;
        };
        if *peer != s.to || lsn < last.lsn {
            return;
        }
        // Hand over on a connection that just answered: a target restarted a moment ago is
        // reached on a fresh one.
        let round = Round::start(
            now,
            std::slice::from_ref(&s.to),
            None,
            &facts.connected,
            &mut self.ids,
            &mut self.out,
        );
        s.step = Switch::Confirm {
            offered: offered.clone(),
            last: last.clone(),
            round,
        };
        self.advance(now, facts);
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

    fn advance_promote(&mut self, _now: Instant, facts: &Facts, mut p: PromoteOp) {
        match &p.step {
            Promote::Guard { round } if round.done() => {
                let mut probes = Vec::new();
                let mut highest = facts.highest.clone();
                for (peer, r) in round.results() {
                    match r {
                        Ok(answer) => {
                            if let Some(a) = &answer {
                                if a.epoch > highest
                                    && check_epoch(&a.epoch, &highest, &facts.replicas).is_ok()
                                {
                                    highest = a.epoch.clone();
                                }
                            }
                            probes.push((peer, PeerProbe::Answered(answer)));
                        }
                        Err(why) => {
                            self.log(
                                false,
                                format!("probe of {peer} before promoting {}: {why}", self.domain),
                            );
                            probes.push((peer, PeerProbe::Unreachable(why)));
                        }
                    }
                }
                let verdict = check(&GuardInput {
                    me: &self.me,
                    epoch: &facts.epoch,
                    position: &facts.position,
                    lag: facts.lag.clone(),
                    probes: &probes,
                    sightings: &p.sightings,
                    window: p.window,
                    force: p.force,
                });
                let verdict = match verdict {
                    Ok(v) => v,
                    Err(r) => return self.promote_refused(PromoteFailure::Guard(r)),
                };
                if !p.force {
                    // Nothing is fenced while a replica that may hold acknowledged writes is
                    // out of reach: the refusal leaves the domain as it was.
                    if let Some((node, PeerProbe::Unreachable(why))) = probes
                        .iter()
                        .find(|(n, pr)| *n != p.followed && matches!(pr, PeerProbe::Unreachable(_)))
                    {
                        return self.promote_refused(PromoteFailure::Fence(
                            FenceRefusal::Unreachable {
                                node: node.clone(),
                                why: why.clone(),
                            },
                        ));
                    }
                }
                for s in &verdict.alive {
                    self.log(
                        true,
                        format!(
                            "{}: forced promotion while {} was seen active by {} {} ms ago",
                            self.domain,
                            s.active,
                            s.seer,
                            s.age.as_millis()
                        ),
                    );
                }
                let candidate = match next_epoch(&highest, &self.me) {
                    Ok(c) => c,
                    Err(e) => return self.promote_refused(PromoteFailure::Epoch(e)),
                };
                // This replica first: nothing more from the old active lands here.
                p.step = Promote::SelfFence {
                    probes,
                    candidate: candidate.clone(),
                    behind_records: verdict.behind_records,
                };
                self.op = Some(Op::Promote(p));
                self.store(StoreCommand::Demote(candidate), Then::Operation);
            }
            Promote::Fencing {
                round,
                out_of_reach,
                candidate,
                behind_records,
            } if round.done() => {
                let mut replies: Vec<(NodeId, FenceReply)> = round
                    .results()
                    .into_iter()
                    .map(|(n, r)| {
                        (
                            n,
                            r.map_or_else(FenceReply::Unreachable, FenceReply::Answered),
                        )
                    })
                    .collect();
                replies.extend(
                    out_of_reach
                        .iter()
                        .map(|(n, why)| (n.clone(), FenceReply::Unreachable(why.clone()))),
                );
                let fence = check_fence(&FenceInput {
                    candidate,
                    position: &facts.position,
                    history: &facts.history,
                    old_active: Some(&p.followed),
                    replies: &replies,
                    force: p.force,
                });
                let fence = match fence {
                    Ok(f) => f,
                    Err(refusal) => {
                        self.log(
                            true,
                            format!(
                                "promotion of {} refused after fencing with {candidate}: {refusal}",
                                self.domain
                            ),
                        );
                        // The replicas reached keep the candidate epoch: the old active gets
                        // no more confirmations from them. This replica waits for the next
                        // active.
                        self.out.push_back(Action::Follow(p.followed.clone()));
                        self.outcome =
                            Some(Outcome::Promotion(Err(PromoteFailure::Fence(refusal))));
                        return;
                    }
                };
                let mut behind = *behind_records;
                if !fence.holders.is_empty() {
                    behind = behind.max(1);
                    self.log(
                        true,
                        format!(
                            "{}: forced promotion: {:?} hold records this replica lacks; they go to their collision archive",
                            self.domain, fence.holders
                        ),
                    );
                }
                let mut unreachable = fence.unreachable;
                unreachable.sort();
                unreachable.dedup();
                let candidate = candidate.clone();
                p.step = Promote::Promoting {
                    done: Promoted {
                        epoch: candidate.clone(),
                        position: facts.position.clone(),
                        behind_records: behind,
                        unreachable,
                        holders: fence.holders,
                    },
                };
                self.op = Some(Op::Promote(p));
                self.store(StoreCommand::PromoteTo(candidate), Then::Operation);
            }
            _ => self.op = Some(Op::Promote(p)),
        }
    }

    fn promote_refused(&mut self, why: PromoteFailure) {
        self.op = None;
        self.outcome = Some(Outcome::Promotion(Err(why)));
    }

    fn advance_switch(&mut self, now: Instant, facts: &Facts, mut s: SwitchOp) {
        match &s.step {
            Switch::Reach { round } if round.done() => {
                let answer = round.results().pop().map(|(_, r)| r);
                let why = match answer {
                    Some(Ok(Some(a))) if a.role == Role::Standby => None,
                    Some(Ok(_)) => Some("it does not hold the domain as a standby".to_owned()),
                    Some(Err(why)) => Some(format!("it cannot be reached: {why}")),
                    None => Some("it was not asked".to_owned()),
                };
                if let Some(why) = why {
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Failed(why))));
                    return;
                }
                let offered = match next_epoch(&facts.highest, &s.to) {
                    Ok(e) => e,
                    Err(e) => {
                        self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Failed(
                            e.to_string(),
                        ))));
                        return;
                    }
                };
                s.started = now;
                s.step = Switch::Demoting {
                    offered: offered.clone(),
                };
                self.op = Some(Op::Switch(s));
                // No more writes here; writers are told the new active's name.
                self.store(StoreCommand::Demote(offered), Then::Operation);
            }
            Switch::Confirm {
                offered,
                last,
                round,
            } if round.done() => {
                let answer = round.results().pop().map(|(_, r)| r);
                let why = match answer {
                    Some(Ok(Some(a))) if a.position == *last && a.role == Role::Standby => None,
                    Some(Ok(Some(a))) => Some(format!(
                        "it stands at {} as {} instead of {last}",
                        a.position, a.role
                    )),
                    Some(Ok(None)) => Some("it holds no replica of the domain".to_owned()),
                    Some(Err(e)) => Some(e),
                    None => Some("it was not asked".to_owned()),
                };
                if let Some(why) = why {
                    self.op = Some(Op::Switch(s));
                    self.switch_failed(now, facts, why);
                    return self.advance(now, facts);
                }
                let mut standbys: Vec<NodeId> = facts
                    .standbys
                    .iter()
                    .filter(|n| **n != s.to)
                    .cloned()
                    .collect();
                standbys.push(self.me.clone());
                let take = TakeOver {
                    domain: self.domain.clone(),
                    epoch: offered.clone(),
                    last: last.clone(),
                    durability: facts.durability,
                    standbys,
                };
                let req = next_req(&mut self.ids);
                self.out.push_back(Action::TakeOver {
                    req,
                    peer: s.to.clone(),
                    take,
                });
                s.step = Switch::HandOver {
                    offered: offered.clone(),
                    last: last.clone(),
                    req,
                    deadline: now + TAKE_OVER_TIMEOUT,
                };
                self.op = Some(Op::Switch(s));
            }
            Switch::Failing {
                offered,
                error,
                round,
            } if round.done() => {
                let answer = round.results().pop().map(|(_, r)| r);
                // If the target did take over (only its answer was lost) or a higher epoch
                // appeared meanwhile, follow that active instead of making a second one.
                // An epoch in the target's answer is a peer's word: it counts only once it
                // passes `check_epoch` (a replica of the domain, a bounded step).
                let checked = |e: &Epoch| check_epoch(e, offered, &facts.replicas).is_ok();
                let successor = match &answer {
                    Some(Ok(Some(a))) if a.role == Role::Active && a.epoch >= *offered => {
                        Some(s.to.clone())
                    }
                    Some(Ok(Some(a))) if a.epoch > *offered && checked(&a.epoch) => {
                        Some(a.epoch.node.clone())
                    }
                    _ if facts.highest > *offered => Some(facts.highest.node.clone()),
                    _ => None,
                };
                let error = error.clone();
                if let Some(active) = successor.filter(|n| *n != self.me) {
                    self.log(
                        true,
                        format!(
                            "switchover of {} failed ({error}) but {active} is active: following it",
                            self.domain
                        ),
                    );
                    self.stand_by(&active);
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Failed(error))));
                    return;
                }
                if let Some(Err(why)) = answer {
                    let to = s.to.clone();
                    self.log(
                        true,
                        format!(
                            "switchover of {} to {to}: outcome unknown ({why}); staying standby",
                            self.domain
                        ),
                    );
                    self.stand_by(&to);
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Unknown(error))));
                    return;
                }
                // The target did not take over: fence everyone above the offered epoch, then
                // take writes again in that epoch.
                let highest = facts.highest.clone().max(offered.clone());
                let again = match next_epoch(&highest, &self.me) {
                    Ok(e) => e,
                    Err(e) => {
                        let to = s.to.clone();
                        self.stand_by(&to);
                        self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Unknown(
                            format!("{error}; {e}"),
                        ))));
                        return;
                    }
                };
                let others: Vec<NodeId> = facts
                    .replicas
                    .iter()
                    .filter(|n| **n != self.me)
                    .cloned()
                    .collect();
                let round = Round::start(
                    now,
                    &others,
                    Some(&again),
                    &facts.connected,
                    &mut self.ids,
                    &mut self.out,
                );
                s.step = Switch::Refencing {
                    error,
                    again,
                    round,
                };
                self.op = Some(Op::Switch(s));
                self.advance(now, facts);
            }
            Switch::Refencing {
                error,
                again,
                round,
            } if round.done() => {
                let replies: Vec<(NodeId, FenceReply)> = round
                    .results()
                    .into_iter()
                    .map(|(n, r)| {
                        (
                            n,
                            r.map_or_else(FenceReply::Unreachable, FenceReply::Answered),
                        )
                    })
                    .collect();
                let fenced = check_fence(&FenceInput {
                    candidate: again,
                    position: &facts.position,
                    history: &facts.history,
                    old_active: None,
                    replies: &replies,
                    force: false,
                });
                let error = error.clone();
                if let Err(refusal) = fenced {
                    let to = s.to.clone();
                    self.log(
                        true,
                        format!(
                            "switchover of {} failed and this node cannot take writes again: {refusal}",
                            self.domain
                        ),
                    );
                    self.stand_by(&to);
                    self.outcome = Some(Outcome::Switchover(Err(SwitchFailure::Unknown(format!(
                        "{error}; taking writes back was refused: {refusal}"
                    )))));
                    return;
                }
                let again = again.clone();
                s.step = Switch::Resuming { error };
                self.op = Some(Op::Switch(s));
                self.store(StoreCommand::PromoteTo(again), Then::Operation);
            }
            _ => self.op = Some(Op::Switch(s)),
        }
    }

    /// The switchover failed at some step after writes stopped: find out who is active.
    fn switch_failed(&mut self, now: Instant, facts: &Facts, why: String) {
        let Some(Op::Switch(s)) = self.op.as_mut() else {
            return;
        };
        let offered = match &s.step {
            Switch::Draining { offered, .. }
            | Switch::Confirm { offered, .. }
            | Switch::HandOver { offered, .. } => offered.clone(),
            _ => return,
        };
        let error = why;
        let round = Round::start(
            now,
            std::slice::from_ref(&s.to),
            None,
            &facts.connected,
            &mut self.ids,
            &mut self.out,
        );
        s.step = Switch::Failing {
            offered,
            error,
            round,
        };
    }

    /// Ends a failed switchover as standby following `active`.
    fn stand_by(&mut self, active: &NodeId) {
        self.op = None;
        self.out.push_back(Action::StopServing);
        self.out.push_back(Action::Follow(active.clone()));
    }
}

#[cfg(test)]
#[path = "roles_tests.rs"]
mod tests;
