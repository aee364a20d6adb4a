//! `bench install`, and `bench lag` / `bench resync` against a running pair: the domain's
//! active reached through its admin socket (`--socket`) and one standby observed through its
//! own admin socket (`--standby-socket`), e.g. two domsyncd processes in two network
//! namespaces (benches/wan.sh). Admin sockets are files, so one bench process reaches both
//! whatever network namespace each daemon runs in.
//!
//! The standby's applied position is read from its status (`ReplicaState::position`), polled
//! every [`POLL`]: a figure taken this way is late by up to one poll interval (plus one status
//! round trip on the local socket, well under a millisecond).
//!
//! - install: `--runs` policy packages of `--value-size` bytes installed on the active, each
//!   timed from the start of the install to the standby's applied position reaching its lsn.
//! - lag: an open-loop writer at `--rate` writes/s through `--concurrency` admin sessions; for
//!   every write, the time from its return to the standby showing a position at or past its
//!   lsn: pushed to a watch on the standby's application socket when `--app-socket` names it
//!   (no polling delay), else its polled status.
//! - resync: with the standby stopped and its state removed (the caller's part), the active is
//!   filled with `--size` bytes; then `--go-file` is created (the caller starts the empty
//!   standby when it appears) and the time runs until the standby reports Synchronized at the
//!   active's last lsn.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_client::admin::{Session, Target};
use domsync_proto::admin::{Answer, Request};
use domsync_proto::model::{DomainId, Op, Position};
use domsync_proto::repl::SyncStatus;
use domsync_testkit::rng::Rng;
use serde_json::json;

use super::stats::{CpuMeter, Progress};
use super::target::{self, check_active};
use super::write::key;
use super::{BenchResult, Ctx, Outcome};

/// How often the standby's status is polled.
pub const POLL: Duration = Duration::from_millis(1);
/// Hang guard of every wait on the standby (a 1 GiB resync over a slow link included).
const GUARD: Duration = Duration::from_secs(3600);

/// True when `--standby-socket` names a running standby to observe.
pub fn wanted(ctx: &Ctx) -> bool {
    ctx.args.standby_socket.is_some()
}

/// The standby, seen through its admin socket.
struct Standby {
    session: Session,
    domain: DomainId,
    target: Target,
}

impl Standby {
    /// Opens the standby's admin socket named by `--standby-socket`.
    async fn open(ctx: &Ctx) -> BenchResult<Standby> {
        let path = ctx
            .args
            .standby_socket
            .clone()
            .ok_or("this scenario needs --standby-socket PATH (the standby's admin socket)")?;
        let target = Target::Socket(path);
        Ok(Standby {
            session: target::connect(&target).await?,
            domain: ctx.domain.clone(),
            target,
        })
    }

    /// The standby's applied position and sync status of the domain (`None` while the domain
    /// is not open there).
    async fn state(&mut self) -> BenchResult<(Option<Position>, Option<SyncStatus>)> {
        let answer = self.session.call(&Request::Status).await?;
        let Answer::Status(status) = answer else {
            return Err(format!("{}: unexpected answer {answer:?}", self.target).into());
        };
        let Some(d) = status.domains.iter().find(|d| d.domain == self.domain) else {
            return Err(format!(
                "domain {} is not configured on the standby {} ({}): give both daemons the same [[domains]]",
                self.domain, status.node, self.target
            )
            .into());
        };
        Ok((
            d.replica.as_ref().map(|r| r.position.clone()),
            d.follower.as_ref().map(|f| f.status.clone()),
        ))
    }

    /// Polls until the standby's applied lsn reaches `lsn` (and, with `synced`, it reports
    /// Synchronized); returns when it was seen.
    async fn reach(&mut self, lsn: u64, synced: bool, within: Duration) -> BenchResult<Instant> {
        let deadline = Instant::now() + within;
        loop {
            let (p, s) = self.state().await?;
            let now = Instant::now();
            if p.as_ref().is_some_and(|p| p.lsn.0 >= lsn)
                && (!synced || s == Some(SyncStatus::Synchronized))
            {
                return Ok(now);
            }
            if now > deadline {
                return Err(format!(
                    "the standby ({}) did not reach lsn {lsn} within {within:?}; it stands at {p:?} (its log says why)",
                    self.target
                )
                .into());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The admin target of the active, checked to hold the domain as active.
async fn active(ctx: &Ctx) -> BenchResult<Target> {
    let t = ctx.admin.clone().ok_or(
        "this scenario needs --socket PATH (the active's admin socket) with --standby-socket",
    )?;
    check_active(&t, &ctx.domain).await?;
    Ok(t)
}

/// Runs `bench install`.
pub async fn install(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let active = active(ctx).await?;
    let mut standby = Standby::open(ctx).await?;
    let mut s = target::connect(&active).await?;
    let size = usize::try_from(ctx.value_size())?;
    let mut rng = Rng::from_state(11);
    // Varied bytes, so nothing on the way can shrink the package.
    let mut content = Vec::with_capacity(size);
    while content.len() < size {
        content.extend_from_slice(&rng.next().to_le_bytes());
    }
    content.truncate(size);
    // Per package: --duration seconds at most (default 300).
    let wait = Duration::from_secs_f64(ctx.args.duration.unwrap_or(300.0));
    let cpu = CpuMeter::start();
    let mut committed = super::stats::Histogram::default();
    let started = Instant::now();
    for run in 0..ctx.args.runs {
        // Each package differs from the one before it.
        if let Some(first) = content.first_mut() {
            *first = run as u8;
        }
        let name = ctx
            .args
            .package
            .clone()
            .unwrap_or_else(|| format!("bench-{size}"));
        let ops = vec![Op::InstallPolicy {
            name,
            content: content.clone(),
        }];
        let t0 = Instant::now();
        let position = match target::write(&mut s, &ctx.domain, ops).await? {
            Ok(p) => p,
            Err(e) => {
                o.errors.add(e);
                continue;
            }
        };
        committed.record(t0.elapsed());
        let seen = match standby.reach(position.lsn.0, false, wait).await {
            Ok(t) => t,
            Err(e) => {
                // The next package would wait behind this one: stop here.
                o.errors.add(e);
                break;
            }
        };
        o.latency.record(seen.saturating_duration_since(t0));
        o.ops += 1;
        o.bytes += size as u64;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    s.close().await;
    let c = committed.summary();
    o.params
        .insert("committed_on_active_p50_ms".into(), json!(c.p50));
    o.notes.push(format!(
        "each run: from the start of the install (admin write of one {size}-byte package) to the standby's applied position reaching its lsn, polled every {POLL:?}; the install itself committed on the active in {:.1} ms (p50)",
        c.p50
    ));
    Ok(o)
}

/// Runs `bench lag` against a running pair.
pub async fn lag(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let active = active(ctx).await?;
    let mut standby = Standby::open(ctx).await?;
    // The standby's positions as watched or polled, with when each was first seen.
    let (last_tx, mut last_rx) = tokio::sync::oneshot::channel::<u64>();
    let pushed = ctx.app_target()?;
    let how = match &pushed {
        Some(_) => "pushed to a watch on the standby's application socket".to_owned(),
        None => format!("its polled status (polled every {POLL:?}, so up to that much late)"),
    };
    let watcher = if let Some(target) = pushed {
        let client = domsync_client::app::AppClient::connect(target).await?;
        let all = domsync_proto::app::KeyRange {
            start: Vec::new(),
            end: None,
        };
        let mut watch = client.watch(&ctx.domain, all, None).await?;
        tokio::spawn(async move {
            let mut seen: Vec<(u64, Instant)> = Vec::with_capacity(1 << 16);
            let mut last = None;
            let deadline = tokio::time::Instant::now() + GUARD;
            loop {
                let top = seen.last().map_or(0, |s| s.0);
                if last.is_some_and(|l| top >= l) {
                    break;
                }
                let batch = tokio::select! {
                    b = watch.next() => b.map_err(|e| e.to_string())?,
                    l = &mut last_rx, if last.is_none() => {
                        last = Some(l.map_err(|_| "the writers stopped".to_owned())?);
                        continue;
                    }
                    () = tokio::time::sleep_until(deadline) => break,
                };
                let now = Instant::now();
                if batch.position.lsn.0 > top {
                    seen.push((batch.position.lsn.0, now));
                }
            }
            drop(client);
            Ok::<_, String>(seen)
        })
    } else {
        tokio::spawn(async move {
            let mut seen: Vec<(u64, Instant)> = Vec::with_capacity(1 << 16);
            let mut last = None;
            let deadline = Instant::now() + GUARD;
            loop {
                if let Ok(l) = last_rx.try_recv() {
                    last = Some(l);
                }
                let top = seen.last().map_or(0, |s| s.0);
                if last.is_some_and(|l| top >= l) || Instant::now() > deadline {
                    break;
                }
                match standby.state().await {
                    Ok((Some(p), _)) if p.lsn.0 > top => seen.push((p.lsn.0, Instant::now())),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
                tokio::time::sleep(POLL).await;
            }
            Ok(seen)
        })
    };
    let sessions = super::write::sessions(&active, ctx.concurrency()).await?;
    let (jobs_tx, jobs_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let jobs_rx = Arc::new(tokio::sync::Mutex::new(jobs_rx));
    let progress = Progress::start(ctx.progress, "writes");
    let counter = progress.counter();
    let size = usize::try_from(ctx.value_size())?;
    let mut workers = Vec::new();
    for (w, mut s) in sessions.into_iter().enumerate() {
        let (jobs, counter, domain) = (
            Arc::clone(&jobs_rx),
            Arc::clone(&counter),
            ctx.domain.clone(),
        );
        let keys = ctx.args.keys;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::from_state(7 + w as u64);
            let mut done = Vec::new();
            let mut errors = Vec::new();
            loop {
                let job = jobs.lock().await.recv().await;
                let Some((i, due)) = job else { break };
                let ops = vec![Op::Put {
                    key: key(rng.next(), keys),
                    value: vec![(i % 251) as u8; size],
                }];
                match target::write(&mut s, &domain, ops).await {
                    Ok(Ok(p)) => done.push((p.lsn.0, Instant::now(), due)),
                    Ok(Err(e)) => errors.push(e.to_string()),
                    Err(e) => errors.push(e),
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            s.close().await;
            (done, errors)
        }));
    }
    let rate = ctx.args.rate;
    let budget = ctx.budget(10.0);
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut issued = 0u64;
    'load: loop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            if !budget.take() {
                break 'load;
            }
            let at = started + Duration::from_secs_f64(issued as f64 / rate);
            jobs_tx
                .send((issued, at))
                .map_err(|_| "the writers stopped")?;
            issued += 1;
        }
    }
    let issuing = started.elapsed().as_secs_f64();
    drop(jobs_tx);
    let mut done = Vec::new();
    let mut queued = super::stats::Histogram::default();
    for w in workers {
        let (d, errors) = w.await?;
        for e in errors {
            o.errors.add(e);
        }
        done.extend(d);
    }
    done.sort_by_key(|d| d.0);
    let last = done.last().map_or(0, |d| d.0);
    let _ = last_tx.send(last);
    let seen = watcher
        .await?
        .map_err(|e| format!("observing the standby: {e}"))?;
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    for (lsn, returned, due) in &done {
        queued.record(returned.saturating_duration_since(*due));
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
    let q = queued.summary();
    o.params
        .insert("write_due_to_return_p99_ms".into(), json!(q.p99));
    if achieved < rate * 0.95 {
        o.notes.push(format!(
            "the generator issued {achieved:.0} writes/s, below the --rate {rate:.0}"
        ));
    }
    o.notes.push(format!(
        "lag: from the admin write returning on the active to the standby showing that lsn, {how}; writes open loop through {} admin sessions; due-to-return p99 {:.1} ms",
        ctx.concurrency(),
        q.p99
    ));
    Ok(o)
}

/// Runs `bench resync` against a running pair (see the module documentation).
pub async fn resync(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let active = active(ctx).await?;
    let go = ctx
        .args
        .go_file
        .clone()
        .ok_or("bench resync against a running pair needs --go-file PATH (created once the active is filled: start the empty standby then)")?;
    if go.exists() {
        return Err(format!("--go-file {} exists already: remove it first", go.display()).into());
    }
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
    let sessions = super::write::sessions(&active, 4).await?;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let size = usize::try_from(chunk)?;
    for mut s in sessions {
        let (next, counter, domain) = (Arc::clone(&next), Arc::clone(&counter), ctx.domain.clone());
        tasks.spawn(async move {
            let mut top = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let ops = vec![Op::Put {
                    key: format!("bench/blob-{i:08}").into_bytes(),
                    value: vec![(i % 251) as u8; size],
                }];
                let p = target::write(&mut s, &domain, ops)
                    .await?
                    .map_err(|e| e.to_string())?;
                top = top.max(p.lsn.0);
                counter.fetch_add(1, Ordering::Relaxed);
            }
            s.close().await;
            Ok::<u64, String>(top)
        });
    }
    let mut target_lsn = 0;
    while let Some(t) = tasks.join_next().await {
        target_lsn = target_lsn.max(t??);
    }
    fill.finish();
    let bytes = count * chunk;
    if !ctx.args.json {
        eprintln!(
            "domsync-bench: filled to lsn {target_lsn}; creating {} (start the empty standby now)",
            go.display()
        );
    }
    let cpu = CpuMeter::start();
    let started = Instant::now();
    std::fs::write(&go, b"go\n")
        .map_err(|e| format!("cannot create --go-file {}: {e}", go.display()))?;
    let mut standby = wait_socket(ctx, started + GUARD).await?;
    let seen = standby.reach(target_lsn, true, GUARD).await?;
    let took = seen.saturating_duration_since(started);
    o.cpu_percent = cpu.percent();
    o.seconds = took.as_secs_f64();
    o.ops = 1;
    o.bytes = bytes;
    o.latency.record(took);
    o.params.insert("bytes".into(), json!(bytes));
    o.params.insert("lsn".into(), json!(target_lsn));
    o.notes.push(format!(
        "time from creating the go-file (the caller then starts the empty standby's daemon) to the standby reporting Synchronized at lsn {target_lsn}, polled every {POLL:?}; bytes_per_sec is the domain's value bytes over that time"
    ));
    Ok(o)
}

/// Opens the standby's admin socket once its daemon is up.
async fn wait_socket(ctx: &Ctx, deadline: Instant) -> BenchResult<Standby> {
    let path = ctx.args.standby_socket.as_deref().unwrap_or(Path::new(""));
    loop {
        match Standby::open(ctx).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the standby's admin socket {} did not answer in time: {e}",
                    path.display()
                )
                .into())
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
