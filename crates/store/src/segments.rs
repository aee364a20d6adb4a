//! The change log on disk: the durable point of a domain (log-first storage).
//!
//! Per domain, a directory `<domain>.log/` of append-only **segment files** named by the first
//! lsn they hold (`00000000000000000001.seg`). A segment is
//!
//! | offset | size | content                                                      |
//! |--------|------|--------------------------------------------------------------|
//! | 0      | 8    | magic `DSLOGSG\0`                                            |
//! | 8      | 4    | segment format version (`1`), little endian                  |
//! | 12     | 8    | log id (random, from the database's `log` row), LE           |
//! | 20     | 8    | first lsn, LE                                                |
//! | 28     | 4    | CRC32 of bytes `0 .. 28`, LE                                 |
//! | 32     | ...  | record frames back to back (the checked frames of `codec`)   |
//! | ...    | ...  | zeros to the end of the file                                 |
//!
//! A segment is created at its full size, filled with zeros and synced once (file and
//! directory), so an append is one positioned write into space the file already has and the
//! `fdatasync` after it writes data only, no size or extent change. A frame starts with its
//! format version, never `0`: the first zero byte where a frame would start ends a segment.
//! Segments grow from 64 KiB, doubling, up to 64 MiB (or the size of one batch, when larger), so a
//! thousand small domains take little space and a busy one rolls over rarely.
//!
//! Opening scans every segment, checks each frame (CRC, lsn in sequence, chain) and keeps a
//! sparse index (one offset every [`MARK_EVERY`] records). A bad frame after the last durable
//! checkpoint at the end of the newest segment is a torn tail of a group commit whose writers
//! were never answered: it is cut (overwritten with zeros). A bad frame followed by a complete
//! record, or inside what the checkpoint already holds, is damage to an acknowledged record and
//! is reported, never cut.

use std::fs::{self, File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use domsync_proto::codec::{chain_next, decode_record, frame_len, FRAME_HEADER, MAX_RECORD_BYTES};
use domsync_proto::model::{DomainId, Lsn, Record};
use serde::{Deserialize, Serialize};

use super::backend::BackendFactory;
use super::error::StoreError;

/// Where appends to a segment go: the plain file, or a backend of the store's
/// [`BackendFactory`] (tests inject write and sync failures there).
enum Appender {
    File(Arc<File>),
    Backend(Box<dyn redb::StorageBackend>),
}

impl Appender {
    fn open(
        factory: Option<&Arc<dyn BackendFactory>>,
        file: &Arc<File>,
        path: &Path,
    ) -> std::io::Result<Appender> {
        Ok(match factory {
            None => Appender::File(Arc::clone(file)),
            Some(f) => Appender::Backend(f.backend(path)?),
        })
    }

    fn write(&self, data: &[u8], at: u64) -> std::io::Result<()> {
        match self {
            Appender::File(f) => f.write_all_at(data, at),
            Appender::Backend(b) => b.write(at, data),
        }
    }

    fn sync(&self) -> std::io::Result<()> {
        match self {
            Appender::File(f) => f.sync_data(),
            Appender::Backend(b) => b.sync_data(),
        }
    }
}

/// The store's backend factory, if any, as segment logs take it.
pub(crate) type Factory = Option<Arc<dyn BackendFactory>>;

/// Magic bytes opening every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"DSLOGSG\0";
/// Segment format version written in the header.
pub(crate) const SEGMENT_FORMAT: u32 = 1;
/// Bytes of the segment header.
pub(crate) const HEADER_LEN: u64 = 32;
/// Size of a domain's first segment.
pub(crate) const FIRST_SEGMENT: u64 = 64 * 1024;
/// Largest size a segment grows to (a single larger batch gets a segment of its own size).
pub(crate) const MAX_SEGMENT: u64 = 64 * 1024 * 1024;
/// Records between two entries of the sparse index.
pub(crate) const MARK_EVERY: u64 = 64;

/// The `log` row of a domain database: which segment log belongs to it. Its presence means
/// the database uses the segment layout (store format 2); a database without it keeps its log
/// in the `log` table (format 1) and is migrated at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogRow {
    /// Store format: `2`.
    pub format: u32,
    /// Random id written in every segment header of this log.
    pub log_id: u64,
}

/// Key of the [`LogRow`] in the `meta` table.
pub(crate) const LOG_ROW_KEY: &str = "log";
/// Store format of databases whose log is in segment files.
pub(crate) const STORE_FORMAT: u32 = 2;

impl LogRow {
    pub fn new(domain: &DomainId, dir: &Path) -> Result<LogRow, StoreError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| StoreError::Io {
            action: "draw a random log id for",
            path: dir.to_path_buf(),
            detail: format!("{e} (domain {domain})"),
        })?;
        Ok(LogRow {
            format: STORE_FORMAT,
            log_id: u64::from_le_bytes(id),
        })
    }

    pub fn encode(&self, domain: &DomainId) -> Result<Vec<u8>, StoreError> {
        domsync_proto::codec::seal(self, 64).map_err(|e| StoreError::Corrupt {
            domain: domain.clone(),
            what: format!("log row cannot be encoded: {e}"),
        })
    }

    pub fn decode(domain: &DomainId, bytes: &[u8]) -> Result<LogRow, StoreError> {
        let row: LogRow =
            domsync_proto::codec::open(bytes, 64).map_err(|e| StoreError::Corrupt {
                domain: domain.clone(),
                what: format!("log row: {e}"),
            })?;
        if row.format != STORE_FORMAT {
            return Err(StoreError::Corrupt {
                domain: domain.clone(),
                what: format!(
                    "store format {} is not known to this release (it reads format {STORE_FORMAT} and migrates format 1): run the release that wrote it",
                    row.format
                ),
            });
        }
        Ok(row)
    }
}

/// The header of a segment with `log_id` starting at `first`.
pub(crate) fn header(log_id: u64, first: Lsn) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    h[12..20].copy_from_slice(&log_id.to_le_bytes());
    h[20..28].copy_from_slice(&first.0.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads a segment header: `(log id, first lsn)`, or `None` when it is not one.
pub(crate) fn parse_header(h: &[u8]) -> Option<(u64, Lsn)> {
    if h.len() < HEADER_LEN as usize || h[..8] != SEGMENT_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(h[28..32].try_into().ok()?);
    if crc != crc32fast::hash(&h[..28]) {
        return None;
    }
    if u32::from_le_bytes(h[8..12].try_into().ok()?) != SEGMENT_FORMAT {
        return None;
    }
    let id = u64::from_le_bytes(h[12..20].try_into().ok()?);
    let first = u64::from_le_bytes(h[20..28].try_into().ok()?);
    Some((id, Lsn(first)))
}

/// The log directory of the database at `db_path` (`<domain>.redb` -> `<domain>.log`).
pub(crate) fn log_dir(db_path: &Path) -> PathBuf {
    db_path.with_extension("log")
}

struct Segment {
    first: Lsn,
    path: PathBuf,
    /// Open for the newest segment (reads); others are opened by readers.
    file: Option<Arc<File>>,
    /// Appends to the newest segment.
    appender: Option<Appender>,
    /// Bytes holding header and frames.
    end: u64,
    capacity: u64,
    /// Sparse index: (lsn, offset of its frame).
    marks: Vec<(Lsn, u64)>,
}

struct State {
    segments: Vec<Segment>,
    /// Lsn of the next record appended.
    next: Lsn,
    /// Set when an append failed: what the file holds past `end` is unknown until rescanned.
    broken: bool,
}

/// The segment log of one domain, shared by its writer (appends) and readers.
pub(crate) struct SegmentLog {
    factory: Factory,
    dir: PathBuf,
    domain: DomainId,
    log_id: u64,
    state: Mutex<State>,
}

impl std::fmt::Debug for SegmentLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentLog")
            .field("dir", &self.dir)
            .field("log_id", &self.log_id)
            .finish_non_exhaustive()
    }
}

/// What opening a log found.
pub(crate) struct Opened {
    pub log: SegmentLog,
    /// Records after the checkpoint, in lsn order, checked (to fold into the tables).
    pub replay: Vec<(Record, Vec<u8>)>,
}

fn segment_name(first: Lsn) -> String {
    format!("{:020}.seg", first.0)
}

fn disk_err(
    domain: &DomainId,
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> StoreError {
    let domain = domain.clone();
    let path = path.to_path_buf();
    move |e| {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            StoreError::DiskFull { domain, path }
        } else {
            StoreError::Storage {
                domain,
                detail: format!("cannot {action} {}: {e}", path.display()),
            }
        }
    }
}

/// Creates a zero-filled segment of `capacity` bytes starting at `first`, synced with its
/// directory entry.
fn create_segment(
    factory: &Factory,
    domain: &DomainId,
    dir: &Path,
    log_id: u64,
    first: Lsn,
    capacity: u64,
) -> Result<Segment, StoreError> {
    let path = dir.join(segment_name(first));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(disk_err(domain, "create log segment", &path))?;
    let file = Arc::new(file);
    let appender = Appender::open(factory.as_ref(), &file, &path).map_err(disk_err(
        domain,
        "open log segment",
        &path,
    ))?;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < capacity {
        let n = (capacity - at).min(zeros.len() as u64);
        let chunk = zeros.get(..usize::try_from(n).unwrap_or(0)).unwrap_or(&[]);
        appender
            .write(chunk, at)
            .map_err(disk_err(domain, "preallocate log segment", &path))?;
        at += n;
    }
    appender.write(&header(log_id, first), 0).map_err(disk_err(
        domain,
        "write log segment",
        &path,
    ))?;
    appender
        .sync()
        .map_err(disk_err(domain, "sync log segment", &path))?;
    file.sync_all()
        .map_err(disk_err(domain, "sync log segment", &path))?;
    super::fsync_dir(dir)?;
    Ok(Segment {
        first,
        path,
        file: Some(file),
        appender: Some(appender),
        end: HEADER_LEN,
        capacity,
        marks: Vec::new(),
    })
}

/// How a frame at some offset read.
enum FrameAt {
    /// A zero byte or the end of the file: no frame.
    End,
    /// A frame of this many bytes that decodes to this record.
    Good(Record, Vec<u8>),
    /// A frame whose header gives a plausible length but whose content does not check.
    Bad(Option<u64>),
}

fn read_frame(file: &File, at: u64, size: u64) -> FrameAt {
    if at >= size {
        return FrameAt::End;
    }
    let mut head = [0u8; FRAME_HEADER];
    if at + FRAME_HEADER as u64 > size || file.read_exact_at(&mut head, at).is_err() {
        return if at < size && head[0] == 0 {
            FrameAt::End
        } else {
            FrameAt::Bad(None)
        };
    }
    if head[0] == 0 {
        return FrameAt::End;
    }
    let Ok(len) = frame_len(&head, MAX_RECORD_BYTES) else {
        return FrameAt::Bad(None);
    };
    let len64 = len as u64;
    if at + len64 > size {
        return FrameAt::Bad(None);
    }
    let mut bytes = vec![0u8; len];
    if file.read_exact_at(&mut bytes, at).is_err() {
        return FrameAt::Bad(Some(len64));
    }
    match decode_record(&bytes) {
        Ok(r) => FrameAt::Good(r, bytes),
        Err(_) => FrameAt::Bad(Some(len64)),
    }
}

/// Overwrites with zeros whatever is not zero from `from` to `size`, then syncs.
fn zero_tail(
    domain: &DomainId,
    file: &File,
    path: &Path,
    from: u64,
    size: u64,
) -> Result<u64, StoreError> {
    let mut buf = vec![0u8; 1 << 20];
    let zeros = vec![0u8; 1 << 20];
    let mut at = from;
    let mut cleared = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(buf.len() as u64)).unwrap_or(0);
        let chunk = buf.get_mut(..n).unwrap_or(&mut []);
        file.read_exact_at(chunk, at)
            .map_err(disk_err(domain, "read log segment", path))?;
        if chunk.iter().any(|b| *b != 0) {
            file.write_all_at(zeros.get(..n).unwrap_or(&[]), at)
                .map_err(disk_err(domain, "cut the torn tail of log segment", path))?;
            cleared += n as u64;
        }
        at += n as u64;
    }
    file.sync_data()
        .map_err(disk_err(domain, "sync log segment", path))?;
    Ok(cleared)
}

impl SegmentLog {
    /// Creates an empty log whose first record will be `first`, removing any segment files
    /// already in `dir` (a log that never became the domain's: a creation or migration cut
    /// short).
    pub fn create(
        factory: &Factory,
        domain: &DomainId,
        dir: &Path,
        log_id: u64,
        first: Lsn,
    ) -> Result<SegmentLog, StoreError> {
        if dir.is_dir() {
            Self::remove_segments(domain, dir, |_| true)?;
        } else {
            super::private::create_dir_all(dir).map_err(disk_err(
                domain,
                "create log directory",
                dir,
            ))?;
            if let Some(parent) = dir.parent() {
                super::fsync_dir(parent)?;
            }
        }
        let seg = create_segment(factory, domain, dir, log_id, first, FIRST_SEGMENT)?;
        Ok(SegmentLog {
            factory: factory.clone(),
            dir: dir.to_path_buf(),
            domain: domain.clone(),
            log_id,
            state: Mutex::new(State {
                segments: vec![seg],
                next: first,
                broken: false,
            }),
        })
    }

    fn remove_segments(
        domain: &DomainId,
        dir: &Path,
        doomed: impl Fn(&Path) -> bool,
    ) -> Result<(), StoreError> {
        let mut removed = false;
        for entry in fs::read_dir(dir).map_err(disk_err(domain, "read log directory", dir))? {
            let path = entry
                .map_err(disk_err(domain, "read log directory", dir))?
                .path();
            if path.extension().is_some_and(|e| e == "seg") && doomed(&path) {
                fs::remove_file(&path).map_err(disk_err(domain, "remove log segment", &path))?;
                removed = true;
            }
        }
        if removed {
            super::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// Opens the log of a database whose durable checkpoint is `checkpoint` (lsn and chain)
    /// and whose log starts at `log_start` (chain before it: `base_chain`). Segments of
    /// another log id (a log replaced by a resync) are removed; so are whole segments below
    /// `log_start` (a retention cut short).
    pub fn open(
        factory: &Factory,
        domain: &DomainId,
        dir: &Path,
        log_id: u64,
        log_start: Lsn,
        base_chain: u32,
        checkpoint: Lsn,
    ) -> Result<Opened, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt {
            domain: domain.clone(),
            what,
        };
        if !dir.is_dir() {
            if log_start <= checkpoint {
                return Err(corrupt(format!(
                    "its log directory {} is missing (records {log_start} to {checkpoint}): restore the domain from a standby",
                    dir.display()
                )));
            }
            let log = Self::create(factory, domain, dir, log_id, log_start)?;
            return Ok(Opened {
                log,
                replay: Vec::new(),
            });
        }
        // (first lsn, path) of this log's segments; others are removed.
        let mut found = Vec::new();
        let mut foreign = Vec::new();
        for entry in fs::read_dir(dir).map_err(disk_err(domain, "read log directory", dir))? {
            let path = entry
                .map_err(disk_err(domain, "read log directory", dir))?
                .path();
            if path.extension().is_none_or(|e| e != "seg") {
                continue;
            }
            let mut h = [0u8; HEADER_LEN as usize];
            let parsed = File::open(&path)
                .and_then(|mut f| f.read_exact(&mut h))
                .ok()
                .and_then(|()| parse_header(&h));
            match parsed {
                Some((id, first)) if id == log_id => found.push((first, path)),
                _ => foreign.push(path),
            }
        }
        for path in &foreign {
            tracing::warn!(domain = %domain, path = %path.display(), "removing a log segment that is not this database's (a log replaced by a resync, or a creation cut short)");
            fs::remove_file(path).map_err(disk_err(domain, "remove log segment", path))?;
        }
        found.sort();
        // Whole segments below the log start: retention removed their records.
        while found.len() > 1 && found.get(1).is_some_and(|(f, _)| *f <= log_start) {
            let (_, path) = found.remove(0);
            fs::remove_file(&path).map_err(disk_err(domain, "remove log segment", &path))?;
        }
        if !foreign.is_empty() {
            super::fsync_dir(dir)?;
        }
        if found.is_empty() {
            if log_start <= checkpoint {
                return Err(corrupt(format!(
                    "the segments of its log in {} are missing (records {log_start} to {checkpoint}): restore the domain from a standby",
                    dir.display()
                )));
            }
            let log = Self::create(factory, domain, dir, log_id, log_start)?;
            return Ok(Opened {
                log,
                replay: Vec::new(),
            });
        }
        if found.first().is_some_and(|(f, _)| *f > log_start) {
            return Err(corrupt(format!(
                "its log in {} starts after the log start {log_start}: records are missing; restore the domain from a standby",
                dir.display()
            )));
        }
        let count = found.len();
        let mut segments = Vec::with_capacity(count);
        let mut replay = Vec::new();
        let mut expected = found.first().map_or(log_start, |(f, _)| *f);
        // The chain is known from the log start on.
        let mut chain: Option<u32> = None;
        for (i, (first, path)) in found.into_iter().enumerate() {
            let last_segment = i + 1 == count;
            if first != expected {
                return Err(corrupt(format!(
                    "log segment {} starts at lsn {first} but the log before it ends at {}: records are missing; restore the domain from a standby",
                    path.display(),
                    Lsn(expected.0.saturating_sub(1))
                )));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(disk_err(domain, "open log segment", &path))?;
            let size = file
                .metadata()
                .map_err(disk_err(domain, "read log segment", &path))?
                .len();
            let mut at = HEADER_LEN;
            let mut marks = Vec::new();
            loop {
                if expected == log_start {
                    chain = Some(base_chain);
                }
                match read_frame(&file, at, size) {
                    FrameAt::End => break,
                    FrameAt::Good(record, bytes)
                        if record.lsn == expected
                            && chain.is_none_or(|c| c == record.prev_chain) =>
                    {
                        if (expected.0 - first.0) % MARK_EVERY == 0 {
                            marks.push((expected, at));
                        }
                        chain = Some(chain_next(record.prev_chain, &bytes));
                        at += bytes.len() as u64;
                        if record.lsn > checkpoint {
                            replay.push((record, bytes));
                        }
                        expected = expected.next();
                    }
                    other => {
                        let len = match other {
                            FrameAt::Bad(len) => len,
                            FrameAt::Good(_, bytes) => Some(bytes.len() as u64),
                            FrameAt::End => None,
                        };
                        let next_good = len.is_some_and(|l| {
                            matches!(read_frame(&file, at + l, size), FrameAt::Good(r, _) if r.lsn == expected.next())
                        });
                        if expected > checkpoint && last_segment && !next_good {
                            // A torn tail: the batch's writers were never answered.
                            let cut = zero_tail(domain, &file, &path, at, size)?;
                            tracing::warn!(domain = %domain, lsn = %expected, segment = %path.display(), bytes = cut, "cut the torn tail of the log (a group commit cut short by a crash; its writers were not answered)");
                            break;
                        }
                        match len {
                            // Damage to a complete record: keep its place so readers and
                            // `verify` report it by lsn.
                            Some(_) if expected > checkpoint => {
                                return Err(corrupt(format!(
                                    "log record {expected} in {} is damaged but records after it are complete (it was acknowledged, not torn by a crash): restore the domain from a standby",
                                    path.display()
                                )))
                            }
                            Some(l) => {
                                tracing::error!(domain = %domain, lsn = %expected, segment = %path.display(), "log record is damaged: `domsync verify` reports it; restore the domain from a standby");
                                if (expected.0 - first.0) % MARK_EVERY == 0 {
                                    marks.push((expected, at));
                                }
                                chain = None;
                                at += l;
                                expected = expected.next();
                            }
                            _ => {
                                return Err(corrupt(format!(
                                    "log record {expected} in {} is damaged and the log cannot be read past it: restore the domain from a standby",
                                    path.display()
                                )))
                            }
                        }
                    }
                }
            }
            let file = Arc::new(file);
            let appender = if last_segment {
                Some(
                    Appender::open(factory.as_ref(), &file, &path).map_err(disk_err(
                        domain,
                        "open log segment",
                        &path,
                    ))?,
                )
            } else {
                None
            };
            segments.push(Segment {
                first,
                path,
                file: last_segment.then_some(file),
                appender,
                end: at,
                capacity: size,
                marks,
            });
        }
        if Lsn(expected.0.saturating_sub(1)) < checkpoint && log_start <= checkpoint {
            return Err(corrupt(format!(
                "its log in {} ends at lsn {} but its tables hold records up to {checkpoint}: records are missing; restore the domain from a standby",
                dir.display(),
                Lsn(expected.0.saturating_sub(1))
            )));
        }
        Ok(Opened {
            log: SegmentLog {
                factory: factory.clone(),
                dir: dir.to_path_buf(),
                domain: domain.clone(),
                log_id,
                state: Mutex::new(State {
                    segments,
                    next: expected,
                    broken: false,
                }),
            },
            replay,
        })
    }

    /// The lsn the next appended record must have.
    pub fn next(&self) -> Lsn {
        self.lock().next
    }

    /// True once an append failed: the log must be reopened (rescanned) before the next.
    pub fn is_broken(&self) -> bool {
        self.lock().broken
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the frames of one group commit (records `first ..` in order): one positioned
    /// write and one `fdatasync`. Rolls over to a new segment first when they do not fit.
    /// Nothing is acknowledged before this returns.
    pub fn append(&self, first: Lsn, frames: &[Vec<u8>]) -> Result<(), StoreError> {
        if frames.is_empty() {
            return Ok(());
        }
        let total: u64 = frames.iter().map(|f| f.len() as u64).sum();
        let mut st = self.lock();
        if st.broken {
            return Err(StoreError::Storage {
                domain: self.domain.clone(),
                detail: format!(
                    "an earlier append to the log in {} failed; the log is being reopened",
                    self.dir.display()
                ),
            });
        }
        if first != st.next {
            return Err(StoreError::Corrupt {
                domain: self.domain.clone(),
                what: format!(
                    "log append at lsn {first}, but the log ends before {}",
                    st.next
                ),
            });
        }
        let fits = st
            .segments
            .last()
            .is_some_and(|s| s.end + total <= s.capacity && s.file.is_some());
        if !fits {
            let last_cap = st.segments.last().map_or(FIRST_SEGMENT / 2, |s| s.capacity);
            let want = (last_cap.saturating_mul(2)).clamp(FIRST_SEGMENT, MAX_SEGMENT);
            let need = (HEADER_LEN + total).div_ceil(FIRST_SEGMENT) * FIRST_SEGMENT;
            // Nothing is appended when this fails; a half-made segment holds no frame and is
            // rescanned at reopen.
            let seg = create_segment(
                &self.factory,
                &self.domain,
                &self.dir,
                self.log_id,
                first,
                want.max(need),
            );
            let seg = match seg {
                Ok(seg) => seg,
                Err(e) => {
                    st.broken = true;
                    return Err(e);
                }
            };
            // A last segment that holds no record yet starts at `first` too: the new one was
            // made in its place (same name), so it is replaced, not followed. Two entries for
            // one file would let retention remove the file still being appended to.
            if st.segments.last().is_some_and(|s| s.first == first) {
                st.segments.pop();
            } else if let Some(prev) = st.segments.last_mut() {
                prev.file = None;
                prev.appender = None;
            }
            st.segments.push(seg);
        }
        let Some(seg) = st.segments.last_mut() else {
            return Err(StoreError::Corrupt {
                domain: self.domain.clone(),
                what: "log has no segment".into(),
            });
        };
        let Some(file) = seg.appender.as_ref() else {
            return Err(StoreError::Corrupt {
                domain: self.domain.clone(),
                what: "log segment is not open".into(),
            });
        };
        let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for f in frames {
            buf.extend_from_slice(f);
        }
        let at = seg.end;
        let path = seg.path.clone();
        let written = file
            .write(&buf, at)
            .map_err(disk_err(&self.domain, "append to log segment", &path))
            .and_then(|()| {
                file.sync()
                    .map_err(disk_err(&self.domain, "sync log segment", &path))
            });
        if let Err(e) = written {
            st.broken = true;
            return Err(e);
        }
        let mut off = at;
        let mut lsn = first;
        for f in frames {
            if (lsn.0 - seg.first.0) % MARK_EVERY == 0 {
                seg.marks.push((lsn, off));
            }
            off += f.len() as u64;
            lsn = lsn.next();
        }
        seg.end = off;
        st.next = lsn;
        Ok(())
    }

    /// Raw frames of records `from ..= to`, at most `max_records` and about `max_bytes` (at
    /// least one). Each comes with the lsn its place in the log gives it; callers check it.
    pub fn read(
        &self,
        from: Lsn,
        to: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Lsn, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes_out = 0usize;
        let mut lsn = from;
        while lsn <= to && out.len() < max_records && (bytes_out < max_bytes || out.is_empty()) {
            // Where `lsn` is: the segment, the nearest mark at or before it, the segment's end.
            let (path, file, mut at, mut at_lsn, end, seg_last) = {
                let st = self.lock();
                let Some(i) = st.segments.iter().rposition(|s| s.first <= lsn) else {
                    break;
                };
                let Some(seg) = st.segments.get(i) else { break };
                let (mark_lsn, mark_at) = seg
                    .marks
                    .iter()
                    .rev()
                    .find(|(l, _)| *l <= lsn)
                    .copied()
                    .unwrap_or((seg.first, HEADER_LEN));
                let seg_last = st
                    .segments
                    .get(i + 1)
                    .map_or(Lsn(st.next.0.saturating_sub(1)), |n| {
                        Lsn(n.first.0.saturating_sub(1))
                    });
                (
                    seg.path.clone(),
                    seg.file.clone(),
                    mark_at,
                    mark_lsn,
                    seg.end,
                    seg_last,
                )
            };
            if lsn > seg_last {
                break;
            }
            let file = match file {
                Some(f) => f,
                None => Arc::new(File::open(&path).map_err(disk_err(
                    &self.domain,
                    "open log segment",
                    &path,
                ))?),
            };
            while at < end && at_lsn <= seg_last {
                let mut head = [0u8; FRAME_HEADER];
                file.read_exact_at(&mut head, at).map_err(disk_err(
                    &self.domain,
                    "read log segment",
                    &path,
                ))?;
                let len = frame_len(&head, MAX_RECORD_BYTES).map_err(|e| StoreError::Corrupt {
                    domain: self.domain.clone(),
                    what: format!(
                        "log record {at_lsn} in {} cannot be framed: {e}",
                        path.display()
                    ),
                })?;
                if at_lsn >= lsn {
                    let mut bytes = vec![0u8; len];
                    file.read_exact_at(&mut bytes, at).map_err(disk_err(
                        &self.domain,
                        "read log segment",
                        &path,
                    ))?;
                    bytes_out += len;
                    out.push((at_lsn, bytes));
                    lsn = at_lsn.next();
                    if lsn > to || out.len() >= max_records || bytes_out >= max_bytes {
                        return Ok(out);
                    }
                }
                at += len as u64;
                at_lsn = at_lsn.next();
            }
            if lsn <= seg_last {
                // The segment ended before its records did.
                return Err(StoreError::Corrupt {
                    domain: self.domain.clone(),
                    what: format!("log record {lsn} is missing from {}", path.display()),
                });
            }
        }
        Ok(out)
    }

    /// Removes whole segments whose records all lie below `below` (retention), keeping the
    /// newest segment. The caller made `below` durable first.
    pub fn retain_from(&self, below: Lsn) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let mut removed = 0u64;
        while st.segments.len() > 1 && st.segments.get(1).is_some_and(|s| s.first <= below) {
            let seg = st.segments.remove(0);
            fs::remove_file(&seg.path).map_err(disk_err(
                &self.domain,
                "remove log segment",
                &seg.path,
            ))?;
            removed += seg.capacity;
        }
        drop(st);
        if removed > 0 {
            super::fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Reads every frame of a segment file without interpreting it beyond its framing (for
/// `domsync log show` of damaged logs and golden tests).
#[cfg(test)]
pub(crate) fn frames_of(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut r = std::io::BufReader::new(File::open(path)?);
    let mut h = [0u8; HEADER_LEN as usize];
    r.read_exact(&mut h)?;
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; FRAME_HEADER];
        if r.read_exact(&mut head).is_err() || head[0] == 0 {
            return Ok(out);
        }
        let Ok(len) = frame_len(&head, MAX_RECORD_BYTES) else {
            return Ok(out);
        };
        let mut rest = vec![0u8; len - FRAME_HEADER];
        r.read_exact(&mut rest)?;
        let mut f = head.to_vec();
        f.extend_from_slice(&rest);
        out.push(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domsync_proto::codec::encode_record;
    use domsync_proto::model::{Epoch, NodeId, Op};

    fn golden_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/store/segment-v1.bin")
    }

    fn records() -> Vec<Vec<u8>> {
        let epoch = Epoch {
            term: 1,
            node: NodeId::new("node-a").unwrap(),
        };
        let first = Record {
            epoch: epoch.clone(),
            lsn: Lsn(1),
            time: 1_700_000_000_000_000,
            prev_chain: 0,
            ops: vec![Op::Put {
                key: b"vpn/psk-rotation".to_vec(),
                value: b"30d".to_vec(),
            }],
        };
        let a = encode_record(&first).unwrap();
        let second = Record {
            epoch,
            lsn: Lsn(2),
            time: 1_700_000_000_000_001,
            prev_chain: chain_next(0, &a),
            ops: vec![Op::Delete {
                key: b"vpn/psk-rotation".to_vec(),
            }],
        };
        vec![a, encode_record(&second).unwrap()]
    }

    /// The segment format is pinned: a segment written by this release (header, frames) is
    /// byte for byte the golden file, and the golden file opens with its records. With
    /// `DOMSYNC_BLESS=1` the file is rewritten.
    #[test]
    fn segment_format_matches_the_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let d: DomainId = "golden".parse().unwrap();
        let log_dir = dir.path().join("golden.log");
        let log = SegmentLog::create(&None, &d, &log_dir, 0x0123_4567_89ab_cdef, Lsn(1)).unwrap();
        let frames = records();
        log.append(Lsn(1), &frames).unwrap();
        let seg = log_dir.join("00000000000000000001.seg");
        let written = std::fs::read(&seg).unwrap();
        assert_eq!(written.len() as u64, FIRST_SEGMENT, "preallocated");
        let end = 32 + frames.iter().map(Vec::len).sum::<usize>();
        assert!(written[end..].iter().all(|b| *b == 0));
        if std::env::var("DOMSYNC_BLESS").as_deref() == Ok("1") {
            std::fs::write(golden_path(), &written[..end]).unwrap();
        }
        let golden = std::fs::read(golden_path()).unwrap();
        assert_eq!(
            &written[..end],
            &golden[..],
            "segment bytes changed: a new format version is needed"
        );
        assert_eq!(&golden[..8], b"DSLOGSG\0");
        // The golden bytes, zero-padded as a preallocated segment, open with both records.
        let other = dir.path().join("other.log");
        std::fs::create_dir(&other).unwrap();
        let mut padded = golden.clone();
        padded.resize(FIRST_SEGMENT as usize, 0);
        std::fs::write(other.join("00000000000000000001.seg"), &padded).unwrap();
        let opened =
            SegmentLog::open(&None, &d, &other, 0x0123_4567_89ab_cdef, Lsn(1), 0, Lsn(0)).unwrap();
        assert_eq!(opened.replay.len(), 2);
        assert_eq!(opened.log.next(), Lsn(3));
        let read = opened.log.read(Lsn(1), Lsn(2), 10, usize::MAX).unwrap();
        assert_eq!(read.into_iter().map(|(_, b)| b).collect::<Vec<_>>(), frames);
        assert_eq!(
            frames_of(&other.join("00000000000000000001.seg"))
                .unwrap()
                .len(),
            2
        );
    }

    /// Segments roll over when a batch does not fit, growing up to the cap; reads cross
    /// segment boundaries; retention removes whole segments only.
    #[test]
    fn segments_roll_over_and_retention_removes_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d: DomainId = "roll".parse().unwrap();
        let log_dir = dir.path().join("roll.log");
        let log = SegmentLog::create(&None, &d, &log_dir, 7, Lsn(1)).unwrap();
        let epoch = Epoch {
            term: 1,
            node: NodeId::new("n").unwrap(),
        };
        let mut chain = 0;
        let mut chains = vec![0u32];
        for lsn in 1..=200u64 {
            let r = Record {
                epoch: epoch.clone(),
                lsn: Lsn(lsn),
                time: lsn,
                prev_chain: chain,
                ops: vec![Op::Put {
                    key: lsn.to_le_bytes().to_vec(),
                    value: vec![7; 2000],
                }],
            };
            let f = encode_record(&r).unwrap();
            chain = chain_next(chain, &f);
            chains.push(chain);
            log.append(Lsn(lsn), &[f]).unwrap();
        }
        let count = || std::fs::read_dir(&log_dir).unwrap().count();
        let before = count();
        assert!(before >= 3, "{before} segments");
        let all = log.read(Lsn(1), Lsn(200), usize::MAX, usize::MAX).unwrap();
        assert_eq!(all.len(), 200);
        for (i, (lsn, bytes)) in all.iter().enumerate() {
            assert_eq!(lsn.0, i as u64 + 1);
            assert_eq!(decode_record(bytes).unwrap().lsn, *lsn);
        }
        log.retain_from(Lsn(150)).unwrap();
        assert!(count() < before);
        assert_eq!(
            log.read(Lsn(150), Lsn(200), usize::MAX, usize::MAX)
                .unwrap()
                .len(),
            51
        );
        // Reopening finds the same log from the retained start.
        drop(log);
        let opened =
            SegmentLog::open(&None, &d, &log_dir, 7, Lsn(150), chains[149], Lsn(190)).unwrap();
        // Past the checkpoint at 190: replayed, each chained to the one before.
        assert_eq!(opened.replay.len(), 10);
        assert_eq!(opened.replay[0].0.prev_chain, chains[190]);
        assert_eq!(opened.log.next(), Lsn(201));
    }

    fn frame(lsn: u64, prev_chain: u32, value: usize) -> Vec<u8> {
        encode_record(&Record {
            epoch: Epoch {
                term: 1,
                node: NodeId::new("n").unwrap(),
            },
            lsn: Lsn(lsn),
            time: lsn,
            prev_chain,
            ops: vec![Op::Put {
                key: b"k".to_vec(),
                value: vec![9; value],
            }],
        })
        .unwrap()
    }

    /// A first record larger than the new log's (empty) segment used to start a second
    /// segment with the same first lsn, so the same file: retention then removed the file the
    /// log was still appending to (the store_model fuzzer found it with a 496 KiB value).
    #[test]
    fn a_record_too_large_for_an_empty_segment_replaces_it_and_retention_keeps_the_live_file() {
        let dir = tempfile::tempdir().unwrap();
        let d: DomainId = "big".parse().unwrap();
        let log_dir = dir.path().join("big.log");
        let log = SegmentLog::create(&None, &d, &log_dir, 7, Lsn(1)).unwrap();
        let first = frame(1, 0, 2 * FIRST_SEGMENT as usize);
        let mut chain = chain_next(0, &first);
        log.append(Lsn(1), &[first]).unwrap();
        for lsn in 2..=6u64 {
            let f = frame(lsn, chain, 10);
            chain = chain_next(chain, &f);
            log.append(Lsn(lsn), &[f]).unwrap();
        }
        assert_eq!(std::fs::read_dir(&log_dir).unwrap().count(), 1);
        log.retain_from(Lsn(5)).unwrap();
        let read = log.read(Lsn(5), Lsn(6), usize::MAX, usize::MAX).unwrap();
        assert_eq!(read.len(), 2, "records 5 and 6 are still read");
        assert!(log_dir.join(segment_name(Lsn(1))).exists());
    }
}
