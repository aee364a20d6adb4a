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
//!   [`authorize`] from the client's role and the application protocol (ALPN): only nodes
//!   replicate ([`ALPN_REPL`]); only gateways read through [`ALPN_GATEWAY`]; only admins
//!   administer through [`ALPN_ADMIN`]. A refused connection is closed with
//!   [`CLOSE_REFUSED`] and a short reason ([`refuse`]).
//! * TLS 1.3 only, one crypto provider (*ring*), no session resumption (every connection
//!   checks the certificates afresh), no 0-RTT.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::identity::{Identity, IdentityError, PeerRole};
use crate::files as pki;

/// ALPN of node-to-node replication. Only [`PeerRole::Node`] may use it.
pub const ALPN_REPL: &[u8] = b"domsync-repl/1";
/// ALPN of the gateway read service. [`PeerRole::Gateway`] and [`PeerRole::Node`] may use it.
pub const ALPN_GATEWAY: &[u8] = b"domsync-gw/1";
/// ALPN of remote administration (`domsync --remote`). Only [`PeerRole::Admin`] may use it:
/// node and gateway certificates cannot administer.
pub const ALPN_ADMIN: &[u8] = b"domsync-admin/1";

/// Application close code of a connection refused by [`authorize`] ("forbidden").
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(0x403);

/// Server name to pass to `quinn::Endpoint::connect`: it must be a syntactically valid name,
/// but it is not checked (the server's URI SAN is).
pub const SERVER_NAME: &str = "domsync.invalid";

/// Most bidirectional streams a peer may have open at once on one connection.
pub const MAX_BIDI_STREAMS: u32 = 1024;
/// Most unidirectional streams a peer may have open at once on one connection.
pub const MAX_UNI_STREAMS: u32 = 100;
/// Bytes a peer may send on one stream beyond what the application has read.
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
/// Bytes a peer may send on all streams of a connection beyond what the application has read.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;
/// [`STREAM_RECEIVE_WINDOW`] on connections a node accepts (see [`server_transport_config`]).
pub const SERVER_STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
/// [`CONNECTION_RECEIVE_WINDOW`] on connections a node accepts (see
/// [`server_transport_config`]).
pub const SERVER_CONNECTION_RECEIVE_WINDOW: u32 = 4 << 20;
/// Unacknowledged bytes this side keeps in flight on one connection.
pub const SEND_WINDOW: u64 = 32 << 20;
/// Interval of keep-alive packets on an otherwise idle connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A connection that hears nothing from its peer for this long is closed (the smaller of both
/// sides' values applies).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Explicit QUIC transport settings for domsync connections (quinn's defaults are a 1.25 MB
/// stream window, an unbounded connection window, 100 streams and no keep-alive):
///
/// | setting | value |
/// | --- | --- |
/// | concurrent bidirectional streams per peer | [`MAX_BIDI_STREAMS`] (1024) |
/// | concurrent unidirectional streams per peer | [`MAX_UNI_STREAMS`] (100) |
/// | stream receive window | [`STREAM_RECEIVE_WINDOW`] (4 MiB) |
/// | connection receive window | [`CONNECTION_RECEIVE_WINDOW`] (32 MiB): bounds the memory one peer can make us buffer |
/// | send window | [`SEND_WINDOW`] (32 MiB) |
/// | keep-alive | [`KEEP_ALIVE`] (5 s), well below the idle timeout so idle links stay up |
/// | idle timeout | [`IDLE_TIMEOUT`] (30 s): how long a silent peer takes to be declared lost |
///
/// The same settings suit both ends; [`client_config_for`] applies them, and
/// [`server_config`] takes them as an argument so a caller can adjust them.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            // Fits: 30 000 ms.
            IDLE_TIMEOUT.as_millis() as u32,
        ))));
    t
}

/// [`transport_config`] for the connections a node accepts, with smaller receive windows
/// ([`SERVER_STREAM_RECEIVE_WINDOW`], [`SERVER_CONNECTION_RECEIVE_WINDOW`]): on an accepted
/// connection the peer only sends requests (follow, acks, probes, gateway queries, admin
/// requests); bulk data (records, snapshots, packages) flows towards the side that opened the
/// stream. A small window bounds what each connected peer can make the node buffer.
pub fn server_transport_config() -> TransportConfig {
    let mut t = transport_config();
    t.stream_receive_window(VarInt::from_u32(SERVER_STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(SERVER_CONNECTION_RECEIVE_WINDOW));
    t
}

/// Why a peer was refused by [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefuseReason {
    /// The peer presented no certificate.
    #[error("it presented no certificate; give it one issued by the deployment CA")]
    NoCertificate,
    /// The peer's certificate carries no usable identity.
    #[error("{0}")]
    BadIdentity(IdentityError),
    /// The peer's role may not use this protocol.
    #[error("a {role} certificate may not use {protocol}; only {allowed} may")]
    WrongRole {
        /// The peer's role.
        role: PeerRole,
        /// The protocol it asked for.
        protocol: String,
        /// The roles that may use it.
        allowed: String,
    },
    /// The negotiated protocol is not the one this service speaks.
    #[error("it negotiated protocol {negotiated} but this service speaks {expected}")]
    WrongProtocol {
        /// What was negotiated (`none` when nothing was).
        negotiated: String,
        /// What the service speaks.
        expected: String,
    },
}

/// Loading credentials, building a configuration, or authenticating a peer failed. Each
/// message is one line that says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM content.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing or wrong, and what to do.
        reason: String,
    },
    /// Our own certificate carries no usable identity.
    #[error("{}: {source}", path.display())]
    OwnIdentity {
        /// The certificate file.
        path: PathBuf,
        /// Why its identity is refused.
        source: IdentityError,
    },
    /// Our own certificate would be refused by peers trusting our CA file.
    #[error("{} is not accepted by the CA in {}: {reason}; issue it from this CA (`domsync pki issue`) or fix the CA path", cert.display(), ca.display())]
    OwnCertificate {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What the verifier said.
        reason: String,
    },
    /// The private key does not match the certificate or cannot be used.
    #[error("{} cannot be used with {}: {reason}; give the key written together with the certificate", key.display(), cert.display())]
    Key {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Only node certificates may accept connections.
    #[error(
        "{identity} cannot serve connections: only node certificates (domsync://node/<id>) may"
    )]
    NotANode {
        /// Our identity.
        identity: Identity,
    },
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration refused: {reason}")]
    Config {
        /// What was refused.
        reason: String,
    },
    /// The TLS/QUIC handshake with a peer failed.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// What quinn reported.
        source: quinn::ConnectionError,
    },
    /// The peer (a server we connected to, or a client on a service) has no usable identity.
    #[error("peer {addr}: {reason}")]
    PeerIdentity {
        /// The peer's address.
        addr: SocketAddr,
        /// Why its identity is unknown.
        reason: RefuseReason,
    },
    /// An authenticated peer may not use this service.
    #[error("refused {addr} ({peer}): {reason}")]
    Refused {
        /// The peer's address.
        addr: SocketAddr,
        /// Its identity (`domsync://<role>/<id>`) or what is known of it.
        peer: String,
        /// Why.
        reason: RefuseReason,
    },
}

impl TlsError {
    /// The reason a peer was refused, if this is a refusal of a peer.
    pub fn refuse_reason(&self) -> Option<&RefuseReason> {
        match self {
            TlsError::PeerIdentity { reason, .. } | TlsError::Refused { reason, .. } => {
                Some(reason)
            }
            _ => None,
        }
    }
}

fn config_error(e: impl fmt::Display) -> TlsError {
    TlsError::Config {
        reason: e.to_string(),
    }
}

/// The three PEM files a node, gateway or admin needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The deployment CA certificate(s) (`ca.pem`); every certificate in it is trusted.
    pub ca: PathBuf,
    /// Our certificate, optionally followed by intermediates (`<role>-<id>.pem`).
    pub cert: PathBuf,
    /// Our private key (`<role>-<id>.key`, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files that `domsync pki init` and `domsync pki issue` write into `dir` for
    /// `identity`: `ca.pem`, `<role>-<id>.pem`, `<role>-<id>.key`.
    pub fn in_dir(dir: &Path, identity: &Identity) -> Self {
        let leaf = pki::leaf_files(dir, identity);
        TlsFiles {
            ca: dir.join(pki::CA_CERT_FILE),
            cert: leaf.cert,
            key: leaf.key,
        }
    }

    /// Reads and checks the files: see [`Credentials::load`].
    ///
    /// # Errors
    /// As [`Credentials::load`].
    pub fn load(&self) -> Result<Credentials, TlsError> {
        Credentials::load(self)
    }
}

/// Loaded TLS material: trusted roots, our chain and key, and the identity in our certificate.
/// Its `Debug` never shows the key.
pub struct Credentials {
    /// The trusted deployment CA certificates.
    pub roots: Arc<RootCertStore>,
    /// Our certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Our identity, read from our certificate.
    pub identity: Identity,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    /// Reads the CA, certificate and key files, and checks them together: the certificate has
    /// exactly one `domsync://` identity, the key belongs to it, and the CA file accepts it
    /// (signature, validity period, client-authentication usage). Mistakes are found here
    /// rather than as a handshake failure on the peer.
    ///
    /// # Errors
    /// [`TlsError::Read`], [`TlsError::Pem`], [`TlsError::OwnIdentity`], [`TlsError::Key`],
    /// [`TlsError::OwnCertificate`].
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let pem_error = |path: &Path, reason: String| TlsError::Pem {
            path: path.to_owned(),
            reason,
        };

        let ca_pem = read(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| pem_error(&files.ca, format!("bad PEM: {e}")))?;
            roots.add(cert).map_err(|e| {
                pem_error(
                    &files.ca,
                    format!("cannot use this certificate as a trust anchor: {e}"),
                )
            })?;
        }
        if roots.is_empty() {
            return Err(pem_error(
                &files.ca,
                "no PEM CERTIFICATE found; give the ca.pem written by `domsync pki init`".into(),
            ));
        }

        let chain = CertificateDer::pem_slice_iter(&read(&files.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(&files.cert, format!("bad PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(pem_error(
                &files.cert,
                "no PEM CERTIFICATE found; give the certificate written by `domsync pki issue`"
                    .into(),
            ));
        };
        let identity = Identity::from_cert_der(leaf).map_err(|source| TlsError::OwnIdentity {
            path: files.cert.clone(),
            source,
        })?;

        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| {
            pem_error(
                &files.key,
                format!(
                    "no usable PEM private key ({e}); give the key written by `domsync pki issue`"
                ),
            )
        })?;
        let provider = provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| TlsError::Key {
                key: files.key.clone(),
                cert: files.cert.clone(),
                reason: e.to_string(),
            },
        )?;

        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(config_error)?;
        verifier
            .verify_client_cert(leaf, &chain[1..], UnixTime::now())
            .map_err(|e| TlsError::OwnCertificate {
                cert: files.cert.clone(),
                ca: files.ca.clone(),
                reason: e.to_string(),
            })?;

        Ok(Credentials {
            roots,
            chain,
            key,
            identity,
        })
    }
}

/// The one crypto provider of domsync.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// QUIC server configuration of a node: presents `creds`, requires a client certificate
/// signed by the CA, offers the protocols `alpns` and uses `transport`. Call [`authorize`] on
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
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), provider.clone())
            .build()
            .map_err(config_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
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
/// a certificate signed by the CA whose URI SAN is a node identity, and `expect` itself when
/// given; the server name passed to `connect` is ignored. Uses [`transport_config`]; replace
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
    let verifier = NodeServerVerifier::new(creds.roots.clone(), expect);
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
/// its node URI SAN instead of a DNS name. Public for callers building their own rustls
/// configuration.
#[derive(Debug)]
pub struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expect: Option<Identity>,
}

impl NodeServerVerifier {
    /// Accepts node certificates that chain to `roots` and, when `expect` is given, carry
    /// exactly that identity. Signatures are checked with the *ring* provider.
    pub fn new(roots: Arc<RootCertStore>, expect: Option<&Identity>) -> Self {
        NodeServerVerifier {
            roots,
            algorithms: provider().signature_verification_algorithms,
            expect: expect.cloned(),
        }
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

/// The identity in the certificate the peer of `conn` presented (verified against the CA
/// during the handshake).
///
/// # Errors
/// [`TlsError::PeerIdentity`] when the peer presented no certificate or its certificate has
/// no usable `domsync://` identity.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, TlsError> {
    let addr = conn.remote_address();
    let no_cert = || TlsError::PeerIdentity {
        addr,
        reason: RefuseReason::NoCertificate,
    };
    let certs = conn
        .peer_identity()
        .ok_or_else(no_cert)?
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| no_cert())?;
    let leaf = certs.first().ok_or_else(no_cert)?;
    Identity::from_cert_der(leaf).map_err(|e| TlsError::PeerIdentity {
        addr,
        reason: RefuseReason::BadIdentity(e),
    })
}

/// The application protocol negotiated on `conn`, if any.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The roles that may use the service speaking `alpn` (none for an unknown protocol).
pub fn allowed_roles(alpn: &[u8]) -> &'static [PeerRole] {
    match alpn {
        ALPN_REPL => &[PeerRole::Node],
        ALPN_GATEWAY => &[PeerRole::Gateway],
        ALPN_ADMIN => &[PeerRole::Admin],
        _ => &[],
    }
}

/// Decides whether the peer of an accepted connection may use the service speaking `alpn`:
/// the connection must have negotiated `alpn`, and the peer's role must be one of
/// [`allowed_roles`]. Returns the peer's identity.
///
/// On `Err`, log the error (`tracing::warn!`, its `Display` is one line naming the peer's
/// address, identity and the reason) and close the connection with [`refuse`].
///
/// # Errors
/// [`TlsError::PeerIdentity`] or [`TlsError::Refused`].
pub fn authorize(conn: &quinn::Connection, alpn: &[u8]) -> Result<Identity, TlsError> {
    let addr = conn.remote_address();
    let identity = peer_identity(conn)?;
    let refused = |reason| TlsError::Refused {
        addr,
        peer: identity.to_string(),
        reason,
    };
    let negotiated = negotiated_alpn(conn);
    if negotiated.as_deref() != Some(alpn) {
        return Err(refused(RefuseReason::WrongProtocol {
            negotiated: negotiated
                .as_deref()
                .map_or_else(|| "none".into(), protocol_name),
            expected: protocol_name(alpn),
        }));
    }
    let allowed = allowed_roles(alpn);
    if !allowed.contains(&identity.role) {
        return Err(refused(RefuseReason::WrongRole {
            role: identity.role,
            protocol: protocol_name(alpn),
            allowed: if allowed.is_empty() {
                "no one".into()
            } else {
                allowed
                    .iter()
                    .map(|r| format!("{r} certificates"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            },
        }));
    }
    Ok(identity)
}

/// Closes a connection refused by [`authorize`] with [`CLOSE_REFUSED`] and the reason, so the
/// peer's operator sees why.
pub fn refuse(conn: &quinn::Connection, error: &TlsError) {
    let reason = match error.refuse_reason() {
        Some(reason) => reason.to_string(),
        None => error.to_string(),
    };
    conn.close(CLOSE_REFUSED, truncate(&reason, 200).as_bytes());
}

/// Completes the handshake of an incoming connection and [`authorize`]s it for `alpn`; a
/// refused connection is closed with [`refuse`] before the error is returned.
///
/// # Errors
/// [`TlsError::Handshake`] when the handshake fails (e.g. a certificate from another CA, or
/// none), or the errors of [`authorize`].
pub async fn accept(
    incoming: quinn::Incoming,
    alpn: &[u8],
) -> Result<(quinn::Connection, Identity), TlsError> {
    let addr = incoming.remote_address();
    let conn = incoming
        .await
        .map_err(|source| TlsError::Handshake { addr, source })?;
    match authorize(&conn, alpn) {
        Ok(identity) => Ok((conn, identity)),
        Err(e) => {
            refuse(&conn, &e);
            Err(e)
        }
    }
}

/// Like [`accept`] for an endpoint serving several protocols: the connection is authorized
/// for the one it negotiated (one of `alpns`), which is returned with the peer's identity.
///
/// # Errors
/// As [`accept`]; [`RefuseReason::WrongProtocol`] when the negotiated protocol is none of
/// `alpns`.
pub async fn accept_any(
    incoming: quinn::Incoming,
    alpns: &[&'static [u8]],
) -> Result<(quinn::Connection, Identity, &'static [u8]), TlsError> {
    let addr = incoming.remote_address();
    let conn = incoming
        .await
        .map_err(|source| TlsError::Handshake { addr, source })?;
    let negotiated = negotiated_alpn(&conn);
    let alpn = alpns
        .iter()
        .copied()
        .find(|a| negotiated.as_deref() == Some(*a))
        .or_else(|| alpns.first().copied())
        .unwrap_or(ALPN_REPL);
    match authorize(&conn, alpn) {
        Ok(identity) => Ok((conn, identity, alpn)),
        Err(e) => {
            refuse(&conn, &e);
            Err(e)
        }
    }
}

fn protocol_name(alpn: &[u8]) -> String {
    String::from_utf8_lossy(alpn).into_owned()
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_protocol() {
        assert_eq!(allowed_roles(ALPN_REPL), &[PeerRole::Node]);
        assert_eq!(allowed_roles(ALPN_GATEWAY), &[PeerRole::Gateway]);
        assert_eq!(allowed_roles(ALPN_ADMIN), &[PeerRole::Admin]);
        assert!(allowed_roles(b"other").is_empty());
        assert_eq!(truncate("héllo", 2), "h");
    }
}
