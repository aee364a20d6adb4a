//! Answers to peers: probes (and the epochs they carry), a `Follow` with a higher epoch, the
//! target side of a hand-over; stepping down when a higher epoch is learned.

use super::*;

impl Roles {
    /// A peer's probe: only a replica of the domain in the local configuration learns
    /// anything (others get the answer of an unknown domain). An epoch above the highest
    /// known here is recorded first, once it passes [`check_epoch`].
    pub(super) fn on_probe(
        &mut self,
        facts: &Facts,
        from: &NodeId,
        epoch: Option<Epoch>,
        reply: u64,
    ) {
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
    pub(super) fn learn(&mut self, facts: &Facts, epoch: &Epoch, reply: Option<u64>) -> bool {
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
    pub(super) fn on_higher_epoch(&mut self, facts: &Facts, from: &NodeId, epoch: &Epoch) {
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
    pub(super) fn on_take_over(
        &mut self,
        facts: &Facts,
        from: &NodeId,
        take: &TakeOver,
        reply: u64,
    ) {
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
}
