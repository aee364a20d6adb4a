//! What the admin and application clients share to reach a node over QUIC: the client
//! configuration from a PKI directory that pins the node's identity, the connection with a
//! bounded wait, and the one-line reading of a refused or failed handshake.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use domsync_net::{Identity, PeerRole, TlsFiles};
use domsync_proto::model::NodeId;

/// How long connecting to a daemon may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Loads `<role>-<id>.pem`/`.key` and `ca.pem` from `pki`, and builds a client configuration
/// speaking `alpn` that accepts only node `node` as the server.
pub(crate) fn client_config(
    pki: &Path,
    role: PeerRole,
    id: &str,
    alpn: &[u8],
    node: &NodeId,
) -> Result<(quinn::ClientConfig, Identity), String> {
    let me = Identity::new(role, id).map_err(|e| e.to_string())?;
    let creds = TlsFiles::in_dir(pki, &me)
        .load()
        .map_err(|e| e.to_string())?;
    let expected = Identity::new(PeerRole::Node, node.as_str()).map_err(|e| e.to_string())?;
    let config =
        domsync_net::client_config_for(&creds, alpn, Some(&expected)).map_err(|e| e.to_string())?;
    Ok((config, expected))
}

/// A client endpoint of the address family of `addr`.
pub(crate) fn endpoint_for(addr: &SocketAddr) -> Result<quinn::Endpoint, String> {
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    quinn::Endpoint::client(bind).map_err(|e| format!("cannot open a UDP socket: {e}"))
}

/// Connects `endpoint` to `addr` with `config`, waiting at most [`CONNECT_TIMEOUT`]. `target`
/// names the daemon in messages, `flag` the option that gives its id and address.
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    expected: &Identity,
    target: &(dyn Display + Sync),
    flag: &str,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect_with(config, addr, domsync_net::SERVER_NAME)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("cannot reach domsyncd at {target}: no answer in time"))?
        .map_err(|e| handshake_failure(target, expected, &e, flag))
}

/// The one line for a QUIC connection that failed; a server of another identity than the
/// expected node is named with what to do.
pub(crate) fn handshake_failure(
    target: &dyn Display,
    expected: &Identity,
    e: &quinn::ConnectionError,
    flag: &str,
) -> String {
    let text = e.to_string();
    if text.contains(&format!("expected {expected}")) {
        let found = text
            .split("server is ")
            .nth(1)
            .and_then(|rest| rest.split(", expected").next())
            .unwrap_or("another identity");
        return format!(
            "{target} refused: the server there is {found}, not the expected {expected}; \
             give the id of the node at that address ({flag} ID=ADDR) or the address of \
             node {}",
            expected.id
        );
    }
    format!("cannot reach domsyncd at {target}: {text}")
}

/// The one line for a connection closed by the server (a refusal names its reason).
pub(crate) fn refusal(target: &dyn Display, e: quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == domsync_net::CLOSE_REFUSED =>
        {
            format!("{target} refused: {}", String::from_utf8_lossy(&c.reason))
        }
        other => format!("{target}: {other}"),
    }
}
