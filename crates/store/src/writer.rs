//! The writer of one domain: a dedicated thread that owns the domain's write side and batches
//! concurrent requests into one durable redb commit (group commit).
//!
//! Each request is checked and turned into its own record (own lsn) inside the shared write
//! transaction; a request refused by its checks changes nothing and the others go on. A
//! storage error aborts the whole transaction and every request of the batch gets it: nobody
//! is answered before the commit (and its fsync) has returned.
//!
//! Recovery from storage errors: redb latches any I/O failure (every later operation on that
//! `Database` fails) until the database is dropped and reopened. So after a failed commit the
//! writer drops every handle of the database (its own and the one readers share), reopens the
//! file (redb repairs it if needed) and takes the metadata — position, epoch, role — from disk,
//! never from what the failed batch meant to commit: a commit whose final fsync failed may be
//! durable nonetheless, and then the position read back includes it. When the reopen fails
//! (disk still full, a reader still holding the old handle), requests fail with a typed error
//! and the reopen is tried again at the next request and every second.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable};
use tokio::sync::{oneshot, watch};

use super::apply::apply_ops;
use super::domain::SharedDb;
use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::tables::{Tables, COLLISIONS, META_KEY};
use domsync_proto::codec::{chain_next, decode_record, encode_record, CodecError};
use domsync_proto::model::{
    Crl, DomainId, Epoch, HistoryEntry, Lsn, NodeId, Op, Position, Record, Role,
};

/// What a successful request reports.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub position: Position,
    pub log_start: Lsn,
}

pub(crate) type Outcome = Result<Committed, StoreError>;

/// Where the answer to a request goes: a blocked thread or an awaiting task.
pub(crate) enum Reply {
    Blocking(mpsc::SyncSender<Outcome>),
    Async(oneshot::Sender<Outcome>),
}

impl Reply {
    fn send(self, outcome: Outcome) {
        // A requester that gave up waiting is not an error of the writer.
        match self {
            Reply::Blocking(tx) => drop(tx.send(outcome)),
            Reply::Async(tx) => drop(tx.send(outcome)),
        }
    }
}

/// A request to the writer.
pub(crate) enum Work {
    /// A new transaction on the active.
    Write(Vec<Op>),
    /// A record shipped from the active, applied on a standby.
    Apply(Vec<u8>),
    /// Records applied in order in the same transaction, up to the first refused.
    /// Records shipped by `from` (when known), applied in order.
    ApplyBatch(Option<(NodeId, Epoch)>, Vec<Vec<u8>>),
    /// Drop log records below this lsn.
    Truncate(Lsn),
    /// Switch in a database built aside by a resync. Always committed alone.
    Install(Box<Install>),
    /// Become active in a new epoch above every epoch seen (manual promotion), or in the given
    /// epoch (handed over by a switchover; refused unless above every epoch seen).
    Promote(Option<Epoch>),
    /// Become standby: a higher epoch exists elsewhere.
    Demote(Epoch),
    /// Remove a record from the collision archive.
    Discard(u64),
    /// A reader met a storage error: reopen the database if redb latched a failure (a failed
    /// read latches it too). Always handled alone.
    Reopen,
}

/// A finished, durable database built aside, ready to replace the replica's file.
pub(crate) struct Install {
    pub db: Database,
    pub tmp: PathBuf,
    pub meta: DomainMeta,
    /// The highest epoch the active that sent the snapshot knew.
    pub source: Epoch,
}

pub(crate) struct Request {
    pub work: Work,
    pub reply: Reply,
}

/// Upper bounds of the commit latency histogram, in microseconds.
pub const COMMIT_BUCKETS_MICROS: [u64; 10] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// Counters of the writer, readable from any thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub commits: AtomicU64,
    pub records: AtomicU64,
    /// Durable commit latency: counts per bucket of [`COMMIT_BUCKETS_MICROS`] (and one more
    /// for slower), and the sum in microseconds.
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS_MICROS.len() + 1],
    pub commit_micros: AtomicU64,
    /// Highest epoch this node has seen for the domain from elsewhere: once above the
    /// replica's own epoch, no write is accepted or acknowledged any more (fencing).
    pub fence: std::sync::Mutex<Option<Epoch>>,
    /// A [`Work::Reopen`] is queued (readers ask once, not once each).
    pub reopen_requested: std::sync::atomic::AtomicBool,
}

/// Batch limits of a writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
}

pub(crate) struct Writer {
    pub domain: DomainId,
    pub node: NodeId,
    /// `None` after a storage error until the database is reopened.
    pub db: Option<Arc<Database>>,
    /// The handle readers use; swapped when a resync is installed, emptied while reopening.
    pub shared: SharedDb,
    /// Reopens the database after a storage error.
    pub opener: super::Opener,
    /// The replica's database file.
    pub path: PathBuf,
    /// A request taken from the queue that must be handled in a batch of its own.
    pub pending: Option<Request>,
    pub meta: DomainMeta,
    pub positions: watch::Sender<Position>,
    pub counters: Arc<Counters>,
    pub limits: BatchLimits,
}

fn work_bytes(w: &Work) -> usize {
    match w {
        Work::Write(ops) => ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                Op::InstallPolicy { content, .. } => content.len(),
                Op::PutCrl(crl) => crl.der.len(),
                Op::RemovePolicy { .. } | Op::RemoveCrl { .. } => 0,
            })
            .sum(),
        Work::Apply(bytes) => bytes.len(),
        Work::ApplyBatch(_, records) => records.iter().map(Vec::len).sum(),
        Work::Truncate(_)
        | Work::Install(_)
        | Work::Promote(_)
        | Work::Demote(_)
        | Work::Discard(_)
        | Work::Reopen => 0,
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Writer {
    /// Serves requests until every sender is gone.
    pub fn run(mut self, rx: &mpsc::Receiver<Request>) {
        while self.step(rx) {}
    }

    /// Takes one batch: blocks for a first request, then takes whatever is already queued (up
    /// to the limits), commits once and answers every request. Returns false once the channel
    /// is closed.
    pub fn step(&mut self, rx: &mpsc::Receiver<Request>) -> bool {
        let first = match self.pending.take() {
            Some(req) => req,
            None if self.db.is_none() => match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(req) => req,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Readers wait on the reopen too: retry it without waiting for a write.
                    if let Err(e) = self.reopen() {
                        tracing::debug!(domain = %self.domain, error = %e, "database not reopened yet");
                    }
                    return true;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return false,
            },
            None => match rx.recv() {
                Ok(req) => req,
                Err(_) => return false,
            },
        };
        let first = match first.work {
            Work::Install(install) => {
                let outcome = self.install(*install);
                first.reply.send(outcome);
                return true;
            }
            Work::Reopen => {
                self.counters
                    .reopen_requested
                    .store(false, Ordering::SeqCst);
                let outcome = self.probe().and_then(|()| Self::committed(&self.meta));
                first.reply.send(outcome);
                return true;
            }
            work => Request {
                work,
                reply: first.reply,
            },
        };
        let mut bytes = work_bytes(&first.work);
        let mut batch = vec![first];
        while batch.len() < self.limits.max_requests && bytes < self.limits.max_bytes {
            match rx.try_recv() {
                Ok(req) if matches!(req.work, Work::Install(_) | Work::Reopen) => {
                    self.pending = Some(req);
                    break;
                }
                Ok(req) => {
                    bytes += work_bytes(&req.work);
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let (works, replies): (Vec<Work>, Vec<Reply>) =
            batch.into_iter().map(|r| (r.work, r.reply)).unzip();
        match self.commit(works) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.send(outcome);
                }
            }
            Err(e) => {
                let e = e.at(&self.path);
                tracing::error!(domain = %self.domain, error = %e, "commit failed; nothing of the batch acknowledged");
                if e.is_storage_fault() && self.db.is_some() {
                    // redb latched the failure: start over from a fresh handle and from what
                    // the disk holds.
                    self.close_db();
                    match self.reopen() {
                        Ok(()) => {
                            tracing::info!(domain = %self.domain, position = %self.meta.position, "database reopened after a storage error")
                        }
                        Err(r) => {
                            tracing::warn!(domain = %self.domain, error = %r, "database not reopened yet; retrying at the next request")
                        }
                    }
                }
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
            }
        }
        true
    }

    /// Reopens the database if it is closed or redb latched an I/O failure.
    fn probe(&mut self) -> Result<(), StoreError> {
        let latched = match &self.db {
            None => true,
            Some(db) => db.begin_write().is_err(),
        };
        if latched {
            tracing::warn!(domain = %self.domain, "a reader met a storage error: reopening the database");
            self.reopen()?;
        }
        Ok(())
    }

    /// Drops every handle of the database: the writer's and the one readers share.
    fn close_db(&mut self) {
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = None;
        self.db = None;
    }

    /// The open database, reopening it first if a storage error closed it.
    fn database(&mut self) -> Result<Arc<Database>, StoreError> {
        if self.db.is_none() {
            self.reopen()?;
        }
        self.db.clone().ok_or_else(|| StoreError::Reopening {
            domain: self.domain.clone(),
            path: self.path.clone(),
            detail: "the database is closed".into(),
        })
    }

    /// Reopens the database file and takes the metadata from it. Leaves the database closed
    /// on failure.
    pub(crate) fn reopen(&mut self) -> Result<(), StoreError> {
        self.close_db();
        let reopening = |detail: String| StoreError::Reopening {
            domain: self.domain.clone(),
            path: self.path.clone(),
            detail,
        };
        let db = match self.opener.open(&self.path) {
            Ok(db) => Arc::new(db),
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(reopening(
                    "the previous handle is still in use by a reader".into(),
                ))
            }
            Err(e) => {
                return Err(match StoreError::storage(&self.domain)(e.into()) {
                    full @ StoreError::DiskFull { .. } => full.at(&self.path),
                    other => reopening(other.to_string()),
                })
            }
        };
        let meta = db
            .begin_read()
            .or_storage(&self.domain)
            .and_then(|txn| super::domain::read_meta(&txn, &self.domain))
            .map_err(|e| match e {
                full @ StoreError::DiskFull { .. } => full.at(&self.path),
                other => reopening(other.to_string()),
            })?;
        if meta.position != self.meta.position {
            tracing::warn!(domain = %self.domain, before = %self.meta.position, on_disk = %meta.position, "position read back after a storage error differs: a commit reported failed is durable");
            self.positions.send_replace(meta.position.clone());
        }
        self.meta = meta;
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&db));
        self.db = Some(db);
        Ok(())
    }

    /// One durable transaction for the whole batch. The outer error aborts everything; the
    /// inner results are per request.
    fn commit(&mut self, works: Vec<Work>) -> Result<Vec<Outcome>, StoreError> {
        let domain = self.domain.clone();
        let started = std::time::Instant::now();
        let db = self.database()?;
        let mut txn = db.begin_write().or_storage(&domain)?;
        txn.set_durability(Durability::Immediate)
            .or_storage(&domain)?;
        let mut meta = self.meta.clone();
        let mut outcomes = Vec::with_capacity(works.len());
        let mut records = 0u64;
        let mut archive_changed = false;
        {
            let mut t = Tables::open(&txn, &domain)?;
            for work in works {
                let outcome = match work {
                    Work::Write(ops) => self.write(&mut t, &mut meta, ops)?,
                    Work::Apply(bytes) => self.apply(&mut t, &mut meta, &bytes, None)?,
                    Work::ApplyBatch(from, records) => {
                        let mut outcome = Self::committed(&meta);
                        for bytes in &records {
                            let from = from.as_ref().map(|(n, e)| (n, e));
                            outcome = self.apply(&mut t, &mut meta, bytes, from)?;
                            if outcome.is_err() {
                                break;
                            }
                        }
                        outcome
                    }
                    Work::Truncate(below) => self.truncate(&mut t, &mut meta, below)?,
                    // Never batched: `step` handles them alone.
                    Work::Install(_) | Work::Reopen => Err(StoreError::Closed {
                        domain: domain.clone(),
                    }),
                    Work::Promote(epoch) => self.promote(&mut meta, epoch),
                    Work::Discard(id) => {
                        let mut archive = txn.open_table(COLLISIONS).or_storage(&domain)?;
                        archive_changed |= archive.remove(id).or_storage(&domain)?.is_some();
                        Self::committed(&meta)
                    }
                    Work::Demote(epoch) => {
                        if epoch > meta.epoch {
                            meta.epoch = epoch;
                        }
                        meta.role = Role::Standby;
                        Self::committed(&meta)
                    }
                };
                outcomes.push(outcome);
            }
            records += meta.position.lsn.0 - self.meta.position.lsn.0;
            if meta != self.meta {
                let row = meta.encode()?;
                t.meta
                    .insert(META_KEY, row.as_slice())
                    .or_storage(&domain)?;
            }
        }
        if meta == self.meta && !archive_changed {
            txn.abort().or_storage(&domain)?;
            return Ok(outcomes);
        }
        if meta.role == Role::Active
            && meta.position.lsn > self.meta.position.lsn
            && self.fenced(&meta)
        {
            // A higher epoch was seen while the batch was built: none of it is acknowledged.
            txn.abort().or_storage(&domain)?;
            let active = self
                .fence_epoch()
                .map(|e| e.node)
                .filter(|n| *n != self.node);
            return Err(StoreError::NotActive { domain, active });
        }
        txn.commit().or_storage(&domain)?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let bucket = COMMIT_BUCKETS_MICROS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(COMMIT_BUCKETS_MICROS.len());
        self.counters.commit_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.counters
            .commit_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(records, Ordering::Relaxed);
        if meta.position != self.meta.position {
            self.positions.send_replace(meta.position.clone());
        }
        self.meta = meta;
        Ok(outcomes)
    }

    /// Renames the finished database over the replica's file, makes the rename durable and
    /// serves everything from it from now on.
    fn install(&mut self, install: Install) -> Outcome {
        let Install {
            db,
            tmp,
            meta,
            source,
        } = install;
        let fence = self.fence_epoch();
        let recorded = fence.into_iter().chain([self.meta.epoch.clone()]).max();
        let refusal = if self.meta.role != Role::Standby {
            Some(StoreError::NotStandby {
                domain: self.domain.clone(),
            })
        } else {
            // A snapshot from an active that does not know the newest epoch recorded here
            // comes from a fenced active: installing it would forget the fence.
            recorded
                .filter(|r| *r > source)
                .map(|epoch| StoreError::Fenced {
                    domain: self.domain.clone(),
                    from: source.node.clone(),
                    epoch,
                })
        };
        if let Some(refusal) = refusal {
            drop(db);
            if let Err(e) = std::fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a refused snapshot");
            }
            return Err(refusal);
        }
        std::fs::rename(&tmp, &self.path)
            .map_err(StoreError::io("rename into place", &self.path))?;
        if let Some(dir) = self.path.parent() {
            super::fsync_dir(dir)?;
        }
        let db = Arc::new(db);
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&db));
        self.db = Some(db);
        self.meta = meta;
        self.positions.send_replace(self.meta.position.clone());
        Self::committed(&self.meta)
    }

    fn committed(meta: &DomainMeta) -> Outcome {
        Ok(Committed {
            position: meta.position.clone(),
            log_start: meta.log_start,
        })
    }

    fn refuse(&self, reason: impl Into<String>) -> Outcome {
        Err(StoreError::InvalidWrite {
            domain: self.domain.clone(),
            reason: reason.into(),
        })
    }

    /// The highest epoch `Domain::demote` was told of (its durable record may still be
    /// queued behind this batch).
    fn fence_epoch(&self) -> Option<Epoch> {
        self.counters
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True when a higher epoch than the replica's own was seen for the domain.
    fn fenced(&self, meta: &DomainMeta) -> bool {
        self.counters
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|seen| *seen > meta.epoch)
    }

    /// Makes a standby active in a new epoch above every epoch it has seen; the new epoch and
    /// its history entry are committed before any write can use them.
    fn promote(&self, meta: &mut DomainMeta, given: Option<Epoch>) -> Outcome {
        if meta.role != Role::Standby {
            return Err(StoreError::NotStandby {
                domain: self.domain.clone(),
            });
        }
        if meta.uid.is_none() {
            return Err(StoreError::InvalidWrite {
                domain: self.domain.clone(),
                reason: "this replica never synchronized and holds nothing; it cannot be promoted (resync it from the active first)".into(),
            });
        }
        let seen = self.fence_epoch().map_or(0, |e| e.term);
        let epoch = match given {
            // Above everything seen, or exactly the candidate epoch this node recorded for
            // itself before fencing the other replicas (a promotion's fencing round).
            Some(e)
                if e.node == self.node
                    && (e > meta.epoch && e.term > seen || e == meta.epoch && e.term >= seen) =>
            {
                e
            }
            Some(e) => {
                return Err(StoreError::InvalidWrite {
                    domain: self.domain.clone(),
                    reason: format!(
                        "epoch {e} handed over is not a new epoch of this node above {}",
                        meta.epoch
                    ),
                })
            }
            None => match meta.epoch.term.max(seen).checked_add(1) {
                Some(term) => Epoch {
                    term,
                    node: self.node.clone(),
                },
                None => {
                    return Err(StoreError::InvalidWrite {
                        domain: self.domain.clone(),
                        reason: format!("the epoch term cannot be raised above {}", meta.epoch),
                    })
                }
            },
        };
        meta.history.push(HistoryEntry {
            epoch: epoch.clone(),
            first_lsn: meta.position.lsn.next(),
        });
        meta.epoch = epoch;
        meta.role = Role::Active;
        Self::committed(meta)
    }

    /// Checks a write without changing anything.
    fn check_write(
        &self,
        t: &Tables<'_>,
        meta: &DomainMeta,
        ops: &[Op],
    ) -> Result<Option<StoreError>, StoreError> {
        if meta.role != Role::Active || self.fenced(meta) {
            // The newest active known: the node of a fence above our own epoch, if any.
            let active = match self.fence_epoch() {
                Some(f) if f > meta.epoch && f.node != self.node => Some(f.node),
                _ => meta.known_active(&self.node),
            };
            return Ok(Some(StoreError::NotActive {
                domain: self.domain.clone(),
                active,
            }));
        }
        if ops.is_empty() {
            return Ok(Some(StoreError::InvalidWrite {
                domain: self.domain.clone(),
                reason: "a write needs at least one operation".into(),
            }));
        }
        let mut crl_seen: HashMap<&str, &Crl> = HashMap::new();
        for op in ops {
            if let Err(reason) = op.check() {
                return Ok(Some(StoreError::InvalidWrite {
                    domain: self.domain.clone(),
                    reason,
                }));
            }
            if let Op::PutCrl(crl) = op {
                let held = match crl_seen.get(crl.issuer.as_str()) {
                    Some(earlier) => Some((*earlier).clone()),
                    None => t.crl_of(&self.domain, &crl.issuer)?,
                };
                if let Some(held) = held {
                    if crl.number < held.number {
                        return Ok(Some(StoreError::CrlOutdated {
                            domain: self.domain.clone(),
                            issuer: crl.issuer.clone(),
                            stored: held.number,
                            offered: crl.number.clone(),
                        }));
                    }
                    if crl.number == held.number && crl.der != held.der {
                        return Ok(Some(StoreError::CrlConflict {
                            domain: self.domain.clone(),
                            issuer: crl.issuer.clone(),
                            number: crl.number.clone(),
                        }));
                    }
                }
                crl_seen.insert(crl.issuer.as_str(), crl);
            }
        }
        Ok(None)
    }

    fn write(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        ops: Vec<Op>,
    ) -> Result<Outcome, StoreError> {
        if let Some(refusal) = self.check_write(t, meta, &ops)? {
            return Ok(Err(refusal));
        }
        let lsn = meta.position.lsn.next();
        let record = Record {
            epoch: meta.epoch.clone(),
            lsn,
            time: now_micros(),
            prev_chain: meta.position.chain,
            ops,
        };
        let bytes = match encode_record(&record) {
            Ok(b) => b,
            Err(e) => {
                return Ok(self.refuse(format!("the transaction does not fit in one record: {e}")))
            }
        };
        self.append(t, meta, &record, &bytes)?;
        Ok(Self::committed(meta))
    }

    /// Applies one shipped record. With `from`, the node that shipped it, the record is
    /// refused unless `from` is the node of the highest epoch recorded here (counting the
    /// record's own): once a standby recorded a newer epoch (fencing), nothing of a lower
    /// active is applied, even a batch already on its way (invariant 1).
    fn apply(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        bytes: &[u8],
        from: Option<(&NodeId, &Epoch)>,
    ) -> Result<Outcome, StoreError> {
        let domain = self.domain.clone();
        let expected = meta.position.lsn.next();
        if meta.role != Role::Standby {
            return Ok(Err(StoreError::NotStandby { domain }));
        }
        let record = match decode_record(bytes) {
            Ok(r) => r,
            Err(source) => {
                tracing::warn!(domain = %domain, lsn = %expected, error = %source, "corrupt record refused");
                return Ok(Err(StoreError::CorruptRecord {
                    domain,
                    lsn: expected,
                    source,
                }));
            }
        };
        if record.lsn != expected {
            return Ok(Err(StoreError::OutOfOrder {
                domain,
                expected,
                got: record.lsn,
            }));
        }
        if record.prev_chain != meta.position.chain {
            return Ok(Err(StoreError::ChainMismatch {
                domain,
                lsn: record.lsn,
                expected: meta.position.chain,
                found: record.prev_chain,
            }));
        }
        if let Some((from, since)) = from {
            // Nothing from an active below an epoch learned from a peer since the stream was
            // accepted (`since`: the epoch its `Follow` carried): once such an epoch is
            // recorded (`Domain::demote`), only its node is listened to, and a batch of the
            // old active still on its way is refused. Records of older epochs relayed by the
            // active that accepted the stream are taken: it accepted a `Follow` carrying
            // `since`, so its own epoch is not below it.
            if let Some(fence) = self.fence_epoch() {
                if fence > *since && fence.node != *from {
                    return Ok(Err(StoreError::Fenced {
                        domain,
                        from: from.clone(),
                        epoch: fence,
                    }));
                }
            }
        }
        if meta.position.lsn > Lsn::ZERO && record.epoch < meta.position.epoch {
            return Ok(Err(StoreError::StaleEpoch {
                domain,
                lsn: record.lsn,
                record: record.epoch,
                position: meta.position.epoch.clone(),
            }));
        }
        if let Some(bad) = record.ops.iter().find_map(|op| op.check().err()) {
            return Ok(Err(StoreError::CorruptRecord {
                domain,
                lsn: record.lsn,
                source: CodecError::Payload { reason: bad },
            }));
        }
        self.append(t, meta, &record, bytes)?;
        Ok(Self::committed(meta))
    }

    /// Applies a checked record and appends it to the log, moving the position.
    fn append(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        record: &Record,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        apply_ops(&self.domain, t, record, &mut meta.digest)?;
        t.log.insert(record.lsn.0, bytes).or_storage(&self.domain)?;
        meta.log_bytes += bytes.len() as u64;
        meta.position = Position {
            epoch: record.epoch.clone(),
            lsn: record.lsn,
            chain: chain_next(record.prev_chain, bytes),
        };
        meta.note_epoch(&record.epoch, record.lsn);
        Ok(())
    }

    fn truncate(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        below: Lsn,
    ) -> Result<Outcome, StoreError> {
        let end = meta.position.lsn.next();
        let below = below.min(end);
        if below <= meta.log_start {
            return Ok(Self::committed(meta));
        }
        let base_chain = if below == end {
            meta.position.chain
        } else {
            let Some(bytes) = t.log.get(below.0).or_storage(&self.domain)? else {
                return Ok(Err(StoreError::Corrupt {
                    domain: self.domain.clone(),
                    what: format!("log record {below} is missing"),
                }));
            };
            match decode_record(bytes.value()) {
                Ok(r) => r.prev_chain,
                Err(source) => {
                    return Ok(Err(StoreError::CorruptRecord {
                        domain: self.domain.clone(),
                        lsn: below,
                        source,
                    }))
                }
            }
        };
        let mut removed = 0u64;
        for entry in t
            .log
            .range(meta.log_start.0..below.0)
            .or_storage(&self.domain)?
        {
            let (_, v) = entry.or_storage(&self.domain)?;
            removed += v.value().len() as u64;
        }
        t.log
            .retain_in(meta.log_start.0..below.0, |_, _| false)
            .or_storage(&self.domain)?;
        meta.log_bytes = meta.log_bytes.saturating_sub(removed);
        meta.log_start = below;
        meta.log_base_chain = base_chain;
        Ok(Self::committed(meta))
    }
}
