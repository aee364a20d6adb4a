//! `bench lag` and `bench resync` (embedded cluster only: the standby is observed in process).
//!
//! - lag: an open-loop writer at `--rate` writes/s on the active (`Node::write`); for every
//!   write, the time from its return to the first standby position at or past its lsn.
//! - resync: the active is filled with `--size` bytes while one standby is down and wiped;
//!   the standby then comes back empty and is timed to full synchronization (snapshot).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_node::Node;
use domsync_proto::model::{DomainId, Op};
use domsync_testkit::rng::Rng;
use serde_json::json;

use super::stats::{CpuMeter, Progress};
use super::write::key;
use super::{BenchResult, Ctx, Outcome};

/// Hang guard of waits on replication progress.
const GUARD: Duration = Duration::from_secs(600);

fn put(key: Vec<u8>, size: usize, i: u64) -> Vec<Op> {
    vec![Op::Put {
        key,
        value: vec![(i % 251) as u8; size],
    }]
}

/// Runs `bench lag`.
pub async fn lag(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let cluster = ctx.embedded(&ctx.embedded_options()).await?;
    let a = cluster.active().ok_or("no active")?;
    let s = cluster.standby().ok_or("no standby")?;
    let node: Node = cluster.daemon(a).ok_or("active stopped")?.node().clone();
    let standby = cluster
        .daemon(s)
        .and_then(|d| d.node().replica(&cluster.domain))
        .ok_or("the standby does not hold the domain")?;
    o.params
        .insert("observed_on".into(), json!(cluster.node_id(s).to_string()));
    // Every position the standby shows, with when it showed it.
    let mut positions = standby.subscribe();
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
    let rate = ctx.args.rate;
    let size = usize::try_from(ctx.value_size())?;
    let keys = ctx.args.keys;
    let budget = ctx.budget(10.0);
    let progress = Progress::start(ctx.progress, "writes");
    let counter = progress.counter();
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut issued = 0u64;
    let mut writes = Vec::new();
    let mut rng = Rng::from_state(7);
    'load: loop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            if !budget.take() {
                break 'load;
            }
            let (node, domain, ops) = (
                node.clone(),
                ctx.domain.clone(),
                put(key(rng.next(), keys), size, issued),
            );
            let counter = Arc::clone(&counter);
            writes.push(tokio::spawn(async move {
                let r = node.write(&domain, ops).await;
                counter.fetch_add(1, Ordering::Relaxed);
                r.map(|p| (p.lsn.0, Instant::now()))
            }));
            issued += 1;
        }
    }
    let issuing = started.elapsed().as_secs_f64();
    let mut done = Vec::with_capacity(writes.len());
    for w in writes {
        match w.await? {
            Ok(d) => done.push(d),
            Err(e) => o.errors.add(e),
        }
    }
    let last = done.iter().map(|d| d.0).max().unwrap_or(0);
    let _ = last_tx.send(last);
    let seen = tokio::time::timeout(GUARD, watcher)
        .await
        .map_err(|_| "the standby did not catch up in time")??;
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    for (lsn, returned) in &done {
        let i = seen.partition_point(|(l, _)| l < lsn);
        match seen.get(i) {
            Some((_, arrived)) => {
                o.latency
                    .record(arrived.saturating_duration_since(*returned));
                o.ops += 1;
            }
            None => o.errors.add(format!("the standby never showed lsn {lsn}")),
        }
    }
    o.bytes = o.ops * ctx.value_size();
    let achieved = issued as f64 / issuing.max(f64::MIN_POSITIVE);
    o.params.insert("achieved_rate".into(), json!(achieved));
    if achieved < rate * 0.95 {
        o.notes.push(format!(
            "the generator issued {achieved:.0} writes/s, below the --rate {rate:.0}"
        ));
    }
    o.notes.push(
        "lag: from Node::write returning on the active to the standby's domain showing that lsn (applied and committed there); writes are issued in process, open loop".into(),
    );
    cluster.shutdown().await;
    Ok(o)
}

/// Runs `bench resync`.
pub async fn resync(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let mut options = ctx.embedded_options();
    // A small log: the fresh standby gets a snapshot, as a large domain would.
    options.retention_bytes = Some(4 << 20);
    let mut cluster = ctx.embedded(&options).await?;
    let a = cluster.active().ok_or("no active")?;
    let s = cluster.standby().ok_or("no standby")?;
    // Every standby down while the active is filled; the measured one comes back empty.
    for i in (0..cluster.len()).filter(|&i| i != a) {
        cluster.stop(i).await;
    }
    cluster.wipe(s).await?;
    let node = cluster.daemon(a).ok_or("active stopped")?.node().clone();
    let total = ctx.args.size;
    let chunk = total.clamp(1, 1 << 20);
    let count = total.div_ceil(chunk);
    if !ctx.args.json {
        eprintln!(
            "domsync-bench: filling the active with {count} values of {chunk} bytes ({:.1} MiB)",
            (count * chunk) as f64 / f64::from(1u32 << 20)
        );
    }
    let fill = Progress::start(ctx.progress, "values");
    let counter = fill.counter();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        while tasks.len() >= 4 {
            tasks.join_next().await.ok_or("no task")???;
        }
        let (node, domain, counter): (Node, DomainId, _) =
            (node.clone(), ctx.domain.clone(), Arc::clone(&counter));
        let size = usize::try_from(chunk)?;
        tasks.spawn(async move {
            let ops = put(format!("bench/blob-{i:08}").into_bytes(), size, i);
            node.write(&domain, ops).await?;
            counter.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    fill.finish();
    let bytes = count * chunk;
    let file = cluster.domain_file(a).ok_or("no domain file")?;
    let file_bytes = std::fs::metadata(&file)?.len();
    // Disk used by the active's replica: its database plus its log segments (preallocated
    // space included), against the live values plus the log records it retains.
    let log_dir = file.with_extension("log");
    let log_disk: u64 = std::fs::read_dir(&log_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let log_records = cluster
        .daemon(a)
        .and_then(|d| d.store().domain(&ctx.domain).ok())
        .and_then(|d| d.status().ok())
        .map_or(0, |st| st.log_bytes);
    let target = cluster.position(a).ok_or("no position")?.lsn;
    if !ctx.args.json {
        eprintln!("domsync-bench: filled; starting the empty standby");
    }
    let cpu = CpuMeter::start();
    let started = Instant::now();
    cluster.restart(s).await?;
    let deadline = started + GUARD;
    loop {
        let synced = cluster.daemon(s).is_some_and(|d| {
            d.node()
                .follower_status(&cluster.domain)
                .is_some_and(|f| f.status == domsync_proto::repl::SyncStatus::Synchronized)
        }) && cluster.position(s).is_some_and(|p| p.lsn >= target);
        if synced {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the standby did not synchronize within {GUARD:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = started.elapsed();
    o.cpu_percent = cpu.percent();
    o.seconds = took.as_secs_f64();
    o.ops = 1;
    o.bytes = bytes;
    o.latency.record(took);
    o.resync = Some((bytes, file_bytes));
    o.params.insert("lsn".into(), json!(target.0));
    o.params.insert("active_db_bytes".into(), json!(file_bytes));
    o.params
        .insert("active_log_disk_bytes".into(), json!(log_disk));
    o.params
        .insert("active_log_record_bytes".into(), json!(log_records));
    o.notes.push(format!(
        "disk on the active: database {file_bytes} + log segments {log_disk} bytes = {:.2}x the live values ({bytes}) plus the log records it retains ({log_records})",
        (file_bytes + log_disk) as f64 / (bytes + log_records).max(1) as f64
    ));
    if let Some(f) = cluster.domain_file(s) {
        if let Ok(m) = std::fs::metadata(f) {
            o.notes
                .push(format!("the standby's domain file: {} bytes", m.len()));
        }
    }
    o.notes.push(format!(
        "time from starting the empty standby's daemon to Synchronized at lsn {}; bytes_per_sec is the domain's value bytes over that time",
        target.0
    ));
    cluster.shutdown().await;
    Ok(o)
}
