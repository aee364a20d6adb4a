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

use super::authorize::{authorize, check_epoch, next_epoch, Ask};
use super::message::{Message, ProbeAnswer, TakeOver};
use super::promotion::{
    check_fence, check_promotion, FenceInput, FenceRefusal, FenceReply, GuardInput, PeerProbe,
    Sighting,
};
use crate::model::{DomainId, Epoch, Lsn, NodeId, Position, Role};

pub use io::{
    Action, Facts, Input, Outcome, PromoteFailure, Promoted, StoreCommand, SwitchFailure, Switched,
    PROBE_ATTEMPT, PROBE_BUDGET, TAKE_OVER_TIMEOUT,
};

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

mod io;
mod peers;
mod promote;
mod round;
mod switch;

use round::{next_req, Round};

#[cfg(test)]
mod tests;
