//! Support shared by the deterministic simulations (`tests/sim.rs`, replication, and
//! `tests/sim_roles.rs`, role changes): their draws on the test kit's seeded [`Rng`]
//! ([`SimDraws`]), simulated time and the event trace, the seeds to run (`DOMSYNC_SIM_SEEDS`,
//! `DOMSYNC_SIM_SEED`, `DOMSYNC_SIM_TRACE`), running a seed so that a failure says how to
//! replay it, and the small pieces both drive the sans-IO core with (stores, views,
//! snapshots).
//!
//! Nothing here may draw from a simulation's [`Rng`] other than in the order the callers did
//! before it was shared: a seed's run is a function of the seed, event for event.

// Each simulation uses part of this module.
#![allow(dead_code)]

use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

use domsync_proto::model::{Lsn, NodeId, Op, SnapshotItem};
use domsync_proto::repl::{Backoff, LocalView, Message, ShipConfig, SnapshotHeader, StandbyView};
use domsync_store::{Domain, DomainStatus, ResyncTarget, Store, StoreError, StoreOptions};

/// Simulated time per step.
pub const DT: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

pub use domsync_testkit::rng::Rng;

/// The draws of the simulations on top of the kit's [`Rng`]: each a fixed sequence of draws,
/// so that a seed's run stays a function of the seed.
pub trait SimDraws {
    /// A random operation on 24 keys and 3 policies.
    fn op(&mut self) -> Op;

    /// A seed's shipping tuning and reconnection backoff. Byte limits stay wide: record sizes
    /// are not reproducible (each record holds its wall-clock commit time, and the varint of
    /// its chain varies with it), so a binding byte limit would cut batches differently on
    /// each run of a seed.
    fn ship_and_backoff(&mut self) -> (ShipConfig, Backoff);
}

impl SimDraws for Rng {
    fn op(&mut self) -> Op {
        let key = |r: &mut Rng| format!("k{:02}", r.below(24)).into_bytes();
        match self.below(100) {
            0..=64 => {
                let key = key(self);
                let len = self.usize(0, 48);
                Op::Put {
                    key,
                    value: self.bytes(len),
                }
            }
            65..=84 => Op::Delete { key: key(self) },
            85..=95 => {
                let name = format!("p{}", self.below(3));
                let len = self.usize(0, 200);
                Op::InstallPolicy {
                    name,
                    content: self.bytes(len),
                }
            }
            _ => Op::RemovePolicy {
                name: format!("p{}", self.below(3)),
            },
        }
    }

    fn ship_and_backoff(&mut self) -> (ShipConfig, Backoff) {
        let ship = ShipConfig {
            batch_records: self.usize(1, 16),
            batch_bytes: ShipConfig::default().batch_bytes,
            window_records: self.range(1, 48),
            window_bytes: ShipConfig::default().window_bytes,
            heartbeat: Duration::from_millis(self.range(30, 300)),
            silence: ShipConfig::default().silence,
        };
        let backoff = Backoff {
            initial: Duration::from_millis(self.range(10, 40)),
            max: Duration::from_millis(self.range(80, 400)),
        };
        (ship, backoff)
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated time and the trace

/// FNV-1a over the trace of a run: equal seeds must give equal hashes. With `keep`, the
/// events themselves are kept too, to show where two runs part.
pub struct Trace {
    pub hash: u64,
    pub keep: Option<Vec<String>>,
    /// `DOMSYNC_SIM_TRACE=1`: print every event.
    verbose: bool,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            hash: 0xCBF2_9CE4_8422_2325,
            keep: None,
            verbose: std::env::var_os("DOMSYNC_SIM_TRACE").is_some_and(|v| v != "0"),
        }
    }

    fn add(&mut self, step: u64, event: &str) {
        for b in step.to_le_bytes().iter().chain(event.as_bytes()) {
            self.hash ^= u64::from(*b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01B3);
        }
        if let Some(k) = self.keep.as_mut() {
            k.push(format!("{step}: {event}"));
        }
    }
}

/// A seed's simulated time (in steps of [`DT`]) and the trace of its events.
pub struct Clock {
    pub seed: u64,
    pub step: u64,
    pub base: Instant,
    pub elapsed: Duration,
    pub trace: Trace,
}

impl Clock {
    pub fn new(seed: u64) -> Clock {
        Clock {
            seed,
            step: 0,
            base: Instant::now(),
            elapsed: Duration::ZERO,
            trace: Trace::new(),
        }
    }

    /// The next step.
    pub fn tick(&mut self) {
        self.step += 1;
        self.elapsed += DT;
    }

    pub fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Simulated wall clock for heartbeats (microseconds).
    pub fn wall_micros(&self) -> u64 {
        1_700_000_000_000_000 + self.elapsed.as_micros() as u64
    }

    /// Where a run is, for assertion messages.
    pub fn at(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    /// Records an event (and prints it with `DOMSYNC_SIM_TRACE=1`).
    pub fn ev(&mut self, event: &str) {
        if self.trace.verbose {
            eprintln!("[{} {:>5}] {event}", self.seed, self.step);
        }
        self.trace.add(self.step, event);
    }

    /// What the run produced, with its counters.
    pub fn outcome<S>(&mut self, stats: S) -> Outcome<S> {
        Outcome {
            stats,
            hash: self.trace.hash,
            events: self.trace.keep.take().unwrap_or_default(),
        }
    }
}

/// What a seed's run produced.
pub struct Outcome<S> {
    pub stats: S,
    /// Hash of every event, in order.
    pub hash: u64,
    /// The events, when kept.
    pub events: Vec<String>,
}

/// Counters of a run, summed over seeds for the summary line.
pub trait Counters: Default {
    fn add(&mut self, other: &Self);
}

/// Declares a simulation's counters: a struct of `u64` fields implementing [`Counters`].
macro_rules! counters {
    ($(#[$m:meta])* struct $name:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        struct $name {
            $($(#[$fm])* $field: u64,)*
        }

        impl crate::sim_support::Counters for $name {
            fn add(&mut self, o: &$name) {
                $(self.$field += o.$field;)*
            }
        }
    };
}
pub(crate) use counters;

// ---------------------------------------------------------------------------------------------
// Seeds, replay and the checks every simulation makes of itself

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// `DOMSYNC_SIM_SEED` alone, or the first `DOMSYNC_SIM_SEEDS` (default 200).
pub fn seeds() -> Vec<u64> {
    match env_u64("DOMSYNC_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("DOMSYNC_SIM_SEEDS").unwrap_or(200)).collect(),
    }
}

/// The command that replays `seed` of `test` in this test binary.
pub fn replay_hint(seed: u64, test: &str) -> String {
    let binary = env!("CARGO_CRATE_NAME");
    format!("replay: DOMSYNC_SIM_SEED={seed} cargo test --test {binary} {test}")
}

/// Runs one seed; a failure names the seed and how to replay it.
pub fn run_replayable<T>(seed: u64, test: &str, run: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            eprintln!("simulation seed {seed} FAILED; {}", replay_hint(seed, test));
            panic!(
                "simulation seed {seed} failed: {msg}\n{}",
                replay_hint(seed, test)
            );
        }
    }
}

/// Runs every seed and sums their counters; also returns the seconds it took.
pub fn run_seeds<S: Counters>(seeds: &[u64], mut run: impl FnMut(u64) -> S) -> (S, f64) {
    let started = Instant::now();
    let mut total = S::default();
    for &seed in seeds {
        total.add(&run(seed));
    }
    (total, started.elapsed().as_secs_f64())
}

/// Two runs of `seed` went event for event alike, to the same counters.
pub fn assert_replayed<S: PartialEq + Debug>(seed: u64, first: &Outcome<S>, second: &Outcome<S>) {
    if let Some((a, b)) = first
        .events
        .iter()
        .zip(&second.events)
        .find(|(a, b)| a != b)
    {
        panic!("seed {seed} did not replay identically: {a:?} then {b:?}");
    }
    assert_eq!(
        first.events.len(),
        second.events.len(),
        "seed {seed} did not replay identically"
    );
    assert_eq!(first.hash, second.hash, "seed {seed}: trace hash");
    assert_eq!(first.stats, second.stats, "seed {seed}: counters");
}

// ---------------------------------------------------------------------------------------------
// Stores, views, messages and snapshots

/// A temporary directory for a seed's stores, in memory when `/dev/shm` is there.
pub fn temp_root(prefix: &str) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().expect("create a temporary directory")
}

pub fn open_store(dir: &Path, node: &NodeId) -> Store {
    let mut o = StoreOptions::new(node.clone());
    o.cache_bytes = 1 << 20;
    Store::open(dir, o).expect("open a store")
}

/// What the active side of a node tells a shipper about its replica.
pub fn local_view(node: &NodeId, st: &DomainStatus) -> LocalView {
    LocalView {
        node: node.clone(),
        role: st.role,
        uid: st.uid,
        epoch: st.epoch.clone(),
        history: st.history.clone(),
        position: st.position.clone(),
        log_start: st.log_start,
        log_base_chain: st.log_base_chain,
    }
}

/// What a standby tells its follower about its replica.
pub fn standby_view(st: DomainStatus, collision_fork: Option<Lsn>) -> StandbyView {
    StandbyView {
        uid: st.uid,
        position: st.position,
        epoch: st.epoch,
        history: st.history,
        collision_fork,
    }
}

/// The target of a resync to the snapshot `header` announces.
pub fn resync_target(header: &SnapshotHeader) -> ResyncTarget {
    ResyncTarget {
        uid: header.uid,
        position: header.position.clone(),
        epoch: header.epoch.clone(),
        history: header.history.clone(),
        digest: header.digest,
    }
}

/// A snapshot of `d`: its header and every row.
pub fn take_snapshot(d: &Domain) -> (SnapshotHeader, Vec<SnapshotItem>) {
    let snap = d.snapshot().unwrap();
    let header = SnapshotHeader {
        uid: snap.uid.expect("the active has a uid"),
        position: snap.position.clone(),
        epoch: snap.epoch.clone(),
        history: snap.history.clone(),
        digest: snap.digest,
    };
    let mut rows = Vec::new();
    snap.for_each::<StoreError>(|item| {
        rows.push(item);
        Ok(())
    })
    .unwrap();
    (header, rows)
}

/// The messages that ship a snapshot: its header, its rows in chunks of 1 to 8, its end.
pub fn snapshot_messages(
    rng: &mut Rng,
    header: SnapshotHeader,
    rows: Vec<SnapshotItem>,
) -> Vec<Message> {
    let total = rows.len() as u64;
    let mut out = vec![Message::SnapshotBegin(header)];
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let n = rng.usize(1, 8);
        out.push(Message::SnapshotRows(rows.by_ref().take(n).collect()));
    }
    out.push(Message::SnapshotEnd { rows: total });
    out
}

/// What a message is, without the bytes that differ between runs (record times, uid, chains).
pub fn describe(m: &Message) -> String {
    match m {
        Message::Follow(f) => format!("follow {} uid={}", f.position.lsn, f.uid.is_some()),
        Message::Answer(a) => format!("answer {a:?}"),
        Message::Records(r) => format!("records x{}", r.len()),
        Message::SnapshotBegin(h) => format!("snapshot-begin {}", h.position.lsn),
        Message::SnapshotRows(r) => format!("snapshot-rows x{}", r.len()),
        Message::SnapshotEnd { rows } => format!("snapshot-end {rows}"),
        Message::Heartbeat { position, .. } => format!("heartbeat {}", position.lsn),
        Message::Ack(a) => format!("ack {}/{}/{}", a.received, a.durable, a.applied),
        Message::Probe { .. } => "probe".to_owned(),
        Message::ProbeAnswer(a) => format!("probe-answer {}", a.is_some()),
        Message::TakeOver(t) => format!("take-over {}", t.last.lsn),
        Message::TookOver(r) => format!("took-over {}", r.is_ok()),
    }
}
