//! The admin client: one connection to a running `domsyncd`, over its local Unix socket or
//! over QUIC (`domsync-admin/1`) with an admin certificate, carrying the requests of
//! [`domsync_proto::admin`]. Used by the `domsync` command and the load generator.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use domsync_client::admin::{Session, Target};
//! use domsync_proto::admin::{Answer, Request};
//!
//! let target = Target::Socket("/run/domsync/admin.sock".into());
//! let mut session = Session::open(&target).await?;
//! if let Answer::Status(status) = session.call(&Request::Status).await? {
//!     println!("{} domains on {}", status.domains.len(), status.node);
//! }
//! session.close().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domsync_net::{read_message, write_message, PeerRole, ALPN_ADMIN};
use domsync_proto::admin::{Answer, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
use domsync_proto::model::NodeId;

use crate::quic::{self, refusal, CONNECT_TIMEOUT};

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Target {
    /// Its admin socket.
    Socket(PathBuf),
    /// Its QUIC address, with this admin certificate. The server must prove it is `node`
    /// (certificate `domsync://node/<node>`); another node answering there is refused.
    Remote {
        /// The node expected at `addr`.
        node: NodeId,
        /// The node's QUIC address.
        addr: SocketAddr,
        /// Directory holding `ca.pem` and `admin-<id>.pem`/`.key`.
        pki: PathBuf,
        /// The admin's id (certificate `domsync://admin/<id>`).
        id: String,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "admin socket {}", p.display()),
            Target::Remote { node, addr, .. } => {
                write!(f, "remote admin of node {node} at {addr}")
            }
        }
    }
}

enum Conn {
    Unix(tokio::net::UnixStream),
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
    },
}

/// One connection to a daemon.
pub struct Session {
    target: Target,
    conn: Conn,
}

impl Session {
    /// Connects to the daemon at `target` (one Unix socket connection or one QUIC connection).
    ///
    /// # Errors
    /// One line saying why the daemon cannot be reached and what to check.
    pub async fn open(target: &Target) -> Result<Session, String> {
        let conn = match target {
            Target::Socket(path) => {
                let s = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::UnixStream::connect(path),
                )
                .await
                .map_err(|_| format!("cannot reach domsyncd at {target}: no answer in time"))?
                .map_err(|e| {
                    format!("cannot reach domsyncd at {target}: {e}; is domsyncd running, and are you its service user or root? (--socket or DOMSYNC_SOCKET names another socket)")
                })?;
                Conn::Unix(s)
            }
            Target::Remote {
                node,
                addr,
                pki,
                id,
            } => {
                let (client, expected) =
                    quic::client_config(pki, PeerRole::Admin, id, ALPN_ADMIN, node)
                        .map_err(|e| format!("{target}: {e}"))?;
                let endpoint = quic::endpoint_for(addr)?;
                let conn =
                    quic::connect(&endpoint, client, *addr, &expected, target, "--remote").await?;
                Conn::Quic { endpoint, conn }
            }
        };
        Ok(Session {
            target: target.clone(),
            conn,
        })
    }

    /// Sends one request and reads its answer (`Answer::Error` included).
    ///
    /// # Errors
    /// When the connection fails or closes without an answer.
    pub async fn call(&mut self, req: &Request) -> Result<Answer, String> {
        let target = &self.target;
        let fail = |e: &dyn std::fmt::Display| format!("{target}: {e}");
        let answer = match &mut self.conn {
            Conn::Unix(s) => {
                let sent = write_message(s, req, MAX_REQUEST_BYTES).await;
                // A refused client finds the refusal waiting even when its request bounced.
                let read = read_message::<_, Answer>(s, MAX_ANSWER_BYTES).await;
                match (sent, read) {
                    (_, Ok(Some(answer))) => Some(answer),
                    (Err(e), _) => return Err(fail(&e)),
                    (Ok(()), r) => r.map_err(|e| fail(&e))?,
                }
            }
            Conn::Quic { conn, .. } => {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| refusal(target, e))?;
                write_message(&mut send, req, MAX_REQUEST_BYTES)
                    .await
                    .map_err(|e| match conn.close_reason() {
                        Some(r) => refusal(target, r),
                        None => fail(&e),
                    })?;
                let _ = send.finish();
                read_message::<_, Answer>(&mut recv, MAX_ANSWER_BYTES)
                    .await
                    .map_err(|e| match conn.close_reason() {
                        Some(r) => refusal(target, r),
                        None => fail(&e),
                    })?
            }
        };
        answer.ok_or_else(|| format!("{target} closed the connection without an answer"))
    }

    /// Closes the connection (QUIC: waits briefly for the close to be sent).
    pub async fn close(self) {
        if let Conn::Quic { endpoint, conn } = self.conn {
            conn.close(0u32.into(), b"done");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

/// Parses `ID=ADDR` given to `flag` (`--remote`): the node expected at a remote admin
/// address, in the syntax of the gateway client's `--node`.
///
/// ```
/// let (node, addr) = domsync_client::admin::parse_remote("--remote", "a=127.0.0.1:7400")?;
/// assert_eq!((node.as_str(), addr.port()), ("a", 7400));
/// assert!(domsync_client::admin::parse_remote("--remote", "127.0.0.1:7400").is_err());
/// # Ok::<(), String>(())
/// ```
///
/// # Errors
/// One line naming the flag, the text and the expected form.
pub fn parse_remote(flag: &str, text: &str) -> Result<(NodeId, SocketAddr), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| {
        format!(
            "{flag} {text:?}: expected ID=ADDR, the id of the node to administer and its address, \
             for example a=10.0.0.1:7400 (the node's certificate must be domsync://node/<ID>)"
        )
    })?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{flag} {text:?}: bad address {addr:?} ({e}); use ID=IP:PORT"))?;
    let node = NodeId::new(id).map_err(|e| format!("{flag} {text:?}: {e}; use ID=IP:PORT"))?;
    Ok((node, addr))
}
