//! Deterministic simulation of replication (DESIGN.md §3, §4, §6): the sans-IO core
//! ([`Shipper`], [`Follower`]) driven over an in-memory network, with a real [`Store`] per node.
//!
//! One domain, an active node `a` and two standbys `b` and `c`. Everything runs on the test
//! thread with simulated time, so a run is a function of its seed. Faults: streams cut (like a
//! QUIC stream reset: frames in flight vanish), partitions lasting a random number of steps,
//! standby crashes (with and without closing the store, mid-snapshot included, leaving a
//! half-built resync file behind), active crashes, log truncation on the active (lagging
//! standbys need a snapshot), delayed commit notifications, and corruption: a frame byte flipped
//! in flight, a byte flipped inside a shipped record (frame kept valid), a snapshot row altered.
//!
//! Checked on every step: every record a standby applies is byte-identical to the active's
//! record at that lsn, in lsn order; an injected corrupt record is never applied (invariant 4);
//! after every apply batch, snapshot install and restart the standby is a prefix of the active:
//! same position and content digest as the active had at that lsn (invariants 3 and 6); the
//! sync status either side reports fits what the standby holds. At the end of every seed,
//! with faults off, both standbys must reach the active's position, report `Synchronized` on
//! both sides, verify clean and hold the active's exact log bytes.
//!
//! `DOMSYNC_SIM_SEEDS=<n>` sets how many seeds run (default 200); `DOMSYNC_SIM_SEED=<n>`
//! replays one seed; `DOMSYNC_SIM_TRACE=1` prints every event. A failing seed is printed with
//! the command that replays it. Runs are reproducible event for event (checked by
//! `a_seed_replays_exactly`), in debug and release alike; the bytes are not (records carry
//! their wall-clock commit time and the domain uid is random), so nothing in the run
//! depends on them.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use domsync::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync::repl::message::{decode, encode};
use domsync::repl::{
    Backoff, FollowAction, Follower, LocalView, Message, RecordBytes, ShipAction, ShipConfig,
    Shipper, SnapshotHeader, StandbyView, SyncStatus,
};
use domsync::store::{
    Domain, Resync, ResyncTarget, SnapshotItem, StateDigest, Store, StoreError, StoreOptions,
};

/// Simulated time per step.
const DT: Duration = Duration::from_millis(10);
/// Steps allowed for the standbys to catch up once faults stop.
const SETTLE_STEPS: u64 = 4000;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and tracing

/// splitmix64: small, fast, good enough to drive a simulation.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0xE703_7ED1_A0B4_28DB)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn usize(&mut self, lo: usize, hi: usize) -> usize {
        self.range(lo as u64, hi as u64) as usize
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) < p * (1u64 << 53) as f64
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// FNV-1a over the trace of a run: equal seeds must give equal hashes. With `keep`, the
/// events themselves are kept too, to show where two runs part.
struct Trace {
    hash: u64,
    keep: Option<Vec<String>>,
}

impl Trace {
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

/// What a message is, without the bytes that differ between runs (record times, uid, chains).
fn describe(m: &Message) -> String {
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

// ---------------------------------------------------------------------------------------------
// The simulated world

/// Fault rates of one seed (probabilities per step and standby, unless noted).
#[derive(Debug, Clone)]
struct Faults {
    write: f64,
    cut: f64,
    partition: f64,
    crash_standby: f64,
    /// Per step while the standby builds a snapshot.
    crash_mid_snapshot: f64,
    crash_active: f64,
    truncate: f64,
    /// Per frame delivered to a standby.
    corrupt_frame: f64,
    corrupt_record: f64,
    corrupt_row: f64,
    /// Snapshot row corruption hits a policy package's content instead of a user value.
    corrupt_policy_content: bool,
    /// Per frame delivered to the active.
    corrupt_up: f64,
    /// Probability per step that a shipper hears of the latest commit (1 = at once).
    notify: f64,
}

/// Counters of a run (summed over seeds for the summary line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stats {
    seeds: u64,
    steps: u64,
    writes: u64,
    applied: u64,
    truncations: u64,
    snapshots_sent: u64,
    snapshots_installed: u64,
    snapshots_refused: u64,
    cuts: u64,
    partitions: u64,
    standby_crashes: u64,
    half_built_removed: u64,
    mid_snapshot_crashes: u64,
    active_crashes: u64,
    connects: u64,
    corrupt_frames: u64,
    corrupt_records: u64,
    corrupt_rows: u64,
    corrupt_up: u64,
    refused_records: u64,
    lost_in_flight: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.writes += o.writes;
        self.applied += o.applied;
        self.truncations += o.truncations;
        self.snapshots_sent += o.snapshots_sent;
        self.snapshots_installed += o.snapshots_installed;
        self.snapshots_refused += o.snapshots_refused;
        self.cuts += o.cuts;
        self.partitions += o.partitions;
        self.standby_crashes += o.standby_crashes;
        self.half_built_removed += o.half_built_removed;
        self.mid_snapshot_crashes += o.mid_snapshot_crashes;
        self.active_crashes += o.active_crashes;
        self.connects += o.connects;
        self.corrupt_frames += o.corrupt_frames;
        self.corrupt_records += o.corrupt_records;
        self.corrupt_rows += o.corrupt_rows;
        self.corrupt_up += o.corrupt_up;
        self.refused_records += o.refused_records;
        self.lost_in_flight += o.lost_in_flight;
    }

    fn corruptions(&self) -> u64 {
        self.corrupt_frames + self.corrupt_records + self.corrupt_rows + self.corrupt_up
    }
}

/// One replication stream (standby ↔ active): ordered and reliable while it lives.
struct Stream {
    id: u64,
    to_standby: VecDeque<Vec<u8>>,
    to_active: VecDeque<Vec<u8>>,
    /// The active's side, created when the `Follow` arrives.
    shipper: Option<Shipper>,
    /// Latest commit the shipper was told of.
    notified: Lsn,
    /// A corruption was injected on this stream: a standby closing it is expected.
    injected: bool,
}

struct ActiveNode {
    dir: PathBuf,
    store: Option<Store>,
    domain: Option<Domain>,
    down_until: u64,
}

struct StandbyNode {
    node: NodeId,
    dir: PathBuf,
    store: Option<Store>,
    domain: Option<Domain>,
    follower: Option<Follower>,
    resync: Option<Resync>,
    /// The snapshot being built, to check what gets switched in.
    target: Option<SnapshotHeader>,
    stream: Option<Stream>,
    partitioned_until: u64,
    /// Crashed until this step.
    down_until: Option<u64>,
    /// Position held when it crashed with its store closed.
    before_crash: Option<Position>,
    /// Its follower connected at least once since it started.
    has_connected: bool,
}

/// What a seed's run produced.
struct Outcome {
    stats: Stats,
    /// Hash of every event, in order.
    hash: u64,
    /// The events, when kept.
    events: Vec<String>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    trace: Trace,
    stats: Stats,
    faults: Faults,
    ship: ShipConfig,
    backoff: Backoff,
    base: Instant,
    elapsed: Duration,
    step: u64,
    id: DomainId,
    next_stream: u64,
    active: ActiveNode,
    standbys: Vec<StandbyNode>,
    /// The active's position and digest after each lsn (index = lsn; 0 = empty).
    history: Vec<(Position, StateDigest)>,
    /// The active's encoded record at each lsn (index = lsn; 0 unused).
    records: Vec<Vec<u8>>,
    /// Record bytes corrupted in flight: none may ever be applied.
    injected: HashSet<Vec<u8>>,
    /// `DOMSYNC_SIM_TRACE=1`: print every event.
    verbose: bool,
    _root: tempfile::TempDir,
}

fn temp_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("domsync-sim-");
    if shm.is_dir() {
        if let Ok(d) = b.tempdir_in(shm) {
            return d;
        }
    }
    b.tempdir().expect("create a temporary directory")
}

fn open_store(dir: &Path, node: &NodeId) -> Store {
    let mut o = StoreOptions::new(node.clone());
    o.cache_bytes = 1 << 20;
    Store::open(dir, o).expect("open a store")
}

fn resync_file(dir: &Path, id: &DomainId) -> PathBuf {
    dir.join("domains").join(format!(".{id}.resync.redb"))
}

fn replay_hint(seed: u64, test: &str) -> String {
    format!("replay: DOMSYNC_SIM_SEED={seed} cargo test --test sim {test}")
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let root = temp_root();
        let id: DomainId = "sim".parse().unwrap();
        let a = NodeId::new("a").unwrap();
        let adir = root.path().join("a");
        let astore = open_store(&adir, &a);
        let adomain = astore.create_domain(&id).expect("create the domain");
        let s0 = adomain.status().unwrap();

        // Each seed draws its own tuning and fault rates, calm seeds and stormy ones.
        let storm = rng.range(0, 3) as f64 / 2.0; // 0, 0.5, 1 or 1.5
        let faults = Faults {
            write: 0.3 + rng.below(60) as f64 / 100.0,
            cut: 0.004 * storm,
            partition: 0.003 * storm,
            crash_standby: 0.002 * storm,
            crash_mid_snapshot: 0.1 * storm,
            crash_active: 0.0007 * storm,
            truncate: [0.0, 0.01, 0.03][rng.usize(0, 2)],
            corrupt_frame: 0.004 * storm,
            corrupt_record: 0.01 * storm,
            corrupt_row: 0.05 * storm,
            corrupt_policy_content: false,
            corrupt_up: 0.002 * storm,
            notify: [1.0, 1.0, 0.5, 0.2][rng.usize(0, 3)],
        };
        let ship = ShipConfig {
            batch_records: rng.usize(1, 16),
            // Byte limits are left wide: record sizes are not reproducible (each record holds
            // its wall-clock commit time, and the varint of its chain varies with it), so a
            // binding byte limit would cut batches differently on each run of a seed.
            batch_bytes: ShipConfig::default().batch_bytes,
            window_records: rng.range(1, 48),
            window_bytes: ShipConfig::default().window_bytes,
            heartbeat: Duration::from_millis(rng.range(30, 300)),
        };
        let backoff = Backoff {
            initial: Duration::from_millis(rng.range(10, 40)),
            max: Duration::from_millis(rng.range(80, 400)),
        };
        let base = Instant::now();
        let standbys = ["b", "c"]
            .iter()
            .map(|n| {
                let node = NodeId::new(*n).unwrap();
                let dir = root.path().join(n);
                let store = open_store(&dir, &node);
                let domain = store.join_domain(&id).expect("join the domain");
                StandbyNode {
                    follower: Some(Follower::new(id.clone(), backoff, base)),
                    node,
                    dir,
                    store: Some(store),
                    domain: Some(domain),
                    resync: None,
                    target: None,
                    stream: None,
                    partitioned_until: 0,
                    down_until: None,
                    before_crash: None,
                    has_connected: false,
                }
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng,
            trace: Trace {
                hash: 0xCBF2_9CE4_8422_2325,
                keep: None,
            },
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            faults,
            ship,
            backoff,
            base,
            elapsed: Duration::ZERO,
            step: 0,
            id,
            next_stream: 0,
            active: ActiveNode {
                dir: adir,
                store: Some(astore),
                domain: Some(adomain),
                down_until: 0,
            },
            standbys,
            history: vec![(s0.position, s0.digest)],
            records: vec![Vec::new()],
            injected: HashSet::new(),
            verbose: std::env::var_os("DOMSYNC_SIM_TRACE").is_some_and(|v| v != "0"),
            _root: root,
        };
        let tuning = format!("{:?} {:?} {:?}", sim.faults, sim.ship, sim.backoff);
        sim.ev(&tuning);
        sim
    }

    fn now(&self) -> Instant {
        self.base + self.elapsed
    }

    /// Simulated wall clock for heartbeats (microseconds).
    fn wall_micros(&self) -> u64 {
        1_700_000_000_000_000 + self.elapsed.as_micros() as u64
    }

    fn at(&self) -> String {
        format!("seed {} step {}", self.seed, self.step)
    }

    fn ev(&mut self, event: &str) {
        if self.verbose {
            eprintln!("[{} {:>5}] {event}", self.seed, self.step);
        }
        self.trace.add(self.step, event);
    }

    fn active_lsn(&self) -> Lsn {
        Lsn(self.history.len() as u64 - 1)
    }

    fn active_domain(&self) -> Option<Domain> {
        self.active.domain.clone()
    }

    // --- the run ---------------------------------------------------------------------------

    fn run(mut self) -> Outcome {
        let writes = self.rng.range(20, 120);
        let max_steps = writes * 8 + 200;
        while self.stats.writes < writes && self.step < max_steps {
            self.step(true);
        }
        self.ev("settle");
        // Faults off: heal, restart what is down, let the standbys catch up.
        for i in 0..self.standbys.len() {
            self.standbys[i].partitioned_until = 0;
        }
        let settle_end = self.step + SETTLE_STEPS;
        loop {
            self.step(false);
            if self.converged() {
                break;
            }
            assert!(
                self.step < settle_end,
                "{}: standbys did not catch up with the active at lsn {} within {SETTLE_STEPS} \
                 fault-free steps: {}",
                self.at(),
                self.active_lsn(),
                self.describe_standbys()
            );
        }
        self.check_end();
        self.stats.steps = self.step;
        Outcome {
            stats: self.stats.clone(),
            hash: self.trace.hash,
            events: self.trace.keep.take().unwrap_or_default(),
        }
    }

    fn step(&mut self, faults: bool) {
        self.step += 1;
        self.elapsed += DT;
        if faults {
            self.inject_faults();
        }
        self.restarts(!faults);
        if faults && self.rng.chance(self.faults.write) {
            self.write();
        }
        self.notify_commits(!faults);
        self.deliver(faults);
        self.ticks();
    }

    fn describe_standbys(&self) -> String {
        let now = self.now();
        let mut out = String::new();
        for s in &self.standbys {
            let pos = s
                .domain
                .as_ref()
                .and_then(|d| d.status().ok())
                .map(|st| st.position.lsn);
            let f = s.follower.as_ref().map(|f| (f.status().0, f.last_error()));
            let sh = s
                .stream
                .as_ref()
                .and_then(|st| st.shipper.as_ref())
                .map(|sh| sh.status(now).0);
            let _ = write!(
                out,
                "[{} at {:?}, follower {:?}, stream {}, shipper {:?}] ",
                s.node,
                pos,
                f,
                s.stream.is_some(),
                sh
            );
        }
        out
    }

    // --- workload ----------------------------------------------------------------------------

    fn random_op(&mut self) -> Op {
        let key = |r: &mut Rng| format!("k{:02}", r.below(24)).into_bytes();
        match self.rng.below(100) {
            0..=64 => {
                let key = key(&mut self.rng);
                let len = self.rng.usize(0, 48);
                Op::Put {
                    key,
                    value: self.rng.bytes(len),
                }
            }
            65..=84 => Op::Delete {
                key: key(&mut self.rng),
            },
            85..=95 => {
                let name = format!("p{}", self.rng.below(3));
                let len = self.rng.usize(0, 200);
                Op::InstallPolicy {
                    name,
                    content: self.rng.bytes(len),
                }
            }
            _ => Op::RemovePolicy {
                name: format!("p{}", self.rng.below(3)),
            },
        }
    }

    fn write(&mut self) {
        let Some(d) = self.active_domain() else {
            return;
        };
        let n = if self.rng.chance(0.15) {
            self.rng.usize(2, 4)
        } else {
            1
        };
        let ops: Vec<Op> = (0..n).map(|_| self.random_op()).collect();
        let pos = d
            .write(ops)
            .unwrap_or_else(|e| panic!("{}: write refused: {e}", self.at()));
        assert_eq!(pos.lsn, self.active_lsn().next(), "{}", self.at());
        let st = d.status().unwrap();
        assert_eq!(st.position, pos, "{}", self.at());
        let bytes = d
            .read_log(pos.lsn, 1, usize::MAX)
            .unwrap_or_else(|e| panic!("{}: read back lsn {}: {e}", self.at(), pos.lsn))
            .remove(0)
            .bytes;
        self.history.push((pos.clone(), st.digest));
        self.records.push(bytes);
        self.stats.writes += 1;
        self.ev(&format!("write {}", pos.lsn));
        if self.faults.notify >= 1.0 {
            self.notify_all();
        }
    }

    fn truncate(&mut self) {
        let Some(d) = self.active_domain() else {
            return;
        };
        let st = d.status().unwrap();
        let below = Lsn(self.rng.range(st.log_start.0, st.position.lsn.0 + 1));
        let start = d
            .truncate_log(below)
            .unwrap_or_else(|e| panic!("{}: truncate: {e}", self.at()));
        self.stats.truncations += 1;
        self.ev(&format!("truncate below {below} -> {start}"));
    }

    // --- faults ------------------------------------------------------------------------------

    fn inject_faults(&mut self) {
        if self.rng.chance(self.faults.truncate) {
            self.truncate();
        }
        if self.active.domain.is_some() && self.rng.chance(self.faults.crash_active) {
            self.crash_active();
        }
        for i in 0..self.standbys.len() {
            if self.standbys[i].stream.is_some() && self.rng.chance(self.faults.cut) {
                self.stats.cuts += 1;
                self.ev(&format!("cut {i}"));
                self.reset_stream(i);
            }
            if self.rng.chance(self.faults.partition) {
                let steps = self.rng.range(3, 120);
                self.stats.partitions += 1;
                self.ev(&format!("partition {i} for {steps}"));
                self.standbys[i].partitioned_until = self.step + steps;
                self.reset_stream(i);
            }
            // Snapshots go by in a few steps: crashes aim at them on purpose too.
            let p = if self.standbys[i].resync.is_some() {
                self.faults.crash_mid_snapshot
            } else {
                self.faults.crash_standby
            };
            if self.standbys[i].down_until.is_none() && self.rng.chance(p) {
                self.crash_standby(i);
            }
        }
    }

    /// The stream of standby `i` is lost: both sides learn it, frames in flight vanish.
    fn reset_stream(&mut self, i: usize) {
        if let Some(mut s) = self.standbys[i].stream.take() {
            self.stats.lost_in_flight += (s.to_standby.len() + s.to_active.len()) as u64;
            if let Some(sh) = s.shipper.as_mut() {
                sh.disconnected();
            }
            self.ev(&format!("stream {} of {i} lost", s.id));
        }
        let now = self.now();
        if let Some(f) = self.standbys[i].follower.as_mut() {
            if f.is_connected() {
                let actions = f.disconnected(now);
                self.run_follow(i, actions);
            }
        }
    }

    fn crash_standby(&mut self, i: usize) {
        let mode = self.rng.below(3);
        let steps = self.rng.range(1, 80);
        self.stats.standby_crashes += 1;
        let mid_snapshot = self.standbys[i].resync.is_some();
        self.stats.mid_snapshot_crashes += u64::from(mid_snapshot);
        self.ev(&format!(
            "crash standby {i} mode {mode} for {steps} mid-snapshot={mid_snapshot}"
        ));
        // The process is gone: its follower, stream and snapshot in progress with it.
        if let Some(mut s) = self.standbys[i].stream.take() {
            self.stats.lost_in_flight += (s.to_standby.len() + s.to_active.len()) as u64;
            if let Some(sh) = s.shipper.as_mut() {
                sh.disconnected();
            }
        }
        self.standbys[i].follower = None;
        self.standbys[i].target = None;
        self.standbys[i].down_until = Some(self.step + steps);
        if mode == 0 {
            // The store stays open (the replica's files are as they were).
            self.standbys[i].resync = None;
            return;
        }
        let half_built = resync_file(&self.standbys[i].dir, &self.id);
        let keep = self.standbys[i].dir.join("half-built.copy");
        if mode == 2 {
            if self.standbys[i].resync.is_some() {
                std::fs::copy(&half_built, &keep).expect("copy the half-built file");
            } else {
                let len = self.rng.usize(1, 4096);
                std::fs::write(&keep, self.rng.bytes(len)).unwrap();
            }
        }
        let s = &mut self.standbys[i];
        s.resync = None;
        let d = s.domain.take().expect("standby domain open");
        s.before_crash = Some(d.status().unwrap().position);
        drop(d);
        s.store.take().expect("standby store open").close();
        if mode == 2 {
            // What a crash midway leaves on disk: the snapshot's file, half-built.
            std::fs::rename(&keep, &half_built).unwrap();
        }
    }

    fn crash_active(&mut self) {
        let steps = self.rng.range(1, 40);
        self.stats.active_crashes += 1;
        self.ev(&format!("crash active for {steps}"));
        for i in 0..self.standbys.len() {
            self.reset_stream(i);
        }
        drop(self.active.domain.take());
        self.active.store.take().expect("active store").close();
        self.active.down_until = self.step + steps;
    }

    fn restarts(&mut self, all: bool) {
        if self.active.domain.is_none() && (all || self.step >= self.active.down_until) {
            self.ev("restart active");
            let store = open_store(&self.active.dir, &NodeId::new("a").unwrap());
            let d = store.domain(&self.id).expect("reopen the active's domain");
            let st = d.status().unwrap();
            let (pos, digest) = self.history.last().unwrap();
            assert_eq!(&st.position, pos, "{}: active lost a commit", self.at());
            assert_eq!(&st.digest, digest, "{}", self.at());
            assert_eq!(st.role, Role::Active, "{}", self.at());
            let v = d.verify().unwrap();
            assert!(v.is_clean(), "{}: active verify: {:?}", self.at(), v.faults);
            self.active.store = Some(store);
            self.active.domain = Some(d);
        }
        for i in 0..self.standbys.len() {
            let due = match self.standbys[i].down_until {
                Some(t) => all || self.step >= t,
                None => false,
            };
            if due {
                self.restart_standby(i);
            }
        }
    }

    fn restart_standby(&mut self, i: usize) {
        self.ev(&format!("restart standby {i}"));
        let now = self.now();
        let s = &mut self.standbys[i];
        s.down_until = None;
        if s.store.is_none() {
            let half_built = resync_file(&s.dir, &self.id);
            let had_half_built = half_built.exists();
            let store = open_store(&s.dir, &s.node);
            assert!(
                !half_built.exists(),
                "seed {}: the half-built resync file survived reopening",
                self.seed
            );
            if had_half_built {
                self.stats.half_built_removed += 1;
            }
            let d = store.domain(&self.id).expect("reopen the standby's domain");
            let pos = d.status().unwrap().position;
            assert_eq!(
                Some(&pos),
                s.before_crash.as_ref(),
                "seed {}: a standby crash changed its state (invariant 6)",
                self.seed
            );
            s.store = Some(store);
            s.domain = Some(d);
        }
        s.follower = Some(Follower::new(self.id.clone(), self.backoff, now));
        s.has_connected = false;
        self.check_prefix(i, "after a restart", true);
    }

    // --- invariants on the way ---------------------------------------------------------------

    /// Standby `i` holds a state the active went through: same position (chain included) and
    /// the same content digest as the active had at that lsn (invariants 3 and 6).
    fn check_prefix(&self, i: usize, when: &str, verify: bool) {
        let d = self.standbys[i].domain.as_ref().expect("standby open");
        let st = d.status().unwrap();
        let lsn = st.position.lsn;
        assert!(
            lsn <= self.active_lsn(),
            "{}: standby {} {when} is at lsn {lsn}, past the active's {}",
            self.at(),
            self.standbys[i].node,
            self.active_lsn()
        );
        let (pos, digest) = &self.history[lsn.0 as usize];
        if lsn > Lsn::ZERO {
            assert_eq!(
                &st.position,
                pos,
                "{}: standby {} {when}: position differs from the active's at lsn {lsn}",
                self.at(),
                self.standbys[i].node
            );
        }
        assert_eq!(
            &st.digest,
            digest,
            "{}: standby {} {when}: content digest differs from the active's at lsn {lsn} \
             (invariant 3)",
            self.at(),
            self.standbys[i].node
        );
        if verify {
            let v = d.verify().unwrap();
            assert!(
                v.is_clean(),
                "{}: standby {} {when}: verify: {:?}",
                self.at(),
                self.standbys[i].node,
                v.faults
            );
        }
    }

    // --- commit notifications and ticks --------------------------------------------------------

    fn notify_all(&mut self) {
        for i in 0..self.standbys.len() {
            self.notify(i);
        }
    }

    fn notify(&mut self, i: usize) {
        let lsn = self.active_lsn();
        let now = self.now();
        let Some(s) = self.standbys[i].stream.as_mut() else {
            return;
        };
        if s.notified >= lsn {
            return;
        }
        let Some(sh) = s.shipper.as_mut() else {
            return;
        };
        s.notified = lsn;
        let actions = sh.on_commit(lsn, now);
        self.run_ship(i, actions);
    }

    /// Commit notifications reach shippers late (like a watch channel read by a busy task).
    fn notify_commits(&mut self, all: bool) {
        for i in 0..self.standbys.len() {
            if all || self.rng.chance(self.faults.notify) {
                self.notify(i);
            }
        }
    }

    fn ticks(&mut self) {
        let now = self.now();
        let wall = self.wall_micros();
        let position = self.history.last().unwrap().0.clone();
        for i in 0..self.standbys.len() {
            if let Some(sh) = self.standbys[i]
                .stream
                .as_mut()
                .and_then(|s| s.shipper.as_mut())
            {
                let actions = sh.on_tick(&position, wall, now);
                self.run_ship(i, actions);
            }
            if let Some(f) = self.standbys[i].follower.as_mut() {
                let actions = f.on_tick(now);
                self.run_follow(i, actions);
            }
            self.check_status(i);
        }
    }

    /// What both sides report about standby `i` fits what it holds.
    fn check_status(&self, i: usize) {
        let s = &self.standbys[i];
        let Some(d) = s.domain.as_ref() else {
            return;
        };
        let st = d.status().unwrap();
        // A follower learns what its replica holds when it first connects (`connected`):
        // until then, after a restart, it says NeverSynchronized whatever the replica holds.
        let statuses = [
            (
                "follower",
                s.follower
                    .as_ref()
                    .filter(|_| s.has_connected)
                    .map(|f| f.status().0),
            ),
            (
                "shipper",
                s.stream
                    .as_ref()
                    .and_then(|x| x.shipper.as_ref())
                    .map(|sh| sh.status(self.now()).0),
            ),
        ];
        for (side, status) in statuses {
            let Some(status) = status else { continue };
            assert!(
                st.uid.is_none() || status != SyncStatus::NeverSynchronized,
                "{}: the {side} reports standby {i} NeverSynchronized, but it holds the domain \
                 at lsn {}",
                self.at(),
                st.position.lsn
            );
            assert!(
                !matches!(
                    status,
                    SyncStatus::Advanced { .. } | SyncStatus::Collision { .. }
                ),
                "{}: the {side} reports standby {i} {status}: nothing diverges here",
                self.at()
            );
        }
        if let Some(x) = s.stream.as_ref() {
            if let Some(sh) = x.shipper.as_ref() {
                if sh.status(self.now()).0 == SyncStatus::Synchronized {
                    assert!(
                        st.position.lsn >= x.notified,
                        "{}: the shipper reports standby {i} Synchronized at lsn {} but the \
                         active committed {}",
                        self.at(),
                        st.position.lsn,
                        x.notified
                    );
                }
            }
        }
    }

    // --- the network -------------------------------------------------------------------------

    fn deliver(&mut self, faults: bool) {
        for i in 0..self.standbys.len() {
            let (down, up) = if faults {
                (self.rng.range(0, 4), self.rng.range(0, 4))
            } else {
                (8, 8)
            };
            let down_first = self.rng.chance(0.5);
            if down_first {
                self.deliver_down(i, down, faults);
                self.deliver_up(i, up, faults);
            } else {
                self.deliver_up(i, up, faults);
                self.deliver_down(i, down, faults);
            }
        }
    }

    /// Delivers up to `n` frames active → standby `i`.
    fn deliver_down(&mut self, i: usize, n: u64, faults: bool) {
        for _ in 0..n {
            let Some(mut frame) = self.standbys[i]
                .stream
                .as_mut()
                .and_then(|s| s.to_standby.pop_front())
            else {
                return;
            };
            if faults {
                frame = self.corrupt_down(i, frame);
            }
            let now = self.now();
            let actions = match decode(&frame) {
                Ok(m) => {
                    self.ev(&format!("{i} <- {}", describe(&m)));
                    let records = matches!(m, Message::Records(_));
                    let refused = self.follower(i).refused();
                    let actions = self.follower(i).on_message(m, now);
                    if records && self.follower(i).refused() > refused {
                        // The follower looked at the first record and refused it.
                        self.stats.refused_records += 1;
                    }
                    actions
                }
                Err(e) => {
                    self.ev(&format!("{i} <- undecodable"));
                    self.follower(i)
                        .apply_failed(&format!("corrupt frame from the active refused: {e}"), now)
                }
            };
            self.run_follow(i, actions);
        }
    }

    fn follower(&mut self, i: usize) -> &mut Follower {
        self.standbys[i]
            .follower
            .as_mut()
            .expect("a stream without a follower")
    }

    /// Maybe damages a frame on its way to standby `i`. Which byte is hit depends on the
    /// frame's length, which differs between runs (see `batch_bytes`); every single-byte
    /// change is caught by a CRC, so the outcome, and the trace, do not.
    fn corrupt_down(&mut self, i: usize, mut frame: Vec<u8>) -> Vec<u8> {
        if self.rng.chance(self.faults.corrupt_frame) {
            let at = self.rng.below(frame.len() as u64) as usize;
            frame[at] ^= 1 << self.rng.below(8);
            self.stats.corrupt_frames += 1;
            self.ev(&format!("corrupt a frame to {i}"));
            self.mark_injected(i);
            return frame;
        }
        let record = self.rng.chance(self.faults.corrupt_record);
        let row = self.rng.chance(self.faults.corrupt_row);
        if !record && !row {
            return frame;
        }
        match decode(&frame) {
            Ok(Message::Records(mut records)) if record && !records.is_empty() => {
                let r = self.rng.below(records.len() as u64) as usize;
                let bytes = &mut records[r].0;
                let at = self.rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
                self.injected.insert(bytes.clone());
                self.stats.corrupt_records += 1;
                self.ev(&format!("corrupt record {r} to {i}"));
                self.mark_injected(i);
                encode(&Message::Records(records)).unwrap()
            }
            Ok(Message::SnapshotRows(mut rows)) if row => {
                let policy = self.faults.corrupt_policy_content;
                let value = rows.iter_mut().find_map(|r| match r {
                    SnapshotItem::Kv { value, .. } if !policy => Some(value),
                    SnapshotItem::Policy(p) if policy => Some(&mut p.content),
                    _ => None,
                });
                let Some(value) = value else {
                    return frame;
                };
                match value.first_mut() {
                    Some(b) => *b ^= 0x20,
                    None => value.push(0),
                }
                self.stats.corrupt_rows += 1;
                self.ev(&format!("corrupt snapshot row to {i}"));
                self.mark_injected(i);
                encode(&Message::SnapshotRows(rows)).unwrap()
            }
            _ => frame,
        }
    }

    fn mark_injected(&mut self, i: usize) {
        if let Some(s) = self.standbys[i].stream.as_mut() {
            s.injected = true;
        }
    }

    /// Delivers up to `n` frames standby `i` → active.
    fn deliver_up(&mut self, i: usize, n: u64, faults: bool) {
        for _ in 0..n {
            let Some(mut frame) = self.standbys[i]
                .stream
                .as_mut()
                .and_then(|s| s.to_active.pop_front())
            else {
                return;
            };
            if faults && self.rng.chance(self.faults.corrupt_up) {
                let at = self.rng.below(frame.len() as u64) as usize;
                frame[at] ^= 1 << self.rng.below(8);
                self.stats.corrupt_up += 1;
                self.ev(&format!("corrupt a frame from {i}"));
            }
            self.active_receives(i, &frame);
        }
    }

    /// The active reads one frame from standby `i`'s stream.
    fn active_receives(&mut self, i: usize, frame: &[u8]) {
        let now = self.now();
        let m = match decode(frame) {
            Ok(m) => m,
            Err(_) => {
                // A decode error ends the stream (invariant 8).
                self.ev(&format!("{i} -> undecodable: reset"));
                self.reset_stream(i);
                return;
            }
        };
        self.ev(&format!("{i} -> {}", describe(&m)));
        let d = self.active_domain().expect("a stream to a crashed active");
        let node = self.standbys[i].node.clone();
        let ship = self.ship;
        let stream = self.standbys[i].stream.as_mut().expect("stream");
        let actions = match (m, stream.shipper.as_mut()) {
            (Message::Follow(follow), None) => {
                let st = d.status().unwrap();
                let view = LocalView {
                    node: NodeId::new("a").unwrap(),
                    role: st.role,
                    uid: st.uid,
                    epoch: st.epoch,
                    history: st.history,
                    position: st.position,
                    log_start: st.log_start,
                    log_base_chain: st.log_base_chain,
                };
                stream.notified = view.position.lsn;
                let mut sh = Shipper::new(node, ship, now);
                let actions = sh.on_follow(&follow, &view, |l| d.chain_at(l).ok().flatten(), now);
                stream.shipper = Some(sh);
                actions
            }
            (Message::Ack(ack), Some(sh)) => sh.on_ack(ack, now),
            (m, _) => panic!(
                "{}: the active got an unexpected {} from standby {i}",
                self.at(),
                describe(&m)
            ),
        };
        self.run_ship(i, actions);
    }

    // --- the active's driver -------------------------------------------------------------------

    fn send_down(&mut self, i: usize, m: &Message) {
        let frame = encode(m).expect("encode");
        if let Some(s) = self.standbys[i].stream.as_mut() {
            s.to_standby.push_back(frame);
        }
    }

    fn run_ship(&mut self, i: usize, actions: Vec<ShipAction>) {
        let mut queue: VecDeque<ShipAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            if self.standbys[i].stream.is_none() {
                return;
            }
            let d = self
                .active_domain()
                .expect("active up while it has streams");
            let now = self.now();
            let more = match action {
                ShipAction::Send(m) => {
                    self.ev(&format!("ship {i}: {}", describe(&m)));
                    self.send_down(i, &m);
                    Vec::new()
                }
                ShipAction::SendRecords {
                    from,
                    max_records,
                    max_bytes,
                } => match d.read_log(from, max_records, max_bytes) {
                    Err(StoreError::LogTruncated { .. }) => {
                        self.ev(&format!("ship {i}: {from} truncated"));
                        self.shipper(i).log_truncated()
                    }
                    Err(e) => panic!("{}: the active cannot read its log: {e}", self.at()),
                    Ok(entries) => {
                        let Some(last) = entries.last().map(|e| e.record.lsn) else {
                            self.ev(&format!("ship {i}: nothing from {from}"));
                            continue;
                        };
                        assert!(
                            entries.len() <= max_records,
                            "{}: read_log gave too much",
                            self.at()
                        );
                        let n = entries.len() as u64;
                        let bytes: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
                        self.ev(&format!("ship {i}: records {from}..={last}"));
                        let m = Message::Records(
                            entries.into_iter().map(|e| RecordBytes(e.bytes)).collect(),
                        );
                        self.send_down(i, &m);
                        self.shipper(i).records_sent(last, n, bytes, now)
                    }
                },
                ShipAction::SendSnapshot => {
                    // While the snapshot streams (long, for a big domain), the operator sees
                    // this status.
                    self.check_status(i);
                    let position = self.send_snapshot(i, &d);
                    self.shipper(i).snapshot_sent(&position, now)
                }
                ShipAction::Close { why } => panic!(
                    "{}: the active closed the stream of standby {i} for no injected fault: {why}",
                    self.at()
                ),
            };
            queue.extend(more);
        }
    }

    fn shipper(&mut self, i: usize) -> &mut Shipper {
        self.standbys[i]
            .stream
            .as_mut()
            .and_then(|s| s.shipper.as_mut())
            .expect("shipper")
    }

    fn send_snapshot(&mut self, i: usize, d: &Domain) -> Position {
        let snap = d.snapshot().unwrap();
        let lsn = snap.position.lsn;
        assert_eq!(
            snap.digest,
            self.history[lsn.0 as usize].1,
            "{}: snapshot digest",
            self.at()
        );
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
        drop(snap);
        self.stats.snapshots_sent += 1;
        self.ev(&format!("ship {i}: snapshot at {lsn}, {} rows", rows.len()));
        self.send_down(i, &Message::SnapshotBegin(header.clone()));
        let total = rows.len() as u64;
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let n = self.rng.usize(1, 8);
            let chunk: Vec<SnapshotItem> = rows.by_ref().take(n).collect();
            self.send_down(i, &Message::SnapshotRows(chunk));
        }
        self.send_down(i, &Message::SnapshotEnd { rows: total });
        header.position
    }

    // --- the standby's driver ------------------------------------------------------------------

    fn send_up(&mut self, i: usize, m: &Message) {
        let frame = encode(m).expect("encode");
        if let Some(s) = self.standbys[i].stream.as_mut() {
            s.to_active.push_back(frame);
        }
    }

    fn run_follow(&mut self, i: usize, actions: Vec<FollowAction>) {
        let mut queue: VecDeque<FollowAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            let now = self.now();
            let d = self.standbys[i].domain.clone().expect("standby open");
            let more = match action {
                FollowAction::Connect => self.connect(i),
                FollowAction::Send(m) => {
                    self.ev(&format!("follow {i}: {}", describe(&m)));
                    self.send_up(i, &m);
                    Vec::new()
                }
                FollowAction::Apply(records) => self.apply(i, &d, records),
                FollowAction::BeginSnapshot {
                    header,
                    archive_after,
                } => {
                    self.ev(&format!(
                        "follow {i}: begin snapshot {} {archive_after:?}",
                        header.position.lsn
                    ));
                    assert_eq!(
                        archive_after,
                        None,
                        "{}: nothing diverges in this simulation",
                        self.at()
                    );
                    let target = ResyncTarget {
                        uid: header.uid,
                        position: header.position.clone(),
                        epoch: header.epoch.clone(),
                        history: header.history.clone(),
                        digest: header.digest,
                    };
                    let r = d
                        .begin_resync(target, archive_after)
                        .unwrap_or_else(|e| panic!("{}: begin_resync: {e}", self.at()));
                    self.standbys[i].resync = Some(r);
                    self.standbys[i].target = Some(header);
                    Vec::new()
                }
                FollowAction::SnapshotRows(rows) => {
                    let at = self.at();
                    let r = self.standbys[i]
                        .resync
                        .as_mut()
                        .unwrap_or_else(|| panic!("{at}: snapshot rows without a snapshot begun"));
                    match r.add(&rows) {
                        Ok(()) => Vec::new(),
                        Err(e) => {
                            // Only an injected corrupt row may be refused, and it changes nothing.
                            let injected =
                                self.standbys[i].stream.as_ref().is_some_and(|s| s.injected);
                            assert!(
                                injected && matches!(e, StoreError::InvalidWrite { .. }),
                                "{at}: standby {i} refused a snapshot row that was not corrupted: {e}"
                            );
                            let before = d.status().unwrap().position;
                            self.standbys[i].resync = None;
                            self.standbys[i].target = None;
                            assert_eq!(
                                d.status().unwrap().position,
                                before,
                                "{at}: a refused snapshot changed the state (invariant 6)"
                            );
                            self.stats.snapshots_refused += 1;
                            self.ev(&format!("follow {i}: snapshot row refused"));
                            self.check_prefix(i, "after a refused snapshot row", true);
                            self.follower(i).apply_failed(&e.to_string(), now)
                        }
                    }
                }
                FollowAction::FinishSnapshot { rows } => self.finish_snapshot(i, &d, rows),
                FollowAction::AbortSnapshot => {
                    self.ev(&format!("follow {i}: abort snapshot"));
                    self.standbys[i].resync = None;
                    self.standbys[i].target = None;
                    Vec::new()
                }
                FollowAction::Close { why } => {
                    self.ev(&format!("follow {i}: close"));
                    self.standby_closes(i, &why);
                    let f = self.follower(i);
                    if f.is_connected() {
                        f.disconnected(now)
                    } else {
                        Vec::new()
                    }
                }
            };
            queue.extend(more);
        }
    }

    fn connect(&mut self, i: usize) -> Vec<FollowAction> {
        let now = self.now();
        let s = &self.standbys[i];
        assert!(
            s.stream.is_none(),
            "{}: connect with a stream open",
            self.at()
        );
        if self.active.domain.is_none() || s.partitioned_until > self.step {
            self.ev(&format!("follow {i}: cannot connect"));
            return self.follower(i).disconnected(now);
        }
        let st = s.domain.as_ref().unwrap().status().unwrap();
        let view = StandbyView {
            uid: st.uid,
            position: st.position,
            epoch: st.epoch,
            history: st.history,
            collision_fork: None,
        };
        self.next_stream += 1;
        self.standbys[i].stream = Some(Stream {
            id: self.next_stream,
            to_standby: VecDeque::new(),
            to_active: VecDeque::new(),
            shipper: None,
            notified: Lsn::ZERO,
            injected: false,
        });
        self.stats.connects += 1;
        self.standbys[i].has_connected = true;
        self.ev(&format!("follow {i}: connected at {}", view.position.lsn));
        self.follower(i).connected(&view)
    }

    fn apply(&mut self, i: usize, d: &Domain, records: Vec<RecordBytes>) -> Vec<FollowAction> {
        let now = self.now();
        let mut last = None;
        let mut expected = d.status().unwrap().position.lsn.next();
        for r in &records {
            match d.apply(&r.0) {
                Ok(pos) => {
                    assert!(
                        !self.injected.contains(&r.0),
                        "{}: standby {i} applied a corrupted record at lsn {} (invariant 4)",
                        self.at(),
                        pos.lsn
                    );
                    assert_eq!(pos.lsn, expected, "{}: applied out of order", self.at());
                    assert_eq!(
                        r.0,
                        self.records[pos.lsn.0 as usize],
                        "{}: standby {i} applied bytes that differ from the active's at lsn {}",
                        self.at(),
                        pos.lsn
                    );
                    self.stats.applied += 1;
                    expected = expected.next();
                    last = Some(pos);
                }
                Err(e) => {
                    let injected = self.injected.contains(&r.0);
                    assert!(
                        injected && matches!(e, StoreError::CorruptRecord { .. }),
                        "{}: standby {i} refused a record that was not corrupted: {e}",
                        self.at()
                    );
                    self.stats.refused_records += 1;
                    self.ev(&format!("follow {i}: refused a corrupt record"));
                    self.check_prefix(i, "after a refused record", false);
                    return self.follower(i).apply_failed(&e.to_string(), now);
                }
            }
        }
        self.check_prefix(i, "after applying", false);
        match last {
            Some(pos) => {
                self.ev(&format!("follow {i}: applied to {}", pos.lsn));
                self.follower(i).applied(&pos, now)
            }
            None => Vec::new(),
        }
    }

    fn finish_snapshot(&mut self, i: usize, d: &Domain, rows: u64) -> Vec<FollowAction> {
        let now = self.now();
        let at = self.at();
        let r = self.standbys[i]
            .resync
            .take()
            .unwrap_or_else(|| panic!("{at}: snapshot end without a snapshot begun"));
        let header = self.standbys[i].target.take().expect("snapshot target");
        assert_eq!(r.rows(), rows, "{at}: rows added");
        let before = d.status().unwrap().position;
        match r.finish() {
            Ok(pos) => {
                assert_eq!(pos, header.position, "{at}: installed position");
                self.stats.snapshots_installed += 1;
                self.ev(&format!("follow {i}: snapshot installed at {}", pos.lsn));
                self.check_prefix(i, "after a snapshot", true);
                self.follower(i).snapshot_installed(&pos, now)
            }
            Err(e) => {
                let injected = self.standbys[i].stream.as_ref().is_some_and(|s| s.injected);
                assert!(
                    injected && matches!(e, StoreError::SnapshotMismatch { .. }),
                    "{at}: standby {i} refused a snapshot that was not corrupted: {e}"
                );
                assert_eq!(
                    d.status().unwrap().position,
                    before,
                    "{at}: a refused snapshot changed the state (invariant 6)"
                );
                self.stats.snapshots_refused += 1;
                self.ev(&format!("follow {i}: snapshot refused"));
                self.check_prefix(i, "after a refused snapshot", true);
                self.follower(i).apply_failed(&e.to_string(), now)
            }
        }
    }

    /// Standby `i` ends its stream. Sometimes gracefully (what it sent still arrives, then the
    /// active sees the end), sometimes abruptly (like a crash right after).
    fn standby_closes(&mut self, i: usize, why: &str) {
        let Some(mut stream) = self.standbys[i].stream.take() else {
            return;
        };
        assert!(
            stream.injected,
            "{}: standby {i} closed its stream for no injected fault: {why}",
            self.at()
        );
        self.standbys[i].resync = None;
        self.standbys[i].target = None;
        stream.to_standby.clear();
        if self.rng.chance(0.5) && stream.shipper.is_some() && self.active.domain.is_some() {
            // Graceful: the active reads what is left; what it sends back is dropped.
            let left: Vec<Vec<u8>> = stream.to_active.drain(..).collect();
            self.standbys[i].stream = Some(stream);
            for frame in left {
                if self.standbys[i].stream.is_none() {
                    break;
                }
                self.active_receives(i, &frame);
                if let Some(s) = self.standbys[i].stream.as_mut() {
                    s.to_standby.clear();
                }
            }
            if let Some(mut s) = self.standbys[i].stream.take() {
                if let Some(sh) = s.shipper.as_mut() {
                    sh.disconnected();
                }
            }
        } else {
            self.stats.lost_in_flight += stream.to_active.len() as u64;
        }
    }

    // --- the end -------------------------------------------------------------------------------

    fn converged(&self) -> bool {
        let now = self.now();
        let Some(a) = self.active.domain.as_ref() else {
            return false;
        };
        let target = a.status().unwrap().position;
        self.standbys.iter().all(|s| {
            let at_target = s
                .domain
                .as_ref()
                .is_some_and(|d| d.status().unwrap().position == target);
            let follower_synced = s
                .follower
                .as_ref()
                .is_some_and(|f| f.status().0 == SyncStatus::Synchronized);
            let shipper_synced = s
                .stream
                .as_ref()
                .and_then(|st| st.shipper.as_ref())
                .is_some_and(|sh| sh.status(now).0 == SyncStatus::Synchronized);
            at_target && follower_synced && shipper_synced
        })
    }

    fn check_end(&self) {
        let a = self.active.domain.as_ref().unwrap();
        let sa = a.status().unwrap();
        let va = a.verify().unwrap();
        assert!(
            va.is_clean(),
            "{}: active verify: {:?}",
            self.at(),
            va.faults
        );
        assert_eq!(sa.position, self.history.last().unwrap().0, "{}", self.at());
        for (i, s) in self.standbys.iter().enumerate() {
            let d = s.domain.as_ref().unwrap();
            let ss = d.status().unwrap();
            // Invariant 3: same lsn, same position (chain) and same content.
            assert_eq!(
                ss.position,
                sa.position,
                "{}: standby {i} position",
                self.at()
            );
            assert_eq!(ss.digest, sa.digest, "{}: standby {i} digest", self.at());
            assert_eq!(ss.uid, sa.uid, "{}: standby {i} uid", self.at());
            assert_eq!(ss.role, Role::Standby, "{}", self.at());
            let v = d.verify().unwrap();
            assert!(
                v.is_clean(),
                "{}: standby {i} verify: {:?}",
                self.at(),
                v.faults
            );
            // Exactly once, in order: the standby's log is the active's, byte for byte.
            let mine = d.read_log(ss.log_start, usize::MAX, usize::MAX).unwrap();
            let mut expected = ss.log_start;
            for e in &mine {
                assert_eq!(e.record.lsn, expected, "{}: standby {i} log gap", self.at());
                assert_eq!(
                    e.bytes,
                    self.records[expected.0 as usize],
                    "{}: standby {i} log differs at lsn {expected}",
                    self.at()
                );
                expected = expected.next();
            }
            assert_eq!(
                expected,
                ss.position.lsn.next(),
                "{}: standby {i} log end",
                self.at()
            );
            let from = sa.log_start.max(ss.log_start);
            if from <= sa.position.lsn {
                let theirs = a.read_log(from, usize::MAX, usize::MAX).unwrap();
                let ours = d.read_log(from, usize::MAX, usize::MAX).unwrap();
                assert!(
                    theirs
                        .iter()
                        .map(|e| &e.bytes)
                        .eq(ours.iter().map(|e| &e.bytes)),
                    "{}: standby {i} log differs from the active's",
                    self.at()
                );
            }
            // Both sides agree the standby is synchronized.
            let f = s.follower.as_ref().unwrap();
            assert_eq!(f.status().0, SyncStatus::Synchronized, "{}", self.at());
            let sh = s
                .stream
                .as_ref()
                .and_then(|st| st.shipper.as_ref())
                .unwrap();
            assert_eq!(
                sh.status(self.now()).0,
                SyncStatus::Synchronized,
                "{}",
                self.at()
            );
            assert_eq!(sh.ack().applied, sa.position.lsn, "{}", self.at());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Runs one seed (keeping its events if asked); a failure names the seed and how to replay it.
fn run_seed(seed: u64, keep_events: bool) -> Outcome {
    run_seed_with(seed, keep_events, "replication_survives", |_| {})
}

/// [`run_seed`] with the seed's fault rates adjusted; `test` goes in the replay hint.
fn run_seed_with(seed: u64, keep_events: bool, test: &str, tune: impl Fn(&mut Faults)) -> Outcome {
    let run = || {
        let mut sim = Sim::new(seed);
        tune(&mut sim.faults);
        if keep_events {
            sim.trace.keep = Some(Vec::new());
        }
        sim.run()
    };
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

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// `DOMSYNC_SIM_SEED` alone, or the first `DOMSYNC_SIM_SEEDS` (default 200).
fn seeds() -> Vec<u64> {
    match env_u64("DOMSYNC_SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("DOMSYNC_SIM_SEEDS").unwrap_or(200)).collect(),
    }
}

#[test]
fn replication_survives_partitions_loss_crashes_and_corruption() {
    let seeds = seeds();
    let started = Instant::now();
    let mut total = Stats::default();
    for &seed in &seeds {
        total.add(&run_seed(seed, false).stats);
    }
    eprintln!(
        "sim: {} seeds in {:.2} s: {} steps, {} writes, {} records applied, {} truncations, \
         {} snapshots sent / {} installed / {} refused, {} corruptions injected \
         ({} frames, {} records, {} snapshot rows, {} upstream) with {} corrupt records refused, \
         {} cuts, {} partitions, {} standby crashes ({} mid-snapshot, {} half-built files removed), \
         {} active crashes, {} connects, {} frames lost in flight",
        total.seeds,
        started.elapsed().as_secs_f64(),
        total.steps,
        total.writes,
        total.applied,
        total.truncations,
        total.snapshots_sent,
        total.snapshots_installed,
        total.snapshots_refused,
        total.corruptions(),
        total.corrupt_frames,
        total.corrupt_records,
        total.corrupt_rows,
        total.corrupt_up,
        total.refused_records,
        total.cuts,
        total.partitions,
        total.standby_crashes,
        total.mid_snapshot_crashes,
        total.half_built_removed,
        total.active_crashes,
        total.connects,
        total.lost_in_flight,
    );
    if seeds.len() >= 100 {
        // The suite must exercise what it claims to.
        assert!(total.snapshots_installed > 0, "no snapshot installed");
        assert!(total.truncations > 0, "no truncation");
        assert!(total.refused_records > 0, "no corrupt record refused");
        assert!(total.snapshots_refused > 0, "no corrupt snapshot refused");
        assert!(total.half_built_removed > 0, "no half-built file removed");
        assert!(total.mid_snapshot_crashes > 0, "no crash mid-snapshot");
        assert!(total.cuts > 0 && total.partitions > 0, "no network fault");
        assert!(
            total.standby_crashes > 0 && total.active_crashes > 0,
            "no crash"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 17, 4242] {
        let first = run_seed(seed, true);
        let second = run_seed(seed, true);
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
        assert!(first.stats.writes > 0);
    }
}

/// A snapshot row whose policy content no longer matches the SHA-256 in its info is refused
/// like a corrupt user value (invariant 4): the content digest covers the policy's info row,
/// and `Resync::add` checks the content against it.
#[test]
fn a_snapshot_with_a_corrupt_policy_package_is_refused() {
    for seed in seeds() {
        let test = "a_snapshot_with_a_corrupt_policy_package";
        run_seed_with(seed, false, test, |f| {
            f.corrupt_row = f.corrupt_row.max(0.05);
            f.corrupt_policy_content = true;
        });
    }
}
