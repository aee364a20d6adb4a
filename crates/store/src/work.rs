//! What each piece of work does inside the writer's transaction: check and write a client's
//! ops, apply a shipped record, promote, fence, append to the log, truncate it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use super::apply::apply_ops;
use super::entries::check_conditions;
use super::error::StoreError;
use super::meta::DomainMeta;
use super::tables::Tables;
use domsync_proto::app::Condition;
use domsync_proto::codec::{chain_next, decode_record, encode_record, CodecError};
use domsync_proto::model::{
    CrlError, DomainId, Epoch, HeldCrl, HistoryEntry, IssuerCert, Lsn, NodeId, Op, Position,
    Record, Role,
};

use super::writer::*;

impl Writer {
    /// The highest epoch `Domain::demote` was told of (its durable record may still be
    /// queued behind this batch).
    pub(super) fn fence_epoch(&self) -> Option<Epoch> {
        self.counters
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True when a higher epoch than the replica's own was seen for the domain.
    pub(super) fn fenced(&self, meta: &DomainMeta) -> bool {
        self.counters
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|seen| *seen > meta.epoch)
    }

    /// Makes a standby active in a new epoch above every epoch it has seen; the new epoch and
    /// its history entry are committed before any write can use them.
    pub(super) fn promote(&self, meta: &mut DomainMeta, given: Option<Epoch>) -> Outcome {
        if meta.role != Role::Standby {
            return Err(StoreError::NotStandby {
                domain: self.domain.clone(),
            });
        }
        if meta.uid.is_none() {
            return Err(StoreError::InvalidWrite {
                domain: self.domain.clone(),
                reason: "this replica never synchronized and holds nothing; it cannot be promoted (resync it from the active first)".into(),
            });
        }
        let seen = self.fence_epoch().map_or(0, |e| e.term);
        let epoch = match given {
            // Above everything seen, or exactly the candidate epoch this node recorded for
            // itself before fencing the other replicas (a promotion's fencing round).
            Some(e)
                if e.node == self.node
                    && (e > meta.epoch && e.term > seen || e == meta.epoch && e.term >= seen) =>
            {
                e
            }
            Some(e) => {
                return Err(StoreError::InvalidWrite {
                    domain: self.domain.clone(),
                    reason: format!(
                        "epoch {e} handed over is not a new epoch of this node above {}",
                        meta.epoch
                    ),
                })
            }
            None => match meta.epoch.term.max(seen).checked_add(1) {
                Some(term) => Epoch {
                    term,
                    node: self.node.clone(),
                },
                None => {
                    return Err(StoreError::InvalidWrite {
                        domain: self.domain.clone(),
                        reason: format!("the epoch term cannot be raised above {}", meta.epoch),
                    })
                }
            },
        };
        meta.history.push(HistoryEntry {
            epoch: epoch.clone(),
            first_lsn: meta.position.lsn.next(),
        });
        meta.epoch = epoch;
        meta.role = Role::Active;
        Self::committed(meta)
    }

    /// Checks a write without changing anything.
    pub(super) fn check_write(
        &self,
        t: &Tables<'_>,
        meta: &DomainMeta,
        ops: &mut [Op],
    ) -> Result<Option<StoreError>, StoreError> {
        if meta.role != Role::Active || self.fenced(meta) {
            // The newest active known: the node of a fence above our own epoch, if any.
            let active = match self.fence_epoch() {
                Some(f) if f > meta.epoch && f.node != self.node => Some(f.node),
                _ => meta.known_active(&self.node),
            };
            return Ok(Some(StoreError::NotActive {
                domain: self.domain.clone(),
                active,
            }));
        }
        if ops.is_empty() {
            return Ok(Some(StoreError::InvalidWrite {
                domain: self.domain.clone(),
                reason: "a write needs at least one operation".into(),
            }));
        }
        let mut crl_issuers: HashSet<Vec<u8>> = HashSet::new();
        for op in ops.iter_mut() {
            if let Err(reason) = op.check() {
                return Ok(Some(StoreError::InvalidWrite {
                    domain: self.domain.clone(),
                    reason,
                }));
            }
            let issuer = match op {
                Op::PutCrl { crl, .. } => Some(crl.issuer.der().to_vec()),
                Op::RemoveCrl { issuer, .. } => Some(issuer.der().to_vec()),
                _ => None,
            };
            if let Some(issuer) = issuer {
                if !crl_issuers.insert(issuer) {
                    return Ok(self.refusal(
                        "one write may change the CRLs of an issuer once: send the CRLs of one issuer in separate writes".into(),
                    ));
                }
            }
            let refusal = match op {
                Op::PutLegacyCrl(crl) => Some(StoreError::InvalidWrite {
                    domain: self.domain.clone(),
                    reason: format!("CRL of {} sent in the format of an earlier release, which stored CRLs unverified: upload it again with this release's `domsync crl put`", crl.issuer),
                }),
                Op::AddIssuer(cert) => match IssuerCert::from_der(&cert.der) {
                    Ok(parsed) if parsed == *cert => None,
                    Ok(_) => Some(self.invalid("the issuer certificate's fields do not match its DER")),
                    Err(source) => Some(StoreError::Crl {
                        domain: self.domain.clone(),
                        source,
                    }),
                },
                Op::RemoveIssuer { subject, sha256 } => {
                    let held = t.issuers_named(&self.domain, subject)?;
                    (!held.iter().any(|c| c.sha256 == *sha256)).then(|| {
                        self.invalid(&format!(
                            "no issuer certificate {} of {subject} is held; `domsync issuer list` shows them",
                            hex8(sha256)
                        ))
                    })
                }
                Op::PutCrl { crl, allow_stale } => self.check_crl(t, crl, *allow_stale)?,
                Op::RemoveCrl { issuer, number } => {
                    let held = t.crls_of(&self.domain, issuer)?;
                    (!held.iter().any(|c| c.number == *number)).then(|| {
                        self.invalid(&format!(
                            "no CRL number {number} of {issuer} is held; `domsync crl list` shows them"
                        ))
                    })
                }
                _ => None,
            };
            if let Some(refusal) = refusal {
                return Ok(Some(refusal));
            }
        }
        Ok(None)
    }

    fn invalid(&self, reason: &str) -> StoreError {
        StoreError::InvalidWrite {
            domain: self.domain.clone(),
            reason: reason.to_owned(),
        }
    }

    fn refusal(&self, reason: String) -> Option<StoreError> {
        Some(StoreError::InvalidWrite {
            domain: self.domain.clone(),
            reason,
        })
    }

    /// The checks of a CRL upload, in the transaction of the write: the fields are those of
    /// its DER; verified against a held issuer certificate of its
    /// issuer name (recorded in `verified_by`), or none held and the domain accepts unverified
    /// CRLs; not stale unless allowed; a base above the held base; a delta beside a held base it applies to, above it
    /// and above the held delta of that base.
    fn check_crl(
        &self,
        t: &Tables<'_>,
        crl: &mut HeldCrl,
        allow_stale: bool,
    ) -> Result<Option<StoreError>, StoreError> {
        let crl_error = |source: CrlError| StoreError::Crl {
            domain: self.domain.clone(),
            source,
        };
        let mut parsed = match HeldCrl::from_der(&crl.der) {
            Ok(p) => p,
            Err(e) => return Ok(Some(crl_error(e))),
        };
        parsed.verified_by = crl.verified_by;
        if parsed != *crl {
            return Ok(Some(self.invalid("the CRL's fields do not match its DER")));
        }
        let certs = t.issuers_named(&self.domain, &crl.issuer)?;
        crl.verified_by = None;
        if certs.is_empty() {
            if !self.counters.accept_unverified_crls.load(Ordering::Relaxed) {
                return Ok(Some(crl_error(CrlError::UnknownIssuer {
                    issuer: crl.issuer.to_string(),
                })));
            }
        } else {
            let mut last = String::new();
            for cert in &certs {
                match crl.verify(cert) {
                    Ok(()) => {
                        crl.verified_by = Some(cert.sha256);
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if crl.verified_by.is_none() {
                return Ok(Some(crl_error(CrlError::BadSignature {
                    issuer: crl.issuer.to_string(),
                    tried: certs.len(),
                    reason: last,
                })));
            }
        }
        let now = i64::try_from(now_micros() / 1_000_000).unwrap_or(i64::MAX);
        if !allow_stale && crl.is_stale(now) {
            return Ok(Some(crl_error(crl.stale_error())));
        }
        let held = t.crls_of(&self.domain, &crl.issuer)?;
        let base = held.iter().find(|c| c.delta_base.is_none());
        let (rival, what) = match &crl.delta_base {
            None => (base, "base CRL"),
            Some(base_number) => {
                let Some(base) = base.filter(|b| b.number >= *base_number) else {
                    return Ok(Some(StoreError::CrlDeltaWithoutBase {
                        domain: self.domain.clone(),
                        issuer: crl.issuer.to_string(),
                        number: crl.number.clone(),
                        base: base_number.clone(),
                    }));
                };
                if crl.number <= base.number {
                    return Ok(Some(StoreError::CrlOutdated {
                        domain: self.domain.clone(),
                        issuer: format!("{} (delta; the held base)", crl.issuer),
                        stored: base.number.clone(),
                        offered: crl.number.clone(),
                    }));
                }
                (
                    held.iter()
                        .find(|c| c.delta_base.as_ref() == Some(base_number)),
                    "delta CRL",
                )
            }
        };
        if let Some(rival) = rival {
            if crl.number < rival.number {
                return Ok(Some(StoreError::CrlOutdated {
                    domain: self.domain.clone(),
                    issuer: format!("{} ({what})", crl.issuer),
                    stored: rival.number.clone(),
                    offered: crl.number.clone(),
                }));
            }
            if crl.number == rival.number && crl.der != rival.der {
                return Ok(Some(StoreError::CrlConflict {
                    domain: self.domain.clone(),
                    issuer: crl.issuer.to_string(),
                    number: crl.number.clone(),
                }));
            }
        }
        Ok(None)
    }

    pub(super) fn write(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        mut ops: Vec<Op>,
    ) -> Result<Outcome, StoreError> {
        if let Some(refusal) = self.check_write(t, meta, &mut ops)? {
            return Ok(Err(refusal));
        }
        let lsn = meta.position.lsn.next();
        let record = Record {
            epoch: meta.epoch.clone(),
            lsn,
            time: now_micros(),
            prev_chain: meta.position.chain,
            ops,
        };
        let bytes = match encode_record(&record) {
            Ok(b) => b,
            Err(e) => {
                return Ok(self.refuse(format!("the transaction does not fit in one record: {e}")))
            }
        };
        self.append(t, meta, &record, &bytes)?;
        Ok(Self::committed(meta))
    }

    /// [`Writer::write`] when every condition holds against the tables as this transaction
    /// sees them; otherwise [`StoreError::Conflict`] and nothing is written. A replica that
    /// is not active answers `NotActive` first, whatever the conditions.
    pub(super) fn write_if(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        conditions: &[Condition],
        ops: Vec<Op>,
    ) -> Result<Outcome, StoreError> {
        if meta.role != Role::Active || self.fenced(meta) {
            return self.write(t, meta, ops);
        }
        if let Some((index, key, current)) = check_conditions(&self.domain, t, conditions)? {
            return Ok(Err(StoreError::Conflict {
                domain: self.domain.clone(),
                index,
                key,
                current,
            }));
        }
        self.write(t, meta, ops)
    }

    /// Applies one shipped record. With `from`, the node that shipped it, the record is
    /// refused unless `from` is the node of the highest epoch recorded here (counting the
    /// record's own): once a standby recorded a newer epoch (fencing), nothing of a lower
    /// active is applied, even a batch already on its way (invariant 1).
    pub(super) fn apply(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        bytes: &[u8],
        from: Option<(&NodeId, &Epoch)>,
    ) -> Result<Outcome, StoreError> {
        let domain = self.domain.clone();
        let expected = meta.position.lsn.next();
        if meta.role != Role::Standby {
            return Ok(Err(StoreError::NotStandby { domain }));
        }
        let record = match decode_record(bytes) {
            Ok(r) => r,
            Err(source) => {
                tracing::warn!(domain = %domain, lsn = %expected, error = %source, "corrupt record refused");
                return Ok(Err(StoreError::CorruptRecord {
                    domain,
                    lsn: expected,
                    source,
                }));
            }
        };
        if record.lsn != expected {
            return Ok(Err(StoreError::OutOfOrder {
                domain,
                expected,
                got: record.lsn,
            }));
        }
        if record.prev_chain != meta.position.chain {
            return Ok(Err(StoreError::ChainMismatch {
                domain,
                lsn: record.lsn,
                expected: meta.position.chain,
                found: record.prev_chain,
            }));
        }
        if let Some((from, since)) = from {
            // Nothing from an active below an epoch learned from a peer since the stream was
            // accepted (`since`: the epoch its `Follow` carried): once such an epoch is
            // recorded (`Domain::demote`), only its node is listened to, and a batch of the
            // old active still on its way is refused. Records of older epochs relayed by the
            // active that accepted the stream are taken: it accepted a `Follow` carrying
            // `since`, so its own epoch is not below it.
            if let Some(fence) = self.fence_epoch() {
                if fence > *since && fence.node != *from {
                    return Ok(Err(StoreError::Fenced {
                        domain,
                        from: from.clone(),
                        epoch: fence,
                    }));
                }
            }
        }
        if meta.position.lsn > Lsn::ZERO && record.epoch < meta.position.epoch {
            return Ok(Err(StoreError::StaleEpoch {
                domain,
                lsn: record.lsn,
                record: record.epoch,
                position: meta.position.epoch.clone(),
            }));
        }
        if let Some(bad) = record.ops.iter().find_map(|op| op.check().err()) {
            return Ok(Err(StoreError::CorruptRecord {
                domain,
                lsn: record.lsn,
                source: CodecError::Payload { reason: bad },
            }));
        }
        self.append(t, meta, &record, bytes)?;
        Ok(Self::committed(meta))
    }

    /// Applies a checked record to the tables and queues its frame for the log, moving the
    /// position. The frame is appended and synced before the transaction commits.
    pub(super) fn append(
        &self,
        t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        record: &Record,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        fold(&self.domain, t, meta, record, bytes)?;
        t.frames.push(bytes.to_vec());
        Ok(())
    }

    pub(super) fn truncate(
        &self,
        _t: &mut Tables<'_>,
        meta: &mut DomainMeta,
        below: Lsn,
    ) -> Result<Outcome, StoreError> {
        let end = meta.position.lsn.next();
        let below = below.min(end);
        if below <= meta.log_start {
            return Ok(Self::committed(meta));
        }
        let base_chain = if below == end {
            meta.position.chain
        } else {
            let Some((_, bytes)) = self.log.read(below, below, 1, 0)?.into_iter().next() else {
                return Ok(Err(StoreError::Corrupt {
                    domain: self.domain.clone(),
                    what: format!("log record {below} is missing"),
                }));
            };
            match decode_record(&bytes) {
                Ok(r) => r.prev_chain,
                Err(source) => {
                    return Ok(Err(StoreError::CorruptRecord {
                        domain: self.domain.clone(),
                        lsn: below,
                        source,
                    }))
                }
            }
        };
        // The bytes of the records dropped, read in bounded pieces.
        let mut removed = 0u64;
        let mut at = meta.log_start;
        while at < below {
            let chunk = self.log.read(at, Lsn(below.0 - 1), 4096, 16 << 20)?;
            let Some((last, _)) = chunk.last() else { break };
            at = last.next();
            removed += chunk.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        }
        meta.log_bytes = meta.log_bytes.saturating_sub(removed);
        meta.log_start = below;
        meta.log_base_chain = base_chain;
        Ok(Self::committed(meta))
    }
}

/// Folds a checked record into the tables and the metadata (the position, the log size and
/// the history): what an append does to the state, and what replaying the log after a crash
/// repeats.
pub(crate) fn fold(
    domain: &DomainId,
    t: &mut Tables<'_>,
    meta: &mut DomainMeta,
    record: &Record,
    bytes: &[u8],
) -> Result<(), StoreError> {
    apply_ops(domain, t, record, &mut meta.digest)?;
    meta.log_bytes += bytes.len() as u64;
    meta.position = Position {
        epoch: record.epoch.clone(),
        lsn: record.lsn,
        chain: chain_next(record.prev_chain, bytes),
    };
    meta.note_epoch(&record.epoch, record.lsn);
    Ok(())
}

fn hex8(sha256: &[u8; 32]) -> String {
    sha256[..8].iter().map(|b| format!("{b:02x}")).collect()
}
