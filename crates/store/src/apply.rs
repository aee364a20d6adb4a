//! Applying a record's ops to the tables. The one path shared by the active's writes and the
//! standby's applies, so both end in the same state and the same digest.

use sha2::{Digest as _, Sha256};

use super::error::{StorageResult, StoreError};
use super::pieces::{self, Owner};
use super::tables::{crl_key, encode_row, issuer_key, rows_with_prefix, Tables};
use domsync_proto::model::{Crl, DomainId, HeldCrl, IssuerCert, Op, PolicyInfo, Record};
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
            Op::Put { key, value } => {
                put_kv(domain, t, key, value, digest)?;
                t.kv_version
                    .insert(key.as_slice(), record.lsn.0)
                    .or_storage(domain)?;
            }
            Op::Delete { key } => {
                if let Some(old) = t.kv.remove(key.as_slice()).or_storage(domain)? {
                    let first = old.value();
                    match pieces::take_rest(domain, &mut t.pieces, Owner::Kv, key, first)? {
                        Some(whole) => digest.remove(DigestTable::Kv, key, &whole),
                        None => digest.remove(DigestTable::Kv, key, first),
                    }
                }
                t.kv_version.remove(key.as_slice()).or_storage(domain)?;
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
                remove_content(domain, t, name)?;
            }
            Op::PutLegacyCrl(crl) => put_crl(domain, t, crl, digest)?,
            Op::RemoveLegacyCrl { issuer } => {
                if let Some(old) = t.crl.remove(issuer.as_str()).or_storage(domain)? {
                    digest.remove(DigestTable::Crl, issuer.as_bytes(), old.value());
                }
            }
            Op::AddIssuer(cert) => put_issuer(domain, t, cert, digest)?,
            Op::RemoveIssuer { subject, sha256 } => {
                let key = issuer_key(subject, sha256);
                if let Some(old) = t.issuer.remove(key.as_slice()).or_storage(domain)? {
                    digest.remove(DigestTable::Issuer, &key, old.value());
                }
            }
            Op::PutCrl { crl, .. } => {
                if crl.delta_base.is_none() {
                    // A new base makes the deltas it covers obsolete (RFC 5280 §5.2.4: a delta
                    // numbered at or below a complete CRL adds nothing to it).
                    let mut prefix = crl.issuer.der().to_vec();
                    prefix.push(1);
                    let deltas: Vec<(Vec<u8>, HeldCrl)> =
                        rows_with_prefix(domain, &t.crls, &prefix, "CRL row")?;
                    for (key, delta) in deltas {
                        if delta.number <= crl.number {
                            remove_row_crls(domain, t, &key, digest)?;
                        }
                    }
                }
                put_held_crl(domain, t, crl, digest)?;
            }
            Op::RemoveCrl { issuer, number } => {
                let held: Vec<(Vec<u8>, HeldCrl)> =
                    rows_with_prefix(domain, &t.crls, issuer.der(), "CRL row")?;
                for (key, crl) in held {
                    if crl.number == *number {
                        remove_row_crls(domain, t, &key, digest)?;
                    }
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
    if let Some(old) = t.kv.insert(key, pieces::first(value)).or_storage(domain)? {
        let first = old.value();
        match pieces::take_rest(domain, &mut t.pieces, Owner::Kv, key, first)? {
            Some(whole) => digest.remove(DigestTable::Kv, key, &whole),
            None => digest.remove(DigestTable::Kv, key, first),
        }
    }
    pieces::write_rest(domain, &mut t.pieces, Owner::Kv, key, value)?;
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
    remove_content(domain, t, name)?;
    t.content
        .insert(name, pieces::first(content))
        .or_storage(domain)?;
    pieces::write_rest(
        domain,
        &mut t.pieces,
        Owner::PolicyContent,
        name.as_bytes(),
        content,
    )
}

/// Removes a policy package's content, all its pieces with it.
fn remove_content(domain: &DomainId, t: &mut Tables<'_>, name: &str) -> Result<(), StoreError> {
    if let Some(old) = t.content.remove(name).or_storage(domain)? {
        pieces::take_rest(
            domain,
            &mut t.pieces,
            Owner::PolicyContent,
            name.as_bytes(),
            old.value(),
        )?;
    }
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

/// Holds an issuer certificate, keeping the digest.
pub(crate) fn put_issuer(
    domain: &DomainId,
    t: &mut Tables<'_>,
    cert: &IssuerCert,
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    let row = encode_row(domain, cert)?;
    let key = issuer_key(&cert.subject, &cert.sha256);
    if let Some(old) = t
        .issuer
        .insert(key.as_slice(), row.as_slice())
        .or_storage(domain)?
    {
        digest.remove(DigestTable::Issuer, &key, old.value());
    }
    digest.add(DigestTable::Issuer, &key, &row);
    Ok(())
}

/// Stores a held CRL (base or delta) in its row, keeping the digest.
pub(crate) fn put_held_crl(
    domain: &DomainId,
    t: &mut Tables<'_>,
    crl: &HeldCrl,
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    let row = encode_row(domain, crl)?;
    let key = crl_key(crl);
    if let Some(old) = t
        .crls
        .insert(key.as_slice(), row.as_slice())
        .or_storage(domain)?
    {
        digest.remove(DigestTable::HeldCrl, &key, old.value());
    }
    digest.add(DigestTable::HeldCrl, &key, &row);
    Ok(())
}

fn remove_row_crls(
    domain: &DomainId,
    t: &mut Tables<'_>,
    key: &[u8],
    digest: &mut StateDigest,
) -> Result<(), StoreError> {
    if let Some(old) = t.crls.remove(key).or_storage(domain)? {
        digest.remove(DigestTable::HeldCrl, key, old.value());
    }
    Ok(())
}
