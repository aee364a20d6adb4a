//! Manual promotion of a standby replica (failover), with the split-brain guard.

use std::time::{Duration, Instant};

use super::active::ActiveConfig;
use super::{lock, Node};
use crate::model::{DomainId, Epoch, Lsn, NodeId, Position, Role};
use crate::net::frame::{open_frame, read_frame, write_frame};
use crate::repl::authorize::{
    authorize, check_epoch, next_epoch, Ask, EpochRefusal, LocalDomain, PeerRefusal,
};
use crate::repl::message::{self, MAX_MESSAGE_BYTES};
use crate::repl::promotion::{
    self, check_fence, FenceInput, FenceRefusal, FenceReply, GuardInput, PeerProbe, Refusal, Seer,
    Sighting,
};
use crate::repl::{Message, ProbeAnswer, SyncStatus};
use crate::store::{Domain, StoreError};

/// How long a peer may take to answer a probe, fresh connections and retries included,
/// before it counts as unreachable.
pub const PROBE_BUDGET: Duration = Duration::from_secs(3);

/// How long the first attempt of a probe waits (on the cached connection) before the
/// connection is replaced and the probe tried again.
const PROBE_ATTEMPT: Duration = Duration::from_millis(1000);

/// How long a hand-over may take to be answered.
const TAKE_OVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Most gateways whose sightings are kept per domain (bounded memory).
const MAX_SIGHTINGS: usize = 4096;

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
        let frame = message::encode(&Message::Probe {
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

    /// Probes every node of `peers` at once (a dead one's budget does not hold up the others).
    async fn probe_all(
        &self,
        peers: &[NodeId],
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Vec<(NodeId, Result<Option<ProbeAnswer>, String>)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().enumerate() {
            let (node, peer, domain, epoch) =
                (self.clone(), peer.clone(), domain.clone(), epoch.cloned());
            set.spawn(async move {
                let r = node.probe(&peer, &domain, epoch.as_ref()).await;
                (i, peer, r)
            });
        }
        let mut out = Vec::with_capacity(peers.len());
        while let Some(joined) = set.join_next().await {
            if let Ok(one) = joined {
                out.push(one);
            }
        }
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, p, r)| (p, r)).collect()
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

    /// Answers a peer's probe: only a replica of the domain learns anything (others get the
    /// answer of an unknown domain). An epoch in the probe above the highest known here is
    /// recorded first (a standby fences itself against lower actives, an active steps down),
    /// once it passes [`check_epoch`].
    pub(super) async fn answer_probe(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Option<ProbeAnswer> {
        let replicas = self.replicas(domain);
        if let Err(refusal) = self.authorize(peer, Ask::Probe, domain, &replicas) {
            tracing::warn!(domain = %domain, peer = %peer, "probe refused: {refusal}");
            return None;
        }
        if let Some(epoch) = epoch {
            // The highest epoch known here, also one just learned whose record is on its way.
            let known = self.replica(domain)?.highest_epoch().ok()?;
            if *epoch > known {
                match check_epoch(epoch, &known, &replicas) {
                    Ok(()) => self.learned_epoch(domain, epoch).await,
                    Err(e) => {
                        tracing::warn!(domain = %domain, peer = %peer, "epoch from a probe ignored: {e}");
                    }
                }
            }
        }
        self.probe_answer(domain)
    }

    /// A higher epoch for `domain` exists (heard from a peer): if the domain is active here it
    /// is fenced at once, becomes standby durably, and follows the epoch's node, which moves
    /// any records written here after the fork to the collision archive (invariants 1, 5).
    pub(super) async fn step_down(&self, domain: &DomainId, epoch: &Epoch) {
        let Some(ad) = lock(&self.inner.actives).remove(domain) else {
            return;
        };
        ad.stop();
        let replica = ad.domain().clone();
        match off_executor(&replica, {
            let epoch = epoch.clone();
            move |d| d.demote(&epoch)
        })
        .await
        {
            Ok(()) => {
                tracing::warn!(domain = %domain, epoch = %epoch, active = %epoch.node, "a higher epoch exists: stepped down to standby, following the new active");
                self.follow(replica, epoch.node.clone());
            }
            Err(e) => tracing::error!(domain = %domain, error = %e, "cannot record the demotion"),
        }
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
        let sd = lock(&self.inner.standbys)
            .get(domain)
            .cloned()
            .ok_or_else(|| PromoteError::NotStandby {
                domain: domain.clone(),
            })?;
        let replica = sd.domain().clone();
        let here = replica.status()?;
        let followed = sd.active();
        let mut others: Vec<NodeId> = Vec::new();
        for n in peers.iter().chain(self.replicas(domain).iter()) {
            if n != self.id() && !others.contains(n) {
                others.push(n.clone());
            }
        }
        // 1. The split-brain guard, on fresh answers.
        let asked = self.probe_all(&others, domain, None).await;
        let mut probes = Vec::with_capacity(asked.len());
        let mut highest = replica.highest_epoch()?;
        for (peer, r) in asked {
            let probe = match r {
                Ok(answer) => {
                    if let Some(a) = &answer {
                        if a.epoch > highest
                            && check_epoch(&a.epoch, &highest, &self.replicas(domain)).is_ok()
                        {
                            highest = a.epoch.clone();
                        }
                    }
                    PeerProbe::Answered(answer)
                }
                Err(e) => {
                    tracing::info!(domain = %domain, peer = %peer, "probe before promotion: {e}");
                    PeerProbe::Unreachable(e)
                }
            };
            probes.push((peer, probe));
        }
        let lag = self.follower_status(domain).map(|r| match r.status {
            SyncStatus::Lagging { records, .. } => (r.active, records),
            _ => (r.active, 0),
        });
        let sightings = self.sightings(domain);
        let input = GuardInput {
            me: self.id(),
            epoch: &here.epoch,
            position: &here.position,
            lag,
            probes: &probes,
            sightings: &sightings,
            window: self.inner.config.guard_window,
            force,
        };
        let verdict = promotion::check(&input).map_err(|r| refused(domain, r))?;
        if !force {
            // Nothing is fenced while a replica that may hold acknowledged writes is out of
            // reach: the refusal leaves the domain as it was.
            if let Some((node, PeerProbe::Unreachable(why))) = probes
                .iter()
                .find(|(n, p)| *n != followed && matches!(p, PeerProbe::Unreachable(_)))
            {
                return Err(PromoteError::Fence {
                    domain: domain.clone(),
                    refusal: FenceRefusal::Unreachable {
                        node: node.clone(),
                        why: why.clone(),
                    },
                });
            }
        }
        for s in &verdict.alive {
            tracing::warn!(domain = %domain, active = %s.active, seen_by = %s.seer, age_ms = s.age.as_millis(), "forced promotion while an active was seen alive");
        }
        // 2. Fencing: this replica first (nothing more from the old active lands here), then
        // every other replica, which answers with its final position.
        let candidate = next_epoch(&highest, self.id()).map_err(|refusal| PromoteError::Epoch {
            domain: domain.clone(),
            refusal,
        })?;
        off_executor(&replica, {
            let candidate = candidate.clone();
            move |d| d.demote(&candidate)
        })
        .await?;
        self.unfollow(domain);
        let here = replica.status()?;
        // A replica found out of reach by the guard round a moment ago (on a fresh
        // connection) is not waited for again: without --force that can only be the old
        // active, which the fenced standbys no longer confirm anything for.
        let (out_of_reach, to_fence): (Vec<_>, Vec<_>) = probes
            .iter()
            .partition(|(_, p)| matches!(p, PeerProbe::Unreachable(_)));
        let to_fence: Vec<NodeId> = to_fence.into_iter().map(|(n, _)| n.clone()).collect();
        let mut replies: Vec<(NodeId, FenceReply)> = self
            .probe_all(&to_fence, domain, Some(&candidate))
            .await
            .into_iter()
            .map(|(n, r)| {
                let reply = match r {
                    Ok(a) => FenceReply::Answered(a),
                    Err(e) => FenceReply::Unreachable(e),
                };
                (n, reply)
            })
            .collect();
        replies.extend(out_of_reach.into_iter().map(|(n, p)| {
            let why = match p {
                PeerProbe::Unreachable(why) => why.clone(),
                PeerProbe::Answered(_) => String::new(),
            };
            (n.clone(), FenceReply::Unreachable(why))
        }));
        let fence = check_fence(&FenceInput {
            candidate: &candidate,
            position: &here.position,
            history: &here.history,
            old_active: Some(&followed),
            replies: &replies,
            force,
        });
        let fence = match fence {
            Ok(f) => f,
            Err(refusal) => {
                tracing::warn!(domain = %domain, candidate = %candidate, "promotion refused after fencing: {refusal}");
                // The replicas reached keep the candidate epoch: the old active gets no more
                // confirmations from them. This replica waits for the next active.
                self.follow(replica, followed);
                return Err(PromoteError::Fence {
                    domain: domain.clone(),
                    refusal,
                });
            }
        };
        let mut behind_records = verdict.behind_records;
        if !fence.holders.is_empty() {
            behind_records = behind_records.max(1);
            tracing::warn!(domain = %domain, holders = ?fence.holders, "forced promotion: these replicas hold records this one lacks; they go to their collision archive");
        }
        let mut unreachable = fence.unreachable;
        unreachable.sort();
        unreachable.dedup();
        if let Err(e) = off_executor(&replica, {
            let candidate = candidate.clone();
            move |d| d.promote_to(&candidate)
        })
        .await
        {
            self.follow(replica, followed);
            return Err(e.into());
        }
        tracing::warn!(domain = %domain, epoch = %candidate, behind_records, forced = force, "promoted to active");
        let config = self.configuration(domain).unwrap_or(config);
        self.serve_active(replica.clone(), config);
        Ok(Promotion {
            epoch: candidate,
            position: replica.status()?.position,
            behind_records,
            unreachable,
            holders: fence.holders,
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
        let ad = lock(&self.inner.actives)
            .get(domain)
            .cloned()
            .ok_or_else(|| SwitchoverError::NotActive {
                domain: domain.clone(),
            })?;
        let config = ad.config().clone();
        if !config.standbys.contains(to) {
            return Err(SwitchoverError::NotStandby {
                domain: domain.clone(),
                node: to.clone(),
            });
        }
        let replica = ad.domain().clone();
        // Reach the target on a live connection before writes stop (a target restarted a
        // moment ago is otherwise found out only while writers wait).
        match self.probe(to, domain, None).await {
            Ok(Some(a)) if a.role == Role::Standby => {}
            Ok(_) => {
                return Err(SwitchoverError::Failed {
                    domain: domain.clone(),
                    node: to.clone(),
                    why: "it does not hold the domain as a standby".into(),
                })
            }
            Err(why) => {
                return Err(SwitchoverError::Failed {
                    domain: domain.clone(),
                    node: to.clone(),
                    why: format!("it cannot be reached: {why}"),
                })
            }
        }
        let started = std::time::Instant::now();
        let epoch =
            next_epoch(&replica.status()?.epoch, to).map_err(|e| SwitchoverError::Failed {
                domain: domain.clone(),
                node: to.clone(),
                why: e.to_string(),
            })?;
        // 1. No more writes here; writers are told the new active's name.
        off_executor(&replica, {
            let epoch = epoch.clone();
            move |d| d.demote(&epoch)
        })
        .await?;
        let last = replica.status()?.position;
        let fail = |why: String| SwitchoverError::Failed {
            domain: domain.clone(),
            node: to.clone(),
            why,
        };
        let outcome = async {
            // 2. Wait until the target holds the last write durably.
            let deadline = tokio::time::Instant::now() + timeout;
            while ad.durable_on(to) < last.lsn {
                if tokio::time::Instant::now() >= deadline {
                    return Err(fail(format!(
                        "it did not reach lsn {} in {timeout:?}",
                        last.lsn
                    )));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // 3. Hand over, on a connection that just answered: a target restarted a moment
            // ago is reached on a fresh one (its old connection only dies at its idle timeout).
            match self.probe(to, domain, None).await {
                Ok(Some(a)) if a.position == last && a.role == Role::Standby => {}
                Ok(Some(a)) => {
                    return Err(fail(format!(
                        "it stands at {} as {} instead of {last}",
                        a.position, a.role
                    )))
                }
                Ok(None) => return Err(fail("it holds no replica of the domain".into())),
                Err(e) => return Err(fail(e)),
            }
            let mut standbys: Vec<NodeId> = config
                .standbys
                .iter()
                .filter(|n| *n != to)
                .cloned()
                .collect();
            standbys.push(self.id().clone());
            let take = crate::repl::TakeOver {
                domain: domain.clone(),
                epoch: epoch.clone(),
                last: last.clone(),
                durability: config.durability,
                standbys,
            };
            self.ask(to, &Message::TakeOver(take))
                .await
                .map_err(fail)
                .and_then(|m| match m {
                    Message::TookOver(Ok(_)) => Ok(()),
                    Message::TookOver(Err(why)) => Err(fail(why)),
                    other => Err(fail(format!("unexpected answer {other:?}"))),
                })
        }
        .await;
        match outcome {
            Ok(()) => {
                let pause = started.elapsed();
                if let Some(ad) = lock(&self.inner.actives).remove(domain) {
                    ad.stop();
                }
                self.follow(replica, to.clone());
                tracing::info!(domain = %domain, to = %to, epoch = %epoch, pause_ms = pause.as_millis(), "switchover complete");
                Ok(Switchover {
                    epoch,
                    position: last,
                    pause,
                })
            }
            Err(e) => self.switchover_failed(domain, to, &epoch, replica, e).await,
        }
    }

    /// A switchover did not complete: find out who is active before taking writes again. If
    /// the target did take over (only its answer was lost) or a higher epoch appeared
    /// meanwhile, this node follows that active instead of making a second one. Writes are
    /// taken again only once the target is known not to have taken over and unable to: every
    /// other replica (the target among them) recorded a new epoch of this node, higher than
    /// the one offered, and none holds more. Otherwise this node stays standby and says so.
    async fn switchover_failed(
        &self,
        domain: &DomainId,
        to: &NodeId,
        offered: &Epoch,
        replica: Domain,
        error: SwitchoverError,
    ) -> Result<Switchover, SwitchoverError> {
        let status = replica.status()?;
        let answer = self.probe(to, domain, None).await;
        let successor = match &answer {
            Ok(Some(a)) if a.role == Role::Active && a.epoch >= *offered => Some(to.clone()),
            Ok(Some(a)) if a.epoch > *offered => Some(a.epoch.node.clone()),
            _ if status.epoch > *offered => Some(status.epoch.node.clone()),
            _ => None,
        };
        let stand_by = |node: &Node, active: NodeId| {
            if let Some(ad) = lock(&node.inner.actives).remove(domain) {
                ad.stop();
            }
            node.follow(replica.clone(), active);
        };
        if let Some(active) = successor.filter(|n| n != self.id()) {
            tracing::warn!(domain = %domain, active = %active, "switchover answer lost or overtaken: following {active}");
            stand_by(self, active);
            return Err(error);
        }
        if let Err(why) = answer {
            tracing::error!(domain = %domain, target = %to, "switchover outcome unknown: {why}; staying standby");
            stand_by(self, to.clone());
            return Err(SwitchoverError::Unknown {
                domain: domain.clone(),
                node: to.clone(),
                why: error.to_string(),
            });
        }
        // The target did not take over: fence everyone above the offered epoch, then take
        // writes again in that epoch.
        let highest = status.epoch.clone().max(offered.clone());
        let others: Vec<NodeId> = self
            .replicas(domain)
            .into_iter()
            .filter(|n| n != self.id())
            .collect();
        let again = match next_epoch(&highest, self.id()) {
            Ok(e) => e,
            Err(e) => {
                stand_by(self, to.clone());
                return Err(SwitchoverError::Unknown {
                    domain: domain.clone(),
                    node: to.clone(),
                    why: e.to_string(),
                });
            }
        };
        let replies: Vec<(NodeId, FenceReply)> = self
            .probe_all(&others, domain, Some(&again))
            .await
            .into_iter()
            .map(|(n, r)| {
                (
                    n,
                    r.map_or_else(FenceReply::Unreachable, FenceReply::Answered),
                )
            })
            .collect();
        let fenced = check_fence(&FenceInput {
            candidate: &again,
            position: &status.position,
            history: &status.history,
            old_active: None,
            replies: &replies,
            force: false,
        });
        if let Err(refusal) = fenced {
            tracing::error!(domain = %domain, "switchover failed and this node cannot take writes again: {refusal}");
            stand_by(self, to.clone());
            return Err(SwitchoverError::Unknown {
                domain: domain.clone(),
                node: to.clone(),
                why: format!("{error}; taking writes back was refused: {refusal}"),
            });
        }
        off_executor(&replica, {
            let again = again.clone();
            move |d| d.promote_to(&again)
        })
        .await?;
        tracing::warn!(domain = %domain, error = %error, epoch = %again, "switchover failed; still active");
        Err(error)
    }

    /// A peer told of a higher `epoch` for `domain`: an active here steps down; a standby
    /// records the epoch (it acknowledges nothing to a lower active any more) and follows the
    /// epoch's node. An epoch naming this node is one it is being handed (switchover) and is
    /// left to the hand-over.
    pub(super) async fn learned_epoch(&self, domain: &DomainId, epoch: &Epoch) {
        if epoch.node == *self.id() {
            return;
        }
        if lock(&self.inner.actives).contains_key(domain) {
            self.step_down(domain, epoch).await;
            return;
        }
        let Some(sd) = lock(&self.inner.standbys).get(domain).cloned() else {
            return;
        };
        let replica = sd.domain().clone();
        if replica.status().is_ok_and(|s| s.epoch >= *epoch) {
            return;
        }
        let recorded = off_executor(&replica, {
            let epoch = epoch.clone();
            move |d| d.demote(&epoch)
        })
        .await;
        if let Err(e) = recorded {
            tracing::error!(domain = %domain, error = %e, "cannot record a higher epoch");
            return;
        }
        if sd.active() != epoch.node {
            tracing::info!(domain = %domain, epoch = %epoch, active = %epoch.node, "a higher epoch exists: following its active");
            self.follow(replica, epoch.node.clone());
        }
    }

    /// The target side of a switchover: accepted only from the active this replica follows,
    /// for a replica of the domain in the local configuration, in a new epoch of this node
    /// within [`check_epoch`]'s bounds, at exactly the old active's last position. The new
    /// active serves with its local configuration; what the message says of durability and
    /// standbys is not used.
    pub(super) async fn take_over(
        &self,
        from: &NodeId,
        take: &crate::repl::TakeOver,
    ) -> Result<Position, String> {
        let domain = &take.domain;
        let replicas = self.replicas(domain);
        if let Err(refusal) = self.authorize(from, Ask::TakeOver, domain, &replicas) {
            tracing::warn!(domain = %domain, peer = %from, "hand-over refused: {refusal}");
            return Err(format!("{} is not a standby of {domain} here", self.id()));
        }
        let sd = lock(&self.inner.standbys)
            .get(domain)
            .cloned()
            .ok_or_else(|| format!("{} is not a standby of {domain} here", self.id()))?;
        let config = self.configuration(domain).ok_or_else(|| {
            format!(
                "{} has no local configuration of {domain} to serve it with (durability, standbys): configure the domain on {} first",
                self.id(),
                self.id()
            )
        })?;
        let replica = sd.domain().clone();
        let here = replica.status().map_err(|e| e.to_string())?;
        if take.epoch.node != *self.id() || take.epoch <= here.epoch {
            return Err(format!(
                "epoch {} is not a new epoch of {} above {}",
                take.epoch,
                self.id(),
                here.epoch
            ));
        }
        if let Err(e) = check_epoch(&take.epoch, &here.epoch, &replicas) {
            tracing::warn!(domain = %domain, peer = %from, "hand-over refused: {e}");
            return Err(e.to_string());
        }
        if here.position != take.last {
            return Err(format!(
                "this replica is at {} and the old active at {}",
                here.position, take.last
            ));
        }
        self.unfollow(domain);
        let promoted = off_executor(&replica, {
            let epoch = take.epoch.clone();
            move |d| d.promote_to(&epoch)
        })
        .await;
        if let Err(e) = promoted {
            self.follow(replica, from.clone());
            return Err(e.to_string());
        }
        self.serve_active(replica, config);
        tracing::info!(domain = %domain, from = %from, epoch = %take.epoch, "took over as active");
        Ok(here.position)
    }

    /// Sends one message on a new stream to `peer` and reads one answer.
    async fn ask(&self, peer: &NodeId, m: &Message) -> Result<Message, String> {
        let conn = self.connection(peer).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = message::encode(m).map_err(|e| e.to_string())?;
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
