//! Manual promotion: the split-brain guard round, the candidate's own fence, the fencing round.

use super::*;

impl Roles {
    pub(super) fn start_promote(
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

    pub(super) fn advance_promote(&mut self, _now: Instant, facts: &Facts, mut p: PromoteOp) {
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
                let verdict = check_promotion(&GuardInput {
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

    pub(super) fn promote_refused(&mut self, why: PromoteFailure) {
        self.op = None;
        self.outcome = Some(Outcome::Promotion(Err(why)));
    }
}
