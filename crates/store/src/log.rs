//! Reading the change log for shipping and inspection, and `verify`.

use redb::{ReadTransaction, ReadableTable};
use sha2::{Digest as _, Sha256};

use super::domain::Domain;
use super::error::{StorageResult, StoreError};
use super::pieces::{self, Owner};
use super::tables::{decode_policy, CRL, CRLS, ISSUER, KV, POLICY, POLICY_CONTENT};
use domsync_proto::codec::{chain_next, decode_record, CodecError};
use domsync_proto::model::{DigestTable, StateDigest};
use domsync_proto::model::{DomainId, Lsn, Position, Record};

/// A record read from the log, checked: its CRC held and it sits at its own lsn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The decoded record.
    pub record: Record,
    /// Its encoded frame, exactly as stored (what is shipped to standbys).
    pub bytes: Vec<u8>,
}

/// A record in the collision archive: written by a fenced active after the fork point of the
/// new active's history. Its epoch, lsn, time and ops are in `record`; write its ops again on
/// the current active to keep them, or discard it with [`Domain::discard_collision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedRecord {
    /// Archive id (stable until discarded).
    pub id: u64,
    /// The decoded record.
    pub record: Record,
    /// Its encoded frame, as it was written.
    pub bytes: Vec<u8>,
}

/// A stored record with the result of decoding and checking it.
pub type InspectedRecord = (Lsn, Result<Record, CodecError>);

/// One problem found by [`Domain::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The log record concerned, if the fault is in the log.
    pub lsn: Option<Lsn>,
    /// What is wrong, in one line.
    pub what: String,
}

/// The result of [`Domain::verify`]: empty `faults` means every check held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The domain checked.
    pub domain: DomainId,
    /// The position the check ran at.
    pub position: Position,
    /// First lsn retained in the log.
    pub log_start: Lsn,
    /// Records read and checked.
    pub records: u64,
    /// Digest kept in the metadata.
    pub digest_stored: StateDigest,
    /// Digest recomputed from the tables.
    pub digest_computed: StateDigest,
    /// Everything found wrong, in log order first (capped at 100).
    pub faults: Vec<Fault>,
}

const MAX_FAULTS: usize = 100;

impl VerifyReport {
    /// True when no fault was found.
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }

    fn fault(&mut self, lsn: Option<Lsn>, what: String) {
        if self.faults.len() < MAX_FAULTS {
            self.faults.push(Fault { lsn, what });
        }
    }
}

/// Recomputes the content digest from the stored rows.
pub(crate) fn compute_digest(
    txn: &ReadTransaction,
    id: &DomainId,
) -> Result<StateDigest, StoreError> {
    let mut d = StateDigest::default();
    let pieces = pieces::open(id, txn)?;
    for entry in txn.open_table(KV).or_storage(id)?.iter().or_storage(id)? {
        let (k, v) = entry.or_storage(id)?;
        let value = pieces::whole(id, pieces.as_ref(), Owner::Kv, k.value(), v.value())?;
        d.add(DigestTable::Kv, k.value(), &value);
    }
    for entry in txn
        .open_table(POLICY)
        .or_storage(id)?
        .iter()
        .or_storage(id)?
    {
        let (k, v) = entry.or_storage(id)?;
        d.add(DigestTable::Policy, k.value().as_bytes(), v.value());
    }
    for entry in txn.open_table(CRL).or_storage(id)?.iter().or_storage(id)? {
        let (k, v) = entry.or_storage(id)?;
        d.add(DigestTable::Crl, k.value().as_bytes(), v.value());
    }
    for (table, tag) in [(ISSUER, DigestTable::Issuer), (CRLS, DigestTable::HeldCrl)] {
        for entry in txn
            .open_table(table)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            d.add(tag, k.value(), v.value());
        }
    }
    Ok(d)
}

impl Domain {
    /// The records in the collision archive, oldest first: records this replica held after a
    /// fork point of the active's history, set aside instead of dropped (invariant 5).
    ///
    /// # Errors
    /// [`StoreError::CorruptRecord`] or [`StoreError::Storage`].
    pub fn collisions(&self) -> Result<Vec<ArchivedRecord>, StoreError> {
        Ok(self.archive()?.0)
    }

    /// The collision archive: its readable records, oldest first, and the ids of entries
    /// that fail their CRC (reported by [`Domain::verify`] and counted in status; they can be
    /// discarded and never stop the replica from following).
    ///
    /// # Errors
    /// [`StoreError::Storage`].
    pub fn archive(&self) -> Result<(Vec<ArchivedRecord>, Vec<u64>), StoreError> {
        let id = self.id();
        let txn = self.begin_read()?;
        let table = txn.open_table(super::tables::COLLISIONS).or_storage(id)?;
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        for entry in table.iter().or_storage(id)? {
            let (k, v) = entry.or_storage(id)?;
            let bytes = v.value().to_vec();
            match decode_record(&bytes) {
                Ok(record) => out.push(ArchivedRecord {
                    id: k.value(),
                    record,
                    bytes,
                }),
                Err(e) => {
                    tracing::warn!(domain = %id, archive_id = k.value(), error = %e, "corrupt record in the collision archive: `domsync collisions discard` removes it");
                    corrupt.push(k.value());
                }
            }
        }
        Ok((out, corrupt))
    }

    /// Removes record `id` from the collision archive (once it was written again on the
    /// active, or judged not worth keeping). Returns false when no such record is archived.
    ///
    /// # Errors
    /// [`StoreError::Storage`].
    pub fn discard_collision(&self, id: u64) -> Result<bool, StoreError> {
        let (records, corrupt) = self.archive()?;
        let known = records.iter().any(|a| a.id == id) || corrupt.contains(&id);
        if known {
            self.submit_work(super::writer::Work::Discard(id))?;
        }
        Ok(known)
    }

    /// The chain after `lsn`, when the retained log (or the position) still tells it; the
    /// record read for it is CRC-checked.
    ///
    /// # Errors
    /// [`StoreError::CorruptRecord`] or [`StoreError::Storage`].
    pub fn chain_at(&self, lsn: Lsn) -> Result<Option<u32>, StoreError> {
        let id = self.id();
        let txn = self.begin_read()?;
        let meta = self.meta_in(&txn)?;
        if lsn == meta.position.lsn {
            return Ok(Some(meta.position.chain));
        }
        if lsn.next() == meta.log_start {
            return Ok(Some(meta.log_base_chain));
        }
        if lsn < meta.log_start || lsn > meta.position.lsn {
            return Ok(None);
        }
        let next = lsn.next();
        match self.log().read(next, next, 1, 0)?.into_iter().next() {
            Some((_, bytes)) => Ok(Some(check_record(id, next, &bytes)?.prev_chain)),
            None => Ok(None),
        }
    }

    /// Reads up to `max_records` records (and about `max_bytes`, at least one record) from
    /// `from` on, checking each: CRC, lsn in place, no gap. A corrupt record is reported as
    /// [`StoreError::CorruptRecord`] with its lsn, never returned.
    ///
    /// # Errors
    /// [`StoreError::LogTruncated`] when `from` is below the retained log,
    /// [`StoreError::CorruptRecord`], [`StoreError::Corrupt`] or [`StoreError::Storage`].
    pub fn read_log(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let id = self.id();
        let txn = self.begin_read()?;
        let meta = self.meta_in(&txn)?;
        let from = from.max(Lsn(1));
        if from < meta.log_start {
            return Err(StoreError::LogTruncated {
                domain: id.clone(),
                lsn: from,
                log_start: meta.log_start,
            });
        }
        drop(txn);
        let mut out = Vec::new();
        let mut expected = from;
        for (lsn, bytes) in self
            .log()
            .read(from, meta.position.lsn, max_records, max_bytes)?
        {
            if lsn != expected {
                return Err(StoreError::Corrupt {
                    domain: id.clone(),
                    what: format!("log record {expected} is missing"),
                });
            }
            let record = check_record(id, expected, &bytes)?;
            out.push(LogEntry { record, bytes });
            expected = expected.next();
        }
        if out.is_empty() && from <= meta.position.lsn && max_records > 0 {
            return Err(StoreError::Corrupt {
                domain: id.clone(),
                what: format!("log record {from} is missing"),
            });
        }
        Ok(out)
    }

    /// Reads up to `limit` stored records from `from` on without refusing corrupt ones: each
    /// comes with its decoding result, for inspection (`domsync log show`).
    ///
    /// # Errors
    /// [`StoreError::Storage`].
    pub fn inspect_log(&self, from: Lsn, limit: usize) -> Result<Vec<InspectedRecord>, StoreError> {
        let txn = self.begin_read()?;
        let meta = self.meta_in(&txn)?;
        drop(txn);
        let log = self.log();
        let from = from.max(meta.log_start);
        let end = Lsn(log.next().0.saturating_sub(1));
        Ok(log
            .read(from, end, limit, usize::MAX)
            .map_err(|e| e.at(self.path()))?
            .into_iter()
            .map(|(lsn, bytes)| (lsn, decode_record(&bytes)))
            .collect())
    }

    /// Checks the whole replica in one read transaction: every retained record's CRC, its lsn
    /// and the chain from the start of the log to the position; the content digest recomputed
    /// from the tables against the stored one; every policy package against its SHA-256.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`] (metadata unreadable). Faults in the
    /// data are reported in the [`VerifyReport`], not as errors.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let id = self.id();
        let txn = self.begin_read()?;
        let meta = self.meta_in(&txn)?;
        let mut report = VerifyReport {
            domain: id.clone(),
            position: meta.position.clone(),
            log_start: meta.log_start,
            records: 0,
            digest_stored: meta.digest,
            digest_computed: StateDigest::default(),
            faults: Vec::new(),
        };
        let log = self.log();
        let mut expected = meta.log_start;
        let mut chain = meta.log_base_chain;
        let mut at = meta.log_start;
        while at <= meta.position.lsn {
            let chunk = match log.read(at, meta.position.lsn, 4096, 16 << 20) {
                Ok(chunk) => chunk,
                Err(e) => {
                    report.fault(Some(at), format!("log unreadable from lsn {at}: {e}"));
                    break;
                }
            };
            let Some((last, _)) = chunk.last() else { break };
            at = last.next();
            for (lsn, bytes) in chunk {
                if lsn != expected {
                    report.fault(
                        Some(expected),
                        format!("records {expected} to {} are missing", lsn.0 - 1),
                    );
                }
                expected = lsn.next();
                report.records += 1;
                match decode_record(&bytes) {
                    Ok(record) => {
                        if record.lsn != lsn {
                            report.fault(
                                Some(lsn),
                                format!("record stored at lsn {lsn} says lsn {}", record.lsn),
                            );
                        }
                        if record.prev_chain != chain {
                            report.fault(Some(lsn), format!("chain broken: record {lsn} follows chain {:08x}, the log before it ends at {chain:08x}", record.prev_chain));
                        }
                        chain = chain_next(record.prev_chain, &bytes);
                    }
                    Err(e) => {
                        report.fault(Some(lsn), format!("record {lsn} is corrupt: {e}"));
                        chain = chain_next(chain, &bytes);
                    }
                }
            }
        }
        if expected <= meta.position.lsn {
            report.fault(
                Some(expected),
                format!("records {expected} to {} are missing", meta.position.lsn),
            );
        } else if chain != meta.position.chain && report.faults.is_empty() {
            report.fault(
                Some(meta.position.lsn),
                format!(
                    "chain at lsn {} is {chain:08x}, the position says {:08x}",
                    meta.position.lsn, meta.position.chain
                ),
            );
        }
        for archived in self.archive()?.1 {
            report.fault(
                None,
                format!("collision archive record {archived} is corrupt: inspect it with `domsync collisions list`, then `domsync collisions discard` it"),
            );
        }
        report.digest_computed = compute_digest(&txn, id)?;
        if report.digest_computed != report.digest_stored {
            report.fault(None, format!("state digest {} differs from the recorded {}: table data changed outside a commit", report.digest_computed, report.digest_stored));
        }
        let contents = txn.open_table(POLICY_CONTENT).or_storage(id)?;
        let pieces = pieces::open(id, &txn)?;
        for entry in txn
            .open_table(POLICY)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            let name = k.value();
            match decode_policy(id, name, v.value()) {
                Ok(info) => {
                    let content = match contents.get(name).or_storage(id)? {
                        Some(first) => pieces::whole(
                            id,
                            pieces.as_ref(),
                            Owner::PolicyContent,
                            name.as_bytes(),
                            first.value(),
                        )?,
                        None => Vec::new(),
                    };
                    let sha: [u8; 32] = Sha256::digest(&content).into();
                    if sha != info.sha256 {
                        report.fault(
                            None,
                            format!("content of policy {name} does not match its SHA-256"),
                        );
                    }
                }
                Err(e) => report.fault(None, e.to_string()),
            }
        }
        Ok(report)
    }
}

fn check_record(id: &DomainId, lsn: Lsn, bytes: &[u8]) -> Result<Record, StoreError> {
    let record = decode_record(bytes).map_err(|source| {
        tracing::error!(domain = %id, %lsn, error = %source, "corrupt record in the log");
        StoreError::CorruptRecord {
            domain: id.clone(),
            lsn,
            source,
        }
    })?;
    if record.lsn != lsn {
        return Err(StoreError::Corrupt {
            domain: id.clone(),
            what: format!("log record stored at lsn {lsn} says lsn {}", record.lsn),
        });
    }
    Ok(record)
}
