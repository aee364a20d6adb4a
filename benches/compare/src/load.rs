//! The in-process load generator for etcd and Redis: closed loops of N clients, an open loop at
//! a fixed rate, latency percentiles, and the generator's own CPU use.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::procs::self_cpu;

/// Latency (or lag) percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Lat {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Lat {
    /// From samples in microseconds.
    pub fn from_micros(mut v: Vec<u64>) -> Lat {
        if v.is_empty() {
            return Lat::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i] as f64 / 1000.0
        };
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0;
        Lat {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *v.last().unwrap() as f64 / 1000.0,
            mean,
        }
    }
}

/// One measured run of one system.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency_ms: Lat,
    /// Percent of one core used by the load generator.
    pub generator_cpu_percent: f64,
    /// Percent of one core used by each server process during the run.
    pub server_cpu_percent: Vec<(String, f64)>,
    pub notes: Vec<String>,
    /// The command that produced it, when it was a separate program.
    pub command: Option<String>,
    /// Resident memory (idle-memory comparison), MiB.
    pub rss_mib: f64,
    /// The servers ran inside the generator's process (`domsync-bench`'s embedded cluster), so
    /// the generator CPU includes them.
    pub embedded: bool,
}

/// Microseconds since the start of this process's clock (shared by writers and watchers).
pub fn now_micros() -> u64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// `concurrency` clients each running `op(client, i)` back to back for `secs` after `warmup`
/// (operations started during the warm-up are not counted).
pub async fn closed_loop<F, Fut>(concurrency: usize, warmup: f64, secs: f64, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs_f64(warmup);
    let end = measure_from + Duration::from_secs_f64(secs);
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    let cpu_mark = Arc::new(tokio::sync::OnceCell::new());
    for client in 0..concurrency {
        let op = op.clone();
        let first_error = first_error.clone();
        let cpu_mark = cpu_mark.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut i = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                if t >= measure_from {
                    cpu_mark
                        .get_or_init(|| async { (Instant::now(), self_cpu()) })
                        .await;
                }
                let r = op(client, i).await;
                i += 1;
                if t < measure_from {
                    continue;
                }
                match r {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.lock().unwrap().get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let (t0, c0) = cpu_mark
        .get()
        .copied()
        .unwrap_or((measure_from, self_cpu()));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = self_cpu().saturating_sub(c0).as_secs_f64();
    let mut run = Run {
        ops: all.len() as u64,
        errors,
        seconds: secs,
        ops_per_sec: all.len() as f64 / secs,
        latency_ms: Lat::from_micros(all),
        generator_cpu_percent: 100.0 * cpu / wall.max(1e-9),
        ..Run::default()
    };
    if let Some(e) = first_error.lock().unwrap().take() {
        run.notes.push(format!("first error: {e}"));
    }
    run
}

/// Calls `fire(i)` `rate` times a second for `secs`, each call spawned (open loop, so a slow
/// write does not slow the schedule). Returns how many were fired and the CPU window start.
pub async fn open_loop<F, Fut>(rate: f64, secs: f64, fire: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let total = (rate * secs).round() as u64;
    let mut i = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while i < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while i < due {
            tokio::spawn(fire(i));
            i += 1;
        }
    }
    i
}
