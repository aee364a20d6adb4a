//! A fault-injecting storage backend ([`FaultyBackend`], driven by a [`FaultPlan`]) for tests,
//! fuzzing and torture of the store under I/O errors. Only with the feature `testing`.

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::backend::{open_file, BackendFactory};

/// The error a [`FaultPlan`] injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: the file system is full.
    DiskFull,
}

impl FaultKind {
    /// The injected error.
    pub fn error(self) -> io::Error {
        match self {
            FaultKind::Eio => io::Error::from_raw_os_error(5),
            FaultKind::DiskFull => io::Error::from_raw_os_error(28),
        }
    }
}

const DISARMED: u8 = 0;
const EVERY_CALL: u8 = 1;
const SYNC_ONLY: u8 = 2;

#[derive(Debug, Default)]
struct PlanState {
    /// `DISARMED`, `EVERY_CALL` or `SYNC_ONLY`.
    mode: AtomicU8,
    /// 5 (EIO) or 28 (ENOSPC).
    errno: AtomicU64,
    /// I/Os still allowed before faults start (when armed).
    countdown: AtomicU64,
    /// I/Os seen (reads, writes, length changes, syncs; not locks or closes).
    ios: AtomicU64,
    /// Errors injected.
    injected: AtomicU64,
    /// Successful `sync_data` calls per file (the database's and each log segment's).
    syncs: std::sync::Mutex<std::collections::BTreeMap<std::path::PathBuf, u64>>,
}

/// When the backends of a [`FaultPlan::factory`] fail: one countdown shared by every database
/// opened through it, armed and disarmed from the test at any time. Cheap to clone; clones
/// share the plan.
///
/// Every I/O call (`len`, `read`, `set_len`, `sync_data`, `write`) counts. Once armed with
/// `after = N`, the next N calls go through and then either every call fails
/// ([`FaultPlan::fail_after`]) or only `sync_data` does ([`FaultPlan::fail_sync_after`]),
/// until [`FaultPlan::disarm`]. Lock calls and `close` always go through.
///
/// ```
/// use domsync_proto::model::NodeId;
/// use domsync_store::{FaultKind, FaultPlan, Store, StoreError, StoreOptions};
///
/// let dir = tempfile::tempdir()?;
/// let plan = FaultPlan::new();
/// let mut options = StoreOptions::new(NodeId::new("node-a")?);
/// options.backend = Some(plan.factory());
/// let store = Store::open(dir.path(), options)?;
/// let domain = store.create_domain(&"tenant-1".parse()?)?;
/// domain.put("k", "v1")?;
///
/// // The next fsync fails: the write is not acknowledged.
/// plan.fail_sync_after(0, FaultKind::Eio);
/// assert!(matches!(domain.put("k", "v2"), Err(StoreError::Storage { .. })));
///
/// // Once the disk is healthy again the domain reopens its database and writes go on.
/// plan.disarm();
/// domain.put("k", "v3")?;
/// assert!(domain.verify()?.is_clean());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    state: Arc<PlanState>,
}

impl FaultPlan {
    /// A disarmed plan: everything goes through.
    pub fn new() -> Self {
        FaultPlan::default()
    }

    fn arm(&self, after: u64, kind: FaultKind, mode: u8) {
        let errno = match kind {
            FaultKind::Eio => 5,
            FaultKind::DiskFull => 28,
        };
        self.state.errno.store(errno, Ordering::SeqCst);
        self.state.countdown.store(after, Ordering::SeqCst);
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    /// After `after` more I/O calls, every call fails with `kind`.
    pub fn fail_after(&self, after: u64, kind: FaultKind) {
        self.arm(after, kind, EVERY_CALL);
    }

    /// After `after` more I/O calls, every `sync_data` (fsync) fails with `kind`; reads and
    /// writes go through.
    pub fn fail_sync_after(&self, after: u64, kind: FaultKind) {
        self.arm(after, kind, SYNC_ONLY);
    }

    /// Lets every call through again.
    pub fn disarm(&self) {
        self.state.mode.store(DISARMED, Ordering::SeqCst);
    }

    /// I/O calls seen so far by every backend of this plan.
    pub fn ios(&self) -> u64 {
        self.state.ios.load(Ordering::SeqCst)
    }

    /// Successful `sync_data` calls so far, per file opened through this plan.
    pub fn syncs(&self) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
        self.state
            .syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Errors injected so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// A factory whose backends follow this plan (plain files underneath).
    pub fn factory(&self) -> Arc<dyn BackendFactory> {
        Arc::new(self.clone())
    }

    /// Counts one I/O call; the error to return instead of doing it, if any.
    fn check(&self, sync: bool) -> Result<(), io::Error> {
        let s = &self.state;
        s.ios.fetch_add(1, Ordering::SeqCst);
        let mode = s.mode.load(Ordering::SeqCst);
        if mode == DISARMED {
            return Ok(());
        }
        // Still counting down: this call goes through.
        if s.countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(());
        }
        if mode == SYNC_ONLY && !sync {
            return Ok(());
        }
        s.injected.fetch_add(1, Ordering::SeqCst);
        let errno = i32::try_from(s.errno.load(Ordering::SeqCst)).unwrap_or(5);
        Err(io::Error::from_raw_os_error(errno))
    }
}

impl BackendFactory for FaultPlan {
    fn backend(&self, path: &Path) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(FaultyBackend::open(path, self.clone())?))
    }
}

/// A file backend that fails as its [`FaultPlan`] says. Failed calls do nothing.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    plan: FaultPlan,
    path: std::path::PathBuf,
}

impl FaultyBackend {
    /// Opens (creating when missing) the file at `path`.
    ///
    /// # Errors
    /// The system's error.
    pub fn open(path: &Path, plan: FaultPlan) -> io::Result<FaultyBackend> {
        let inner = FileBackend::new(open_file(path)?).map_err(io::Error::other)?;
        Ok(FaultyBackend {
            inner,
            plan,
            path: path.to_path_buf(),
        })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.plan.check(false)?;
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.plan.check(false)?;
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.plan.check(false)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.plan.check(true)?;
        self.inner.sync_data()?;
        *self
            .plan
            .state
            .syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(self.path.clone())
            .or_default() += 1;
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.plan.check(false)?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}
