//! The daemon's admin server: the local Unix socket and the remote protocol
//! `domsync-admin/1` on the node's QUIC endpoint, both answering [`Request`]s against one
//! [`Daemon`].
//!
//! * The Unix socket is created with mode 0600 (bound under a temporary name, restricted,
//!   then renamed into place) and every connection's peer credentials (`SO_PEERCRED`) are
//!   checked: only the daemon's own user and root are served; anyone else gets a one-line
//!   refusal and is logged.
//! * Remote connections are authorized by the node's accept loop (admin certificates only:
//!   node and gateway certificates are refused with the TLS layer's reason) and handed over
//!   through [`Node::set_admin_handler`](domsync_node::Node::set_admin_handler).
//!
//! This module is the server (sockets, peer credentials, QUIC streams, shutdown); `dispatch`
//! answers each request, `status` builds the status report, `domains` adds and removes
//! domains and answers the placement plan.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use crate::local_socket::{self, BindError};
use crate::{AdminServerError, Daemon};
use domsync_net::{read_message, write_message, Identity};
use domsync_node::AdminHandler;
use domsync_proto::admin::{AdminError, Answer, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};

mod dispatch;
mod domains;
mod status;

use dispatch::handle;

/// The log target of the whole admin server, its submodules included (as before they were
/// split out): `RUST_LOG=domsync_daemon::admin_server=debug` selects it.
const LOG: &str = module_path!();

/// Admin connections served at once, per transport.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A running admin server. [`AdminServer::stop`] ends it (also the remote handler).
#[derive(Debug)]
pub struct AdminServer {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
}

/// Who is asking, for the logs.
#[derive(Debug, Clone)]
enum Client {
    Local { uid: u32, pid: Option<i32> },
    Remote(Identity),
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Local { uid, pid: Some(p) } => write!(f, "local uid {uid} pid {p}"),
            Client::Local { uid, pid: None } => write!(f, "local uid {uid}"),
            Client::Remote(id) => write!(f, "{id}"),
        }
    }
}

impl AdminServer {
    /// Binds the Unix socket at `config.node.admin_socket` and installs the remote handler on
    /// the daemon's node. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`AdminServerError`] when the socket cannot be created (another daemon serving it, a
    /// file that is not a socket in the way, permissions).
    pub fn start(daemon: &Arc<Daemon>) -> Result<AdminServer, AdminServerError> {
        let path = daemon.config().node.admin_socket;
        let (listener, owner) = bind(&path)?;
        let (shutdown, _) = watch::channel(false);
        tracing::info!(socket = %path.display(), uid = owner, "admin socket ready (mode 0600: the service user and root)");
        tokio::spawn(serve_unix(
            Arc::clone(daemon),
            listener,
            owner,
            shutdown.subscribe(),
        ));
        let remote = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let weak = Arc::downgrade(daemon);
        let stop = shutdown.subscribe();
        let handler: AdminHandler = Arc::new(move |conn: quinn::Connection, peer: Identity| {
            let Some(daemon) = weak.upgrade() else {
                return;
            };
            let Ok(permit) = Arc::clone(&remote).try_acquire_owned() else {
                tracing::warn!(peer = %peer, "admin connection refused: too many admin connections");
                conn.close(
                    domsync_net::CLOSE_REFUSED,
                    b"too many admin connections; retry later",
                );
                return;
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                serve_quic(daemon, conn, peer, stop).await;
                drop(permit);
            });
        });
        daemon.node().set_admin_handler(Some(handler));
        Ok(AdminServer { path, shutdown })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: no new connections, open ones end after their current request; the
    /// socket file is removed.
    pub fn stop(&self, daemon: &Daemon) {
        daemon.node().set_admin_handler(None);
        self.shutdown.send_replace(true);
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.path.display(), error = %e, "could not remove the admin socket");
            }
        }
    }
}

/// Creates the socket with mode 0600 (see [`local_socket::bind`]); a directory created for it
/// is the service user's only (0700, whatever the umask). Returns the listener and the uid
/// owning the socket (the daemon's own).
fn bind(path: &Path) -> Result<(UnixListener, u32), AdminServerError> {
    let spec = local_socket::Spec {
        key: "node.admin_socket",
        dir_mode: 0o700,
        mode: 0o600,
        gid: None,
    };
    let io = |source| AdminServerError::Io {
        path: path.to_owned(),
        source,
    };
    let listener = local_socket::bind(path, &spec).map_err(|e| match e {
        BindError::InTheWay(what) => AdminServerError::Path {
            path: path.to_owned(),
            what,
        },
        BindError::Io(e) | BindError::Chown(e) => io(e),
    })?;
    let owner = std::fs::symlink_metadata(path).map_err(io)?.uid();
    Ok((listener, owner))
}

async fn serve_unix(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    owner: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "admin connection refused: its peer credentials cannot be read");
                continue;
            }
        };
        let client = Client::Local {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        let daemon = Arc::clone(&daemon);
        let stop = shutdown.clone();
        if cred.uid() != owner && cred.uid() != 0 {
            tracing::warn!(client = %client, service_uid = owner, "admin connection refused: not the service user or root");
            let why = format!(
                "uid {} may not administer this node (only uid {owner}, the service user, and root may): run domsync as the service user or root",
                cred.uid()
            );
            tokio::spawn(refuse_local(stream, why));
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(client = %client, "admin connection refused: too many admin connections");
            tokio::spawn(refuse_local(
                stream,
                "too many admin connections; retry later".into(),
            ));
            continue;
        };
        tokio::spawn(async move {
            serve_local(daemon, stream, client, stop).await;
            drop(permit);
        });
    }
}

async fn refuse_local(mut stream: UnixStream, why: String) {
    let answer = Answer::Error(AdminError::Refused(why));
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        write_message(&mut stream, &answer, MAX_ANSWER_BYTES),
    )
    .await;
}

async fn serve_local(
    daemon: Arc<Daemon>,
    mut stream: UnixStream,
    client: Client,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, read_message::<_, Request>(&mut stream, MAX_REQUEST_BYTES)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let answer = match read {
            Err(_) => return,
            Ok(Ok(None)) => return,
            Ok(Ok(Some(req))) => handle(&daemon, &client, req).await,
            Ok(Err(e)) => {
                tracing::warn!(client = %client, error = %e, "bad admin request");
                let answer = Answer::Error(AdminError::BadRequest(e.to_string()));
                let _ = write_message(&mut stream, &answer, MAX_ANSWER_BYTES).await;
                return;
            }
        };
        if let Err(e) = send(&mut stream, &answer).await {
            tracing::debug!(client = %client, error = %e, "admin answer not delivered");
            return;
        }
    }
}

async fn serve_quic(
    daemon: Arc<Daemon>,
    conn: quinn::Connection,
    peer: Identity,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = Client::Remote(peer);
    tracing::debug!(client = %client, addr = %conn.remote_address(), "remote admin connected");
    loop {
        let stream = tokio::select! {
            s = tokio::time::timeout(IDLE_TIMEOUT, conn.accept_bi()) => s,
            _ = shutdown.wait_for(|s| *s) => {
                conn.close(0u32.into(), b"node shutting down");
                return;
            }
        };
        let (mut send_half, mut recv) = match stream {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return,
            Err(_) => {
                conn.close(0u32.into(), b"idle");
                return;
            }
        };
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            read_message::<_, Request>(&mut recv, MAX_REQUEST_BYTES),
        )
        .await;
        let answer = match read {
            Ok(Ok(Some(req))) => handle(&daemon, &client, req).await,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::warn!(client = %client, error = %e, "bad admin request");
                Answer::Error(AdminError::BadRequest(e.to_string()))
            }
            Err(_) => Answer::Error(AdminError::BadRequest("no request in time".into())),
        };
        if send(&mut send_half, &answer).await.is_ok() {
            let _ = send_half.finish();
        }
    }
}

async fn send<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    answer: &Answer,
) -> Result<(), domsync_net::FrameError> {
    match write_message(w, answer, MAX_ANSWER_BYTES).await {
        Err(domsync_net::FrameError::Codec(e)) => {
            let answer = Answer::Error(AdminError::Failed(format!(
                "the answer is too large to send ({e})"
            )));
            write_message(w, &answer, MAX_ANSWER_BYTES).await
        }
        other => other,
    }
}
