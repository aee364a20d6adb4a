//! `bench failover` and `bench switchover` (embedded cluster only: nodes are stopped and
//! roles moved), both through the admin API as an operator would drive them.
//!
//! - failover: per run a fresh cluster; the active is stopped, and after the promotion
//!   guard's window a standby is promoted (not forced); timed from sending `Promote` to the
//!   first write it accepts.
//! - switchover: `--concurrency` writers keep writing (following `NotActive` hints to the new
//!   active) while the active role moves to the next node, `--runs` times on one cluster;
//!   per run the longest wait of any one write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_proto::admin::{AdminError, Answer, Request};
use domsync_proto::model::{DomainId, NodeId, Op};
use serde_json::json;

use super::stats::{CpuMeter, Errors, Histogram, Progress};
use super::target::{self, Embedded};
use super::write::key;
use super::{BenchResult, Ctx, Outcome};
use domsync_client::admin::{Session, Target};
use domsync_testkit::rng::Rng;

/// The promotion guard window of the failover cluster.
const GUARD_WINDOW: Duration = Duration::from_millis(200);

/// How long a run may take before it counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn put(i: u64, keys: u64, size: usize) -> Vec<Op> {
    vec![Op::Put {
        key: key(i, keys),
        value: vec![0x3Cu8; size],
    }]
}

/// One failover: stop the active, promote a standby, write once. Returns the time from
/// `Promote` sent to the write accepted.
async fn failover_run(ctx: &Ctx, run: usize) -> BenchResult<Duration> {
    let mut options = ctx.embedded_options();
    options.guard_window = GUARD_WINDOW;
    options.dir = options.dir.map(|d| d.join(format!("run-{run}")));
    let mut cluster = Embedded::start(&ctx.domain, &options).await?;
    let result = async {
        let a = cluster.active().ok_or("no active")?;
        let node = cluster.daemon(a).ok_or("active stopped")?.node().clone();
        let size = usize::try_from(ctx.value_size())?;
        for i in 0..100 {
            node.write(&cluster.domain, put(i, ctx.args.keys, size))
                .await?;
        }
        cluster.converge().await?;
        let s = cluster.standby().ok_or("no standby")?;
        let mut session = target::connect(&cluster.admin(s)).await?;
        cluster.stop(a).await;
        // Past the guard window, the other standbys no longer count the old active as alive.
        tokio::time::sleep(GUARD_WINDOW + Duration::from_millis(100)).await;
        let started = Instant::now();
        let req = Request::Promote {
            domain: ctx.domain.clone(),
            force: false,
        };
        match session.call(&req).await? {
            Answer::Promoted { .. } => {}
            Answer::Error(e) => return Err(format!("promote refused: {e}").into()),
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
        loop {
            match target::write(&mut session, &ctx.domain, put(7, ctx.args.keys, size)).await? {
                Ok(_) => break,
                Err(e) if started.elapsed() > RUN_TIMEOUT => {
                    return Err(format!("no write accepted after the promotion: {e}").into())
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let took = started.elapsed();
        session.close().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(took)
    }
    .await;
    cluster.shutdown().await;
    result
}

/// Runs `bench failover`.
pub async fn failover(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    if !ctx.args.json {
        eprintln!(
            "domsync-bench: {} failover runs, each on a fresh embedded cluster of {} nodes",
            ctx.args.runs,
            ctx.nodes()
        );
    }
    let progress = Progress::start(ctx.progress, "runs");
    let counter = progress.counter();
    let cpu = CpuMeter::start();
    let started = Instant::now();
    for run in 0..ctx.args.runs {
        match failover_run(ctx, run).await {
            Ok(d) => {
                o.latency.record(d);
                o.ops += 1;
            }
            Err(e) => o.errors.add(e),
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.params
        .insert("guard_window_ms".into(), json!(GUARD_WINDOW.as_millis()));
    o.notes.push(
        "latency: Promote sent over the standby's admin socket (guard probe of the peers included, not forced) to its first accepted write; seconds include starting a fresh cluster per run".into(),
    );
    Ok(o)
}

/// A writer following the active across switchovers.
struct Writer {
    /// Every node's id and admin socket.
    nodes: Vec<(NodeId, Target)>,
    domain: DomainId,
    keys: u64,
    size: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    worst: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
}

impl Writer {
    async fn run(self, mut at: usize) -> (Histogram, Errors, u64) {
        let (mut h, mut errors, mut ops) = (Histogram::default(), Errors::default(), 0u64);
        let mut rng = Rng::from_state(self.seed);
        let mut session: Option<Session> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let ops_of = put(rng.next(), self.keys, self.size);
            // One write, retried on the active named by each NotActive, until it lands.
            loop {
                if self.stop.load(Ordering::Relaxed) && started.elapsed() > RUN_TIMEOUT {
                    break;
                }
                let s = match session.as_mut() {
                    Some(s) => s,
                    None => match target::connect(&self.nodes[at].1).await {
                        Ok(s) => session.insert(s),
                        Err(e) => {
                            errors.add(e);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                    },
                };
                match target::write(s, &self.domain, ops_of.clone()).await {
                    Ok(Ok(_)) => {
                        let took = started.elapsed();
                        h.record(took);
                        ops += 1;
                        self.counter.fetch_add(1, Ordering::Relaxed);
                        self.worst.fetch_max(
                            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        break;
                    }
                    Ok(Err(AdminError::NotActive { active, .. })) => {
                        let next =
                            active.and_then(|a| self.nodes.iter().position(|(id, _)| *id == a));
                        if let Some(n) = next.filter(|n| *n != at) {
                            at = n;
                            if let Some(old) = session.take() {
                                old.close().await;
                            }
                        } else {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok(Err(e)) => {
                        errors.add(e);
                        break;
                    }
                    Err(e) => {
                        errors.add(e);
                        session = None;
                    }
                }
            }
        }
        if let Some(s) = session {
            s.close().await;
        }
        (h, errors, ops)
    }
}

/// Runs `bench switchover`.
pub async fn switchover(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let cluster = ctx.embedded(&ctx.embedded_options()).await?;
    let nodes: Vec<(NodeId, Target)> = (0..cluster.len())
        .map(|i| (cluster.node_id(i), cluster.admin(i)))
        .collect();
    let first = cluster.active().ok_or("no active")?;
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(ctx.progress, "writes");
    let size = usize::try_from(ctx.value_size())?;
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let writers: Vec<_> = (0..ctx.concurrency())
        .map(|i| {
            let w = Writer {
                nodes: nodes.clone(),
                domain: ctx.domain.clone(),
                keys: ctx.args.keys,
                size,
                seed: i as u64 + 1,
                stop: Arc::clone(&stop),
                worst: Arc::clone(&worst),
                counter: progress.counter(),
            };
            tokio::spawn(w.run(first))
        })
        .collect();
    let mut handovers = Histogram::default();
    for _ in 0..ctx.args.runs {
        let result = async {
            let from = cluster.active().ok_or("no active")?;
            let to = (from + 1) % cluster.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
            worst.store(0, Ordering::Relaxed);
            let mut s = target::connect(&nodes[from].1).await?;
            let req = Request::Switchover {
                domain: ctx.domain.clone(),
                to: cluster.node_id(to),
            };
            let answer = s.call(&req).await?;
            s.close().await;
            let pause_ms = match answer {
                Answer::SwitchedOver { pause_ms, .. } => pause_ms,
                Answer::Error(e) => return Err(format!("switchover refused: {e}").into()),
                other => return Err(format!("unexpected answer {other:?}").into()),
            };
            // Writers still waiting find the new active; their waits end within this.
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.converge().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(pause_ms)
        }
        .await;
        match result {
            Ok(pause_ms) => {
                o.latency
                    .record(Duration::from_nanos(worst.swap(0, Ordering::Relaxed)));
                handovers.record(Duration::from_millis(pause_ms));
                o.ops += 1;
            }
            Err(e) => o.errors.add(e),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = Histogram::default();
    let mut writes_done = 0;
    for w in writers {
        let (h, e, n) = w.await?;
        writes.merge(&h);
        o.errors.merge(e);
        writes_done += n;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.bytes = writes_done * ctx.value_size();
    let (w, h) = (writes.summary(), handovers.summary());
    o.params.insert("writes".into(), json!(writes_done));
    o.notes.push(format!(
        "latency: per run, the longest wait of one write (retries across the hand-over included) from 200 ms before the switchover to 200 ms after; ops = switchovers; {writes_done} writes by {} writers (p50 {:.2} ms, p99 {:.2} ms)",
        ctx.concurrency(),
        w.p50,
        w.p99
    ));
    o.notes.push(format!(
        "hand-over pause reported by the daemon (writes refused): p50 {:.1} ms, max {:.1} ms",
        h.p50, h.max
    ));
    cluster.shutdown().await;
    Ok(o)
}
