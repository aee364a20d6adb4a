//! What only the node may do with a replica (feature `replica`): apply records shipped by the
//! active, promote, fence (demote) and truncate the log. Each goes through the domain's writer
//! like a write.

use std::sync::PoisonError;

use super::error::StoreError;
use super::writer::Work;
use domsync_proto::model::{Epoch, Lsn, NodeId, Position};

use super::domain::Domain;

impl Domain {
    /// Applies one encoded record shipped from the active (standby only). Accepted only when
    /// its lsn is the next one, its CRC holds, it was written on this replica's chain and its
    /// epoch is not older; it is then applied atomically with the new position. Anything else
    /// is refused and leaves the store untouched.
    ///
    /// Only with the feature `replica`, which the node enables: an embedder applying records
    /// by hand would bypass the role protocol's guards.
    ///
    /// ```
    /// use domsync_proto::model::{Lsn, NodeId, Op};
    /// use domsync_store::{Store, StoreError, StoreOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let a = Store::open(dir.path().join("a"), StoreOptions::new(NodeId::new("a")?))?;
    /// let b = Store::open(dir.path().join("b"), StoreOptions::new(NodeId::new("b")?))?;
    ///
    /// // The primary creates the domain: active in epoch (1, a), with a fresh uid.
    /// let tenant = "tenant-1".parse()?;
    /// let active = a.create_domain(&tenant)?;
    /// let standby = b.join_domain(&tenant)?;
    ///
    /// // Writes are durable (fsynced) when they return; each is one record with its own lsn.
    /// active.put("ntp/server", "10.0.0.1")?;
    /// active.write(vec![
    ///     Op::Put { key: b"log/level".to_vec(), value: b"info".to_vec() },
    ///     Op::InstallPolicy { name: "edge".into(), content: b"allow 443".to_vec() },
    /// ])?;
    ///
    /// // The standby is read-only and applies the active's records in order.
    /// assert!(matches!(standby.put("x", "y"), Err(StoreError::NotActive { .. })));
    /// for entry in active.read_log(Lsn(1), 100, 1 << 20)? {
    ///     standby.apply(&entry.bytes)?;
    /// }
    ///
    /// // Every read reports the position it was served at; same lsn, same content digest.
    /// let read = standby.policy("edge")?;
    /// assert_eq!(read.value.map(|p| p.info.version), Some(2));
    /// assert_eq!(read.position, active.status()?.position);
    /// assert_eq!(standby.status()?.digest, active.status()?.digest);
    /// assert!(standby.verify()?.is_clean());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotStandby`], [`StoreError::CorruptRecord`], [`StoreError::OutOfOrder`],
    /// [`StoreError::ChainMismatch`], [`StoreError::StaleEpoch`], or [`StoreError::Storage`].
    pub fn apply(&self, record: &[u8]) -> Result<Position, StoreError> {
        self.submit(Work::Apply(record.to_vec()))
            .map(|c| c.position)
    }

    /// [`Domain::apply`] for async callers.
    ///
    /// # Errors
    /// As [`Domain::apply`].
    pub async fn apply_async(&self, record: Vec<u8>) -> Result<Position, StoreError> {
        self.submit_async(Work::Apply(record))
            .await
            .map(|c| c.position)
    }

    /// Applies a batch of records in order in one durable commit (shared with whatever else is
    /// queued). Returns the position after the last one. Stops at the first refusal: the
    /// records before it are applied and committed, the refused one and those after are not.
    ///
    /// # Errors
    /// As [`Domain::apply`], for the first record refused.
    pub async fn apply_batch_async(&self, records: Vec<Vec<u8>>) -> Result<Position, StoreError> {
        if records.is_empty() {
            return Ok(self.status()?.position);
        }
        self.submit_async(Work::ApplyBatch(None, records))
            .await
            .map(|c| c.position)
    }

    /// [`Domain::apply_batch_async`] for records shipped by node `from` on a stream it
    /// accepted when this replica's highest epoch was `since` (the epoch its `Follow`
    /// carried): refused with [`StoreError::Fenced`] once an epoch above `since` is recorded
    /// here (counting the records' own) whose node is not `from`. The check runs on the
    /// writer thread, in the same order as [`Domain::demote`], so a batch of an old active
    /// still on its way when a newer epoch is recorded is never applied (invariant 5), while
    /// records of older epochs that the new active relays are.
    ///
    /// # Errors
    /// As [`Domain::apply`], and [`StoreError::Fenced`].
    pub async fn apply_batch_from_async(
        &self,
        from: &NodeId,
        since: &Epoch,
        records: Vec<Vec<u8>>,
    ) -> Result<Position, StoreError> {
        if records.is_empty() {
            return Ok(self.status()?.position);
        }
        self.submit_async(Work::ApplyBatch(
            Some((from.clone(), since.clone())),
            records,
        ))
        .await
        .map(|c| c.position)
    }

    /// [`Domain::apply_batch_from_async`] for synchronous callers.
    ///
    /// # Errors
    /// As [`Domain::apply_batch_from_async`].
    pub fn apply_batch_from(
        &self,
        from: &NodeId,
        since: &Epoch,
        records: Vec<Vec<u8>>,
    ) -> Result<Position, StoreError> {
        if records.is_empty() {
            return Ok(self.status()?.position);
        }
        self.submit(Work::ApplyBatch(
            Some((from.clone(), since.clone())),
            records,
        ))
        .map(|c| c.position)
    }

    /// Makes this standby replica active in a new epoch, above every epoch it has seen; the
    /// epoch and history entry are durable before this returns, so no write of the new epoch
    /// can exist without them. The checks that make promotion safe (synchronized, old active
    /// gone) belong to the caller (the node).
    ///
    /// # Errors
    /// [`StoreError::NotStandby`], [`StoreError::InvalidWrite`] for a replica that never
    /// synchronized, or [`StoreError::Storage`].
    pub fn promote(&self) -> Result<Epoch, StoreError> {
        self.submit(Work::Promote(None))?;
        Ok(self.status()?.epoch)
    }

    /// Like [`Domain::promote`], in the epoch a switchover hands over (it must be this node's
    /// and above every epoch seen here).
    ///
    /// # Errors
    /// As [`Domain::promote`].
    pub fn promote_to(&self, epoch: &Epoch) -> Result<(), StoreError> {
        self.submit(Work::Promote(Some(epoch.clone()))).map(|_| ())
    }

    /// Fences this replica: `epoch` was seen elsewhere. If it is above the replica's own, no
    /// write is accepted or acknowledged from now on (writes in flight are refused), and the
    /// replica becomes standby, durably.
    ///
    /// # Errors
    /// [`StoreError::Storage`].
    pub fn demote(&self, epoch: &Epoch) -> Result<(), StoreError> {
        {
            let mut fence = self
                .inner
                .counters
                .fence
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if fence.as_ref().is_none_or(|f| f < epoch) {
                *fence = Some(epoch.clone());
            }
        }
        let status = self.status()?;
        if *epoch <= status.epoch {
            // Not newer than what this replica holds: nothing to fence.
            return Ok(());
        }
        self.submit(Work::Demote(epoch.clone())).map(|_| ())
    }

    /// Drops log records below `below` (never past the last record). Returns the new first
    /// retained lsn. The replication layer decides what can go.
    ///
    /// # Errors
    /// [`StoreError::Storage`], or [`StoreError::CorruptRecord`] when the record at the cut
    /// cannot be read to carry the chain over.
    pub fn truncate_log(&self, below: Lsn) -> Result<Lsn, StoreError> {
        self.submit(Work::Truncate(below)).map(|c| c.log_start)
    }
}
