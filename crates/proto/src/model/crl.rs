//! Certificate revocation lists as the store keeps them: parsed once, when uploaded.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::op::MAX_CRL_BYTES;

/// The CRL number extension: an unsigned integer of up to 20 octets, kept big-endian without
/// leading zeros and compared as a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CrlNumber(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl CrlNumber {
    /// The number from big-endian bytes (leading zeros are dropped).
    pub fn from_be_bytes(bytes: &[u8]) -> CrlNumber {
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        CrlNumber(bytes[first..].to_vec())
    }
}

impl Ord for CrlNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        let a = Self::from_be_bytes(&self.0);
        let b = Self::from_be_bytes(&other.0);
        a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0))
    }
}

impl PartialOrd for CrlNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for CrlNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = Self::from_be_bytes(&self.0);
        if n.0.len() <= 16 {
            let mut v: u128 = 0;
            for b in &n.0 {
                v = (v << 8) | u128::from(*b);
            }
            write!(f, "{v}")
        } else {
            f.write_str("0x")?;
            for b in &n.0 {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

/// A certificate revocation list with the fields the store indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crl {
    /// Issuer distinguished name (RFC 4514 text), the key of the `crl` table.
    pub issuer: String,
    /// The CRL number; a CRL with a lower number than the stored one is refused.
    pub number: CrlNumber,
    /// `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
    /// `nextUpdate`, seconds since the Unix epoch, if the CRL has one.
    pub next_update: Option<i64>,
    /// The whole CRL, DER encoded, exactly as uploaded.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
}

/// An uploaded CRL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// The bytes are not one DER-encoded X.509 CRL.
    #[error("not a DER-encoded X.509 CRL ({reason}); convert PEM with `openssl crl -outform DER`")]
    Malformed {
        /// What the parser found.
        reason: String,
    },
    /// The CRL has no CRL number extension, so newer and older cannot be told apart.
    #[error("CRL of {issuer} has no CRL number extension; ask its CA for an RFC 5280 CRL with a cRLNumber")]
    NoNumber {
        /// Issuer distinguished name.
        issuer: String,
    },
    /// The CRL is larger than the store accepts.
    #[error("CRL of {size} bytes refused: the limit is {MAX_CRL_BYTES} bytes")]
    TooLarge {
        /// Size of the upload.
        size: usize,
    },
}

impl Crl {
    /// Parses a DER-encoded CRL and extracts its issuer, number and validity.
    ///
    /// The signature is not checked here: the store does not hold the issuer's certificate;
    /// gateways verify CRLs against their trust anchors.
    ///
    /// # Errors
    /// [`CrlError`] when the bytes are not exactly one CRL, the CRL has no number, or it is
    /// larger than [`MAX_CRL_BYTES`].
    pub fn from_der(der: &[u8]) -> Result<Crl, CrlError> {
        if der.len() > MAX_CRL_BYTES {
            return Err(CrlError::TooLarge { size: der.len() });
        }
        let (rest, crl) =
            CertificateRevocationList::from_der(der).map_err(|e| CrlError::Malformed {
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(CrlError::Malformed {
                reason: format!("{} bytes after the end of the CRL", rest.len()),
            });
        }
        let issuer = crl.issuer().to_string();
        if issuer.is_empty() {
            // The issuer is the CRL's key in the store: an empty or unrenderable name would
            // make every such CRL collide.
            return Err(CrlError::Malformed {
                reason: "the issuer name is empty or has no printable attribute".into(),
            });
        }
        let number = crl
            .crl_number()
            .map(|n| CrlNumber::from_be_bytes(&n.to_bytes_be()))
            .ok_or_else(|| CrlError::NoNumber {
                issuer: issuer.clone(),
            })?;
        Ok(Crl {
            issuer,
            number,
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            der: der.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_as_integers() {
        let n = |b: &[u8]| CrlNumber::from_be_bytes(b);
        assert!(n(&[1]) < n(&[2]));
        assert!(n(&[0xff]) < n(&[1, 0]));
        assert_eq!(n(&[0, 0, 5]), n(&[5]));
        assert_eq!(
            CrlNumber(vec![0, 7]).cmp(&CrlNumber(vec![7])),
            Ordering::Equal
        );
        assert_eq!(n(&[1, 0]).to_string(), "256");
        assert_eq!(n(&[]).to_string(), "0");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            Crl::from_der(b"hello"),
            Err(CrlError::Malformed { .. })
        ));
        assert!(matches!(
            Crl::from_der(&[]),
            Err(CrlError::Malformed { .. })
        ));
    }
}
