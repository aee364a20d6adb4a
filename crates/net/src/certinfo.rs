//! What a certificate tells of itself, for logs, status and metrics: identity, serial, end
//! of validity; and the certificate a connection's peer presented.

use rustls::pki_types::CertificateDer;

use crate::identity::Identity;
use crate::revocation::hex_serial;

/// Identity, serial and validity end of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Its `domsync://<role>/<id>` identity, or what is wrong with it.
    pub identity: String,
    /// Its serial: lower-case hex bytes joined by colons (as the logs and `domsync pki` show).
    pub serial: String,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertificateInfo {
    /// Reads a DER certificate.
    ///
    /// # Errors
    /// A one-line reason when it is not an X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<CertificateInfo, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let identity = match Identity::from_cert_der(der) {
            Ok(id) => id.uri(),
            Err(e) => format!("(no identity: {e})"),
        };
        Ok(CertificateInfo {
            identity,
            serial: hex_serial(cert.tbs_certificate.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// The end-entity certificate the peer of `conn` presented, if any.
pub fn peer_certificate(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?
        .first()
        .cloned()
}
