//! Reads of a domain: every read is one read transaction and reports the position it was
//! served at (invariant 7).

use redb::ReadableTable;
use sha2::{Digest as _, Sha256};

use super::error::{StorageResult, StoreError};
use super::pieces::{self, Owner};
use super::tables::{
    decode_crl, decode_held, decode_policy, CRL, CRLS, ISSUER, KV, POLICY, POLICY_CONTENT,
};
use std::collections::BTreeSet;

/// A domain's trust material: issuer certificates, held CRLs, legacy CRLs (see
/// [`Reader::trust`]).
pub type Trust = (Vec<IssuerCert>, Vec<HeldCrl>, Vec<Crl>);

use domsync_proto::model::{
    Crl, DistinguishedName, DomainId, Epoch, HeldCrl, IssuerCert, IssuerKey, Policy, PolicyInfo,
    Position, Role,
};

use super::domain::Domain;

/// A value read from a domain, with the committed state it was read from: every read runs in
/// one read transaction, so `value` and `position` belong together (invariant 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    /// What was read.
    pub value: T,
    /// The position of the state it was read from.
    pub position: Position,
    /// The role of this replica when it was read.
    pub role: Role,
    /// The highest epoch this replica had seen when it was read.
    pub epoch: Epoch,
}

/// A user key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A policy package open for reading in pieces (see [`Domain::policy_reader`]).
pub struct PolicyReader {
    domain: DomainId,
    /// Name, version, size and digest of the package.
    pub info: PolicyInfo,
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pieces: Option<pieces::PiecesTable>,
    _open: OpenReader,
}

/// Counts a [`PolicyReader`] (and so its read snapshot) as open until it is dropped.
struct OpenReader(std::sync::Arc<super::writer::Counters>);

impl OpenReader {
    fn new(counters: &std::sync::Arc<super::writer::Counters>) -> OpenReader {
        counters
            .policy_readers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenReader(std::sync::Arc::clone(counters))
    }
}

impl Drop for OpenReader {
    fn drop(&mut self) {
        self.0
            .policy_readers
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for PolicyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyReader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl PolicyReader {
    /// Up to `len` bytes of the content from `offset` (empty at or past the end).
    ///
    /// # Errors
    /// [`StoreError::Storage`], or [`StoreError::Corrupt`] when the content is missing.
    pub fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        let id = &self.domain;
        let value = self
            .table
            .get(self.info.name.as_str())
            .or_storage(id)?
            .ok_or_else(|| StoreError::Corrupt {
                domain: id.clone(),
                what: format!("content of policy {} is missing", self.info.name),
            })?;
        pieces::read_range(
            id,
            self.pieces.as_ref(),
            Owner::PolicyContent,
            self.info.name.as_bytes(),
            value.value(),
            offset,
            len,
        )
    }
}

impl Domain {
    /// Reads a user key.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn get(&self, key: &[u8]) -> Result<Read<Option<Vec<u8>>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(KV).or_storage(id)?;
            let Some(first) = table.get(key).or_storage(id)?.map(|v| v.value().to_vec()) else {
                return Ok(None);
            };
            pieces::whole_in(id, txn, Owner::Kv, key, first).map(Some)
        })
    }

    /// Lists user keys and values whose key starts with `prefix`, in key order, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn list(&self, prefix: &[u8], limit: usize) -> Result<Read<Vec<KeyValue>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(KV).or_storage(id)?;
            let pieces = pieces::open(id, txn)?;
            let mut out = Vec::new();
            for entry in table.range(prefix..).or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                if !k.value().starts_with(prefix) || out.len() >= limit {
                    break;
                }
                let value = pieces::whole(id, pieces.as_ref(), Owner::Kv, k.value(), v.value())?;
                out.push((k.value().to_vec(), value));
            }
            Ok(out)
        })
    }

    /// Reads a policy package; its content is checked against its SHA-256 first.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the content does not match its digest, or
    /// [`StoreError::Storage`].
    pub fn policy(&self, name: &str) -> Result<Read<Option<Policy>>, StoreError> {
        let read = self.policy_reader(name)?;
        let value = match read.value {
            None => None,
            Some(reader) => {
                let size = usize::try_from(reader.info.size).unwrap_or(usize::MAX);
                let content = reader.read_at(0, size)?;
                if <[u8; 32]>::from(Sha256::digest(&content)) != reader.info.sha256 {
                    return Err(StoreError::Corrupt {
                        domain: self.inner.id.clone(),
                        what: format!("content of policy {name} does not match its SHA-256"),
                    });
                }
                Some(Policy {
                    info: reader.info,
                    content,
                })
            }
        };
        Ok(Read {
            value,
            position: read.position,
            role: read.role,
            epoch: read.epoch,
        })
    }

    /// Opens a policy package for reading its content piece by piece, all from one read
    /// transaction (one committed state, however long the reading takes): what a server
    /// streaming large packages uses to keep its memory per reader to one piece.
    ///
    /// The content is not checked here; hash the pieces and compare with `info.sha256`.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn policy_reader(&self, name: &str) -> Result<Read<Option<PolicyReader>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let meta = txn.open_table(POLICY).or_storage(id)?;
            let Some(row) = meta.get(name).or_storage(id)? else {
                return Ok(None);
            };
            let info = decode_policy(id, name, row.value())?;
            let table = txn.open_table(POLICY_CONTENT).or_storage(id)?;
            Ok(Some(PolicyReader {
                domain: id.clone(),
                info,
                table,
                pieces: pieces::open(id, txn)?,
                _open: OpenReader::new(&self.inner.counters),
            }))
        })
    }

    /// Policy readers ([`Domain::policy_reader`]) open now. Each holds a read snapshot,
    /// which keeps the pages of its committed state from being reused: a server streaming
    /// packages checks with this that a reader it gave up on is gone.
    pub fn policy_readers_open(&self) -> usize {
        self.inner
            .counters
            .policy_readers
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lists the installed policy packages (without content).
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn policies(&self) -> Result<Read<Vec<PolicyInfo>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(POLICY).or_storage(id)?;
            let mut out = Vec::new();
            for entry in table.iter().or_storage(id)? {
                let (k, v) = entry.or_storage(id)?;
                out.push(decode_policy(id, k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Reads the base CRL of an issuer named by its RFC 4514 text (as [`Crl::issuer`] shows
    /// it); a CRL stored by an earlier release is found by the text it was stored under.
    ///
    /// # Errors
    /// [`StoreError::AmbiguousIssuer`] when two held names render as this text (ask by DER),
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn crl(&self, issuer: &str) -> Result<Read<Option<Crl>>, StoreError> {
        self.crl_of(&IssuerKey::Text(issuer.to_owned()), false)
    }

    /// Reads the base CRL (or with `delta`, the newest delta CRL) of an issuer named by text
    /// or DER, in the form gateways receive.
    ///
    /// # Errors
    /// As [`Reader::crl`].
    pub fn crl_of(&self, issuer: &IssuerKey, delta: bool) -> Result<Read<Option<Crl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let held = held_rows(id, txn)?;
            let names: BTreeSet<&DistinguishedName> = held
                .iter()
                .map(|c| &c.issuer)
                .filter(|n| issuer.matches(n))
                .collect();
            if names.len() > 1 {
                return Err(StoreError::AmbiguousIssuer {
                    domain: id.clone(),
                    issuer: issuer.to_string(),
                });
            }
            let found = held
                .iter()
                .filter(|c| issuer.matches(&c.issuer) && c.delta_base.is_some() == delta)
                .max_by(|a, b| a.number.cmp(&b.number))
                .map(HeldCrl::served);
            if found.is_some() || names.len() == 1 || delta {
                return Ok(found);
            }
            let IssuerKey::Text(text) = issuer else {
                return Ok(None);
            };
            let table = txn.open_table(CRL).or_storage(id)?;
            match table.get(text.as_str()).or_storage(id)? {
                Some(v) => decode_crl(id, text, v.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Lists the base CRLs held and the legacy ones (stored by an earlier release), in the
    /// form gateways receive; delta CRLs are in [`Reader::held_crls`].
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn crls(&self) -> Result<Read<Vec<Crl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let mut out: Vec<Crl> = held_rows(id, txn)?
                .iter()
                .filter(|c| c.delta_base.is_none())
                .map(HeldCrl::served)
                .collect();
            out.extend(legacy_rows(id, txn)?);
            Ok(out)
        })
    }

    /// Every CRL held, bases and deltas, in issuer order (by DER), base first.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn held_crls(&self) -> Result<Read<Vec<HeldCrl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| held_rows(id, txn))
    }

    /// The CRLs stored by an earlier release, before issuer verification: unverified; remove
    /// them with [`Domain::remove_legacy_crl`](crate::Domain::remove_legacy_crl) once a
    /// verified CRL of the issuer is held.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn legacy_crls(&self) -> Result<Read<Vec<Crl>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| legacy_rows(id, txn))
    }

    /// The issuer certificates, the held CRLs and the legacy CRLs, read in one transaction so
    /// the three agree with the position reported.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn trust(&self) -> Result<Read<Trust>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(ISSUER).or_storage(id)?;
            let mut issuers = Vec::new();
            for entry in table.iter().or_storage(id)? {
                let (_, v) = entry.or_storage(id)?;
                issuers.push(decode_held(id, "issuer row", v.value())?);
            }
            Ok((issuers, held_rows(id, txn)?, legacy_rows(id, txn)?))
        })
    }

    /// The issuer certificates held, in subject order (by DER).
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn issuers(&self) -> Result<Read<Vec<IssuerCert>>, StoreError> {
        let id = &self.inner.id;
        self.read(|txn| {
            let table = txn.open_table(ISSUER).or_storage(id)?;
            let mut out = Vec::new();
            for entry in table.iter().or_storage(id)? {
                let (_, v) = entry.or_storage(id)?;
                out.push(decode_held(id, "issuer row", v.value())?);
            }
            Ok(out)
        })
    }
}

fn held_rows(id: &DomainId, txn: &redb::ReadTransaction) -> Result<Vec<HeldCrl>, StoreError> {
    let table = txn.open_table(CRLS).or_storage(id)?;
    let mut out = Vec::new();
    for entry in table.iter().or_storage(id)? {
        let (_, v) = entry.or_storage(id)?;
        out.push(decode_held(id, "CRL row", v.value())?);
    }
    Ok(out)
}

fn legacy_rows(id: &DomainId, txn: &redb::ReadTransaction) -> Result<Vec<Crl>, StoreError> {
    let table = txn.open_table(CRL).or_storage(id)?;
    let mut out = Vec::new();
    for entry in table.iter().or_storage(id)? {
        let (k, v) = entry.or_storage(id)?;
        out.push(decode_crl(id, k.value(), v.value())?);
    }
    Ok(out)
}
