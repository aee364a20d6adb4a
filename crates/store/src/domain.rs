//! [`Domain`]: the handle of one domain's replica on this node — writes, applies and reads.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};

use redb::{Database, ReadTransaction, ReadableDatabase};
use tokio::sync::{oneshot, watch};

use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::pool::{Ended, Pool, Sender, Slot};
use super::read::Read;
use super::tables::{META, META_KEY};
use super::writer::{Committed, Counters, Outcome, Reply, Request, Work};
use domsync_proto::app::Condition;
use domsync_proto::model::StateDigest;
use domsync_proto::model::{
    CrlNumber, DistinguishedName, DomainId, DomainUid, Epoch, HeldCrl, HistoryEntry, IssuerCert,
    Lsn, Op, Position, Role,
};

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

/// The segment log of a replica, shared by its readers and its writer; replaced when a
/// resync is switched in or the log is reopened after a storage error.
pub(crate) type SharedLog = Arc<RwLock<Arc<super::segments::SegmentLog>>>;

pub(crate) struct Inner {
    pub id: DomainId,
    pub path: PathBuf,
    /// The current database; replaced when a resync is switched in.
    pub db: SharedDb,
    /// The current segment log.
    pub log: SharedLog,
    pub opener: super::Opener,
    pub tx: Mutex<Option<Sender>>,
    pub positions: watch::Receiver<Position>,
    pub counters: Arc<Counters>,
    /// The domain's writer in the store's writer pool.
    pub slot: Arc<Slot>,
    /// Keeps the pool's threads running while the domain is open.
    pub pool: Arc<Pool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing ends the writer once it has answered what is queued; its database is
        // dropped before this returns, so the file can be opened again at once.
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if self.pool.close(&self.slot) == Ended::Panicked {
            tracing::error!(domain = %self.id, "the writer of this domain had panicked (see the panic above): it was closed without answering its queue");
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

    pub(crate) fn sender(&self) -> Result<Sender, StoreError> {
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

    pub(crate) fn submit(&self, work: Work) -> Result<Committed, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.sender()?
            .send(Request {
                work,
                reply: Reply::Blocking(tx),
            })
            .map_err(|_| self.closed())?;
        rx.recv().map_err(|_| self.closed())?
    }

    pub(crate) async fn submit_async(&self, work: Work) -> Result<Committed, StoreError> {
        let sender = self.sender()?;
        let rx = self.enqueue(&sender, work).await?;
        rx.await.map_err(|_| self.closed())?
    }

    /// Queues a request without blocking the executor; the answer comes on the receiver.
    async fn enqueue(
        &self,
        sender: &Sender,
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

    /// Commits `ops` as one transaction, as [`Domain::write_async`], only when every condition
    /// holds in that transaction (so against every write before it).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] naming the first failed condition (nothing is committed);
    /// otherwise as [`Domain::write`].
    pub async fn write_if_async(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
    ) -> Result<Position, StoreError> {
        self.submit_async(Work::WriteIf(conditions, ops))
            .await
            .map(|c| c.position)
    }

    /// [`Domain::write_if_async`] for blocking callers.
    ///
    /// # Errors
    /// As [`Domain::write_if_async`].
    pub fn write_if(
        &self,
        conditions: Vec<Condition>,
        ops: Vec<Op>,
    ) -> Result<Position, StoreError> {
        self.submit(Work::WriteIf(conditions, ops))
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

    /// Parses a DER CRL and stores it: a base CRL replaces the older base of its issuer, a
    /// delta CRL is kept beside the base it applies to. Refused (one line naming the check)
    /// when malformed, without a CRL number, past its nextUpdate (unless `allow_stale`), not
    /// verified by a held issuer certificate of its issuer name (see [`Domain::add_issuer`]
    /// and [`Domain::set_accept_unverified_crls`]), not above the held one, or a delta
    /// whose base is not held.
    ///
    /// # Errors
    /// [`StoreError::Crl`], [`StoreError::CrlOutdated`], [`StoreError::CrlConflict`],
    /// [`StoreError::CrlDeltaWithoutBase`], otherwise as [`Domain::write`].
    pub fn put_crl(&self, der: &[u8], allow_stale: bool) -> Result<Position, StoreError> {
        let crl = HeldCrl::from_der(der).map_err(|source| StoreError::Crl {
            domain: self.inner.id.clone(),
            source,
        })?;
        self.write(vec![Op::PutCrl { crl, allow_stale }])
    }

    /// Removes the held CRL (base or delta) of `issuer` numbered `number`.
    ///
    /// # Errors
    /// [`StoreError::InvalidWrite`] when no such CRL is held, otherwise as [`Domain::write`].
    pub fn remove_crl(
        &self,
        issuer: &DistinguishedName,
        number: &CrlNumber,
    ) -> Result<Position, StoreError> {
        self.write(vec![Op::RemoveCrl {
            issuer: issuer.clone(),
            number: number.clone(),
        }])
    }

    /// Removes a CRL stored by an earlier release (before issuer verification), by the
    /// issuer text `crl list` shows for it.
    ///
    /// # Errors
    /// As [`Domain::write`].
    pub fn remove_legacy_crl(&self, issuer: &str) -> Result<Position, StoreError> {
        self.write(vec![Op::RemoveLegacyCrl {
            issuer: issuer.to_owned(),
        }])
    }

    /// Holds an issuer certificate (DER): CRLs of its subject are then accepted when its key
    /// verifies them.
    ///
    /// # Errors
    /// [`StoreError::Crl`] when it is not a CA certificate, otherwise as [`Domain::write`].
    pub fn add_issuer(&self, der: &[u8]) -> Result<(Position, IssuerCert), StoreError> {
        let cert = IssuerCert::from_der(der).map_err(|source| StoreError::Crl {
            domain: self.inner.id.clone(),
            source,
        })?;
        let pos = self.write(vec![Op::AddIssuer(cert.clone())])?;
        Ok((pos, cert))
    }

    /// Stops holding the issuer certificate `sha256` of `subject`.
    ///
    /// # Errors
    /// [`StoreError::InvalidWrite`] when it is not held, otherwise as [`Domain::write`].
    pub fn remove_issuer(
        &self,
        subject: &DistinguishedName,
        sha256: &[u8; 32],
    ) -> Result<Position, StoreError> {
        self.write(vec![Op::RemoveIssuer {
            subject: subject.clone(),
            sha256: *sha256,
        }])
    }

    /// Whether this domain accepts CRLs of issuers it holds no certificate of (an explicit
    /// per-domain setting of whoever opens the store, off by default; not persisted). A CRL
    /// that a held certificate of its name fails to verify is refused either way.
    pub fn set_accept_unverified_crls(&self, accept: bool) {
        self.inner
            .counters
            .accept_unverified_crls
            .store(accept, std::sync::atomic::Ordering::Relaxed);
    }

    /// The setting of [`Domain::set_accept_unverified_crls`].
    pub fn accepts_unverified_crls(&self) -> bool {
        self.inner
            .counters
            .accept_unverified_crls
            .load(std::sync::atomic::Ordering::Relaxed)
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

    pub(crate) fn begin_read_inner(&self) -> Result<ReadTransaction, StoreError> {
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

    /// Returns the space that deletes and overwrites freed in the domain's database to the
    /// file system: checkpoints, then rewrites the file without its free pages. Returns the
    /// file's size before and after, in bytes. Reads of this domain get a retryable
    /// [`StoreError::Reopening`] while it runs; writes wait for it.
    ///
    /// ```
    /// # use domsync_proto::model::NodeId;
    /// # use domsync_store::{Store, StoreOptions};
    /// # let dir = tempfile::tempdir()?;
    /// # let store = Store::open(dir.path(), StoreOptions::new(NodeId::new("a")?))?;
    /// let domain = store.create_domain(&"t".parse()?)?;
    /// for i in 0..1000 {
    ///     domain.put(format!("k{i}"), vec![0u8; 1000])?;
    /// }
    /// for i in 0..1000 {
    ///     domain.delete(format!("k{i}"))?;
    /// }
    /// let (before, after) = domain.compact()?;
    /// assert!(after < before);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Io`] when readers keep a snapshot open (retry), or a storage error.
    pub fn compact(&self) -> Result<(u64, u64), StoreError> {
        let size = || {
            std::fs::metadata(self.path())
                .map(|m| m.len())
                .map_err(StoreError::io("read the size of", self.path()))
        };
        let before = size()?;
        self.submit(Work::Compact)?;
        Ok((before, size()?))
    }

    /// The segment log as it is now.
    pub(crate) fn log(&self) -> Arc<super::segments::SegmentLog> {
        Arc::clone(
            &self
                .inner
                .log
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(crate) fn meta_in(&self, txn: &ReadTransaction) -> Result<DomainMeta, StoreError> {
        read_meta(txn, &self.inner.id)
    }

    /// Runs `f` in one read transaction and pairs its result with that state's position.
    pub(crate) fn read<T>(
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
