//! Errors of the store layer. Each message says what happened and what to do, in one line.

use std::path::PathBuf;

use domsync_proto::codec::CodecError;
use domsync_proto::model::{CrlError, CrlNumber, DomainId, Epoch, Lsn, NodeId};

/// What a store operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A condition of a transaction failed: nothing was written.
    #[error("domain {domain}: condition {index} failed on key {}: {}; read it again and retry", domsync_proto::app::show_key(key), match current { Some(v) => format!("its version is now {v}"), None => "it does not exist".to_owned() })]
    Conflict {
        /// The domain.
        domain: DomainId,
        /// Index of the first failed condition.
        index: u32,
        /// Its key.
        key: Vec<u8>,
        /// The key's current version (`None`: absent).
        current: Option<Lsn>,
    },
    /// A position asked for is not in this replica's history: the record held at its lsn
    /// differs, or this replica has not reached it.
    #[error("domain {domain} on this node does not hold lsn {lsn} of the asked history: read again from a current position")]
    NotInHistory {
        /// The domain.
        domain: DomainId,
        /// The lsn asked.
        lsn: Lsn,
    },
    /// A write reached a replica that is not active.
    #[error("domain {domain} is standby on this node and read-only: {}", match active { Some(n) => format!("write on its active node {n}"), None => "this node does not know which node is active: run `domsync status` on the domain's other replicas, and promote one only if none is active".to_string() })]
    NotActive {
        /// The domain.
        domain: DomainId,
        /// The active this node knows of, if any.
        active: Option<NodeId>,
    },
    /// A change-log record was offered to the active replica.
    #[error("domain {domain} is active on this node: records are applied only on a standby")]
    NotStandby {
        /// The domain.
        domain: DomainId,
    },
    /// No store for this domain exists on this node.
    #[error("domain {domain} does not exist under {dir}: create it with `domsync domain create {domain}` or check --data")]
    UnknownDomain {
        /// The domain.
        domain: DomainId,
        /// The state directory searched.
        dir: PathBuf,
    },
    /// The domain already has a store on this node.
    #[error("domain {domain} already exists on this node; pick another name or remove it first")]
    DomainExists {
        /// The domain.
        domain: DomainId,
    },
    /// Another process holds the domain's database open.
    #[error("the store of domain {domain} ({}) is open in another process; stop that process (is domsyncd running?) and retry", path.display())]
    Locked {
        /// The domain.
        domain: DomainId,
        /// Its database file.
        path: PathBuf,
    },
    /// The write was refused before anything was committed.
    #[error("write to domain {domain} refused: {reason}")]
    InvalidWrite {
        /// The domain.
        domain: DomainId,
        /// Why.
        reason: String,
    },
    /// An uploaded CRL could not be used.
    #[error("CRL for domain {domain} refused: {source}")]
    Crl {
        /// The domain.
        domain: DomainId,
        /// The parse problem.
        source: CrlError,
    },
    /// An uploaded CRL is older than the one held for its issuer.
    #[error("CRL number {offered} of {issuer} is lower than the stored {stored} in domain {domain}: upload the issuer's newest CRL")]
    CrlOutdated {
        /// The domain.
        domain: DomainId,
        /// Issuer distinguished name.
        issuer: String,
        /// Number held.
        stored: CrlNumber,
        /// Number offered.
        offered: CrlNumber,
    },
    /// Two held issuer names render as the same RFC 4514 text.
    #[error("issuer {issuer} is ambiguous in domain {domain}: two held names render as this text (their encodings differ); ask by the name's DER")]
    AmbiguousIssuer {
        /// The domain.
        domain: DomainId,
        /// The text asked for.
        issuer: String,
    },
    /// A delta CRL whose base is not held.
    #[error("delta CRL number {number} of {issuer} refused in domain {domain}: it applies to base CRL number {base} or later, and no such base is held; upload the base CRL first")]
    CrlDeltaWithoutBase {
        /// The domain.
        domain: DomainId,
        /// Issuer (RFC 4514).
        issuer: String,
        /// The delta's number.
        number: CrlNumber,
        /// Its BaseCRLNumber.
        base: CrlNumber,
    },
    /// An uploaded CRL has the stored number but other content.
    #[error("CRL number {number} of {issuer} is already stored in domain {domain} with other content: a CA must raise the number for every new CRL")]
    CrlConflict {
        /// The domain.
        domain: DomainId,
        /// Issuer distinguished name.
        issuer: String,
        /// The number.
        number: CrlNumber,
    },
    /// A record does not follow the replica's position.
    #[error("record {got} of domain {domain} refused: the next lsn here is {expected}; resume replication from the standby's position")]
    OutOfOrder {
        /// The domain.
        domain: DomainId,
        /// The lsn that would have been accepted.
        expected: Lsn,
        /// The lsn offered.
        got: Lsn,
    },
    /// A record was written on another history than the replica holds.
    #[error("record {lsn} of domain {domain} was written on another history (chain {found:08x}, here {expected:08x}); this replica must rewind or resync")]
    ChainMismatch {
        /// The domain.
        domain: DomainId,
        /// The record's lsn.
        lsn: Lsn,
        /// The replica's chain.
        expected: u32,
        /// The chain the record was written on.
        found: u32,
    },
    /// Records shipped by a node that is not the active of the highest epoch recorded here:
    /// a fenced (older) active. Nothing of it is applied or acknowledged.
    #[error("records of domain {domain} from node {from} refused: this replica recorded epoch {epoch}, whose active is {}; it follows that node", epoch.node)]
    Fenced {
        /// The domain.
        domain: DomainId,
        /// The node that shipped the records.
        from: NodeId,
        /// The highest epoch recorded here.
        epoch: Epoch,
    },
    /// A record carries an epoch older than the replica's last record.
    #[error("record {lsn} of domain {domain} is from epoch {record}, older than {position} held here; it comes from a fenced active and is not applied")]
    StaleEpoch {
        /// The domain.
        domain: DomainId,
        /// The record's lsn.
        lsn: Lsn,
        /// The record's epoch.
        record: Epoch,
        /// The replica's epoch.
        position: Epoch,
    },
    /// A stored or received record failed its checks; it is never applied or served.
    #[error("record {lsn} of domain {domain} is corrupt ({source}); run `domsync verify` and resync this replica from a healthy peer")]
    CorruptRecord {
        /// The domain.
        domain: DomainId,
        /// The record's lsn (as expected from its place).
        lsn: Lsn,
        /// What the check found.
        source: CodecError,
    },
    /// A received snapshot does not add up to the digest the active announced.
    #[error("snapshot of domain {domain} at lsn {lsn} does not match the active's content digest; it was discarded and the previous state kept; the resync is retried")]
    SnapshotMismatch {
        /// The domain.
        domain: DomainId,
        /// The snapshot's lsn.
        lsn: Lsn,
    },
    /// Stored data other than a record failed its checks.
    #[error("domain {domain} has corrupt data: {what}; run `domsync verify` and resync this replica from a healthy peer")]
    Corrupt {
        /// The domain.
        domain: DomainId,
        /// What was found.
        what: String,
    },
    /// The requested records are no longer in the retained log.
    #[error("records from lsn {lsn} of domain {domain} are no longer retained (the log starts at {log_start}); resync from a snapshot")]
    LogTruncated {
        /// The domain.
        domain: DomainId,
        /// First lsn requested.
        lsn: Lsn,
        /// First lsn retained.
        log_start: Lsn,
    },
    /// The database reported an error. The failed operation was not acknowledged: if the
    /// failure hit the final fsync, its commit may still have reached the disk; the domain's
    /// position (read back from disk) tells. After a failed commit the domain reopens its
    /// database, so a later write can succeed once the cause is gone.
    #[error("storage error in domain {domain}: {detail}; the operation was not acknowledged (it may or may not have reached the disk); check the disk and the state directory, then retry")]
    Storage {
        /// The domain.
        domain: DomainId,
        /// The database's message.
        detail: String,
    },
    /// The file system holding the domain's database is full (`ENOSPC`). The write was not
    /// acknowledged; writes resume by themselves once space is freed.
    #[error("domain {domain}: the file system holding {} is full; the write was not acknowledged; free space there and retry", shown(path))]
    DiskFull {
        /// The domain.
        domain: DomainId,
        /// The database file (empty when not known where the error was seen).
        path: PathBuf,
    },
    /// The domain's database is closed after a storage error and could not be reopened yet;
    /// the domain retries at the next request (and every second).
    #[error("domain {domain} is unavailable: its database {} is being reopened after a storage error ({detail}); the operation was not acknowledged; retry shortly", shown(path))]
    Reopening {
        /// The domain.
        domain: DomainId,
        /// The database file.
        path: PathBuf,
        /// Why the last reopen failed.
        detail: String,
    },
    /// A file system operation on the state directory failed.
    #[error("cannot {action} {}: {detail}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The system's message.
        detail: String,
    },
    /// The domain's writer has stopped (the store is closing).
    #[error("domain {domain} is closing; retry once the store is open again")]
    Closed {
        /// The domain.
        domain: DomainId,
    },
}

fn shown(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        "the state directory".to_string()
    } else {
        path.display().to_string()
    }
}

/// True when `e` is `ENOSPC`, however the backend wrapped it.
fn io_is_disk_full(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
        return true;
    }
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        .is_some_and(io_is_disk_full)
}

/// True when redb reports `ENOSPC` from its backend.
pub(crate) fn is_disk_full(e: &redb::Error) -> bool {
    match e {
        redb::Error::Io(io) => io_is_disk_full(io),
        redb::Error::Backend(b) => b
            .downcast_ref::<std::io::Error>()
            .is_some_and(io_is_disk_full),
        _ => false,
    }
}

impl StoreError {
    pub(crate) fn storage(domain: &DomainId) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| {
            if is_disk_full(&e) {
                StoreError::DiskFull {
                    domain: domain.clone(),
                    path: PathBuf::new(),
                }
            } else {
                StoreError::Storage {
                    domain: domain.clone(),
                    detail: e.to_string(),
                }
            }
        }
    }

    /// Names the database file in a [`StoreError::DiskFull`] that was raised without it.
    #[must_use]
    pub(crate) fn at(self, file: &std::path::Path) -> StoreError {
        match self {
            StoreError::DiskFull { domain, path } if path.as_os_str().is_empty() => {
                StoreError::DiskFull {
                    domain,
                    path: file.to_path_buf(),
                }
            }
            other => other,
        }
    }

    /// True for a failure of the storage underneath (as opposed to a refusal): after one, a
    /// domain's writer reopens its database.
    pub fn is_storage_fault(&self) -> bool {
        matches!(
            self,
            StoreError::Storage { .. } | StoreError::DiskFull { .. } | StoreError::Reopening { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |e| StoreError::Io {
            action,
            path,
            detail: e.to_string(),
        }
    }
}

/// Converts any redb error into [`StoreError::Storage`] for one domain.
pub(crate) trait StorageResult<T> {
    fn or_storage(self, domain: &DomainId) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> StorageResult<T> for Result<T, E> {
    fn or_storage(self, domain: &DomainId) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::storage(domain)(e.into()))
    }
}
