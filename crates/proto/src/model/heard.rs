//! Reports that an active was reached, as standbys and gateways pass them on.

use serde::{Deserialize, Serialize};

use super::{Epoch, NodeId};

/// A report that an active was reached: by a standby following it (in a probe answer) or by a
/// gateway (in its requests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    /// The active that was reached.
    pub node: NodeId,
    /// Its epoch then.
    pub epoch: Epoch,
    /// How long ago, in milliseconds, when the report was made.
    pub ago_ms: u64,
}
