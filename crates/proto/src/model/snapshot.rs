//! Rows of a domain's state as shipped in a full resync.

use super::{Crl, HeldCrl, IssuerCert, PolicyInfo};

/// A policy package with its content, checked against its SHA-256 when read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Name, version, size, digest and install time.
    pub info: PolicyInfo,
    /// The package bytes.
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// One row of a snapshot. Shipped to standbys during a full resync: only append variants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SnapshotItem {
    /// A user key and value.
    Kv {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// A policy package.
    Policy(Policy),
    /// A CRL stored before issuer verification (legacy table).
    LegacyCrl(Crl),
    /// An issuer certificate.
    Issuer(IssuerCert),
    /// A held CRL (base or delta).
    Crl(HeldCrl),
    /// A user key and value with its version (the lsn of the record that last changed it).
    /// Sent in place of [`SnapshotItem::Kv`] for keys whose version is known.
    KvAt {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Its version.
        version: super::Lsn,
    },
}
