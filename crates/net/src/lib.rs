//! Identity, mutual TLS and framing (DESIGN.md §9): who a peer is, and the QUIC configurations that
//! prove it.
//!
//! * identity: a peer's [`Identity`] is the one `domsync://<role>/<id>` URI SAN of its
//!   certificate, with role [`PeerRole::Node`], [`PeerRole::Gateway`] or [`PeerRole::Admin`].
//! * [`pki`] (feature `pki`): a small deployment CA (`domsync pki init` / `domsync pki issue`). Deployments
//!   may bring their own CA instead: leaves need only that URI SAN and the usual key usages.
//! * revocation: the deployment CRL ([`RevocationList`], `[tls] crl`) is enforced on every
//!   handshake, as server and as client, once given to [`Credentials::load_with_crl`].
//! * TLS: [`Credentials`] from PEM files, quinn server and client configurations with
//!   mutual TLS 1.3 (ring), explicit transport settings, and [`authorize`], which decides from
//!   a peer's role and the protocol (ALPN) whether it may use a service: only nodes replicate.
//!
//! Nodes are addressed by IP, so clients check the server's URI SAN (role `node`, optionally a
//! given id) instead of a DNS name. Keys are read from files and never logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use domsync_net::{Identity, PeerRole, TlsFiles, ALPN_REPL};
//!
//! let me = Identity::new(PeerRole::Node, "a")?;
//! let creds = TlsFiles::in_dir("/etc/domsync/pki".as_ref(), &me).load()?;
//! let server = domsync_net::server_config(&creds, &[ALPN_REPL], Arc::new(domsync_net::transport_config()))?;
//! let endpoint = quinn::Endpoint::server(server, "127.0.0.1:7400".parse()?)?;
//! while let Some(incoming) = endpoint.accept().await {
//!     match domsync_net::accept(incoming, ALPN_REPL).await {
//!         Ok((conn, peer)) => { /* serve `peer` on `conn` */ }
//!         Err(e) => tracing::warn!("{e}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod accept;
mod certinfo;
mod credentials;
mod files;
mod frame;
mod identity;
#[cfg(any(test, feature = "pki"))]
pub mod pki;
mod revocation;
mod tls;
mod transport;

pub use accept::{
    accept, accept_any, allowed_roles, authorize, negotiated_alpn, peer_identity, refuse,
    RefuseReason,
};
pub use certinfo::{peer_certificate, CertificateInfo};
pub use credentials::{Credentials, TlsError, TlsFiles};
pub use files::{
    ca_files, file_stem, leaf_files, PkiFiles, CA_CERT_FILE, CA_CRL_FILE, CA_KEY_FILE,
};
pub use frame::{open_frame, read_frame, read_message, write_frame, write_message, FrameError};
pub use identity::{Identity, IdentityError, PeerRole};
pub use revocation::RevocationList;
pub use tls::{client_config, client_config_for, server_config, NodeServerVerifier};
pub use transport::{
    server_transport_config, transport_config, ALPN_ADMIN, ALPN_APP, ALPN_GATEWAY, ALPN_REPL,
    CLOSE_REFUSED, CONNECTION_RECEIVE_WINDOW, IDLE_TIMEOUT, KEEP_ALIVE, MAX_BIDI_STREAMS,
    MAX_UNI_STREAMS, SEND_WINDOW, SERVER_CONNECTION_RECEIVE_WINDOW, SERVER_NAME,
    SERVER_STREAM_RECEIVE_WINDOW, STREAM_RECEIVE_WINDOW,
};
