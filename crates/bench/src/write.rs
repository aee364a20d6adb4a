//! `bench write`: closed-loop writers through the admin API of the domain's active, each
//! client on its own connection (Unix socket or QUIC), one `Put` of `--value-size` bytes per
//! write over `--keys` keys.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use domsync_proto::model::{DomainId, Op};
use serde_json::json;

use super::stats::{CpuMeter, Errors, Histogram, Progress};
use super::target::{self, durability_name};
use super::{BenchResult, Budget, Ctx, Outcome};
use domsync_client::admin::{Session, Target};
use domsync_testkit::rng::Rng;

/// The key of write number `n` of a `keys`-key space.
pub fn key(n: u64, keys: u64) -> Vec<u8> {
    format!("bench/key-{:010}", n % keys).into_bytes()
}

/// Opens `n` admin sessions to `target`.
pub async fn sessions(target: &Target, n: usize) -> BenchResult<Vec<Session>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(target::connect(target).await?);
    }
    Ok(out)
}

/// What one writer did.
struct Tally {
    latency: Histogram,
    errors: Errors,
    ops: u64,
}

/// One closed-loop writer: its connection and what it writes.
struct Writer {
    target: Target,
    domain: DomainId,
    seed: u64,
    value_size: usize,
    keys: u64,
    budget: Arc<Budget>,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

/// Writes until the budget is spent.
async fn writer(mut s: Session, w: Writer) -> Tally {
    let Writer {
        target,
        domain,
        seed,
        value_size,
        keys,
        budget,
        counter,
    } = w;
    let mut rng = Rng::from_state(seed);
    let value = vec![0xA5u8; value_size];
    let mut t = Tally {
        latency: Histogram::default(),
        errors: Errors::default(),
        ops: 0,
    };
    while budget.take() {
        let ops = vec![Op::Put {
            key: key(rng.next(), keys),
            value: value.clone(),
        }];
        let started = Instant::now();
        match target::write(&mut s, &domain, ops).await {
            Ok(Ok(_)) => {
                t.latency.record(started.elapsed());
                t.ops += 1;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => t.errors.add(e),
            Err(e) => {
                t.errors.add(&e);
                // The connection is gone: one new one, else this client stops.
                match target::connect(&target).await {
                    Ok(n) => s = n,
                    Err(e) => {
                        t.errors.add(e);
                        break;
                    }
                }
            }
        }
    }
    s.close().await;
    t
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let (admin, cluster) = match &ctx.admin {
        Some(t) => (t.clone(), None),
        None if ctx.running() => {
            return Err("bench write on a running cluster needs the domain's active: --socket PATH, or --remote ID=ADDR --admin-pki DIR --admin-id ID".into())
        }
        None => {
            let c = ctx.embedded(&ctx.embedded_options()).await?;
            let a = c.active().ok_or("no active in the embedded cluster")?;
            (c.admin(a), Some(c))
        }
    };
    let node = target::check_active(&admin, &ctx.domain).await?;
    if ctx.running() {
        o.params.insert("durability".into(), json!("configured"));
        o.notes.push(format!(
            "the domain's durability is the one configured on the cluster (the admin API does not report it); writes go to node {node}"
        ));
    } else {
        o.notes.push(format!(
            "durability {} on {} node(s)",
            durability_name(ctx.args.durability.into()),
            ctx.nodes()
        ));
    }
    let n = ctx.concurrency();
    let conns = sessions(&admin, n).await?;
    let value_size = usize::try_from(ctx.value_size())?;
    let budget = Arc::new(ctx.budget(10.0));
    let progress = Progress::start(ctx.progress, "writes");
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let w = Writer {
                target: admin.clone(),
                domain: ctx.domain.clone(),
                seed: i as u64 + 1,
                value_size,
                keys: ctx.args.keys,
                budget: Arc::clone(&budget),
                counter: progress.counter(),
            };
            tokio::spawn(writer(s, w))
        })
        .collect();
    for t in tasks {
        let t = t.await?;
        o.latency.merge(&t.latency);
        o.errors.merge(t.errors);
        o.ops += t.ops;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.bytes = o.ops * ctx.value_size();
    if let Some(c) = cluster {
        c.shutdown().await;
    }
    Ok(o)
}
