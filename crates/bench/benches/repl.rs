//! Replication cost on loopback: an active and one standby node in this process, each with its
//! own store in a temporary directory on disk (every commit is a real fsync), talking real
//! QUIC with mutual TLS over 127.0.0.1.
//!
//! 1. `repl_commit/{local,standby}/{100B,4KiB}`: commits per second of 64 concurrent writer
//!    tasks, with `Durability::Local` (acknowledged once durable on the active) and
//!    `Durability::Standby` (acknowledged once durable on the standby too). The ratio
//!    standby/local is printed per value size.
//! 2. Commit-to-applied lag: an open-loop writer paced at half the local throughput measured
//!    in (1) (`Durability::Local`); for every write, the time from its return on the active to
//!    the first position of the standby's domain at or past its lsn. p50/p99 are printed in a
//!    labeled block (criterion does not fit an open-loop measurement). "Half the local
//!    throughput" is half the mean rate of the measured samples of `repl_commit/local/<size>`.
//! 3. Diagnostics, printed after: the latency of one sequential write in each mode (what the
//!    standby round trip adds), and how many commits the standby's apply path
//!    (`Domain::apply_batch_async`, one call per `Records` message) costs per batch size.
//!
//! `cargo bench --bench repl`. Knobs for investigation (environment): `REPL_BENCH_TICK_MS`,
//! `REPL_BENCH_BATCH_RECORDS`, `REPL_BENCH_WINDOW_RECORDS`, `REPL_BENCH_LAG_SECS`,
//! `REPL_BENCH_LAG_RATE_100B`, `REPL_BENCH_LAG_RATE_4KIB` (writes/s).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use domsync_node::{ActiveConfig, Node, NodeConfig};
use domsync_proto::model::{DomainId, Lsn, Op};
use domsync_proto::repl::Durability;
use domsync_store::{Domain, Store};
use domsync_testkit::cluster::{nid, replicated, Deployment};
use tokio::runtime::Runtime;

/// Concurrent writer tasks of the throughput measurement.
const WRITERS: u64 = 64;
/// Writes each writer task does per criterion iteration.
const WRITES_PER_TASK: u64 = 4;
/// Distinct keys written (bounds the size of the key-value table).
const KEYSPACE: u64 = 8192;
/// Criterion samples per benchmark (the last this many `iter_custom` calls are the samples).
const SAMPLES: usize = 10;
const SIZES: [(&str, usize); 2] = [("100B", 100), ("4KiB", 4096)];
/// Hang guard for waits on replication progress (never a timing assertion).
const GUARD: Duration = Duration::from_secs(120);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn dom() -> DomainId {
    "bench".parse().expect("domain id")
}

fn put(i: u64, value_len: usize) -> Vec<Op> {
    vec![Op::Put {
        key: format!("key-{:06}", i % KEYSPACE).into_bytes(),
        value: vec![(i % 251) as u8; value_len],
    }]
}

/// An active node `a` serving the domain and a standby node `b` following it.
struct Cluster {
    a: Node,
    b: Node,
    active: Domain,
    standby: Domain,
    // Dropped last: the stores live in it.
    _stores: (Store, Store),
    _dir: tempfile::TempDir,
}

/// The node settings the environment asks for (tick, batch, window); the node's defaults
/// otherwise.
fn tune(config: &mut NodeConfig) {
    if let Some(ms) = env_u64("REPL_BENCH_TICK_MS") {
        config.tick = Duration::from_millis(ms);
    }
    if let Some(n) = env_u64("REPL_BENCH_BATCH_RECORDS") {
        config.ship.batch_records = usize::try_from(n).expect("batch records");
    }
    if let Some(n) = env_u64("REPL_BENCH_WINDOW_RECORDS") {
        config.ship.window_records = n;
    }
}

impl Cluster {
    /// Starts both nodes and waits until the standby holds a first write.
    async fn start(durability: Durability) -> Cluster {
        // The normal temporary directory, on disk: durability is a real fsync.
        let dir = tempfile::tempdir().expect("tempdir");
        let deployment = Deployment::nodes(dir.path(), &["a", "b"]);
        let config = ActiveConfig::new(durability, vec![nid("b")]);
        let mut c = replicated(&deployment, &dom(), "a", &["b"], config, |n, _| tune(n));
        let (b, a) = (c.nodes.remove(1), c.nodes.remove(0));
        let (active, standby) = (c.active, c.standbys.remove(0));
        let cluster = Cluster {
            a: a.node,
            b: b.node,
            active,
            standby,
            _stores: (a.store, b.store),
            _dir: dir,
        };
        let first = cluster
            .a
            .write(&dom(), put(u64::MAX, 8))
            .await
            .expect("first write");
        cluster.reach(first.lsn).await;
        cluster
    }

    /// Waits until the standby holds `lsn`; returns how long that took.
    async fn reach(&self, lsn: Lsn) -> Duration {
        let start = Instant::now();
        let mut positions = self.standby.subscribe();
        tokio::time::timeout(GUARD, positions.wait_for(|p| p.lsn >= lsn))
            .await
            .expect("the standby did not catch up in time")
            .expect("standby domain closed");
        start.elapsed()
    }

    async fn stop(self) {
        self.b.shutdown().await;
        self.a.shutdown().await;
    }
}

fn mode_name(d: Durability) -> &'static str {
    match d {
        Durability::Local => "local",
        Durability::Standby => "standby",
        Durability::All => "all",
    }
}

/// 64 writer tasks each doing `per_task` writes; the time until all returned.
async fn run_writers(node: &Node, value_len: usize, per_task: u64, next: &mut u64) -> Duration {
    let base = *next;
    *next += WRITERS * per_task;
    let start = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|t| {
            let node = node.clone();
            tokio::spawn(async move {
                let domain = dom();
                for w in 0..per_task {
                    let i = base + t * per_task + w;
                    black_box(node.write(&domain, put(i, value_len)).await.expect("write"));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer task");
    }
    start.elapsed()
}

/// Commits per second of the measured samples: total writes over total time.
fn rate(samples: &[(u64, Duration)]) -> f64 {
    let tail = &samples[samples.len().saturating_sub(SAMPLES)..];
    let writes: u64 = tail
        .iter()
        .map(|(iters, _)| iters * WRITERS * WRITES_PER_TASK)
        .sum();
    let secs: f64 = tail.iter().map(|(_, d)| d.as_secs_f64()).sum();
    writes as f64 / secs.max(f64::MIN_POSITIVE)
}

/// Part 1. Returns the measured commits/s per `(mode, size label)`.
fn commit_throughput(
    c: &mut Criterion,
    rt: &Runtime,
) -> BTreeMap<(&'static str, &'static str), f64> {
    let mut rates = BTreeMap::new();
    let mut group = c.benchmark_group("repl_commit");
    group.sample_size(SAMPLES);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(WRITERS * WRITES_PER_TASK));
    for (label, value_len) in SIZES {
        for durability in [Durability::Local, Durability::Standby] {
            let mode = mode_name(durability);
            let cluster = rt.block_on(Cluster::start(durability));
            let samples = Arc::new(Mutex::new(Vec::new()));
            let mut next = 0u64;
            group.bench_function(BenchmarkId::new(mode, label), |b| {
                b.iter_custom(|iters| {
                    let d = rt.block_on(run_writers(
                        &cluster.a,
                        value_len,
                        iters * WRITES_PER_TASK,
                        &mut next,
                    ));
                    samples.lock().expect("samples").push((iters, d));
                    d
                });
            });
            let samples = samples.lock().expect("samples").clone();
            if samples.is_empty() {
                rt.block_on(cluster.stop());
                continue;
            }
            let r = rate(&samples);
            rates.insert((mode, label), r);
            let end = cluster.active.status().expect("status").position.lsn;
            let catch_up = rt.block_on(cluster.reach(end));
            let (sa, sb) = (cluster.active.stats(), cluster.standby.stats());
            eprintln!(
                "repl_commit/{mode}/{label}: {r:.0} commits/s; records/commit over the whole run: \
                 active {:.1}, standby {:.1}; standby caught up {:.1} ms after the last write",
                sa.records as f64 / sa.commits.max(1) as f64,
                sb.records as f64 / sb.commits.max(1) as f64,
                catch_up.as_secs_f64() * 1e3,
            );
            rt.block_on(cluster.stop());
        }
    }
    group.finish();
    rates
}

struct Lag {
    writes: usize,
    achieved: f64,
    lag_p50: f64,
    lag_p99: f64,
    lag_max: f64,
    commit_p50: f64,
    commit_p99: f64,
    active_per_commit: f64,
    standby_per_commit: f64,
}

/// Nearest-rank percentile (ms) of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

/// Part 2: an open-loop writer at `rate` writes/s for `secs` (after a 0.5 s warm-up that is
/// not counted), `Durability::Local`.
async fn commit_lag(value_len: usize, rate: f64, secs: f64) -> Lag {
    let cluster = Cluster::start(Durability::Local).await;
    // The standby's side: every position its domain shows, with when it showed it.
    let mut positions = cluster.standby.subscribe();
    // It stops once it has seen the last lsn it is told about.
    let (last_tx, mut last_rx) = tokio::sync::oneshot::channel::<u64>();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(u64, Instant)> = Vec::with_capacity(1 << 16);
        let mut last = None;
        loop {
            let top = seen.last().map_or(0, |s| s.0);
            if last.is_some_and(|l| top >= l) {
                break;
            }
            tokio::select! {
                r = positions.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let lsn = positions.borrow_and_update().lsn.0;
                    seen.push((lsn, Instant::now()));
                }
                l = &mut last_rx, if last.is_none() => last = Some(l.unwrap_or(0)),
            }
        }
        seen
    });
    let warm_up = Duration::from_millis(500);
    let total = warm_up + Duration::from_secs_f64(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let mut issued = 0u64;
    let mut writes = Vec::new();
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        // Writes due by now, spread over the ticks.
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while issued < due {
            let node = cluster.a.clone();
            let i = issued;
            let counted = elapsed >= warm_up;
            writes.push(tokio::spawn(async move {
                let sent = Instant::now();
                let p = node.write(&dom(), put(i, value_len)).await.expect("write");
                (counted, p.lsn.0, sent, Instant::now())
            }));
            issued += 1;
        }
    }
    let mut done = Vec::with_capacity(writes.len());
    for w in writes {
        done.push(w.await.expect("write task"));
    }
    let last = done.iter().map(|d| d.1).max().unwrap_or(0);
    cluster.reach(Lsn(last)).await;
    last_tx.send(last).expect("watcher");
    let seen = watcher.await.expect("watcher");
    let mut lags = Vec::new();
    let mut commits = Vec::new();
    for &(counted, lsn, sent, returned) in &done {
        if !counted {
            continue;
        }
        let i = seen.partition_point(|(l, _)| *l < lsn);
        let arrived = seen.get(i).expect("the standby reached every lsn").1;
        lags.push(arrived.saturating_duration_since(returned));
        commits.push(returned - sent);
    }
    lags.sort();
    commits.sort();
    let (sa, sb) = (cluster.active.stats(), cluster.standby.stats());
    let lag = Lag {
        writes: lags.len(),
        achieved: lags.len() as f64 / secs,
        lag_p50: pct(&lags, 50.0),
        lag_p99: pct(&lags, 99.0),
        lag_max: pct(&lags, 100.0),
        commit_p50: pct(&commits, 50.0),
        commit_p99: pct(&commits, 99.0),
        active_per_commit: sa.records as f64 / sa.commits.max(1) as f64,
        standby_per_commit: sb.records as f64 / sb.commits.max(1) as f64,
    };
    cluster.stop().await;
    lag
}

/// Diagnostic of the standby's apply path: `Domain::apply_batch_async` of `k` records
/// at a time, as the standby's stream does for one `Records` message, on a replica that no
/// longer follows (so nothing else writes to it). Prints the commits (each a durable redb
/// transaction) per call: 1.0 means one message costs one commit.
async fn apply_batches(value_len: usize, label: &str) {
    let cluster = Cluster::start(Durability::Local).await;
    cluster.b.unfollow(&dom());
    let sizes = [1usize, 4, 16, 64, 256];
    let per_size = 512u64;
    let total = per_size * sizes.len() as u64;
    let mut i = 0u64;
    while i < total {
        let chunk: Vec<_> = (i..(i + WRITERS).min(total))
            .map(|j| {
                let node = cluster.a.clone();
                tokio::spawn(async move { node.write(&dom(), put(j, value_len)).await })
            })
            .collect();
        for w in chunk {
            w.await.expect("writer task").expect("write");
        }
        i += WRITERS;
    }
    let mut from = cluster
        .standby
        .status()
        .expect("status")
        .position
        .lsn
        .next();
    for k in sizes {
        let before = cluster.standby.stats();
        let start = Instant::now();
        let mut calls = 0u64;
        let end = from.0 + per_size;
        while from.0 < end {
            let records: Vec<Vec<u8>> = cluster
                .active
                .read_log(from, k, 1 << 24)
                .expect("read log")
                .into_iter()
                .map(|e| e.bytes)
                .collect();
            from = Lsn(from.0 + records.len() as u64);
            black_box(
                cluster
                    .standby
                    .apply_batch_async(records)
                    .await
                    .expect("apply"),
            );
            calls += 1;
        }
        let elapsed = start.elapsed();
        let after = cluster.standby.stats();
        let commits = after.commits - before.commits;
        println!(
            "{label:>5}: {k:>3} records/call: {:.2} commits/call, {:.2} ms/call, {:>6.0} records/s",
            commits as f64 / calls as f64,
            elapsed.as_secs_f64() * 1e3 / calls as f64,
            (after.records - before.records) as f64 / elapsed.as_secs_f64(),
        );
    }
    cluster.stop().await;
}

/// Diagnostic of the round trip: one writer, one write at a time; p50/p99 of a write
/// in `durability`. Standby minus local is what the hop to the standby and back adds to a
/// write (one standby commit of one record plus the shipping and acknowledgement path).
async fn sequential_latency(durability: Durability, value_len: usize) -> (f64, f64) {
    let cluster = Cluster::start(durability).await;
    let mut latencies = Vec::with_capacity(400);
    for i in 0..400u64 {
        let start = Instant::now();
        black_box(
            cluster
                .a
                .write(&dom(), put(i, value_len))
                .await
                .expect("write"),
        );
        latencies.push(start.elapsed());
    }
    cluster.stop().await;
    latencies.sort();
    (pct(&latencies, 50.0), pct(&latencies, 99.0))
}

fn main() {
    // Without `--bench` (cargo test --benches), criterion runs each benchmark once: keep the
    // lag part as short.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut c = Criterion::default().configure_from_args();
    let rates = commit_throughput(&mut c, &rt);

    if !rates.is_empty() {
        println!("\n=== repl: commits/s, 64 writers, active + 1 standby, fsync on both ===");
        for (label, _) in SIZES {
            let local = rates.get(&("local", label));
            let standby = rates.get(&("standby", label));
            if let (Some(l), Some(s)) = (local, standby) {
                println!(
                    "{label:>5}: local {l:>8.0}/s  standby {s:>8.0}/s  standby/local {:>5.1}% \
                     (target >= 70%)",
                    100.0 * s / l
                );
            }
        }
    }

    let secs =
        env_u64("REPL_BENCH_LAG_SECS").map_or(if bench_mode { 4.0 } else { 0.5 }, |s| s as f64);
    println!(
        "\n=== repl: commit-to-applied lag on the standby (Durability::Local, open loop, \
         {secs:.1} s) ==="
    );
    for (label, value_len) in SIZES {
        // Half the local throughput of part 1, unless given (or part 1 was filtered out).
        let given = env_u64(&format!("REPL_BENCH_LAG_RATE_{}", label.to_uppercase()));
        let target = match (given, rates.get(&("local", label))) {
            (Some(r), _) => r as f64,
            (None, Some(r)) if bench_mode => r / 2.0,
            (None, _) => 200.0,
        };
        let lag = rt.block_on(commit_lag(value_len, target, secs));
        println!(
            "{label:>5}: target {target:>6.0}/s achieved {:>6.0}/s ({} writes)  lag p50 {:.2} ms \
             p99 {:.2} ms max {:.2} ms (target p99 < 5 ms)  | active commit p50 {:.2} ms p99 \
             {:.2} ms | records/commit active {:.1} standby {:.1}",
            lag.achieved,
            lag.writes,
            lag.lag_p50,
            lag.lag_p99,
            lag.lag_max,
            lag.commit_p50,
            lag.commit_p99,
            lag.active_per_commit,
            lag.standby_per_commit,
        );
    }

    println!("\n=== repl (diagnostic): one writer, sequential writes, latency per write ===");
    for (label, value_len) in SIZES {
        let (l50, l99) = rt.block_on(sequential_latency(Durability::Local, value_len));
        let (s50, s99) = rt.block_on(sequential_latency(Durability::Standby, value_len));
        println!(
            "{label:>5}: local p50 {l50:.2} ms p99 {l99:.2} ms | standby p50 {s50:.2} ms p99 \
             {s99:.2} ms | added by the standby p50 {:.2} ms",
            s50 - l50
        );
    }
    println!(
        "\n=== repl (diagnostic): standby apply path, Domain::apply_batch_async of k records ==="
    );
    for (label, value_len) in SIZES {
        rt.block_on(apply_batches(value_len, label));
    }
    println!();
    c.final_summary();
}
