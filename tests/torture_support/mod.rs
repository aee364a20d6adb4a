//! Shared pieces of the torture suite (`tests/torture.rs`, and `tests/stale_connections.rs`):
//! settings from the environment, bounded admin requests over the Unix socket (the admin
//! client of `domsync-client`), the three-daemon rig, the write load and gateway readers with
//! their ledger, the checks run after every cycle, and the two ways of breaking the network
//! (network namespaces with veth pairs, or UDP proxies on loopback). The seeded generator,
//! PKI, daemon processes and polling come from the test kit (`domsync-testkit`).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domsync_client::admin::{Session, Target};
use domsync_client::gateway::{Client, ClientConfig, Origin};
use domsync_net::PeerRole;
use domsync_proto::admin::{AdminError, Answer, NodeStatus, Request};
use domsync_proto::admin::{DomainReport, PlacementState};
use domsync_proto::model::{DomainId, Op, Position, Role, Version};
use domsync_proto::repl::SyncStatus;
use domsync_store::{Store, StoreOptions};
use domsync_testkit::nid;
use domsync_testkit::pki::{creds, init_pki};
use domsync_testkit::poll::GUARD;
use domsync_testkit::process::{Daemon, NodeConfig, GATEWAY};
use domsync_testkit::rng::{random_seed, Rng};

/// Hang guard of every convergence poll.
pub const CONVERGE: Duration = Duration::from_secs(90);

/// The package the writers re-install now and then and the gateways read.
pub const PACKAGE: &str = "torture-pkg";

/// Serializes the tests of the target: each runs three daemons, and the machine is small.
pub static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Settings

/// Mode, seed and sizes, from `DOMSYNC_TORTURE`, `DOMSYNC_TORTURE_SEED`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    pub mode: &'static str,
    /// Crash cycles of `crash_cycles`.
    pub cycles: usize,
    /// Fault rounds (each ends with a heal and the checks) of `partitions`.
    pub rounds: usize,
}

impl Settings {
    pub fn from_env(test: &str) -> Settings {
        let mode = match std::env::var("DOMSYNC_TORTURE").as_deref() {
            Ok("long") => "long",
            Ok("short") | Err(_) => "short",
            Ok(other) => panic!("DOMSYNC_TORTURE={other}: use short or long"),
        };
        let seed = match std::env::var("DOMSYNC_TORTURE_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("DOMSYNC_TORTURE_SEED={s}: {e}")),
            Err(_) => random_seed(),
        };
        let (cycles, rounds) = if mode == "long" { (300, 100) } else { (30, 12) };
        // DOMSYNC_TORTURE_CYCLES overrides both counts (debugging).
        let (cycles, rounds) = match std::env::var("DOMSYNC_TORTURE_CYCLES")
            .ok()
            .and_then(|c| c.parse().ok())
        {
            Some(n) => (n, n),
            None => (cycles, rounds),
        };
        let s = Settings {
            seed,
            mode,
            cycles,
            rounds,
        };
        eprintln!(
            "torture {test}: mode={mode} seed={seed} (replay: DOMSYNC_TORTURE={mode} DOMSYNC_TORTURE_SEED={seed} cargo test --test torture {test} -- --nocapture)"
        );
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Admin client

/// One request over the admin Unix socket (one [`Session`] of `domsync-client`), bounded by
/// `limit`. `Err` when the socket could not be reached at all (nothing was sent) or the
/// exchange failed after sending.
pub async fn admin(socket: &Path, req: &Request, limit: Duration) -> Result<Answer, AdminFail> {
    let exchange = async {
        let mut session = Session::open(&Target::Socket(socket.to_path_buf()))
            .await
            .map_err(AdminFail::Unreached)?;
        let answer = session.call(req).await.map_err(AdminFail::Lost);
        session.close().await;
        answer
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err(AdminFail::Lost(format!("no answer within {limit:?}"))),
    }
}

/// Why an admin exchange failed.
#[derive(Debug, Clone)]
pub enum AdminFail {
    /// Could not connect: nothing was sent.
    Unreached(String),
    /// Sent, but no answer came: the request may or may not have taken effect.
    Lost(String),
}

impl std::fmt::Display for AdminFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminFail::Unreached(e) => write!(f, "admin socket unreachable: {e}"),
            AdminFail::Lost(e) => write!(f, "admin exchange lost: {e}"),
        }
    }
}

pub fn dom(name: &str) -> DomainId {
    name.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Ledger: what the load did and saw

/// A write the daemon acknowledged (`Answer::Written`: met the domain's durability).
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub value: String,
    pub position: Position,
    pub node: String,
}

/// Everything the load recorded, per domain.
#[derive(Debug, Default)]
pub struct Ledger {
    pub acked: BTreeMap<String, Vec<Ack>>,
    /// Writes whose outcome is unknown (connection lost, confirmation timed out).
    pub maybe: u64,
    /// Package contents a writer sent (acknowledged or not).
    pub installed: HashSet<String>,
    pub reads: u64,
    /// Versions seen per domain by its gateway, in order (first and last kept, for the report).
    pub last_version: BTreeMap<String, Version>,
    pub violations: Vec<String>,
}

pub type Shared = Arc<Mutex<Ledger>>;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A writer of one domain: sends `Request::Write` to the node it believes active.
pub struct Writer {
    pub domain: String,
    /// The node written to; the test retargets it, and a `NotActive` hint moves it.
    pub target: Arc<Mutex<String>>,
    /// Held by the writer around each write; the checks take it to pause the load.
    pub gate: Arc<tokio::sync::Mutex<()>>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    pub fn spawn(
        domain: &str,
        target: &str,
        sockets: BTreeMap<String, PathBuf>,
        ledger: Shared,
        seed: u64,
    ) -> Writer {
        let target = Arc::new(Mutex::new(target.to_owned()));
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_loop(
            domain.to_owned(),
            target.clone(),
            gate.clone(),
            stop.clone(),
            sockets,
            ledger,
            seed,
        ));
        Writer {
            domain: domain.to_owned(),
            target,
            gate,
            stop,
            task: Some(task),
        }
    }

    pub fn retarget(&self, node: &str) {
        *lock(&self.target) = node.to_owned();
    }

    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn write_loop(
    domain: String,
    target: Arc<Mutex<String>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    stop: Arc<AtomicBool>,
    sockets: BTreeMap<String, PathBuf>,
    ledger: Shared,
    seed: u64,
) {
    let mut rng = Rng::from_state(seed);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let pause = {
            let _g = gate.lock().await;
            seq += 1;
            let key = format!("w/{seq:07}");
            let value = format!("{domain}-{seq}-{:016x}", rng.next());
            let mut ops = vec![Op::Put {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
            }];
            if seq % 10 == 1 {
                let content = format!("package of {domain} written by write {seq}");
                lock(&ledger).installed.insert(content.clone());
                ops.push(Op::InstallPolicy {
                    name: PACKAGE.to_owned(),
                    content: content.into_bytes(),
                });
            }
            let node = lock(&target).clone();
            let req = Request::Write {
                domain: dom(&domain),
                ops,
            };
            match admin(&sockets[&node], &req, Duration::from_secs(20)).await {
                Ok(Answer::Written { position, .. }) => {
                    lock(&ledger)
                        .acked
                        .entry(domain.clone())
                        .or_default()
                        .push(Ack {
                            key,
                            value,
                            position,
                            node,
                        });
                    false
                }
                Ok(Answer::Error(AdminError::NotActive { active, .. })) => {
                    // Nothing was written; follow the hint (or try another node).
                    let next = active.map(|a| a.to_string()).unwrap_or_else(|| {
                        let names: Vec<&String> = sockets.keys().collect();
                        rng.pick(&names).expect("a node").clone()
                    });
                    let mut t = lock(&target);
                    if *t == node {
                        *t = next;
                    }
                    true
                }
                Ok(_) | Err(AdminFail::Lost(_)) => {
                    // Committed locally but unconfirmed, or the daemon died mid-request.
                    lock(&ledger).maybe += 1;
                    true
                }
                Err(AdminFail::Unreached(_)) => true,
            }
        };
        if pause {
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.range(0, 4))).await;
        }
    }
}

/// Pauses every writer (each finishes the write it is in); resumed when the guards drop.
pub async fn pause(writers: &[Writer]) -> Vec<tokio::sync::OwnedMutexGuard<()>> {
    let mut held = Vec::new();
    for w in writers {
        held.push(w.gate.clone().lock_owned().await);
    }
    held
}

/// A gateway reading the package of one domain over and over with one client (the firmware's
/// view), checking that versions never go back and that every content is one a writer sent.
pub struct Reader {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reader {
    pub fn spawn(domain: &str, client: Client, ledger: Shared) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(read_loop(domain.to_owned(), client, ledger, stop.clone()));
        Reader {
            stop,
            task: Some(task),
        }
    }

    /// Stops at once (a fetch in progress is abandoned; what was read is in the ledger).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn read_loop(domain: String, client: Client, ledger: Shared, stop: Arc<AtomicBool>) {
    let mut last: Option<(Version, String)> = None;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Ok(p)) =
            tokio::time::timeout(Duration::from_secs(10), client.fetch(PACKAGE)).await
        {
            if !matches!(p.origin, Origin::Held { .. }) {
                let v = p.info.stamp();
                let content = String::from_utf8_lossy(&p.content).into_owned();
                let mut l = lock(&ledger);
                l.reads += 1;
                let served = format!(
                    "node {} ({}) at {}/{}",
                    p.served.node, p.served.role, p.served.epoch, p.served.position.lsn
                );
                if let Some((before, by)) = &last {
                    if v < *before {
                        l.violations.push(format!(
                            "gateway of {domain} read version {v} from {served} after version {before} from {by}"
                        ));
                    }
                }
                if !l.installed.contains(&content) {
                    l.violations.push(format!(
                        "gateway of {domain} read content no writer sent ({content:?}) at version {v} from {served}"
                    ));
                }
                if last.as_ref().is_none_or(|(b, _)| v >= *b) {
                    l.last_version.insert(domain.clone(), v.clone());
                    last = Some((v, served));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    client.close().await;
}

// ---------------------------------------------------------------------------------------------
// The rig: three daemons and how to reach them

/// How the nodes are addressed and started.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `listen` of each node's configuration.
    pub listen: BTreeMap<String, String>,
    /// `(from, to)` → the address `from` dials to reach `to`.
    pub peer: BTreeMap<(String, String), String>,
    /// Where the test (gateways) reaches each node.
    pub gateway: BTreeMap<String, SocketAddr>,
    /// Command prefix per node (empty: run directly).
    pub wrap: BTreeMap<String, Vec<String>>,
}

impl Topology {
    /// Every node on loopback at `ports`, dialing each other directly.
    pub fn loopback(ports: &BTreeMap<String, u16>) -> Topology {
        let addr = |n: &String| format!("127.0.0.1:{}", ports[n]);
        let mut t = Topology {
            listen: BTreeMap::new(),
            peer: BTreeMap::new(),
            gateway: BTreeMap::new(),
            wrap: BTreeMap::new(),
        };
        for n in ports.keys() {
            t.listen.insert(n.clone(), addr(n));
            t.gateway.insert(n.clone(), addr(n).parse().unwrap());
            t.wrap.insert(n.clone(), Vec::new());
            for m in ports.keys().filter(|m| *m != n) {
                t.peer.insert((n.clone(), m.clone()), addr(m));
            }
        }
        t
    }
}

pub const NODES: [&str; 3] = ["a", "b", "c"];

/// Three daemons, their files and their domains (all with durability `standby`).
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub topo: Topology,
    /// `(domain, replicas primary first)`.
    pub domains: Vec<(String, Vec<String>)>,
    pub daemons: BTreeMap<String, Daemon>,
    pub limits: String,
}

impl Rig {
    pub fn new(topo: Topology, domains: &[(&str, [&str; 3])], limits: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let mut certs: Vec<(PeerRole, &str)> = NODES.iter().map(|n| (PeerRole::Node, *n)).collect();
        certs.push((PeerRole::Gateway, GATEWAY));
        init_pki(&dir.path().join("pki"), &certs);
        let rig = Rig {
            dir,
            topo,
            domains: domains
                .iter()
                .map(|(d, r)| (d.to_string(), r.iter().map(|s| s.to_string()).collect()))
                .collect(),
            daemons: BTreeMap::new(),
            limits: limits.to_owned(),
        };
        for n in NODES {
            let config = NodeConfig {
                id: n.to_owned(),
                state_dir: rig.state_dir(n),
                listen: rig.topo.listen[n].clone(),
                admin_socket: rig.socket(n),
                pki: rig.dir.path().join("pki"),
                limits: rig.limits.clone(),
                peers: NODES
                    .iter()
                    .filter(|m| **m != n)
                    .map(|m| {
                        (
                            m.to_string(),
                            rig.topo.peer[&(n.to_owned(), m.to_string())].clone(),
                        )
                    })
                    .collect(),
                domains: rig
                    .domains
                    .iter()
                    .map(|(d, r)| (d.clone(), r.clone(), "standby".to_owned()))
                    .collect(),
            };
            config.write(rig.config_path(n));
        }
        rig
    }

    pub fn state_dir(&self, n: &str) -> PathBuf {
        self.dir.path().join(n).join("state")
    }

    pub fn socket(&self, n: &str) -> PathBuf {
        self.dir.path().join(n).join("run/admin.sock")
    }

    pub fn sockets(&self) -> BTreeMap<String, PathBuf> {
        NODES
            .iter()
            .map(|n| (n.to_string(), self.socket(n)))
            .collect()
    }

    pub fn config_path(&self, n: &str) -> PathBuf {
        self.dir.path().join(format!("{n}.toml"))
    }

    pub fn domain_names(&self) -> Vec<String> {
        self.domains.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Spawns the daemon of `n` (no wait).
    pub fn spawn(&mut self, n: &str) {
        let d = Daemon::spawn_wrapped(
            n,
            self.dir.path(),
            &self.config_path(n),
            GUARD,
            &[],
            &self.topo.wrap[n],
        );
        self.daemons.insert(n.to_owned(), d);
    }

    /// Spawns `nodes` and waits for each READY=1.
    pub fn start(&mut self, nodes: &[&str]) {
        for n in nodes {
            self.spawn(n);
        }
        tokio::task::block_in_place(|| {
            for n in nodes {
                self.daemons[*n].ready();
            }
        });
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, n: &str) {
        if let Some(mut d) = self.daemons.remove(n) {
            d.signal("KILL");
            tokio::task::block_in_place(|| {
                let status = d.wait_exit();
                assert!(!status.success(), "{n} survived SIGKILL");
            });
        }
    }

    /// Last lines of every daemon's log.
    pub fn logs(&self, lines: usize) -> String {
        NODES
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(lines).collect();
                format!(
                    "--- log of {n} (last {lines} lines)\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }

    pub async fn status(&self, n: &str) -> Result<NodeStatus, String> {
        match admin(&self.socket(n), &Request::Status, Duration::from_secs(10)).await {
            Ok(Answer::Status(s)) => Ok(s),
            Ok(other) => Err(format!("status of {n}: {other:?}")),
            Err(e) => Err(format!("status of {n}: {e}")),
        }
    }

    /// Statuses of every running node.
    pub async fn statuses(&self) -> Result<BTreeMap<String, NodeStatus>, String> {
        let mut out = BTreeMap::new();
        for n in self.daemons.keys() {
            out.insert(n.clone(), self.status(n).await?);
        }
        Ok(out)
    }

    /// A gateway client of `domain` knowing every node, with short timeouts.
    pub fn gateway_client(&self, domain: &str) -> Client {
        let nodes = NODES
            .iter()
            .map(|n| (nid(n), self.topo.gateway[*n]))
            .collect();
        let creds = creds(&self.dir.path().join("pki"), PeerRole::Gateway, GATEWAY);
        let mut c = ClientConfig::new(dom(domain), nodes, creds);
        c.connect_timeout = Duration::from_millis(700);
        c.request_timeout = Duration::from_secs(3);
        c.lag_wait = Duration::from_millis(500);
        c.recheck = Duration::from_secs(2);
        c.retry_min = Duration::from_millis(200);
        Client::new(c).unwrap()
    }

    /// Polls (up to `guard`) until every running node serves every domain, exactly one is
    /// active per domain, each standby follows it (synchronized, or reporting a collision it
    /// archived), and all hold the same epoch, position and digest. The active of each domain
    /// and the last statuses.
    pub async fn converge(
        &self,
        guard: Duration,
    ) -> Result<(BTreeMap<String, String>, BTreeMap<String, NodeStatus>), String> {
        let deadline = Instant::now() + guard;
        loop {
            let why = match self.statuses().await {
                Ok(s) => match converged(&self.domains, &s) {
                    Ok(actives) => return Ok((actives, s)),
                    Err(why) => format!("{why}\n{s:#?}"),
                },
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "not converged within {guard:?}: {why}\n{}",
                    self.logs(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The key-values of `domain` on node `n` at the state its live status reports: read from
    /// a copy of the store file taken while nothing commits (writers paused, replicas
    /// converged), checked against the live position and digest (a torn copy is retaken).
    pub async fn read_replica(
        &self,
        n: &str,
        domain: &str,
    ) -> Result<HashMap<String, String>, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let live = self
                .status(n)
                .await?
                .domains
                .into_iter()
                .find(|d| d.domain.as_str() == domain)
                .and_then(|d| d.replica)
                .ok_or_else(|| format!("{domain} has no replica on {n}"))?;
            let copy = self.dir.path().join(format!("copy-{n}-{attempt}"));
            let got = copy_and_read(&self.state_dir(n), &copy, n, domain);
            let _ = std::fs::remove_dir_all(&copy);
            match got {
                Ok((position, digest, kv))
                    if position == live.position && digest == live.digest =>
                {
                    return Ok(kv)
                }
                Ok((position, digest, _)) => {
                    if Instant::now() > deadline {
                        return Err(format!("copy of {domain} on {n} at {position:?} {digest} never matched the live {:?} {}", live.position, live.digest));
                    }
                }
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(format!("copy of {domain} on {n} unreadable: {e}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The keys of every `Put` archived in the collision archive of `domain` on each running
    /// node (admin `Collisions`, then `CollisionShow` for each), and how many records.
    pub async fn archived(
        &self,
        domain: &str,
        cache: &mut HashMap<(String, u64), Vec<String>>,
    ) -> Result<(HashSet<String>, u64), String> {
        let mut keys = HashSet::new();
        let mut records = 0;
        let limit = Duration::from_secs(10);
        for n in self.daemons.keys() {
            let socket = self.socket(n);
            let list = match admin(
                &socket,
                &Request::Collisions {
                    domain: dom(domain),
                },
                limit,
            )
            .await
            {
                Ok(Answer::Collisions { list, .. }) => list,
                other => return Err(format!("collisions of {domain} on {n}: {other:?}")),
            };
            records += list.len() as u64;
            for info in list {
                let k = (format!("{n}/{domain}"), info.id);
                if !cache.contains_key(&k) {
                    let req = Request::CollisionShow {
                        domain: dom(domain),
                        id: info.id,
                    };
                    let ops = match admin(&socket, &req, limit).await {
                        Ok(Answer::Collision { ops, .. }) => ops,
                        other => {
                            return Err(format!(
                                "collision {} of {domain} on {n}: {other:?}",
                                info.id
                            ))
                        }
                    };
                    let put: Vec<String> = ops
                        .iter()
                        .filter_map(|op| match op {
                            Op::Put { key, .. } => Some(String::from_utf8_lossy(key).into_owned()),
                            _ => None,
                        })
                        .collect();
                    cache.insert(k.clone(), put);
                }
                keys.extend(cache[&k].iter().cloned());
            }
        }
        Ok((keys, records))
    }

    /// Stops every daemon with SIGTERM (exit 0 expected).
    pub fn stop_all(&mut self) -> Result<(), String> {
        let mut daemons = std::mem::take(&mut self.daemons);
        for d in daemons.values() {
            d.signal("TERM");
        }
        tokio::task::block_in_place(|| {
            for (n, d) in daemons.iter_mut() {
                let status = d.wait_exit();
                if !status.success() {
                    return Err(format!("{n} stopped with {status}: {}", d.log()));
                }
            }
            Ok(())
        })
    }
}

fn copy_and_read(
    state: &Path,
    copy: &Path,
    n: &str,
    domain: &str,
) -> Result<(Position, String, HashMap<String, String>), String> {
    let _ = std::fs::remove_dir_all(copy);
    std::fs::create_dir_all(copy.join("domains")).map_err(|e| e.to_string())?;
    let file = format!("domains/{domain}.redb");
    std::fs::copy(state.join(&file), copy.join(&file)).map_err(|e| e.to_string())?;
    let store = Store::open(copy, StoreOptions::new(nid(n))).map_err(|e| e.to_string())?;
    let read = (|| {
        let d = store.domain(&dom(domain)).map_err(|e| e.to_string())?;
        let st = d.status().map_err(|e| e.to_string())?;
        let kv = d.list(b"", usize::MAX).map_err(|e| e.to_string())?;
        let map = kv
            .value
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        Ok((st.position, st.digest.to_string(), map))
    })();
    store.close();
    read
}

/// See [`Rig::converge`].
pub fn converged(
    domains: &[(String, Vec<String>)],
    statuses: &BTreeMap<String, NodeStatus>,
) -> Result<BTreeMap<String, String>, String> {
    let mut actives = BTreeMap::new();
    for (domain, _) in domains {
        let mut reports: Vec<(&String, &DomainReport)> = Vec::new();
        for (n, s) in statuses {
            let r = s
                .domains
                .iter()
                .find(|d| d.domain.as_str() == domain)
                .ok_or_else(|| format!("{domain} not listed on {n}"))?;
            if r.placement != PlacementState::Serving || r.replica.is_none() {
                return Err(format!("{domain} not served on {n}: {:?}", r.placement));
            }
            reports.push((n, r));
        }
        let active: Vec<&String> = reports
            .iter()
            .filter(|(_, r)| r.replica.as_ref().unwrap().role == Role::Active)
            .map(|(n, _)| *n)
            .collect();
        let active = match active.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(format!("{domain}: no active")),
            many => return Err(format!("{domain}: {} actives: {many:?}", many.len())),
        };
        let first = reports[0].1.replica.as_ref().unwrap();
        for (n, r) in &reports {
            let rep = r.replica.as_ref().unwrap();
            if (&rep.epoch, &rep.position, &rep.digest)
                != (&first.epoch, &first.position, &first.digest)
            {
                return Err(format!(
                    "{domain}: {n} at {} lsn {} {} differs from {} lsn {} {}",
                    rep.epoch,
                    rep.position.lsn,
                    rep.digest,
                    first.epoch,
                    first.position.lsn,
                    first.digest
                ));
            }
            if rep.role == Role::Standby {
                let f = r
                    .follower
                    .as_ref()
                    .ok_or_else(|| format!("{domain}: standby {n} follows nobody"))?;
                let in_sync = matches!(
                    f.status,
                    SyncStatus::Synchronized | SyncStatus::Collision { .. }
                );
                if f.active.as_str() != active || !in_sync || !f.connected {
                    return Err(format!(
                        "{domain}: standby {n} follows {} ({:?}, connected {}), active is {active}",
                        f.active, f.status, f.connected
                    ));
                }
            }
        }
        actives.insert(domain.clone(), active);
    }
    Ok(actives)
}

/// Check (1) and the archive rule: every acknowledged write of `domain` is on `active` with
/// its value; when `archived` is given, a write that is not there must be in a collision
/// archive (a write acknowledged by a node later fenced). Returns how many were checked.
pub fn check_acked(
    domain: &str,
    active: &str,
    kv: &HashMap<String, String>,
    acked: &[Ack],
    archived: Option<&HashSet<String>>,
) -> Result<(usize, usize), String> {
    let mut in_archive = 0;
    for a in acked {
        match kv.get(&a.key) {
            Some(v) if *v == a.value => {}
            other => {
                if archived.is_some_and(|keys| keys.contains(&a.key)) {
                    in_archive += 1;
                    continue;
                }
                return Err(format!(
                    "acknowledged write {} = {} of {domain} (acked by {} at {} lsn {}) is {} on the active {active}{}",
                    a.key,
                    a.value,
                    a.node,
                    a.position.epoch,
                    a.position.lsn,
                    match other {
                        Some(v) => format!("{v:?}"),
                        None => "missing".to_owned(),
                    },
                    if archived.is_some() { " and in no collision archive" } else { "" }
                ));
            }
        }
    }
    Ok((acked.len(), in_archive))
}

/// Promotes the standby `n` of `domain`; `Ok(answer)` or the refusal's text.
pub async fn promote(rig: &Rig, n: &str, domain: &str, force: bool) -> Result<Answer, String> {
    let req = Request::Promote {
        domain: dom(domain),
        force,
    };
    match admin(&rig.socket(n), &req, Duration::from_secs(30)).await {
        Ok(a @ Answer::Promoted { .. }) => Ok(a),
        Ok(Answer::Error(e)) => Err(e.to_string()),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Installs the first package of `domain` on `active` (so gateways have something to read).
pub async fn first_install(rig: &Rig, active: &str, domain: &str, ledger: &Shared) {
    let content = format!("package of {domain}, first install");
    lock(ledger).installed.insert(content.clone());
    let req = Request::Write {
        domain: dom(domain),
        ops: vec![Op::InstallPolicy {
            name: PACKAGE.to_owned(),
            content: content.into_bytes(),
        }],
    };
    let got = admin(&rig.socket(active), &req, Duration::from_secs(20)).await;
    assert!(
        matches!(got, Ok(Answer::Written { .. })),
        "first install of {domain} on {active}: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Breaking the network

/// One fault on the link between two nodes (indices into [`NODES`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Nothing passes either way.
    Cut(usize, usize),
    /// Nothing passes from the first to the second; the other way works.
    OneWay(usize, usize),
    /// Every packet waits this many milliseconds, both ways.
    Delay(usize, usize, u32),
    /// This percentage of packets is dropped, both ways.
    Loss(usize, usize, u8),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Cut(i, j) => write!(f, "cut {}-{}", NODES[*i], NODES[*j]),
            Fault::OneWay(i, j) => write!(f, "one-way loss {}->{}", NODES[*i], NODES[*j]),
            Fault::Delay(i, j, ms) => write!(f, "delay {}-{} {ms}ms", NODES[*i], NODES[*j]),
            Fault::Loss(i, j, p) => write!(f, "loss {}-{} {p}%", NODES[*i], NODES[*j]),
        }
    }
}

fn ordered(i: usize, j: usize) -> (usize, usize) {
    (i.min(j), i.max(j))
}

/// Runs a command; `Err` with its output when it fails.
pub fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Each node in its own network namespace; a veth pair per pair of nodes and one from each
/// node to the test's namespace (gateways). Torn down when dropped.
pub struct Netns {
    pub prefix: String,
    octet: u8,
    /// Whether `tc ... netem` works here (else delay and loss are approximated with `tbf`).
    pub netem: bool,
}

impl Netns {
    /// Names all start with `dst` then the pid: leftovers of runs whose process is gone are
    /// removed first.
    pub fn setup() -> Result<Netns, String> {
        clean_leftovers();
        let pid = std::process::id();
        let n = Netns {
            prefix: format!("dst{pid}"),
            octet: 100 + (pid % 100) as u8,
            netem: false,
        };
        let mut n = n;
        n.create()?;
        n.netem = n.probe_netem();
        Ok(n)
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Interface of node `i` towards node `j`, in `i`'s namespace.
    fn ifname(&self, i: usize, j: usize) -> String {
        format!("{}{i}{j}", self.prefix)
    }

    fn link_no(i: usize, j: usize) -> usize {
        let (i, j) = ordered(i, j);
        1 + i * 3 + j
    }

    /// Address of node `i` on its link to `j`.
    pub fn addr_on(&self, i: usize, j: usize) -> String {
        let host = if i < j { 1 } else { 2 };
        format!("10.{}.{}.{host}", self.octet, Netns::link_no(i, j))
    }

    /// Address of node `i` on its link to the test's namespace.
    pub fn gateway_addr(&self, i: usize) -> String {
        format!("10.{}.{}.2", self.octet, 20 + i)
    }

    fn create(&mut self) -> Result<(), String> {
        let made = (|| {
            for i in 0..3 {
                sh(&["ip", "netns", "add", &self.ns(i)])?;
                sh(&["ip", "-n", &self.ns(i), "link", "set", "lo", "up"])?;
            }
            for i in 0..3 {
                for j in i + 1..3 {
                    let (a, b) = (self.ifname(i, j), self.ifname(j, i));
                    sh(&[
                        "ip",
                        "link",
                        "add",
                        &a,
                        "netns",
                        &self.ns(i),
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &b,
                        "netns",
                        &self.ns(j),
                    ])?;
                    for (k, ifc, peer) in [(i, &a, j), (j, &b, i)] {
                        let ns = self.ns(k);
                        let addr = format!("{}/24", self.addr_on(k, peer));
                        sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", ifc])?;
                        sh(&["ip", "-n", &ns, "link", "set", ifc, "up"])?;
                    }
                    // Static neighbours: a one-way fault must not turn two-way through ARP.
                    let mac_a = mac(&self.ns(i), &a)?;
                    let mac_b = mac(&self.ns(j), &b)?;
                    sh(&[
                        "ip",
                        "-n",
                        &self.ns(i),
                        "neigh",
                        "replace",
                        &self.addr_on(j, i),
                        "lladdr",
                        &mac_b,
                        "dev",
                        &a,
                        "nud",
                        "permanent",
                    ])?;
                    sh(&[
                        "ip",
                        "-n",
                        &self.ns(j),
                        "neigh",
                        "replace",
                        &self.addr_on(i, j),
                        "lladdr",
                        &mac_a,
                        "dev",
                        &b,
                        "nud",
                        "permanent",
                    ])?;
                }
                let host = format!("{}h{i}", self.prefix);
                let inner = format!("{}g{i}", self.prefix);
                sh(&[
                    "ip",
                    "link",
                    "add",
                    &host,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &inner,
                    "netns",
                    &self.ns(i),
                ])?;
                let host_addr = format!("10.{}.{}.1/24", self.octet, 20 + i);
                sh(&["ip", "addr", "add", &host_addr, "dev", &host])?;
                sh(&["ip", "link", "set", &host, "up"])?;
                let inner_addr = format!("{}/24", self.gateway_addr(i));
                sh(&[
                    "ip",
                    "-n",
                    &self.ns(i),
                    "addr",
                    "add",
                    &inner_addr,
                    "dev",
                    &inner,
                ])?;
                sh(&["ip", "-n", &self.ns(i), "link", "set", &inner, "up"])?;
            }
            Ok(())
        })();
        if made.is_err() {
            self.teardown();
        }
        made
    }

    fn probe_netem(&self) -> bool {
        let (ns, ifc) = (self.ns(0), self.ifname(0, 1));
        let ok = sh(&[
            "tc", "-n", &ns, "qdisc", "replace", "dev", &ifc, "root", "netem", "delay", "1ms",
        ])
        .is_ok();
        let _ = sh(&["tc", "-n", &ns, "qdisc", "del", "dev", &ifc, "root"]);
        ok
    }

    /// `ip netns exec NS` for node `i`.
    pub fn wrap(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    fn qdisc(&self, i: usize, j: usize, spec: &[&str]) -> Result<(), String> {
        let (ns, ifc) = (self.ns(i), self.ifname(i, j));
        let mut args = vec!["tc", "-n", &ns, "qdisc", "replace", "dev", &ifc, "root"];
        args.extend_from_slice(spec);
        sh(&args).map(|_| ())
    }

    pub fn apply(&self, f: &Fault) -> Result<(), String> {
        match *f {
            Fault::Cut(i, j) => sh(&[
                "ip",
                "-n",
                &self.ns(i),
                "link",
                "set",
                &self.ifname(i, j),
                "down",
            ])
            .map(|_| ()),
            Fault::OneWay(i, j) => {
                if self.netem {
                    self.qdisc(i, j, &["netem", "loss", "100%"])
                } else {
                    // Every packet is larger than the bucket: all of i's egress is dropped.
                    self.qdisc(i, j, &["tbf", "rate", "8bit", "burst", "64", "limit", "64"])
                }
            }
            Fault::Delay(i, j, ms) => {
                let delay = format!("{ms}ms");
                for (x, y) in [(i, j), (j, i)] {
                    if self.netem {
                        self.qdisc(x, y, &["netem", "delay", &delay])?;
                    } else {
                        // A slow link: queueing delay up to `ms`.
                        self.qdisc(
                            x,
                            y,
                            &["tbf", "rate", "1mbit", "burst", "16kb", "latency", &delay],
                        )?;
                    }
                }
                Ok(())
            }
            Fault::Loss(i, j, p) => {
                let loss = format!("{p}%");
                for (x, y) in [(i, j), (j, i)] {
                    if self.netem {
                        self.qdisc(x, y, &["netem", "loss", &loss])?;
                    } else {
                        // A throttled link that drops what overflows its small queue.
                        self.qdisc(
                            x,
                            y,
                            &["tbf", "rate", "2mbit", "burst", "2kb", "limit", "3000"],
                        )?;
                    }
                }
                Ok(())
            }
        }
    }

    pub fn heal(&self) -> Result<(), String> {
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    let (ns, ifc) = (self.ns(i), self.ifname(i, j));
                    let _ = sh(&["tc", "-n", &ns, "qdisc", "del", "dev", &ifc, "root"]);
                    sh(&["ip", "-n", &ns, "link", "set", &ifc, "up"])?;
                }
            }
        }
        Ok(())
    }

    fn teardown(&self) {
        for i in 0..3 {
            let _ = sh(&["ip", "netns", "del", &self.ns(i)]);
            let _ = sh(&["ip", "link", "del", &format!("{}h{i}", self.prefix)]);
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn mac(ns: &str, ifc: &str) -> Result<String, String> {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", ifc])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| format!("no MAC for {ifc} in {ns}: {out}"))
}

/// Removes namespaces and host links named `dst<pid>...` whose process is gone.
fn clean_leftovers() {
    let dead = |name: &str| {
        let digits: String = name[3..].chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<u32>() {
            Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => false,
        }
    };
    if let Ok(list) = sh(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with("dst") && dead(name) {
                eprintln!("removing leftover network namespace {name}");
                let _ = sh(&["ip", "netns", "del", name]);
            }
        }
    }
    if let Ok(list) = sh(&["ip", "-o", "link", "show"]) {
        for line in list.lines() {
            if let Some(name) = line.split(": ").nth(1) {
                let name = name.split('@').next().unwrap_or(name);
                if name.starts_with("dst") && dead(name) {
                    eprintln!("removing leftover link {name}");
                    let _ = sh(&["ip", "link", "del", name]);
                }
            }
        }
    }
}

/// The state of the link between two nodes, shared by the proxies carrying it.
#[derive(Default)]
struct LinkState {
    cut: AtomicBool,
    /// Drop percentage, from the lower-numbered node to the higher one and back.
    drop: [AtomicU8; 2],
    delay_ms: AtomicU32,
}

/// Fault-injecting UDP forwarders on loopback, one per ordered pair `(x, y)`: `x` dials `y`
/// at the forwarder's address, which relays to `y` (and the answers back).
pub struct Proxies {
    links: BTreeMap<(usize, usize), Arc<LinkState>>,
    /// `(x, y)` → the address `x` dials to reach `y`.
    pub listen: BTreeMap<(usize, usize), SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxies {
    /// Forwarders to the nodes at `targets` (node index → real address).
    pub async fn start(targets: &BTreeMap<usize, SocketAddr>, seed: u64) -> Proxies {
        let mut p = Proxies {
            links: BTreeMap::new(),
            listen: BTreeMap::new(),
            tasks: Vec::new(),
        };
        for i in 0..3 {
            for j in i + 1..3 {
                p.links.insert((i, j), Arc::new(LinkState::default()));
            }
        }
        for x in 0..3 {
            for y in 0..3 {
                if x == y {
                    continue;
                }
                let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                p.listen.insert((x, y), sock.local_addr().unwrap());
                let link = p.links[&ordered(x, y)].clone();
                // Direction index of packets from x to y.
                let dir = usize::from(x > y);
                let rng = Arc::new(Mutex::new(Rng::from_state(
                    seed ^ ((x * 3 + y) as u64) << 32,
                )));
                p.tasks
                    .push(tokio::spawn(forward(sock, targets[&y], link, dir, rng)));
            }
        }
        p
    }

    pub fn apply(&self, f: &Fault) {
        match *f {
            Fault::Cut(i, j) => self.links[&ordered(i, j)].cut.store(true, Ordering::SeqCst),
            Fault::OneWay(i, j) => {
                self.links[&ordered(i, j)].drop[usize::from(i > j)].store(100, Ordering::SeqCst)
            }
            Fault::Delay(i, j, ms) => self.links[&ordered(i, j)]
                .delay_ms
                .store(ms, Ordering::SeqCst),
            Fault::Loss(i, j, p) => {
                for d in &self.links[&ordered(i, j)].drop {
                    d.store(p, Ordering::SeqCst);
                }
            }
        }
    }

    pub fn heal(&self) {
        for l in self.links.values() {
            l.cut.store(false, Ordering::SeqCst);
            l.delay_ms.store(0, Ordering::SeqCst);
            for d in &l.drop {
                d.store(0, Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether a packet in direction `dir` passes; its delay.
fn verdict(link: &LinkState, dir: usize, rng: &Mutex<Rng>) -> Option<Duration> {
    if link.cut.load(Ordering::SeqCst) {
        return None;
    }
    let p = u64::from(link.drop[dir].load(Ordering::SeqCst));
    if p > 0 && lock(rng).below(100) < p {
        return None;
    }
    Some(Duration::from_millis(u64::from(
        link.delay_ms.load(Ordering::SeqCst),
    )))
}

async fn forward(
    listener: Arc<tokio::net::UdpSocket>,
    target: SocketAddr,
    link: Arc<LinkState>,
    dir: usize,
    rng: Arc<Mutex<Rng>>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<tokio::net::UdpSocket>> = HashMap::new();
    let mut back_tasks = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((len, from)) = listener.recv_from(&mut buf).await else {
            continue;
        };
        let up = match upstreams.get(&from) {
            Some(u) => u.clone(),
            None => {
                let u = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                if u.connect(target).await.is_err() {
                    continue;
                }
                upstreams.insert(from, u.clone());
                back_tasks.push(AbortOnDrop(tokio::spawn(backward(
                    u.clone(),
                    listener.clone(),
                    from,
                    link.clone(),
                    1 - dir,
                    rng.clone(),
                ))));
                u
            }
        };
        if let Some(delay) = verdict(&link, dir, &rng) {
            let packet = buf[..len].to_vec();
            if delay.is_zero() {
                let _ = up.send(&packet).await;
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = up.send(&packet).await;
                });
            }
        }
    }
}

async fn backward(
    up: Arc<tokio::net::UdpSocket>,
    listener: Arc<tokio::net::UdpSocket>,
    client: SocketAddr,
    link: Arc<LinkState>,
    dir: usize,
    rng: Arc<Mutex<Rng>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok(len) = up.recv(&mut buf).await else {
            // An ICMP error of a dead node: keep relaying once it is back.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if let Some(delay) = verdict(&link, dir, &rng) {
            let packet = buf[..len].to_vec();
            if delay.is_zero() {
                let _ = listener.send_to(&packet, client).await;
            } else {
                let listener = listener.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = listener.send_to(&packet, client).await;
                });
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
