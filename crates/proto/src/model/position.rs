//! Log sequence numbers, epochs, positions, history and roles.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// Log sequence number of a domain: contiguous from 1, one per committed transaction.
/// `Lsn(0)` means "nothing yet".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The lsn before the first record.
    pub const ZERO: Lsn = Lsn(0);

    /// The lsn that follows this one.
    #[must_use]
    pub fn next(self) -> Lsn {
        Lsn(self.0.saturating_add(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The fencing token of a domain: raised by every promotion, ordered by `term` then `node`.
///
/// ```
/// use domsync_proto::model::{Epoch, NodeId};
/// let a = Epoch { term: 1, node: NodeId::new("b")? };
/// let b = Epoch { term: 2, node: NodeId::new("a")? };
/// assert!(a < b);
/// # Ok::<(), domsync_proto::model::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch {
    /// Promotion counter.
    pub term: u64,
    /// The node that became active in this epoch.
    pub node: NodeId,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.term, self.node)
    }
}

/// Where a replica stands: the epoch and lsn of its last applied record, and `chain`, a running
/// CRC32 over every record up to `lsn` (see [`crate::codec::chain_next`]). Two replicas at the same
/// lsn with different histories have different chains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Epoch of the last applied record (term 0 before any record).
    pub epoch: Epoch,
    /// Lsn of the last applied record.
    pub lsn: Lsn,
    /// Running checksum over all records up to `lsn`; 0 at lsn 0.
    pub chain: u32,
}

impl Position {
    /// The position of a replica that holds nothing yet.
    pub fn empty(node: NodeId) -> Position {
        Position {
            epoch: Epoch { term: 0, node },
            lsn: Lsn::ZERO,
            chain: 0,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lsn {} epoch {} chain {:08x}",
            self.lsn, self.epoch, self.chain
        )
    }
}

/// The version of a piece of data (a policy package): the epoch and lsn of the record that
/// wrote it. Versions order by epoch first, so a package installed by a new active after a
/// failover is newer than anything the old active served, even at a lower lsn, and a reader
/// that compares versions never goes backwards (DESIGN.md §8).
///
/// ```
/// use domsync_proto::model::{Epoch, Lsn, NodeId, Version};
/// let old = Version { epoch: Epoch { term: 1, node: NodeId::new("a")? }, lsn: Lsn(100) };
/// let new = Version { epoch: Epoch { term: 2, node: NodeId::new("b")? }, lsn: Lsn(91) };
/// assert!(new > old);
/// # Ok::<(), domsync_proto::model::NameError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The epoch of the record that wrote it.
    pub epoch: Epoch,
    /// The lsn of that record.
    pub lsn: Lsn,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.epoch, self.lsn)
    }
}

/// One step of a domain's history: from `first_lsn` on, records were written in `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The epoch that wrote these records.
    pub epoch: Epoch,
    /// The first lsn written in that epoch.
    pub first_lsn: Lsn,
}

/// The role of one replica of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Takes writes and ships its change log.
    Active,
    /// Read-only; applies the active's change log.
    Standby,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Active => "active",
            Role::Standby => "standby",
        })
    }
}
