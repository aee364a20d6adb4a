//! The node's side of the role protocol: it executes what the sans-IO role machine
//! ([`domsync_proto::repl::roles::Roles`], one per domain) asks for (probes, hand-overs, store
//! commands, following and serving) and feeds it what comes back. Every decision (the
//! split-brain guard, fencing, switchover and its failure, the answers to peers, stepping
//! down) is made there, in the code the deterministic simulation runs.
//!
//! `mod.rs` runs the machine (facts in, actions executed, store results fed back);
//! [`probe`] exchanges with peers; [`commands`] are the operator's promote and switchover.

mod commands;
mod probe;

pub use commands::{PromoteError, Promotion, Switchover, SwitchoverError};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::{lock, Node};
use domsync_proto::model::{DomainId, Epoch, NodeId, Position};
use domsync_proto::repl::roles::{
    Action, Facts, Input, Outcome, PromoteFailure, Roles, StoreCommand, SwitchFailure,
};
use domsync_proto::repl::{Message, ProbeAnswer, SyncStatus};
use domsync_store::{Domain, StoreError};

pub use domsync_proto::repl::roles::PROBE_BUDGET;

/// Most gateways whose sightings are kept per domain (bounded memory).
const MAX_SIGHTINGS: usize = 4096;

/// A domain's role machine, and its replica while neither served nor followed.
pub(super) struct RoleSlot {
    machine: tokio::sync::Mutex<Roles>,
    replica: Mutex<Option<Domain>>,
    /// The end of an operation that a peer's message brought about (a higher epoch), for
    /// the task running the operation.
    ended: Mutex<Option<Outcome>>,
}

/// What one turn of the role machine produced for its caller.
#[derive(Default)]
struct Driven {
    replies: Vec<(u64, Message)>,
    outcome: Option<Outcome>,
    timeout: Option<Instant>,
    store_error: Option<StoreError>,
}

impl Node {
    /// Whether `domain` has a replica or a role machine here: a peer naming any other domain
    /// gets the unknown-domain answer without anything being kept for it (bounded memory).
    fn holds(&self, domain: &DomainId) -> bool {
        self.replica(domain).is_some() || lock(&self.inner.roles).contains_key(domain)
    }

    /// The role machine of `domain` on this node (created on first use; callers check
    /// [`Node::holds`] first for anything a peer names).
    fn role_slot(&self, domain: &DomainId) -> Arc<RoleSlot> {
        let mut all = lock(&self.inner.roles);
        Arc::clone(all.entry(domain.clone()).or_insert_with(|| {
            Arc::new(RoleSlot {
                machine: tokio::sync::Mutex::new(Roles::new(self.id().clone(), domain.clone())),
                replica: Mutex::new(None),
                ended: Mutex::new(None),
            })
        }))
    }

    /// The replica of `domain` as the role machine needs it: also while it is neither
    /// served nor followed (between the steps of a promotion).
    fn held_replica(&self, domain: &DomainId, slot: &RoleSlot) -> Option<Domain> {
        let now = self.replica(domain);
        let mut kept = lock(&slot.replica);
        if let Some(d) = &now {
            *kept = Some(d.clone());
        }
        now.or_else(|| kept.clone())
    }

    /// What the store and this node say about `domain` right now.
    fn facts(&self, domain: &DomainId, replica: Option<&Domain>) -> Facts {
        let mut facts = Facts::none(self.id());
        let Some(replica) = replica else {
            return facts;
        };
        let (Ok(status), Ok(highest)) = (replica.status(), replica.highest_epoch()) else {
            return facts;
        };
        let active = self.active(domain);
        let config = active
            .as_ref()
            .map(|ad| ad.config().clone())
            .or_else(|| self.configuration(domain));
        let mut replicas = self.replicas(domain);
        if replicas.is_empty() {
            replicas.push(self.id().clone());
            if let Some(c) = &config {
                replicas.extend(c.standbys.iter().filter(|n| *n != self.id()).cloned());
            }
        }
        facts.role = Some(status.role);
        facts.epoch = status.epoch;
        facts.highest = highest;
        facts.position = status.position;
        facts.history = status.history;
        facts.followed = lock(&self.inner.standbys).get(domain).map(|sd| sd.active());
        facts.lag = self.follower_status(domain).map(|r| match r.status {
            SyncStatus::Lagging { records, .. } => (r.active, records),
            _ => (r.active, 0),
        });
        facts.connected = replicas
            .iter()
            .filter(|n| self.has_connection(n))
            .cloned()
            .collect();
        facts.replicas = replicas;
        facts.configured = self.configuration(domain).is_some();
        facts.serving = active.is_some();
        if let Some(c) = config {
            facts.standbys = c.standbys;
            facts.durability = c.durability;
        }
        facts
    }

    /// Feeds one input (or the timers) to the role machine of `domain` and carries out
    /// what it asks: store commands at once (their result goes straight back), sends as
    /// tasks whose answers come back on `events`, replies collected for the caller.
    async fn drive(
        &self,
        domain: &DomainId,
        step: Option<Input>,
        events: &mpsc::UnboundedSender<Input>,
    ) -> Driven {
        let slot = self.role_slot(domain);
        let mut roles = slot.machine.lock().await;
        let replica = self.held_replica(domain, &slot);
        let facts = self.facts(domain, replica.as_ref());
        match step {
            Some(input) => roles.handle(Instant::now(), &facts, input),
            None => roles.handle_timeout(Instant::now(), &facts),
        }
        let mut driven = Driven::default();
        while let Some(action) = roles.poll_action() {
            match action {
                Action::Store(cmd) => {
                    let result = match &replica {
                        Some(r) => run_store(r, cmd).await,
                        None => Err(StoreError::Io {
                            action: "find the replica of",
                            path: std::path::PathBuf::from(domain.as_str()),
                            detail: "this node holds no replica of the domain".into(),
                        }),
                    };
                    let fed = result.as_ref().map(|_| ()).map_err(ToString::to_string);
                    if let Err(e) = result {
                        driven.store_error = Some(e);
                    }
                    let facts = self.facts(domain, replica.as_ref());
                    roles.handle(Instant::now(), &facts, Input::Stored(fed));
                }
                other => self.execute(domain, replica.as_ref(), other, events, &mut driven),
            }
        }
        driven.outcome = roles.take_outcome().or_else(|| lock(&slot.ended).take());
        driven.timeout = roles.poll_timeout();
        driven
    }

    /// Carries out one action of the role machine (all but store commands).
    fn execute(
        &self,
        domain: &DomainId,
        replica: Option<&Domain>,
        action: Action,
        events: &mpsc::UnboundedSender<Input>,
        driven: &mut Driven,
    ) {
        match action {
            Action::Probe {
                req,
                peer,
                epoch,
                fresh,
            } => {
                let (node, domain, events) = (self.clone(), domain.clone(), events.clone());
                tokio::spawn(async move {
                    if fresh {
                        node.disconnect(&peer).await;
                    }
                    let result = tokio::time::timeout(
                        PROBE_BUDGET,
                        node.probe_once(&peer, &domain, epoch.as_ref()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {PROBE_BUDGET:?}")));
                    drop(events.send(Input::Answer { req, result }));
                });
            }
            Action::TakeOver { req, peer, take } => {
                let (node, events) = (self.clone(), events.clone());
                tokio::spawn(async move {
                    let result = match node.ask(&peer, &Message::TakeOver(take)).await {
                        Ok(Message::TookOver(r)) => r,
                        Ok(other) => Err(format!("unexpected answer {other:?}")),
                        Err(e) => Err(e),
                    };
                    drop(events.send(Input::TookOver { req, result }));
                });
            }
            Action::AwaitDurable { peer, lsn } => {
                let Some(ad) = self.active(domain) else {
                    return;
                };
                let events = events.clone();
                tokio::spawn(async move {
                    let mut stop = ad.stop.subscribe();
                    loop {
                        let acked = ad.acked.notified();
                        if ad.durable_on(&peer) >= lsn {
                            drop(events.send(Input::Durable { peer, lsn }));
                            return;
                        }
                        if *stop.borrow() || events.is_closed() {
                            return;
                        }
                        tokio::select! {
                            () = acked => {}
                            () = tokio::time::sleep(Duration::from_millis(5)) => {}
                            _ = stop.changed() => {}
                        }
                    }
                });
            }
            Action::Reply { reply, message } => driven.replies.push((reply, message)),
            Action::ReplyStanding { reply } => driven
                .replies
                .push((reply, Message::ProbeAnswer(self.probe_answer(domain)))),
            Action::Serve => {
                if let (Some(replica), Some(config)) = (replica, self.configuration(domain)) {
                    self.serve_active(replica.clone(), config);
                }
            }
            Action::StopServing => {
                if let Some(ad) = lock(&self.inner.actives).remove(domain) {
                    ad.stop();
                }
            }
            Action::Follow(active) => {
                if let Some(replica) = replica {
                    self.follow(replica.clone(), active);
                }
            }
            Action::Unfollow => self.unfollow(domain),
            Action::HandedOver => self.handed_over(domain),
            Action::Log { warn: true, line } => tracing::warn!(domain = %domain, "{line}"),
            Action::Log { warn: false, line } => tracing::info!(domain = %domain, "{line}"),
            Action::Store(_) => {}
        }
    }

    /// Runs an operation (promotion, switchover) to its end: answers and timers are fed to
    /// the role machine until it has an outcome.
    async fn operate(&self, domain: &DomainId, start: Input) -> (Outcome, Option<StoreError>) {
        let (events, mut answers) = mpsc::unbounded_channel();
        let switchover = matches!(start, Input::Switchover { .. });
        let mut driven = self.drive(domain, Some(start), &events).await;
        let mut store_error = None;
        loop {
            store_error = driven.store_error.take().or(store_error);
            if let Some(outcome) = driven.outcome.take() {
                return (outcome, store_error);
            }
            // Every waiting step of an operation runs a timer; none means it ended.
            let Some(deadline) = driven.timeout else {
                let why = "the role machine stopped without an outcome".to_owned();
                let outcome = if switchover {
                    Outcome::Switchover(Err(SwitchFailure::Unknown(why)))
                } else {
                    Outcome::Promotion(Err(PromoteFailure::Store(why)))
                };
                return (outcome, store_error);
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            driven = tokio::select! {
                Some(input) = answers.recv() => self.drive(domain, Some(input), &events).await,
                () = tokio::time::sleep_until(deadline) => self.drive(domain, None, &events).await,
            };
        }
    }

    /// Answers a peer's probe (see [`Roles`]: only a replica of the domain learns anything,
    /// and a higher epoch it carries is recorded first).
    pub(super) async fn answer_probe(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Option<ProbeAnswer> {
        if !self.holds(domain) {
            tracing::warn!(domain = %domain, peer = %peer, "probe refused: this node holds no replica of the domain");
            return None;
        }
        let (events, _) = mpsc::unbounded_channel();
        let input = Input::Probe {
            from: peer.clone(),
            epoch: epoch.cloned(),
            reply: 0,
        };
        let mut driven = self.drive(domain, Some(input), &events).await;
        self.keep_outcome(domain, &mut driven);
        driven.replies.into_iter().find_map(|(_, m)| match m {
            Message::ProbeAnswer(a) => a,
            _ => None,
        })
    }

    /// A peer asked to follow this active with a higher epoch: step down once the epoch is
    /// checked (invariant 1).
    pub(super) async fn higher_epoch(&self, peer: &NodeId, domain: &DomainId, epoch: &Epoch) {
        if !self.holds(domain) {
            return;
        }
        let (events, _) = mpsc::unbounded_channel();
        let input = Input::HigherEpoch {
            from: peer.clone(),
            epoch: epoch.clone(),
        };
        let mut driven = self.drive(domain, Some(input), &events).await;
        self.keep_outcome(domain, &mut driven);
    }

    /// An operation ended while a peer's message was handled: its own task takes the
    /// outcome at its next turn.
    fn keep_outcome(&self, domain: &DomainId, driven: &mut Driven) {
        if let Some(outcome) = driven.outcome.take() {
            *lock(&self.role_slot(domain).ended) = Some(outcome);
        }
    }

    /// The target side of a switchover (see [`Roles`]).
    pub(super) async fn take_over(
        &self,
        from: &NodeId,
        take: &domsync_proto::repl::TakeOver,
    ) -> Result<Position, String> {
        if !self.holds(&take.domain) {
            tracing::warn!(domain = %take.domain, peer = %from, "hand-over refused: this node holds no replica of the domain");
            return Err(format!(
                "{} is not a standby of {} here",
                self.id(),
                take.domain
            ));
        }
        let (events, _) = mpsc::unbounded_channel();
        let input = Input::TakeOver {
            from: from.clone(),
            take: take.clone(),
            reply: 0,
        };
        let mut driven = self.drive(&take.domain, Some(input), &events).await;
        self.keep_outcome(&take.domain, &mut driven);
        driven
            .replies
            .into_iter()
            .find_map(|(_, m)| match m {
                Message::TookOver(r) => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| Err("the hand-over was not answered".into()))
    }
}

/// Runs a role machine's store command durably, off the executor.
async fn run_store(domain: &Domain, cmd: StoreCommand) -> Result<(), StoreError> {
    off_executor(domain, move |d| match &cmd {
        StoreCommand::Demote(e) => d.demote(e),
        StoreCommand::PromoteTo(e) => d.promote_to(e),
    })
    .await
}

/// Runs a store call that waits for a durable commit on a blocking thread, not on the
/// executor.
async fn off_executor<T: Send + 'static>(
    domain: &Domain,
    f: impl FnOnce(&Domain) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let d = domain.clone();
    tokio::task::spawn_blocking(move || f(&d))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Io {
                action: "run",
                path: std::path::PathBuf::new(),
                detail: e.to_string(),
            })
        })
}
