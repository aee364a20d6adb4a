//! Opening a domain's log-first storage: the tables at their last durable checkpoint, the
//! segment log replayed past it, and the migration of databases that kept their log in a table.
//!
//! The durable state of a domain is its redb database **at its last durable checkpoint** plus
//! its segment log. Every record reaches the log (written and `fdatasync`ed) before it is
//! folded into the tables by a non-durable redb commit, and before anyone is answered; a
//! checkpoint (a durable redb commit) happens in the background. So after a crash the tables
//! hold some prefix of the log and the records after it are replayed here, each checked
//! against the chain of the position before it.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase};

use super::error::{StorageResult, StoreError};
use super::meta::DomainMeta;
use super::segments::{log_dir, Factory, LogRow, SegmentLog, LOG_ROW_KEY};
use super::tables::{Tables, LOG, META, META_KEY};
use domsync_proto::model::DomainId;

/// Most bytes copied from the `log` table per append while migrating.
const MIGRATE_BATCH_BYTES: usize = 16 << 20;

/// The log row of the database, if it has one.
pub(crate) fn read_log_row(db: &Database, id: &DomainId) -> Result<Option<LogRow>, StoreError> {
    let txn = db.begin_read().or_storage(id)?;
    let table = txn.open_table(META).or_storage(id)?;
    let row = table.get(LOG_ROW_KEY).or_storage(id)?;
    row.map(|r| LogRow::decode(id, r.value())).transpose()
}

/// Opens the log of the database at `db_path` (migrating a format-1 database first) and folds
/// the records past the checkpoint into the tables, durably. Returns the metadata as of the
/// end of the log.
pub(crate) fn recover(
    factory: &Factory,
    id: &DomainId,
    db: &Database,
    db_path: &Path,
) -> Result<(DomainMeta, Arc<SegmentLog>), StoreError> {
    let meta = super::domain::read_meta(&db.begin_read().or_storage(id)?, id)?;
    let Some(row) = read_log_row(db, id)? else {
        let log = migrate(factory, id, db, db_path, &meta)?;
        return Ok((meta, Arc::new(log)));
    };
    let opened = SegmentLog::open(
        factory,
        id,
        &log_dir(db_path),
        row.log_id,
        meta.log_start,
        meta.log_base_chain,
        meta.position.lsn,
    )?;
    let mut meta = meta;
    if !opened.replay.is_empty() {
        let from = meta.position.lsn;
        let mut txn = db.begin_write().or_storage(id)?;
        txn.set_durability(Durability::Immediate).or_storage(id)?;
        {
            let mut t = Tables::open(&txn, id)?;
            for (record, bytes) in &opened.replay {
                if record.lsn != meta.position.lsn.next()
                    || record.prev_chain != meta.position.chain
                {
                    return Err(StoreError::Corrupt {
                        domain: id.clone(),
                        what: format!(
                            "log record {} in {} does not follow the checkpoint at {}: restore the domain from a standby",
                            record.lsn,
                            log_dir(db_path).display(),
                            meta.position
                        ),
                    });
                }
                super::work::fold(id, &mut t, &mut meta, record, bytes)?;
            }
            let row = meta.encode()?;
            t.meta.insert(META_KEY, row.as_slice()).or_storage(id)?;
        }
        txn.commit().or_storage(id)?;
        tracing::info!(domain = %id, from = %from, to = %meta.position, records = opened.replay.len(), "replayed the log past the last checkpoint");
    }
    Ok((meta, Arc::new(opened.log)))
}

/// Moves the log of a format-1 database (records in its `log` table) into segment files: the
/// segments are written and synced first, then one durable commit adds the log row and drops
/// the table. A crash before that commit leaves the database as it was (its next open starts
/// over, removing the half-written segments).
fn migrate(
    factory: &Factory,
    id: &DomainId,
    db: &Database,
    db_path: &Path,
    meta: &DomainMeta,
) -> Result<SegmentLog, StoreError> {
    let dir = log_dir(db_path);
    let row = LogRow::new(id, &dir)?;
    let log = SegmentLog::create(factory, id, &dir, row.log_id, meta.log_start)?;
    let mut copied = 0u64;
    {
        let txn = db.begin_read().or_storage(id)?;
        match txn.open_table(LOG) {
            Ok(table) => {
                let mut batch: Vec<Vec<u8>> = Vec::new();
                let mut batch_bytes = 0usize;
                let mut first = meta.log_start;
                let mut expected = meta.log_start;
                for entry in table
                    .range(meta.log_start.0..=meta.position.lsn.0)
                    .or_storage(id)?
                {
                    let (k, v) = entry.or_storage(id)?;
                    if k.value() != expected.0 {
                        return Err(StoreError::Corrupt {
                            domain: id.clone(),
                            what: format!(
                                "log record {expected} is missing from {}, so its log cannot be migrated: restore the domain from a standby",
                                db_path.display()
                            ),
                        });
                    }
                    batch_bytes += v.value().len();
                    batch.push(v.value().to_vec());
                    expected = expected.next();
                    if batch_bytes >= MIGRATE_BATCH_BYTES {
                        log.append(first, &batch)?;
                        copied += batch.len() as u64;
                        first = expected;
                        batch.clear();
                        batch_bytes = 0;
                    }
                }
                log.append(first, &batch)?;
                copied += batch.len() as u64;
                if expected <= meta.position.lsn && meta.log_start <= meta.position.lsn {
                    return Err(StoreError::Corrupt {
                        domain: id.clone(),
                        what: format!(
                            "log record {expected} is missing from {}, so its log cannot be migrated: restore the domain from a standby",
                            db_path.display()
                        ),
                    });
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e).or_storage(id),
        }
    }
    let mut txn = db.begin_write().or_storage(id)?;
    txn.set_durability(Durability::Immediate).or_storage(id)?;
    {
        let mut m = txn.open_table(META).or_storage(id)?;
        let bytes = row.encode(id)?;
        m.insert(LOG_ROW_KEY, bytes.as_slice()).or_storage(id)?;
    }
    match txn.delete_table(LOG) {
        Ok(_) => {}
        Err(e) => return Err(e).or_storage(id),
    }
    txn.commit().or_storage(id)?;
    if copied > 0 {
        tracing::info!(domain = %id, records = copied, dir = %dir.display(), "migrated the log into segment files (store format 2)");
    }
    Ok(log)
}

/// Writes the metadata row and makes everything folded so far durable: a checkpoint.
pub(crate) fn checkpoint(
    db: &Database,
    id: &DomainId,
    meta: &DomainMeta,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().or_storage(id)?;
    txn.set_durability(Durability::Immediate).or_storage(id)?;
    {
        let mut m = txn.open_table(META).or_storage(id)?;
        let row = meta.encode()?;
        m.insert(META_KEY, row.as_slice()).or_storage(id)?;
    }
    txn.commit().or_storage(id)
}
