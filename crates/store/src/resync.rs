//! Full resync of a standby: a snapshot is built aside in a new database file and switched in
//! atomically (invariant 6). A crash midway leaves the previous state intact: the half-built
//! file has a hidden name and is removed when the store is next opened.
//!
//! A resync replaces the replica's log with an empty one that starts after the snapshot. The
//! records it held are not dropped: those after the fork a rewind names go to the collision
//! archive (invariant 5), and those on the new history (at or below the fork) are kept, as
//! they were written, in the `held` table (lsn -> record frame) of the new file. The snapshot
//! holds them only as state, and a later rewind to a fork below the log start can only archive
//! records whose bytes someone still holds: the replica that wrote them always does.

use std::path::PathBuf;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use sha2::{Digest as _, Sha256};

use super::apply::{put_crl, put_held_crl, put_issuer, put_kv, put_policy};
use super::domain::Domain;
use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::segments::{log_dir, LogRow, LOG_ROW_KEY};
use super::tables::{Tables, COLLISIONS, META_KEY};
use super::writer::{Install, Work};
use domsync_proto::model::SnapshotItem;
use domsync_proto::model::StateDigest;
use domsync_proto::model::{DomainUid, Epoch, HistoryEntry, Lsn, Position, Role};

/// Records of a replica's history below its log start, kept by lsn across resyncs (see the
/// module documentation). Not part of the state, its digest or the log.
pub(crate) const HELD: TableDefinition<u64, &[u8]> = TableDefinition::new("held");

/// What a snapshot was taken at, as the active described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncTarget {
    /// Incarnation id of the domain.
    pub uid: DomainUid,
    /// Position of the snapshot.
    pub position: Position,
    /// Highest epoch the active has seen.
    pub epoch: Epoch,
    /// History up to `position`.
    pub history: Vec<HistoryEntry>,
    /// Content digest the rows must add up to.
    pub digest: StateDigest,
}

/// A snapshot being built aside for a standby replica. Dropping it unfinished removes the
/// half-built file; the replica keeps its previous state.
pub struct Resync {
    domain: Domain,
    target: ResyncTarget,
    archive_after: Option<Lsn>,
    db: Option<Database>,
    tmp: PathBuf,
    digest: StateDigest,
    rows: u64,
}

impl std::fmt::Debug for Resync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resync")
            .field("domain", self.domain.id())
            .field("target", &self.target.position)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl Domain {
    #[cfg(feature = "replica")]
    /// Starts building a snapshot at `target` aside (standby only). If `archive_after` is set,
    /// this replica's records after that lsn diverged from the active's history: they are
    /// moved to the collision archive of the new state, never dropped (invariant 5), including
    /// those below its log start that it still holds from an earlier resync. Its records at or
    /// below the fork stay held in the new file.
    ///
    /// # Errors
    /// [`StoreError::NotStandby`], [`StoreError::Io`] or [`StoreError::Storage`].
    pub fn begin_resync(
        &self,
        target: ResyncTarget,
        archive_after: Option<Lsn>,
    ) -> Result<Resync, StoreError> {
        if self.status()?.role != Role::Standby {
            return Err(StoreError::NotStandby {
                domain: self.id().clone(),
            });
        }
        let tmp = self.resync_path();
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(StoreError::io("remove", &tmp))?;
        }
        let db = self
            .inner
            .opener
            .create(&tmp)
            .or_storage(self.id())
            .map_err(|e| e.at(&tmp))?;
        Ok(Resync {
            domain: self.clone(),
            target,
            archive_after,
            db: Some(db),
            tmp,
            digest: StateDigest::default(),
            rows: 0,
        })
    }

    pub(crate) fn resync_path(&self) -> PathBuf {
        self.path()
            .with_file_name(format!(".{}.resync.redb", self.id()))
    }
}

impl Resync {
    /// Rows added so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds rows in one (not yet durable) transaction of the new file. Memory use is bounded
    /// by the rows given, so snapshots larger than RAM stream through.
    ///
    /// # Errors
    /// [`StoreError::InvalidWrite`] for a row no write could have made, or
    /// [`StoreError::Storage`].
    pub fn add(&mut self, items: &[SnapshotItem]) -> Result<(), StoreError> {
        let tmp = self.tmp.clone();
        self.add_rows(items).map_err(|e| e.at(&tmp))
    }

    fn add_rows(&mut self, items: &[SnapshotItem]) -> Result<(), StoreError> {
        let id = self.domain.id().clone();
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| StoreError::Closed { domain: id.clone() })?;
        let mut txn = db.begin_write().or_storage(&id)?;
        txn.set_durability(Durability::None).or_storage(&id)?;
        {
            let mut t = Tables::open(&txn, &id)?;
            for item in items {
                add_row(&id, &mut t, item, &mut self.digest)?;
            }
        }
        txn.commit().or_storage(&id)?;
        self.rows += items.len() as u64;
        Ok(())
    }

    /// Checks the rows against the target's digest, archives divergent records, makes the new
    /// file durable and switches it in atomically (rename + directory fsync). Returns the new
    /// position.
    ///
    /// # Errors
    /// [`StoreError::SnapshotMismatch`] when the rows do not add up to the target digest (the
    /// previous state stays), [`StoreError::NotStandby`] when the replica was promoted
    /// meanwhile, [`StoreError::Io`] or [`StoreError::Storage`].
    pub fn finish(self) -> Result<Position, StoreError> {
        let tmp = self.tmp.clone();
        self.finish_install().map_err(|e| e.at(&tmp))
    }

    fn finish_install(mut self) -> Result<Position, StoreError> {
        let id = self.domain.id().clone();
        if self.digest != self.target.digest {
            return Err(StoreError::SnapshotMismatch {
                domain: id,
                lsn: self.target.position.lsn,
            });
        }
        let old = self.domain.status()?;
        let db = self
            .db
            .take()
            .ok_or_else(|| StoreError::Closed { domain: id.clone() })?;
        let meta = DomainMeta {
            domain: id.clone(),
            uid: Some(self.target.uid),
            role: Role::Standby,
            epoch: old.epoch.clone().max(self.target.epoch.clone()),
            history: self.target.history.clone(),
            position: self.target.position.clone(),
            log_start: self.target.position.lsn.next(),
            log_base_chain: self.target.position.chain,
            digest: self.digest,
            log_bytes: 0,
        };
        let log_row = LogRow::new(&id, &log_dir(self.domain.path()))?;
        {
            let mut txn = db.begin_write().or_storage(&id)?;
            txn.set_durability(Durability::Immediate).or_storage(&id)?;
            {
                let mut t = Tables::open(&txn, &id)?;
                let row = meta.encode()?;
                t.meta.insert(META_KEY, row.as_slice()).or_storage(&id)?;
                let row = log_row.encode(&id)?;
                t.meta.insert(LOG_ROW_KEY, row.as_slice()).or_storage(&id)?;
                let mut archive = txn.open_table(COLLISIONS).or_storage(&id)?;
                let mut held = txn.open_table(HELD).or_storage(&id)?;
                self.carry_records(&mut archive, &mut held)?;
            }
            txn.commit().or_storage(&id)?;
        }
        let tmp = std::mem::take(&mut self.tmp);
        let position = meta.position.clone();
        self.domain.submit_work(Work::Install(Box::new(Install {
            db,
            tmp,
            meta,
            source: self.target.epoch.clone(),
            log_id: log_row.log_id,
        })))?;
        tracing::info!(domain = %id, position = %position, rows = self.rows, "resync switched in");
        Ok(position)
    }

    /// Copies the old archive into the new file; moves the records the replica holds (held
    /// below its log start, then its log) after the fork to the archive, and keeps those at or
    /// below it as held. Reports, as an error, records after the fork that the replica holds
    /// only as state: another replica (their writer) holds and archives them, or they are lost.
    fn carry_records(
        &self,
        archive: &mut redb::Table<'_, u64, &'static [u8]>,
        held: &mut redb::Table<'_, u64, &'static [u8]>,
    ) -> Result<(), StoreError> {
        let id = self.domain.id();
        let txn = self.domain.begin_read()?;
        let old = self.domain.meta_in(&txn)?;
        let mut next = 0u64;
        for entry in txn
            .open_table(COLLISIONS)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            archive.insert(k.value(), v.value()).or_storage(id)?;
            next = next.max(k.value() + 1);
        }
        // Without a fork the replica's records are all on the new history, up to the target.
        let fork = self
            .archive_after
            .unwrap_or(self.target.position.lsn)
            .min(self.target.position.lsn);
        let old_held = match txn.open_table(HELD) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e).or_storage(id),
        };
        let mut moved = 0u64;
        let mut held_after_fork = 0u64;
        let mut carry = |lsn: u64, bytes: &[u8]| -> Result<(), StoreError> {
            if lsn <= fork.0 {
                held.insert(lsn, bytes).or_storage(id)?;
            } else {
                archive.insert(next, bytes).or_storage(id)?;
                next += 1;
                moved += 1;
            }
            Ok(())
        };
        if let Some(t) = &old_held {
            for entry in t.range(..old.log_start.0).or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                if k.value() > fork.0 {
                    held_after_fork += 1;
                }
                carry(k.value(), v.value())?;
            }
        }
        // The log, read in bounded pieces.
        let log = self.domain.log();
        let mut at = old.log_start;
        while at <= old.position.lsn {
            let chunk = log.read(at, old.position.lsn, 4096, 16 << 20)?;
            let Some((last, _)) = chunk.last() else { break };
            at = last.next();
            for (lsn, bytes) in &chunk {
                carry(lsn.0, bytes)?;
            }
        }
        if moved > 0 {
            tracing::warn!(domain = %id, fork = %fork, records = moved,
                "divergent records moved to the collision archive; resolve them with `domsync collisions`");
        }
        trim_held(id, held)?;
        // Records after the fork below the log start that this replica does not hold.
        let below_log = old.position.lsn.0.min(old.log_start.0.saturating_sub(1));
        let missing = below_log
            .saturating_sub(fork.0)
            .saturating_sub(held_after_fork);
        if missing > 0 {
            tracing::error!(domain = %id, fork = %fork, from = fork.0 + 1, to = below_log, records = missing,
                "records after the fork are held here only as state and cannot be archived here: \
                 the replicas that wrote them archive them when they rejoin; if none does, they are lost");
        }
        Ok(())
    }
}

/// Most bytes of records kept in `held` across resyncs: without a bound it grows by the
/// replica's whole log at every resync. The newest are kept (a later rewind forks past the
/// records every replica shares, so the oldest are the least likely to be needed).
pub(crate) const MAX_HELD_BYTES: u64 = 64 << 20;

/// Drops the oldest held records beyond [`MAX_HELD_BYTES`], saying so.
fn trim_held(
    id: &domsync_proto::model::DomainId,
    held: &mut redb::Table<'_, u64, &'static [u8]>,
) -> Result<(), StoreError> {
    let mut sizes = Vec::new();
    for entry in held.iter().or_storage(id)? {
        let (k, v) = entry.or_storage(id)?;
        sizes.push((k.value(), v.value().len() as u64));
    }
    let mut total: u64 = sizes.iter().map(|(_, b)| b).sum();
    let mut dropped = 0u64;
    let mut upto = 0u64;
    for (lsn, bytes) in sizes {
        if total <= MAX_HELD_BYTES {
            break;
        }
        held.remove(lsn).or_storage(id)?;
        total -= bytes;
        dropped += 1;
        upto = lsn;
    }
    if dropped > 0 {
        tracing::warn!(domain = %id, records = dropped, up_to = upto, kept_bytes = total,
            "oldest records of this replica's earlier history no longer kept aside (bounded); a later rewind below that lsn cannot archive them here");
    }
    Ok(())
}

impl Drop for Resync {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            drop(db);
        }
        if !self.tmp.as_os_str().is_empty() {
            if let Err(e) = std::fs::remove_file(&self.tmp) {
                tracing::debug!(path = %self.tmp.display(), error = %e, "half-built snapshot not removed");
            }
        }
    }
}

/// Inserts one snapshot row, keeping the digest (a repeated row replaces the earlier one).
fn add_row(
    id: &domsync_proto::model::DomainId,
    t: &mut Tables<'_>,
    item: &SnapshotItem,
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    match item {
        SnapshotItem::Kv { key, value } => {
            put_kv(id, t, key, value, digest)?;
            t.kv_version.remove(key.as_slice()).or_storage(id)?;
            Ok(())
        }
        SnapshotItem::KvAt {
            key,
            value,
            version,
        } => {
            put_kv(id, t, key, value, digest)?;
            t.kv_version
                .insert(key.as_slice(), version.0)
                .or_storage(id)?;
            Ok(())
        }
        SnapshotItem::Policy(p) => {
            let refuse = |reason: String| StoreError::InvalidWrite {
                domain: id.clone(),
                reason: format!("snapshot row refused: {reason}"),
            };
            domsync_proto::model::check_policy_name(&p.info.name).map_err(refuse)?;
            // The content digest covers the info row only: check the content against it.
            if <[u8; 32]>::from(Sha256::digest(&p.content)) != p.info.sha256
                || p.content.len() as u64 != p.info.size
            {
                return Err(refuse(format!(
                    "content of policy {} does not match its size and SHA-256",
                    p.info.name
                )));
            }
            put_policy(id, t, &p.info, &p.content, digest)
        }
        SnapshotItem::LegacyCrl(crl) => put_crl(id, t, crl, digest),
        SnapshotItem::Issuer(cert) => put_issuer(id, t, cert, digest),
        SnapshotItem::Crl(crl) => put_held_crl(id, t, crl, digest),
    }
}
