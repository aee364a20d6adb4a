//! Applying a record's ops to the tables. The one path shared by the active's writes and the
//! standby's applies, so both end in the same state and the same digest.

use sha2::{Digest as _, Sha256};

use super::error::{StorageResult, StoreError};
use super::tables::{encode_row, Tables};
use domsync_proto::model::{Crl, DomainId, Op, PolicyInfo, Record};
use domsync_proto::model::{DigestTable, StateDigest};

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
            Op::Put { key, value } => put_kv(domain, t, key, value, digest)?,
            Op::Delete { key } => {
                if let Some(old) = t.kv.remove(key.as_slice()).or_storage(domain)? {
                    digest.remove(DigestTable::Kv, key, old.value());
                }
            }
            Op::InstallPolicy { name, content } => {
                let info = PolicyInfo {
                    name: name.clone(),
                    version: record.lsn.0,
                    epoch: record.epoch.clone(),
                    size: content.len() as u64,
                    sha256: Sha256::digest(content).into(),
                    installed: record.time,
                };
                put_policy(domain, t, &info, content, digest)?;
            }
            Op::RemovePolicy { name } => {
                if let Some(old) = t.policy.remove(name.as_str()).or_storage(domain)? {
                    digest.remove(DigestTable::Policy, name.as_bytes(), old.value());
                }
                t.content.remove(name.as_str()).or_storage(domain)?;
            }
            Op::PutCrl(crl) => put_crl(domain, t, crl, digest)?,
            Op::RemoveCrl { issuer } => {
                if let Some(old) = t.crl.remove(issuer.as_str()).or_storage(domain)? {
                    digest.remove(DigestTable::Crl, issuer.as_bytes(), old.value());
                }
            }
        }
    }
    Ok(())
}

/// Sets a user key, keeping the digest (a replaced value is taken out of it).
pub(crate) fn put_kv(
    domain: &DomainId,
    t: &mut Tables<'_>,
    key: &[u8],
    value: &[u8],
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    if let Some(old) = t.kv.insert(key, value).or_storage(domain)? {
        digest.remove(DigestTable::Kv, key, old.value());
    }
    digest.add(DigestTable::Kv, key, value);
    Ok(())
}

/// Stores a policy package's row and content, keeping the digest.
pub(crate) fn put_policy(
    domain: &DomainId,
    t: &mut Tables<'_>,
    info: &PolicyInfo,
    content: &[u8],
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    let name = info.name.as_str();
    let row = encode_row(domain, info)?;
    if let Some(old) = t.policy.insert(name, row.as_slice()).or_storage(domain)? {
        digest.remove(DigestTable::Policy, name.as_bytes(), old.value());
    }
    digest.add(DigestTable::Policy, name.as_bytes(), &row);
    t.content.insert(name, content).or_storage(domain)?;
    Ok(())
}

/// Stores the CRL of an issuer, keeping the digest.
pub(crate) fn put_crl(
    domain: &DomainId,
    t: &mut Tables<'_>,
    crl: &Crl,
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    let row = encode_row(domain, crl)?;
    let key = crl.issuer.as_str();
    if let Some(old) = t.crl.insert(key, row.as_slice()).or_storage(domain)? {
        digest.remove(DigestTable::Crl, key.as_bytes(), old.value());
    }
    digest.add(DigestTable::Crl, key.as_bytes(), &row);
    Ok(())
}
