//! Consistent snapshots of a domain's state, for full resync.

use redb::{ReadTransaction, ReadableTable};

use super::domain::Domain;
use super::error::{StorageResult, StoreError};
use super::pieces::{self, Owner};
use super::tables::{
    decode_crl, decode_held, decode_policy, CRL, CRLS, ISSUER, KV, KV_VERSION, POLICY,
    POLICY_CONTENT,
};
use domsync_proto::model::{
    DomainId, DomainUid, Epoch, HistoryEntry, Lsn, Policy, Position, SnapshotItem, StateDigest,
};

/// The whole state of a domain at one position, held by one read transaction: writes that
/// commit meanwhile are not seen. Drop it soon: it pins the pages it reads.
pub struct Snapshot {
    txn: ReadTransaction,
    domain: DomainId,
    /// Incarnation id of the domain.
    pub uid: Option<DomainUid>,
    /// The position of the state.
    pub position: Position,
    /// Highest epoch seen by the replica.
    pub epoch: Epoch,
    /// The domain's history up to `position`.
    pub history: Vec<HistoryEntry>,
    /// Content digest of the state (equal digests at equal lsn mean identical state).
    pub digest: StateDigest,
    /// First lsn held in the log at `position`.
    pub log_start: Lsn,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("domain", &self.domain)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// Takes a snapshot: one read transaction over every table at the current position.
    ///
    /// # Errors
    /// [`StoreError::Storage`] or [`StoreError::Corrupt`].
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.begin_read()?;
        let meta = self.meta_in(&txn)?;
        Ok(Snapshot {
            txn,
            domain: self.id().clone(),
            uid: meta.uid,
            position: meta.position,
            epoch: meta.epoch,
            history: meta.history,
            digest: meta.digest,
            log_start: meta.log_start,
        })
    }
}

impl Snapshot {
    /// Calls `f` for every row: user keys in key order, then policy packages, then
    /// legacy CRLs, issuer certificates and held CRLs.
    /// Stops at the first error `f` returns.
    ///
    /// # Errors
    /// The first error of `f`, or a [`StoreError`] converted into `E`.
    pub fn for_each<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(SnapshotItem) -> Result<(), E>,
    ) -> Result<(), E> {
        let id = &self.domain;
        let versions = self.txn.open_table(KV_VERSION).or_storage(id)?;
        let pieces = pieces::open(id, &self.txn)?;
        for entry in self
            .txn
            .open_table(KV)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            let key = k.value().to_vec();
            let value = pieces::whole(id, pieces.as_ref(), Owner::Kv, &key, v.value())?;
            match versions.get(key.as_slice()).or_storage(id)? {
                Some(version) => f(SnapshotItem::KvAt {
                    key,
                    value,
                    version: Lsn(version.value()),
                })?,
                None => f(SnapshotItem::Kv { key, value })?,
            }
        }
        let contents = self.txn.open_table(POLICY_CONTENT).or_storage(id)?;
        for entry in self
            .txn
            .open_table(POLICY)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            let info = decode_policy(id, k.value(), v.value())?;
            let content = contents
                .get(k.value())
                .or_storage(id)?
                .map(|c| {
                    pieces::whole(
                        id,
                        pieces.as_ref(),
                        Owner::PolicyContent,
                        k.value().as_bytes(),
                        c.value(),
                    )
                })
                .transpose()?
                .unwrap_or_default();
            f(SnapshotItem::Policy(Policy { info, content }))?;
        }
        for entry in self
            .txn
            .open_table(CRL)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (k, v) = entry.or_storage(id)?;
            f(SnapshotItem::LegacyCrl(decode_crl(
                id,
                k.value(),
                v.value(),
            )?))?;
        }
        for entry in self
            .txn
            .open_table(ISSUER)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (_, v) = entry.or_storage(id)?;
            f(SnapshotItem::Issuer(decode_held(
                id,
                "issuer row",
                v.value(),
            )?))?;
        }
        for entry in self
            .txn
            .open_table(CRLS)
            .or_storage(id)?
            .iter()
            .or_storage(id)?
        {
            let (_, v) = entry.or_storage(id)?;
            f(SnapshotItem::Crl(decode_held(id, "CRL row", v.value())?))?;
        }
        Ok(())
    }

    /// Recomputes the content digest from the snapshot's rows (it equals [`Snapshot::digest`]
    /// unless data was damaged at rest).
    ///
    /// # Errors
    /// [`StoreError::Storage`].
    pub fn compute_digest(&self) -> Result<StateDigest, StoreError> {
        super::log::compute_digest(&self.txn, &self.domain)
    }
}
