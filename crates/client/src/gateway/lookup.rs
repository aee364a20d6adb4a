//! Whether a request across the nodes has ended: the [`Lookup`] that decides when a "not
//! found" is final, and the position comparisons behind the floor of versions seen.

use domsync_proto::gateway::{CrlInfo, Served};
use domsync_proto::model::{NodeId, PolicyInfo, Position, Version};

use super::config::{CrlCopy, Listing, Package};
use super::exchange::Fail;

/// What one node answered (before it becomes a result).
#[derive(Debug)]
pub(super) enum Got {
    Policies(Listing<PolicyInfo>),
    Package(Package),
    Crls(Listing<CrlInfo>),
    Crl(CrlCopy),
    Issuers(Listing<domsync_proto::model::IssuerCert>),
    /// The package or CRL asked for is not there, as of `served`'s position (and that node
    /// is not behind what the client saw).
    NotFound(Served),
}

/// How a request across the nodes ended without the item.
#[derive(Debug)]
pub(super) enum Miss {
    /// No node that could be asked holds it: the "not found" at the highest position, and the
    /// nodes that could not be asked.
    Absent {
        served: Served,
        unreached: Vec<NodeId>,
    },
    /// No node gave a usable answer.
    Failed(Vec<(NodeId, Fail)>),
}

/// The way of one request through the configured nodes, in the order they are asked; no I/O.
///
/// The first answer that carries the item (a package, a CRL, a list, a confirmation of the
/// held copy) ends the request. A "not found" does not: another node may hold a newer
/// position where the item exists (a standby that was wiped, say, and does not know it yet),
/// so the next nodes are asked too. Only when no node sent the item is the "not found" of the
/// node at the highest position (epoch, then lsn; the earliest asked among equals) the
/// result, naming the nodes that could not be asked; with no "not found" at all (every node
/// behind or unreachable), the failures.
#[derive(Debug, Default)]
pub(super) struct Lookup {
    absent: Option<(NodeId, Served)>,
    failures: Vec<(NodeId, Fail)>,
}

impl Lookup {
    /// Takes node `node`'s answer: `Some` when it ends the request.
    pub(super) fn answer(&mut self, node: NodeId, answer: Result<Got, Fail>) -> Option<Got> {
        match answer {
            Ok(Got::NotFound(served)) => {
                let higher = self.absent.as_ref().is_none_or(|(_, best)| {
                    (&served.position.epoch, served.position.lsn)
                        > (&best.position.epoch, best.position.lsn)
                });
                if higher {
                    self.absent = Some((node, served));
                }
                None
            }
            Ok(got) => Some(got),
            Err(fail) => {
                self.failures.push((node, fail));
                None
            }
        }
    }

    /// Every node was asked and none sent the item.
    pub(super) fn finish(self) -> Miss {
        match self.absent {
            Some((_, served)) => Miss::Absent {
                served,
                // A node that answered `Behind` was asked: it does not have the item.
                unreached: self
                    .failures
                    .into_iter()
                    .filter(|(_, f)| !matches!(f, Fail::Behind(_)))
                    .map(|(n, _)| n)
                    .collect(),
            },
            None => Miss::Failed(self.failures),
        }
    }
}

/// A version as the position of the record that wrote it.
pub(super) fn version_position(v: &Version) -> Position {
    Position {
        epoch: v.epoch.clone(),
        lsn: v.lsn,
        chain: 0,
    }
}

/// Whether position `a` is at or past `b` (epoch, then lsn; chains are not compared).
pub(super) fn reached(a: &Position, b: &Position) -> bool {
    (&a.epoch, a.lsn) >= (&b.epoch, b.lsn)
}

/// A node that answered `Behind` unasked: it knows it is behind the domain and cannot vouch
/// that an item is missing.
pub(super) fn knows_behind(served: &Served) -> Fail {
    Fail::Behind(format!(
        "{} at {}, knows it is behind the domain",
        served.role, served.position
    ))
}
