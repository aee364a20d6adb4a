//! Sync status: how a standby stands against the active (DESIGN.md §2).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Lsn;

/// How a standby stands against the active, as computed on the active (and reported by the
/// standby from what the active told it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SyncStatus {
    /// The standby never completed a first synchronization.
    NeverSynchronized,
    /// The standby holds everything the active committed.
    Synchronized,
    /// The standby is behind.
    Lagging {
        /// Records behind.
        records: u64,
        /// Bytes of encoded records behind (estimated for records not yet read from the log).
        bytes: u64,
        /// Age of the oldest commit the standby does not hold yet.
        behind: Duration,
    },
    /// The standby holds records after the active's position, in the same history.
    Advanced {
        /// Records the active does not have.
        records: u64,
    },
    /// The standby's history diverged from the active's after `fork`: its records past the
    /// fork are archived and reported until an operator resolves them.
    Collision {
        /// Last lsn both histories share.
        fork: Lsn,
    },
}

impl SyncStatus {
    /// The status name, as shown by the CLI and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            SyncStatus::NeverSynchronized => "NeverSynchronized",
            SyncStatus::Synchronized => "Synchronized",
            SyncStatus::Lagging { .. } => "Lagging",
            SyncStatus::Advanced { .. } => "Advanced",
            SyncStatus::Collision { .. } => "Collision",
        }
    }
}

impl fmt::Display for SyncStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncStatus::Lagging {
                records,
                bytes,
                behind,
            } => write!(
                f,
                "Lagging ({records} records, {bytes} bytes, {:.3} s behind)",
                behind.as_secs_f64()
            ),
            SyncStatus::Advanced { records } => write!(f, "Advanced ({records} records ahead)"),
            SyncStatus::Collision { fork } => write!(f, "Collision (diverged after lsn {fork})"),
            other => f.write_str(other.name()),
        }
    }
}
