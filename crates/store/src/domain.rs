//! [`Domain`]: the handle of one domain's replica on this node — writes, applies and reads.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::tables::{decode_crl, decode_policy, CRL, KV, META, META_KEY, POLICY, POLICY_CONTENT};
use super::writer::{Committed, Counters, Outcome, Reply, Request, Work};
use domsync_proto::model::StateDigest;
use domsync_proto::model::{
    Crl, DomainId, DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Op, Policy, PolicyInfo, Position,
    Role,
};

/// A value read from a domain, with the committed state it was read from: every read runs in
/// one read transaction, so `value` and `position` belong together (invariant 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// What was read.
    pub value: T,
    /// The position of the state it was read from.
    pub position: Position,
    /// The role of this replica when it was read.
    pub role: Role,
    /// The highest epoch this replica had seen when it was read.
    pub epoch: Epoch,
}

/// A user key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A policy package open for reading in pieces (see [`Domain::policy_reader`]).
pub struct PolicyReader {
    domain: DomainId,
    /// Name, version, size and digest of the package.
    pub info: PolicyInfo,
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl std::fmt::Debug for PolicyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl PolicyReader {
    /// Up to `len` bytes of the content from `offset` (empty at or past the end).
    ///
    /// # Errors
    /// [`StoreError::Storage`], or [`StoreError::Corrupt`] when the content is missing.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let id = &self.domain;
        let value = self
            .table
            .get(self.info.name.as_str())
            .or_storage(id)?
            .ok_or_else(|| StoreError::Corrupt {
                domain: id.clone(),
                what: format!("content of policy {} is missing", self.info.name),
            })?;
        let bytes = value.value();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(len).min(bytes.len());
        Ok(bytes[start..end].to_vec())
    }
}

/// Where a replica of a domain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainStatus {
    /// The domain.
    pub domain: DomainId,
    /// Incarnation id; `None` for a standby that never synchronized.
    pub uid: Option<DomainUid>,
    /// Role of this replica.
    pub role: Role,
    /// Highest epoch seen.
    pub epoch: Epoch,
    /// The epochs the domain went through.
    pub history: Vec<HistoryEntry>,
    /// Last applied record.
    pub position: Position,
    /// First lsn still held in the log.
    pub log_start: Lsn,
    /// Chain of the position just before `log_start`.
    pub log_base_chain: u32,
    /// Bytes of the records held in the log.
    pub log_bytes: u64,
    /// Content digest of the state at `position`.
    pub digest: StateDigest,
}

/// Commit counters of a domain's writer since it was opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Durable redb commits made.
    pub commits: u64,
    /// Records appended to the log (writes and applies).
    pub records: u64,
    /// Durable commits by latency: `(upper bound in microseconds, count)`, cumulative as
    /// Prometheus histograms are; the last bound is `u64::MAX`.
    pub commit_latency: Vec<(u64, u64)>,
    /// Sum of the commit latencies, microseconds.
    pub commit_micros: u64,
}

/// The database of a replica, shared by its readers and its writer.
/// `None` while the writer reopens it after a storage error.
pub(crate) type SharedDb = Arc<RwLock<Option<Arc<Database>>>>;

pub(crate) struct Inner {
    pub id: DomainId,
    pub path: PathBuf,
    /// The current database; replaced when a resync is switched in.
    pub db: SharedDb,
    pub opener: super::Opener,
    pub tx: Mutex<Option<mpsc::SyncSender<Request>>>,
    pub positions: watch::Receiver<Position>,
    pub counters: Arc<Counters>,
    pub thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has answered what it holds.
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            if handle.join().is_err() {
                tracing::error!(domain = %self.id, "writer thread panicked");
            }
        }
    }
}

/// The replica of one domain on this node. Cheap to clone; all clones share one writer.
///
/// Writes block the calling thread until their group commit is durable; use the `_async`
/// variants from async code. Reads never wait for writers.
#[derive(Clone)]
pub struct Domain {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// The domain's name.
    pub fn id(&self) -> &DomainId {
        &self.inner.id
    }

    /// The database file of this replica.
    pub fn path(&self) -> &std::path::Path {
        &self.inner.path
    }

    fn sender(&self) -> Result<mpsc::SyncSender<Request>, StoreError> {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Closed {
                domain: self.inner.id.clone(),
            })
    }

    fn closed(&self) -> StoreError {
        StoreError::Closed {
            domain: self.inner.id.clone(),
        }
    }

    pub(crate) fn submit_work(&self, work: Work) -> Result<Position, StoreError> {
        self.submit(work).map(|c| c.position)
    }

    fn submit(&self, work: Work) -> Result<Committed, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.sender()?
            .send(Request {
                work,
                reply: Reply::Blocking(tx),
            })
            .map_err(|_| self.closed())?;
        rx.recv().map_err(|_| self.closed())?
    }

    async fn submit_async(&self, work: Work) -> Result<Committed, StoreError> {
        let sender = self.sender()?;
        let rx = self.enqueue(&sender, work).await?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues a request without blocking the executor; the answer comes on the receiver.
    async fn enqueue(
        &self,
        sender: &mpsc::SyncSender<Request>,
        work: Work,
    ) -> Result<oneshot::Receiver<Outcome>, StoreError> {
        let (tx, rx) = oneshot::channel::<Outcome>();
        let request = Request {
            work,
            reply: Reply::Async(tx),
        };
        // The queue is bounded; a full queue is waited out off the executor's threads.
        match sender.try_send(request) {
            Ok(()) => Ok(rx),
            Err(mpsc::TrySendError::Full(request)) => {
                let sender = sender.clone();
                let closed = self.closed();
                tokio::task::spawn_blocking(move || sender.send(request))
                    .await
                    .map_err(|_| closed.clone())?
                    .map_err(|_| closed)?;
                Ok(rx)
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(self.closed()),
        }
    }

    /// Commits `ops` as one transaction: one record, one lsn, durable (fsynced) before this
    /// returns. Concurrent writers are batched into one commit (group commit).
    ///
    /// # Errors
    /// [`StoreError::NotActive`] on a standby; [`StoreError::InvalidWrite`],
    /// [`StoreError::CrlOutdated`] or [`StoreError::CrlConflict`] when a check refuses it (nothing
    /// is committed); [`StoreError::Storage`], [`StoreError::DiskFull`] or
    /// [`StoreError::Reopening`] when the storage failed: the write is not acknowledged (a
    /// failure of the final fsync can leave it durable nonetheless; the position read back
    /// tells), and the domain reopens its database so that later writes can succeed.
    pub fn write(&self, ops: Vec<Op>) -> Result<Position, StoreError> {
        self.submit(Work::Write(ops)).map(|c| c.position)
    }

    /// [`Domain::write`] for async callers: never blocks the executor.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub async fn write_async(&self, ops: Vec<Op>) -> Result<Position, StoreError> {
        self.submit_async(Work::Write(ops))
            .await
            .map(|c| c.position)
    }

    /// Sets a user key.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<Position, StoreError> {
        self.write(vec![Op::Put {
            key: key.into(),
            value: value.into(),
        }])
    }

    /// Removes a user key.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Position, StoreError> {
        self.write(vec![Op::Delete { key: key.into() }])
    }

    /// Installs a policy package; its version becomes the lsn of this write.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn install_policy(
        &self,
        name: &str,
        content: impl Into<Vec<u8>>,
    ) -> Result<Position, StoreError> {
        self.write(vec![Op::InstallPolicy {
            name: name.to_owned(),
            content: content.into(),
        }])
    }

    /// Removes a policy package.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn remove_policy(&self, name: &str) -> Result<Position, StoreError> {
        self.write(vec![Op::RemovePolicy {
            name: name.to_owned(),
        }])
    }

    /// Parses a DER CRL and stores it for its issuer. Refused when malformed, without a CRL
    /// number, or older than the CRL held for that issuer.
    ///
    /// # Errors
    /// [`StoreError::Crl`] for a malformed CRL, otherwise as [`Domain::write`].
    pub fn put_crl(&self, der: &[u8]) -> Result<Position, StoreError> {
        let crl = Crl::from_der(der).map_err(|source| StoreError::Crl {
            domain: self.inner.id.clone(),
            source,
        })?;
        self.write(vec![Op::PutCrl(crl)])
    }

    /// Removes the CRL of an issuer.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn remove_crl(&self, issuer: &str) -> Result<Position, StoreError> {
        self.write(vec![Op::RemoveCrl {
            issuer: issuer.to_owned(),
        }])
    }

    #[cfg(feature = "replica")]
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

    #[cfg(feature = "replica")]
    /// [`Domain::apply`] for async callers.
    ///
    /// # Errors
    /// As [`Domain::apply`].
    pub async fn apply_async(&self, record: Vec<u8>) -> Result<Position, StoreError> {
        self.submit_async(Work::Apply(record))
            .await
            .map(|c| c.position)
    }

    #[cfg(feature = "replica")]
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

    #[cfg(feature = "replica")]
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

    #[cfg(feature = "replica")]
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

    #[cfg(feature = "replica")]
    /// Makes this standby replica active in a new epoch, above every epoch it has seen; the
    /// epoch and history entry are durable before this returns, so no write of the new epoch
    /// can exist without them. The checks that make promotion safe (synchronized, old active
    /// gone) belong to the caller ([`domsync_node`]).
    ///
    /// # Errors
    /// [`StoreError::NotStandby`], [`StoreError::InvalidWrite`] for a replica that never
    /// synchronized, or [`StoreError::Storage`].
    pub fn promote(&self) -> Result<Epoch, StoreError> {
        self.submit(Work::Promote(None))?;
        Ok(self.status()?.epoch)
    }

    #[cfg(feature = "replica")]
    /// Like [`Domain::promote`], in the epoch a switchover hands over (it must be this node's
    /// and above every epoch seen here).
    ///
    /// # Errors
    /// As [`Domain::promote`].
    pub fn promote_to(&self, epoch: &Epoch) -> Result<(), StoreError> {
        self.submit(Work::Promote(Some(epoch.clone()))).map(|_| ())
    }

    /// The highest epoch this replica knows of: the one its metadata records, or a higher
    /// one [`Domain::demote`] was told of whose durable record is still on its way. A standby
    /// acknowledges and applies records only from this epoch's node.
    ///
    /// # Errors
    /// [`StoreError::Closed`] when the domain is closed.
    pub fn highest_epoch(&self) -> Result<Epoch, StoreError> {
        let recorded = self.status()?.epoch;
        let fence = self
            .inner
            .counters
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(fence.map_or(recorded.clone(), |f| f.max(recorded)))
    }

    #[cfg(feature = "replica")]
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

    #[cfg(feature = "replica")]
    /// Drops log records below `below` (never past the last record). Returns the new first
    /// retained lsn. The replication layer decides what can go.
    ///
    /// # Errors
    /// [`StoreError::Storage`], or [`StoreError::CorruptRecord`] when the record at the cut
    /// cannot be read to carry the chain over.
    pub fn truncate_log(&self, below: Lsn) -> Result<Lsn, StoreError> {
        self.submit(Work::Truncate(below)).map(|c| c.log_start)
    }

    /// A channel that sees every new committed position (after its fsync). Use it to push
    /// records as they commit instead of polling.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = domsync_store::Store::open(dir.path(), domsync_store::StoreOptions::new(domsync_proto::model::NodeId::new("n")?))?;
    /// # let domain = store.create_domain(&"d".parse()?)?;
    /// let mut commits = domain.subscribe();
    /// let pos = domain.put("k", "v")?;
    /// assert!(commits.has_changed()?);
    /// assert_eq!(*commits.borrow_and_update(), pos);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<Position> {
        self.inner.positions.clone()
    }

    /// Commit counters since the domain was opened.
    pub fn stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        let mut total = 0;
        let bounds = super::writer::COMMIT_BUCKETS_MICROS
            .iter()
            .copied()
            .chain(std::iter::once(u64::MAX));
        let commit_latency = bounds
            .zip(c.commit_buckets.iter())
            .map(|(bound, n)| {
                total += n.load(Ordering::Relaxed);
                (bound, total)
            })
            .collect();
        WriterStats {
            commits: c.commits.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            commit_latency,
            commit_micros: c.commit_micros.load(Ordering::Relaxed),
        }
    }

    /// Passes `r` on; a storage fault in it asks the writer (once) to reopen the database:
    /// redb latches a failed read as it does a failed write, and a domain that is only read
    /// would otherwise never recover.
    pub(crate) fn noted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &r {
            if e.is_storage_fault()
                && !self
                    .inner
                    .counters
                    .reopen_requested
                    .swap(true, Ordering::SeqCst)
            {
                let (tx, _answer_unwanted) = mpsc::sync_channel(1);
                let queued = self.sender().is_ok_and(|s| {
                    s.try_send(Request {
                        work: Work::Reopen,
                        reply: Reply::Blocking(tx),
                    })
                    .is_ok()
                });
                if !queued {
                    self.inner
                        .counters
                        .reopen_requested
                        .store(false, Ordering::SeqCst);
                }
            }
        }
        r
    }

    pub(crate) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let r = self.begin_read_inner();
        self.noted(r)
    }

    fn begin_read_inner(&self) -> Result<ReadTransaction, StoreError> {
        let db = self
            .inner
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                domain: self.inner.id.clone(),
                path: self.inner.path.clone(),
                detail: "the last reopen failed or is under way".into(),
            })?;
        db.begin_read()
            .or_storage(&self.inner.id)
            .map_err(|e| e.at(&self.inner.path))
    }

    pub(crate) fn meta_in(&self, txn: &ReadTransaction) -> Result<DomainMeta, StoreError> {
        read_meta(txn, &self.inner.id)
    }

    /// Runs `f` in one read transaction and pairs its result with that state's position.
    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<Read<T>, StoreError> {
        let r = (|| {
            let txn = self.begin_read()?;
            let meta = self.meta_in(&txn)?;
            let value = f(&txn)?;
            Ok(Read {
                value,
                position: meta.position,
                role: meta.role,
                epoch: meta.epoch,
            })
        })();
        self.noted(r)
    }

    /// Where this replica stands: role, epoch, history, position, retained log, digest.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn status(&self) -> Result<DomainStatus, StoreError> {
        let txn = self.begin_read()?;
        let m = self.noted(self.meta_in(&txn))?;
        Ok(DomainStatus {
            domain: m.domain,
            uid: m.uid,
            role: m.role,
            epoch: m.epoch,
            history: m.history,
            position: m.position,
            log_start: m.log_start,
            log_base_chain: m.log_base_chain,
            log_bytes: m.log_bytes,
            digest: m.digest,
        })
    }

    /// Reads a user key.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn get(&self, key: &[u8]) -> Result<Read<Option<Vec<u8>>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(KV).or_storage(id)?;
            Ok(table.get(key).or_storage(id)?.map(|v| v.value().to_vec()))
        })
    }

    /// Lists user keys and values whose key starts with `prefix`, in key order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn list(&self, prefix: &[u8], limit: usize) -> Result<Read<Vec<KeyValue>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(KV).or_storage(id)?;
            let mut out = Vec::new();
            for entry in table.range(prefix..).or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                if !k.value().starts_with(prefix) || out.len() >= limit {
                    break;
                }
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// Reads a policy package; its content is checked against its SHA-256 first.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the content does not match its digest, or
    /// [`StoreError::Storage`].
    pub fn policy(&self, name: &str) -> Result<Read<Option<Policy>>, StoreError> {
        let read = self.policy_reader(name)?;
        let value = match read.value {
            None => None,
            Some(reader) => {
                let size = usize::try_from(reader.info.size).unwrap_or(usize::MAX);
                let content = reader.read_at(0, size)?;
                if <[u8; 32]>::from(Sha256::digest(&content)) != reader.info.sha256 {
                    return Err(StoreError::Corrupt {
                        domain: self.inner.id.clone(),
                        what: format!("content of policy {name} does not match its SHA-256"),
                    });
                }
                Some(Policy {
                    info: reader.info,
                    content,
                })
            }
        };
        Ok(Read {
            value,
            position: read.position,
            role: read.role,
            epoch: read.epoch,
        })
    }

    /// Opens a policy package for reading its content piece by piece, all from one read
    /// transaction (one committed state, however long the reading takes): what a server
    /// streaming large packages uses to keep its memory per reader to one piece.
    ///
    /// The content is not checked here; hash the pieces and compare with `info.sha256`.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn policy_reader(&self, name: &str) -> Result<Read<Option<PolicyReader>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let meta = txn.open_table(POLICY).or_storage(id)?;
            let Some(row) = meta.get(name).or_storage(id)? else {
                return Ok(None);
            };
            let info = decode_policy(id, name, row.value())?;
            let table = txn.open_table(POLICY_CONTENT).or_storage(id)?;
            Ok(Some(PolicyReader {
                domain: id.clone(),
                info,
                table,
            }))
        })
    }

    /// Lists the installed policy packages (without content).
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn policies(&self) -> Result<Read<Vec<PolicyInfo>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(POLICY).or_storage(id)?;
            let mut out = Vec::new();
            for entry in table.iter().or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                out.push(decode_policy(id, k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Reads the CRL of an issuer (the distinguished name as [`Crl::issuer`] shows it).
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn crl(&self, issuer: &str) -> Result<Read<Option<Crl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(CRL).or_storage(id)?;
            match table.get(issuer).or_storage(id)? {
                Some(v) => decode_crl(id, issuer, v.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Lists the stored CRLs.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn crls(&self) -> Result<Read<Vec<Crl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(CRL).or_storage(id)?;
            let mut out = Vec::new();
            for entry in table.iter().or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                out.push(decode_crl(id, k.value(), v.value())?);
            }
            Ok(out)
        })
    }
}

/// Reads and checks the metadata row of a domain database.
pub(crate) fn read_meta(txn: &ReadTransaction, id: &DomainId) -> Result<DomainMeta, StoreError> {
    let table = txn.open_table(META).or_storage(id)?;
    let row = table
        .get(META_KEY)
        .or_storage(id)?
        .ok_or_else(|| StoreError::Corrupt {
            domain: id.clone(),
            what: "metadata row is missing".into(),
        })?;
    DomainMeta::decode(id, row.value())
}
