//! Applying a record's ops to the tables. The one path shared by the active's writes and the
//! standby's applies, so both end in the same state and the same digest.

use sha2::{Digest as _, Sha256};

use super::digest::{StateDigest, Tag};
use super::error::{StorageResult, StoreError};
use super::tables::{encode_row, Tables};
use crate::model::{DomainId, Op, PolicyInfo, Record};

/// Applies every op of `record` in order, keeping `digest` current. A storage error leaves the
/// transaction to be aborted by the caller.
pub(crate) fn apply_ops(
    domain: &DomainId,
    t: &mut Tables<'_>,
    record: &Record,
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    for op in &record.ops {
        match op {
            Op::Put { key, value } => {
                if let Some(old) =
                    t.kv.insert(key.as_slice(), value.as_slice())
                        .or_storage(domain)?
                {
                    digest.remove(Tag::Kv, key, old.value());
                }
                digest.add(Tag::Kv, key, value);
            }
            Op::Delete { key } => {
                if let Some(old) = t.kv.remove(key.as_slice()).or_storage(domain)? {
                    digest.remove(Tag::Kv, key, old.value());
                }
            }
            Op::InstallPolicy { name, content } => {
                let info = PolicyInfo {
                    name: name.clone(),
                    version: record.lsn.0,
                    size: content.len() as u64,
                    sha256: Sha256::digest(content).into(),
                    installed: record.time,
                };
                let row = encode_row(domain, &info)?;
                if let Some(old) = t
                    .policy
                    .insert(name.as_str(), row.as_slice())
                    .or_storage(domain)?
                {
                    digest.remove(Tag::Policy, name.as_bytes(), old.value());
                }
                digest.add(Tag::Policy, name.as_bytes(), &row);
                t.content
                    .insert(name.as_str(), content.as_slice())
                    .or_storage(domain)?;
            }
            Op::RemovePolicy { name } => {
                if let Some(old) = t.policy.remove(name.as_str()).or_storage(domain)? {
                    digest.remove(Tag::Policy, name.as_bytes(), old.value());
                }
                t.content.remove(name.as_str()).or_storage(domain)?;
            }
            Op::PutCrl(crl) => {
                let row = encode_row(domain, crl)?;
                let key = crl.issuer.as_str();
                if let Some(old) = t.crl.insert(key, row.as_slice()).or_storage(domain)? {
                    digest.remove(Tag::Crl, key.as_bytes(), old.value());
                }
                digest.add(Tag::Crl, key.as_bytes(), &row);
            }
            Op::RemoveCrl { issuer } => {
                if let Some(old) = t.crl.remove(issuer.as_str()).or_storage(domain)? {
                    digest.remove(Tag::Crl, issuer.as_bytes(), old.value());
                }
            }
        }
    }
    Ok(())
}
