//! The daemon's application server: the protocol of [`domsync_proto::app`] on a local Unix
//! socket (`[apps] socket`) and on the node's QUIC endpoint (ALPN `domsync-app/1`, app
//! certificates).
//!
//! * The Unix socket is bound under a temporary name, given mode 0660 and the group of
//!   `[apps] group` when it is set (0600 otherwise), then renamed into place. Each
//!   connection's peer credentials (`SO_PEERCRED`, and `SO_PEERGROUPS` for the
//!   supplementary groups) decide
//!   ([`peer_may_connect`]): root, the service user and members of the group are served,
//!   anyone else gets a one-line refusal and is logged. Local clients read every domain held
//!   here and write when `[apps] local_write` (default true).
//! * A remote application is authenticated by its certificate (`domsync://app/<id>`) and
//!   authorized by its `[[apps.grants]]` entry: a domain not granted is answered
//!   [`AppError::Forbidden`] (as a domain not held), a write without `write = true`
//!   [`AppError::ReadOnly`].
//!
//! This module is the server (sockets, credentials, streams, limits, shutdown); `dispatch`
//! answers each request, `watches` runs watches.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use crate::local_socket::{self, BindError};
use crate::{AppServerError, Apps, Daemon};
use domsync_net::{read_message, write_message, FrameError, Identity};
use domsync_node::AppHandler;
use domsync_proto::app::{Answer, AppError, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};
use domsync_proto::model::DomainId;

mod dispatch;
mod watches;

/// Connections served at once, per transport.
pub const MAX_CONNECTIONS: usize = 256;

/// Requests in progress at once on one QUIC connection.
pub const MAX_STREAMS_PER_CONNECTION: usize = 64;

/// How long a connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an answer may wait for the client to read it before the connection is cut.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Who is asking, and what it may do.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// A local client on the Unix socket.
    Local {
        /// Its uid, for the logs.
        uid: u32,
        /// Its pid, for the logs.
        pid: Option<i32>,
        /// Whether it may write (`[apps] local_write`).
        write: bool,
    },
    /// An application certificate over QUIC.
    Remote(Identity),
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Access::Local {
                uid, pid: Some(p), ..
            } => write!(f, "local uid {uid} pid {p}"),
            Access::Local { uid, pid: None, .. } => write!(f, "local uid {uid}"),
            Access::Remote(id) => write!(f, "{id}"),
        }
    }
}

impl Access {
    /// Whether this client may read `domain` under `apps` (the running configuration's, read
    /// per request so a reload applies to the next one).
    pub(crate) fn may_read(&self, apps: &Apps, domain: &DomainId) -> bool {
        match self {
            Access::Local { .. } => true,
            Access::Remote(id) => apps
                .grants
                .iter()
                .any(|g| g.id == id.id && g.covers(domain)),
        }
    }

    /// Whether this client may write `domain` under `apps`.
    pub(crate) fn may_write(&self, apps: &Apps, domain: &DomainId) -> bool {
        match self {
            Access::Local { write, .. } => *write,
            Access::Remote(id) => apps
                .grants
                .iter()
                .any(|g| g.id == id.id && g.write && g.covers(domain)),
        }
    }
}

/// Whether a local peer may use the application socket: root, the service user
/// (`service_uid`), or a member of `group` (its gid as the peer's primary gid or among its
/// supplementary `groups`).
pub fn peer_may_connect(
    uid: u32,
    gid: u32,
    groups: &[u32],
    service_uid: u32,
    group: Option<u32>,
) -> bool {
    uid == 0 || uid == service_uid || group.is_some_and(|g| g == gid || groups.contains(&g))
}

/// A running application server. [`AppServer::stop`] ends it (also the remote handler).
#[derive(Debug)]
pub struct AppServer {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
}

/// What every connection shares.
#[derive(Clone)]
struct Shared {
    /// Watches running, all connections together ([`domsync_proto::app::MAX_WATCHES`]).
    watches: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl AppServer {
    /// Binds the socket of `[apps]` and installs the remote handler on the daemon's node.
    /// Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`AppServerError`] when the socket cannot be created or given to `[apps] group`.
    pub fn start(daemon: &Arc<Daemon>) -> Result<AppServer, AppServerError> {
        let apps = daemon.config().apps;
        let path = apps.socket.clone();
        let group = match &apps.group {
            Some(name) => Some((name.clone(), group_gid(name, &path)?)),
            None => None,
        };
        let listener = bind(&path, group.as_ref())?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let service_uid = unsafe { libc::geteuid() };
        let (shutdown, _) = watch::channel(false);
        let shared = Shared {
            watches: Arc::new(Semaphore::new(domsync_proto::app::MAX_WATCHES)),
            shutdown: shutdown.subscribe(),
        };
        tracing::info!(socket = %path.display(), group = apps.group.as_deref().unwrap_or("-"), local_write = apps.local_write, "application socket ready (mode 0660 with apps.group, else 0600)");
        tokio::spawn(serve_unix(
            Arc::clone(daemon),
            listener,
            service_uid,
            group.map(|(_, gid)| gid),
            shared.clone(),
        ));
        let remote = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let weak = Arc::downgrade(daemon);
        let handler: AppHandler = Arc::new(move |conn: quinn::Connection, peer: Identity| {
            let Some(daemon) = weak.upgrade() else {
                return;
            };
            let Ok(permit) = Arc::clone(&remote).try_acquire_owned() else {
                tracing::warn!(peer = %peer, "application connection refused: too many application connections");
                conn.close(
                    domsync_net::CLOSE_REFUSED,
                    b"too many application connections; retry later",
                );
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_quic(daemon, conn, peer, shared).await;
                drop(permit);
            });
        });
        daemon.node().set_app_handler(Some(handler));
        Ok(AppServer { path, shutdown })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: no new connections, open ones and watches end; the socket file is
    /// removed.
    pub fn stop(&self, daemon: &Daemon) {
        daemon.node().set_app_handler(None);
        self.shutdown.send_replace(true);
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %self.path.display(), error = %e, "could not remove the application socket");
            }
        }
    }
}

/// The gid of group `name` (from the group database).
fn group_gid(name: &str, path: &Path) -> Result<u32, AppServerError> {
    let failed = |detail: String| AppServerError::Group {
        path: path.to_owned(),
        group: name.to_owned(),
        detail,
    };
    let cname = std::ffi::CString::new(name).map_err(|_| failed("a NUL in its name".into()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: `group` and `result` are plain out-parameters; `buf` outlives the call and
    // its length is passed; `cname` is a valid C string.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(failed(std::io::Error::from_raw_os_error(rc).to_string()));
    }
    if result.is_null() {
        return Err(failed("no such group".into()));
    }
    Ok(group.gr_gid)
}

/// Creates the socket with mode 0660 and `group` (0600 without; see [`local_socket::bind`]).
/// A directory created for it is the service user's (0700), or passable (0711) when a group
/// is to reach the socket.
fn bind(path: &Path, group: Option<&(String, u32)>) -> Result<UnixListener, AppServerError> {
    let spec = local_socket::Spec {
        key: "apps.socket",
        dir_mode: if group.is_some() { 0o711 } else { 0o700 },
        mode: if group.is_some() { 0o660 } else { 0o600 },
        gid: group.map(|(_, gid)| *gid),
    };
    local_socket::bind(path, &spec).map_err(|e| match e {
        BindError::InTheWay(what) => AppServerError::Path {
            path: path.to_owned(),
            what,
        },
        BindError::Io(source) => AppServerError::Io {
            path: path.to_owned(),
            source,
        },
        BindError::Chown(e) => AppServerError::Group {
            path: path.to_owned(),
            group: group.map(|(name, _)| name.clone()).unwrap_or_default(),
            detail: e.to_string(),
        },
    })
}

/// The supplementary groups of the peer of `stream` (`SO_PEERGROUPS`), at most 65536.
fn peer_groups(stream: &UnixStream) -> std::io::Result<Vec<u32>> {
    let fd = stream.as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .unwrap_or(libc::socklen_t::MAX);
        // SAFETY: `groups` holds `len` bytes and outlives the call; `len` is an out-parameter.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = usize::try_from(len).unwrap_or(0) / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n.min(groups.len()));
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

async fn serve_unix(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    service_uid: u32,
    group: Option<u32>,
    shared: Shared,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "application socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "application connection refused: its peer credentials cannot be read");
                continue;
            }
        };
        let groups = match group {
            Some(_) => match peer_groups(&stream) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(uid = cred.uid(), error = %e, "application connection: the peer's supplementary groups cannot be read; only its primary group counts");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let access = Access::Local {
            uid: cred.uid(),
            pid: cred.pid(),
            write: daemon.config().apps.local_write,
        };
        if !peer_may_connect(cred.uid(), cred.gid(), &groups, service_uid, group) {
            let group_name = daemon.config().apps.group;
            tracing::warn!(client = %access, "application connection refused: not root, the service user or a member of apps.group");
            let why = match group_name {
                Some(g) => format!("uid {} may not use this node's application socket: run as a member of group {g}, the service user or root", cred.uid()),
                None => format!("uid {} may not use this node's application socket: run as the service user or root, or ask the operator to set apps.group", cred.uid()),
            };
            tokio::spawn(refuse_local(stream, AppError::BadRequest(why)));
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(client = %access, "application connection refused: too many connections");
            tokio::spawn(refuse_local(
                stream,
                AppError::Busy("too many application connections".into()),
            ));
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_local(daemon, stream, access, shared).await;
            drop(permit);
        });
    }
}

async fn refuse_local(mut stream: UnixStream, why: AppError) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        write_message(&mut stream, &Answer::Error(why), MAX_ANSWER_BYTES),
    )
    .await;
}

async fn serve_local(daemon: Arc<Daemon>, stream: UnixStream, access: Access, shared: Shared) {
    let (mut read, mut write) = stream.into_split();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let got = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, read_message::<_, Request>(&mut read, MAX_REQUEST_BYTES)) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let req = match got {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Ok(Some(req))) => req,
            Ok(Err(e)) => {
                tracing::warn!(client = %access, error = %e, "bad application request; connection closed");
                let _ = send(&mut write, &bad_frame(&e)).await;
                return;
            }
        };
        if let Request::Watch {
            domain,
            range,
            from,
        } = req
        {
            // The watch takes the connection: it ends when the client closes its side (or
            // sends anything: a watch connection carries nothing else).
            let gone = async move {
                let mut byte = [0u8; 1];
                let _ = tokio::io::AsyncReadExt::read(&mut read, &mut byte).await;
            };
            watches::run(
                &daemon, &access, &shared, &mut write, domain, range, from, gone,
            )
            .await;
            return;
        }
        let answer = dispatch::answer(&daemon, &access, req).await;
        if send(&mut write, &answer).await.is_err() {
            return;
        }
    }
}

async fn serve_quic(daemon: Arc<Daemon>, conn: quinn::Connection, peer: Identity, shared: Shared) {
    let access = Access::Remote(peer);
    tracing::debug!(client = %access, addr = %conn.remote_address(), "application connected");
    let streams = Arc::new(Semaphore::new(MAX_STREAMS_PER_CONNECTION));
    let mut shutdown = shared.shutdown.clone();
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
                if streams.available_permits() == MAX_STREAMS_PER_CONNECTION {
                    conn.close(0u32.into(), b"idle");
                    return;
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&streams).try_acquire_owned() else {
            // Requests in progress (watches included) fill this connection: refused, the
            // others go on.
            tokio::spawn(async move {
                let busy = AppError::Busy(format!(
                    "{MAX_STREAMS_PER_CONNECTION} requests or watches in progress on this connection; open another connection"
                ));
                if send(&mut send_half, &Answer::Error(busy)).await.is_ok() {
                    let _ = send_half.finish();
                }
                drop(recv);
            });
            continue;
        };
        let daemon = Arc::clone(&daemon);
        let access = access.clone();
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let read = tokio::time::timeout(
                IDLE_TIMEOUT,
                read_message::<_, Request>(&mut recv, MAX_REQUEST_BYTES),
            )
            .await;
            let answer = match read {
                Ok(Ok(Some(Request::Watch {
                    domain,
                    range,
                    from,
                }))) => {
                    let gone = async move {
                        conn.closed().await;
                    };
                    watches::run(
                        &daemon,
                        &access,
                        &shared,
                        &mut send_half,
                        domain,
                        range,
                        from,
                        gone,
                    )
                    .await;
                    let _ = send_half.finish();
                    drop(permit);
                    return;
                }
                Ok(Ok(Some(req))) => dispatch::answer(&daemon, &access, req).await,
                Ok(Ok(None)) => {
                    drop(permit);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(client = %access, error = %e, "bad application request");
                    bad_frame(&e)
                }
                Err(_) => Answer::Error(AppError::BadRequest("no request in time".into())),
            };
            if send(&mut send_half, &answer).await.is_ok() {
                let _ = send_half.finish();
            }
            drop(permit);
        });
    }
}

/// The answer to a frame that could not be read.
fn bad_frame(e: &FrameError) -> Answer {
    Answer::Error(AppError::BadRequest(format!(
        "{e}; send one checked frame per request (domsync_proto::app::encode)"
    )))
}

/// Sends one answer within [`ANSWER_TIMEOUT`]; an answer too large to encode is replaced by
/// a one-line error.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, answer: &Answer) -> Result<(), FrameError> {
    send_or_end(w, answer, false).await
}

/// [`send`]; with `strict` an answer replaced by the error is an `Err` (a watch must end
/// rather than skip a batch it could not send).
async fn send_or_end<W: AsyncWrite + Unpin>(
    w: &mut W,
    answer: &Answer,
    strict: bool,
) -> Result<(), FrameError> {
    let sent = tokio::time::timeout(ANSWER_TIMEOUT, async {
        match write_message(w, answer, MAX_ANSWER_BYTES).await {
            Err(FrameError::Codec(e)) => {
                let answer = Answer::Error(AppError::Unavailable(format!(
                    "the answer is too large to send ({e}); ask for less (a smaller scan limit or range)"
                )));
                write_message(w, &answer, MAX_ANSWER_BYTES).await?;
                if strict {
                    return Err(FrameError::Codec(e));
                }
                Ok(())
            }
            other => other,
        }
    })
    .await;
    match sent {
        Ok(r) => r,
        Err(_) => Err(FrameError::Stream(
            "the client did not read its answer in time".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{peer_may_connect, Access, Apps};
    use crate::AppGrant;
    use domsync_net::{Identity, PeerRole};
    use domsync_proto::model::DomainId;

    #[test]
    fn grants_decide_what_an_app_certificate_reads_and_writes() {
        let t1 = DomainId::new("t1").unwrap();
        let t2 = DomainId::new("t2").unwrap();
        let apps = Apps {
            socket: "app.sock".into(),
            group: None,
            local_write: false,
            grants: vec![
                AppGrant::new("editor", Some(vec![t1.clone()]), true),
                AppGrant::new("reader", None, false),
            ],
        };
        let app = |id| Access::Remote(Identity::new(PeerRole::App, id).unwrap());
        let (editor, reader, stranger) = (app("editor"), app("reader"), app("stranger"));
        assert!(editor.may_read(&apps, &t1) && editor.may_write(&apps, &t1));
        assert!(!editor.may_read(&apps, &t2) && !editor.may_write(&apps, &t2));
        assert!(reader.may_read(&apps, &t2) && !reader.may_write(&apps, &t2));
        assert!(!stranger.may_read(&apps, &t1) && !stranger.may_write(&apps, &t1));
        let local = Access::Local {
            uid: 1000,
            pid: None,
            write: apps.local_write,
        };
        assert!(local.may_read(&apps, &t2) && !local.may_write(&apps, &t2));
    }

    #[test]
    fn root_the_service_user_and_group_members_may_connect() {
        let service = 998;
        let app = Some(1500);
        assert!(peer_may_connect(0, 0, &[], service, None));
        assert!(peer_may_connect(service, 998, &[], service, None));
        assert!(!peer_may_connect(1000, 1000, &[], service, None));
        // With a group: primary or supplementary membership.
        assert!(peer_may_connect(1000, 1500, &[], service, app));
        assert!(peer_may_connect(1000, 1000, &[27, 1500], service, app));
        assert!(!peer_may_connect(1000, 1000, &[27, 1501], service, app));
        // No group configured: membership of any group does not count.
        assert!(!peer_may_connect(1000, 1500, &[1500], service, None));
    }
}
