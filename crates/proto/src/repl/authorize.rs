//! Who may say what about a domain (invariant 9), sans-IO.
//!
//! Every node of the deployment holds a certificate from the same CA: authenticated is not
//! authorized. Before a node acts on a message about a domain it checks the sender against
//! its *local* configuration of that domain: is the sender one of the domain's replicas, is
//! it the active this replica follows, is the epoch it carries a sane step above what is
//! known here. Numbers from outside use checked arithmetic.
//!
//! ```
//! use domsync_proto::model::{Epoch, NodeId};
//! use domsync_proto::repl::{check_epoch, next_epoch, EpochRefusal, MAX_TERM_STEP};
//!
//! let (a, b) = (NodeId::new("a")?, NodeId::new("b")?);
//! let known = Epoch { term: 4, node: a.clone() };
//! let replicas = [a.clone(), b.clone()];
//! assert!(check_epoch(&Epoch { term: 5, node: b.clone() }, &known, &replicas).is_ok());
//! let wild = Epoch { term: u64::MAX, node: b.clone() };
//! assert!(matches!(check_epoch(&wild, &known, &replicas), Err(EpochRefusal::TooFar { .. })));
//! assert_eq!(next_epoch(&known, &b)?.term, 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::model::{Epoch, NodeId};

/// Largest step a term announced by a peer may take above the highest term known here.
/// Promotions raise the term by one; a refused promotion attempt also leaves its term
/// recorded on the standbys it fenced, so honest terms move by small steps. A term far above
/// (up to `u64::MAX`) would leave no room for the next promotion: it is refused and logged.
pub const MAX_TERM_STEP: u64 = 1024;

/// Why an epoch from a peer is not taken into account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochRefusal {
    /// The epoch names a node that is not a replica of the domain here.
    #[error("epoch {epoch} names node {}, which is not a replica of the domain in the local configuration", epoch.node)]
    NotReplica {
        /// The epoch offered.
        epoch: Epoch,
    },
    /// The term jumps too far above the highest term known here.
    #[error(
        "epoch {epoch} is more than {MAX_TERM_STEP} terms above the highest known here ({known})"
    )]
    TooFar {
        /// The epoch offered.
        epoch: Epoch,
        /// The highest epoch known here.
        known: Epoch,
    },
}

/// Checks an epoch a peer announces (in a `Follow`, a `Probe` or a `TakeOver`) before it may
/// fence anything here: it must name a replica of the domain and stay within
/// [`MAX_TERM_STEP`] terms of `known`, the highest epoch recorded here. Epochs at or below
/// `known` pass (they change nothing).
///
/// # Errors
/// [`EpochRefusal`] saying which rule it breaks.
pub fn check_epoch(
    offered: &Epoch,
    known: &Epoch,
    replicas: &[NodeId],
) -> Result<(), EpochRefusal> {
    if offered <= known {
        return Ok(());
    }
    if !replicas.contains(&offered.node) {
        return Err(EpochRefusal::NotReplica {
            epoch: offered.clone(),
        });
    }
    let limit = known.term.saturating_add(MAX_TERM_STEP);
    if offered.term > limit {
        return Err(EpochRefusal::TooFar {
            epoch: offered.clone(),
            known: known.clone(),
        });
    }
    Ok(())
}

/// The epoch a promotion of `me` takes: one term above `highest`, the highest epoch known
/// (here and from every peer reached).
///
/// # Errors
/// [`EpochRefusal::TooFar`] when the term cannot be raised (it is `u64::MAX`).
pub fn next_epoch(highest: &Epoch, me: &NodeId) -> Result<Epoch, EpochRefusal> {
    let term = highest
        .term
        .checked_add(1)
        .ok_or_else(|| EpochRefusal::TooFar {
            epoch: highest.clone(),
            known: highest.clone(),
        })?;
    Ok(Epoch {
        term,
        node: me.clone(),
    })
}

/// What a peer asks about a domain, for [`authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// `Follow`: stream the domain to me.
    Follow,
    /// `Probe`: where do you stand (and, with an epoch, record it: fencing).
    Probe,
    /// `TakeOver`: become active (switchover).
    TakeOver,
}

/// Why a peer's request about a domain is refused. The peer is told only that the domain is
/// unknown (it learns nothing about a domain it has no business with); the reason is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerRefusal {
    /// The domain has no replica on this node.
    #[error("this node holds no replica of the domain")]
    UnknownDomain,
    /// The peer is not one of the domain's replicas in the local configuration.
    #[error("node {peer} is not a replica of the domain in the local configuration")]
    NotReplica {
        /// The sender.
        peer: NodeId,
    },
    /// A hand-over comes from a node other than the active this replica follows.
    #[error("node {peer} offered a hand-over, but this replica follows {followed}")]
    NotFollowed {
        /// The sender.
        peer: NodeId,
        /// The active followed here.
        followed: NodeId,
    },
}

/// How this node holds a domain, as far as authorization goes.
#[derive(Debug, Clone, Copy)]
pub struct LocalDomain<'a> {
    /// The domain's replicas in the local configuration (this node among them).
    pub replicas: &'a [NodeId],
    /// The active this replica follows, when it is a standby here.
    pub followed: Option<&'a NodeId>,
}

/// Decides whether `peer` may `ask` about a domain that this node holds as `local` (`None`:
/// not held here).
///
/// # Errors
/// [`PeerRefusal`], for the log; the peer gets the refusal of an unknown domain.
///
/// ```
/// use domsync_proto::model::NodeId;
/// use domsync_proto::repl::{authorize, Ask, LocalDomain, PeerRefusal};
///
/// let (a, b, x) = (NodeId::new("a")?, NodeId::new("b")?, NodeId::new("x")?);
/// let replicas = [a.clone(), b.clone()];
/// let here = LocalDomain { replicas: &replicas, followed: Some(&a) };
/// assert!(authorize(&a, Ask::TakeOver, Some(here)).is_ok());
/// assert!(matches!(authorize(&x, Ask::Probe, Some(here)), Err(PeerRefusal::NotReplica { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn authorize(
    peer: &NodeId,
    ask: Ask,
    local: Option<LocalDomain<'_>>,
) -> Result<(), PeerRefusal> {
    let local = local.ok_or(PeerRefusal::UnknownDomain)?;
    if !local.replicas.contains(peer) {
        return Err(PeerRefusal::NotReplica { peer: peer.clone() });
    }
    if ask == Ask::TakeOver {
        match local.followed {
            Some(f) if f == peer => {}
            Some(f) => {
                return Err(PeerRefusal::NotFollowed {
                    peer: peer.clone(),
                    followed: f.clone(),
                })
            }
            None => return Err(PeerRefusal::UnknownDomain),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn e(term: u64, node: &str) -> Epoch {
        Epoch {
            term,
            node: n(node),
        }
    }

    #[test]
    fn epochs_from_outside_are_bounded_and_name_a_replica() {
        let replicas = [n("a"), n("b")];
        let known = e(3, "a");
        assert!(check_epoch(&e(2, "x"), &known, &replicas).is_ok());
        assert!(check_epoch(&e(4, "b"), &known, &replicas).is_ok());
        assert!(check_epoch(&e(3 + MAX_TERM_STEP, "b"), &known, &replicas).is_ok());
        assert!(matches!(
            check_epoch(&e(4 + MAX_TERM_STEP, "b"), &known, &replicas),
            Err(EpochRefusal::TooFar { .. })
        ));
        assert!(matches!(
            check_epoch(&e(4, "x"), &known, &replicas),
            Err(EpochRefusal::NotReplica { .. })
        ));
        let top = e(u64::MAX - 1, "a");
        assert!(check_epoch(&e(u64::MAX, "b"), &top, &replicas).is_ok());
    }

    #[test]
    fn the_next_epoch_never_wraps() {
        assert_eq!(next_epoch(&e(7, "a"), &n("b")).unwrap(), e(8, "b"));
        assert!(next_epoch(&e(u64::MAX, "a"), &n("b")).is_err());
    }

    #[test]
    fn only_replicas_ask_and_only_the_followed_active_hands_over() {
        let replicas = [n("a"), n("b"), n("c")];
        let standby = LocalDomain {
            replicas: &replicas,
            followed: Some(&replicas[0]),
        };
        let active = LocalDomain {
            replicas: &replicas,
            followed: None,
        };
        for ask in [Ask::Follow, Ask::Probe, Ask::TakeOver] {
            assert_eq!(
                authorize(&n("x"), ask, Some(standby)),
                Err(PeerRefusal::NotReplica { peer: n("x") })
            );
            assert_eq!(
                authorize(&n("a"), ask, None),
                Err(PeerRefusal::UnknownDomain)
            );
        }
        assert!(authorize(&n("c"), Ask::Probe, Some(standby)).is_ok());
        assert!(authorize(&n("a"), Ask::TakeOver, Some(standby)).is_ok());
        assert!(matches!(
            authorize(&n("c"), Ask::TakeOver, Some(standby)),
            Err(PeerRefusal::NotFollowed { .. })
        ));
        assert_eq!(
            authorize(&n("b"), Ask::TakeOver, Some(active)),
            Err(PeerRefusal::UnknownDomain)
        );
        assert!(authorize(&n("b"), Ask::Follow, Some(active)).is_ok());
    }
}
