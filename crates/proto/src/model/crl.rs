//! Certificate revocation lists and their issuers' certificates: parsed once, when uploaded,
//! and verified against the issuer certificates a domain holds.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;

use super::name::DistinguishedName;
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

/// A CRL as gateways receive it ([`crate::gateway::Response::Crl`]) and as the store kept it
/// before issuer verification (the rows of the legacy `crl` table, the `PutLegacyCrl` op).
/// The store now keeps [`HeldCrl`]s; [`HeldCrl::served`] gives this form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crl {
    /// Issuer distinguished name as text: RFC 4514 for CRLs held now; for a legacy row, the
    /// text it was stored under.
    pub issuer: String,
    /// The CRL number.
    pub number: CrlNumber,
    /// `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
    /// `nextUpdate`, seconds since the Unix epoch, if the CRL has one.
    pub next_update: Option<i64>,
    /// The whole CRL, DER encoded, exactly as uploaded.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
}

/// A CRL the store holds: a complete (base) CRL, or a delta CRL kept beside its base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldCrl {
    /// The issuer, by the DER of its name.
    pub issuer: DistinguishedName,
    /// The CRL number.
    pub number: CrlNumber,
    /// For a delta CRL, the number of the base CRL it applies to (`deltaCRLIndicator`).
    pub delta_base: Option<CrlNumber>,
    /// `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
    /// `nextUpdate`, seconds since the Unix epoch, if the CRL has one.
    pub next_update: Option<i64>,
    /// The SHA-256 of the issuer certificate whose key verified the signature; `None` when the
    /// domain accepts unverified CRLs and no held certificate verified it.
    pub verified_by: Option<[u8; 32]>,
    /// The whole CRL, DER encoded, exactly as uploaded.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
}

/// The certificate of a CA whose CRLs a domain distributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerCert {
    /// The certificate's subject: the issuer name of the CRLs it verifies.
    pub subject: DistinguishedName,
    /// SHA-256 of the certificate's DER (several certificates of one name may be held, e.g.
    /// across a CA key rollover).
    pub sha256: [u8; 32],
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// The certificate, DER encoded.
    #[serde(with = "serde_bytes")]
    pub der: Vec<u8>,
}

/// Largest issuer certificate, in bytes of DER.
pub const MAX_ISSUER_CERT_BYTES: usize = 64 * 1024;

/// An uploaded CRL or issuer certificate was refused.
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
    /// The CRL carries a critical extension domsync does not process (RFC 5280 §5.2: such a
    /// CRL must not be used).
    #[error("CRL of {issuer} refused: critical extension {oid} is not supported; ask its CA for a CRL without it")]
    UnsupportedCritical {
        /// Issuer distinguished name.
        issuer: String,
        /// The extension's OID.
        oid: String,
    },
    /// No issuer certificate of the CRL's issuer name is held by the domain.
    #[error("CRL of {issuer} refused: no issuer certificate of that name is held; add the CA certificate with `domsync issuer add DOMAIN FILE` first")]
    UnknownIssuer {
        /// Issuer distinguished name.
        issuer: String,
    },
    /// No held issuer certificate of that name verifies the CRL's signature.
    #[error("CRL of {issuer} refused: its signature does not verify against the {tried} held issuer certificate(s) of that name ({reason}); it was altered or signed by another key")]
    BadSignature {
        /// Issuer distinguished name.
        issuer: String,
        /// How many certificates were tried.
        tried: usize,
        /// What the last verification said.
        reason: String,
    },
    /// The CRL's nextUpdate is already past.
    #[error("CRL number {number} of {issuer} refused: its nextUpdate {next_update} is past; upload a current CRL, or pass --allow-stale to store it anyway")]
    Stale {
        /// Issuer distinguished name.
        issuer: String,
        /// CRL number.
        number: CrlNumber,
        /// nextUpdate, UTC.
        next_update: String,
    },
    /// The bytes are not one DER-encoded X.509 certificate usable as a CRL issuer.
    #[error("not a CRL issuer certificate ({reason}); give the CA certificate in DER or PEM")]
    BadIssuerCert {
        /// What is wrong.
        reason: String,
    },
}

impl HeldCrl {
    /// Parses a DER-encoded CRL: issuer name, number, delta indicator and validity. Neither
    /// the signature nor the dates are checked here (see [`HeldCrl::verify`] and
    /// [`HeldCrl::is_stale`]).
    ///
    /// # Errors
    /// [`CrlError`] when the bytes are not exactly one CRL, the CRL has no number, carries an
    /// unsupported critical extension, or is larger than [`MAX_CRL_BYTES`].
    pub fn from_der(der: &[u8]) -> Result<HeldCrl, CrlError> {
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
        let issuer = DistinguishedName::from_der(crl.issuer().as_raw()).map_err(|e| {
            CrlError::Malformed {
                reason: format!("issuer: {e}"),
            }
        })?;
        let text = issuer.to_string();
        let mut delta_base = None;
        for ext in crl.extensions() {
            let oid = ext.oid.to_id_string();
            match oid.as_str() {
                DELTA_CRL_INDICATOR => {
                    delta_base =
                        Some(
                            parse_der_uint(ext.value).ok_or_else(|| CrlError::Malformed {
                                reason: "deltaCRLIndicator is not an unsigned INTEGER".into(),
                            })?,
                        );
                }
                // CRL number, authority key identifier, issuer alternative name, issuing
                // distribution point, freshest CRL: understood or informational.
                "2.5.29.20" | "2.5.29.35" | "2.5.29.18" | "2.5.29.28" | "2.5.29.46" => {}
                _ if ext.critical => {
                    return Err(CrlError::UnsupportedCritical { issuer: text, oid });
                }
                _ => {}
            }
        }
        let number = crl
            .crl_number()
            .map(|n| CrlNumber::from_be_bytes(&n.to_bytes_be()))
            .ok_or_else(|| CrlError::NoNumber {
                issuer: text.clone(),
            })?;
        Ok(HeldCrl {
            issuer,
            number,
            delta_base,
            this_update: crl.last_update().timestamp(),
            next_update: crl.next_update().map(|t| t.timestamp()),
            verified_by: None,
            der: der.to_vec(),
        })
    }

    /// Checks the CRL against an issuer certificate: same name, and the signature verifies
    /// with the certificate's key (RSA PKCS#1 v1.5 and PSS, ECDSA P-256/P-384, Ed25519).
    ///
    /// # Errors
    /// [`CrlError::UnknownIssuer`] when the names differ, [`CrlError::BadSignature`] when
    /// the signature does not verify.
    pub fn verify(&self, cert: &IssuerCert) -> Result<(), CrlError> {
        if cert.subject != self.issuer {
            return Err(CrlError::UnknownIssuer {
                issuer: self.issuer.to_string(),
            });
        }
        let bad = |reason: String| CrlError::BadSignature {
            issuer: self.issuer.to_string(),
            tried: 1,
            reason,
        };
        let (_, crl) =
            CertificateRevocationList::from_der(&self.der).map_err(|e| bad(format!("CRL: {e}")))?;
        let (_, x509) = X509Certificate::from_der(&cert.der)
            .map_err(|e| bad(format!("issuer certificate: {e}")))?;
        crl.verify_signature(x509.public_key())
            .map_err(|e| bad(e.to_string()))
    }

    /// True when the CRL has a nextUpdate at or before `now` (seconds since the Unix epoch).
    pub fn is_stale(&self, now: i64) -> bool {
        self.next_update.is_some_and(|n| n <= now)
    }

    /// [`CrlError::Stale`] for this CRL.
    pub fn stale_error(&self) -> CrlError {
        CrlError::Stale {
            issuer: self.issuer.to_string(),
            number: self.number.clone(),
            next_update: self.next_update.map_or_else(|| "none".into(), utc),
        }
    }

    /// The form gateways receive: the issuer as RFC 4514 text.
    pub fn served(&self) -> Crl {
        Crl {
            issuer: self.issuer.to_string(),
            number: self.number.clone(),
            this_update: self.this_update,
            next_update: self.next_update,
            der: self.der.clone(),
        }
    }
}

impl IssuerCert {
    /// Parses a DER-encoded X.509 certificate to be held as a CRL issuer. It must be a CA
    /// certificate (basicConstraints cA) or allow signing CRLs (keyUsage cRLSign).
    ///
    /// # Errors
    /// [`CrlError::BadIssuerCert`] naming what is wrong.
    pub fn from_der(der: &[u8]) -> Result<IssuerCert, CrlError> {
        let bad = |reason: String| CrlError::BadIssuerCert { reason };
        if der.len() > MAX_ISSUER_CERT_BYTES {
            return Err(bad(format!(
                "{} bytes, the limit is {MAX_ISSUER_CERT_BYTES}",
                der.len()
            )));
        }
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad(format!(
                "{} bytes after the end of the certificate",
                rest.len()
            )));
        }
        let subject = DistinguishedName::from_der(cert.subject().as_raw())
            .map_err(|e| bad(format!("subject: {e}")))?;
        let ca = cert.basic_constraints().ok().flatten().map(|b| b.value.ca);
        let crl_sign = cert.key_usage().ok().flatten().map(|k| k.value.crl_sign());
        match (crl_sign, ca) {
            (Some(false), _) => {
                return Err(bad(format!(
                    "{subject}: its keyUsage does not allow signing CRLs (cRLSign)"
                )))
            }
            (None, Some(false)) => {
                return Err(bad(format!(
                "{subject}: its basicConstraints say it is not a CA and it has no keyUsage cRLSign"
            )))
            }
            _ => {}
        }
        Ok(IssuerCert {
            subject,
            sha256: Sha256::digest(der).into(),
            not_after: cert.validity().not_after.timestamp(),
            der: der.to_vec(),
        })
    }

    /// The first 8 bytes of the SHA-256 in hex, as listings show it.
    pub fn short_id(&self) -> String {
        super::name::hex(&self.sha256[..8])
    }
}

/// OID of the deltaCRLIndicator extension.
const DELTA_CRL_INDICATOR: &str = "2.5.29.27";

/// A non-negative DER INTEGER of at most 21 octets (a 20-octet number with a sign octet).
fn parse_der_uint(bytes: &[u8]) -> Option<CrlNumber> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, body) = rest.split_first()?;
    let len = usize::from(len);
    if tag != 0x02 || len == 0 || len > 21 || body.len() != len || body[0] & 0x80 != 0 {
        return None;
    }
    Some(CrlNumber::from_be_bytes(body))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
            HeldCrl::from_der(b"hello"),
            Err(CrlError::Malformed { .. })
        ));
        assert!(matches!(
            HeldCrl::from_der(&[]),
            Err(CrlError::Malformed { .. })
        ));
        assert!(matches!(
            IssuerCert::from_der(b"hello"),
            Err(CrlError::BadIssuerCert { .. })
        ));
    }

    #[test]
    fn der_integers_and_dates() {
        assert_eq!(parse_der_uint(&[2, 1, 5]), Some(CrlNumber(vec![5])));
        assert_eq!(
            parse_der_uint(&[2, 2, 0, 0x80]),
            Some(CrlNumber(vec![0x80]))
        );
        assert_eq!(parse_der_uint(&[2, 1, 0x80]), None, "negative");
        assert_eq!(parse_der_uint(&[2, 2, 5]), None, "short");
        assert_eq!(parse_der_uint(&[4, 1, 5]), None, "not an INTEGER");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_583_020_800), "2020-03-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
    }
}
