//! The writer of one domain: it owns the domain's write side and batches concurrent requests
//! into one durable redb commit (group commit).
//!
//! Writers have no thread of their own: the store's writer pool (`pool.rs`, a few threads
//! shared by every domain) runs a writer when requests are queued for it, one batch per turn
//! ([`Writer::step`]: a first request, then whatever else is already queued up to the batch
//! limits, one commit), and calls [`Writer::tick`] about every 250 ms while
//! [`Writer::wants_tick`] says so. A writer is run by one pool thread at a time.
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
//! and the reopen is tried again at the next request and at every tick.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError, Durability};
use std::time::Instant;
use tokio::sync::{oneshot, watch};

use super::domain::{SharedDb, SharedLog};
use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::segments::{log_dir, SegmentLog};
use super::tables::{Tables, COLLISIONS, META_KEY};
use domsync_proto::app::Condition;
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Op, Position, Role};

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
    /// A new transaction on the active, written only when its conditions hold.
    WriteIf(Vec<Condition>, Vec<Op>),
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
    /// Rewrite the database without its free space (`domsync compact`). Always handled alone.
    Compact,
}

/// A finished, durable database built aside, ready to replace the replica's file.
pub(crate) struct Install {
    pub db: Database,
    pub tmp: PathBuf,
    pub meta: DomainMeta,
    /// The highest epoch the active that sent the snapshot knew.
    pub source: Epoch,
    /// Id of the new, empty log (in the new database's log row).
    pub log_id: u64,
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
    /// Policy readers open now, each holding a read snapshot (see
    /// [`super::Domain::policy_readers_open`]).
    pub policy_readers: std::sync::atomic::AtomicUsize,
    /// The domain accepts CRLs of issuers it holds no certificate of (its configuration
    /// says so explicitly; off by default).
    pub accept_unverified_crls: std::sync::atomic::AtomicBool,
}

/// Batch limits of a writer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
    /// See [`super::StoreOptions::checkpoint_interval`].
    pub checkpoint_interval: Duration,
    /// See [`super::StoreOptions::checkpoint_bytes`].
    pub checkpoint_bytes: u64,
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
    /// A request taken from the queue ahead of the next batch: it starts that batch, or is
    /// handled alone when it must be (install, reopen).
    pub pending: Option<Request>,
    pub meta: DomainMeta,
    pub positions: watch::Sender<Position>,
    pub counters: Arc<Counters>,
    pub limits: BatchLimits,
    /// The domain's segment log: the durable point of every record.
    pub log: Arc<SegmentLog>,
    /// The log readers use; replaced with `log`.
    pub shared_log: SharedLog,
    /// Position durable in the tables (the last checkpoint).
    pub checkpointed: Lsn,
    /// Log bytes folded into the tables since the checkpoint.
    pub dirty_bytes: u64,
    /// When the first record after the checkpoint was folded in.
    pub dirty_since: Option<Instant>,
    /// Flushes the database ahead of a checkpoint, off this thread (`None`: inline).
    pub flusher: Option<super::flusher::Flusher>,
    /// Where that flush stands.
    pub flush: super::flusher::FlushState,
}

fn work_bytes(w: &Work) -> usize {
    match w {
        Work::Write(ops) | Work::WriteIf(_, ops) => ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
                Op::InstallPolicy { content, .. } => content.len(),
                Op::PutLegacyCrl(crl) => crl.der.len(),
                Op::PutCrl { crl, .. } => crl.der.len(),
                Op::AddIssuer(cert) => cert.der.len(),
                Op::RemovePolicy { .. }
                | Op::RemoveLegacyCrl { .. }
                | Op::RemoveIssuer { .. }
                | Op::RemoveCrl { .. } => 0,
            })
            .sum(),
        Work::Apply(bytes) => bytes.len(),
        Work::ApplyBatch(_, records) => records.iter().map(Vec::len).sum(),
        Work::Truncate(_)
        | Work::Install(_)
        | Work::Promote(_)
        | Work::Demote(_)
        | Work::Discard(_)
        | Work::Reopen
        | Work::Compact => 0,
    }
}

pub(super) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Writer {
    /// Makes what the tables hold durable before the writer goes away (a clean close needs
    /// no replay at the next open).
    pub(crate) fn close(&mut self) {
        if self.dirty_since.is_some() {
            self.checkpoint();
        }
    }

    /// How long until a checkpoint is due: `None` when the tables hold nothing beyond the
    /// last one, zero when it is due now.
    pub(crate) fn checkpoint_wait(&self) -> Option<Duration> {
        let since = self.dirty_since?;
        if self.dirty_bytes >= self.limits.checkpoint_bytes {
            return Some(Duration::ZERO);
        }
        Some(
            self.limits
                .checkpoint_interval
                .saturating_sub(since.elapsed()),
        )
    }

    /// Periodic work, called by the writer pool about every [`super::pool::TICK`] while
    /// [`Writer::wants_tick`] says so, never during a batch: retries the reopen of a database
    /// that a storage error closed (readers wait on it too), makes a due checkpoint.
    pub(crate) fn tick(&mut self) {
        if self.db.is_none() {
            if let Err(e) = self.reopen() {
                tracing::debug!(domain = %self.domain, error = %e, "database not reopened yet");
            }
            return;
        }
        self.checkpoint_when_due();
    }

    /// Whether this writer needs [`Writer::tick`] calls (asked by the pool after each of its
    /// turns): while its database is closed after a storage error, or while the tables hold
    /// records not yet checkpointed.
    pub(crate) fn wants_tick(&self) -> bool {
        self.db.is_none() || self.dirty_since.is_some()
    }

    /// Makes a due checkpoint: first has the flusher write the database's dirty pages off
    /// this thread (batches go on meanwhile), then, once that is done, commits durably here.
    pub(crate) fn checkpoint_when_due(&mut self) {
        use super::flusher::{FLUSHED, FLUSHING, IDLE};
        use std::sync::atomic::Ordering;
        if self.checkpoint_wait() != Some(Duration::ZERO) {
            return;
        }
        match self.flush.load(Ordering::SeqCst) {
            FLUSHING => {}
            FLUSHED => {
                self.flush.store(IDLE, Ordering::SeqCst);
                self.checkpoint();
            }
            _ => {
                let asked = self
                    .flusher
                    .as_ref()
                    .is_some_and(|f| f.request(self.path.clone(), &self.flush));
                if !asked {
                    self.checkpoint();
                }
            }
        }
    }

    /// A durable redb commit of what the tables hold (a checkpoint), in the background of the
    /// writers: nobody waits for it to be answered. A failure is logged; the database is
    /// reopened (the log replayed past the last good checkpoint).
    pub(crate) fn checkpoint(&mut self) {
        let Some(db) = self.db.clone() else { return };
        let started = Instant::now();
        match super::recover::checkpoint(&db, &self.domain, &self.meta) {
            Ok(()) => {
                self.checkpointed = self.meta.position.lsn;
                self.dirty_bytes = 0;
                self.dirty_since = None;
                tracing::trace!(domain = %self.domain, position = %self.meta.position, micros = started.elapsed().as_micros(), "checkpoint");
            }
            Err(e) => {
                let e = e.at(&self.path);
                tracing::error!(domain = %self.domain, error = %e, "checkpoint failed; reopening the database (the log holds every acknowledged record)");
                drop(db);
                self.close_db();
                if let Err(r) = self.reopen() {
                    tracing::warn!(domain = %self.domain, error = %r, "database not reopened yet; retrying");
                }
            }
        }
    }

    /// Takes one batch of what is already queued: a first request (the one set aside, or the
    /// next one queued), then whatever else is queued (up to the limits); commits once and
    /// answers every request. Never waits: with nothing queued it does nothing. Returns false
    /// once every sender is gone and nothing is queued.
    pub fn step(&mut self, rx: &mpsc::Receiver<Request>) -> bool {
        let first = match self.pending.take() {
            Some(req) => req,
            None => match rx.try_recv() {
                Ok(req) => req,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            },
        };
        let first = match first.work {
            Work::Install(install) => {
                let outcome = self.install(*install);
                first.reply.send(outcome);
                return true;
            }
            Work::Compact => {
                let outcome = self.compact().and_then(|()| Self::committed(&self.meta));
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
                Ok(req) if matches!(req.work, Work::Install(_) | Work::Reopen | Work::Compact) => {
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
                self.checkpoint_when_due();
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

    /// Checkpoints, then rewrites the database file without its free pages (redb
    /// `compact`), which needs the only handle: readers get a retryable error meanwhile.
    fn compact(&mut self) -> Result<(), StoreError> {
        self.database()?;
        if self.dirty_since.is_some() {
            self.checkpoint();
        }
        let Some(db) = self.db.take() else {
            return Err(StoreError::Closed {
                domain: self.domain.clone(),
            });
        };
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = None;
        // A reader between taking the handle and opening its transaction holds a clone for
        // a moment: wait for it (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut shared = Some(db);
        let mut owned = None;
        while let Some(d) = shared.take() {
            match Arc::try_unwrap(d) {
                Ok(o) => owned = Some(o),
                Err(d) => {
                    shared = Some(d);
                    if Instant::now() >= deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let (db, result) = match (owned, shared) {
            (Some(mut o), _) => {
                let r = o.compact().map(|_| ()).map_err(|e| StoreError::Io {
                    action: "compact",
                    path: self.path.clone(),
                    detail: format!(
                        "{e} (readers such as gateways fetching a policy hold a snapshot open; retry when they are done)"
                    ),
                });
                (Arc::new(o), r)
            }
            (None, Some(d)) => (
                d,
                Err(StoreError::Io {
                    action: "compact",
                    path: self.path.clone(),
                    detail: "a reader kept the database open for 2 s; retry".into(),
                }),
            ),
            (None, None) => {
                return Err(StoreError::Closed {
                    domain: self.domain.clone(),
                })
            }
        };
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&db));
        self.db = Some(db);
        result
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
        let (meta, log) =
            super::recover::recover(&self.opener.backend, &self.domain, &db, &self.path).map_err(
                |e| match e {
                    full @ StoreError::DiskFull { .. } => full.at(&self.path),
                    other => reopening(other.to_string()),
                },
            )?;
        self.log = Arc::clone(&log);
        *self
            .shared_log
            .write()
            .unwrap_or_else(PoisonError::into_inner) = log;
        self.checkpointed = meta.position.lsn;
        self.dirty_bytes = 0;
        self.dirty_since = None;
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
        if self.log.is_broken() {
            // An append failed: what the log holds past its end is unknown until rescanned.
            self.close_db();
            self.reopen()?;
        }
        let db = self.database()?;
        let mut txn = db.begin_write().or_storage(&domain)?;
        let mut meta = self.meta.clone();
        // Work that changes the metadata without a record (roles, epochs, retention, the
        // archive) is made durable in the tables at once: the log cannot replay it.
        let durable = works.iter().any(|w| {
            !matches!(
                w,
                Work::Write(_) | Work::WriteIf(..) | Work::Apply(_) | Work::ApplyBatch(..)
            )
        });
        let frames;
        let mut outcomes = Vec::with_capacity(works.len());
        let mut records = 0u64;
        let mut archive_changed = false;
        {
            let mut t = Tables::open(&txn, &domain)?;
            for work in works {
                let outcome = match work {
                    Work::Write(ops) => self.write(&mut t, &mut meta, ops)?,
                    Work::WriteIf(conditions, ops) => {
                        self.write_if(&mut t, &mut meta, &conditions, ops)?
                    }
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
                    Work::Install(_) | Work::Reopen | Work::Compact => Err(StoreError::Closed {
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
            frames = std::mem::take(&mut t.frames);
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
        // The durable point: one write and one fdatasync of the batch's records.
        if let Err(e) = self.log.append(self.meta.position.lsn.next(), &frames) {
            txn.abort().or_storage(&domain)?;
            return Err(e);
        }
        let durable = durable || archive_changed;
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability).or_storage(&domain)?;
        txn.commit().or_storage(&domain)?;
        if durable {
            self.checkpointed = meta.position.lsn;
            self.dirty_bytes = 0;
            self.dirty_since = None;
        } else if !frames.is_empty() {
            self.dirty_bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        if let Some(below) =
            (durable && meta.log_start > self.meta.log_start).then_some(meta.log_start)
        {
            // Retention: whole segments below the new (now durable) log start go.
            if let Err(e) = self.log.retain_from(below) {
                tracing::warn!(domain = %self.domain, error = %e, "log segments below the log start not removed yet; they are removed at the next open");
            }
        }
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
            log_id,
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
        // The new database names a new, empty log; the old segments go (a crash before this
        // point leaves them to the next open, which removes segments of another log id).
        let log = Arc::new(SegmentLog::create(
            &self.opener.backend,
            &self.domain,
            &log_dir(&self.path),
            log_id,
            meta.position.lsn.next(),
        )?);
        self.log = Arc::clone(&log);
        *self
            .shared_log
            .write()
            .unwrap_or_else(PoisonError::into_inner) = log;
        self.checkpointed = meta.position.lsn;
        self.dirty_bytes = 0;
        self.dirty_since = None;
        let db = Arc::new(db);
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&db));
        self.db = Some(db);
        self.meta = meta;
        self.positions.send_replace(self.meta.position.clone());
        Self::committed(&self.meta)
    }

    pub(super) fn committed(meta: &DomainMeta) -> Outcome {
        Ok(Committed {
            position: meta.position.clone(),
            log_start: meta.log_start,
        })
    }

    pub(super) fn refuse(&self, reason: impl Into<String>) -> Outcome {
        Err(StoreError::InvalidWrite {
            domain: self.domain.clone(),
            reason: reason.into(),
        })
    }
}
