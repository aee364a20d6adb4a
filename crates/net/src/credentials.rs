//! Credentials from PEM files (certificate, key, CA), checked when loaded, and the errors of
//! everything TLS.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::files as pki;
use crate::identity::{Identity, IdentityError};

use crate::accept::*;
use crate::revocation::RevocationList;
use crate::tls::{client_verifier, provider};

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
    /// The revocation list (`[tls] crl`) cannot be used.
    #[error("CRL {}: {reason}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Our own certificate is revoked by the revocation list given with it.
    #[error("{} is revoked by the CRL {}: issue a new certificate (`domsync pki issue`) and point tls.cert and tls.key at it", cert.display(), crl.display())]
    OwnRevoked {
        /// The certificate file.
        cert: PathBuf,
        /// The CRL file.
        crl: PathBuf,
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

pub(crate) fn config_error(e: impl fmt::Display) -> TlsError {
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

    /// Reads and checks the files and, when given, the deployment CRL: see
    /// [`Credentials::load_with_crl`].
    ///
    /// # Errors
    /// As [`Credentials::load_with_crl`].
    pub fn load_with_crl(&self, crl: Option<&Path>) -> Result<Credentials, TlsError> {
        Credentials::load_with_crl(self, crl)
    }
}

/// Loaded TLS material: trusted roots, our chain and key, and the identity in our certificate.
/// Its `Debug` never shows the key.
pub struct Credentials {
    /// The trusted deployment CA certificates.
    pub roots: Arc<RootCertStore>,
    /// Our certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// Our identity, read from our certificate.
    pub identity: Identity,
    /// The deployment's revocation lists (`[tls] crl`; empty without one): every handshake,
    /// as server or client, refuses a peer certificate they revoke.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
            crls: self.crls.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("crls", &self.crls.len())
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
        Credentials::load_with_crl(files, None)
    }

    /// As [`Credentials::load`], with the deployment CRL of the file `crl` when given: it must
    /// parse (PEM or DER) and be signed by the CA, and must not revoke our own certificate.
    /// Everything is read and checked before anything is returned: a set with one bad file
    /// is refused as a whole.
    ///
    /// # Errors
    /// As [`Credentials::load`], and [`TlsError::Crl`] or [`TlsError::OwnRevoked`].
    pub fn load_with_crl(files: &TlsFiles, crl: Option<&Path>) -> Result<Self, TlsError> {
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
        let mut cas = Vec::new();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| pem_error(&files.ca, format!("bad PEM: {e}")))?;
            cas.push(cert.clone());
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

        let crls = match crl {
            None => Vec::new(),
            Some(path) => {
                let list = RevocationList::load_for(path, &files.ca, &cas)?;
                let revoked = client_verifier(&roots, &list.crls)?.verify_client_cert(
                    leaf,
                    &chain[1..],
                    UnixTime::now(),
                );
                if let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) =
                    revoked
                {
                    return Err(TlsError::OwnRevoked {
                        cert: files.cert.clone(),
                        crl: path.to_owned(),
                    });
                }
                list.crls
            }
        };

        Ok(Credentials {
            roots,
            chain,
            key,
            identity,
            crls,
        })
    }
}
