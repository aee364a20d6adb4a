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

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};

use crate::{Daemon, Placement};
use domsync_net::{read_message, write_message, Identity};
use domsync_node::{AdminHandler, WriteError};
use domsync_proto::admin::{
    AdminError, Answer, ArchivedInfo, DomainReport, FollowerState, Lag, NodeStatus, PlacementState,
    PlanDomain, PlanMove, PlanNode, PlanReport, ReplicaState, Request, StandbyState,
    MAX_ANSWER_BYTES, MAX_REQUEST_BYTES,
};
use domsync_proto::model::{DomainId, NodeId, Op, Role};
use domsync_store::{ArchivedRecord, Domain, StoreError};

/// Admin connections served at once, per transport.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a switchover waits for its target to hold the last write.
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminServerError {
    /// The socket path is taken by something else than a stale socket.
    #[error("admin socket {path}: {what}")]
    Path {
        /// The socket path.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// The socket could not be created.
    #[error("cannot create the admin socket {path}: {source}; check node.admin_socket and its directory's permissions")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

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

/// Creates the socket with mode 0600: a stale socket is removed first (one that answers is
/// another daemon's and is left alone); the parent directory is created if missing. Returns
/// the listener and the uid owning the socket (the daemon's own).
fn bind(path: &Path) -> Result<(UnixListener, u32), AdminServerError> {
    let io = |source| AdminServerError::Io {
        path: path.to_owned(),
        source,
    };
    let in_the_way = |what: &str| AdminServerError::Path {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| in_the_way("not a file name; set node.admin_socket to a socket path"))?;
    std::fs::create_dir_all(parent).map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(in_the_way(
                    "another process (a running domsyncd?) serves it; stop it or pick another node.admin_socket",
                ));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(in_the_way(
                "a file that is not a socket is in the way; remove it or pick another node.admin_socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Bound under a temporary name, restricted to 0600, then renamed into place: the final
    // path never exists with a wider mode.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
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

fn describe(req: &Request) -> String {
    match req {
        Request::Status => "status".into(),
        Request::Promote { domain, force } => {
            format!("promote {domain}{}", if *force { " --force" } else { "" })
        }
        Request::Switchover { domain, to } => format!("switchover {domain} to {to}"),
        Request::Write { domain, ops } => format!("write {domain} ({} ops)", ops.len()),
        Request::Collisions { domain } => format!("collisions list {domain}"),
        Request::CollisionShow { domain, id } => format!("collisions show {domain} {id}"),
        Request::Reapply { domain, id } => format!("collisions reapply {domain} {id}"),
        Request::Discard { domain, id } => format!("collisions discard {domain} {id}"),
        Request::DomainAdd(spec) => format!(
            "domain add {} (replicas {})",
            spec.name,
            spec.replicas.join(",")
        ),
        Request::DomainRemove { domain } => format!("domain remove {domain}"),
        Request::Plan => "plan".into(),
    }
}

/// Answers one request.
async fn handle(daemon: &Arc<Daemon>, client: &Client, req: Request) -> Answer {
    let what = describe(&req);
    let changes = !matches!(
        req,
        Request::Status
            | Request::Collisions { .. }
            | Request::CollisionShow { .. }
            | Request::Plan
    );
    let answer = match req {
        Request::Status => Ok(Answer::Status(status(daemon))),
        Request::Promote { domain, force } => promote(daemon, domain, force).await,
        Request::Switchover { domain, to } => switchover(daemon, domain, to).await,
        Request::Write { domain, ops } => write(daemon, &domain, ops)
            .await
            .map(|position| Answer::Written { domain, position }),
        Request::Collisions { domain } => held(daemon, &domain).and_then(|d| {
            let list = archive(daemon, &d)?.iter().map(info).collect();
            Ok(Answer::Collisions { domain, list })
        }),
        Request::CollisionShow { domain, id } => held(daemon, &domain).and_then(|d| {
            let a = archived(daemon, &d, id)?;
            Ok(Answer::Collision {
                domain,
                info: info(&a),
                ops: a.record.ops,
            })
        }),
        Request::Reapply { domain, id } => reapply(daemon, domain, id).await,
        Request::Discard { domain, id } => {
            held(daemon, &domain).and_then(|d| match d.discard_collision(id) {
                Ok(true) => {
                    daemon.node().collisions_changed(&domain);
                    Ok(Answer::Discarded { domain, id })
                }
                Ok(false) => Err(AdminError::NoSuchCollision {
                    domain,
                    node: me(daemon),
                    id,
                }),
                Err(e) => Err(AdminError::Failed(e.to_string())),
            })
        }
        Request::DomainAdd(spec) => daemon.add_domain(&spec).await.and_then(|replica_here| {
            Ok(Answer::DomainAdded {
                domain: spec
                    .name
                    .parse()
                    .map_err(|e| AdminError::BadRequest(format!("domain add refused: {e}")))?,
                replica_here,
            })
        }),
        Request::DomainRemove { domain } => daemon
            .remove_domain(&domain)
            .await
            .map(|()| Answer::DomainRemoved { domain }),
        Request::Plan => Ok(Answer::Plan(plan(daemon).await)),
    };
    match answer {
        Ok(a) => {
            if changes {
                tracing::info!(client = %client, "admin: {what}: done");
            }
            a
        }
        Err(e) => {
            if changes {
                tracing::warn!(client = %client, "admin: {what}: {e}");
            }
            Answer::Error(e)
        }
    }
}

fn me(daemon: &Daemon) -> NodeId {
    daemon.node().id().clone()
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Daemon {
    /// The status of every configured domain here, as `domsync status` shows it.
    pub fn status(&self) -> NodeStatus {
        status(self)
    }
}

fn status(daemon: &Daemon) -> NodeStatus {
    let node = daemon.node();
    let mut domains = Vec::new();
    for (name, placement) in daemon.placements() {
        let placement = match placement {
            Placement::Serving(_) => PlacementState::Serving,
            Placement::Waiting(w) => PlacementState::Waiting(w),
            Placement::Failed(f) => PlacementState::Failed(f),
        };
        let mut report = DomainReport {
            domain: name.clone(),
            placement: placement.clone(),
            replica: None,
            standbys: Vec::new(),
            follower: None,
            collisions: 0,
        };
        if placement == PlacementState::Serving {
            match daemon.store().domain(&name).and_then(|d| {
                let s = d.status()?;
                let (records, corrupt) = d.archive()?;
                let c = (records.len() + corrupt.len()) as u64;
                Ok((s, c))
            }) {
                Ok((s, c)) => {
                    report.replica = Some(ReplicaState {
                        role: s.role,
                        epoch: s.epoch,
                        position: s.position,
                        digest: s.digest.to_string(),
                    });
                    report.collisions = c;
                }
                Err(e) => report.placement = PlacementState::Failed(e.to_string()),
            }
        }
        report.standbys = node
            .sync_status(&name)
            .into_iter()
            .map(|r| StandbyState {
                lag: Lag::of(&r.status),
                node: r.node,
                status: r.status,
                durable: r.ack.durable,
                last_sync_ms: r.last_sync.map(millis),
                connected: r.connected,
            })
            .collect();
        report.follower = node.follower_status(&name).map(|f| FollowerState {
            lag: Lag::of(&f.status),
            active: f.active,
            status: f.status,
            last_sync_ms: f.last_sync.map(millis),
            last_error: f.last_error,
            recent_errors: f
                .recent_errors
                .into_iter()
                .map(|(at, why)| (millis(at), why))
                .collect(),
            connected: f.connected,
        });
        domains.push(report);
    }
    NodeStatus {
        node: me(daemon),
        domains,
    }
}

/// The domain's store, when the domain is configured and open here.
fn held(daemon: &Daemon, domain: &DomainId) -> Result<Domain, AdminError> {
    let unknown = || AdminError::UnknownDomain {
        domain: domain.clone(),
        node: me(daemon),
    };
    match daemon.placements().get(domain) {
        Some(Placement::Serving(_)) => {}
        Some(Placement::Waiting(w)) => {
            return Err(AdminError::Failed(format!(
                "domain {domain} is not open yet on node {}: {w}",
                me(daemon)
            )))
        }
        Some(Placement::Failed(f)) => {
            return Err(AdminError::Failed(format!(
                "domain {domain} failed on node {}: {f}",
                me(daemon)
            )))
        }
        None => return Err(unknown()),
    }
    daemon.store().domain(domain).map_err(|e| match e {
        StoreError::UnknownDomain { .. } => unknown(),
        other => AdminError::Failed(other.to_string()),
    })
}

fn archive(daemon: &Daemon, d: &Domain) -> Result<Vec<ArchivedRecord>, AdminError> {
    d.collisions().map_err(|e| {
        AdminError::Failed(format!(
            "cannot read the collision archive on node {}: {e}",
            me(daemon)
        ))
    })
}

fn archived(daemon: &Daemon, d: &Domain, id: u64) -> Result<ArchivedRecord, AdminError> {
    archive(daemon, d)?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| AdminError::NoSuchCollision {
            domain: d.id().clone(),
            node: me(daemon),
            id,
        })
}

fn info(a: &ArchivedRecord) -> ArchivedInfo {
    ArchivedInfo {
        id: a.id,
        epoch: a.record.epoch.clone(),
        lsn: a.record.lsn,
        time: a.record.time,
        ops: a.record.ops.len() as u64,
        bytes: a.bytes.len() as u64,
    }
}

/// The active this node knows for a domain it does not serve as active.
fn known_active(daemon: &Daemon, domain: &DomainId) -> Option<NodeId> {
    if let Some(f) = daemon.node().follower_status(domain) {
        return Some(f.active);
    }
    // The highest epoch recorded here (a fence included) names the newest active known.
    let d = daemon.store().domain(domain).ok()?;
    let epoch = d.highest_epoch().ok()?;
    (epoch.term > 0 && epoch.node != *daemon.node().id()).then_some(epoch.node)
}

async fn write(
    daemon: &Daemon,
    domain: &DomainId,
    ops: Vec<Op>,
) -> Result<domsync_proto::model::Position, AdminError> {
    if ops.is_empty() {
        return Err(AdminError::BadRequest(
            "a write needs at least one op".into(),
        ));
    }
    match daemon.node().write(domain, ops).await {
        Ok(p) => Ok(p),
        Err(WriteError::NotServed { .. }) => {
            held(daemon, domain)?;
            Err(AdminError::NotActive {
                domain: domain.clone(),
                node: me(daemon),
                active: known_active(daemon, domain),
            })
        }
        Err(WriteError::Store(StoreError::NotActive { active, .. })) => {
            Err(AdminError::NotActive {
                domain: domain.clone(),
                node: me(daemon),
                active: active.or_else(|| known_active(daemon, domain)),
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn promote(
    daemon: &Arc<Daemon>,
    domain: DomainId,
    force: bool,
) -> Result<Answer, AdminError> {
    held(daemon, &domain)?;
    let me = me(daemon);
    let dc = daemon
        .config()
        .domains
        .into_iter()
        .find(|d| d.name == domain && d.replicas.contains(&me))
        .ok_or_else(|| AdminError::UnknownDomain {
            domain: domain.clone(),
            node: me.clone(),
        })?;
    let peers: Vec<NodeId> = dc.replicas.iter().filter(|r| **r != me).cloned().collect();
    let config = daemon.active_config(&dc);
    match daemon.node().promote(&domain, &peers, config, force).await {
        Ok(p) => {
            daemon.set_placement(&domain, Placement::Serving(Role::Active));
            Ok(Answer::Promoted {
                domain,
                epoch: p.epoch,
                position: p.position,
                behind_records: p.behind_records,
                unreachable: p.unreachable,
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn switchover(
    daemon: &Arc<Daemon>,
    domain: DomainId,
    to: NodeId,
) -> Result<Answer, AdminError> {
    held(daemon, &domain)?;
    match daemon
        .node()
        .switchover(&domain, &to, SWITCHOVER_TIMEOUT)
        .await
    {
        Ok(s) => {
            daemon.set_placement(&domain, Placement::Serving(Role::Standby));
            Ok(Answer::SwitchedOver {
                domain,
                to,
                epoch: s.epoch,
                position: s.position,
                pause_ms: u64::try_from(s.pause.as_millis()).unwrap_or(u64::MAX),
            })
        }
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

async fn reapply(daemon: &Daemon, domain: DomainId, id: u64) -> Result<Answer, AdminError> {
    let d = held(daemon, &domain)?;
    let a = archived(daemon, &d, id)?;
    let position = write(daemon, &domain, a.record.ops).await?;
    match d.discard_collision(id) {
        Ok(_) => {
            daemon.node().collisions_changed(&domain);
            Ok(Answer::Reapplied {
                domain,
                id,
                position,
            })
        }
        Err(e) => Err(AdminError::Failed(format!(
            "record {id} was written again at {position} but could not be removed from the archive ({e}): run `domsync collisions discard {domain} {id}`"
        ))),
    }
}

/// Where `domain` is active now: this node's replica when it is active, else the replica
/// answering a probe as active (the highest epoch wins); `None` when no replica says so.
async fn current_active(daemon: &Arc<Daemon>, dc: &crate::DomainConfig) -> Option<NodeId> {
    let me = me(daemon);
    if let Some(s) = daemon
        .node()
        .replica(&dc.name)
        .and_then(|d| d.status().ok())
    {
        if s.role == Role::Active {
            return Some(me);
        }
    }
    let mut probes = tokio::task::JoinSet::new();
    for peer in dc.replicas.iter().filter(|r| **r != me).cloned() {
        let daemon = Arc::clone(daemon);
        let domain = dc.name.clone();
        probes.spawn(async move {
            let answer = daemon.node().probe(&peer, &domain, None).await;
            (peer, answer)
        });
    }
    let mut best: Option<(domsync_proto::model::Epoch, NodeId)> = None;
    while let Some(joined) = probes.join_next().await {
        let Ok((peer, answer)) = joined else { continue };
        match answer {
            Ok(Some(a)) if a.role == Role::Active => {
                if best.as_ref().is_none_or(|(e, _)| a.epoch > *e) {
                    best = Some((a.epoch, peer));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(domain = %dc.name, peer = %peer, error = %e, "plan: peer did not answer its probe");
            }
        }
    }
    best.map(|(_, n)| n)
}

/// The placement plan of every domain of the configuration in force (file and added
/// domains): where each is active now (asked of the replicas), where
/// [`placement::plan`](crate::placement::plan) puts it, and the switchovers.
pub async fn plan(daemon: &Arc<Daemon>) -> PlanReport {
    use crate::placement;
    let config = daemon.config();
    let me = me(daemon);
    let mut nodes = vec![placement::Node {
        id: me.clone(),
        region: config.node.region.clone(),
    }];
    nodes.extend(config.peers.keys().map(|id| placement::Node {
        id: id.clone(),
        region: config.peer_regions.get(id).cloned(),
    }));
    let mut lookups = tokio::task::JoinSet::new();
    for dc in config.domains.iter().cloned() {
        let daemon = Arc::clone(daemon);
        lookups.spawn(async move {
            let active = current_active(&daemon, &dc).await;
            (dc.name, active)
        });
    }
    let mut now = std::collections::BTreeMap::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((name, Some(active))) = joined {
            now.insert(name, active);
        }
    }
    let wants: Vec<placement::Want> = config
        .domains
        .iter()
        .map(|d| placement::Want {
            domain: d.name.clone(),
            replicas: d.replicas.clone(),
            weight: d.weight,
            region: d.region.clone(),
        })
        .collect();
    let p = placement::plan(&wants, &nodes, &now);
    let load_now = |id: &NodeId| -> u64 {
        wants
            .iter()
            .filter(|w| now.get(&w.domain) == Some(id))
            .map(|w| u64::from(w.weight))
            .sum()
    };
    PlanReport {
        node: me.clone(),
        nodes: nodes
            .iter()
            .map(|n| PlanNode {
                id: n.id.clone(),
                region: n.region.clone(),
                address: if n.id == me {
                    config.node.listen
                } else {
                    config.peers[&n.id]
                },
                load_now: load_now(&n.id),
                load: p.load.get(&n.id).copied().unwrap_or(0),
            })
            .collect(),
        domains: config
            .domains
            .iter()
            .map(|d| PlanDomain {
                domain: d.name.clone(),
                weight: d.weight,
                region: d.region.clone(),
                active: now.get(&d.name).cloned(),
                planned: p.active.get(&d.name).cloned(),
            })
            .collect(),
        moves: p
            .moves
            .into_iter()
            .map(|m| PlanMove {
                domain: m.domain,
                from: m.from,
                to: m.to,
            })
            .collect(),
    }
}
