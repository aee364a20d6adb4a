//! Operations: the changes one write transaction makes to a domain's tables.

use serde::{Deserialize, Serialize};

use super::{Crl, CrlNumber, DistinguishedName, HeldCrl, IssuerCert, MAX_ISSUER_CERT_BYTES};

/// Longest user key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest policy package, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024 * 1024;
/// Largest CRL, in bytes of DER.
pub const MAX_CRL_BYTES: usize = 32 * 1024 * 1024;
/// Longest policy package name, in bytes.
pub const MAX_POLICY_NAME: usize = 128;

/// One change to a domain's tables. A write is a list of ops, committed atomically as one
/// change-log record. The encoding is pinned by golden vectors: only append variants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Set a user key (`kv` table).
    Put {
        /// The key, 1 to [`MAX_KEY_BYTES`] bytes.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a user key (`kv` table); removing a missing key is not an error.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Install a policy package. Its version is the lsn of the record that installs it, so
    /// versions only grow; its installed time is the record's time.
    InstallPolicy {
        /// Package name, 1 to 128 characters from `A-Z a-z 0-9 . _ -`.
        name: String,
        /// Package bytes, at most [`MAX_POLICY_BYTES`].
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    /// Remove a policy package.
    RemovePolicy {
        /// Package name.
        name: String,
    },
    /// A CRL stored before issuer verification (legacy `crl` table, keyed by issuer text).
    /// Only applied from records written by earlier releases; new writes use [`Op::PutCrl`].
    PutLegacyCrl(Crl),
    /// Remove a legacy CRL (one stored before issuer verification), by its issuer text as
    /// `crl list` shows it: the way out of a bad CRL stored then.
    RemoveLegacyCrl {
        /// Issuer text, as shown by [`Crl::issuer`].
        issuer: String,
    },
    /// Hold an issuer certificate: the domain then accepts CRLs it verifies.
    AddIssuer(IssuerCert),
    /// Stop holding an issuer certificate (CRLs already held stay).
    RemoveIssuer {
        /// The certificate's subject.
        subject: DistinguishedName,
        /// SHA-256 of the certificate.
        sha256: [u8; 32],
    },
    /// Store a CRL: a base replaces the older base of its issuer (and the deltas it makes
    /// obsolete), a delta sits beside the base it applies to. Checked when the write is made:
    /// verified against a held issuer certificate, number above the held one, not stale
    /// unless `allow_stale`.
    PutCrl {
        /// The CRL.
        crl: HeldCrl,
        /// Store it even though its nextUpdate is past.
        allow_stale: bool,
    },
    /// Remove the held CRL (base or delta) of `issuer` numbered `number`.
    RemoveCrl {
        /// The issuer.
        issuer: DistinguishedName,
        /// The CRL number removed; the write is refused unless it is held.
        number: CrlNumber,
    },
}

impl Op {
    /// Checks the sizes and names an op carries.
    ///
    /// # Errors
    /// A one-line reason naming the limit that was broken.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => {
                if key.is_empty() || key.len() > MAX_KEY_BYTES {
                    return Err(format!(
                        "key of {} bytes refused: keys have 1 to {MAX_KEY_BYTES} bytes",
                        key.len()
                    ));
                }
            }
            Op::InstallPolicy { name, content } => {
                check_policy_name(name)?;
                if content.len() > MAX_POLICY_BYTES {
                    return Err(format!(
                        "policy package {name} of {} bytes refused: the limit is {MAX_POLICY_BYTES} bytes",
                        content.len()
                    ));
                }
            }
            Op::RemovePolicy { name } => check_policy_name(name)?,
            Op::PutLegacyCrl(crl) => {
                if crl.der.len() > MAX_CRL_BYTES {
                    return Err(format!(
                        "CRL of {} bytes refused: the limit is {MAX_CRL_BYTES} bytes",
                        crl.der.len()
                    ));
                }
            }
            Op::RemoveLegacyCrl { issuer } => {
                if issuer.is_empty() {
                    return Err(
                        "CRL issuer is empty: name the issuer as `crl list` shows it".into(),
                    );
                }
            }
            Op::PutCrl { crl, .. } => {
                if crl.der.len() > MAX_CRL_BYTES {
                    return Err(format!(
                        "CRL of {} bytes refused: the limit is {MAX_CRL_BYTES} bytes",
                        crl.der.len()
                    ));
                }
            }
            Op::AddIssuer(cert) => {
                if cert.der.len() > MAX_ISSUER_CERT_BYTES {
                    return Err(format!(
                        "issuer certificate of {} bytes refused: the limit is {MAX_ISSUER_CERT_BYTES} bytes",
                        cert.der.len()
                    ));
                }
            }
            Op::RemoveIssuer { .. } | Op::RemoveCrl { .. } => {}
        }
        Ok(())
    }
}

/// Checks a policy package name.
///
/// # Errors
/// A one-line reason when the name is empty, too long or has other characters than
/// `A-Z a-z 0-9 . _ -`.
pub fn check_policy_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid policy name {name:?}: use 1 to {MAX_POLICY_NAME} characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
        ))
    }
}

/// What the store keeps about an installed policy package, besides its bytes.
///
/// Gateways compare packages by [`PolicyInfo::stamp`] (epoch, then lsn), never by `version`
/// alone: after a forced failover a newer package can have a lower lsn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Package name.
    pub name: String,
    /// Version: the lsn of the record that installed this content.
    pub version: u64,
    /// The epoch of that record; see [`PolicyInfo::stamp`].
    pub epoch: super::Epoch,
    /// Size of the content in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// When it was installed, in microseconds since the Unix epoch (the record's time).
    pub installed: u64,
}

impl PolicyInfo {
    /// The package's version as gateways order it: epoch, then lsn.
    pub fn stamp(&self) -> super::Version {
        super::Version {
            epoch: self.epoch.clone(),
            lsn: super::Lsn(self.version),
        }
    }
}
