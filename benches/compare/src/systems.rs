//! Starting the three systems on 127.0.0.1 in temporary directories, and the etcd and Redis
//! workloads (the domsync workloads are `domsync-bench`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::Mutex;

use crate::load::{self, now_micros, Lat, Run};
use crate::procs::{free_port, output, temp_dir, wait_until, CpuWindow, Proc};
use crate::resp::{self, Conn};

const START_LIMIT: Duration = Duration::from_secs(60);

/// A value of `size` bytes that starts with `head`.
fn value(head: &str, size: usize) -> Vec<u8> {
    let mut v = head.as_bytes().to_vec();
    v.push(b':');
    v.resize(size.max(v.len()), b'x');
    v
}

/// The write index at the head of a lag value (`<index>:...`).
fn parse_index(v: &[u8]) -> Option<u64> {
    let end = v.iter().position(|b| *b == b':').unwrap_or(v.len());
    std::str::from_utf8(&v[..end]).ok()?.parse().ok()
}

/// Times of the lag writes: sent and acknowledged by the writer, seen on the replica.
#[derive(Default)]
pub struct LagBook {
    /// index -> (sent, acknowledged) in [`now_micros`].
    sent: std::sync::Mutex<std::collections::HashMap<u64, (u64, u64)>>,
    /// (index, seen)
    seen: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl LagBook {
    fn sent(&self, i: u64, sent: u64, acked: u64) {
        self.sent.lock().unwrap().insert(i, (sent, acked));
    }
    fn seen(&self, i: u64) {
        self.seen.lock().unwrap().push((i, now_micros()));
    }
    fn seen_count(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }
    /// Lags from the acknowledgement (as `domsync-bench lag` measures: from the write's return
    /// to visible on the standby; 0 when the replica saw it before the writer heard back) and
    /// from the send.
    fn lags(&self) -> (Vec<u64>, Vec<u64>) {
        let sent = self.sent.lock().unwrap();
        let mut from_ack = Vec::new();
        let mut from_send = Vec::new();
        for (i, at) in self.seen.lock().unwrap().iter() {
            if let Some((s, a)) = sent.get(i) {
                from_ack.push(at.saturating_sub(*a));
                from_send.push(at.saturating_sub(*s));
            }
        }
        (from_ack, from_send)
    }
}

// ---------------------------------------------------------------- etcd

pub struct Etcd {
    pub procs: Vec<Proc>,
    pub urls: Vec<String>,
}

impl Etcd {
    pub async fn start(bin: &Path, base: &Path, members: usize) -> Result<Etcd> {
        let dir = temp_dir(base, "etcd-")?;
        let ports: Vec<(u16, u16)> = (0..members)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_>>()?;
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("m{i}")).display()
                ))
                .arg(format!("--listen-client-urls={url}"))
                .arg(format!("--advertise-client-urls={url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={cluster}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=compare")
                .arg("--logger=zap")
                .arg("--log-outputs=stderr")
                .arg("--log-level=warn");
            procs.push(Proc::spawn(
                &format!("etcd-m{i}"),
                cmd,
                dir.join(format!("m{i}.log")),
            )?);
            urls.push(url);
        }
        let etcd = Etcd { procs, urls };
        for url in &etcd.urls {
            wait_until(&format!("etcd at {url}"), START_LIMIT, || async {
                let mut c = Client::connect([url.as_str()], None).await?;
                Ok(c.status().await?.leader() != 0)
            })
            .await?;
        }
        Ok(etcd)
    }

    /// Index of the leader.
    pub async fn leader(&self) -> Result<usize> {
        for (i, url) in self.urls.iter().enumerate() {
            let mut c = Client::connect([url.as_str()], None).await?;
            let s = c.status().await?;
            if s.header().map(|h| h.member_id()) == Some(s.leader()) {
                return Ok(i);
            }
        }
        bail!("no etcd leader")
    }

    pub fn procs(&self) -> Vec<&Proc> {
        self.procs.iter().collect()
    }

    pub fn check(&mut self) -> Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }
}

/// `conns` gRPC connections (HTTP/2 channels) to `url`.
async fn etcd_clients(url: &str, conns: usize) -> Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..conns {
        out.push(Client::connect([url], None).await?);
    }
    Ok(out)
}

/// gRPC connections for `concurrency` clients: one each up to 8, then shared (HTTP/2 streams).
pub fn etcd_conns(concurrency: usize) -> usize {
    concurrency.clamp(1, 8)
}

/// Puts of `value_size`-byte values by `concurrency` clients to `url`.
pub async fn etcd_writes(
    url: &str,
    concurrency: usize,
    value_size: usize,
    warmup: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let clients = Arc::new(etcd_clients(url, etcd_conns(concurrency)).await?);
    let val = Arc::new(value("v", value_size));
    let cpu = CpuWindow::start(servers);
    let mut run = load::closed_loop(concurrency, warmup, secs, move |client, i| {
        let mut c = clients[client % clients.len()].kv_client();
        let val = val.clone();
        async move {
            c.put(format!("w/{client}/{}", i % 1000), val.to_vec(), None)
                .await?;
            Ok(())
        }
    })
    .await;
    run.server_cpu_percent = cpu.finish();
    run.notes.push(format!(
        "{} gRPC connection(s), keys w/<client>/<i mod 1000>",
        etcd_conns(concurrency)
    ));
    Ok(run)
}

/// Serializable gets of one `size`-byte key from `url` (a follower).
pub async fn etcd_reads(
    leader: &str,
    url: &str,
    concurrency: usize,
    size: usize,
    warmup: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let mut l = Client::connect([leader], None).await?;
    l.put("r/value", value("r", size), None).await?;
    let clients = Arc::new(etcd_clients(url, etcd_conns(concurrency)).await?);
    {
        let mut c = clients[0].clone();
        wait_until("the value on the etcd follower", START_LIMIT, || {
            let mut c = c.clone();
            async move {
                let r = c
                    .get("r/value", Some(GetOptions::new().with_serializable()))
                    .await?;
                Ok(r.kvs().first().is_some_and(|kv| kv.value().len() == size))
            }
        })
        .await?;
        c.status().await?;
    }
    let cpu = CpuWindow::start(servers);
    let mut run = load::closed_loop(concurrency, warmup, secs, move |client, _| {
        let mut c = clients[client % clients.len()].kv_client();
        async move {
            let r = c
                .get("r/value", Some(GetOptions::new().with_serializable()))
                .await?;
            match r.kvs().first() {
                Some(kv) if kv.value().len() == size => Ok(()),
                _ => bail!("short read"),
            }
        }
    })
    .await;
    run.server_cpu_percent = cpu.finish();
    run.notes.push(format!(
        "serializable Range on a follower, {} gRPC connection(s)",
        etcd_conns(concurrency)
    ));
    Ok(run)
}

/// Keys of the get comparison (`g/<index>`), like `domsync-bench get`'s.
fn get_key(i: u64) -> String {
    format!("g/{i:010}")
}

/// A well-mixed 64-bit number from `x` (splitmix64): random keys without a dependency.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `keys` keys of `size` bytes put on the leader (16 writers), then serializable gets of
/// random ones by `concurrency` clients from the follower `url`.
#[allow(clippy::too_many_arguments)]
pub async fn etcd_get(
    leader: &str,
    url: &str,
    concurrency: usize,
    keys: u64,
    size: usize,
    warmup: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let writers = etcd_clients(leader, 4).await?;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let mut c = writers[w as usize % writers.len()].kv_client();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < keys {
                c.put(get_key(i), value("g", size), None).await?;
                i += 16;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let clients = Arc::new(etcd_clients(url, etcd_conns(concurrency)).await?);
    {
        let c = clients[0].clone();
        wait_until("the keys on the etcd follower", START_LIMIT, || {
            let mut c = c.clone();
            async move {
                let r = c
                    .get(
                        get_key(keys - 1),
                        Some(GetOptions::new().with_serializable()),
                    )
                    .await?;
                Ok(r.kvs().first().is_some_and(|kv| kv.value().len() == size))
            }
        })
        .await?;
    }
    let cpu = CpuWindow::start(servers);
    let mut run = load::closed_loop(concurrency, warmup, secs, move |client, i| {
        let mut c = clients[client % clients.len()].kv_client();
        let key = get_key(mix(((client as u64) << 40) ^ i) % keys);
        async move {
            let r = c
                .get(key, Some(GetOptions::new().with_serializable()))
                .await?;
            match r.kvs().first() {
                Some(kv) if kv.value().len() == size => Ok(()),
                _ => bail!("short read"),
            }
        }
    })
    .await;
    run.server_cpu_percent = cpu.finish();
    run.notes.push(format!(
        "serializable Range of random keys out of {keys} ({size} B) on a follower, {} gRPC connection(s)",
        etcd_conns(concurrency)
    ));
    Ok(run)
}

/// Keys each Txn client changes in turn (as `domsync-bench txn`).
const TXN_KEYS_PER_CLIENT: u64 = 8;

/// `concurrency` clients each changing its own keys on the leader `url` with a Txn: compare
/// `mod_revision == ` the revision of the client's previous commit of the key (its first read
/// otherwise), then put; on a failed compare, the `or_else` get gives the current revision
/// (a conflict, not counted as an op).
pub async fn etcd_txn(
    url: &str,
    concurrency: usize,
    size: usize,
    warmup: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let clients = Arc::new(etcd_clients(url, etcd_conns(concurrency)).await?);
    let key = |client: usize, k: u64| format!("t/{client:05}/{k}");
    let mut revs = Vec::new();
    for client in 0..concurrency {
        let mut c = clients[client % clients.len()].kv_client();
        let mut v = Vec::new();
        for k in 0..TXN_KEYS_PER_CLIENT {
            let r = c.get(key(client, k), None).await?;
            v.push(r.kvs().first().map_or(0, |kv| kv.mod_revision()));
        }
        revs.push(std::sync::Mutex::new(v));
    }
    let revs = Arc::new(revs);
    let conflicts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let val = Arc::new(value("t", size));
    let cpu = CpuWindow::start(servers);
    let conf = conflicts.clone();
    let mut run = load::closed_loop(concurrency, warmup, secs, move |client, i| {
        let mut c = clients[client % clients.len()].kv_client();
        let k = i % TXN_KEYS_PER_CLIENT;
        let key = key(client, k);
        let (revs, val, conf) = (revs.clone(), val.clone(), conf.clone());
        async move {
            let rev = revs[client].lock().unwrap()[k as usize];
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key.clone(), val.to_vec(), None)])
                .or_else([TxnOp::get(key, None)]);
            let r = c.txn(txn).await?;
            let now = if r.succeeded() {
                r.header().map(|h| h.revision())
            } else {
                r.op_responses().into_iter().find_map(|o| match o {
                    TxnOpResponse::Get(g) => {
                        Some(g.kvs().first().map_or(0, |kv| kv.mod_revision()))
                    }
                    _ => None,
                })
            };
            if let Some(now) = now {
                revs[client].lock().unwrap()[k as usize] = now;
            }
            if r.succeeded() {
                Ok(())
            } else {
                conf.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                bail!("conflict")
            }
        }
    })
    .await;
    run.server_cpu_percent = cpu.finish();
    let conflicts = conflicts.load(std::sync::atomic::Ordering::Relaxed);
    run.errors = run.errors.saturating_sub(conflicts);
    run.notes.retain(|n| n != "first error: conflict");
    run.notes.push(format!(
        "Txn on the leader: compare mod_revision == the client's last commit of the key, then put {size} B; {} gRPC connection(s); {conflicts} conflict(s) not counted as ops",
        etcd_conns(concurrency)
    ));
    Ok(run)
}

/// Puts at `rate`/s on the leader; a watch on the follower `follower` sees each one arrive.
pub async fn etcd_lag(
    leader: &str,
    follower: &str,
    rate: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let mut w = Client::connect([follower], None).await?;
    let (_watcher, mut stream) = w
        .watch("lag/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let book = Arc::new(LagBook::default());
    let b = book.clone();
    let receiver = tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if let Some(i) = ev.kv().and_then(|kv| parse_index(kv.value())) {
                    b.seen(i);
                }
            }
        }
    });
    let clients = Arc::new(etcd_clients(leader, 4).await?);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu = CpuWindow::start(servers);
    let c0 = crate::procs::self_cpu();
    let t0 = Instant::now();
    let (err, b) = (errors.clone(), book.clone());
    let fired = load::open_loop(rate, secs, move |i| {
        let mut c = clients[i as usize % clients.len()].kv_client();
        let (err, b) = (err.clone(), b.clone());
        async move {
            let sent = now_micros();
            match c
                .put(
                    format!("lag/{}", i % 1000),
                    value(&i.to_string(), 100),
                    None,
                )
                .await
            {
                Ok(_) => b.sent(i, sent, now_micros()),
                Err(_) => {
                    err.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    })
    .await;
    let gen_cpu =
        crate::procs::self_cpu().saturating_sub(c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let server = cpu.finish();
    let deadline = Instant::now() + Duration::from_secs(5);
    while book.seen_count() < fired && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    receiver.abort();
    let mut run = lag_run(fired, &book, secs, 100.0 * gen_cpu, server);
    run.errors += errors.load(std::sync::atomic::Ordering::Relaxed);
    run.notes
        .push("put on the leader (4 gRPC connections) -> watch event on a follower".into());
    Ok(run)
}

fn lag_run(fired: u64, book: &LagBook, secs: f64, gen: f64, server: Vec<(String, f64)>) -> Run {
    let (from_ack, from_send) = book.lags();
    let received = from_ack.len() as u64;
    let send = Lat::from_micros(from_send);
    let mut run = Run {
        ops: received,
        errors: fired.saturating_sub(received),
        seconds: secs,
        ops_per_sec: received as f64 / secs,
        latency_ms: Lat::from_micros(from_ack),
        generator_cpu_percent: gen,
        server_cpu_percent: server,
        ..Run::default()
    };
    run.notes.push(format!(
        "lag from the write's acknowledgement (compared); from its send: p50 {:.3} / p99 {:.3} ms",
        send.p50, send.p99
    ));
    if received < fired {
        run.notes
            .push(format!("{} of {fired} writes never seen", fired - received));
    }
    run
}

// ---------------------------------------------------------------- Redis

pub struct Redis {
    pub procs: Vec<Proc>,
    pub addrs: Vec<String>,
}

impl Redis {
    /// A master and `replicas` replicas (`--save "" --appendonly no`: Redis's replication is
    /// asynchronous and in memory; persistence is off so no background save disturbs a run).
    pub async fn start(bin: &Path, base: &Path, replicas: usize) -> Result<Redis> {
        let dir = temp_dir(base, "redis-")?;
        let mut procs = Vec::new();
        let mut addrs: Vec<String> = Vec::new();
        for i in 0..=replicas {
            let port = free_port()?;
            let d = dir.join(format!("r{i}"));
            std::fs::create_dir_all(&d)?;
            let mut cmd = Command::new(bin);
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--protected-mode", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&d);
            if i > 0 {
                cmd.arg("--replicaof")
                    .arg("127.0.0.1")
                    .arg(&addrs[0]["127.0.0.1:".len()..]);
            }
            let name = if i == 0 {
                "redis-master".to_owned()
            } else {
                format!("redis-replica{i}")
            };
            procs.push(Proc::spawn(&name, cmd, dir.join(format!("r{i}.log")))?);
            addrs.push(format!("127.0.0.1:{port}"));
        }
        let redis = Redis { procs, addrs };
        for (i, addr) in redis.addrs.iter().enumerate() {
            wait_until(&format!("redis at {addr}"), START_LIMIT, || async move {
                let mut c = Conn::connect(addr).await?;
                if i == 0 {
                    c.cmd(&[b"PING"]).await?;
                    return Ok(true);
                }
                Ok(c.info("replication")
                    .await?
                    .contains("master_link_status:up"))
            })
            .await?;
        }
        Ok(redis)
    }

    pub fn procs(&self) -> Vec<&Proc> {
        self.procs.iter().collect()
    }
}

/// GETs of one `size`-byte value from the replica, one connection per client.
pub async fn redis_reads(
    master: &str,
    replica: &str,
    concurrency: usize,
    size: usize,
    warmup: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let mut m = Conn::connect(master).await?;
    m.cmd(&[b"SET", b"r/value", &value("r", size)]).await?;
    wait_until("the value on the Redis replica", START_LIMIT, || async {
        let mut c = Conn::connect(replica).await?;
        Ok(matches!(c.cmd(&[b"GET", b"r/value"]).await?, resp::Value::Bulk(Some(v)) if v.len() == size))
    })
    .await?;
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(Arc::new(Mutex::new(Conn::connect(replica).await?)));
    }
    let conns = Arc::new(conns);
    let cpu = CpuWindow::start(servers);
    let mut run = load::closed_loop(concurrency, warmup, secs, move |client, _| {
        let conn = conns[client].clone();
        async move {
            let mut c = conn.lock().await;
            match c.cmd(&[b"GET", b"r/value"]).await? {
                resp::Value::Bulk(Some(v)) if v.len() == size => Ok(()),
                other => bail!("GET answered {other:?}"),
            }
        }
    })
    .await;
    run.server_cpu_percent = cpu.finish();
    run.notes
        .push("GET on the replica, one TCP connection per client, no pipelining".into());
    Ok(run)
}

/// `SET` then `PUBLISH <index>` on the master at `rate`/s (one MULTI/EXEC, so they replicate
/// together); a subscriber on the replica sees each PUBLISH once the SET before it was applied
/// there (one replication stream).
pub async fn redis_lag(
    master: &str,
    replica: &str,
    rate: f64,
    secs: f64,
    servers: &[&Proc],
) -> Result<Run> {
    let mut sub = Conn::connect(replica).await?;
    sub.cmd(&[b"SUBSCRIBE", b"lag"]).await?;
    let book = Arc::new(LagBook::default());
    let b = book.clone();
    let receiver = tokio::spawn(async move {
        while let Ok(v) = sub.read().await {
            if let Some(i) = v.message_payload().and_then(|p| parse_index(&p)) {
                b.seen(i);
            }
        }
    });
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Arc::new(Mutex::new(Conn::connect(master).await?)));
    }
    let conns = Arc::new(conns);
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu = CpuWindow::start(servers);
    let c0 = crate::procs::self_cpu();
    let t0 = Instant::now();
    let (err, b) = (errors.clone(), book.clone());
    let fired = load::open_loop(rate, secs, move |i| {
        let conn = conns[i as usize % conns.len()].clone();
        let (err, b) = (err.clone(), b.clone());
        async move {
            let mut c = conn.lock().await;
            let sent = now_micros();
            let index = i.to_string();
            let key = format!("lag/{}", i % 1000);
            let r = async {
                c.cmd(&[b"MULTI"]).await?;
                c.cmd(&[b"SET", key.as_bytes(), &value(&index, 100)])
                    .await?;
                c.cmd(&[b"PUBLISH", b"lag", index.as_bytes()]).await?;
                c.cmd(&[b"EXEC"]).await?;
                anyhow::Ok(())
            }
            .await;
            match r {
                Ok(()) => b.sent(i, sent, now_micros()),
                Err(_) => {
                    err.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    })
    .await;
    let gen_cpu =
        crate::procs::self_cpu().saturating_sub(c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let server = cpu.finish();
    let deadline = Instant::now() + Duration::from_secs(5);
    while book.seen_count() < fired && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    receiver.abort();
    let mut run = lag_run(fired, &book, secs, 100.0 * gen_cpu, server);
    run.errors += errors.load(std::sync::atomic::Ordering::Relaxed);
    run.notes.push(
        "MULTI SET + PUBLISH EXEC on the master (4 connections) -> message on a replica subscriber"
            .into(),
    );
    Ok(run)
}

// ---------------------------------------------------------------- domsync

/// The domsync binaries.
#[derive(Clone)]
pub struct Bins {
    pub domsync: PathBuf,
    pub domsyncd: PathBuf,
    pub bench: PathBuf,
}

pub struct Domsync {
    pub procs: Vec<Proc>,
    pub dir: PathBuf,
    pub pki: PathBuf,
    /// `(node id, QUIC address)`, in start order.
    pub nodes: Vec<(String, String)>,
    pub bins: Bins,
}

pub const GATEWAY: &str = "g";

/// The `[apps]` section of a node: its local application socket at `socket`.
fn apps_section(socket: &Path) -> String {
    format!("\n[apps]\nsocket = \"{}\"\n", socket.display())
}
pub const ADMIN: &str = "ops";

impl Domsync {
    /// Nodes `a`, `b`, ... each with every other as a peer; `domains` as `(name, durability)`,
    /// each on every node with `a` as primary, granted to gateway [`GATEWAY`].
    pub async fn start(
        bins: &Bins,
        base: &Path,
        nodes: usize,
        domains: &[(String, &str)],
    ) -> Result<Domsync> {
        let dir = temp_dir(base, "domsync-")?;
        let pki = dir.join("pki");
        let cli = |args: &[&str]| output(Command::new(&bins.domsync).args(args));
        cli(&["pki", "init", "--dir", pki.to_str().unwrap()])?;
        let ids: Vec<String> = (0..nodes)
            .map(|i| ((b'a' + i as u8) as char).to_string())
            .collect();
        for id in &ids {
            cli(&[
                "pki",
                "issue",
                "--role",
                "node",
                "--id",
                id,
                "--dir",
                pki.to_str().unwrap(),
            ])?;
        }
        cli(&[
            "pki",
            "issue",
            "--role",
            "gateway",
            "--id",
            GATEWAY,
            "--dir",
            pki.to_str().unwrap(),
        ])?;
        cli(&[
            "pki",
            "issue",
            "--role",
            "admin",
            "--id",
            ADMIN,
            "--dir",
            pki.to_str().unwrap(),
        ])?;
        let addrs: Vec<String> = ids
            .iter()
            .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
            .collect::<Result<_>>()?;
        let replicas = ids
            .iter()
            .map(|r| format!("\"{r}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut procs = Vec::new();
        let mut notifies = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let node_dir = dir.join(id);
            std::fs::create_dir_all(&node_dir)?;
            let mut text = format!(
                "[node]\nid = \"{id}\"\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\nadmin_socket = \"{sock}\"\n\n\
                 [tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/node-{id}.pem\"\nkey = \"{p}/node-{id}.key\"\n",
                state = node_dir.join("state").display(),
                listen = addrs[i],
                sock = node_dir.join("admin.sock").display(),
                p = pki.display(),
            );
            for (j, peer) in ids.iter().enumerate() {
                if j != i {
                    text.push_str(&format!(
                        "\n[[peers]]\nid = \"{peer}\"\naddress = \"{}\"\n",
                        addrs[j]
                    ));
                }
            }
            for (name, durability) in domains {
                text.push_str(&format!(
                    "\n[[domains]]\nname = \"{name}\"\nreplicas = [{replicas}]\ndurability = \"{durability}\"\ngateways = [\"{GATEWAY}\"]\n"
                ));
            }
            // The read points open up to 100 connections with one gateway certificate.
            text.push_str("\n[limits]\ngateway_connections_per_gateway = 4096\n");
            text.push_str(&apps_section(&node_dir.join("app.sock")));
            let config = dir.join(format!("{id}.toml"));
            std::fs::write(&config, text)?;
            let notify_path = dir.join(format!("{id}-notify.sock"));
            let notify = UnixDatagram::bind(&notify_path)?;
            notify.set_read_timeout(Some(START_LIMIT))?;
            let mut cmd = Command::new(&bins.domsyncd);
            cmd.arg("--config")
                .arg(&config)
                .env("NOTIFY_SOCKET", &notify_path)
                .env("RUST_LOG", "warn");
            procs.push(Proc::spawn(
                &format!("domsyncd-{id}"),
                cmd,
                dir.join(format!("{id}.log")),
            )?);
            notifies.push(notify);
        }
        let mut d = Domsync {
            procs,
            dir,
            pki,
            nodes: ids.into_iter().zip(addrs).collect(),
            bins: bins.clone(),
        };
        for (i, notify) in notifies.into_iter().enumerate() {
            let ready = tokio::task::spawn_blocking(move || -> Result<()> {
                let mut buf = [0u8; 4096];
                loop {
                    let n = notify.recv(&mut buf).context("no READY=1 within 60 s")?;
                    if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                        return Ok(());
                    }
                }
            })
            .await?;
            if let Err(e) = ready {
                d.procs[i].check_alive()?;
                return Err(e);
            }
        }
        d.wait_synchronized(domains.len(), nodes - 1).await?;
        Ok(d)
    }

    pub fn socket(&self, node: usize) -> PathBuf {
        self.dir.join(&self.nodes[node].0).join("admin.sock")
    }

    pub fn procs(&self) -> Vec<&Proc> {
        self.procs.iter().collect()
    }

    /// `domsync --socket <node a> status --json`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = output(
            Command::new(&self.bins.domsync)
                .arg("--socket")
                .arg(self.socket(0))
                .args(["status", "--json"]),
        )?;
        Ok(serde_json::from_str(out.trim())?)
    }

    /// Until node `a` is active for `domains` domains, each with `standbys` synchronized.
    pub async fn wait_synchronized(&self, domains: usize, standbys: usize) -> Result<()> {
        wait_until(
            "domsync domains active and synchronized",
            START_LIMIT,
            || async {
                let s = self.status()?;
                let list = s["domains"].as_array().cloned().unwrap_or_default();
                let ready = list
                    .iter()
                    .filter(|d| {
                        d["role"]
                            .as_str()
                            .is_some_and(|r| r.eq_ignore_ascii_case("active"))
                            && d["standbys"].as_array().is_some_and(|sb| {
                                sb.iter()
                                    .filter(|x| x["sync_status"]["name"] == "Synchronized")
                                    .count()
                                    >= standbys
                            })
                    })
                    .count();
                Ok(ready >= domains)
            },
        )
        .await
    }

    /// Target flags of `domsync-bench` for admin writes to node `node` over remote admin.
    pub fn remote_admin(&self, node: usize) -> Vec<String> {
        vec![
            "--remote".into(),
            format!("{}={}", self.nodes[node].0, self.nodes[node].1),
            "--admin-pki".into(),
            self.pki.display().to_string(),
            "--admin-id".into(),
            ADMIN.into(),
        ]
    }

    /// Target flags of `domsync-bench` for the application API of node `node` (its local
    /// application socket).
    pub fn app_socket(&self, node: usize) -> Vec<String> {
        vec![
            "--app-socket".into(),
            self.dir
                .join(&self.nodes[node].0)
                .join("app.sock")
                .display()
                .to_string(),
        ]
    }

    /// Target flags of `domsync-bench` for gateway reads from node `node`.
    pub fn gateway(&self, node: usize) -> Vec<String> {
        vec![
            "--node".into(),
            format!("{}={}", self.nodes[node].0, self.nodes[node].1),
            "--pki".into(),
            self.pki.display().to_string(),
            "--gateway-id".into(),
            GATEWAY.into(),
        ]
    }

    /// Runs `domsync-bench ARGS --json` and reads its result.
    pub fn bench(&self, args: &[String]) -> Result<(Run, serde_json::Value)> {
        let cpu = CpuWindow::start(&self.procs());
        let mut cmd = Command::new(&self.bins.bench);
        cmd.args(args).arg("--json");
        let line = std::iter::once(self.bins.bench.display().to_string())
            .chain(args.iter().cloned())
            .chain(std::iter::once("--json".to_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        let out = output(&mut cmd).with_context(|| line.clone())?;
        let server = cpu.finish();
        let json: serde_json::Value = out
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l.trim()).ok())
            .or_else(|| serde_json::from_str(out.trim()).ok())
            .with_context(|| format!("no JSON object in the output of `{line}`: {out}"))?;
        let f = |k: &str| json[k].as_f64().unwrap_or(0.0);
        let lat = &json["latency_ms"];
        let l = |k: &str| lat[k].as_f64().unwrap_or(0.0);
        let run = Run {
            ops: f("ops") as u64,
            errors: f("errors") as u64,
            seconds: f("seconds"),
            ops_per_sec: f("ops_per_sec"),
            latency_ms: Lat {
                p50: l("p50"),
                p90: l("p90"),
                p99: l("p99"),
                max: l("max"),
                mean: l("mean"),
            },
            generator_cpu_percent: f("generator_cpu_percent"),
            server_cpu_percent: server,
            notes: json["notes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            command: Some(line.replace(&self.dir.display().to_string(), "$TMP")),
            rss_mib: 0.0,
            embedded: json["target"] == "embedded",
        };
        let mut run = run;
        if run.embedded {
            // Its own cluster in its own process: the daemons started here were idle.
            run.server_cpu_percent.clear();
            run.command = run.command.map(|c| format!("{c}   # embedded cluster"));
        }
        Ok((run, json))
    }
}
