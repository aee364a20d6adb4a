//! Deterministic simulation of role changes (DESIGN.md §4, §6, §7): one domain replicated on
//! three nodes `a`, `b` and `c`, each with a real [`Store`] and the shipped sans-IO core:
//! [`Shipper`], [`Follower`], [`decide`] for replication and [`Roles`] (the role protocol:
//! promotion with its guard and fencing rounds, switchover and its failure path, hand-over
//! acceptance, probe answers, step-down). This file only executes their actions, as
//! `crates/node` does, over an in-memory network, on the test thread, with simulated time: a run
//! is a function of its seed.
//!
//! `a` creates the domain and starts active; `b` and `c` follow it. At random times:
//! - writes on whichever node is active (and stray writes on the others, which must be
//!   refused), acknowledged with durability `standby`: once one standby's durable ack covers
//!   them (what releases a writer in `Node::write`); writes made while the active is cut off
//!   are committed locally and never acknowledged;
//! - planned switchovers and manual promotions (forced or not, of a standby that lost its
//!   active or of one that still hears it), started as operator commands on the node's
//!   [`Roles`]; probes, hand-overs and their answers travel as control messages that are
//!   delayed, reordered, duplicated, lost on cut links and lost when sent on a cached
//!   connection to a node that restarted since (a stale connection: only a fresh one
//!   reaches it); the `TookOver` answer of a hand-over is sometimes lost;
//! - epoch announcements of the active to standbys that do not follow it, and the answers to
//!   them (a fenced standby's answer makes a superseded active step down);
//! - hostile but authenticated peers: a node `x` that is no replica, or a replica that is not
//!   the followed active, sending probes with epochs, hand-overs, `Follow`s with a higher
//!   epoch, or an epoch with term `u64::MAX`; the target's role, epoch and fence must not move;
//! - healing: a node that learns of a higher epoch steps down (its role machine decides) and
//!   follows the epoch's node; its records after the fork point go to the collision archive
//!   (`Answer::Rewind`, `begin_resync` with `archive_after`) and it resyncs;
//! - an operator inspects collision archives, re-applies archived records on the active as
//!   new writes and discards them, or discards them outright;
//! - faults: stream cuts, partitions (one node isolated or one link cut) lasting random
//!   steps, crashes of any node (store closed and reopened; a node that was active comes back
//!   active, reading its role from its store; a node that was standby follows the active its
//!   store names).
//!
//! Checked on every step (DESIGN.md §4):
//! 1. single writer: a write succeeds exactly when the simulation's glue serves the node as
//!    active (not while a switchover is under way, never after a demotion: a demoted node's
//!    next write is tried at once and must fail with `NotActive`); each epoch has one writer
//!    and holds one record per lsn;
//! 2. no acknowledged loss: a write acknowledged while its writer was the highest active,
//!    with no forced promotion since it was committed, is never archived and is in the final
//!    state. Only forced promotions are unsafe (checked: the count of unsafe promotions equals
//!    the count of forced ones); what they lose must still be archived (invariant 5). After
//!    every unforced promotion no other replica but the old active is more up to date than
//!    the new active, and none was unreachable;
//! 3. exactly once, in order: every record a standby applies is the record its writer
//!    committed at that lsn, byte for byte, applied in lsn order; after every apply, snapshot
//!    and restart, a replica's position and content digest are those its writer had at that
//!    lsn and epoch;
//! 5. nothing silently dropped: what a resync archives is, on top of what the archive held,
//!    the records on the replica's history after the fork point that it held below its log
//!    start (kept from an earlier resync), in lsn order, then exactly its log after the fork
//!    point; every archived record is a committed one. Records after the fork that the
//!    replica holds only as state (it was resynced from a snapshot past them) are counted: the
//!    end checks that their writer archived them (see `REWIND_ARCHIVES_BELOW_LOG_START`).
//!
//! At the end of every seed, faults off, partitions healed, every node up (and an operator
//! promoting the most advanced standby if no node is active): one active, two standbys at its
//! position, acknowledged by both sides, with equal content digests and uids, `verify()`
//! clean, equal log bytes over the range all three retain, every retained record the one its
//! writer committed; every write ever committed is in the final state or in some node's
//! collision archive, or was discarded by the operator after inspection; a node whose
//! archive holds records reports `Collision` on both sides.
//!
//! `DOMSYNC_SIM_SEEDS=<n>` sets how many seeds run (default 200); `DOMSYNC_SIM_SEED=<n>`
//! replays one seed; `DOMSYNC_SIM_TRACE=1` prints every event. A failing seed is printed with
//! the command that replays it. Runs are reproducible event for event (checked by
//! `a_seed_replays_exactly`); the bytes are not (records carry their wall-clock commit time
//! and the domain uid is random), so nothing in the run depends on them.

// Nodes are indexes into several arrays at once (nodes, names, links, acks).
#![allow(clippy::needless_range_loop)]

mod sim_support;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use domsync_proto::codec::decode_record;
use domsync_proto::model::Heard;
use domsync_proto::model::StateDigest;
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Op, Position, Role};
use domsync_proto::repl::roles::{
    Action, Facts, Input, Outcome as RoleOutcome, PromoteFailure, Roles, StoreCommand,
};
use domsync_proto::repl::{
    decide, Answer, Backoff, Durability, FollowAction, Follower, Message, ProbeAnswer, RecordBytes,
    RejectReason, ShipAction, ShipConfig, Shipper, SnapshotHeader, StandbyView, SyncStatus,
    TakeOver,
};
use domsync_store::{ArchivedRecord, Domain, DomainStatus, Resync, Store, StoreError};
use sim_support::{
    assert_replayed, counters, local_view, open_store, resync_target, run_replayable, run_seeds,
    seeds, snapshot_messages, take_snapshot, temp_root, Clock, Rng, SimDraws,
};

const N: usize = 3;
const NAMES: [&str; N] = ["a", "b", "c"];
/// Salt of this simulation's seeds.
const RNG_SALT: u64 = 0x5DEE_CE66_D1CE_4E5B;
/// Steps allowed to converge once faults stop.
const SETTLE_STEPS: u64 = 6000;
/// Split-brain guard window: an active heard from within it counts as alive.
const GUARD_WINDOW: Duration = Duration::from_millis(1000);
/// An active announces its epoch to silent standbys this often (once a second).
const ANNOUNCE_STEPS: u64 = 100;
/// How long a switchover waits for its target.
const SWITCH_TIMEOUT: Duration = Duration::from_millis(1500);
/// Whether every record written after a rewind's fork point ends in some archive (or the
/// final state) even when the fork is below the rewound replica's log start. A replica
/// resynced from a snapshot holds the records between the fork and its log start only as
/// state. Seed 862 showed how they vanished: `b` wrote 66..=77 in epoch 3@b; `a` got them
/// only as state (snapshot at 75); `b`'s rewind to `a` (fork 77) replaced `b`'s log, the last
/// copy of their bytes, by `a`'s snapshot; then `c` (which held 3@b up to 65) won, and both
/// rewinds to fork 65 were below the log start: nothing to archive. Since the fix a resync
/// keeps the records it held at or below the fork (`held` table, `Resync::finish`) and a
/// later rewind archives those after its fork: the writer of a record always holds its bytes.
/// The simulation asserts it; set this to false to only count such records.
const REWIND_ARCHIVES_BELOW_LOG_START: bool = true;
/// In the settle phase, the operator promotes a standby after this long without an active.
const NO_ACTIVE_STEPS: u64 = 100;

/// What a message is (see [`sim_support::describe`]), a `Follow` with its epoch.
fn describe(m: &Message) -> String {
    match m {
        Message::Follow(f) => format!(
            "follow {} epoch {} uid={}",
            f.position.lsn,
            f.epoch,
            f.uid.is_some()
        ),
        m => sim_support::describe(m),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated world

/// Rates of one seed (probabilities per step, unless noted).
#[derive(Debug, Clone)]
struct Faults {
    /// The operator promotes only when the other standby answers.
    careful: bool,
    write: f64,
    /// A write tried on a random node (refused unless it is active).
    stray_write: f64,
    /// Per stream.
    cut: f64,
    partition: f64,
    /// Per node.
    crash: f64,
    /// An operator tries a promotion of a standby that lost its active.
    promote: f64,
    /// An operator tries a promotion of a standby that still hears its active.
    promote_blind: f64,
    /// Share of promotion attempts that are forced.
    force: f64,
    switchover: f64,
    /// Per switchover hand-over: the `TookOver` answer is lost.
    took_over_lost: f64,
    /// An operator looks at a collision archive.
    resolve: f64,
}

counters! {
    /// Counters of a run (summed over seeds for the summary line).
    struct Stats {
        seeds,
        steps,
        writes,
        acked,
        /// Writes committed and never acknowledged.
        unacked,
        refused_writes,
        applied,
        promotions,
        forced,
        /// Promotions that could lose acknowledged writes (forced, unreachable peer, lost
        /// switchover answer).
        unsafe_promotions,
        guard_refusals,
        switchovers,
        switchovers_failed,
        took_over_lost,
        step_downs,
        announce_step_downs,
        follow_step_downs,
        redirects,
        rewinds,
        snapshots,
        archived,
        reapplied,
        discarded,
        /// Acknowledged writes invariant 2 covers (checked in the final state).
        protected,
        /// Acknowledged writes that ended in an archive (lost to an unsafe promotion).
        acked_archived,
        crashes,
        partitions,
        cuts,
        connects,
        /// Records after a rewind's fork below the replica's log start that it held only as state,
        /// so could not archive (their writer must; see `REWIND_ARCHIVES_BELOW_LOG_START`).
        unarchivable,
        /// Records a rewind archived from below the replica's log start (kept by a resync).
        archived_held,
        /// Of those, records found nowhere at the end (invariant 5 broken by the product).
        lost_unarchived,
        /// A node stepped down to an epoch naming itself and followed itself.
        self_follows,
        /// The operator pointed a stuck standby at the active (settle phase).
        repointed,
        /// Promotions refused by the fencing round (or because a replica was out of reach).
        fence_refusals,
        /// Control messages (probes, hand-overs, answers) lost: cut link, node down, or sent
        /// on a cached connection to a node that restarted since.
        ctl_lost,
        /// Of those, lost on a stale cached connection.
        ctl_stale,
        ctl_duplicated,
        /// Messages from hostile but authenticated peers, each of which changed nothing.
        rogue,
    }
}

/// A record on a rewound replica's history after the fork and below its log start:
/// `(lsn, bytes, marker)`.
type BelowLog = (Lsn, Vec<u8>, u64);

/// One replication stream, opened by a standby's follower to the node it follows: ordered
/// and reliable while it lives.
struct Stream {
    standby: usize,
    server: usize,
    down: VecDeque<Message>,
    up: VecDeque<Message>,
    /// The server's side, once it serves the `Follow` as active.
    shipper: Option<Shipper>,
    /// Latest commit the shipper was told of.
    notified: Lsn,
    /// The server ended its side: the stream ends once what it sent is delivered.
    closing: bool,
}

/// A control message in flight (a probe, a hand-over, or an answer), on its own stream of
/// the connection between two nodes: lost when the link is cut or the receiver is down at
/// delivery, or when it was sent on a cached connection to an earlier incarnation of the
/// receiver (a peer restarted since: the connection looks alive but is dead).
#[derive(Debug, Clone)]
struct Ctl {
    from: usize,
    to: usize,
    at: u64,
    incarnation: u64,
    body: CtlBody,
}

#[derive(Debug, Clone)]
enum CtlBody {
    Probe {
        req: u64,
        epoch: Option<Epoch>,
    },
    ProbeAnswer {
        req: u64,
        answer: Option<ProbeAnswer>,
    },
    /// `lose`: the `TookOver` answer is lost (the hand-over itself happens).
    TakeOver {
        req: u64,
        take: TakeOver,
        lose: bool,
    },
    TookOver {
        req: u64,
        result: Result<Position, String>,
    },
}

/// The operation an operator started on a node, for the checks on its outcome.
#[derive(Debug, Clone)]
struct OpInfo {
    force: bool,
    /// The active the promoted standby followed (it alone may be out of reach).
    followed: Option<usize>,
    why: &'static str,
}

/// The domain served as active on a node (`ActiveDomain` of the glue).
struct Serving {
    /// The epoch it serves in (the one it had before a switchover stopped its writes).
    epoch: Epoch,
    /// Durable lsn each standby acknowledged (what releases writers).
    durable: [Lsn; N],
    /// Writes waiting for a standby's durable ack (indexes into `Sim::writes`).
    pending: Vec<usize>,
    /// A switchover waits for this standby to hold this lsn durably.
    awaiting: Option<(usize, Lsn)>,
    next_announce: u64,
}

struct SimNode {
    id: NodeId,
    dir: PathBuf,
    store: Option<Store>,
    domain: Option<Domain>,
    down_until: u64,
    /// Standby side: the follower, the node it follows and its stream.
    follower: Option<Follower>,
    following: usize,
    stream: Option<u64>,
    resync: Option<Resync>,
    /// The snapshot being built and the records its resync must archive.
    /// The snapshot under way, the log after the fork, and the records on the replica's
    /// history after the fork and below its log start.
    target: Option<(SnapshotHeader, Vec<Vec<u8>>, Vec<BelowLog>)>,
    serving: Option<Serving>,
    /// Highest epoch of another node this node recorded.
    fenced: Option<Epoch>,
    /// The role machine of the domain on this node (the code `crates/node` runs).
    roles: Roles,
    /// Bumped at every restart: connections to an earlier incarnation are dead.
    incarnation: u64,
    /// The epoch the `Follow` of the current stream carried.
    since: Epoch,
    op: Option<OpInfo>,
}

/// A write committed on some node.
#[derive(Debug, Clone)]
struct Write {
    marker: u64,
    node: usize,
    epoch: Epoch,
    lsn: Lsn,
    step: u64,
    acked: bool,
    /// Acknowledged while its writer was the active of the highest epoch.
    acked_on_top: bool,
}

/// A committed record, as its writer left it.
struct Committed {
    bytes: Vec<u8>,
    position: Position,
    digest: StateDigest,
    marker: u64,
    write: usize,
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
    nodes: Vec<SimNode>,
    streams: BTreeMap<u64, Stream>,
    /// Link `i`–`j` is cut until this step.
    cut_until: [[u64; N]; N],
    writes: Vec<Write>,
    /// Every committed record by `(epoch, lsn)`: one writer per epoch, one record per lsn.
    records: HashMap<(Epoch, Lsn), Committed>,
    /// The node that wrote in each epoch.
    writers: BTreeMap<Epoch, usize>,
    next_marker: u64,
    /// Highest epoch any node became active in.
    top: Epoch,
    /// Step of the latest unsafe promotion.
    last_unsafe: Option<u64>,
    /// Markers of archived records the operator discarded without re-applying.
    discarded: BTreeSet<u64>,
    /// Markers of records a rewind dropped because the replica's log no longer held them.
    unarchivable: BTreeSet<u64>,
    /// Settle phase: since when no node is active.
    no_active_since: Option<u64>,
    /// Cached connection `i` → `j`: the incarnation of `j` it reached.
    conns: [[Option<u64>; N]; N],
    /// Control messages in flight.
    ctl: Vec<Ctl>,
    /// While a node handles a peer's request: who asked, and whether the answer is lost.
    replying: Option<(usize, bool)>,
    /// Faults are on (this step).
    faulty: bool,
    _root: tempfile::TempDir,
}

/// `s` without the chain checksums of positions (they depend on the bytes, which carry
/// wall-clock time and a random uid), so that a seed's events replay exactly.
fn scrub(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("chain") {
        out.push_str(&rest[..at]);
        out.push_str("chain _");
        let tail = &rest[at + "chain".len()..];
        let tail = tail.trim_start_matches([':', ' ']);
        rest = tail.trim_start_matches(|c: char| c.is_ascii_hexdigit());
    }
    out.push_str(rest);
    out
}

fn marker_key(marker: u64) -> Vec<u8> {
    format!("u{marker:08}").into_bytes()
}

/// The marker of a write: its `Put` of a `u…` key.
fn marker_of(ops: &[Op]) -> Option<u64> {
    ops.iter().find_map(|op| match op {
        Op::Put { key, .. } if key.first() == Some(&b'u') => {
            std::str::from_utf8(&key[1..]).ok()?.parse().ok()
        }
        _ => None,
    })
}

/// The fork point of the records in an archive (what the glue's `collision_fork` reports).
fn collision_fork(archive: &[ArchivedRecord]) -> Option<Lsn> {
    archive
        .iter()
        .map(|a| Lsn(a.record.lsn.0.saturating_sub(1)))
        .min()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let clock = Clock::new(seed);
        let mut rng = Rng::new(seed, RNG_SALT);
        let root = temp_root("domsync-sim-roles-");
        let id: DomainId = "sim".parse().unwrap();
        let storm = rng.range(1, 3) as f64 / 2.0; // 0.5, 1 or 1.5
                                                  // A third of the seeds have a careful operator: no forced promotion, no promotion
                                                  // while the other standby cannot be reached, no lost switchover answer; invariant 2
                                                  // then covers nearly every acknowledged write.
        let careful = rng.chance(0.34);
        let faults = Faults {
            careful,
            write: 0.05 + rng.below(20) as f64 / 100.0,
            stray_write: 0.02,
            cut: 0.002 * storm,
            partition: 0.004 * storm,
            crash: 0.0015 * storm,
            promote: [0.01, 0.03, 0.1][rng.usize(0, 2)],
            promote_blind: 0.002,
            force: if careful {
                0.0
            } else {
                [0.05, 0.15, 0.4][rng.usize(0, 2)]
            },
            switchover: [0.0, 0.003, 0.01][rng.usize(0, 2)],
            took_over_lost: if careful {
                0.0
            } else {
                [0.0, 0.1, 0.3][rng.usize(0, 2)]
            },
            resolve: 0.01,
        };
        let (ship, backoff) = rng.ship_and_backoff();
        let nodes = NAMES
            .iter()
            .map(|n| {
                let id = NodeId::new(*n).unwrap();
                let dir = root.path().join(n);
                SimNode {
                    store: Some(open_store(&dir, &id)),
                    id,
                    dir,
                    domain: None,
                    down_until: 0,
                    follower: None,
                    following: 0,
                    stream: None,
                    resync: None,
                    target: None,
                    serving: None,
                    fenced: None,
                    roles: Roles::new(NodeId::new(*n).unwrap(), "sim".parse().unwrap()),
                    incarnation: 0,
                    since: Position::empty(NodeId::new(*n).unwrap()).epoch,
                    op: None,
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
            id: id.clone(),
            next_stream: 0,
            nodes,
            streams: BTreeMap::new(),
            cut_until: [[0; N]; N],
            writes: Vec::new(),
            records: HashMap::new(),
            writers: BTreeMap::new(),
            next_marker: 0,
            top: Epoch {
                term: 1,
                node: NodeId::new("a").unwrap(),
            },
            last_unsafe: None,
            discarded: BTreeSet::new(),
            unarchivable: BTreeSet::new(),
            no_active_since: None,
            conns: [[None; N]; N],
            ctl: Vec::new(),
            replying: None,
            faulty: false,
            _root: root,
        };
        let tuning = format!("{:?} {:?} {:?}", sim.faults, sim.ship, sim.backoff);
        sim.clock.ev(&tuning);
        let a = sim.nodes[0].store.as_ref().unwrap().create_domain(&id);
        sim.nodes[0].domain = Some(a.expect("create the domain"));
        sim.serve(0);
        for i in 1..N {
            let d = sim.nodes[i].store.as_ref().unwrap().join_domain(&id);
            sim.nodes[i].domain = Some(d.expect("join the domain"));
            sim.start_following(i, 0);
        }
        sim
    }

    fn name(&self, i: usize) -> &'static str {
        NAMES[i]
    }

    fn index_of(node: &NodeId) -> usize {
        NAMES
            .iter()
            .position(|n| *n == node.as_str())
            .expect("a node of the simulation")
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].domain.is_some()
    }

    fn link_up(&self, i: usize, j: usize) -> bool {
        i != j && self.up(i) && self.up(j) && self.clock.step >= self.cut_until[i][j]
    }

    fn domain(&self, i: usize) -> Domain {
        self.nodes[i]
            .domain
            .clone()
            .unwrap_or_else(|| panic!("{}: node {} is down", self.clock.at(), NAMES[i]))
    }

    fn status(&self, i: usize) -> DomainStatus {
        self.domain(i).status().unwrap()
    }

    // --- the run ---------------------------------------------------------------------------

    fn run(mut self) -> Outcome {
        let steps = self.rng.range(250, 700);
        while self.clock.step < steps {
            self.step(true);
        }
        self.clock.ev("settle");
        self.cut_until = [[0; N]; N];
        let settle_end = self.clock.step + SETTLE_STEPS;
        loop {
            self.step(false);
            if let Some(active) = self.converged() {
                self.check_end(active);
                break;
            }
            assert!(
                self.clock.step < settle_end,
                "{}: the replicas did not converge within {SETTLE_STEPS} fault-free steps: {}",
                self.clock.at(),
                self.describe_nodes()
            );
        }
        self.stats.steps = self.clock.step;
        self.clock.outcome(self.stats.clone())
    }

    fn step(&mut self, faults: bool) {
        self.clock.tick();
        self.faulty = faults;
        if faults {
            self.inject_faults();
        }
        self.restarts(!faults);
        if faults {
            self.operator();
        } else {
            self.ensure_active();
        }
        self.switchovers();
        self.notify_commits();
        self.deliver(faults);
        self.deliver_ctl(faults);
        self.role_timers();
        self.ticks();
        self.announce();
    }

    fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let st = n.domain.as_ref().and_then(|d| d.status().ok());
            let f = n.follower.as_ref().map(|f| {
                (
                    f.status().0,
                    f.is_connected(),
                    f.last_error().map(str::to_owned),
                )
            });
            let _ = write!(
                out,
                "[{} {:?} epoch {:?} at {:?} serving {} busy {:?} follows {} {:?} stream {:?}] ",
                NAMES[i],
                st.as_ref().map(|s| s.role),
                st.as_ref().map(|s| s.epoch.to_string()),
                st.as_ref().map(|s| s.position.lsn),
                n.serving.is_some(),
                n.roles.busy(),
                NAMES[n.following],
                f,
                n.stream
            );
        }
        out
    }

    // --- the node glue: roles ------------------------------------------------------------------

    /// Serves the node's replica as active (`Node::serve_active`): its store must say so.
    fn serve(&mut self, i: usize) {
        let st = self.status(i);
        assert_eq!(
            st.role,
            Role::Active,
            "{}: serve a standby",
            self.clock.at()
        );
        self.stop_following(i);
        self.nodes[i].serving = Some(Serving {
            epoch: st.epoch.clone(),
            durable: [Lsn::ZERO; N],
            pending: Vec::new(),
            awaiting: None,
            next_announce: self.clock.step,
        });
        if st.epoch > self.top {
            self.top = st.epoch.clone();
        }
        self.clock.ev(&format!(
            "{} serves as active in {}",
            self.name(i),
            st.epoch
        ));
    }

    /// Stops serving the node as active: its streams end, its waiting writers are never
    /// acknowledged.
    fn stop_serving(&mut self, i: usize) {
        let Some(sv) = self.nodes[i].serving.take() else {
            return;
        };
        self.stats.unacked += sv.pending.len() as u64;
        let served: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.server == i && s.shipper.is_some())
            .map(|(id, _)| *id)
            .collect();
        for sid in served {
            self.end_stream(sid, "the active stopped serving");
        }
    }

    /// Follows `active` from scratch (`Node::follow`): a new follower, told what the replica
    /// holds.
    fn start_following(&mut self, i: usize, active: usize) {
        self.stop_following(i);
        if i == active {
            // The glue follows whatever node the epoch names, itself included: its follower
            // then never reaches an active, until an operator points it elsewhere.
            self.stats.self_follows += 1;
        }
        let view = self.standby_view(i);
        let mut f = Follower::new(self.id.clone(), self.backoff, self.clock.now());
        f.restore(&view);
        self.nodes[i].follower = Some(f);
        self.nodes[i].following = active;
        self.clock
            .ev(&format!("{} follows {}", self.name(i), self.name(active)));
    }

    /// Stops following (`Node::unfollow`): the stream ends, a snapshot in progress is dropped.
    fn stop_following(&mut self, i: usize) {
        if let Some(sid) = self.nodes[i].stream.take() {
            self.end_stream(sid, "unfollow");
        }
        self.nodes[i].follower = None;
        self.nodes[i].resync = None;
        self.nodes[i].target = None;
    }

    /// What the follower tells the active (`standby_view` of the glue): the highest epoch
    /// recorded, a fence included.
    fn standby_view(&self, i: usize) -> StandbyView {
        let d = self.domain(i);
        let fork = collision_fork(&d.collisions().unwrap());
        let mut view = sim_support::standby_view(d.status().unwrap(), fork);
        view.epoch = view.epoch.max(d.highest_epoch().unwrap());
        view
    }

    /// A write on node `i` must be refused now (invariant 1).
    fn check_refused(&mut self, i: usize, when: &str) {
        let d = self.domain(i);
        let before = d.status().unwrap().position;
        match d.write(vec![Op::Put {
            key: b"fenced".to_vec(),
            value: b"x".to_vec(),
        }]) {
            Err(StoreError::NotActive { .. }) => {}
            other => panic!(
                "{}: node {} {when}: a write was not refused (invariant 1): {other:?}",
                self.clock.at(),
                NAMES[i]
            ),
        }
        assert_eq!(d.status().unwrap().position, before, "{}", self.clock.at());
        self.stats.refused_writes += 1;
    }

    /// How node `p` answers a probe (`Node::probe_answer`).
    fn probe_answer(&self, p: usize) -> ProbeAnswer {
        let st = self.status(p);
        let heard_active = self.nodes[p].follower.as_ref().and_then(|f| {
            let at = f.last_heard()?;
            Some(Heard {
                node: self.nodes[self.nodes[p].following].id.clone(),
                epoch: st.epoch.clone(),
                ago_ms: self.clock.now().saturating_duration_since(at).as_millis() as u64,
            })
        });
        ProbeAnswer {
            role: st.role,
            epoch: st.epoch,
            position: st.position,
            heard_active,
        }
    }

    /// The operator promotes standby `s` (`Node::promote`): the role machine runs the guard
    /// and fencing rounds over the simulated network; its outcome is checked in
    /// [`Sim::role_outcome`].
    fn start_promote(&mut self, s: usize, force: bool, why: &'static str) {
        if !self.up(s)
            || self.nodes[s].serving.is_some()
            || self.nodes[s].follower.is_none()
            || self.nodes[s].roles.busy()
            || self.status(s).uid.is_none()
        {
            return;
        }
        self.nodes[s].op = Some(OpInfo {
            force,
            followed: Some(self.nodes[s].following),
            why,
        });
        self.clock.ev(&format!(
            "operator promotes {} ({why}) force={force}",
            self.name(s)
        ));
        self.drive(
            s,
            Some(Input::Promote {
                force,
                peers: Vec::new(),
                sightings: Vec::new(),
                window: GUARD_WINDOW,
            }),
        );
    }

    /// The operator moves the active role of `i` to `to` (`Node::switchover`).
    fn start_switchover(&mut self, i: usize, to: usize) {
        if self.nodes[i].roles.busy() {
            return;
        }
        self.nodes[i].op = Some(OpInfo {
            force: false,
            followed: None,
            why: "switchover",
        });
        self.clock.ev(&format!(
            "operator: switchover {} -> {}",
            self.name(i),
            self.name(to)
        ));
        let to = self.nodes[to].id.clone();
        self.drive(
            i,
            Some(Input::Switchover {
                to,
                timeout: SWITCH_TIMEOUT,
            }),
        );
    }

    /// A switchover waiting for its target's durable ack is told once it holds the lsn.
    fn switchovers(&mut self) {
        for i in 0..N {
            let Some(sv) = self.nodes[i].serving.as_ref() else {
                continue;
            };
            let Some((p, lsn)) = sv.awaiting else {
                continue;
            };
            if sv.durable[p] >= lsn {
                self.nodes[i].serving.as_mut().unwrap().awaiting = None;
                let peer = self.nodes[p].id.clone();
                self.drive(i, Some(Input::Durable { peer, lsn }));
            }
        }
    }

    /// Epoch announcements (`announce_loop`): an active probes the standbys that do not
    /// follow it with its epoch; a lower active that hears it steps down (its role machine
    /// decides).
    fn announce(&mut self) {
        for i in 0..N {
            let due = self.nodes[i]
                .serving
                .as_ref()
                .is_some_and(|s| self.clock.step >= s.next_announce);
            if !due {
                continue;
            }
            self.nodes[i].serving.as_mut().unwrap().next_announce =
                self.clock.step + ANNOUNCE_STEPS;
            let st = self.status(i);
            if st.role != Role::Active {
                continue;
            }
            for p in (0..N).filter(|p| *p != i) {
                let followed = self.streams.values().any(|s| {
                    s.server == i
                        && s.standby == p
                        && s.shipper.as_ref().is_some_and(|x| !x.is_closed())
                });
                if !followed {
                    let body = CtlBody::Probe {
                        req: 0,
                        epoch: Some(st.epoch.clone()),
                    };
                    // `Node::probe`: first on the cached connection; one that does not answer
                    // (dead since the peer restarted) is dropped and the probe sent again on a
                    // fresh one. Without the retry here, an active whose cached connections went
                    // stale never heard it was superseded (seed 5413 of 10,000 stuck that way).
                    let stale =
                        self.conns[i][p].is_some_and(|inc| inc != self.nodes[p].incarnation);
                    self.send_ctl(i, p, false, body.clone());
                    if stale {
                        self.send_ctl(i, p, true, body);
                    }
                }
            }
        }
    }

    // --- the executor of the role machine (what `crates/node/src/roles/` does) ----------------------

    /// What node `i`'s store and glue say now (`Node::facts`).
    fn facts(&self, i: usize) -> Facts {
        let d = self.domain(i);
        let st = d.status().unwrap();
        let highest = d.highest_epoch().unwrap();
        let me = self.nodes[i].id.clone();
        let followed = self.nodes[i]
            .follower
            .as_ref()
            .map(|_| self.nodes[self.nodes[i].following].id.clone());
        let lag = self.nodes[i].follower.as_ref().map(|f| {
            let active = self.nodes[self.nodes[i].following].id.clone();
            match f.status().0 {
                SyncStatus::Lagging { records, .. } => (active, records),
                _ => (active, 0),
            }
        });
        let mut replicas = vec![me];
        replicas.extend((0..N).filter(|j| *j != i).map(|j| self.nodes[j].id.clone()));
        Facts {
            role: Some(st.role),
            epoch: st.epoch,
            highest,
            position: st.position,
            history: st.history,
            followed,
            lag,
            standbys: replicas[1..].to_vec(),
            replicas,
            durability: Durability::Standby,
            configured: true,
            serving: self.nodes[i].serving.is_some(),
            connected: (0..N)
                .filter(|j| *j != i && self.conns[i][*j].is_some())
                .map(|j| self.nodes[j].id.clone())
                .collect(),
        }
    }

    /// Feeds node `i`'s role machine one input (`None`: its timers) and executes what it
    /// asks (`Node::drive`).
    fn drive(&mut self, i: usize, input: Option<Input>) {
        if !self.up(i) {
            return;
        }
        let now = self.clock.now();
        let facts = self.facts(i);
        match input {
            Some(input) => self.nodes[i].roles.handle(now, &facts, input),
            None => self.nodes[i].roles.handle_timeout(now, &facts),
        }
        while let Some(action) = self.nodes[i].roles.poll_action() {
            self.act(i, action);
        }
        if let Some(outcome) = self.nodes[i].roles.take_outcome() {
            self.role_outcome(i, outcome);
        }
    }

    fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::Store(cmd) => {
                let d = self.domain(i);
                let result = match &cmd {
                    StoreCommand::Demote(e) => d.demote(e),
                    StoreCommand::PromoteTo(e) => d.promote_to(e),
                };
                self.clock.ev(&format!(
                    "{} store {cmd:?}: {:?}",
                    self.name(i),
                    result.as_ref().map_err(ToString::to_string)
                ));
                match (&cmd, &result) {
                    (StoreCommand::Demote(e), Ok(())) => {
                        if e.node != self.nodes[i].id {
                            self.nodes[i].fenced =
                                self.nodes[i].fenced.clone().max(Some(e.clone()));
                        }
                        assert_eq!(self.status(i).role, Role::Standby, "{}", self.clock.at());
                        self.check_refused(i, "after recording a higher epoch");
                    }
                    (StoreCommand::PromoteTo(e), Ok(())) => {
                        if let Some(sv) = self.nodes[i].serving.as_mut() {
                            // A switchover that failed: active again in a new epoch.
                            sv.epoch = e.clone();
                        }
                        if *e > self.top {
                            self.top = e.clone();
                        }
                    }
                    _ => {}
                }
                let facts = self.facts(i);
                let now = self.clock.now();
                let fed = Input::Stored(result.map_err(|e| e.to_string()));
                self.nodes[i].roles.handle(now, &facts, fed);
            }
            Action::Probe {
                req,
                peer,
                epoch,
                fresh,
            } => self.send_ctl(
                i,
                Self::index_of(&peer),
                fresh,
                CtlBody::Probe { req, epoch },
            ),
            Action::TakeOver { req, peer, take } => {
                let lose = self.faulty && self.rng.chance(self.faults.took_over_lost);
                self.send_ctl(
                    i,
                    Self::index_of(&peer),
                    false,
                    CtlBody::TakeOver { req, take, lose },
                );
            }
            Action::Reply { reply, message } => self.reply(i, reply, message),
            Action::ReplyStanding { reply } => {
                let answer = Message::ProbeAnswer(Some(self.probe_answer(i)));
                self.reply(i, reply, answer);
            }
            Action::Serve => self.serve(i),
            Action::StopServing => {
                if self.nodes[i].serving.is_some() && self.nodes[i].op.is_none() {
                    self.stats.step_downs += 1;
                }
                self.stop_serving(i);
            }
            Action::Follow(n) => {
                let to = Self::index_of(&n);
                self.start_following(i, to);
            }
            Action::Unfollow => self.stop_following(i),
            Action::HandedOver => {
                let now = self.clock.now();
                if let Some(f) = self.nodes[i].follower.as_mut() {
                    f.handed_over(now);
                }
            }
            Action::AwaitDurable { peer, lsn } => {
                let p = Self::index_of(&peer);
                if let Some(sv) = self.nodes[i].serving.as_mut() {
                    sv.awaiting = Some((p, lsn));
                }
            }
            Action::Log { line, .. } => {
                let line = scrub(&format!("{}: {line}", self.name(i)));
                self.clock.ev(&line);
            }
        }
    }

    /// Node `i` answers the request it is handling.
    fn reply(&mut self, i: usize, req: u64, message: Message) {
        let Some((asker, lose)) = self.replying else {
            // A rogue's request: the answer goes nowhere the simulation follows.
            return;
        };
        let body = match message {
            Message::ProbeAnswer(answer) => CtlBody::ProbeAnswer { req, answer },
            Message::TookOver(result) => CtlBody::TookOver { req, result },
            other => panic!("{}: unexpected reply {other:?}", self.clock.at()),
        };
        if lose {
            self.stats.took_over_lost += 1;
            self.clock.ev(&format!(
                "{}'s answer to the hand-over is lost",
                self.name(i)
            ));
            return;
        }
        let incarnation = self.nodes[asker].incarnation;
        let at = self.clock.step + self.delay();
        self.ctl.push(Ctl {
            from: i,
            to: asker,
            at,
            incarnation,
            body,
        });
    }

    fn delay(&mut self) -> u64 {
        if self.faulty {
            self.rng.range(1, 4)
        } else {
            1
        }
    }

    /// Sends a request from `i` to `to`, on the cached connection unless `fresh` (or there
    /// is none): a cached connection to an earlier incarnation of `to` is dead, and what is
    /// sent on it is lost.
    fn send_ctl(&mut self, i: usize, to: usize, fresh: bool, body: CtlBody) {
        let incarnation = match self.conns[i][to] {
            Some(inc) if !fresh => inc,
            _ => {
                // Dial: only a running, reachable node completes the handshake.
                if !self.up(to) || !self.link_up(i, to) {
                    self.conns[i][to] = None;
                    self.stats.ctl_lost += 1;
                    self.clock.ev(&format!(
                        "{} cannot connect to {}",
                        self.name(i),
                        self.name(to)
                    ));
                    return;
                }
                let inc = self.nodes[to].incarnation;
                self.conns[i][to] = Some(inc);
                inc
            }
        };
        let at = self.clock.step + self.delay();
        let ctl = Ctl {
            from: i,
            to,
            at,
            incarnation,
            body,
        };
        if self.faulty && self.rng.chance(0.02) {
            self.stats.ctl_duplicated += 1;
            let mut copy = ctl.clone();
            copy.at += self.rng.range(0, 20);
            self.ctl.push(copy);
        }
        self.ctl.push(ctl);
    }

    /// Delivers the control messages due now, in a random order.
    fn deliver_ctl(&mut self, faults: bool) {
        let step = self.clock.step;
        let (mut due, later): (Vec<Ctl>, Vec<Ctl>) = std::mem::take(&mut self.ctl)
            .into_iter()
            .partition(|c| c.at <= step);
        self.ctl = later;
        if faults && due.len() > 1 {
            for k in (1..due.len()).rev() {
                let j = self.rng.usize(0, k);
                due.swap(k, j);
            }
        }
        for c in due {
            if !self.up(c.to) || !self.link_up(c.from, c.to) {
                self.stats.ctl_lost += 1;
                continue;
            }
            if c.incarnation != self.nodes[c.to].incarnation {
                self.stats.ctl_lost += 1;
                self.stats.ctl_stale += 1;
                self.clock.ev(&format!(
                    "{} -> {}: lost on a stale connection",
                    self.name(c.from),
                    self.name(c.to)
                ));
                continue;
            }
            let from = self.nodes[c.from].id.clone();
            match c.body {
                CtlBody::Probe { req, epoch } => {
                    self.replying = Some((c.from, false));
                    self.drive(
                        c.to,
                        Some(Input::Probe {
                            from,
                            epoch,
                            reply: req,
                        }),
                    );
                    self.replying = None;
                }
                CtlBody::TakeOver { req, take, lose } => {
                    self.replying = Some((c.from, lose));
                    self.drive(
                        c.to,
                        Some(Input::TakeOver {
                            from,
                            take,
                            reply: req,
                        }),
                    );
                    self.replying = None;
                }
                CtlBody::ProbeAnswer { req: 0, answer } => {
                    // The answer to an epoch announcement: a peer that recorded a higher
                    // epoch supersedes this active (`announce_loop`).
                    let mine = self.status(c.to).epoch;
                    if let Some(a) = answer.filter(|a| a.epoch > mine) {
                        if self.nodes[c.to].serving.is_some() {
                            self.drive(
                                c.to,
                                Some(Input::HigherEpoch {
                                    from,
                                    epoch: a.epoch,
                                }),
                            );
                            if self.nodes[c.to].serving.is_none() {
                                self.stats.announce_step_downs += 1;
                            }
                        }
                    }
                }
                CtlBody::ProbeAnswer { req, answer } => self.drive(
                    c.to,
                    Some(Input::Answer {
                        req,
                        result: Ok(answer),
                    }),
                ),
                CtlBody::TookOver { req, result } => {
                    self.drive(c.to, Some(Input::TookOver { req, result }));
                }
            }
        }
    }

    /// Fires the role machines' timers that are due.
    fn role_timers(&mut self) {
        let now = self.clock.now();
        for i in 0..N {
            if self.up(i) && self.nodes[i].roles.poll_timeout().is_some_and(|t| t <= now) {
                self.drive(i, None);
            }
        }
    }

    /// An operation ended on node `i`: count it and check what it promised.
    fn role_outcome(&mut self, i: usize, outcome: RoleOutcome) {
        let info = self.nodes[i].op.take();
        let force = info.as_ref().is_some_and(|o| o.force);
        let why = info.as_ref().map_or("", |o| o.why);
        let line = scrub(&format!("{}: {why}: {outcome:?}", self.name(i)));
        self.clock.ev(&line);
        match outcome {
            RoleOutcome::Promotion(Ok(p)) => {
                if force {
                    self.stats.forced += 1;
                    self.stats.unsafe_promotions += 1;
                    self.last_unsafe = Some(self.clock.step);
                    return;
                }
                self.stats.promotions += 1;
                // Fencing: without force, every other replica but the old active was reached
                // and none holds a record the new active lacks.
                let me = self.status(i);
                assert_eq!(me.epoch, p.epoch, "{}", self.clock.at());
                let old = info.and_then(|o| o.followed);
                for q in (0..N).filter(|q| *q != i && Some(*q) != old && self.up(*q)) {
                    let there = self.status(q);
                    assert!(
                        (&there.position.epoch, there.position.lsn)
                            <= (&me.position.epoch, me.position.lsn),
                        "{}: unforced promotion of {} at {} while {} holds {} (invariant 2)",
                        self.clock.at(),
                        self.name(i),
                        me.position,
                        self.name(q),
                        there.position
                    );
                    assert!(
                        !p.unreachable.contains(&self.nodes[q].id),
                        "{}: unforced promotion past unreachable {}",
                        self.clock.at(),
                        self.name(q)
                    );
                }
            }
            RoleOutcome::Promotion(Err(PromoteFailure::Guard(_))) => {
                assert!(
                    !force,
                    "{}: a forced promotion was refused",
                    self.clock.at()
                );
                self.stats.guard_refusals += 1;
            }
            RoleOutcome::Promotion(Err(PromoteFailure::Fence(_))) => {
                assert!(
                    !force,
                    "{}: a forced promotion was refused",
                    self.clock.at()
                );
                self.stats.fence_refusals += 1;
            }
            RoleOutcome::Promotion(Err(_)) => {}
            RoleOutcome::Switchover(Ok(_)) => self.stats.switchovers += 1,
            RoleOutcome::Switchover(Err(_)) => self.stats.switchovers_failed += 1,
        }
    }

    /// A hostile but authenticated peer: a node certificate that is not a replica, or a
    /// replica that is not the one this node follows, or one sending an absurd epoch. The
    /// target's role machine must change nothing: role, epoch and fence stay as they were.
    fn rogue(&mut self) {
        let t = self.rng.usize(0, N - 1);
        if !self.up(t) || self.nodes[t].roles.busy() {
            return;
        }
        let x = NodeId::new("x").unwrap();
        let st = self.status(t);
        let highest = self.domain(t).highest_epoch().unwrap();
        let other = (0..N)
            .find(|r| {
                *r != t
                    && Some(*r)
                        != self.nodes[t]
                            .follower
                            .as_ref()
                            .map(|_| self.nodes[t].following)
            })
            .unwrap();
        let other_id = self.nodes[other].id.clone();
        let take = |from: NodeId, node: NodeId| Input::TakeOver {
            from,
            take: TakeOver {
                domain: self.id.clone(),
                epoch: Epoch {
                    term: highest.term + 1,
                    node,
                },
                last: st.position.clone(),
                durability: Durability::Local,
                standbys: vec![NodeId::new("x").unwrap()],
            },
            reply: 0,
        };
        let input = match self.rng.below(5) {
            0 => Input::Probe {
                from: x.clone(),
                epoch: Some(Epoch {
                    term: highest.term + 1,
                    node: x.clone(),
                }),
                reply: 0,
            },
            1 => take(x.clone(), self.nodes[t].id.clone()),
            2 => take(other_id, self.nodes[t].id.clone()),
            3 => Input::Probe {
                from: other_id.clone(),
                epoch: Some(Epoch {
                    term: u64::MAX,
                    node: other_id,
                }),
                reply: 0,
            },
            _ => Input::HigherEpoch {
                from: x.clone(),
                epoch: Epoch {
                    term: highest.term + 5,
                    node: x,
                },
            },
        };
        self.stats.rogue += 1;
        let line = scrub(&format!("rogue message to {}: {input:?}", self.name(t)));
        self.clock.ev(&line);
        let serving = self.nodes[t].serving.is_some();
        self.drive(t, Some(input));
        let after = self.status(t);
        assert_eq!(
            (
                after.role,
                &after.epoch,
                self.domain(t).highest_epoch().unwrap()
            ),
            (st.role, &st.epoch, highest),
            "{}: a hostile peer changed {}'s role or epochs",
            self.clock.at(),
            self.name(t)
        );
        assert_eq!(
            self.nodes[t].serving.is_some(),
            serving,
            "{}",
            self.clock.at()
        );
    }

    // --- workload and operator ---------------------------------------------------------------

    /// A new write with a fresh marker, tried on node `i`.
    fn write(&mut self, i: usize) {
        let marker = self.next_marker;
        let mut ops = vec![Op::Put {
            key: marker_key(marker),
            value: marker.to_le_bytes().to_vec(),
        }];
        let n = self.rng.usize(0, 2);
        for _ in 0..n {
            let op = self.rng.op();
            ops.push(op);
        }
        if self.write_ops(i, ops, marker) {
            self.next_marker += 1;
        }
    }

    /// Tries `ops` on node `i`: accepted exactly when the node is served as active and not
    /// handing over (invariant 1). Returns whether it was committed.
    fn write_ops(&mut self, i: usize, ops: Vec<Op>, marker: u64) -> bool {
        let Some(d) = self.nodes[i].domain.clone() else {
            return false;
        };
        // Served as active, and not stopped for a hand-over.
        let expect =
            self.nodes[i].serving.is_some() && d.status().is_ok_and(|s| s.role == Role::Active);
        let pos = match d.write(ops) {
            Ok(pos) => pos,
            Err(StoreError::NotActive { .. }) => {
                assert!(
                    !expect,
                    "{}: the active {} refused a write",
                    self.clock.at(),
                    self.name(i)
                );
                self.stats.refused_writes += 1;
                return false;
            }
            Err(e) => panic!("{}: write on {}: {e}", self.clock.at(), self.name(i)),
        };
        assert!(
            expect,
            "{}: {} accepted a write at {} while not active (invariant 1)",
            self.clock.at(),
            self.name(i),
            pos.lsn
        );
        let st = d.status().unwrap();
        assert_eq!(st.position, pos, "{}", self.clock.at());
        assert_eq!(
            pos.epoch,
            st.epoch,
            "{}: a write in an epoch below the highest seen (invariant 1)",
            self.clock.at()
        );
        assert_eq!(pos.epoch.node, self.nodes[i].id, "{}", self.clock.at());
        if let Some(f) = &self.nodes[i].fenced {
            assert!(
                pos.epoch > *f,
                "{}: {} wrote in {} after being fenced by {f} (invariant 1)",
                self.clock.at(),
                self.name(i),
                pos.epoch
            );
        }
        if let Some(w) = self.writers.insert(pos.epoch.clone(), i) {
            assert_eq!(
                w,
                i,
                "{}: two writers in epoch {} (invariant 1)",
                self.clock.at(),
                pos.epoch
            );
        }
        let bytes = d
            .read_log(pos.lsn, 1, usize::MAX)
            .unwrap_or_else(|e| panic!("{}: read back lsn {}: {e}", self.clock.at(), pos.lsn))
            .remove(0)
            .bytes;
        let w = self.writes.len();
        let key = (pos.epoch.clone(), pos.lsn);
        let old = self.records.insert(
            key,
            Committed {
                bytes,
                position: pos.clone(),
                digest: st.digest,
                marker,
                write: w,
            },
        );
        assert!(
            old.is_none(),
            "{}: epoch {} committed lsn {} twice (invariant 1)",
            self.clock.at(),
            pos.epoch,
            pos.lsn
        );
        self.writes.push(Write {
            marker,
            node: i,
            epoch: pos.epoch.clone(),
            lsn: pos.lsn,
            step: self.clock.step,
            acked: false,
            acked_on_top: false,
        });
        self.nodes[i].serving.as_mut().unwrap().pending.push(w);
        self.stats.writes += 1;
        self.clock.ev(&format!(
            "{} writes {} in {} (u{marker})",
            self.name(i),
            pos.lsn,
            pos.epoch
        ));
        self.notify(i);
        true
    }

    /// Operator and clients, while faults run.
    fn operator(&mut self) {
        if self.rng.chance(self.faults.write) {
            let actives: Vec<usize> = (0..N)
                .filter(|i| self.nodes[*i].serving.is_some())
                .collect();
            if let Some(i) = self.rng.pick(&actives) {
                self.write(i);
            }
        }
        if self.rng.chance(self.faults.stray_write) {
            let i = self.rng.usize(0, N - 1);
            self.write(i);
        }
        // Failover: a standby that lost its active (or, rarely, one that did not).
        let candidates: Vec<usize> = (0..N)
            .filter(|i| self.up(*i) && self.nodes[*i].follower.is_some())
            .collect();
        if let Some(s) = self.rng.pick(&candidates) {
            let lost = self.nodes[s]
                .follower
                .as_ref()
                .is_some_and(|f| f.last_heard().is_none());
            let p = if lost {
                self.faults.promote
            } else {
                self.faults.promote_blind
            };
            let known = Self::index_of(&self.status(s).epoch.node);
            let blocked =
                self.faults.careful && (0..N).any(|x| x != s && x != known && !self.link_up(s, x));
            if !blocked && self.rng.chance(p) {
                let force = self.rng.chance(self.faults.force);
                self.start_promote(s, force, if lost { "active lost" } else { "blind" });
            }
        }
        if self.rng.chance(self.faults.switchover) {
            let actives: Vec<usize> = (0..N)
                .filter(|i| self.nodes[*i].serving.is_some() && !self.nodes[*i].roles.busy())
                .collect();
            if let Some(i) = self.rng.pick(&actives) {
                // The operator hands over to a standby the active reports connected.
                let to = (i + self.rng.usize(1, N - 1)) % N;
                let connected = self.streams.values().any(|s| {
                    s.server == i
                        && s.standby == to
                        && s.shipper.as_ref().is_some_and(|x| !x.is_closed())
                });
                if connected {
                    self.start_switchover(i, to);
                }
            }
        }
        if self.rng.chance(self.faults.resolve) {
            let i = self.rng.usize(0, N - 1);
            self.resolve(i);
        }
        if self.rng.chance(0.01) {
            self.rogue();
        }
    }

    /// The operator looks at node `i`'s collision archive: checks every record is one some
    /// node committed, then re-applies one on the active (as a new write) and discards it, or
    /// discards it outright, or leaves it.
    fn resolve(&mut self, i: usize) {
        let Some(d) = self.nodes[i].domain.clone() else {
            return;
        };
        let archive = d.collisions().unwrap();
        if archive.is_empty() {
            return;
        }
        for a in &archive {
            self.check_archived(a, "in an archive");
        }
        let a = &archive[self.rng.below(archive.len() as u64) as usize];
        let marker = marker_of(&a.record.ops).expect("an archived record with its marker");
        let choice = self.rng.below(3);
        if choice == 2 {
            return;
        }
        if choice == 0 {
            let actives: Vec<usize> = (0..N)
                .filter(|x| {
                    self.nodes[*x].serving.is_some() && self.status(*x).role == Role::Active
                })
                .collect();
            let Some(t) = actives.into_iter().max_by_key(|x| self.status(*x).epoch) else {
                return;
            };
            self.clock.ev(&format!(
                "operator re-applies u{marker} from {}'s archive on {}",
                self.name(i),
                self.name(t)
            ));
            if !self.write_ops(t, a.record.ops.clone(), marker) {
                return;
            }
            self.stats.reapplied += 1;
        } else {
            self.clock.ev(&format!(
                "operator discards u{marker} from {}'s archive",
                self.name(i)
            ));
            self.discarded.insert(marker);
            self.stats.discarded += 1;
        }
        assert!(
            d.discard_collision(a.id).unwrap(),
            "{}: discard an archived record",
            self.clock.at()
        );
        let left = d.collisions().unwrap();
        assert!(
            left.iter().all(|x| x.id != a.id) && left.len() + 1 == archive.len(),
            "{}: discard_collision",
            self.clock.at()
        );
        if let Some(f) = self.nodes[i].follower.as_mut() {
            f.set_collision_fork(collision_fork(&left));
        }
    }

    /// An archived record is one some node committed, byte for byte.
    fn check_archived(&self, a: &ArchivedRecord, when: &str) -> usize {
        let key = (a.record.epoch.clone(), a.record.lsn);
        let c = self.records.get(&key).unwrap_or_else(|| {
            panic!(
                "{}: {when}: a record nobody committed ({} at {})",
                self.clock.at(),
                key.0,
                key.1
            )
        });
        assert_eq!(
            c.bytes,
            a.bytes,
            "{}: {when}: archived bytes",
            self.clock.at()
        );
        assert_eq!(
            marker_of(&a.record.ops),
            Some(c.marker),
            "{}",
            self.clock.at()
        );
        c.write
    }

    /// Settle phase: with no active for a while, the operator promotes the most advanced
    /// standby, the one whose last record is of the newest epoch (without force: the guard
    /// and the fencing round must agree).
    fn ensure_active(&mut self) {
        let actives: Vec<usize> = (0..N)
            .filter(|i| self.nodes[*i].serving.is_some())
            .collect();
        if let [t] = actives[..] {
            // A standby that follows itself never finds the active on its own.
            for s in 0..N {
                if self.nodes[s].follower.is_some()
                    && self.nodes[s].following == s
                    && self.clock.step % NO_ACTIVE_STEPS == 0
                {
                    self.stats.repointed += 1;
                    self.clock.ev(&format!(
                        "operator points {} at {}",
                        self.name(s),
                        self.name(t)
                    ));
                    self.start_following(s, t);
                }
            }
        }
        if !actives.is_empty() {
            self.no_active_since = None;
            return;
        }
        let since = *self.no_active_since.get_or_insert(self.clock.step);
        if self.clock.step < since + NO_ACTIVE_STEPS {
            return;
        }
        let best = (0..N)
            .filter(|i| self.up(*i) && self.status(*i).uid.is_some())
            .max_by_key(|i| {
                let p = self.status(*i).position;
                (p.epoch, p.lsn, N - i)
            });
        if let Some(s) = best {
            if !(0..N).any(|x| self.nodes[x].roles.busy()) {
                self.start_promote(s, false, "no active");
            }
            self.no_active_since = Some(self.clock.step);
        }
    }

    // --- faults --------------------------------------------------------------------------------

    fn inject_faults(&mut self) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for sid in ids {
            if self.streams.contains_key(&sid) && self.rng.chance(self.faults.cut) {
                self.stats.cuts += 1;
                self.clock.ev(&format!("cut stream {sid}"));
                self.end_stream(sid, "cut");
            }
        }
        if self.rng.chance(self.faults.partition) {
            let steps = self.rng.range(5, 300);
            let i = self.rng.usize(0, N - 1);
            let pairs: Vec<(usize, usize)> = if self.rng.chance(0.6) {
                (0..N).filter(|j| *j != i).map(|j| (i, j)).collect()
            } else {
                vec![(i, (i + 1) % N)]
            };
            self.stats.partitions += 1;
            self.clock.ev(&format!("partition {pairs:?} for {steps}"));
            for (x, y) in pairs {
                let until = self.cut_until[x][y].max(self.clock.step + steps);
                self.cut_until[x][y] = until;
                self.cut_until[y][x] = until;
                self.end_streams_between(x, y);
            }
        }
        for i in 0..N {
            if self.up(i) && self.rng.chance(self.faults.crash) {
                self.crash(i);
            }
        }
    }

    fn end_streams_between(&mut self, x: usize, y: usize) {
        let ids: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| (s.standby, s.server) == (x, y) || (s.standby, s.server) == (y, x))
            .map(|(id, _)| *id)
            .collect();
        for sid in ids {
            self.end_stream(sid, "partition");
        }
    }

    /// Stream `sid` is gone: both sides learn it, what was in flight vanishes.
    fn end_stream(&mut self, sid: u64, why: &str) {
        let Some(mut s) = self.streams.remove(&sid) else {
            return;
        };
        if let Some(sh) = s.shipper.as_mut() {
            sh.disconnected();
        }
        self.clock.ev(&format!("stream {sid} ends: {why}"));
        let i = s.standby;
        if self.nodes[i].stream == Some(sid) {
            self.nodes[i].stream = None;
            let now = self.clock.now();
            if let Some(f) = self.nodes[i].follower.as_mut() {
                if f.is_connected() {
                    let actions = f.disconnected(now);
                    self.run_follow(i, actions);
                }
            }
            self.take_redirect(i);
        }
    }

    fn crash(&mut self, i: usize) {
        let steps = self.rng.range(1, 150);
        self.stats.crashes += 1;
        self.clock
            .ev(&format!("crash {} for {steps}", self.name(i)));
        let ids: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.standby == i || s.server == i)
            .map(|(id, _)| *id)
            .collect();
        for sid in ids {
            self.end_stream(sid, "crash");
        }
        self.stop_serving(i);
        let n = &mut self.nodes[i];
        // What the process held in memory is gone: its role machine, its connections.
        n.roles = Roles::new(n.id.clone(), self.id.clone());
        n.incarnation += 1;
        n.op = None;
        self.conns[i] = [None; N];
        let n = &mut self.nodes[i];
        n.follower = None;
        n.resync = None;
        n.target = None;
        drop(n.domain.take());
        n.store.take().expect("store open").close();
        n.down_until = self.clock.step + steps;
    }

    fn restarts(&mut self, all: bool) {
        for i in 0..N {
            if !self.up(i) && (all || self.clock.step >= self.nodes[i].down_until) {
                self.restart(i);
            }
        }
    }

    /// A node comes back: active if its store says so, else standby following the active
    /// its store names.
    fn restart(&mut self, i: usize) {
        let store = open_store(&self.nodes[i].dir, &self.nodes[i].id);
        let d = store.domain(&self.id).expect("reopen the domain");
        self.nodes[i].store = Some(store);
        self.nodes[i].domain = Some(d.clone());
        let st = d.status().unwrap();
        self.clock.ev(&format!(
            "restart {} as {} in {} at {}",
            self.name(i),
            st.role,
            st.epoch,
            st.position.lsn
        ));
        let v = d.verify().unwrap();
        assert!(v.is_clean(), "{}: verify: {:?}", self.clock.at(), v.faults);
        self.check_state(i, "after a restart");
        if st.role == Role::Active {
            self.serve(i);
        } else {
            let known = (st.epoch.term > 0 && st.epoch.node != self.nodes[i].id)
                .then(|| Self::index_of(&st.epoch.node));
            let to = known.unwrap_or((i + 1) % N);
            self.start_following(i, to);
        }
    }

    // --- invariants on the way -------------------------------------------------------------------

    /// Node `i` holds a state its writer went through: the position (chain included) and the
    /// content digest the writer had at that lsn and epoch (invariants 3 and 6).
    fn check_state(&self, i: usize, when: &str) {
        let st = self.status(i);
        if st.position.lsn == Lsn::ZERO {
            assert_eq!(
                st.digest,
                StateDigest::default(),
                "{}: {when}",
                self.clock.at()
            );
            return;
        }
        let c = self
            .records
            .get(&(st.position.epoch.clone(), st.position.lsn))
            .unwrap_or_else(|| {
                panic!(
                    "{}: {} {when} is at {} in {}, which nobody committed",
                    self.clock.at(),
                    NAMES[i],
                    st.position.lsn,
                    st.position.epoch
                )
            });
        assert_eq!(
            st.position,
            c.position,
            "{}: {} {when}: position differs from its writer's",
            self.clock.at(),
            NAMES[i]
        );
        assert_eq!(
            st.digest,
            c.digest,
            "{}: {} {when}: content digest differs from its writer's at lsn {} (invariant 3)",
            self.clock.at(),
            NAMES[i],
            st.position.lsn
        );
    }

    /// Write `w` was acknowledged while its writer was the highest active and no unsafe
    /// promotion happened since it was committed: it must never be lost (invariant 2).
    fn protected(&self, w: usize) -> bool {
        let w = &self.writes[w];
        w.acked && w.acked_on_top && self.last_unsafe.is_none_or(|u| u < w.step)
    }

    // --- commits, acks and ticks -------------------------------------------------------------------

    fn notify_commits(&mut self) {
        for i in 0..N {
            if self.nodes[i].serving.is_some() {
                self.notify(i);
            }
        }
    }

    /// Tells the shippers of active `i` of its latest commit.
    fn notify(&mut self, i: usize) {
        let lsn = self.status(i).position.lsn;
        let now = self.clock.now();
        let ids: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.server == i && s.shipper.is_some() && s.notified < lsn)
            .map(|(id, _)| *id)
            .collect();
        for sid in ids {
            let Some(s) = self.streams.get_mut(&sid) else {
                continue;
            };
            s.notified = lsn;
            let actions = s.shipper.as_mut().unwrap().on_commit(lsn, now);
            self.run_ship(sid, actions);
        }
    }

    /// Standby `s` holds active `i`'s history up to `durable`: writers waiting for it are
    /// acknowledged.
    fn release(&mut self, i: usize, s: usize, durable: Lsn) {
        let top = self.top.clone();
        let Some(sv) = self.nodes[i].serving.as_mut() else {
            return;
        };
        let on_top = sv.epoch == top;
        if durable <= sv.durable[s] {
            return;
        }
        sv.durable[s] = durable;
        let writes = &mut self.writes;
        let mut acked = 0;
        sv.pending.retain(|w| {
            if writes[*w].lsn <= durable {
                writes[*w].acked = true;
                writes[*w].acked_on_top = on_top;
                acked += 1;
                false
            } else {
                true
            }
        });
        self.stats.acked += acked;
    }

    fn ticks(&mut self) {
        let now = self.clock.now();
        let wall = self.clock.wall_micros();
        let positions: Vec<Option<Position>> = (0..N)
            .map(|i| {
                self.nodes[i]
                    .serving
                    .as_ref()
                    .map(|_| self.status(i).position)
            })
            .collect();
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for sid in ids {
            let Some(server) = self.streams.get(&sid).map(|s| s.server) else {
                continue;
            };
            if self.streams[&sid].shipper.is_none() {
                continue;
            }
            let Some(position) = positions[server].clone() else {
                continue;
            };
            let s = self.streams.get_mut(&sid).unwrap();
            let actions = s.shipper.as_mut().unwrap().on_tick(&position, wall, now);
            self.run_ship(sid, actions);
        }
        for i in 0..N {
            if let Some(f) = self.nodes[i].follower.as_mut() {
                let actions = f.on_tick(now);
                self.run_follow(i, actions);
            }
        }
    }

    // --- the network ---------------------------------------------------------------------------

    fn deliver(&mut self, faults: bool) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for sid in ids {
            let (down, up) = if faults {
                (self.rng.range(0, 4), self.rng.range(0, 4))
            } else {
                (8, 8)
            };
            if self.rng.chance(0.5) {
                self.deliver_down(sid, down);
                self.deliver_up(sid, up);
            } else {
                self.deliver_up(sid, up);
                self.deliver_down(sid, down);
            }
            let done = self
                .streams
                .get(&sid)
                .is_some_and(|s| s.closing && s.down.is_empty());
            if done {
                self.end_stream(sid, "closed by the server");
            }
        }
    }

    fn deliver_down(&mut self, sid: u64, n: u64) {
        for _ in 0..n {
            let Some(s) = self.streams.get_mut(&sid) else {
                return;
            };
            let i = s.standby;
            let Some(m) = s.down.pop_front() else {
                return;
            };
            self.clock
                .ev(&format!("{} <- {}", self.name(i), describe(&m)));
            let now = self.clock.now();
            let f = self.nodes[i]
                .follower
                .as_mut()
                .expect("a stream without a follower");
            let actions = f.on_message(m, now);
            self.run_follow(i, actions);
        }
    }

    fn deliver_up(&mut self, sid: u64, n: u64) {
        for _ in 0..n {
            let Some(m) = self.streams.get_mut(&sid).and_then(|s| s.up.pop_front()) else {
                return;
            };
            self.server_receives(sid, m);
        }
    }

    /// The server side of a stream reads one message (`serve_stream` / `ActiveStream`).
    fn server_receives(&mut self, sid: u64, m: Message) {
        let now = self.clock.now();
        let (t, s) = {
            let st = &self.streams[&sid];
            (st.server, st.standby)
        };
        self.clock.ev(&format!(
            "{} -> {}: {}",
            self.name(s),
            self.name(t),
            describe(&m)
        ));
        let has_shipper = self.streams[&sid].shipper.is_some();
        match m {
            Message::Follow(follow) if !has_shipper => {
                let d = self.domain(t);
                let st = d.status().unwrap();
                if self.nodes[t].serving.is_none() {
                    // Not active here: the answer comes from the store's view.
                    let answer = decide(&follow, &local_view(&self.nodes[t].id, &st), |_| None);
                    assert!(
                        matches!(answer, Answer::Reject { .. }),
                        "{}: a standby answered {answer:?}",
                        self.clock.at()
                    );
                    let stream = self.streams.get_mut(&sid).unwrap();
                    stream.down.push_back(Message::Answer(answer));
                    stream.closing = true;
                    return;
                }
                if follow.epoch > st.epoch {
                    // Invariant 1: a higher epoch exists; the role machine steps down.
                    self.stats.follow_step_downs += 1;
                    let from = self.nodes[s].id.clone();
                    self.drive(
                        t,
                        Some(Input::HigherEpoch {
                            from,
                            epoch: follow.epoch.clone(),
                        }),
                    );
                    if let Some(stream) = self.streams.get_mut(&sid) {
                        stream.down.push_back(Message::Answer(Answer::Reject {
                            reason: RejectReason::StaleEpoch,
                            active: None,
                        }));
                        stream.closing = true;
                    }
                    return;
                }
                let view = local_view(&self.nodes[t].id, &st);
                let mut sh = Shipper::new(self.nodes[s].id.clone(), self.ship, now);
                let actions = sh.on_follow(&follow, &view, |l| d.chain_at(l).ok().flatten(), now);
                let held = sh.ack().durable;
                let stream = self.streams.get_mut(&sid).unwrap();
                stream.notified = view.position.lsn;
                stream.shipper = Some(sh);
                self.release(t, s, held);
                self.run_ship(sid, actions);
            }
            Message::Ack(ack) if has_shipper => {
                self.release(t, s, ack.durable);
                let sh = self
                    .streams
                    .get_mut(&sid)
                    .unwrap()
                    .shipper
                    .as_mut()
                    .unwrap();
                let actions = sh.on_ack(ack, now);
                self.run_ship(sid, actions);
            }
            m => panic!(
                "{}: {} got an unexpected {} from {}",
                self.clock.at(),
                self.name(t),
                describe(&m),
                self.name(s)
            ),
        }
    }

    // --- the active's driver -------------------------------------------------------------------

    fn run_ship(&mut self, sid: u64, actions: Vec<ShipAction>) {
        let mut queue: VecDeque<ShipAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            let Some(stream) = self.streams.get(&sid) else {
                return;
            };
            let (t, s) = (stream.server, stream.standby);
            let d = self.domain(t);
            let now = self.clock.now();
            let more = match action {
                ShipAction::Send(m) => {
                    self.clock.ev(&format!(
                        "{} ships to {}: {}",
                        self.name(t),
                        self.name(s),
                        describe(&m)
                    ));
                    self.streams.get_mut(&sid).unwrap().down.push_back(m);
                    Vec::new()
                }
                ShipAction::SendRecords {
                    from,
                    max_records,
                    max_bytes,
                } => match d.read_log(from, max_records, max_bytes) {
                    Err(StoreError::LogTruncated { .. }) => {
                        self.clock.ev(&format!(
                            "{} ships to {}: {from} truncated",
                            self.name(t),
                            self.name(s)
                        ));
                        self.shipper(sid).log_truncated()
                    }
                    Err(e) => panic!("{}: the active cannot read its log: {e}", self.clock.at()),
                    Ok(entries) => {
                        let Some(last) = entries.last().map(|e| e.record.lsn) else {
                            continue;
                        };
                        let n = entries.len() as u64;
                        let bytes: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
                        self.clock.ev(&format!(
                            "{} ships to {}: records {from}..={last}",
                            self.name(t),
                            self.name(s)
                        ));
                        let m = Message::Records(
                            entries.into_iter().map(|e| RecordBytes(e.bytes)).collect(),
                        );
                        self.streams.get_mut(&sid).unwrap().down.push_back(m);
                        self.shipper(sid).records_sent(last, n, bytes, now)
                    }
                },
                ShipAction::SendSnapshot => {
                    let position = self.send_snapshot(sid, &d);
                    self.shipper(sid).snapshot_sent(&position, now)
                }
                ShipAction::Close { why } => {
                    // Only a refused Follow ends a stream from the active's side here.
                    let refused = self.streams[&sid]
                        .down
                        .back()
                        .is_some_and(|m| matches!(m, Message::Answer(Answer::Reject { .. })));
                    assert!(
                        refused,
                        "{}: {} closed the stream of {}: {why}",
                        self.clock.at(),
                        self.name(t),
                        self.name(s)
                    );
                    self.streams.get_mut(&sid).unwrap().closing = true;
                    Vec::new()
                }
            };
            queue.extend(more);
        }
    }

    fn shipper(&mut self, sid: u64) -> &mut Shipper {
        self.streams
            .get_mut(&sid)
            .and_then(|s| s.shipper.as_mut())
            .expect("shipper")
    }

    fn send_snapshot(&mut self, sid: u64, d: &Domain) -> Position {
        let (header, rows) = take_snapshot(d);
        let position = header.position.clone();
        self.clock.ev(&format!(
            "snapshot at {} on stream {sid}, {} rows",
            position.lsn,
            rows.len()
        ));
        let out = snapshot_messages(&mut self.rng, header, rows);
        self.streams.get_mut(&sid).unwrap().down.extend(out);
        position
    }

    // --- the standby's driver ------------------------------------------------------------------

    fn run_follow(&mut self, i: usize, actions: Vec<FollowAction>) {
        let mut queue: VecDeque<FollowAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            if self.nodes[i].follower.is_none() {
                return;
            }
            let now = self.clock.now();
            let more = match action {
                FollowAction::Connect => self.connect(i),
                FollowAction::Send(m) => {
                    self.clock
                        .ev(&format!("{} sends {}", self.name(i), describe(&m)));
                    if let Some(s) = self.nodes[i]
                        .stream
                        .and_then(|sid| self.streams.get_mut(&sid))
                    {
                        s.up.push_back(m);
                    }
                    Vec::new()
                }
                FollowAction::Apply(records) => self.apply(i, records),
                FollowAction::BeginSnapshot {
                    header,
                    archive_after,
                } => {
                    self.begin_snapshot(i, header, archive_after);
                    Vec::new()
                }
                FollowAction::SnapshotRows(rows) => {
                    let at = self.clock.at();
                    let r = self.nodes[i]
                        .resync
                        .as_mut()
                        .unwrap_or_else(|| panic!("{at}: snapshot rows without a snapshot begun"));
                    r.add(&rows)
                        .unwrap_or_else(|e| panic!("{at}: snapshot rows refused: {e}"));
                    Vec::new()
                }
                FollowAction::FinishSnapshot { rows } => self.finish_snapshot(i, rows),
                FollowAction::AbortSnapshot => {
                    self.clock
                        .ev(&format!("{} aborts its snapshot", self.name(i)));
                    self.nodes[i].resync = None;
                    self.nodes[i].target = None;
                    Vec::new()
                }
                FollowAction::Close { why } => {
                    self.clock
                        .ev(&format!("{} closes its stream: {why}", self.name(i)));
                    self.nodes[i].resync = None;
                    self.nodes[i].target = None;
                    if let Some(sid) = self.nodes[i].stream.take() {
                        if let Some(mut s) = self.streams.remove(&sid) {
                            if let Some(sh) = s.shipper.as_mut() {
                                sh.disconnected();
                            }
                        }
                    }
                    let f = self.nodes[i].follower.as_mut().unwrap();
                    let more = if f.is_connected() {
                        f.disconnected(now)
                    } else {
                        Vec::new()
                    };
                    self.take_redirect(i);
                    more
                }
            };
            queue.extend(more);
        }
    }

    /// After a stream ends: follows the node a refusal named (`follow_loop`).
    fn take_redirect(&mut self, i: usize) {
        let Some(f) = self.nodes[i].follower.as_mut() else {
            return;
        };
        let Some(next) = f.take_redirect() else {
            return;
        };
        let to = Self::index_of(&next);
        if to != i && to != self.nodes[i].following {
            self.stats.redirects += 1;
            self.clock.ev(&format!(
                "{} redirected from {} to {}",
                self.name(i),
                self.name(self.nodes[i].following),
                self.name(to)
            ));
            self.nodes[i].following = to;
        }
    }

    fn connect(&mut self, i: usize) -> Vec<FollowAction> {
        let now = self.clock.now();
        let t = self.nodes[i].following;
        assert!(
            self.nodes[i].stream.is_none(),
            "{}: connect with a stream open",
            self.clock.at()
        );
        if !self.link_up(i, t) {
            self.clock
                .ev(&format!("{} cannot reach {}", self.name(i), self.name(t)));
            return self.nodes[i].follower.as_mut().unwrap().disconnected(now);
        }
        let view = self.standby_view(i);
        self.nodes[i].since = view.epoch.clone();
        self.next_stream += 1;
        let sid = self.next_stream;
        self.streams.insert(
            sid,
            Stream {
                standby: i,
                server: t,
                down: VecDeque::new(),
                up: VecDeque::new(),
                shipper: None,
                notified: Lsn::ZERO,
                closing: false,
            },
        );
        self.nodes[i].stream = Some(sid);
        self.stats.connects += 1;
        self.clock.ev(&format!(
            "{} connects to {} at {} (stream {sid})",
            self.name(i),
            self.name(t),
            view.position.lsn
        ));
        self.nodes[i].follower.as_mut().unwrap().connected(&view)
    }

    fn apply(&mut self, i: usize, records: Vec<RecordBytes>) -> Vec<FollowAction> {
        let now = self.clock.now();
        let d = self.domain(i);
        let mut expected = d.status().unwrap().position.lsn.next();
        let mut last = None;
        for r in &records {
            let rec = decode_record(&r.0).unwrap_or_else(|e| {
                panic!("{}: a shipped record does not decode: {e}", self.clock.at())
            });
            let c = self
                .records
                .get(&(rec.epoch.clone(), rec.lsn))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {} got a record nobody committed",
                        self.clock.at(),
                        NAMES[i]
                    )
                });
            assert_eq!(
                c.bytes,
                r.0,
                "{}: {} got bytes that differ from what its writer committed at {}",
                self.clock.at(),
                NAMES[i],
                rec.lsn
            );
            let from = self.nodes[self.nodes[i].following].id.clone();
            let since = self.nodes[i].since.clone();
            let pos = match d.apply_batch_from(&from, &since, vec![r.0.clone()]) {
                Err(StoreError::Fenced { .. }) => {
                    // A batch of an active below the recorded epoch (invariant 5).
                    self.clock.ev(&format!(
                        "{} refuses a batch of a fenced active",
                        self.name(i)
                    ));
                    let now = self.clock.now();
                    return self.nodes[i]
                        .follower
                        .as_mut()
                        .unwrap()
                        .apply_failed("fenced", now);
                }
                other => other,
            };
            let pos = pos.unwrap_or_else(|e| {
                panic!(
                    "{}: {} refused record {} of {}: {e}",
                    self.clock.at(),
                    NAMES[i],
                    rec.lsn,
                    rec.epoch
                )
            });
            assert_eq!(
                pos.lsn,
                expected,
                "{}: applied out of order",
                self.clock.at()
            );
            expected = expected.next();
            self.stats.applied += 1;
            last = Some(pos);
        }
        self.check_state(i, "after applying");
        match last {
            Some(pos) => {
                self.clock
                    .ev(&format!("{} applied to {}", self.name(i), pos.lsn));
                self.nodes[i].follower.as_mut().unwrap().applied(&pos, now)
            }
            None => Vec::new(),
        }
    }

    fn begin_snapshot(&mut self, i: usize, header: SnapshotHeader, archive_after: Option<Lsn>) {
        let d = self.domain(i);
        let st = d.status().unwrap();
        self.clock.ev(&format!(
            "{} begins a snapshot at {}, archive after {archive_after:?}",
            self.name(i),
            header.position.lsn
        ));
        if header.position.lsn > Lsn::ZERO {
            let c = self
                .records
                .get(&(header.position.epoch.clone(), header.position.lsn))
                .expect("a snapshot at a committed position");
            assert_eq!(
                c.position,
                header.position,
                "{}: snapshot position",
                self.clock.at()
            );
            assert_eq!(
                c.digest,
                header.digest,
                "{}: snapshot digest",
                self.clock.at()
            );
        }
        // Invariant 5: what goes to the archive is what the replica held below its log start
        // after the fork, then the log after the fork.
        let mut below = Vec::new();
        let expected = match archive_after {
            Some(fork) => {
                self.stats.rewinds += 1;
                // Records after the fork that the log no longer holds (see
                // `REWIND_ARCHIVES_BELOW_LOG_START`).
                let end = st.position.lsn.min(Lsn(st.log_start.0.saturating_sub(1)));
                for lsn in fork.0 + 1..=end.0 {
                    let epoch = st
                        .history
                        .iter()
                        .rev()
                        .find(|h| h.first_lsn.0 <= lsn)
                        .map(|h| h.epoch.clone())
                        .expect("an epoch for every lsn held");
                    let c = self
                        .records
                        .get(&(epoch, Lsn(lsn)))
                        .expect("a committed record on the replica's history");
                    below.push((Lsn(lsn), c.bytes.clone(), c.marker));
                }
                let from = fork.next().max(st.log_start);
                if from > st.position.lsn {
                    Vec::new()
                } else {
                    d.read_log(from, usize::MAX, usize::MAX)
                        .unwrap()
                        .into_iter()
                        .map(|e| e.bytes)
                        .collect()
                }
            }
            None => Vec::new(),
        };
        let r = d
            .begin_resync(resync_target(&header), archive_after)
            .unwrap_or_else(|e| panic!("{}: begin_resync: {e}", self.clock.at()));
        self.nodes[i].resync = Some(r);
        self.nodes[i].target = Some((header, expected, below));
    }

    fn finish_snapshot(&mut self, i: usize, rows: u64) -> Vec<FollowAction> {
        let now = self.clock.now();
        let at = self.clock.at();
        let d = self.domain(i);
        let r = self.nodes[i]
            .resync
            .take()
            .unwrap_or_else(|| panic!("{at}: snapshot end without a snapshot begun"));
        let (header, expected, below) = self.nodes[i].target.take().expect("snapshot target");
        assert_eq!(r.rows(), rows, "{at}: rows added");
        let before = d.collisions().unwrap();
        let pos = r
            .finish()
            .unwrap_or_else(|e| panic!("{at}: snapshot refused: {e}"));
        assert_eq!(pos, header.position, "{at}: installed position");
        self.stats.snapshots += 1;
        let after = d.collisions().unwrap();
        assert!(
            after.len() >= before.len() + expected.len(),
            "{at}: {} archived {} records, its log held {} after the fork (invariant 5)",
            NAMES[i],
            after.len() - before.len(),
            expected.len()
        );
        assert!(
            after[..before.len()] == before[..],
            "{at}: the archive lost records in a resync (invariant 5)"
        );
        let added = &after[before.len()..];
        let (held, logged) = added.split_at(added.len() - expected.len());
        for (a, bytes) in logged.iter().zip(&expected) {
            assert_eq!(&a.bytes, bytes, "{at}: archived bytes");
        }
        // Records below the log start: those of its history it held, in lsn order.
        let mut rest = below.iter();
        for a in held {
            let found = rest.by_ref().find(|(lsn, _, _)| *lsn == a.record.lsn);
            let Some((lsn, bytes, _)) = found else {
                panic!(
                    "{at}: {} archived a record at {} in {} that is not on its history below its \
                     log start, in lsn order",
                    NAMES[i], a.record.lsn, a.record.epoch
                );
            };
            assert_eq!(&a.bytes, bytes, "{at}: archived bytes at {lsn}");
        }
        for (lsn, _, marker) in &below {
            if !held.iter().any(|a| a.record.lsn == *lsn) {
                self.stats.unarchivable += 1;
                self.unarchivable.insert(*marker);
                self.clock.ev(&format!(
                    "{} holds u{marker} at {lsn} only as state: below its log, not archived here",
                    NAMES[i]
                ));
            }
        }
        self.stats.archived_held += held.len() as u64;
        for a in added {
            let w = self.check_archived(a, "archived");
            assert!(
                !self.protected(w),
                "{at}: {} archived u{}, written by {} at {} in {} and acknowledged: an \
                 acknowledged write is lost (invariant 2)",
                NAMES[i],
                self.writes[w].marker,
                NAMES[self.writes[w].node],
                self.writes[w].lsn,
                self.writes[w].epoch
            );
        }
        self.stats.archived += added.len() as u64;
        self.clock.ev(&format!(
            "{} installed a snapshot at {}, archived {} ({} from below its log start)",
            self.name(i),
            pos.lsn,
            added.len(),
            held.len()
        ));
        self.check_state(i, "after a snapshot");
        self.nodes[i]
            .follower
            .as_mut()
            .unwrap()
            .snapshot_installed(&pos, now)
    }

    // --- the end -------------------------------------------------------------------------------

    /// One active, not handing over; both others follow it, hold its position, and both sides
    /// acknowledged it.
    fn converged(&self) -> Option<usize> {
        if !(0..N).all(|i| self.up(i)) {
            return None;
        }
        let actives: Vec<usize> = (0..N)
            .filter(|i| self.nodes[*i].serving.is_some())
            .collect();
        let [t] = actives[..] else {
            return None;
        };
        if self.nodes[t].roles.busy() || self.status(t).role != Role::Active || !self.ctl.is_empty()
        {
            return None;
        }
        let target = self.status(t).position;
        let ok = (0..N).filter(|s| *s != t).all(|s| {
            let n = &self.nodes[s];
            let Some(stream) = n.stream.and_then(|sid| self.streams.get(&sid)) else {
                return false;
            };
            let Some(sh) = stream.shipper.as_ref() else {
                return false;
            };
            let f = n.follower.as_ref().unwrap();
            stream.server == t
                && n.resync.is_none()
                && self.status(s).position == target
                && f.ack().applied == target.lsn
                && sh.ack().applied == target.lsn
                && !matches!(
                    sh.status(self.clock.now()).0,
                    SyncStatus::Lagging { .. } | SyncStatus::NeverSynchronized
                )
        });
        ok.then_some(t)
    }

    fn check_end(&mut self, t: usize) {
        let at = self.clock.at();
        let da = self.domain(t);
        let sa = da.status().unwrap();
        assert_eq!(sa.role, Role::Active, "{at}");
        let mut from = Lsn(1);
        for i in 0..N {
            let d = self.domain(i);
            let st = d.status().unwrap();
            let v = d.verify().unwrap();
            assert!(v.is_clean(), "{at}: {} verify: {:?}", NAMES[i], v.faults);
            self.check_state(i, "at the end");
            // Invariant 3: same lsn, same position (chain) and same content.
            assert_eq!(st.position, sa.position, "{at}: {} position", NAMES[i]);
            assert_eq!(st.digest, sa.digest, "{at}: {} digest", NAMES[i]);
            assert_eq!(st.uid, sa.uid, "{at}: {} uid", NAMES[i]);
            if i != t {
                assert_eq!(st.role, Role::Standby, "{at}: {}", NAMES[i]);
            }
            from = from.max(st.log_start);
            // Every retained record is the one its writer committed.
            if st.log_start <= st.position.lsn {
                for e in d.read_log(st.log_start, usize::MAX, usize::MAX).unwrap() {
                    let c = self
                        .records
                        .get(&(e.record.epoch.clone(), e.record.lsn))
                        .unwrap_or_else(|| panic!("{at}: {} holds an unknown record", NAMES[i]));
                    assert_eq!(
                        c.bytes, e.bytes,
                        "{at}: {} log at {}",
                        NAMES[i], e.record.lsn
                    );
                }
            }
        }
        // No lsn holds two different records on two replicas.
        if from <= sa.position.lsn {
            let logs: Vec<Vec<Vec<u8>>> = (0..N)
                .map(|i| {
                    self.domain(i)
                        .read_log(from, usize::MAX, usize::MAX)
                        .unwrap()
                        .into_iter()
                        .map(|e| e.bytes)
                        .collect()
                })
                .collect();
            assert!(
                logs.iter().all(|l| *l == logs[0]),
                "{at}: the replicas' logs differ from lsn {from}"
            );
        }
        // Invariants 2 and 5: every write is in the final state, archived, or was discarded
        // by the operator; an acknowledged write that was protected is in the final state.
        let mut archived: BTreeMap<u64, usize> = BTreeMap::new();
        for i in 0..N {
            let d = self.domain(i);
            let archive = d.collisions().unwrap();
            for a in &archive {
                self.check_archived(a, "at the end");
                *archived
                    .entry(marker_of(&a.record.ops).unwrap())
                    .or_default() += 1;
            }
            if i != t {
                // A node whose archive holds records reports it, and so does the active.
                let f = self.nodes[i].follower.as_mut().unwrap();
                f.set_collision_fork(collision_fork(&archive));
                let status = f.status().0;
                let sid = self.nodes[i].stream.unwrap();
                let shipped = self.streams[&sid]
                    .shipper
                    .as_ref()
                    .unwrap()
                    .status(self.clock.now())
                    .0;
                if archive.is_empty() {
                    assert_eq!(status, SyncStatus::Synchronized, "{at}: {}", NAMES[i]);
                } else {
                    assert!(
                        matches!(status, SyncStatus::Collision { .. })
                            && matches!(shipped, SyncStatus::Collision { .. }),
                        "{at}: {} holds {} archived records but reports {status} / {shipped}",
                        NAMES[i],
                        archive.len()
                    );
                }
            }
        }
        let present: BTreeSet<u64> = da
            .list(b"u", usize::MAX)
            .unwrap()
            .value
            .into_iter()
            .map(|(k, v)| {
                let m: u64 = std::str::from_utf8(&k[1..]).unwrap().parse().unwrap();
                assert_eq!(v, m.to_le_bytes().to_vec(), "{at}: marker value");
                m
            })
            .collect();
        let mut acked_archived = 0;
        for (w, write) in self.writes.iter().enumerate() {
            let m = write.marker;
            let here = present.contains(&m);
            let kept = here || archived.contains_key(&m) || self.discarded.contains(&m);
            let dropped = !REWIND_ARCHIVES_BELOW_LOG_START && self.unarchivable.contains(&m);
            if !kept && dropped {
                self.stats.lost_unarchived += 1;
            }
            assert!(
                kept || dropped,
                "{at}: u{m}, written by {} at {} in {}, is neither in the final state nor in \
                 an archive nor discarded (invariant 5)",
                NAMES[write.node],
                write.lsn,
                write.epoch
            );
            if self.protected(w) {
                self.stats.protected += 1;
                assert!(
                    here,
                    "{at}: u{m}, written by {} at {} in {} and acknowledged, is lost \
                     (invariant 2)",
                    NAMES[write.node], write.lsn, write.epoch
                );
            } else if write.acked && !here {
                acked_archived += 1;
            }
        }
        assert!(
            present.iter().all(|m| *m < self.next_marker),
            "{at}: a marker nobody wrote"
        );
        self.stats.acked_archived += acked_archived;
        self.clock.ev(&format!(
            "converged on {} at {}: {} writes, {} archived",
            self.name(t),
            sa.position.lsn,
            self.writes.len(),
            archived.len()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Runs one seed (keeping its events if asked); a failure names the seed and how to replay it.
fn run_seed(seed: u64, keep_events: bool, test: &str) -> Outcome {
    run_replayable(seed, test, || {
        let mut sim = Sim::new(seed);
        if keep_events {
            sim.clock.trace.keep = Some(Vec::new());
        }
        sim.run()
    })
}

#[test]
fn roles_change_without_losing_acknowledged_writes() {
    let seeds = seeds();
    let (total, secs) = run_seeds(&seeds, |seed| run_seed(seed, false, "roles_change").stats);
    eprintln!(
        "sim_roles: {} seeds in {:.2} s: {} steps, {} writes ({} acknowledged, {} of them \
         covered by invariant 2; {} never acknowledged; {} refused), {} records applied, {} \
         promotions + {} forced ({} refused by the guard, {} by the fencing round; unsafe: {} \
         in all, the forced ones), {} switchovers ({} failed, {} answers lost), {} control \
         messages lost ({} on stale connections), {} duplicated, {} rogue messages, {} \
         self-follows ({} re-pointed), {} step-downs \
         ({} on a follow, {} on an announcement), {} redirects, {} rewinds, {} snapshots, {} \
         records archived ({} acknowledged, lost to unsafe promotions; {} from below a log \
         start), {} records after a fork held only as state by the rewound replica ({} of them \
         nowhere at the end), {} re-applied, {} \
         discarded, {} crashes, {} partitions, {} cuts, {} connects",
        total.seeds,
        secs,
        total.steps,
        total.writes,
        total.acked,
        total.protected,
        total.unacked,
        total.refused_writes,
        total.applied,
        total.promotions,
        total.forced,
        total.guard_refusals,
        total.fence_refusals,
        total.unsafe_promotions,
        total.switchovers,
        total.switchovers_failed,
        total.took_over_lost,
        total.ctl_lost,
        total.ctl_stale,
        total.ctl_duplicated,
        total.rogue,
        total.self_follows,
        total.repointed,
        total.step_downs,
        total.follow_step_downs,
        total.announce_step_downs,
        total.redirects,
        total.rewinds,
        total.snapshots,
        total.archived,
        total.acked_archived,
        total.archived_held,
        total.unarchivable,
        total.lost_unarchived,
        total.reapplied,
        total.discarded,
        total.crashes,
        total.partitions,
        total.cuts,
        total.connects,
    );
    if seeds.len() >= 100 {
        // The suite must exercise what it claims to.
        assert!(total.promotions > 0 && total.forced > 0, "no promotion");
        assert!(
            total.guard_refusals > 0 && total.fence_refusals > 0,
            "no promotion refused by the guard or the fencing round"
        );
        assert!(
            total.ctl_stale > 0 && total.ctl_duplicated > 0 && total.rogue > 0,
            "no stale connection, duplicate or rogue peer"
        );
        assert_eq!(
            total.unsafe_promotions, total.forced,
            "only forced promotions may lose acknowledged writes"
        );
        assert!(
            total.switchovers > 0 && total.switchovers_failed > 0,
            "no switchover"
        );
        assert!(
            total.step_downs > 0 && total.announce_step_downs > 0,
            "no step-down"
        );
        assert!(total.archived > 0 && total.rewinds > 0, "nothing archived");
        assert!(
            total.reapplied > 0 && total.discarded > 0,
            "no archive resolved"
        );
        assert!(
            total.crashes > 0 && total.partitions > 0 && total.cuts > 0,
            "no fault"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [5, 23, 4242] {
        let first = run_seed(seed, true, "a_seed_replays_exactly");
        let second = run_seed(seed, true, "a_seed_replays_exactly");
        assert_replayed(seed, &first, &second);
        assert!(first.stats.writes > 0);
    }
}
