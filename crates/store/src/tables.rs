//! The redb tables of a domain database and the encoding of their rows.
//!
//! | table            | key            | value                                   |
//! |------------------|----------------|-----------------------------------------|
//! | `kv`             | user key       | user value                              |
//! | `policy`         | package name   | postcard [`PolicyInfo`]                 |
//! | `policy_content` | package name   | package bytes                           |
//! | `crl`            | issuer DN      | postcard [`Crl`]                        |
//! | `log`            | lsn            | checked record frame (see `codec`)      |
//! | `meta`           | `"domain"`     | checked frame of the domain metadata    |
//! | `collisions`     | archive id     | archived records (filled by failover)   |
//! | `held`           | lsn            | own records kept across a resync (see `resync`): not state, not log, not in the digest |

use redb::{ReadableTable, TableDefinition};

use super::error::{StorageResult, StoreError};
use domsync_proto::model::{Crl, DomainId, PolicyInfo};

pub(crate) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
pub(crate) const POLICY: TableDefinition<&str, &[u8]> = TableDefinition::new("policy");
pub(crate) const POLICY_CONTENT: TableDefinition<&str, &[u8]> =
    TableDefinition::new("policy_content");
pub(crate) const CRL: TableDefinition<&str, &[u8]> = TableDefinition::new("crl");
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(crate) const COLLISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("collisions");

/// Key of the single row of the `meta` table.
pub(crate) const META_KEY: &str = "domain";

/// The writable tables of one write transaction.
pub(crate) struct Tables<'txn> {
    pub kv: redb::Table<'txn, &'static [u8], &'static [u8]>,
    pub policy: redb::Table<'txn, &'static str, &'static [u8]>,
    pub content: redb::Table<'txn, &'static str, &'static [u8]>,
    pub crl: redb::Table<'txn, &'static str, &'static [u8]>,
    pub log: redb::Table<'txn, u64, &'static [u8]>,
    pub meta: redb::Table<'txn, &'static str, &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating when missing) every table of a domain.
    pub fn open(txn: &'txn redb::WriteTransaction, domain: &DomainId) -> Result<Self, StoreError> {
        // The archive is created with the others so a fresh database has the full layout.
        drop(txn.open_table(COLLISIONS).or_storage(domain)?);
        Ok(Tables {
            kv: txn.open_table(KV).or_storage(domain)?,
            policy: txn.open_table(POLICY).or_storage(domain)?,
            content: txn.open_table(POLICY_CONTENT).or_storage(domain)?,
            crl: txn.open_table(CRL).or_storage(domain)?,
            log: txn.open_table(LOG).or_storage(domain)?,
            meta: txn.open_table(META).or_storage(domain)?,
        })
    }

    /// The stored CRL of `issuer`, if any.
    pub fn crl_of(&self, domain: &DomainId, issuer: &str) -> Result<Option<Crl>, StoreError> {
        match self.crl.get(issuer).or_storage(domain)? {
            Some(v) => decode_crl(domain, issuer, v.value()).map(Some),
            None => Ok(None),
        }
    }
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
