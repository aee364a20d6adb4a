//! Manual promotion of a standby replica (failover), with the split-brain guard.

use std::time::{Duration, Instant};

use super::active::ActiveConfig;
use super::{lock, Node};
use crate::model::{DomainId, Epoch, Lsn, NodeId, Position, Role};
use crate::net::frame::{open_frame, read_frame, write_frame};
use crate::repl::message::{self, MAX_MESSAGE_BYTES};
use crate::repl::promotion::{self, GuardInput, PeerProbe, Refusal, Seer, Sighting};
use crate::repl::{Message, ProbeAnswer, SyncStatus};
use crate::store::{Domain, StoreError};

/// How long a peer may take to answer a probe before it counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Peers that did not answer the probe.
    pub unreachable: Vec<NodeId>,
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
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Node {
    /// Asks `peer` where it stands on `domain`, telling it our `epoch` when we are active (a
    /// lower active that hears it steps down and follows us).
    ///
    /// # Errors
    /// A one-line description of what failed (connection, stream, answer).
    pub async fn probe(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Result<Option<ProbeAnswer>, String> {
        let ask = async {
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
        };
        match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
            Ok(answer) => answer,
            Err(_) => {
                // A connection to a peer that restarted looks alive until its idle timeout:
                // dial afresh next time.
                self.disconnect(peer).await;
                Err(format!("no answer within {PROBE_TIMEOUT:?}"))
            }
        }
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
    /// becomes active in an epoch above every epoch seen, and serves `config`'s standbys.
    ///
    /// Split-brain guard first, unless `force`: every peer in `peers` is probed; the promotion
    /// is refused if one still answers as active in our epoch or above, or holds records this
    /// replica lacks, or if this replica knows it lags its last active.
    ///
    /// # Errors
    /// [`PromoteError`] naming what stands in the way.
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
        let mut probes = Vec::new();
        for peer in peers.iter().filter(|p| *p != self.id()) {
            let probe = match self.probe(peer, domain, None).await {
                Ok(answer) => PeerProbe::Answered(answer),
                Err(e) => {
                    tracing::info!(domain = %domain, peer = %peer, "probe before promotion: {e}");
                    PeerProbe::Unreachable(e)
                }
            };
            probes.push((peer.clone(), probe));
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
        let verdict = promotion::check(&input).map_err(|r| match r {
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
        })?;
        for s in &verdict.alive {
            tracing::warn!(domain = %domain, active = %s.active, seen_by = %s.seer, age_ms = s.age.as_millis(), "forced promotion while an active was seen alive");
        }
        let behind_records = verdict.behind_records;
        let unreachable = verdict.unreachable;
        let followed = sd.active();
        self.unfollow(domain);
        let epoch = match off_executor(&replica, Domain::promote).await {
            Ok(e) => e,
            Err(e) => {
                self.follow(replica, followed);
                return Err(e.into());
            }
        };
        tracing::warn!(domain = %domain, epoch = %epoch, behind_records, forced = force, "promoted to active");
        self.serve_active(replica.clone(), config);
        Ok(Promotion {
            epoch,
            position: replica.status()?.position,
            behind_records,
            unreachable,
        })
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
        let started = std::time::Instant::now();
        let epoch = Epoch {
            term: replica.status()?.epoch.term + 1,
            node: to.clone(),
        };
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
            // 3. Hand over.
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
    /// meanwhile, this node follows that active instead of making a second one.
    async fn switchover_failed(
        &self,
        domain: &DomainId,
        to: &NodeId,
        offered: &Epoch,
        replica: Domain,
        error: SwitchoverError,
    ) -> Result<Switchover, SwitchoverError> {
        let status = replica.status()?;
        let took_over = match self.probe(to, domain, None).await {
            Ok(Some(a)) => a.role == Role::Active && a.epoch >= *offered,
            _ => false,
        };
        let successor = if took_over {
            Some(to.clone())
        } else if status.epoch > *offered {
            Some(status.epoch.node.clone())
        } else {
            None
        };
        if let Some(active) = successor.filter(|n| n != self.id()) {
            if let Some(ad) = lock(&self.inner.actives).remove(domain) {
                ad.stop();
            }
            tracing::warn!(domain = %domain, active = %active, "switchover answer lost or overtaken: following {active}");
            self.follow(replica, active);
            return Err(error);
        }
        // Take writes again, in an epoch above the one offered.
        off_executor(&replica, Domain::promote).await?;
        tracing::warn!(domain = %domain, error = %error, "switchover failed; still active");
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

    /// The target side of a switchover.
    pub(super) async fn take_over(
        &self,
        from: &NodeId,
        take: &crate::repl::TakeOver,
    ) -> Result<Position, String> {
        let sd = lock(&self.inner.standbys)
            .get(&take.domain)
            .cloned()
            .ok_or_else(|| format!("{} is not a standby of {} here", self.id(), take.domain))?;
        let replica = sd.domain().clone();
        let here = replica.status().map_err(|e| e.to_string())?;
        if here.position != take.last {
            return Err(format!(
                "this replica is at {} and the old active at {}",
                here.position, take.last
            ));
        }
        let followed = sd.active();
        self.unfollow(&take.domain);
        let promoted = off_executor(&replica, {
            let epoch = take.epoch.clone();
            move |d| d.promote_to(&epoch)
        })
        .await;
        if let Err(e) = promoted {
            self.follow(replica, followed);
            return Err(e.to_string());
        }
        let config = ActiveConfig::new(take.durability, take.standbys.clone());
        self.serve_active(replica, config);
        tracing::info!(domain = %take.domain, from = %from, epoch = %take.epoch, "took over as active");
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
            tokio::time::timeout(PROBE_TIMEOUT, read_frame(&mut recv, MAX_MESSAGE_BYTES)).await
        else {
            self.disconnect(peer).await;
            return Err(format!("no answer within {PROBE_TIMEOUT:?}"));
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
