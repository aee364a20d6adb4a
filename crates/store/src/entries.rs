//! User keys as applications see them: values with their version (the lsn of the record that
//! last changed them), consistent scans with continuation, the conditions of a transaction,
//! and the changes of a key range read back from the log (watches, continuations).

use redb::{ReadTransaction, ReadableTable};

use super::domain::Domain;
use super::error::{StorageResult, StoreError};
use super::pieces::{self, Owner};
use super::read::Read;
use super::tables::{Tables, KV, KV_VERSION};
use domsync_proto::app::{Condition, Entry, Event, KeyRange};
use domsync_proto::codec::chain_next;
use domsync_proto::model::{DomainId, Lsn, Op, Position};

/// A page of a scan (see [`Domain::scan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// Whether keys of the range follow the last entry.
    pub more: bool,
}

/// Changes of a key range read from the log (see [`Domain::key_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChanges {
    /// The changes of keys in the range, in lsn order.
    pub events: Vec<Event>,
    /// The position after the last record examined (every record up to it was looked at).
    pub through: Position,
}

/// A failed condition: its index, key and the key's current version (`None`: absent).
pub(crate) type Failed = (u32, Vec<u8>, Option<Lsn>);

/// Checks `conditions` against the tables of the write transaction (so against every write
/// committed before it, and the earlier writes of the same group commit).
pub(crate) fn check_conditions(
    domain: &DomainId,
    t: &Tables<'_>,
    conditions: &[Condition],
) -> Result<Option<Failed>, StoreError> {
    for (i, c) in conditions.iter().enumerate() {
        let key = c.key();
        let first =
            t.kv.get(key)
                .or_storage(domain)?
                .map(|v| v.value().to_vec());
        let value = match first {
            Some(first) => Some(pieces::whole(
                domain,
                Some(&t.pieces),
                Owner::Kv,
                key,
                &first,
            )?),
            None => None,
        };
        let version = match &value {
            Some(_) => Some(Lsn(t
                .kv_version
                .get(key)
                .or_storage(domain)?
                .map_or(0, |v| v.value()))),
            None => None,
        };
        let holds = match c {
            Condition::Absent { .. } => value.is_none(),
            Condition::Version { version: want, .. } => version == Some(*want),
            Condition::Value { value: want, .. } => value.as_ref() == Some(want),
        };
        if !holds {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            return Ok(Some((index, key.to_vec(), version)));
        }
    }
    Ok(None)
}

fn version_in(
    id: &DomainId,
    versions: &redb::ReadOnlyTable<&'static [u8], u64>,
    key: &[u8],
) -> Result<Lsn, StoreError> {
    Ok(Lsn(versions
        .get(key)
        .or_storage(id)?
        .map_or(0, |v| v.value())))
}

impl Domain {
    /// Reads a user key with its version.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn get_entry(&self, key: &[u8]) -> Result<Read<Option<Entry>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(KV).or_storage(id)?;
            let Some(first) = table.get(key).or_storage(id)?.map(|v| v.value().to_vec()) else {
                return Ok(None);
            };
            let value = pieces::whole_in(id, txn, Owner::Kv, key, first)?;
            let versions = txn.open_table(KV_VERSION).or_storage(id)?;
            Ok(Some(Entry {
                key: key.to_vec(),
                value,
                version: version_in(id, &versions, key)?,
            }))
        })
    }

    /// One page of the keys of `range` after `after` (exclusive; `None`: from the start), in
    /// key order: at most `limit` entries and about `max_bytes` of keys and values (at least
    /// one entry), in one read transaction. With `keys_only` the values are left empty.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn scan(
        &self,
        range: &KeyRange,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
        keys_only: bool,
    ) -> Result<Read<ScanPage>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| scan_in(id, txn, range, after, limit, max_bytes, keys_only))
    }

    /// The changes of keys in `range` made by the records after `after`, reading at most
    /// `max_records` records (and about `max_bytes` of them) from the log, each checked as
    /// when shipped (CRC, lsn, no gap). `through` is the position after the last record
    /// read (`after`'s own when there is nothing newer).
    ///
    /// `after` must be in this replica's history: its chain is compared with the one held
    /// for its lsn.
    ///
    /// # Errors
    /// [`StoreError::LogTruncated`] when the log no longer holds the records after `after`;
    /// [`StoreError::NotInHistory`] when this replica's chain at `after.lsn` differs (or it
    /// has not reached it); [`StoreError::CorruptRecord`], [`StoreError::Corrupt`] or
    /// [`StoreError::Storage`].
    pub fn key_changes(
        &self,
        after: &Position,
        range: &KeyRange,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<KeyChanges, StoreError> {
        let id = self.id();
        match self.chain_at(after.lsn)? {
            Some(chain) if chain == after.chain => {}
            Some(_) => {
                return Err(StoreError::NotInHistory {
                    domain: id.clone(),
                    lsn: after.lsn,
                })
            }
            None => {
                let status = self.status()?;
                if after.lsn < status.log_start {
                    return Err(StoreError::LogTruncated {
                        domain: id.clone(),
                        lsn: after.lsn.next(),
                        log_start: status.log_start,
                    });
                }
                return Err(StoreError::NotInHistory {
                    domain: id.clone(),
                    lsn: after.lsn,
                });
            }
        }
        let entries = self.read_log(after.lsn.next(), max_records, max_bytes)?;
        let mut through = after.clone();
        let mut events = Vec::new();
        for e in entries {
            for op in &e.record.ops {
                match op {
                    Op::Put { key, value } if range.contains(key) => events.push(Event {
                        key: key.clone(),
                        value: Some(serde_bytes::ByteBuf::from(value.clone())),
                        lsn: e.record.lsn,
                    }),
                    Op::Delete { key } if range.contains(key) => events.push(Event {
                        key: key.clone(),
                        value: None,
                        lsn: e.record.lsn,
                    }),
                    _ => {}
                }
            }
            through = Position {
                epoch: e.record.epoch.clone(),
                lsn: e.record.lsn,
                chain: chain_next(through.chain, &e.bytes),
            };
        }
        Ok(KeyChanges { events, through })
    }

    /// Whether a record after `at` changed a key of `range` after `after` (the rest of a scan):
    /// `Some(false)` when the log proves nothing did (the scan can continue at `at`),
    /// `Some(true)` when one did, `None` when the log no longer tells or `at` is not in this
    /// replica's history.
    ///
    /// # Errors
    /// [`StoreError::CorruptRecord`], [`StoreError::Corrupt`] or [`StoreError::Storage`].
    pub fn changed_since(
        &self,
        at: &Position,
        range: &KeyRange,
        after: &[u8],
    ) -> Result<Option<bool>, StoreError> {
        let mut from = at.clone();
        loop {
            let changes = match self.key_changes(&from, range, 1024, 4 << 20) {
                Ok(c) => c,
                Err(StoreError::LogTruncated { .. } | StoreError::NotInHistory { .. }) => {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
            if changes.events.iter().any(|e| e.key.as_slice() > after) {
                return Ok(Some(true));
            }
            if changes.through.lsn == from.lsn {
                return Ok(Some(false));
            }
            from = changes.through;
        }
    }
}

fn scan_in(
    id: &DomainId,
    txn: &ReadTransaction,
    range: &KeyRange,
    after: Option<&[u8]>,
    limit: usize,
    max_bytes: usize,
    keys_only: bool,
) -> Result<ScanPage, StoreError> {
    use std::ops::Bound;
    let table = txn.open_table(KV).or_storage(id)?;
    let versions = txn.open_table(KV_VERSION).or_storage(id)?;
    let pieces = pieces::open(id, txn)?;
    let start: Bound<&[u8]> = match after {
        Some(a) if a >= range.start.as_slice() => Bound::Excluded(a),
        _ => Bound::Included(range.start.as_slice()),
    };
    let end: Bound<&[u8]> = match &range.end {
        Some(e) => Bound::Excluded(e.as_ref()),
        None => Bound::Unbounded,
    };
    if let (Bound::Excluded(s) | Bound::Included(s), Bound::Excluded(e)) = (start, end) {
        if s >= e {
            return Ok(ScanPage {
                entries: Vec::new(),
                more: false,
            });
        }
    }
    let limit = limit.max(1);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    for row in table.range::<&[u8]>((start, end)).or_storage(id)? {
        let (k, v) = row.or_storage(id)?;
        if entries.len() >= limit || (bytes >= max_bytes && !entries.is_empty()) {
            more = true;
            break;
        }
        let key = k.value().to_vec();
        let value = if keys_only {
            Vec::new()
        } else {
            pieces::whole(id, pieces.as_ref(), Owner::Kv, &key, v.value())?
        };
        bytes = bytes.saturating_add(key.len() + value.len());
        let version = version_in(id, &versions, &key)?;
        entries.push(Entry {
            key,
            value,
            version,
        });
    }
    Ok(ScanPage { entries, more })
}
