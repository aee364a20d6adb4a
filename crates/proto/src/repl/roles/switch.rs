//! Switchover: reach the target, stop writes, wait for its durable ack, hand over; and what
//! happens when that fails.

use super::*;

impl Roles {
    pub(super) fn start_switchover(
        &mut self,
        now: Instant,
        facts: &Facts,
        to: NodeId,
        timeout: Duration,
    ) {
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
        let round = Round::target(now, &to, &facts.connected, &mut self.ids, &mut self.out);
        self.op = Some(Op::Switch(SwitchOp {
            to,
            timeout,
            started: now,
            step: Switch::Reach { round },
        }));
        self.advance(now, facts);
    }

    pub(super) fn on_took_over(
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

    pub(super) fn on_durable(&mut self, now: Instant, facts: &Facts, peer: &NodeId, lsn: Lsn) {
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
        let round = Round::target(now, &s.to, &facts.connected, &mut self.ids, &mut self.out);
        s.step = Switch::Confirm {
            offered: offered.clone(),
            last: last.clone(),
            round,
        };
        self.advance(now, facts);
    }

    pub(super) fn advance_switch(&mut self, now: Instant, facts: &Facts, mut s: SwitchOp) {
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
    pub(super) fn switch_failed(&mut self, now: Instant, facts: &Facts, why: String) {
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
        let round = Round::target(now, &s.to, &facts.connected, &mut self.ids, &mut self.out);
        s.step = Switch::Failing {
            offered,
            error,
            round,
        };
    }

    /// Ends a failed switchover as standby following `active`.
    pub(super) fn stand_by(&mut self, active: &NodeId) {
        self.op = None;
        self.out.push_back(Action::StopServing);
        self.out.push_back(Action::Follow(active.clone()));
    }
}
