//! The operator's commands on a domain's role: promote (manual failover) and switchover.

use std::time::Duration;

use crate::active::ActiveConfig;
use crate::{lock, Node};
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Position};
use domsync_proto::repl::roles::{Input, Outcome, PromoteFailure, SwitchFailure};
use domsync_proto::repl::EpochRefusal;
use domsync_proto::repl::{FenceRefusal, Refusal, Seer};
use domsync_store::StoreError;

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
}
