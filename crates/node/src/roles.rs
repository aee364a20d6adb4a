//! The node's side of the role protocol: it executes what the sans-IO role machine
//! ([`domsync_proto::repl::roles::Roles`], one per domain) asks for (probes, hand-overs, store
//! commands, following and serving) and feeds it what comes back. Every decision (the
//! split-brain guard, fencing, switchover and its failure, the answers to peers, stepping
//! down) is made there, in the code the deterministic simulation runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::active::ActiveConfig;
use super::{lock, Node};
use domsync_net::{open_frame, read_frame, write_frame};
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Position};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::roles::{
    Action, Facts, Input, Outcome, PromoteFailure, Roles, StoreCommand, SwitchFailure,
    PROBE_ATTEMPT, TAKE_OVER_TIMEOUT,
};
use domsync_proto::repl::MAX_MESSAGE_BYTES;
use domsync_proto::repl::{authorize, Ask, EpochRefusal, LocalDomain, PeerRefusal};
use domsync_proto::repl::{FenceRefusal, Refusal, Seer, Sighting};
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

/// What a promotion did.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// The new epoch.
    pub epoch: Epoch,
    /// The position the new active starts from.
    pub position: Position,
    /// Records the most advanced peer held beyond this replica (0 when none); only non-zero
    /// for a forced promotion.
    pub behind_records: u64,
    /// Replicas not reached (without force, only the old active can be among them).
    pub unreachable: Vec<NodeId>,
    /// Replicas that held records this replica lacks (only with force): what they hold
    /// past the fork goes to their collision archive when they follow the new active.
    pub holders: Vec<NodeId>,
}

/// Why a promotion was refused. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The domain is not followed as standby on this node.
    #[error("domain {domain} is not a standby on this node: nothing to promote")]
    NotStandby {
        /// The domain.
        domain: DomainId,
    },
    /// An active of the domain was seen alive recently.
    #[error("{node} was seen active for {domain} in epoch {epoch} by {seen_by} {age_ms} ms ago: stop it or use a switchover; --force promotes anyway (split brain)")]
    ActiveAlive {
        /// The domain.
        domain: DomainId,
        /// The active seen.
        node: NodeId,
        /// Its epoch.
        epoch: Epoch,
        /// Who saw it.
        seen_by: Seer,
        /// How long ago, in milliseconds.
        age_ms: u128,
    },
    /// This replica is behind another replica or the active it followed.
    #[error("the replica of {domain} here is {records} records behind {node} (lsn {here} vs {there}): promote {node} instead, or use --force and lose those records to the collision archive")]
    Behind {
        /// The domain.
        domain: DomainId,
        /// The node that holds more.
        node: NodeId,
        /// Records behind.
        records: u64,
        /// Lsn here.
        here: Lsn,
        /// Lsn there.
        there: Lsn,
    },
    /// The fencing round found a replica in the way.
    #[error("promotion of {domain} refused: {refusal}")]
    Fence {
        /// The domain.
        domain: DomainId,
        /// Who is in the way.
        refusal: FenceRefusal,
    },
    /// No epoch above the highest known can be taken.
    #[error("promotion of {domain} refused: {refusal}")]
    Epoch {
        /// The domain.
        domain: DomainId,
        /// Why.
        refusal: EpochRefusal,
    },
    /// Another promotion or switchover of the domain is under way on this node.
    #[error("a promotion or switchover of {domain} is under way on this node: wait for it to end, then look at `domsync status`")]
    Busy {
        /// The domain.
        domain: DomainId,
    },
    /// A higher epoch appeared while the promotion ran (another promotion).
    #[error("promotion of {domain} stopped: a higher epoch {epoch} appeared meanwhile (another promotion?); this node follows {}: look at `domsync status` before trying again", epoch.node)]
    Overtaken {
        /// The domain.
        domain: DomainId,
        /// The epoch.
        epoch: Epoch,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Asks `peer` where it stands on `domain`, telling it our `epoch` when we are active (a
    /// lower active that hears it steps down and follows us) or a candidate epoch to record
    /// (the fencing round of a promotion).
    ///
    /// "Reached" means a fresh exchange: a connection that does not answer (a peer restarted
    /// a moment ago looks alive until its idle timeout) is dropped and the probe is tried
    /// again on a new one, within [`PROBE_BUDGET`].
    ///
    /// # Errors
    /// A one-line description of what failed (connection, stream, answer).
    pub async fn probe(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Result<Option<ProbeAnswer>, String> {
        self.probe_within(peer, domain, epoch, PROBE_BUDGET).await
    }

    /// [`Node::probe`] within `budget` (at least one attempt on a fresh connection when the
    /// first does not answer, as long as the budget allows).
    async fn probe_within(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
        budget: Duration,
    ) -> Result<Option<ProbeAnswer>, String> {
        let deadline = tokio::time::Instant::now() + budget;
        let cached = self.has_connection(peer);
        // First on the connection in place (if any), then once on a fresh one.
        let first = tokio::time::timeout(
            PROBE_ATTEMPT.min(budget),
            self.probe_once(peer, domain, epoch),
        )
        .await;
        let why = match first {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", PROBE_ATTEMPT.min(budget)),
        };
        if !cached {
            // That attempt dialed afresh already: the peer is out of reach.
            return Err(why);
        }
        // The connection may be dead without knowing it (the peer restarted): dial afresh.
        self.disconnect(peer).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, self.probe_once(peer, domain, epoch)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{e} (first attempt: {why})")),
            Err(_) => Err(format!(
                "no answer within {budget:?} on a fresh connection (first attempt: {why})"
            )),
        }
    }

    async fn probe_once(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Result<Option<ProbeAnswer>, String> {
        let conn = self.connection(peer).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = encode_message(&Message::Probe {
            domain: domain.clone(),
            epoch: epoch.cloned(),
        })
        .map_err(|e| e.to_string())?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut recv, MAX_MESSAGE_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the peer ended the stream without answering")?;
        drop(send.finish());
        match open_frame::<Message>(&answer, MAX_MESSAGE_BYTES).map_err(|e| e.to_string())? {
            Message::ProbeAnswer(a) => Ok(a),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Checks that `peer` may `ask` about `domain` (invariant 9), logging a refusal.
    pub(super) fn authorize(
        &self,
        peer: &NodeId,
        ask: Ask,
        domain: &DomainId,
        replicas: &[NodeId],
    ) -> Result<(), PeerRefusal> {
        let followed = lock(&self.inner.standbys).get(domain).map(|sd| sd.active());
        let local = (!replicas.is_empty()).then_some(LocalDomain {
            replicas,
            followed: followed.as_ref(),
        });
        authorize(peer, ask, local)
    }

    /// Records a gateway's report that it reached `active` (epoch `epoch`) of `domain`
    /// `ago` before its request arrived; the latest report per gateway is kept.
    pub fn record_sighting(
        &self,
        domain: &DomainId,
        gateway: &str,
        active: NodeId,
        epoch: Epoch,
        ago: Duration,
    ) {
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let mut all = lock(&self.inner.sightings);
        let per = all.entry(domain.clone()).or_default();
        let newer = per.get(gateway).is_none_or(|(_, _, t)| at >= *t);
        if newer && (per.len() < MAX_SIGHTINGS || per.contains_key(gateway)) {
            per.insert(gateway.to_owned(), (active, epoch, at));
        }
    }

    /// Gateways' latest reports of an active of `domain`, with their age now.
    pub fn sightings(&self, domain: &DomainId) -> Vec<Sighting> {
        let now = Instant::now();
        lock(&self.inner.sightings)
            .get(domain)
            .map(|per| {
                per.iter()
                    .map(|(g, (active, epoch, at))| Sighting {
                        seer: Seer::Gateway(g.clone()),
                        active: active.clone(),
                        epoch: epoch.clone(),
                        age: now.saturating_duration_since(*at),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How this node's replica of `domain` stands, for a peer's probe.
    pub(super) fn probe_answer(&self, domain: &DomainId) -> Option<ProbeAnswer> {
        let replica = lock(&self.inner.actives)
            .get(domain)
            .map(|ad| ad.domain().clone())
            .or_else(|| {
                lock(&self.inner.standbys)
                    .get(domain)
                    .map(|sd| sd.domain().clone())
            })?;
        let s = replica.status().ok()?;
        let heard_active = self.heard_active(domain, &s.epoch);
        Some(ProbeAnswer {
            role: s.role,
            epoch: s.epoch,
            position: s.position,
            heard_active,
        })
    }

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

    /// Promotes this node's standby replica of `domain` (manual failover): stops following,
    /// becomes active in an epoch above every epoch seen, and serves the domain with its
    /// local configuration ([`Node::configure`]; `config` when none was set).
    ///
    /// Unless `force`:
    /// 1. Split-brain guard: every other replica (`peers` and the configured ones) is probed
    ///    with a fresh exchange; refused if one still answers as active in our epoch or
    ///    above, was heard from recently, holds records this replica lacks, or if this
    ///    replica knows it lags its last active; refused too if a replica other than the old
    ///    active cannot be reached.
    /// 2. Fencing: this replica records the candidate epoch, then every other replica is
    ///    asked to record it durably (from then on it applies and acknowledges nothing of a
    ///    lower epoch) and answers with its final position; the promotion proceeds only if
    ///    every one but the old active was reached and fenced and none holds a record this
    ///    replica lacks.
    ///
    /// With `force` both rounds still run (every replica reached is fenced) and the answer
    /// lists who was not reached and who held more.
    ///
    /// # Errors
    /// [`PromoteError`] naming what stands in the way and what to do.
    pub async fn promote(
        &self,
        domain: &DomainId,
        peers: &[NodeId],
        config: ActiveConfig,
        force: bool,
    ) -> Result<Promotion, PromoteError> {
        if !self.holds(domain) {
            return Err(PromoteError::NotStandby {
                domain: domain.clone(),
            });
        }
        if self.configuration(domain).is_none() && self.replica(domain).is_some() {
            lock(&self.inner.configs).insert(domain.clone(), config);
        }
        let start = Input::Promote {
            force,
            peers: peers.to_vec(),
            sightings: self.sightings(domain),
            window: self.inner.config.guard_window,
        };
        let (outcome, store_error) = self.operate(domain, start).await;
        let Outcome::Promotion(result) = outcome else {
            return Err(PromoteError::Fence {
                domain: domain.clone(),
                refusal: FenceRefusal::Unreachable {
                    node: self.id().clone(),
                    why: "a switchover of the domain is under way on this node".into(),
                },
            });
        };
        result
            .map(|p| Promotion {
                epoch: p.epoch,
                position: p.position,
                behind_records: p.behind_records,
                unreachable: p.unreachable,
                holders: p.holders,
            })
            .map_err(|f| match f {
                PromoteFailure::NotStandby => PromoteError::NotStandby {
                    domain: domain.clone(),
                },
                PromoteFailure::Busy => PromoteError::Busy {
                    domain: domain.clone(),
                },
                PromoteFailure::Guard(r) => refused(domain, r),
                PromoteFailure::Fence(refusal) => PromoteError::Fence {
                    domain: domain.clone(),
                    refusal,
                },
                PromoteFailure::Epoch(refusal) => PromoteError::Epoch {
                    domain: domain.clone(),
                    refusal,
                },
                PromoteFailure::Overtaken(epoch) => PromoteError::Overtaken {
                    domain: domain.clone(),
                    epoch,
                },
                PromoteFailure::Store(why) => {
                    PromoteError::Store(store_error.unwrap_or(StoreError::Io {
                        action: "promote",
                        path: std::path::PathBuf::new(),
                        detail: why,
                    }))
                }
            })
    }
}

/// A guard refusal as the operator reads it.
fn refused(domain: &DomainId, r: Refusal) -> PromoteError {
    match r {
        Refusal::ActiveAlive {
            node,
            epoch,
            seen_by,
            age,
        } => PromoteError::ActiveAlive {
            domain: domain.clone(),
            node,
            epoch,
            seen_by,
            age_ms: age.as_millis(),
        },
        Refusal::Behind {
            node,
            records,
            here,
            there,
        } => PromoteError::Behind {
            domain: domain.clone(),
            node,
            records,
            here,
            there,
        },
    }
}

/// What a switchover did.
#[derive(Debug, Clone, PartialEq)]
pub struct Switchover {
    /// The epoch the new active took.
    pub epoch: Epoch,
    /// The last position of the old active, now held by the new one.
    pub position: Position,
    /// How long writes were refused (from the stop to the hand-over).
    pub pause: Duration,
}

/// Why a switchover did not happen; the old active then stays active (in a new epoch).
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// The domain is not active on this node.
    #[error("domain {domain} is not active on this node: run the switchover on its active")]
    NotActive {
        /// The domain.
        domain: DomainId,
    },
    /// The target is not a configured standby.
    #[error("node {node} is not a configured standby of {domain}: pick one of its standbys")]
    NotStandby {
        /// The domain.
        domain: DomainId,
        /// The node.
        node: NodeId,
    },
    /// The target did not hold the last write in time, or refused.
    #[error("switchover of {domain} to {node} failed: {why}; this node stays active")]
    Failed {
        /// The domain.
        domain: DomainId,
        /// The target.
        node: NodeId,
        /// What went wrong.
        why: String,
    },
    /// The hand-over failed and this node could not establish that the target did not take
    /// over: it stays standby (following the target) rather than risk two actives.
    #[error("switchover of {domain} to {node} failed ({why}); it is not known whether {node} took over, so this node stays standby: look at `domsync status` on {node}, and promote a replica if no node is active")]
    Unknown {
        /// The domain.
        domain: DomainId,
        /// The target.
        node: NodeId,
        /// What went wrong.
        why: String,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Planned move of the active role to standby `to`: this node stops taking writes (they
    /// get `NotActive` naming `to`), waits until `to` holds its last write durably, hands over
    /// a new epoch, and follows `to`. No acknowledged write is lost. On failure within
    /// `timeout` this node takes writes again, in a new epoch of its own.
    ///
    /// # Errors
    /// [`SwitchoverError`].
    pub async fn switchover(
        &self,
        domain: &DomainId,
        to: &NodeId,
        timeout: Duration,
    ) -> Result<Switchover, SwitchoverError> {
        if !self.holds(domain) {
            return Err(SwitchoverError::NotActive {
                domain: domain.clone(),
            });
        }
        let start = Input::Switchover {
            to: to.clone(),
            timeout,
        };
        let (outcome, store_error) = self.operate(domain, start).await;
        let failed = |why: String| SwitchoverError::Failed {
            domain: domain.clone(),
            node: to.clone(),
            why,
        };
        let Outcome::Switchover(result) = outcome else {
            return Err(failed(
                "a promotion of the domain is under way on this node".into(),
            ));
        };
        result
            .map(|s| Switchover {
                epoch: s.epoch,
                position: s.position,
                pause: s.pause,
            })
            .map_err(|f| match f {
                SwitchFailure::NotActive => SwitchoverError::NotActive {
                    domain: domain.clone(),
                },
                SwitchFailure::NotStandby => SwitchoverError::NotStandby {
                    domain: domain.clone(),
                    node: to.clone(),
                },
                SwitchFailure::Busy => {
                    failed("another promotion or switchover of the domain is under way".into())
                }
                SwitchFailure::Failed(why) => failed(why),
                SwitchFailure::Unknown(why) => SwitchoverError::Unknown {
                    domain: domain.clone(),
                    node: to.clone(),
                    why,
                },
                SwitchFailure::Store(why) => {
                    SwitchoverError::Store(store_error.unwrap_or(StoreError::Io {
                        action: "switchover",
                        path: std::path::PathBuf::new(),
                        detail: why,
                    }))
                }
            })
    }

    /// Sends one message on a new stream to `peer` and reads one answer.
    async fn ask(&self, peer: &NodeId, m: &Message) -> Result<Message, String> {
        let conn = self.connection(peer).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = encode_message(m).map_err(|e| e.to_string())?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let Ok(answer) =
            tokio::time::timeout(TAKE_OVER_TIMEOUT, read_frame(&mut recv, MAX_MESSAGE_BYTES)).await
        else {
            self.disconnect(peer).await;
            return Err(format!("no answer within {TAKE_OVER_TIMEOUT:?}"));
        };
        let answer = answer
            .map_err(|e| e.to_string())?
            .ok_or("the peer ended the stream without answering")?;
        drop(send.finish());
        open_frame::<Message>(&answer, MAX_MESSAGE_BYTES).map_err(|e| e.to_string())
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
