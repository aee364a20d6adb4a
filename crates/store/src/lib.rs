//! The local ACID store: per domain, a change log of segment files (the durable point) and a
//! redb database of tables (the materialized state), under a state directory.
//!
//! Layout: `<state dir>/domains/<domain>.redb` and `<state dir>/domains/<domain>.log/`. A
//! group commit appends its records to the log with one write and one `fdatasync`, then folds
//! them into the tables by a non-durable redb commit, and only then answers its writers: a
//! write is durable and readable once answered. The tables are checkpointed durably in the
//! background (at most [`StoreOptions::checkpoint_interval`] later); opening replays the log
//! past the last checkpoint and cuts a torn tail. There is no non-durable mode.
//!
//! Writes to a domain are queued to its writer, which batches whatever is queued into one
//! commit (group commit). Writers have no thread of their own: a bounded pool of threads per
//! store ([`StoreOptions::writer_threads`]) runs them one batch per turn, so a node with
//! thousands of domains runs a handful of writer threads, and a busy domain takes turns with
//! the others instead of holding a thread.
//!
//! ```
//! use domsync_proto::model::NodeId;
//! use domsync_store::{Store, StoreOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), StoreOptions::new(NodeId::new("node-a")?))?;
//! let domain = store.create_domain(&"tenant-1".parse()?)?;
//! let pos = domain.put("vpn/psk-rotation", "30d")?;
//! assert_eq!(pos.lsn.0, 1);
//! let read = domain.get(b"vpn/psk-rotation")?;
//! assert_eq!(read.value.as_deref(), Some(&b"30d"[..]));
//! assert_eq!(read.position, pos);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Features
//! - `replica`: what only the node may do with a replica: apply records shipped by the active
//!   ([`Domain::apply`]), promote, fence (demote), truncate the log, resync. Without it an
//!   embedder reads, and writes as the active, but cannot move a role around the guards of
//!   the role protocol.
//! - `testing`: a fault-injecting storage backend (`FaultPlan`) for tests, fuzzing and
//!   torture (implies `replica`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]
// Without `replica`, the writer's apply/promote/fence paths are unreachable by design.
#![cfg_attr(not(feature = "replica"), allow(dead_code, unused_imports))]

mod apply;
mod backend;
mod domain;
mod entries;
mod error;
#[cfg(any(test, feature = "testing"))]
mod faults;
mod flusher;
mod log;
mod meta;
mod pieces;
mod pool;
mod private;
mod read;
mod recover;
#[cfg(feature = "replica")]
mod replica;
mod resync;
mod segments;
mod snapshot;
mod tables;
mod work;
mod writer;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use redb::{Database, DatabaseError};

use backend::Boxed;
use tokio::sync::watch;

pub use backend::{open_file, BackendFactory};
pub use domain::{Domain, DomainStatus, WriterStats};
pub use entries::{KeyChanges, ScanPage};
pub use error::StoreError;
#[cfg(any(test, feature = "testing"))]
pub use faults::{FaultKind, FaultPlan, FaultyBackend};
pub use log::{ArchivedRecord, Fault, InspectedRecord, LogEntry, VerifyReport};
pub use read::{KeyValue, PolicyReader, Read, Trust};
#[cfg(feature = "replica")]
pub use resync::{Resync, ResyncTarget};
pub use snapshot::Snapshot;

use domain::Inner;
use error::StorageResult;
use meta::DomainMeta;
use tables::{Tables, META_KEY};
use writer::{BatchLimits, Counters, Writer};

use domsync_proto::model::{DomainId, DomainUid, NodeId};

/// Settings of a [`Store`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// This node's id: the primary of the domains it creates.
    pub node: NodeId,
    /// redb page cache per domain database, in bytes (default 4 MiB), so that hundreds of
    /// domains fit in memory.
    pub cache_bytes: usize,
    /// Most write requests batched into one commit (default 512). `1` turns group commit off:
    /// one durable transaction per write.
    pub max_batch: usize,
    /// Batch size in payload bytes after which no more requests join a commit (default 16 MiB).
    pub max_batch_bytes: usize,
    /// Requests that may queue for a domain's writer before writers block (default 4096).
    pub queue: usize,
    /// Longest time records stay in the tables without a durable checkpoint (default 1 s):
    /// what the log replays at the next open after a crash. Checkpoints run in the background
    /// of writers; a shorter interval costs more fsyncs of the database.
    pub checkpoint_interval: std::time::Duration,
    /// Log bytes folded into the tables after which a checkpoint is made whatever the time
    /// (default 32 MiB).
    pub checkpoint_bytes: u64,
    /// Threads that run the writers of all the store's domains (default: the number of CPUs,
    /// at least 2 and at most 8; `0` counts as 1). Threads are started as domains are opened,
    /// never more than this however many domains are open; a domain's batches are spread
    /// over them one commit per turn, so a busy domain does not hold back the others.
    pub writer_threads: usize,
    /// Opens the storage under every database of the store (default `None`: plain files).
    /// Tests and fuzzing give a `FaultPlan::factory` (feature `testing`) to inject I/O errors; embedders can
    /// give their own [`BackendFactory`].
    pub backend: Option<Arc<dyn BackendFactory>>,
}

impl StoreOptions {
    /// Defaults for node `node`.
    pub fn new(node: NodeId) -> Self {
        StoreOptions {
            node,
            cache_bytes: 4 * 1024 * 1024,
            max_batch: 512,
            max_batch_bytes: 16 * 1024 * 1024,
            queue: 4096,
            checkpoint_interval: std::time::Duration::from_secs(1),
            checkpoint_bytes: 32 << 20,
            writer_threads: pool::default_size(),
            backend: None,
        }
    }

    pub(crate) fn opener(&self) -> Opener {
        Opener {
            cache_bytes: self.cache_bytes,
            backend: self.backend.clone(),
        }
    }
}

/// Opens domain database files: through the configured [`BackendFactory`], or as plain files.
#[derive(Debug, Clone)]
pub(crate) struct Opener {
    cache_bytes: usize,
    pub(crate) backend: Option<Arc<dyn BackendFactory>>,
}

impl Opener {
    /// Creates (or opens, when it exists) the database at `path`; the file is made 0600
    /// before redb writes anything into it, whatever the umask.
    pub fn create(&self, path: &Path) -> Result<Database, DatabaseError> {
        private::precreate_file(path)?;
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        match &self.backend {
            None => builder.create(path),
            Some(f) => builder.create_with_backend(Boxed(f.backend(path)?)),
        }
    }

    /// Opens the existing database at `path`, repairing it if it was not closed cleanly.
    pub fn open(&self, path: &Path) -> Result<Database, DatabaseError> {
        let mut builder = Database::builder();
        builder.set_cache_size(self.cache_bytes);
        match &self.backend {
            None => builder.open(path),
            Some(f) => {
                if !path.exists() {
                    return Err(std::io::Error::from(std::io::ErrorKind::NotFound).into());
                }
                builder.create_with_backend(Boxed(f.backend(path)?))
            }
        }
    }
}

/// The domains of this node, one database file each.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    domains_dir: PathBuf,
    options: StoreOptions,
    open: Mutex<BTreeMap<DomainId, Domain>>,
    /// Runs the writers of every domain of the store.
    pool: Arc<pool::Pool>,
    /// Flushes databases ahead of their checkpoints.
    flusher: Option<flusher::Flusher>,
}

/// Flushes a directory's entries to disk, so a created or renamed file survives a power cut.
///
/// # Errors
/// [`StoreError::Io`].
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

/// Makes the state directory `dir`, its `domains` directory and the files in it owner-only
/// (0700 and 0600) where they are not, with a warning naming each: databases hold every
/// tenant's configuration, and a directory made under a permissive umask (or by an older
/// version) would let every local user read them.
fn owner_only(dir: &Path, domains_dir: &Path) -> Result<(), StoreError> {
    let mut paths = vec![dir.to_path_buf(), domains_dir.to_path_buf()];
    let entries = fs::read_dir(domains_dir).map_err(StoreError::io("read", domains_dir))?;
    for entry in entries {
        paths.push(entry.map_err(StoreError::io("read", domains_dir))?.path());
    }
    for path in paths {
        if let Some(was) =
            private::tighten(&path).map_err(StoreError::io("restrict to its owner", &path))?
        {
            tracing::warn!(path = %path.display(), "{} was mode {was:o}, open to other local users: tightened to owner-only", path.display());
        }
    }
    Ok(())
}

/// Removes databases left half-built by a crash (creation or resync): the previous state of
/// their domain, if any, is the one in place.
fn remove_half_built(domains_dir: &Path) -> Result<(), StoreError> {
    let entries = fs::read_dir(domains_dir).map_err(StoreError::io("read", domains_dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("read", domains_dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && (name.ends_with(".resync.redb") || name.ends_with(".redb.tmp"))
        {
            let path = entry.path();
            tracing::warn!(path = %path.display(), "removing a database left half-built by a crash");
            fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating when missing) the state directory `dir`. Domains are opened on first use.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let domains_dir = dir.join("domains");
        if !domains_dir.is_dir() {
            private::create_dir_all(&domains_dir)
                .map_err(StoreError::io("create", &domains_dir))?;
            fsync_dir(&dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)?;
            }
        }
        owner_only(&dir, &domains_dir)?;
        remove_half_built(&domains_dir)?;
        Ok(Store {
            dir,
            domains_dir,
            pool: Arc::new(pool::Pool::new(options.writer_threads)),
            flusher: match flusher::Flusher::start() {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "no background flusher thread: checkpoints flush on the writers' threads");
                    None
                }
            },
            options,
            open: Mutex::new(BTreeMap::new()),
        })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.options.node
    }

    fn path_of(&self, id: &DomainId) -> PathBuf {
        self.domains_dir.join(format!("{id}.redb"))
    }

    /// The domains that have a database on this node, in name order.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be read.
    pub fn domain_ids(&self) -> Result<Vec<DomainId>, StoreError> {
        let mut ids = Vec::new();
        let entries =
            fs::read_dir(&self.domains_dir).map_err(StoreError::io("read", &self.domains_dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("read", &self.domains_dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".redb")) else {
                continue;
            };
            // Hidden files are databases still being built; a foreign name is ignored.
            if let Ok(id) = DomainId::new(stem) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Creates a new domain with this node as its primary: active in epoch `(1, node)` with a
    /// fresh domain uid. The database is built under a temporary name and renamed into place,
    /// so a crash never leaves a half-created domain.
    ///
    /// # Errors
    /// [`StoreError::DomainExists`], [`StoreError::Io`] or [`StoreError::Storage`].
    pub fn create_domain(&self, id: &DomainId) -> Result<Domain, StoreError> {
        let uid = DomainUid::random().map_err(|e| StoreError::Io {
            action: "draw a random uid for",
            path: self.path_of(id),
            detail: e.to_string(),
        })?;
        self.create(
            id,
            DomainMeta::new_active(id.clone(), self.options.node.clone(), uid),
        )
    }

    /// Creates an empty standby replica of a domain whose primary is elsewhere. It never
    /// synchronized (`uid` unknown) and takes records only through [`Domain::apply`].
    ///
    /// # Errors
    /// As [`Store::create_domain`].
    pub fn join_domain(&self, id: &DomainId) -> Result<Domain, StoreError> {
        self.create(
            id,
            DomainMeta::new_standby(id.clone(), self.options.node.clone()),
        )
    }

    fn create(&self, id: &DomainId, meta: DomainMeta) -> Result<Domain, StoreError> {
        let tmp = self.domains_dir.join(format!(".{id}.redb.tmp"));
        self.create_at(id, meta, &tmp).map_err(|e| e.at(&tmp))
    }

    fn create_at(&self, id: &DomainId, meta: DomainMeta, tmp: &Path) -> Result<Domain, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.path_of(id);
        if open.contains_key(id) || path.exists() {
            return Err(StoreError::DomainExists { domain: id.clone() });
        }
        if tmp.exists() {
            fs::remove_file(tmp).map_err(StoreError::io("remove", tmp))?;
        }
        {
            let db = self.options.opener().create(tmp).or_storage(id)?;
            let txn = db.begin_write().or_storage(id)?;
            {
                let mut tables = Tables::open(&txn, id)?;
                let row = meta.encode()?;
                tables
                    .meta
                    .insert(META_KEY, row.as_slice())
                    .or_storage(id)?;
            }
            txn.commit().or_storage(id)?;
        }
        fs::rename(tmp, &path).map_err(StoreError::io("rename into place", &path))?;
        fsync_dir(&self.domains_dir)?;
        tracing::info!(domain = %id, role = %meta.role, "domain created");
        let domain = self.start(id, path)?;
        open.insert(id.clone(), domain.clone());
        Ok(domain)
    }

    /// Opens an existing domain (once per process; later calls share the handle).
    ///
    /// # Errors
    /// [`StoreError::UnknownDomain`], [`StoreError::Locked`] when another process holds it,
    /// [`StoreError::Corrupt`] or [`StoreError::Storage`].
    pub fn domain(&self, id: &DomainId) -> Result<Domain, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = open.get(id) {
            return Ok(d.clone());
        }
        let path = self.path_of(id);
        if !path.exists() {
            return Err(StoreError::UnknownDomain {
                domain: id.clone(),
                dir: self.dir.clone(),
            });
        }
        let domain = self.start(id, path)?;
        open.insert(id.clone(), domain.clone());
        Ok(domain)
    }

    /// Opens every domain of this node. A domain that fails to open is returned as an error
    /// beside the others, so one broken domain never hides the rest.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the state directory cannot be listed.
    pub fn open_all(&self) -> Result<Vec<Result<Domain, StoreError>>, StoreError> {
        Ok(self
            .domain_ids()?
            .iter()
            .map(|id| self.domain(id))
            .collect())
    }

    /// Opens the database at `path` and hands the domain's writer to the writer pool.
    fn start(&self, id: &DomainId, path: PathBuf) -> Result<Domain, StoreError> {
        let opener = self.options.opener();
        let db = opener.open(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                domain: id.clone(),
                path: path.clone(),
            },
            other => StoreError::storage(id)(other.into()).at(&path),
        })?;
        tables::ensure_tables(&db, id).map_err(|e| e.at(&path))?;
        let db = Arc::new(db);
        let shared = Arc::new(std::sync::RwLock::new(Some(Arc::clone(&db))));
        let (meta, log) =
            recover::recover(&opener.backend, id, &db, &path).map_err(|e| e.at(&path))?;
        let shared_log = Arc::new(std::sync::RwLock::new(Arc::clone(&log)));
        let (positions_tx, positions) = watch::channel(meta.position.clone());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(self.options.queue.max(1));
        let meta_lsn = meta.position.lsn;
        let writer = Writer {
            domain: id.clone(),
            node: self.options.node.clone(),
            db: Some(db),
            shared: Arc::clone(&shared),
            opener: opener.clone(),
            path: path.clone(),
            pending: None,
            meta,
            positions: positions_tx,
            counters: Arc::clone(&counters),
            limits: BatchLimits {
                max_requests: self.options.max_batch.max(1),
                max_bytes: self.options.max_batch_bytes,
                checkpoint_interval: self.options.checkpoint_interval,
                checkpoint_bytes: self.options.checkpoint_bytes,
            },
            checkpointed: meta_lsn,
            log,
            shared_log: Arc::clone(&shared_log),
            dirty_bytes: 0,
            dirty_since: None,
            flusher: self.flusher.clone(),
            flush: Arc::default(),
        };
        self.pool
            .grow()
            .map_err(StoreError::io("start a writer thread for", &path))?;
        let slot = self.pool.slot(id.clone(), writer, rx);
        Ok(Domain {
            inner: Arc::new(Inner {
                id: id.clone(),
                path,
                db: shared,
                log: shared_log,
                opener,
                tx: Mutex::new(Some(self.pool.sender(&slot, tx))),
                positions,
                counters,
                slot,
                pool: Arc::clone(&self.pool),
            }),
        })
    }

    /// Closes every open domain: waits for their writers to finish what they hold. Handles
    /// kept elsewhere stay usable until dropped.
    pub fn close(&self) {
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        drop(open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domsync_proto::model::Op;
    use writer::{Reply, Request, Work};

    /// A database closed by a storage error is reopened by the pool's ticks once the storage
    /// works again, without any request (readers wait on it too).
    #[test]
    fn ticks_reopen_a_closed_database_without_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let mut options = StoreOptions::new(NodeId::new("n").unwrap());
        options.backend = Some(plan.factory());
        let store = Store::open(dir.path(), options).unwrap();
        let d = store.create_domain(&"d".parse().unwrap()).unwrap();
        d.put("k", "v").unwrap();
        plan.fail_after(0, FaultKind::Eio);
        assert!(d.put("x", "y").unwrap_err().is_storage_fault());
        let shared_open = || d.inner.db.read().unwrap().is_some();
        assert!(
            !shared_open(),
            "every I/O fails: the reopen after the commit failed too"
        );
        plan.disarm();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !shared_open() {
            assert!(
                std::time::Instant::now() < deadline,
                "not reopened by the ticks"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(d.get(b"k").unwrap().value.as_deref(), Some(&b"v"[..]));
    }

    /// Requests queued while the writer is busy are committed together: one durable commit,
    /// one record and lsn each, every writer answered after it.
    #[test]
    fn queued_writers_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::new(NodeId::new("n").unwrap())).unwrap();
        let id: DomainId = "d".parse().unwrap();
        let path = store.create_domain(&id).unwrap().path().to_path_buf();
        store.close();

        let db = Arc::new(Database::builder().open(&path).unwrap());
        let (meta, log) = recover::recover(&None, &id, &db, &path).unwrap();
        let counters = Arc::new(Counters::default());
        let meta_lsn = meta.position.lsn;
        let mut w = Writer {
            domain: id.clone(),
            node: NodeId::new("n").unwrap(),
            db: Some(Arc::clone(&db)),
            shared: Arc::new(std::sync::RwLock::new(Some(Arc::clone(&db)))),
            opener: StoreOptions::new(NodeId::new("n").unwrap()).opener(),
            path: path.clone(),
            pending: None,
            meta,
            positions: watch::channel(domsync_proto::model::Position::empty(
                NodeId::new("n").unwrap(),
            ))
            .0,
            counters: Arc::clone(&counters),
            limits: BatchLimits {
                max_requests: 512,
                max_bytes: 1 << 24,
                checkpoint_interval: std::time::Duration::from_secs(1),
                checkpoint_bytes: 32 << 20,
            },
            checkpointed: meta_lsn,
            shared_log: Arc::new(std::sync::RwLock::new(Arc::clone(&log))),
            log,
            dirty_bytes: 0,
            dirty_since: None,
            flusher: None,
            flush: Arc::default(),
        };
        let (tx, rx) = mpsc::sync_channel(100);
        let mut answers = Vec::new();
        for i in 0..64u32 {
            let (rtx, rrx) = mpsc::sync_channel(1);
            let ops = vec![Op::Put {
                key: format!("k{i}").into_bytes(),
                value: vec![1],
            }];
            tx.send(Request {
                work: Work::Write(ops),
                reply: Reply::Blocking(rtx),
            })
            .unwrap();
            answers.push(rrx);
        }
        // An invalid request in the middle is refused alone.
        let (rtx, bad) = mpsc::sync_channel(1);
        tx.send(Request {
            work: Work::Write(vec![]),
            reply: Reply::Blocking(rtx),
        })
        .unwrap();
        for rrx in &answers {
            assert!(
                rrx.try_recv().is_err(),
                "nobody is answered before the commit"
            );
        }
        assert!(w.step(&rx));
        assert_eq!(
            counters.commits.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters.records.load(std::sync::atomic::Ordering::Relaxed),
            64
        );
        let lsns: Vec<u64> = answers
            .iter()
            .map(|r| r.try_recv().unwrap().unwrap().position.lsn.0)
            .collect();
        assert_eq!(lsns, (1..=64).collect::<Vec<_>>());
        assert!(matches!(
            bad.try_recv().unwrap(),
            Err(StoreError::InvalidWrite { .. })
        ));
    }
}
