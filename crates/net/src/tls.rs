//! Mutual TLS for QUIC: credentials from files, server and client configurations, and the
//! authorization of peers by the role in their certificate.
//!
//! * Both sides present a certificate signed by the deployment CA (`ca.pem`); both verify the
//!   other's chain, validity period and extended key usage with webpki.
//! * Nodes are reached by IP address, and certificates carry no DNS name: a client ignores the
//!   server name and instead requires the server's URI SAN to be a **node** identity
//!   (optionally a given one, see [`client_config_for`]). Pass any valid name, e.g.
//!   [`SERVER_NAME`], to `quinn::Endpoint::connect`.
//! * A server accepts any CA-signed client during the handshake and then decides with
//!   [`authorize`](crate::authorize) from the client's role and the application protocol (ALPN): only nodes
//!   replicate ([`ALPN_REPL`]); only gateways read through [`ALPN_GATEWAY`]; only admins
//!   administer through [`ALPN_ADMIN`]. A refused connection is closed with
//!   [`CLOSE_REFUSED`] and a short reason ([`refuse`]).
//! * TLS 1.3 only, one crypto provider (*ring*), no session resumption (every connection
//!   checks the certificates afresh), no 0-RTT.

use std::fmt;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::TransportConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::identity::{Identity, IdentityError, PeerRole};

use crate::credentials::*;
use crate::revocation::{check_revocation, log_if_revoked, parse_crls, LoggedClientVerifier};
use crate::transport::*;

/// The one crypto provider of domsync.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The verifier of client certificates: signed by a CA of `roots` and, with `crls`, not
/// revoked by them (end entity only; a certificate of a CA without a CRL here is not refused
/// for it).
pub(crate) fn client_verifier(
    roots: &Arc<RootCertStore>,
    crls: &[CertificateRevocationListDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    builder.build().map_err(config_error)
}

/// QUIC server configuration of a node: presents `creds`, requires a client certificate
/// signed by the CA and not revoked by `creds.crls`, offers the protocols `alpns` and uses `transport`. Call [`authorize`](crate::authorize) on
/// each accepted connection.
///
/// # Errors
/// [`TlsError::NotANode`] unless `creds` is a node's; [`TlsError::Config`] when rustls or quinn
/// refuse the configuration.
pub fn server_config(
    creds: &Credentials,
    alpns: &[&[u8]],
    transport: Arc<TransportConfig>,
) -> Result<quinn::ServerConfig, TlsError> {
    if creds.identity.role != PeerRole::Node {
        return Err(TlsError::NotANode {
            identity: creds.identity.clone(),
        });
    }
    let verifier = Arc::new(LoggedClientVerifier::new(client_verifier(
        &creds.roots,
        &creds.crls,
    )?));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(config_error)?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    // Every connection verifies the client's certificate afresh (no resumption, no 0-RTT).
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport);
    Ok(config)
}

/// QUIC client configuration speaking `alpn`, presenting `creds`, accepting any node signed by
/// the CA. Same as [`client_config_for`] with no expected node.
///
/// # Errors
/// As [`client_config_for`].
pub fn client_config(creds: &Credentials, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    client_config_for(creds, alpn, None)
}

/// QUIC client configuration speaking `alpn` and presenting `creds`. The server must present
/// a certificate signed by the CA, not revoked by `creds.crls`, whose URI SAN is a node
/// identity, and `expect` itself when given; the server name passed to `connect` is ignored. Uses [`transport_config`]; replace
/// it with `quinn::ClientConfig::transport_config` if needed.
///
/// # Errors
/// [`TlsError::Config`] when rustls or quinn refuse the configuration.
pub fn client_config_for(
    creds: &Credentials,
    alpn: &[u8],
    expect: Option<&Identity>,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = NodeServerVerifier::new(creds.roots.clone(), expect).with_crls(&creds.crls)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(config_error)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    // A resumed session would skip the verifier (and so the `expect` check).
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(config_error)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()));
    Ok(config)
}

/// The rustls server-certificate verifier of [`client_config_for`]: verifies a server as a node
/// of the deployment, by its chain to the CA (signature, validity period, serverAuth usage) and
/// its node URI SAN instead of a DNS name, and when given CRLs ([`NodeServerVerifier::with_crls`])
/// that it is not revoked (a revoked server is logged with its serial and identity). Public
/// for callers building their own rustls configuration.
#[derive(Debug)]
pub struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expect: Option<Identity>,
    crls: Vec<webpki::CertRevocationList<'static>>,
}

impl NodeServerVerifier {
    /// Accepts node certificates that chain to `roots` and, when `expect` is given, carry
    /// exactly that identity. Signatures are checked with the *ring* provider.
    pub fn new(roots: Arc<RootCertStore>, expect: Option<&Identity>) -> Self {
        NodeServerVerifier {
            roots,
            algorithms: provider().signature_verification_algorithms,
            expect: expect.cloned(),
            crls: Vec::new(),
        }
    }

    /// Also refuses a server certificate revoked by `crls` (the deployment CA's; end entity
    /// only, a certificate of a CA without a CRL here is not refused for it).
    ///
    /// # Errors
    /// [`TlsError::Config`] when a CRL cannot be parsed.
    pub fn with_crls(
        mut self,
        crls: &[CertificateRevocationListDer<'_>],
    ) -> Result<Self, TlsError> {
        self.crls = parse_crls(crls)?;
        Ok(self)
    }
}

/// Why a server's otherwise valid certificate was refused (carried in a rustls error).
#[derive(thiserror::Error)]
enum ServerIdentityError {
    #[error("server certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("server is {0}, not a node: connect to a node's address")]
    NotANode(Identity),
    #[error("server is {found}, expected {expected}: check the peer address")]
    Unexpected { found: Identity, expected: Identity },
}

/// rustls shows the error inside [`CertificateError::Other`] with `Debug`, and quinn passes that
/// text on: make it the readable one.
impl fmt::Debug for ServerIdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<ServerIdentityError> for rustls::Error {
    fn from(e: ServerIdentityError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        check_revocation(
            &self.crls,
            &self.roots,
            &self.algorithms,
            end_entity,
            intermediates,
            now,
        )
        .inspect_err(|e| log_if_revoked(end_entity, "server", e))?;
        let found = Identity::from_cert_der(end_entity).map_err(ServerIdentityError::from)?;
        if found.role != PeerRole::Node {
            return Err(ServerIdentityError::NotANode(found).into());
        }
        if let Some(expected) = &self.expect {
            if *expected != found {
                return Err(ServerIdentityError::Unexpected {
                    found,
                    expected: expected.clone(),
                }
                .into());
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::{allowed_roles, truncate};

    #[test]
    fn roles_per_protocol() {
        assert_eq!(allowed_roles(ALPN_REPL), &[PeerRole::Node]);
        assert_eq!(allowed_roles(ALPN_GATEWAY), &[PeerRole::Gateway]);
        assert_eq!(allowed_roles(ALPN_ADMIN), &[PeerRole::Admin]);
        assert_eq!(allowed_roles(ALPN_APP), &[PeerRole::App]);
        assert!(allowed_roles(b"other").is_empty());
        assert_eq!(truncate("héllo", 2), "h");
    }
}
