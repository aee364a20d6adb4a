//! The redb tables of a domain database and the encoding of their rows.
//!
//! | table            | key            | value                                   |
//! |------------------|----------------|-----------------------------------------|
//! | `kv`             | user key       | user value, or its first piece when longer than 248 KiB (see `pieces`) |
//! | `kv_version`     | user key       | lsn of the record that last changed it (absent: written before versions were kept) |
//! | `policy`         | package name   | postcard [`PolicyInfo`]                 |
//! | `policy_content` | package name   | package bytes, or their first piece (see `pieces`) |
//! | `pieces`         | owner ++ key length ++ key ++ piece number | the further pieces of long values (see `pieces`) |
//! | `crl`            | issuer text    | postcard [`Crl`]: legacy, stored before issuer verification |
//! | `issuer`         | subject DER ++ SHA-256 of the certificate | postcard [`IssuerCert`] |
//! | `crls`           | issuer DER ++ `0` (base), or ++ `1` ++ base number (delta) | postcard [`HeldCrl`] |
//! | `log`            | lsn            | checked record frame: store format 1 only; migrated into segment files at open (see `segments`) |
//! | `meta`           | `"domain"`     | checked frame of the domain metadata    |
//! | `meta`           | `"log"`        | checked frame of the log row: store format and segment log id |
//! | `collisions`     | archive id     | archived records (filled by failover)   |
//! | `held`           | lsn            | own records kept across a resync (see `resync`): not state, not log, not in the digest |

use redb::{ReadableDatabase as _, ReadableTable, TableDefinition};

use super::error::{StorageResult, StoreError};
use domsync_proto::model::{
    Crl, CrlNumber, DistinguishedName, DomainId, HeldCrl, IssuerCert, PolicyInfo,
};

pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
pub(crate) const KV_VERSION: TableDefinition<&[u8], u64> = TableDefinition::new("kv_version");
pub(crate) const POLICY: TableDefinition<&str, &[u8]> = TableDefinition::new("policy");
pub(crate) const POLICY_CONTENT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("policy_content");
pub(crate) const CRL: TableDefinition<&str, &[u8]> = TableDefinition::new("crl");
pub(crate) const ISSUER: TableDefinition<&[u8], &[u8]> = TableDefinition::new("issuer");
pub(crate) const CRLS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("crls");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const COLLISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("collisions");

/// Key of the single row of the `meta` table.
pub(crate) const META_KEY: &str = "domain";

/// The writable tables of one write transaction.
pub(crate) struct Tables<'txn> {
    pub kv: redb::Table<'txn, &'static [u8], &'static [u8]>,
    pub kv_version: redb::Table<'txn, &'static [u8], u64>,
    pub policy: redb::Table<'txn, &'static str, &'static [u8]>,
    pub content: redb::Table<'txn, &'static str, &'static [u8]>,
    pub crl: redb::Table<'txn, &'static str, &'static [u8]>,
    pub issuer: redb::Table<'txn, &'static [u8], &'static [u8]>,
    pub crls: redb::Table<'txn, &'static [u8], &'static [u8]>,
    pub meta: redb::Table<'txn, &'static str, &'static [u8]>,
    /// Pieces after the first of long values (see `pieces`).
    pub pieces: redb::Table<'txn, &'static [u8], &'static [u8]>,
    /// Frames of the records made in this transaction, in lsn order: appended to the segment
    /// log (and synced) before the transaction commits.
    pub frames: Vec<Vec<u8>>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating when missing) every table of a domain.
    pub fn open(txn: &'txn redb::WriteTransaction, domain: &DomainId) -> Result<Self, StoreError> {
        // The archive is created with the others so a fresh database has the full layout.
        drop(txn.open_table(COLLISIONS).or_storage(domain)?);
        Ok(Tables {
            kv: txn.open_table(KV).or_storage(domain)?,
            kv_version: txn.open_table(KV_VERSION).or_storage(domain)?,
            policy: txn.open_table(POLICY).or_storage(domain)?,
            content: txn.open_table(POLICY_CONTENT).or_storage(domain)?,
            crl: txn.open_table(CRL).or_storage(domain)?,
            issuer: txn.open_table(ISSUER).or_storage(domain)?,
            crls: txn.open_table(CRLS).or_storage(domain)?,
            meta: txn.open_table(META).or_storage(domain)?,
            pieces: txn.open_table(super::pieces::PIECES).or_storage(domain)?,
            frames: Vec::new(),
        })
    }
}

/// Key of an issuer certificate row.
pub(crate) fn issuer_key(subject: &DistinguishedName, sha256: &[u8; 32]) -> Vec<u8> {
    let mut k = subject.der().to_vec();
    k.extend_from_slice(sha256);
    k
}

/// Key of the base CRL of `issuer`.
pub(crate) fn base_key(issuer: &DistinguishedName) -> Vec<u8> {
    let mut k = issuer.der().to_vec();
    k.push(0);
    k
}

/// Key of the delta CRL of `issuer` that applies to base number `base`.
pub(crate) fn delta_key(issuer: &DistinguishedName, base: &CrlNumber) -> Vec<u8> {
    let mut k = issuer.der().to_vec();
    k.push(1);
    k.extend_from_slice(&CrlNumber::from_be_bytes(&base.0).0);
    k
}

/// The key of a held CRL's row.
pub(crate) fn crl_key(crl: &HeldCrl) -> Vec<u8> {
    match &crl.delta_base {
        None => base_key(&crl.issuer),
        Some(base) => delta_key(&crl.issuer, base),
    }
}

/// The rows of a table whose keys start with `prefix` (a name's DER is self-delimiting, so
/// no other name's rows share it), decoded.
pub(crate) fn rows_with_prefix<T, Tb>(
    domain: &DomainId,
    table: &Tb,
    prefix: &[u8],
    what: &str,
) -> Result<Vec<(Vec<u8>, T)>, StoreError>
where
    T: serde::de::DeserializeOwned,
    Tb: ReadableTable<&'static [u8], &'static [u8]>,
{
    let mut out = Vec::new();
    for entry in table.range::<&[u8]>(prefix..).or_storage(domain)? {
        let (k, v) = entry.or_storage(domain)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_vec(), decode_row(domain, what, v.value())?));
    }
    Ok(out)
}

impl Tables<'_> {
    /// The issuer certificates held with subject `name`.
    pub fn issuers_named(
        &self,
        domain: &DomainId,
        name: &DistinguishedName,
    ) -> Result<Vec<IssuerCert>, StoreError> {
        Ok(
            rows_with_prefix(domain, &self.issuer, name.der(), "issuer row")?
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        )
    }

    /// The CRLs held for `issuer`: its base (if any) and its deltas.
    pub fn crls_of(
        &self,
        domain: &DomainId,
        issuer: &DistinguishedName,
    ) -> Result<Vec<HeldCrl>, StoreError> {
        Ok(
            rows_with_prefix(domain, &self.crls, issuer.der(), "CRL row")?
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        )
    }
}

pub(crate) fn decode_held<T: serde::de::DeserializeOwned>(
    domain: &DomainId,
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode_row(domain, what, bytes)
}

pub(crate) fn encode_row<T: serde::Serialize>(
    domain: &DomainId,
    row: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(row).map_err(|e| StoreError::InvalidWrite {
        domain: domain.clone(),
        reason: format!("cannot encode row: {e}"),
    })
}

fn decode_row<T: serde::de::DeserializeOwned>(
    domain: &DomainId,
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((row, [])) => Ok(row),
        Ok((_, rest)) => Err(StoreError::Corrupt {
            domain: domain.clone(),
            what: format!("{what}: {} trailing bytes", rest.len()),
        }),
        Err(e) => Err(StoreError::Corrupt {
            domain: domain.clone(),
            what: format!("{what}: {e}"),
        }),
    }
}

pub(crate) fn decode_crl(domain: &DomainId, issuer: &str, bytes: &[u8]) -> Result<Crl, StoreError> {
    decode_row(domain, &format!("CRL row of {issuer}"), bytes)
}

pub(crate) fn decode_policy(
    domain: &DomainId,
    name: &str,
    bytes: &[u8],
) -> Result<PolicyInfo, StoreError> {
    decode_row(domain, &format!("policy row {name}"), bytes)
}

/// Creates the tables a database written by an earlier release lacks (`issuer`, `crls`,
/// `kv_version`), so every reader finds the full layout.
pub(crate) fn ensure_tables(db: &redb::Database, domain: &DomainId) -> Result<(), StoreError> {
    let missing = {
        let txn = db.begin_read().or_storage(domain)?;
        [ISSUER, CRLS].iter().any(|t| {
            matches!(
                txn.open_table(*t),
                Err(redb::TableError::TableDoesNotExist(_))
            )
        }) || matches!(
            txn.open_table(KV_VERSION),
            Err(redb::TableError::TableDoesNotExist(_))
        )
    };
    if missing {
        let txn = db.begin_write().or_storage(domain)?;
        drop(txn.open_table(ISSUER).or_storage(domain)?);
        drop(txn.open_table(CRLS).or_storage(domain)?);
        drop(txn.open_table(KV_VERSION).or_storage(domain)?);
        txn.commit().or_storage(domain)?;
    }
    Ok(())
}
