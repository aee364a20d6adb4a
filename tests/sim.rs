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

mod sim_support;

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync_proto::model::{SnapshotItem, StateDigest};
use domsync_proto::repl::{decode_message, encode_message};
use domsync_proto::repl::{
    Backoff, FollowAction, Follower, Message, RecordBytes, ShipAction, ShipConfig, Shipper,
    SnapshotHeader, SyncStatus,
};
use domsync_store::{Domain, Resync, Store, StoreError};
use sim_support::{
    assert_replayed, counters, describe, local_view, open_store, resync_target, run_replayable,
    run_seeds, seeds, snapshot_messages, standby_view, take_snapshot, temp_root, Clock, Rng,
    SimDraws,
};

/// Salt of this simulation's seeds.
const RNG_SALT: u64 = 0xE703_7ED1_A0B4_28DB;
/// Steps allowed for the standbys to catch up once faults stop.
const SETTLE_STEPS: u64 = 4000;

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

counters! {
    /// Counters of a run (summed over seeds for the summary line).
    struct Stats {
        seeds,
        steps,
        writes,
        applied,
        truncations,
        snapshots_sent,
        snapshots_installed,
        snapshots_refused,
        cuts,
        partitions,
        standby_crashes,
        half_built_removed,
        mid_snapshot_crashes,
        active_crashes,
        connects,
        corrupt_frames,
        corrupt_records,
        corrupt_rows,
        corrupt_up,
        refused_records,
        lost_in_flight,
    }
}

impl Stats {
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
type Outcome = sim_support::Outcome<Stats>;

struct Sim {
    clock: Clock,
    rng: Rng,
    stats: Stats,
    faults: Faults,
    ship: ShipConfig,
    backoff: Backoff,
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
    _root: tempfile::TempDir,
}

fn resync_file(dir: &Path, id: &DomainId) -> PathBuf {
    dir.join("domains").join(format!(".{id}.resync.redb"))
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let clock = Clock::new(seed);
        let mut rng = Rng::new(seed, RNG_SALT);
        let root = temp_root("domsync-sim-");
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
        let (ship, backoff) = rng.ship_and_backoff();
        let base = clock.base;
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
            clock,
            rng,
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            faults,
            ship,
            backoff,
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
            _root: root,
        };
        let tuning = format!("{:?} {:?} {:?}", sim.faults, sim.ship, sim.backoff);
        sim.clock.ev(&tuning);
        sim
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
        while self.stats.writes < writes && self.clock.step < max_steps {
            self.step(true);
        }
        self.clock.ev("settle");
        // Faults off: heal, restart what is down, let the standbys catch up.
        for i in 0..self.standbys.len() {
            self.standbys[i].partitioned_until = 0;
        }
        let settle_end = self.clock.step + SETTLE_STEPS;
        loop {
            self.step(false);
            if self.converged() {
                break;
            }
            assert!(
                self.clock.step < settle_end,
                "{}: standbys did not catch up with the active at lsn {} within {SETTLE_STEPS} \
                 fault-free steps: {}",
                self.clock.at(),
                self.active_lsn(),
                self.describe_standbys()
            );
        }
        self.check_end();
        self.stats.steps = self.clock.step;
        self.clock.outcome(self.stats.clone())
    }

    fn step(&mut self, faults: bool) {
        self.clock.tick();
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
        let now = self.clock.now();
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

    fn write(&mut self) {
        let Some(d) = self.active_domain() else {
            return;
        };
        let n = if self.rng.chance(0.15) {
            self.rng.usize(2, 4)
        } else {
            1
        };
        let ops: Vec<Op> = (0..n).map(|_| self.rng.op()).collect();
        let pos = d
            .write(ops)
            .unwrap_or_else(|e| panic!("{}: write refused: {e}", self.clock.at()));
        assert_eq!(pos.lsn, self.active_lsn().next(), "{}", self.clock.at());
        let st = d.status().unwrap();
        assert_eq!(st.position, pos, "{}", self.clock.at());
        let bytes = d
            .read_log(pos.lsn, 1, usize::MAX)
            .unwrap_or_else(|e| panic!("{}: read back lsn {}: {e}", self.clock.at(), pos.lsn))
            .remove(0)
            .bytes;
        self.history.push((pos.clone(), st.digest));
        self.records.push(bytes);
        self.stats.writes += 1;
        self.clock.ev(&format!("write {}", pos.lsn));
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
            .unwrap_or_else(|e| panic!("{}: truncate: {e}", self.clock.at()));
        self.stats.truncations += 1;
        self.clock.ev(&format!("truncate below {below} -> {start}"));
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
                self.clock.ev(&format!("cut {i}"));
                self.reset_stream(i);
            }
            if self.rng.chance(self.faults.partition) {
                let steps = self.rng.range(3, 120);
                self.stats.partitions += 1;
                self.clock.ev(&format!("partition {i} for {steps}"));
                self.standbys[i].partitioned_until = self.clock.step + steps;
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
            self.clock.ev(&format!("stream {} of {i} lost", s.id));
        }
        let now = self.clock.now();
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
        self.clock.ev(&format!(
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
        self.standbys[i].down_until = Some(self.clock.step + steps);
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
        self.clock.ev(&format!("crash active for {steps}"));
        for i in 0..self.standbys.len() {
            self.reset_stream(i);
        }
        drop(self.active.domain.take());
        self.active.store.take().expect("active store").close();
        self.active.down_until = self.clock.step + steps;
    }

    fn restarts(&mut self, all: bool) {
        if self.active.domain.is_none() && (all || self.clock.step >= self.active.down_until) {
            self.clock.ev("restart active");
            let store = open_store(&self.active.dir, &NodeId::new("a").unwrap());
            let d = store.domain(&self.id).expect("reopen the active's domain");
            let st = d.status().unwrap();
            let (pos, digest) = self.history.last().unwrap();
            assert_eq!(
                &st.position,
                pos,
                "{}: active lost a commit",
                self.clock.at()
            );
            assert_eq!(&st.digest, digest, "{}", self.clock.at());
            assert_eq!(st.role, Role::Active, "{}", self.clock.at());
            let v = d.verify().unwrap();
            assert!(
                v.is_clean(),
                "{}: active verify: {:?}",
                self.clock.at(),
                v.faults
            );
            self.active.store = Some(store);
            self.active.domain = Some(d);
        }
        for i in 0..self.standbys.len() {
            let due = match self.standbys[i].down_until {
                Some(t) => all || self.clock.step >= t,
                None => false,
            };
            if due {
                self.restart_standby(i);
            }
        }
    }

    fn restart_standby(&mut self, i: usize) {
        self.clock.ev(&format!("restart standby {i}"));
        let now = self.clock.now();
        let s = &mut self.standbys[i];
        s.down_until = None;
        if s.store.is_none() {
            let half_built = resync_file(&s.dir, &self.id);
            let had_half_built = half_built.exists();
            let store = open_store(&s.dir, &s.node);
            assert!(
                !half_built.exists(),
                "seed {}: the half-built resync file survived reopening",
                self.clock.seed
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
                self.clock.seed
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
            self.clock.at(),
            self.standbys[i].node,
            self.active_lsn()
        );
        let (pos, digest) = &self.history[lsn.0 as usize];
        if lsn > Lsn::ZERO {
            assert_eq!(
                &st.position,
                pos,
                "{}: standby {} {when}: position differs from the active's at lsn {lsn}",
                self.clock.at(),
                self.standbys[i].node
            );
        }
        assert_eq!(
            &st.digest,
            digest,
            "{}: standby {} {when}: content digest differs from the active's at lsn {lsn} \
             (invariant 3)",
            self.clock.at(),
            self.standbys[i].node
        );
        if verify {
            let v = d.verify().unwrap();
            assert!(
                v.is_clean(),
                "{}: standby {} {when}: verify: {:?}",
                self.clock.at(),
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
        let now = self.clock.now();
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
        let now = self.clock.now();
        let wall = self.clock.wall_micros();
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
                    .map(|sh| sh.status(self.clock.now()).0),
            ),
        ];
        for (side, status) in statuses {
            let Some(status) = status else { continue };
            assert!(
                st.uid.is_none() || status != SyncStatus::NeverSynchronized,
                "{}: the {side} reports standby {i} NeverSynchronized, but it holds the domain \
                 at lsn {}",
                self.clock.at(),
                st.position.lsn
            );
            assert!(
                !matches!(
                    status,
                    SyncStatus::Advanced { .. } | SyncStatus::Collision { .. }
                ),
                "{}: the {side} reports standby {i} {status}: nothing diverges here",
                self.clock.at()
            );
        }
        if let Some(x) = s.stream.as_ref() {
            if let Some(sh) = x.shipper.as_ref() {
                if sh.status(self.clock.now()).0 == SyncStatus::Synchronized {
                    assert!(
                        st.position.lsn >= x.notified,
                        "{}: the shipper reports standby {i} Synchronized at lsn {} but the \
                         active committed {}",
                        self.clock.at(),
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
            let now = self.clock.now();
            let actions = match decode_message(&frame) {
                Ok(m) => {
                    self.clock.ev(&format!("{i} <- {}", describe(&m)));
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
                    self.clock.ev(&format!("{i} <- undecodable"));
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
            self.clock.ev(&format!("corrupt a frame to {i}"));
            self.mark_injected(i);
            return frame;
        }
        let record = self.rng.chance(self.faults.corrupt_record);
        let row = self.rng.chance(self.faults.corrupt_row);
        if !record && !row {
            return frame;
        }
        match decode_message(&frame) {
            Ok(Message::Records(mut records)) if record && !records.is_empty() => {
                let r = self.rng.below(records.len() as u64) as usize;
                let bytes = &mut records[r].0;
                let at = self.rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.rng.below(8);
                self.injected.insert(bytes.clone());
                self.stats.corrupt_records += 1;
                self.clock.ev(&format!("corrupt record {r} to {i}"));
                self.mark_injected(i);
                encode_message(&Message::Records(records)).unwrap()
            }
            Ok(Message::SnapshotRows(mut rows)) if row => {
                let policy = self.faults.corrupt_policy_content;
                let value = rows.iter_mut().find_map(|r| match r {
                    SnapshotItem::Kv { value, .. } | SnapshotItem::KvAt { value, .. }
                        if !policy =>
                    {
                        Some(value)
                    }
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
                self.clock.ev(&format!("corrupt snapshot row to {i}"));
                self.mark_injected(i);
                encode_message(&Message::SnapshotRows(rows)).unwrap()
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
                self.clock.ev(&format!("corrupt a frame from {i}"));
            }
            self.active_receives(i, &frame);
        }
    }

    /// The active reads one frame from standby `i`'s stream.
    fn active_receives(&mut self, i: usize, frame: &[u8]) {
        let now = self.clock.now();
        let m = match decode_message(frame) {
            Ok(m) => m,
            Err(_) => {
                // A decode error ends the stream (invariant 8).
                self.clock.ev(&format!("{i} -> undecodable: reset"));
                self.reset_stream(i);
                return;
            }
        };
        self.clock.ev(&format!("{i} -> {}", describe(&m)));
        let d = self.active_domain().expect("a stream to a crashed active");
        let node = self.standbys[i].node.clone();
        let ship = self.ship;
        let stream = self.standbys[i].stream.as_mut().expect("stream");
        let actions = match (m, stream.shipper.as_mut()) {
            (Message::Follow(follow), None) => {
                let st = d.status().unwrap();
                let view = local_view(&NodeId::new("a").unwrap(), &st);
                stream.notified = view.position.lsn;
                let mut sh = Shipper::new(node, ship, now);
                let actions = sh.on_follow(&follow, &view, |l| d.chain_at(l).ok().flatten(), now);
                stream.shipper = Some(sh);
                actions
            }
            (Message::Ack(ack), Some(sh)) => sh.on_ack(ack, now),
            (m, _) => panic!(
                "{}: the active got an unexpected {} from standby {i}",
                self.clock.at(),
                describe(&m)
            ),
        };
        self.run_ship(i, actions);
    }

    // --- the active's driver -------------------------------------------------------------------

    fn send_down(&mut self, i: usize, m: &Message) {
        let frame = encode_message(m).expect("encode");
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
            let now = self.clock.now();
            let more = match action {
                ShipAction::Send(m) => {
                    self.clock.ev(&format!("ship {i}: {}", describe(&m)));
                    self.send_down(i, &m);
                    Vec::new()
                }
                ShipAction::SendRecords {
                    from,
                    max_records,
                    max_bytes,
                } => match d.read_log(from, max_records, max_bytes) {
                    Err(StoreError::LogTruncated { .. }) => {
                        self.clock.ev(&format!("ship {i}: {from} truncated"));
                        self.shipper(i).log_truncated()
                    }
                    Err(e) => panic!("{}: the active cannot read its log: {e}", self.clock.at()),
                    Ok(entries) => {
                        let Some(last) = entries.last().map(|e| e.record.lsn) else {
                            self.clock.ev(&format!("ship {i}: nothing from {from}"));
                            continue;
                        };
                        assert!(
                            entries.len() <= max_records,
                            "{}: read_log gave too much",
                            self.clock.at()
                        );
                        let n = entries.len() as u64;
                        let bytes: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
                        self.clock.ev(&format!("ship {i}: records {from}..={last}"));
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
                    self.clock.at()
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
        let (header, rows) = take_snapshot(d);
        let lsn = header.position.lsn;
        assert_eq!(
            header.digest,
            self.history[lsn.0 as usize].1,
            "{}: snapshot digest",
            self.clock.at()
        );
        self.stats.snapshots_sent += 1;
        self.clock
            .ev(&format!("ship {i}: snapshot at {lsn}, {} rows", rows.len()));
        let position = header.position.clone();
        for m in snapshot_messages(&mut self.rng, header, rows) {
            self.send_down(i, &m);
        }
        position
    }

    // --- the standby's driver ------------------------------------------------------------------

    fn send_up(&mut self, i: usize, m: &Message) {
        let frame = encode_message(m).expect("encode");
        if let Some(s) = self.standbys[i].stream.as_mut() {
            s.to_active.push_back(frame);
        }
    }

    fn run_follow(&mut self, i: usize, actions: Vec<FollowAction>) {
        let mut queue: VecDeque<FollowAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            let now = self.clock.now();
            let d = self.standbys[i].domain.clone().expect("standby open");
            let more = match action {
                FollowAction::Connect => self.connect(i),
                FollowAction::Send(m) => {
                    self.clock.ev(&format!("follow {i}: {}", describe(&m)));
                    self.send_up(i, &m);
                    Vec::new()
                }
                FollowAction::Apply(records) => self.apply(i, &d, records),
                FollowAction::BeginSnapshot {
                    header,
                    archive_after,
                } => {
                    self.clock.ev(&format!(
                        "follow {i}: begin snapshot {} {archive_after:?}",
                        header.position.lsn
                    ));
                    assert_eq!(
                        archive_after,
                        None,
                        "{}: nothing diverges in this simulation",
                        self.clock.at()
                    );
                    let r = d
                        .begin_resync(resync_target(&header), archive_after)
                        .unwrap_or_else(|e| panic!("{}: begin_resync: {e}", self.clock.at()));
                    self.standbys[i].resync = Some(r);
                    self.standbys[i].target = Some(header);
                    Vec::new()
                }
                FollowAction::SnapshotRows(rows) => {
                    let at = self.clock.at();
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
                            self.clock.ev(&format!("follow {i}: snapshot row refused"));
                            self.check_prefix(i, "after a refused snapshot row", true);
                            self.follower(i).apply_failed(&e.to_string(), now)
                        }
                    }
                }
                FollowAction::FinishSnapshot { rows } => self.finish_snapshot(i, &d, rows),
                FollowAction::AbortSnapshot => {
                    self.clock.ev(&format!("follow {i}: abort snapshot"));
                    self.standbys[i].resync = None;
                    self.standbys[i].target = None;
                    Vec::new()
                }
                FollowAction::Close { why } => {
                    self.clock.ev(&format!("follow {i}: close"));
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
        let now = self.clock.now();
        let s = &self.standbys[i];
        assert!(
            s.stream.is_none(),
            "{}: connect with a stream open",
            self.clock.at()
        );
        if self.active.domain.is_none() || s.partitioned_until > self.clock.step {
            self.clock.ev(&format!("follow {i}: cannot connect"));
            return self.follower(i).disconnected(now);
        }
        let st = s.domain.as_ref().unwrap().status().unwrap();
        let view = standby_view(st, None);
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
        self.clock
            .ev(&format!("follow {i}: connected at {}", view.position.lsn));
        self.follower(i).connected(&view)
    }

    fn apply(&mut self, i: usize, d: &Domain, records: Vec<RecordBytes>) -> Vec<FollowAction> {
        let now = self.clock.now();
        let mut last = None;
        let mut expected = d.status().unwrap().position.lsn.next();
        for r in &records {
            match d.apply(&r.0) {
                Ok(pos) => {
                    assert!(
                        !self.injected.contains(&r.0),
                        "{}: standby {i} applied a corrupted record at lsn {} (invariant 4)",
                        self.clock.at(),
                        pos.lsn
                    );
                    assert_eq!(
                        pos.lsn,
                        expected,
                        "{}: applied out of order",
                        self.clock.at()
                    );
                    assert_eq!(
                        r.0,
                        self.records[pos.lsn.0 as usize],
                        "{}: standby {i} applied bytes that differ from the active's at lsn {}",
                        self.clock.at(),
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
                        self.clock.at()
                    );
                    self.stats.refused_records += 1;
                    self.clock
                        .ev(&format!("follow {i}: refused a corrupt record"));
                    self.check_prefix(i, "after a refused record", false);
                    return self.follower(i).apply_failed(&e.to_string(), now);
                }
            }
        }
        self.check_prefix(i, "after applying", false);
        match last {
            Some(pos) => {
                self.clock
                    .ev(&format!("follow {i}: applied to {}", pos.lsn));
                self.follower(i).applied(&pos, now)
            }
            None => Vec::new(),
        }
    }

    fn finish_snapshot(&mut self, i: usize, d: &Domain, rows: u64) -> Vec<FollowAction> {
        let now = self.clock.now();
        let at = self.clock.at();
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
                self.clock
                    .ev(&format!("follow {i}: snapshot installed at {}", pos.lsn));
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
                self.clock.ev(&format!("follow {i}: snapshot refused"));
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
            self.clock.at()
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
        let now = self.clock.now();
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
            self.clock.at(),
            va.faults
        );
        assert_eq!(
            sa.position,
            self.history.last().unwrap().0,
            "{}",
            self.clock.at()
        );
        for (i, s) in self.standbys.iter().enumerate() {
            let d = s.domain.as_ref().unwrap();
            let ss = d.status().unwrap();
            // Invariant 3: same lsn, same position (chain) and same content.
            assert_eq!(
                ss.position,
                sa.position,
                "{}: standby {i} position",
                self.clock.at()
            );
            assert_eq!(
                ss.digest,
                sa.digest,
                "{}: standby {i} digest",
                self.clock.at()
            );
            assert_eq!(ss.uid, sa.uid, "{}: standby {i} uid", self.clock.at());
            assert_eq!(ss.role, Role::Standby, "{}", self.clock.at());
            let v = d.verify().unwrap();
            assert!(
                v.is_clean(),
                "{}: standby {i} verify: {:?}",
                self.clock.at(),
                v.faults
            );
            // Exactly once, in order: the standby's log is the active's, byte for byte.
            let mine = d.read_log(ss.log_start, usize::MAX, usize::MAX).unwrap();
            let mut expected = ss.log_start;
            for e in &mine {
                assert_eq!(
                    e.record.lsn,
                    expected,
                    "{}: standby {i} log gap",
                    self.clock.at()
                );
                assert_eq!(
                    e.bytes,
                    self.records[expected.0 as usize],
                    "{}: standby {i} log differs at lsn {expected}",
                    self.clock.at()
                );
                expected = expected.next();
            }
            assert_eq!(
                expected,
                ss.position.lsn.next(),
                "{}: standby {i} log end",
                self.clock.at()
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
                    self.clock.at()
                );
            }
            // Both sides agree the standby is synchronized.
            let f = s.follower.as_ref().unwrap();
            assert_eq!(
                f.status().0,
                SyncStatus::Synchronized,
                "{}",
                self.clock.at()
            );
            let sh = s
                .stream
                .as_ref()
                .and_then(|st| st.shipper.as_ref())
                .unwrap();
            assert_eq!(
                sh.status(self.clock.now()).0,
                SyncStatus::Synchronized,
                "{}",
                self.clock.at()
            );
            assert_eq!(sh.ack().applied, sa.position.lsn, "{}", self.clock.at());
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
    run_replayable(seed, test, || {
        let mut sim = Sim::new(seed);
        tune(&mut sim.faults);
        if keep_events {
            sim.clock.trace.keep = Some(Vec::new());
        }
        sim.run()
    })
}

#[test]
fn replication_survives_partitions_loss_crashes_and_corruption() {
    let seeds = seeds();
    let (total, secs) = run_seeds(&seeds, |seed| run_seed(seed, false).stats);
    eprintln!(
        "sim: {} seeds in {:.2} s: {} steps, {} writes, {} records applied, {} truncations, \
         {} snapshots sent / {} installed / {} refused, {} corruptions injected \
         ({} frames, {} records, {} snapshot rows, {} upstream) with {} corrupt records refused, \
         {} cuts, {} partitions, {} standby crashes ({} mid-snapshot, {} half-built files removed), \
         {} active crashes, {} connects, {} frames lost in flight",
        total.seeds,
        secs,
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
        assert_replayed(seed, &first, &second);
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
