//! Measurement helpers of `domsync-bench`: a log-linear latency histogram (HDR-style, about
//! 0.8 % relative precision, mergeable, no allocation per sample), the error tally, the
//! generator's own CPU use (getrusage) and the once-a-second progress line on stderr.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sub-buckets per power of two: 2^7, so a recorded value is within 1/128 of the true one.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
/// Enough buckets for every `u64` nanosecond count.
const BUCKETS: usize = ((64 - SUB_BITS as usize + 1) * HALF as usize) + HALF as usize;

/// Latencies in nanoseconds, bucketed log-linearly like an HDR histogram: exact below 128 ns,
/// then 64 buckets per power of two. Count, sum, min and max are kept exactly.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_ns: u128,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

/// Bucket of `v`.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (SUB_BITS - 1);
    let m = v >> shift; // in HALF..SUB
    (u64::from(shift) * HALF + m) as usize
}

/// Largest value that falls in bucket `i`.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / HALF - 1;
    let m = i - shift * HALF;
    // In u128: the top bucket's bound is 2^64.
    let bound = (u128::from(m + 1) << shift) - 1;
    u64::try_from(bound).unwrap_or(u64::MAX)
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[index(ns)] += 1;
        self.total += 1;
        self.sum_ns += u128::from(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_ns += other.sum_ns;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The value at percentile `p` (0..=100), nearest rank, in nanoseconds (never above max).
    pub fn percentile_ns(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max_ns);
            }
        }
        self.max_ns
    }

    /// p50, p90, p99, max and mean in milliseconds (all zero without samples).
    pub fn summary(&self) -> Summary {
        let ms = |ns: u64| ns as f64 / 1e6;
        if self.total == 0 {
            return Summary::default();
        }
        Summary {
            p50: ms(self.percentile_ns(50.0)),
            p90: ms(self.percentile_ns(90.0)),
            p99: ms(self.percentile_ns(99.0)),
            max: ms(self.max_ns),
            mean: (self.sum_ns as f64 / self.total as f64) / 1e6,
        }
    }
}

/// How many errors in all, and the first few distinct messages.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    /// Every error counted.
    pub count: u64,
    /// The first [`Errors::KEPT`] distinct messages.
    pub first: Vec<String>,
}

impl Errors {
    /// Distinct messages kept for the report's notes.
    pub const KEPT: usize = 5;

    /// Counts one error.
    pub fn add(&mut self, message: impl std::fmt::Display) {
        self.count += 1;
        if self.first.len() < Self::KEPT {
            let m = message.to_string();
            if !self.first.contains(&m) {
                self.first.push(m);
            }
        }
    }

    /// Adds every error of `other`.
    pub fn merge(&mut self, other: Errors) {
        self.count += other.count.saturating_sub(other.first.len() as u64);
        for m in other.first {
            self.add(m);
        }
    }
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU use of this process over a span of wall time (getrusage RUSAGE_SELF, user + system).
pub struct CpuMeter {
    wall: Instant,
    cpu: Duration,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start() -> CpuMeter {
        CpuMeter {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// CPU time since the start over wall time, in percent of one core.
    pub fn percent(&self) -> f64 {
        let wall = self.wall.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        100.0 * cpu_time().saturating_sub(self.cpu).as_secs_f64() / wall
    }
}

/// The progress line on stderr: elapsed, ops, ops/s, rewritten about once a second while
/// the run lasts.
pub struct Progress {
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts the display when `show`; the counter works either way.
    pub fn start(show: bool, label: &'static str) -> Progress {
        let ops = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = show.then(|| {
            let (ops, stop) = (Arc::clone(&ops), Arc::clone(&stop));
            std::thread::spawn(move || {
                let started = Instant::now();
                let (mut last_ops, mut last_t) = (0u64, started);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if last_t.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    let now = Instant::now();
                    let n = ops.load(Ordering::Relaxed);
                    let rate = (n - last_ops) as f64 / (now - last_t).as_secs_f64();
                    (last_ops, last_t) = (n, now);
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r\x1b[2K{:>6.1} s  {n:>10} {label}  {rate:>10.1} {label}/s",
                        started.elapsed().as_secs_f64()
                    );
                    let _ = err.flush();
                }
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            })
        });
        Progress { ops, stop, thread }
    }

    /// The shared counter the load adds its ops to.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.ops)
    }

    /// Stops the display and clears its line.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i < BUCKETS);
            assert!(upper(i) >= v, "v {v} bucket {i} upper {}", upper(i));
            assert!(
                (upper(i) - v) as f64 <= v as f64 / 60.0 + 1.0,
                "v {v} upper {}",
                upper(i)
            );
            assert!(i >= last || v > 2_000_000);
            last = i;
        }
    }

    #[test]
    fn percentiles_are_ordered() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert!((s.p50 - 0.5).abs() < 0.01, "{s:?}");
        assert!((s.p99 - 0.99).abs() < 0.01, "{s:?}");
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max);
        assert!((s.max - 1.0).abs() < 1e-9);
        assert!((s.mean - 0.5005).abs() < 1e-6);
    }
}
