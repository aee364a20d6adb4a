//! One way to a node: the application socket (one connection, one request at a time, kept
//! between requests) or one QUIC connection to a node (one stream per request).
//!
//! Resending rule: a request whose frame was not completely written did not reach the node and
//! is sent again once on a fresh connection; a request that was written and then lost its
//! answer is sent again only when it is a read. A lost transaction is reported as
//! [`Failure::Unknown`]: the caller must read the key back.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use domsync_net::{read_message, write_message, Identity, PeerRole, ALPN_APP};
use domsync_proto::app::{Answer, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES, MAX_WAIT_MS};
use domsync_proto::model::NodeId;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::quic;

/// Longest wait for an answer beyond the `at_least` wait a read asks: a node that says
/// nothing for this long is taken as gone.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_millis(MAX_WAIT_MS as u64 + 30_000);

/// How long a request that could not be sent waits for a refusal already sent by the node.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The node could not be reached, or the request was not sent whole: nothing happened
    /// there; another node may be tried.
    Unreached(String),
    /// The request was sent and its answer lost: a transaction may or may not have committed.
    Unknown(String),
    /// The node answered bytes this client cannot read.
    Protocol(String),
    /// The request cannot be sent at all (larger than the protocol allows).
    Usage(String),
}

/// Where a link goes, for messages.
#[derive(Debug, Clone)]
pub(crate) enum Place {
    /// The application socket.
    Socket(PathBuf),
    /// A node over QUIC.
    Node(NodeId, SocketAddr),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Socket(p) => write!(f, "application socket {}", p.display()),
            Place::Node(n, a) => write!(f, "node {n} at {a} (domsync-app/1)"),
        }
    }
}

/// The application socket: one connection kept between requests.
pub(crate) struct SocketLink {
    pub(crate) path: PathBuf,
    stream: Mutex<Option<UnixStream>>,
}

impl SocketLink {
    pub(crate) fn new(path: PathBuf) -> SocketLink {
        SocketLink {
            path,
            stream: Mutex::new(None),
        }
    }

    pub(crate) fn place(&self) -> Place {
        Place::Socket(self.path.clone())
    }

    /// A new connection to the socket.
    pub(crate) async fn open(&self) -> Result<UnixStream, Failure> {
        let place = self.place();
        tokio::time::timeout(quic::CONNECT_TIMEOUT, UnixStream::connect(&self.path))
            .await
            .map_err(|_| Failure::Unreached(format!("cannot reach domsyncd at {place}: no answer in time")))?
            .map_err(|e| {
                Failure::Unreached(format!(
                    "cannot reach domsyncd at {place}: {e}; is domsyncd running with [apps] enabled, and may this user open the socket? (--app-socket or DOMSYNC_APP_SOCKET names another socket)"
                ))
            })
    }

    /// Sends `req` and reads its answer, on the kept connection (opened when needed).
    pub(crate) async fn call(&self, req: &Request) -> Result<Answer, Failure> {
        let read_only = !matches!(req, Request::Txn(_));
        let mut guard = self.stream.lock().await;
        for attempt in 0..2 {
            let reused = guard.is_some();
            let mut stream = match guard.take() {
                Some(s) => s,
                None => self.open().await?,
            };
            match exchange(&mut stream, req).await {
                Ok(answer) => {
                    *guard = Some(stream);
                    return Ok(answer);
                }
                // A connection kept from before may have been closed by a daemon restart:
                // once more on a fresh one, when that cannot apply a transaction twice.
                Err(Sent::Not(_)) if reused && attempt == 0 => continue,
                Err(Sent::Whole(_)) if reused && attempt == 0 && read_only => continue,
                Err(e) => return Err(e.failure(&self.place(), req)),
            }
        }
        Err(Failure::Unreached(format!(
            "cannot reach domsyncd at {}: the connection broke twice",
            self.place()
        )))
    }
}

/// How an exchange failed.
pub(crate) enum Sent {
    /// The request was not written whole.
    Not(String),
    /// It was written, and no answer came.
    Whole(String),
    /// The answer is unreadable.
    Garbled(String),
    /// The request cannot be encoded (too large).
    Unsendable(String),
}

impl Sent {
    pub(crate) fn failure(self, place: &Place, req: &Request) -> Failure {
        match self {
            Sent::Not(e) => Failure::Unreached(format!("{place}: {e}")),
            Sent::Unsendable(e) => Failure::Usage(format!(
                "the request cannot be sent to {place}: {e}; make the transaction smaller (at most {MAX_REQUEST_BYTES} bytes)"
            )),
            Sent::Garbled(e) => Failure::Protocol(format!(
                "{place} answered something this client cannot read: {e}; check that domsyncd and the client are of the same release"
            )),
            Sent::Whole(e) => match req {
                Request::Txn(t) => Failure::Unknown(format!(
                    "{place}: the connection failed after the transaction on domain {} was sent ({e}): its outcome is unknown; read the keys back before retrying",
                    t.domain
                )),
                _ => Failure::Unreached(format!("{place}: {e}")),
            },
        }
    }
}

/// One request and its answer on a byte stream.
async fn exchange<S>(stream: &mut S, req: &Request) -> Result<Answer, Sent>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match write_message(stream, req, MAX_REQUEST_BYTES).await {
        Ok(()) => read_answer(stream).await,
        Err(domsync_net::FrameError::Codec(c)) => Err(Sent::Unsendable(c.to_string())),
        Err(e) => {
            // A node refusing this client answers before it closes: the refusal may be
            // waiting even though the request bounced.
            let waiting = tokio::time::timeout(
                REFUSAL_WAIT,
                read_message::<_, Answer>(stream, MAX_ANSWER_BYTES),
            )
            .await;
            match waiting {
                Ok(Ok(Some(answer @ Answer::Error(_)))) => Ok(answer),
                _ => Err(Sent::Not(e.to_string())),
            }
        }
    }
}

/// Reads one answer frame within [`ANSWER_TIMEOUT`].
pub(crate) async fn read_answer<S>(stream: &mut S) -> Result<Answer, Sent>
where
    S: tokio::io::AsyncRead + Unpin,
{
    match tokio::time::timeout(
        ANSWER_TIMEOUT,
        read_message::<_, Answer>(stream, MAX_ANSWER_BYTES),
    )
    .await
    {
        Err(_) => Err(Sent::Whole("no answer in time".into())),
        Ok(Ok(Some(answer))) => Ok(answer),
        Ok(Ok(None)) => Err(Sent::Whole(
            "the connection closed without an answer".into(),
        )),
        Ok(Err(domsync_net::FrameError::Codec(e))) => Err(Sent::Garbled(e.to_string())),
        Ok(Err(e)) => Err(Sent::Whole(e.to_string())),
    }
}

/// One node over QUIC: its configuration, and the connection kept between requests.
pub(crate) struct QuicLink {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    config: quinn::ClientConfig,
    expected: Identity,
    endpoint: quinn::Endpoint,
    conn: Mutex<Option<quinn::Connection>>,
}

/// The two halves of one request's stream.
pub(crate) type BiStream = (quinn::SendStream, quinn::RecvStream);

impl QuicLink {
    /// The link to `node` at `addr` with the application certificate `app-<id>` of `pki`.
    pub(crate) fn new(
        node: NodeId,
        addr: SocketAddr,
        pki: &std::path::Path,
        id: &str,
    ) -> Result<QuicLink, String> {
        let (config, expected) = quic::client_config(pki, PeerRole::App, id, ALPN_APP, &node)
            .map_err(|e| format!("node {node} at {addr}: {e}"))?;
        let endpoint = quic::endpoint_for(&addr)?;
        Ok(QuicLink {
            node,
            addr,
            config,
            expected,
            endpoint,
            conn: Mutex::new(None),
        })
    }

    pub(crate) fn place(&self) -> Place {
        Place::Node(self.node.clone(), self.addr)
    }

    /// The kept connection, or a new one.
    async fn connection(&self) -> Result<quinn::Connection, Failure> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let place = self.place();
        let c = quic::connect(
            &self.endpoint,
            self.config.clone(),
            self.addr,
            &self.expected,
            &place,
            "--app-remote",
        )
        .await
        .map_err(Failure::Unreached)?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// A new stream carrying `req` (finished when `finish`), on the kept connection or,
    /// when that one is gone, on a new one.
    pub(crate) async fn open(&self, req: &Request, finish: bool) -> Result<BiStream, Failure> {
        let place = self.place();
        for attempt in 0..2 {
            let conn = self.connection().await?;
            let (mut send, recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) if attempt == 0 => {
                    tracing::debug!("{place}: {e}; connecting again");
                    self.forget(&conn).await;
                    continue;
                }
                Err(e) => return Err(Failure::Unreached(quic::refusal(&place, e))),
            };
            if let Err(e) = write_message(&mut send, req, MAX_REQUEST_BYTES).await {
                if let domsync_net::FrameError::Codec(c) = e {
                    return Err(Sent::Unsendable(c.to_string()).failure(&place, req));
                }
                let text = match conn.close_reason() {
                    Some(r) => quic::refusal(&place, r),
                    None => e.to_string(),
                };
                // Stream data not written whole is never processed by the node.
                if attempt == 0 && conn.close_reason().is_some() {
                    self.forget(&conn).await;
                    continue;
                }
                return Err(Failure::Unreached(text));
            }
            if finish {
                let _ = send.finish();
            }
            return Ok((send, recv));
        }
        Err(Failure::Unreached(format!(
            "{place}: the connection broke twice"
        )))
    }

    /// Sends `req` on its own stream and reads its answer.
    pub(crate) async fn call(&self, req: &Request) -> Result<Answer, Failure> {
        let place = self.place();
        for attempt in 0..2 {
            let (_send, mut recv) = self.open(req, true).await?;
            match read_answer(&mut recv).await {
                Ok(a) => return Ok(a),
                Err(Sent::Whole(_)) if attempt == 0 && !matches!(req, Request::Txn(_)) => {
                    let conn = self.conn.lock().await.clone();
                    if let Some(c) = conn {
                        self.forget(&c).await;
                    }
                    continue;
                }
                Err(e) => {
                    let closed = self
                        .conn
                        .lock()
                        .await
                        .as_ref()
                        .and_then(|c| c.close_reason());
                    return Err(match (e, closed) {
                        (Sent::Whole(_), Some(r)) => {
                            Sent::Whole(quic::refusal(&"the node", r)).failure(&place, req)
                        }
                        (e, _) => e.failure(&place, req),
                    });
                }
            }
        }
        Err(Failure::Unreached(format!(
            "{place}: the connection broke twice"
        )))
    }

    /// Drops the kept connection when it is still `conn`.
    async fn forget(&self, conn: &quinn::Connection) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
            *guard = None;
        }
    }

    /// Closes the kept connection.
    pub(crate) async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close(0u32.into(), b"done");
        }
    }
}
