//! The deployment's certificate revocation list (`[tls] crl`): read from a file (PEM or DER),
//! checked against the CA when loaded, and enforced on every handshake, on both sides:
//!
//! * a server (node) verifies client certificates (nodes, gateways, admins) with rustls'
//!   `WebPkiClientVerifier` given the CRL, wrapped in [`LoggedClientVerifier`];
//! * a client verifies the server node with [`NodeServerVerifier`](crate::NodeServerVerifier),
//!   which asks [`check_revocation`] after the chain is verified.
//!
//! Only the end entity's status is checked: the CRL is the deployment CA's, and the CA is the
//! trust anchor. A certificate of another CA of the bundle (a CA rotation) has no CRL here and
//! is not refused for it. A CRL past its next update still counts (an old list is better than
//! locking everyone out); reissue it with `domsync pki revoke`. A revoked certificate is
//! refused and logged with its serial and identity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::certinfo::CertificateInfo;
use crate::credentials::TlsError;

/// A deployment CRL as loaded from its file: the DER of each list in it, checked to be
/// signed by a CA of the bundle.
#[derive(Debug, Clone)]
pub struct RevocationList {
    /// The file it was read from.
    pub path: PathBuf,
    /// Each CRL of the file (usually one), DER.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Serials revoked, over every list (hex, colon-separated, as `domsync pki revoke` and
    /// the logs print them).
    pub revoked: Vec<String>,
    /// The highest CRL number of the file (decimal), when the lists carry one.
    pub number: Option<String>,
}

impl RevocationList {
    /// Reads the CRL file `path` (PEM `X509 CRL` blocks, or one DER list) and checks that
    /// every list in it parses and is signed by a certificate of the CA file `ca_path`.
    ///
    /// # Errors
    /// [`TlsError::Read`] when a file cannot be read, [`TlsError::Pem`] for a CA file without
    /// certificates, [`TlsError::Crl`] for a list that is not one or is not the CA's.
    pub fn load(path: &Path, ca_path: &Path) -> Result<RevocationList, TlsError> {
        let ca_pem = std::fs::read(ca_path).map_err(|source| TlsError::Read {
            path: ca_path.to_owned(),
            source,
        })?;
        let cas = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                path: ca_path.to_owned(),
                reason: format!("bad PEM: {e}"),
            })?;
        RevocationList::load_for(path, ca_path, &cas)
    }

    /// As [`RevocationList::load`], with the CA certificates already read from `ca_path`.
    pub(crate) fn load_for(
        path: &Path,
        ca_path: &Path,
        cas: &[CertificateDer<'_>],
    ) -> Result<RevocationList, TlsError> {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |reason: String| TlsError::Crl {
            path: path.to_owned(),
            reason,
        };
        let crls: Vec<CertificateRevocationListDer<'static>> =
            if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
                CertificateRevocationListDer::pem_slice_iter(&bytes)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("bad PEM: {e}")))?
            } else {
                vec![CertificateRevocationListDer::from(bytes)]
            };
        if crls.is_empty() {
            return Err(bad("no PEM X509 CRL block found".into()));
        }
        let mut revoked = Vec::new();
        let mut number: Option<x509_parser::num_bigint::BigUint> = None;
        for crl in &crls {
            let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref())
                .map_err(|e| bad(format!("not an X.509 CRL (PEM or DER): {e}")))?;
            webpki::OwnedCertRevocationList::from_der(crl.as_ref())
                .map_err(|e| bad(format!("CRL not usable: {e:?}")))?;
            let signed = cas.iter().any(|ca| {
                x509_parser::parse_x509_certificate(ca.as_ref()).is_ok_and(|(_, ca)| {
                    ca.subject() == parsed.issuer()
                        && parsed.verify_signature(ca.public_key()).is_ok()
                })
            });
            if !signed {
                return Err(bad(format!(
                    "not signed by the CA in {} (issuer {}); give the ca.crl of this deployment's CA",
                    ca_path.display(),
                    parsed.issuer()
                )));
            }
            revoked.extend(
                parsed
                    .iter_revoked_certificates()
                    .map(|r| hex_serial(r.raw_serial())),
            );
            if let Some(n) = parsed.crl_number() {
                if number.as_ref().is_none_or(|m| n > m) {
                    number = Some(n.clone());
                }
            }
        }
        Ok(RevocationList {
            path: path.to_owned(),
            crls,
            revoked,
            number: number.map(|n| n.to_string()),
        })
    }
}

/// A serial as the logs print it: lower-case hex bytes joined by colons.
pub(crate) fn hex_serial(raw: &[u8]) -> String {
    raw.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Logs a certificate refused during a handshake because it is revoked, with its serial and
/// identity; other refusals are left to the caller's log.
pub(crate) fn log_if_revoked(end_entity: &CertificateDer<'_>, peer: &str, error: &rustls::Error) {
    if matches!(
        error,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    ) {
        let (serial, identity) = match CertificateInfo::from_der(end_entity) {
            Ok(info) => (info.serial, info.identity),
            Err(e) => ("unknown".to_owned(), e),
        };
        tracing::warn!(serial = %serial, identity = %identity, "{peer} certificate {identity} (serial {serial}) refused: it is revoked by the deployment CRL");
    }
}

/// The server-side verifier of client certificates: the given one (rustls' webpki verifier,
/// with the CRL), logging a revoked certificate with its serial and identity.
pub(crate) struct LoggedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl LoggedClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>) -> LoggedClientVerifier {
        LoggedClientVerifier { inner }
    }
}

impl fmt::Debug for LoggedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedClientVerifier")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ClientCertVerifier for LoggedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| log_if_revoked(end_entity, "client", e))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// Parsed CRLs for [`check_revocation`].
pub(crate) fn parse_crls(
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<Vec<webpki::CertRevocationList<'static>>, TlsError> {
    crls.iter()
        .map(|c| {
            webpki::OwnedCertRevocationList::from_der(c.as_ref())
                .map(webpki::CertRevocationList::from)
                .map_err(|e| TlsError::Config {
                    reason: format!("CRL not usable: {e:?}"),
                })
        })
        .collect()
}

/// Checks that a server certificate already verified against `roots` is not revoked by
/// `crls` (end entity only; unknown status allowed). Nothing to check without CRLs.
///
/// # Errors
/// [`CertificateError::Revoked`] for a revoked certificate, another certificate error when
/// the check cannot be made.
pub(crate) fn check_revocation(
    crls: &[webpki::CertRevocationList<'static>],
    roots: &RootCertStore,
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    if crls.is_empty() {
        return Ok(());
    }
    let refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let Ok(builder) = webpki::RevocationOptionsBuilder::new(&refs) else {
        return Ok(());
    };
    let options = builder
        .with_depth(webpki::RevocationCheckDepth::EndEntity)
        .with_status_policy(webpki::UnknownStatusPolicy::Allow)
        .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
        .build();
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    match cert.verify_for_usage(
        algorithms.all,
        &roots.roots,
        intermediates,
        now,
        webpki::KeyUsage::server_auth(),
        Some(options),
        None,
    ) {
        Ok(_) => Ok(()),
        Err(webpki::Error::CertRevoked) => Err(CertificateError::Revoked.into()),
        Err(e) => Err(
            CertificateError::Other(rustls::OtherError(Arc::new(RevocationCheckError(format!(
                "{e:?}"
            )))))
            .into(),
        ),
    }
}

/// The revocation check could not be made (carried in a rustls error).
struct RevocationCheckError(String);

impl fmt::Display for RevocationCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revocation check failed: {}", self.0)
    }
}

impl fmt::Debug for RevocationCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for RevocationCheckError {}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::ServerName;

    use super::*;
    use crate::identity::{Identity, PeerRole};
    use crate::{pki, Credentials, NodeServerVerifier, TlsFiles, ALPN_GATEWAY, CA_CRL_FILE};

    fn files(dir: &Path, role: PeerRole, id: &str) -> TlsFiles {
        TlsFiles::in_dir(dir, &Identity::new(role, id).unwrap())
    }

    fn creds(dir: &Path, role: PeerRole, id: &str, crl: bool) -> Credentials {
        let crl = crl.then(|| dir.join(CA_CRL_FILE));
        files(dir, role, id).load_with_crl(crl.as_deref()).unwrap()
    }

    /// A CA with node `a`, `b` and gateways `g`, `h`; `g` and node `b` revoked.
    fn deployment() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(dir.path()).unwrap();
        for (role, id) in [
            (PeerRole::Node, "a"),
            (PeerRole::Node, "b"),
            (PeerRole::Gateway, "g"),
            (PeerRole::Gateway, "h"),
        ] {
            pki::issue(dir.path(), role, id, dir.path(), 30).unwrap();
        }
        let first = pki::revoke(dir.path(), &dir.path().join("gateway-g.pem")).unwrap();
        assert_eq!(first.number, 1);
        assert!(first.newly);
        assert_eq!(first.identity.as_deref(), Some("domsync://gateway/g"));
        let second = pki::revoke(dir.path(), &dir.path().join("node-b.pem")).unwrap();
        assert_eq!((second.number, second.revoked), (2, 2));
        dir
    }

    fn serial_of(path: &Path) -> String {
        let pem = std::fs::read(path).unwrap();
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        CertificateInfo::from_der(&der).unwrap().serial
    }

    /// Handshakes of `client` with a node server of `server` credentials on loopback: what
    /// the server's accept says.
    async fn handshake(server: &Credentials, client: &Credentials) -> Result<(), String> {
        let config = crate::server_config(
            server,
            &[ALPN_GATEWAY],
            Arc::new(crate::server_transport_config()),
        )
        .unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let client_config = crate::client_config(client, ALPN_GATEWAY).unwrap();
        let client_endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = client_endpoint
            .connect_with(client_config, addr, crate::SERVER_NAME)
            .unwrap();
        // The client's side may finish before the server refuses its certificate: the
        // server's accept is the verdict.
        let client_side = tokio::spawn(async move {
            let conn = connecting.await;
            if let Ok(c) = &conn {
                let _ = c.closed().await;
            }
        });
        let incoming = endpoint.accept().await.unwrap();
        let verdict = crate::accept(incoming, ALPN_GATEWAY)
            .await
            .map(|(conn, _)| conn.close(0u32.into(), b"done"))
            .map_err(|e| e.to_string());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), client_side).await;
        verdict
    }

    #[tokio::test]
    async fn a_revoked_client_is_refused_by_a_server_with_the_crl() {
        let dir = deployment();
        let server = creds(dir.path(), PeerRole::Node, "a", true);
        assert_eq!(server.crls.len(), 1);
        let revoked = creds(dir.path(), PeerRole::Gateway, "g", false);
        let fine = creds(dir.path(), PeerRole::Gateway, "h", false);
        handshake(&server, &fine).await.unwrap();
        let refused = handshake(&server, &revoked).await.unwrap_err();
        assert!(refused.contains("handshake"), "{refused}");
        // Without the CRL the same certificate is accepted: the refusal is the CRL's.
        let no_crl = creds(dir.path(), PeerRole::Node, "a", false);
        handshake(&no_crl, &revoked).await.unwrap();
    }

    #[test]
    fn a_revoked_node_server_is_refused_by_the_node_verifier() {
        let dir = deployment();
        let a = creds(dir.path(), PeerRole::Node, "a", true);
        let verifier = NodeServerVerifier::new(a.roots.clone(), None)
            .with_crls(&a.crls)
            .unwrap();
        let name = ServerName::try_from(crate::SERVER_NAME).unwrap();
        let b = creds(dir.path(), PeerRole::Node, "b", false);
        let got = verifier.verify_server_cert(&b.chain[0], &[], &name, &[], UnixTime::now());
        assert!(
            matches!(
                got,
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            ),
            "{got:?}"
        );
        assert!(verifier
            .verify_server_cert(&a.chain[0], &[], &name, &[], UnixTime::now())
            .is_ok());
        // Without CRLs, b is a node like any other.
        let plain = NodeServerVerifier::new(a.roots.clone(), None);
        assert!(plain
            .verify_server_cert(&b.chain[0], &[], &name, &[], UnixTime::now())
            .is_ok());
    }

    #[test]
    fn the_crl_lists_serials_and_its_number_grows() {
        let dir = deployment();
        let list = RevocationList::load(&dir.path().join(CA_CRL_FILE), &dir.path().join("ca.pem"))
            .unwrap();
        assert_eq!(list.number.as_deref(), Some("2"));
        assert!(list
            .revoked
            .contains(&serial_of(&dir.path().join("gateway-g.pem"))));
        assert!(list
            .revoked
            .contains(&serial_of(&dir.path().join("node-b.pem"))));
        assert!(!list
            .revoked
            .contains(&serial_of(&dir.path().join("node-a.pem"))));
        let again =
            pki::revoke_serial(dir.path(), &serial_of(&dir.path().join("node-b.pem"))).unwrap();
        assert!(!again.newly);
        assert_eq!((again.number, again.revoked), (3, 2));
        assert!(matches!(
            pki::revoke_serial(dir.path(), "zz"),
            Err(pki::PkiError::BadSerial { .. })
        ));
    }

    #[test]
    fn a_broken_set_is_refused_whole() {
        let dir = deployment();
        let d = dir.path();
        let a = files(d, PeerRole::Node, "a");
        let crl = d.join(CA_CRL_FILE);
        // Unreadable (missing) file.
        let missing = TlsFiles {
            key: d.join("nope.key"),
            ..a.clone()
        };
        let e = missing.load_with_crl(Some(&crl)).unwrap_err();
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        // Not PEM.
        let junk = d.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = TlsFiles {
            cert: junk.clone(),
            ..a.clone()
        }
        .load_with_crl(Some(&crl))
        .unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        // A key of another certificate.
        let e = TlsFiles {
            key: d.join("node-b.key"),
            ..a.clone()
        }
        .load_with_crl(Some(&crl))
        .unwrap_err();
        assert!(matches!(e, TlsError::Key { .. }), "{e}");
        // A CRL that is not one, and a CRL of another CA.
        let e = a.load_with_crl(Some(&junk)).unwrap_err();
        assert!(matches!(e, TlsError::Crl { .. }), "{e}");
        let other = deployment();
        let e = a
            .load_with_crl(Some(&other.path().join(CA_CRL_FILE)))
            .unwrap_err();
        assert!(
            matches!(e, TlsError::Crl { .. }) && e.to_string().contains("not signed by the CA"),
            "{e}"
        );
        // A certificate of another CA.
        let e = TlsFiles {
            cert: other.path().join("node-a.pem"),
            key: other.path().join("node-a.key"),
            ..a.clone()
        }
        .load_with_crl(Some(&crl))
        .unwrap_err();
        assert!(matches!(e, TlsError::OwnCertificate { .. }), "{e}");
        // Our own certificate revoked.
        let e = files(d, PeerRole::Node, "b")
            .load_with_crl(Some(&crl))
            .unwrap_err();
        assert!(matches!(e, TlsError::OwnRevoked { .. }), "{e}");
        // The good set loads, DER CRL too.
        let der = d.join("ca.der.crl");
        let pem = std::fs::read(&crl).unwrap();
        let one = CertificateRevocationListDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        std::fs::write(&der, one.as_ref()).unwrap();
        assert_eq!(a.load_with_crl(Some(&der)).unwrap().crls.len(), 1);
    }
}
