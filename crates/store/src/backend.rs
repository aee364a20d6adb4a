//! The hook ([`BackendFactory`]) through which every domain database file is opened: plain
//! files by default; tests inject I/O errors through it (feature `testing`).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;

use redb::{BackendError, StorageBackend};

/// Opens the storage of a domain database: every database file of the store (a domain's
/// file, the temporary file of a domain being created, the `.resync.redb` file of a resync)
/// is opened through it, and reopened through it after a storage error.
///
/// The file may not exist yet (creation): open it read-write, creating it when missing and
/// never truncating it, as [`open_file`] does.
///
/// ```
/// use std::path::Path;
/// use std::sync::Arc;
/// use domsync_store::{open_file, BackendFactory, StoreOptions};
///
/// /// The plain file backend (what the store uses without a factory).
/// #[derive(Debug)]
/// struct Plain;
///
/// impl BackendFactory for Plain {
///     fn backend(&self, path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
///         Ok(Box::new(redb::backends::FileBackend::new(open_file(path)?).map_err(std::io::Error::other)?))
///     }
/// }
///
/// let mut options = StoreOptions::new(domsync_proto::model::NodeId::new("n")?);
/// options.backend = Some(Arc::new(Plain));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait BackendFactory: fmt::Debug + Send + Sync + 'static {
    /// The backend over the database file at `path`.
    ///
    /// # Errors
    /// The I/O error opening the file.
    fn backend(&self, path: &Path) -> io::Result<Box<dyn StorageBackend>>;
}

/// Opens `path` read-write, creating it (mode 0600, whatever the umask) when missing, never
/// truncating it: how redb opens a database file.
///
/// # Errors
/// The system's error.
pub fn open_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(super::private::FILE_MODE)
        .open(path)
}

/// A boxed backend handed to redb (which takes `impl StorageBackend`).
#[derive(Debug)]
pub(crate) struct Boxed(pub Box<dyn StorageBackend>);

impl StorageBackend for Boxed {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(s, e)
    }
}
