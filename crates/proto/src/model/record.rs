//! A change-log record: one committed write transaction of a domain.

use serde::{Deserialize, Serialize};

use super::{Epoch, Lsn, Op};

/// One committed transaction of a domain, as it travels in the change log.
///
/// `prev_chain` is the chain of the position the record was written on: a record only applies
/// on top of exactly the history it was created on. Encode with [`crate::codec::encode_record`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The epoch of the active that wrote it.
    pub epoch: Epoch,
    /// Its log sequence number.
    pub lsn: Lsn,
    /// Commit time on the active, microseconds since the Unix epoch.
    pub time: u64,
    /// Chain of the position before this record.
    pub prev_chain: u32,
    /// The changes, applied in order.
    pub ops: Vec<Op>,
}
