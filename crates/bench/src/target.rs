//! What `domsync-bench` loads: an embedded cluster it starts itself (daemons in this process,
//! on loopback, in a temporary directory, like `domsync demo`), or a running cluster named by
//! the admin options (`--socket` / `--remote`) and the gateway options (`--node`, `--pki`,
//! `--gateway-id`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_daemon::{Config, Daemon, Placement};
use domsync_net::{pki, Credentials, Identity, PeerRole, TlsFiles};
use domsync_proto::admin::{AdminError, Answer, Request};
use domsync_proto::model::{DomainId, NodeId, Op, Position, Role};
use domsync_proto::repl::{Durability, SyncStatus};

use super::BenchResult;
use domsync_client::admin::{Session, Target};

/// How long the embedded cluster may take to start and converge.
const PATIENCE: Duration = Duration::from_secs(120);

/// The gateway id granted the bench domain in the embedded cluster.
pub const GATEWAY_ID: &str = "bench-gw";

/// Node names of the embedded cluster, the primary first.
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Settings of an embedded cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Nodes holding the domain (1 to 3); the first starts active.
    pub nodes: usize,
    /// The domain's durability.
    pub durability: Durability,
    /// The domain's log retention cap (bytes), when not the default.
    pub retention_bytes: Option<u64>,
    /// Where to keep everything (default: a fresh temporary directory, removed at the end).
    pub dir: Option<PathBuf>,
    /// The promotion guard window.
    pub guard_window: Duration,
}

/// Daemons started in this process, each with its own store, admin socket, QUIC address and
/// certificate from a throwaway CA. The domain is replicated on every node.
pub struct Embedded {
    /// The domain under load.
    pub domain: DomainId,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    pki: PathBuf,
    names: Vec<&'static str>,
    daemons: Vec<Option<Arc<Daemon>>>,
}

impl Embedded {
    /// Creates the PKI and configuration files under a fresh directory and starts every
    /// node; returns once the domain has its active and every standby is synchronized.
    ///
    /// # Errors
    /// When a daemon cannot start or the cluster does not converge in time.
    pub async fn start(domain: &DomainId, o: &EmbeddedOptions) -> BenchResult<Embedded> {
        let (temp, root) = match &o.dir {
            Some(d) => {
                if d.exists() {
                    std::fs::remove_dir_all(d)
                        .map_err(|e| format!("cannot clear {}: {e}", d.display()))?;
                }
                std::fs::create_dir_all(d)
                    .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("domsync-bench-")
                    .tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let names: Vec<&'static str> = NODES[..o.nodes.clamp(1, 3)].to_vec();
        let pki_dir = root.join("pki");
        pki::init_ca(&pki_dir)?;
        for n in &names {
            pki::issue(&pki_dir, PeerRole::Node, n, &pki_dir, 30)?;
        }
        pki::issue(&pki_dir, PeerRole::Gateway, GATEWAY_ID, &pki_dir, 30)?;
        let mut ports = BTreeMap::new();
        for n in &names {
            ports.insert(*n, free_udp_port()?);
        }
        for n in &names {
            let text = config_text(&root, n, &names, &ports, domain, o);
            std::fs::write(root.join(format!("{n}.toml")), text)?;
        }
        let mut cluster = Embedded {
            domain: domain.clone(),
            root,
            _temp: temp,
            pki: pki_dir,
            names,
            daemons: Vec::new(),
        };
        // The standbys first: the primary creates the domain once they answer its probe.
        cluster.daemons = vec![None; cluster.names.len()];
        for i in (0..cluster.names.len()).rev() {
            let d = cluster.launch(i).await?;
            cluster.daemons[i] = Some(d);
        }
        cluster.converge().await?;
        Ok(cluster)
    }

    /// Starts node `i` from its configuration file.
    async fn launch(&self, i: usize) -> BenchResult<Arc<Daemon>> {
        let path = self.root.join(format!("{}.toml", self.names[i]));
        let config = Config::load(&path)?;
        Ok(Daemon::start(config).await?)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Node `i`'s daemon, when running.
    pub fn daemon(&self, i: usize) -> Option<&Arc<Daemon>> {
        self.daemons.get(i).and_then(Option::as_ref)
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> NodeId {
        NodeId::new(self.names[i]).expect("node names are valid")
    }

    /// Node `i`'s admin socket.
    pub fn admin(&self, i: usize) -> Target {
        Target::Socket(self.root.join(format!("{}.sock", self.names[i])))
    }

    /// Node `i`'s application socket (`[apps] socket`).
    pub fn app(&self, i: usize) -> domsync_client::app::AppTarget {
        domsync_client::app::AppTarget::Socket(app_socket(&self.root, self.names[i]))
    }

    /// Node `i`'s QUIC address (replication, gateways, remote admin).
    pub fn addr(&self, i: usize) -> BenchResult<SocketAddr> {
        let d = self.daemon(i).ok_or("node stopped")?;
        Ok(d.node().local_addr()?)
    }

    /// The credentials of the gateway granted the domain.
    pub fn gateway_credentials(&self) -> BenchResult<Credentials> {
        let me = Identity::new(PeerRole::Gateway, GATEWAY_ID)?;
        Ok(TlsFiles::in_dir(&self.pki, &me).load()?)
    }

    /// The running node where the domain is active.
    pub fn active(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.role(i) == Some(Role::Active))
    }

    /// A running standby of the domain.
    pub fn standby(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.role(i) == Some(Role::Standby))
    }

    /// The domain's role on node `i` (when running and holding it).
    pub fn role(&self, i: usize) -> Option<Role> {
        let d = self.daemon(i)?;
        d.node()
            .replica(&self.domain)
            .and_then(|r| r.status().ok())
            .map(|s| s.role)
    }

    /// The domain's position on node `i`.
    pub fn position(&self, i: usize) -> Option<Position> {
        let d = self.daemon(i)?;
        d.node()
            .replica(&self.domain)
            .and_then(|r| r.status().ok())
            .map(|s| s.position)
    }

    /// Stops node `i` gracefully.
    pub async fn stop(&mut self, i: usize) {
        if let Some(d) = self.daemons[i].take() {
            d.shutdown().await;
        }
    }

    /// Stops node `i` and deletes its state directory: it comes back empty.
    pub async fn wipe(&mut self, i: usize) -> BenchResult<()> {
        self.stop(i).await;
        let dir = self.root.join(self.names[i]);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    /// Starts node `i` again.
    pub async fn restart(&mut self, i: usize) -> BenchResult<()> {
        let d = self.launch(i).await?;
        self.daemons[i] = Some(d);
        Ok(())
    }

    /// Whether one running node is active and every running standby follows it, synchronized
    /// at the active's position.
    pub fn converged(&self) -> bool {
        let Some(a) = self.active() else {
            return false;
        };
        let (Some(top), active) = (self.position(a), self.node_id(a)) else {
            return false;
        };
        (0..self.len()).filter(|&i| i != a).all(|i| {
            let Some(d) = self.daemon(i) else {
                return true;
            };
            let Some(f) = d.node().follower_status(&self.domain) else {
                return false;
            };
            f.status == SyncStatus::Synchronized
                && f.active == active
                && self.position(i).is_some_and(|p| p.lsn == top.lsn)
        })
    }

    /// Waits until [`Embedded::converged`].
    pub async fn converge(&self) -> BenchResult<()> {
        let deadline = Instant::now() + PATIENCE;
        while !self.converged() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the embedded cluster did not converge within {PATIENCE:?}: {}",
                    self.describe()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// One line of how each node stands, for error messages.
    fn describe(&self) -> String {
        let mut s = String::new();
        for i in 0..self.len() {
            let p = self
                .daemon(i)
                .and_then(|d| d.placements().get(&self.domain).cloned());
            let _ = write!(
                s,
                "{}: {}; ",
                self.names[i],
                match p {
                    Some(Placement::Serving(r)) => format!("{r} at {:?}", self.position(i)),
                    Some(other) => format!("{other:?}"),
                    None => "stopped".into(),
                }
            );
        }
        s
    }

    /// The domain's database file on node `i`.
    pub fn domain_file(&self, i: usize) -> Option<PathBuf> {
        let d = self.daemon(i)?;
        d.node()
            .replica(&self.domain)
            .map(|r| r.path().to_path_buf())
    }

    /// Stops every node, all at once (each waits up to 2 s for its connections to close).
    pub async fn shutdown(mut self) {
        let stops: Vec<_> = self
            .daemons
            .iter_mut()
            .filter_map(Option::take)
            .map(|d| tokio::spawn(async move { d.shutdown().await }))
            .collect();
        for s in stops {
            let _ = s.await;
        }
    }
}

fn free_udp_port() -> BenchResult<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The configuration file of node `me`.
fn config_text(
    root: &Path,
    me: &str,
    names: &[&str],
    ports: &BTreeMap<&str, u16>,
    domain: &DomainId,
    o: &EmbeddedOptions,
) -> String {
    let p = root.join("pki");
    let mut t = format!(
        "[node]\nid = \"{me}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"{}\"\n\n\
         [tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/node-{me}.pem\"\nkey = \"{p}/node-{me}.key\"\n\n\
         [limits]\nguard_window_ms = {}\n\
         # --concurrency connections share one gateway certificate\n\
         gateway_connections_per_gateway = 4096\n\n{}",
        root.join(me).display(),
        ports[me],
        root.join(format!("{me}.sock")).display(),
        o.guard_window.as_millis(),
        apps_section(&app_socket(root, me)),
        p = p.display(),
    );
    for peer in names.iter().filter(|n| **n != me) {
        let _ = write!(
            t,
            "\n[[peers]]\nid = \"{peer}\"\naddress = \"127.0.0.1:{}\"\n",
            ports[peer]
        );
    }
    let replicas: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let _ = write!(
        t,
        "\n[[domains]]\nname = \"{domain}\"\nreplicas = [{}]\ndurability = \"{}\"\ngateways = [\"{GATEWAY_ID}\"]\n",
        replicas.join(", "),
        durability_name(o.durability),
    );
    if let Some(r) = o.retention_bytes {
        let _ = writeln!(t, "retention_bytes = {r}");
    }
    t
}

/// The application socket of node `me` under `root`.
fn app_socket(root: &Path, me: &str) -> PathBuf {
    root.join(format!("{me}-app.sock"))
}

/// The `[apps]` section: the local application socket at `socket`, open to this user with
/// read and write access to every domain.
pub fn apps_section(socket: &Path) -> String {
    format!("[apps]\nsocket = \"{}\"\n", socket.display())
}

/// The configuration name of a durability.
pub fn durability_name(d: Durability) -> &'static str {
    match d {
        Durability::Local => "local",
        Durability::Standby => "standby",
        Durability::All => "all",
    }
}

/// Opens an admin session, failing fast with one line saying what to do.
pub async fn connect(target: &Target) -> BenchResult<Session> {
    Ok(Session::open(target).await?)
}

/// Checks through `target` that the daemon holds `domain` as its active; returns its node id.
///
/// # Errors
/// One line: unreachable daemon, unknown domain, or the node to point at instead.
pub async fn check_active(target: &Target, domain: &DomainId) -> BenchResult<NodeId> {
    let mut s = connect(target).await?;
    let answer = s.call(&Request::Status).await?;
    s.close().await;
    let Answer::Status(status) = answer else {
        return Err(format!("{target}: unexpected answer {answer:?}").into());
    };
    let report = status
        .domains
        .iter()
        .find(|d| d.domain == *domain)
        .ok_or_else(|| {
            format!(
                "domain {domain} is not held by node {} ({target}); pick one with --domain (`domsync status` lists them)",
                status.node
            )
        })?;
    match report.replica.as_ref().map(|r| r.role) {
        Some(Role::Active) => Ok(status.node),
        _ => {
            let hint = report.follower.as_ref().map_or_else(
                || "this node does not know which node is active (run `domsync status` on the other replicas)".to_owned(),
                |f| format!("its active is {}", f.active),
            );
            Err(format!(
                "domain {domain} is not active on node {} ({target}); {hint}: point --socket/--remote at the active",
                status.node
            )
            .into())
        }
    }
}

/// Sends one write; `Ok(position)` or the daemon's error.
pub async fn write(
    s: &mut Session,
    domain: &DomainId,
    ops: Vec<Op>,
) -> Result<Result<Position, AdminError>, String> {
    match s
        .call(&Request::Write {
            domain: domain.clone(),
            ops,
        })
        .await?
    {
        Answer::Written { position, .. } => Ok(Ok(position)),
        Answer::Error(e) => Ok(Err(e)),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
