//! Accepting a connection: who the peer is (its certificate's URI SAN) and whether its role
//! may use the protocol it asked for; a refused peer is closed with a one-line reason.

use rustls::pki_types::CertificateDer;

use crate::identity::{Identity, IdentityError, PeerRole};

use crate::credentials::*;
use crate::transport::*;

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
        ALPN_APP => &[PeerRole::App],
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

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
