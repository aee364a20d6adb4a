//! `bench get` and `bench txn`: the application API (`domsync-app/1`) through
//! [`domsync_client::app::AppClient`], each client on its own connection (the local
//! application socket, or QUIC with an application certificate).
//!
//! - get: `--keys` keys of `--value-size` bytes are written first through the active's admin
//!   API, then `--concurrency` clients read random ones from a standby (or `--role active`).
//! - txn: `--concurrency` clients each change their own keys with a conditional transaction on
//!   the active: `Version { key, version }` from the client's previous commit of that key (its
//!   first read, or a conflict's answer, otherwise), then `Put`. Conflicts are counted apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use domsync_client::admin::Target;
use domsync_client::app::{AppClient, AppTarget, ClientError, Got};
use domsync_net::{read_message, write_message};
use domsync_proto::app::{
    Answer, AppError, AtLeast, Condition, Request, Txn, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES,
    MAX_WAIT_MS,
};
use domsync_proto::model::{DomainId, Lsn, Op, Position};
use domsync_testkit::rng::Rng;
use serde_json::json;
use tokio::net::UnixStream;

use super::stats::{CpuMeter, Errors, Histogram, Progress};
use super::target::{self, durability_name, Embedded};
use super::{AppVia, BenchResult, Budget, Ctx, Outcome, RoleArg};

/// Keys per admin write while preloading.
const PRELOAD_BATCH: u64 = 200;

/// Keys each txn client changes in turn.
const KEYS_PER_CLIENT: u64 = 8;

/// The key `n` of the get scenario.
pub fn get_key(n: u64) -> Vec<u8> {
    format!("bench/get/{n:010}").into_bytes()
}

/// The key `k` of txn client `client`.
fn txn_key(client: usize, k: u64) -> Vec<u8> {
    format!("bench/txn/{client:05}/{k}").into_bytes()
}

/// Where the application clients connect, and the cluster when the bench started it.
struct Setup {
    cluster: Option<Embedded>,
    app: AppTarget,
    /// The active's admin API (preloading), when known.
    admin: Option<Target>,
}

/// The embedded cluster (the node in `role` serves) or the running target named by
/// `--app-socket` / `--app-remote`.
async fn setup(ctx: &Ctx, role: RoleArg) -> BenchResult<Setup> {
    if ctx.running() {
        let app = ctx.app_target()?.ok_or(
            "the application API of a running cluster needs --app-socket PATH (the node's [apps] socket) or --app-remote ID=ADDR --app-pki DIR --app-id ID",
        )?;
        return Ok(Setup {
            cluster: None,
            app,
            admin: ctx.admin.clone(),
        });
    }
    let c = ctx.embedded(&ctx.embedded_options()).await?;
    let i = match role {
        RoleArg::Active => c.active(),
        RoleArg::Standby => c.standby(),
    }
    .ok_or("the embedded cluster has no node in that role")?;
    let a = c.active().ok_or("no active in the embedded cluster")?;
    Ok(Setup {
        app: c.app(i),
        admin: Some(c.admin(a)),
        cluster: Some(c),
    })
}

/// One application connection: the client library, or the protocol's frames spoken directly
/// on the local socket (as `bench read` speaks the gateway protocol).
enum Conn {
    Client(AppClient),
    Frames(UnixStream),
}

impl Conn {
    /// One request, one answer (frames: on this connection, in turn).
    async fn call(&mut self, req: &Request) -> Result<Answer, ClientError> {
        let Conn::Frames(s) = self else {
            return Err(ClientError::Usage("not a frame connection".into()));
        };
        let lost =
            |e: domsync_net::FrameError| ClientError::Connect(format!("application socket: {e}"));
        write_message(s, req, MAX_REQUEST_BYTES)
            .await
            .map_err(lost)?;
        read_message::<_, Answer>(s, MAX_ANSWER_BYTES)
            .await
            .map_err(lost)?
            .ok_or_else(|| ClientError::Connect("the node closed the application socket".into()))
    }

    async fn get(
        &mut self,
        domain: &DomainId,
        key: &[u8],
        at_least: AtLeast,
    ) -> Result<Got, ClientError> {
        if let Conn::Client(c) = self {
            return c.get(domain, key, at_least).await;
        }
        let req = Request::Get {
            domain: domain.clone(),
            key: key.to_vec(),
            at_least,
        };
        match self.call(&req).await? {
            Answer::Value { served, entry } => Ok(Got { entry, served }),
            Answer::Error(e) => Err(ClientError::App(e)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    async fn txn(&mut self, txn: Txn) -> Result<Position, ClientError> {
        if let Conn::Client(c) = self {
            return c.txn(txn).await;
        }
        match self.call(&Request::Txn(txn)).await? {
            Answer::Committed { position } => Ok(position),
            Answer::Error(e) => Err(ClientError::App(e)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

/// `n` application connections to `target`.
async fn clients(target: &AppTarget, n: usize, via: AppVia) -> BenchResult<Vec<Conn>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(match (via, target) {
            (AppVia::Frames, AppTarget::Socket(p)) => Conn::Frames(
                UnixStream::connect(p)
                    .await
                    .map_err(|e| format!("cannot connect to the application socket {}: {e}; is domsyncd running with [apps] socket there?", p.display()))?,
            ),
            (AppVia::Frames, AppTarget::Remote { .. }) => {
                return Err("--app-via frames needs --app-socket (the local socket)".into())
            }
            (AppVia::Client, t) => Conn::Client(AppClient::connect(t.clone()).await?),
        });
    }
    Ok(out)
}

/// The value written: `size` bytes.
fn value(size: usize, fill: u8) -> Vec<u8> {
    vec![fill; size]
}

/// Writes the `keys` keys of the get scenario through the active's admin API, in batches;
/// returns the lsn of the last batch.
async fn preload(admin: &Target, domain: &DomainId, keys: u64, size: usize) -> BenchResult<Lsn> {
    let mut s = target::connect(admin).await?;
    let mut last = Lsn(0);
    let mut n = 0;
    while n < keys {
        let end = (n + PRELOAD_BATCH).min(keys);
        let ops = (n..end)
            .map(|i| Op::Put {
                key: get_key(i),
                value: value(size, 0x5A),
            })
            .collect();
        last = target::write(&mut s, domain, ops)
            .await?
            .map_err(|e| format!("preloading key {n} of domain {domain}: {e}"))?
            .lsn;
        n = end;
    }
    s.close().await;
    Ok(last)
}

/// Runs `bench get`.
pub async fn get(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let s = setup(ctx, ctx.args.role).await?;
    let keys = ctx.args.keys;
    let size = usize::try_from(ctx.value_size())?;
    let at = match &s.admin {
        Some(admin) => {
            target::check_active(admin, &ctx.domain).await?;
            preload(admin, &ctx.domain, keys, size).await?
        }
        None => Lsn(0),
    };
    let mut conns = clients(&s.app, ctx.concurrency(), ctx.args.app_via).await?;
    // The last key preloaded, once the serving node has applied it: a missing key, a
    // refusal or a lagging node is one clear line before the load starts.
    let first = conns[0]
        .get(
            &ctx.domain,
            &get_key(keys - 1),
            AtLeast {
                lsn: at,
                wait_ms: MAX_WAIT_MS,
            },
        )
        .await?;
    match &first.entry {
        Some(e) if e.value.len() == size => {}
        _ => {
            return Err(format!(
                "key {} of domain {} is missing or not {size} bytes on node {}: give --socket/--remote of the active so the bench writes its keys first",
                String::from_utf8_lossy(&get_key(keys - 1)),
                ctx.domain,
                first.served.node
            )
            .into())
        }
    }
    o.params
        .insert("served_by".into(), json!(first.served.node.to_string()));
    o.params.insert(
        "served_role".into(),
        json!(format!("{:?}", first.served.role).to_lowercase()),
    );
    o.params.insert("keys".into(), json!(keys));
    o.params.insert(
        "via".into(),
        json!(format!("{:?}", ctx.args.app_via).to_lowercase()),
    );
    let budget = Arc::new(ctx.budget(10.0));
    let progress = Progress::start(ctx.progress, "gets");
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (domain, budget, counter) =
                (ctx.domain.clone(), Arc::clone(&budget), progress.counter());
            tokio::spawn(reader(c, domain, i as u64 + 1, keys, size, budget, counter))
        })
        .collect();
    for t in tasks {
        let (h, e, ops) = t.await?;
        o.latency.merge(&h);
        o.errors.merge(e);
        o.ops += ops;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.bytes = o.ops * size as u64;
    o.notes.push(format!(
        "get of random keys out of {keys} ({size} B values), one connection per client ({}, {})",
        describe(&s.app),
        ctx.args.app_via.describe()
    ));
    if let Some(c) = s.cluster {
        c.shutdown().await;
    }
    Ok(o)
}

/// One closed-loop reader.
async fn reader(
    mut c: Conn,
    domain: DomainId,
    seed: u64,
    keys: u64,
    size: usize,
    budget: Arc<Budget>,
    counter: Arc<AtomicU64>,
) -> (Histogram, Errors, u64) {
    let mut rng = Rng::from_state(seed);
    let (mut h, mut errors, mut ops) = (Histogram::default(), Errors::default(), 0u64);
    while budget.take() {
        let key = get_key(rng.below(keys));
        let t = Instant::now();
        match c.get(&domain, &key, AtLeast::default()).await {
            Ok(got) if got.entry.as_ref().is_some_and(|e| e.value.len() == size) => {
                h.record(t.elapsed());
                ops += 1;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(got) => errors.add(format!(
                "key {} missing or short on node {}",
                String::from_utf8_lossy(&key),
                got.served.node
            )),
            Err(e) => {
                let gone = matches!(e, ClientError::Connect(_));
                errors.add(e);
                if gone {
                    break;
                }
            }
        }
    }
    (h, errors, ops)
}

/// Runs `bench txn`.
pub async fn txn(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let s = setup(ctx, RoleArg::Active).await?;
    let size = usize::try_from(ctx.value_size())?;
    let mut conns = clients(&s.app, ctx.concurrency(), ctx.args.app_via).await?;
    // Each client reads the versions of its keys once (on the active, so they are current).
    let mut versions = Vec::with_capacity(conns.len());
    for (i, c) in conns.iter_mut().enumerate() {
        let mut v = Vec::new();
        for k in 0..KEYS_PER_CLIENT {
            let got = c
                .get(&ctx.domain, &txn_key(i, k), AtLeast::default())
                .await?;
            v.push(got.entry.map(|e| e.version));
        }
        versions.push(v);
    }
    let budget = Arc::new(ctx.budget(10.0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(ctx.progress, "txns");
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(versions)
        .enumerate()
        .map(|(i, (c, v))| {
            let w = TxnWriter {
                client: i,
                domain: ctx.domain.clone(),
                versions: v,
                size,
                budget: Arc::clone(&budget),
                counter: progress.counter(),
                conflicts: Arc::clone(&conflicts),
            };
            tokio::spawn(w.run(c))
        })
        .collect();
    for t in tasks {
        let (h, e, ops) = t.await?;
        o.latency.merge(&h);
        o.errors.merge(e);
        o.ops += ops;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.bytes = o.ops * size as u64;
    let conflicts = conflicts.load(Ordering::Relaxed);
    o.params.insert("conflicts".into(), json!(conflicts));
    o.params.insert(
        "via".into(),
        json!(format!("{:?}", ctx.args.app_via).to_lowercase()),
    );
    o.params
        .insert("keys_per_client".into(), json!(KEYS_PER_CLIENT));
    o.notes.push(format!(
        "committed transactions (Version condition from the client's previous commit of the key, then Put of {size} B) on the active, one connection per client ({}, {}); {conflicts} conflict(s) not counted as ops",
        describe(&s.app),
        ctx.args.app_via.describe()
    ));
    if ctx.running() {
        o.params.insert("durability".into(), json!("configured"));
        o.notes
            .push("the domain's durability is the one configured on the cluster".into());
    } else {
        o.notes.push(format!(
            "durability {} on {} node(s)",
            durability_name(ctx.args.durability.into()),
            ctx.nodes()
        ));
    }
    if let Some(c) = s.cluster {
        c.shutdown().await;
    }
    Ok(o)
}

/// One closed-loop transaction client over its own keys.
struct TxnWriter {
    client: usize,
    domain: DomainId,
    /// The version of each of its keys as last seen (`None`: absent).
    versions: Vec<Option<Lsn>>,
    size: usize,
    budget: Arc<Budget>,
    counter: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
}

impl TxnWriter {
    async fn run(mut self, mut c: Conn) -> (Histogram, Errors, u64) {
        let (mut h, mut errors, mut ops) = (Histogram::default(), Errors::default(), 0u64);
        let mut n = 0u64;
        while self.budget.take() {
            let k = n % KEYS_PER_CLIENT;
            n += 1;
            let key = txn_key(self.client, k);
            let slot = k as usize;
            let condition = match self.versions[slot] {
                Some(version) => Condition::Version {
                    key: key.clone(),
                    version,
                },
                None => Condition::Absent { key: key.clone() },
            };
            let txn = Txn {
                domain: self.domain.clone(),
                conditions: vec![condition],
                ops: vec![Op::Put {
                    key,
                    value: value(self.size, (n % 251) as u8),
                }],
            };
            let t = Instant::now();
            match c.txn(txn).await {
                Ok(position) => {
                    h.record(t.elapsed());
                    ops += 1;
                    self.versions[slot] = Some(position.lsn);
                    self.counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(ClientError::App(AppError::Conflict { current, .. })) => {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.versions[slot] = current;
                }
                Err(e) => {
                    let gone = matches!(e, ClientError::Connect(_));
                    errors.add(e);
                    if gone {
                        break;
                    }
                }
            }
        }
        (h, errors, ops)
    }
}

/// The connection kind, for notes.
fn describe(t: &AppTarget) -> String {
    match t {
        AppTarget::Socket(_) => "the local application socket".to_owned(),
        AppTarget::Remote { nodes, .. } => {
            let n: Vec<String> = nodes.iter().map(|(id, a)| format!("{id}={a}")).collect();
            format!("QUIC to {}", n.join(","))
        }
    }
}
