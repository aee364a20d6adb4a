//! Model-based check of the store, shared by the `store_model` fuzz target and the stable test
//! `tests/fuzz_corpus.rs`: the input bytes drive a sequence of operations on one domain — an
//! active replica on a fault-injecting backend and a standby replica fed from its log — and
//! the stores are checked against an in-memory model after every crash and at the end.
//!
//! Operations (one opcode byte each, then their arguments, all taken modulo small ranges; the
//! input ends the sequence, at most [`MAX_OPS`] operations):
//!
//! | opcode % 10 | operation |
//! |---|---|
//! | 0 | put a key (8 keys) with a value of 0..16 bytes, or (length byte `0xff`) of about 248 KiB or 496 KiB |
//! | 1 | delete a key |
//! | 2 | install a policy (3 names) of 0..32 bytes, or (length byte `0xff`) of about 248 KiB or 496 KiB |
//! | 3 | remove a policy |
//! | 4 | ship records to the standby, sometimes corrupted, out of order or repeated |
//! | 5 | snapshot of the active: rows equal the model, recomputed digest equals the stored one |
//! | 6 | resync the standby from a snapshot of the active (rows added in chunks) |
//! | 7 | truncate the active's log |
//! | 8 | arm the fault plan: after N I/Os, fail every call or only fsyncs, with EIO or ENOSPC |
//! | 9 | a write of several ops in one transaction |
//!
//! Any operation of the active that fails because of an injected fault must return a typed
//! storage error (never panic). The active is then "crashed": its store is dropped and opened
//! again on a healthy backend, and its state must equal the model with or without the write
//! that failed (exactly one of them, the lsn tells), every acknowledged write present,
//! `verify()` clean, and the standby's digest equal to the active's at the same lsn.

// The fuzz target and the stable test use all of it, but each lints it alone.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use domsync_proto::model::{DomainId, Lsn, NodeId, Op, SnapshotItem};
use domsync_store::{Domain, FaultKind, FaultPlan, ResyncTarget, Store, StoreError, StoreOptions};

/// Most operations run per input: keeps every execution short.
pub const MAX_OPS: usize = 64;

const KEYS: [&[u8]; 8] = [b"a", b"b", b"c", b"d", b"k/1", b"k/2", b"x", b"zz"];
const POLICIES: [&str; 3] = ["fw", "vpn", "ids.rules"];

/// The state the store must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    /// Each key's value and version (the lsn of the record that last changed it).
    kv: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    policies: BTreeMap<String, Vec<u8>>,
    lsn: u64,
}

impl Model {
    fn apply(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    self.kv.insert(key.clone(), (value.clone(), self.lsn + 1));
                }
                Op::Delete { key } => {
                    self.kv.remove(key);
                }
                Op::InstallPolicy { name, content } => {
                    self.policies.insert(name.clone(), content.clone());
                }
                Op::RemovePolicy { name } => {
                    self.policies.remove(name);
                }
                Op::PutLegacyCrl(_)
                | Op::RemoveLegacyCrl { .. }
                | Op::AddIssuer(_)
                | Op::RemoveIssuer { .. }
                | Op::PutCrl { .. }
                | Op::RemoveCrl { .. } => unreachable!("not generated"),
            }
        }
        self.lsn += 1;
    }
}

/// Reads the input bytes; zero once they run out.
struct Input<'a> {
    bytes: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        (0..len).map(|_| self.byte()).collect()
    }

    /// A value of 0..`max` bytes as [`Input::bytes`] makes it, except that a length byte of
    /// `0xff` asks for a long one (around and beyond the 248 KiB piece the store cuts long
    /// values into) filled with a pattern: earlier inputs keep their meaning.
    fn value(&mut self, max: usize) -> Vec<u8> {
        if self.bytes.first() != Some(&0xff) {
            return self.bytes(max);
        }
        self.byte();
        const PIECE: usize = 248 * 1024;
        let pick = self.byte();
        let len = [PIECE - 1, PIECE, PIECE + 1, 2 * PIECE + 7][usize::from(pick % 4)];
        let seed = self.byte();
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn op(&mut self) -> Op {
        match self.below(4) {
            0 => Op::Put {
                key: KEYS[self.below(KEYS.len())].to_vec(),
                value: self.value(16),
            },
            1 => Op::Delete {
                key: KEYS[self.below(KEYS.len())].to_vec(),
            },
            2 => Op::InstallPolicy {
                name: POLICIES[self.below(POLICIES.len())].to_string(),
                content: self.value(32),
            },
            _ => Op::RemovePolicy {
                name: POLICIES[self.below(POLICIES.len())].to_string(),
            },
        }
    }
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // tmpfs when there is one: fsyncs cost nothing there.
        let base = std::env::var_os("DOMSYNC_FUZZ_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "domsync-store-model-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Left over by an execution that crashed (a finding): start clean.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn domain_id() -> DomainId {
    "model".parse().expect("domain id")
}

fn options(node: &str, plan: Option<&FaultPlan>) -> StoreOptions {
    let mut o = StoreOptions::new(NodeId::new(node).expect("node id"));
    o.cache_bytes = 256 * 1024;
    o.backend = plan.map(FaultPlan::factory);
    o
}

/// The active replica: a store on the fault plan's backend, reopened healthy after a crash.
struct Active {
    dir: PathBuf,
    plan: FaultPlan,
    store: Option<Store>,
    domain: Option<Domain>,
}

impl Active {
    fn d(&self) -> &Domain {
        self.domain.as_ref().expect("active open")
    }

    /// Drops the store (its writer included) and opens it again on a healthy backend.
    fn crash(&mut self) {
        self.domain = None;
        if let Some(s) = self.store.take() {
            s.close();
        }
        self.plan = FaultPlan::new();
        let store = Store::open(&self.dir, options("a", Some(&self.plan)))
            .expect("the active's store reopens");
        let domain = store
            .domain(&domain_id())
            .unwrap_or_else(|e| panic!("the active's domain reopens after a crash: {e}"));
        self.store = Some(store);
        self.domain = Some(domain);
    }
}

/// The state of a replica as rows, read in one snapshot.
fn state_of(d: &Domain) -> Result<Model, StoreError> {
    let snap = d.snapshot()?;
    let mut m = Model {
        lsn: snap.position.lsn.0,
        ..Model::default()
    };
    snap.for_each(|item| {
        match item {
            SnapshotItem::Kv { key, .. } => {
                panic!("key {key:?} has no version")
            }
            SnapshotItem::KvAt {
                key,
                value,
                version,
            } => {
                m.kv.insert(key, (value, version.0));
            }
            SnapshotItem::Policy(p) => {
                m.policies.insert(p.info.name, p.content);
            }
            SnapshotItem::LegacyCrl(_) | SnapshotItem::Issuer(_) | SnapshotItem::Crl(_) => {
                panic!("a CRL or issuer appeared")
            }
        }
        Ok::<(), StoreError>(())
    })?;
    assert_eq!(
        snap.compute_digest()?,
        snap.digest,
        "recomputed digest differs from the stored one"
    );
    Ok(m)
}

fn assert_clean(d: &Domain, who: &str) {
    let report = d
        .verify()
        .unwrap_or_else(|e| panic!("{who}: verify failed: {e}"));
    assert!(report.is_clean(), "{who}: verify found faults: {report:?}");
}

/// Whether an error of the active is the injected fault showing (then: crash and check).
fn is_fault(e: &StoreError) -> bool {
    e.is_storage_fault()
}

/// A non-fault error of the active or the standby where none may happen.
fn unexpected(what: &str, e: &StoreError) -> ! {
    panic!("{what}: unexpected error {e:?} ({e})")
}

struct Run {
    active: Active,
    standby: Domain,
    _standby_store: Store,
    model: Model,
    /// Whether the fault plan is armed.
    armed: bool,
}

impl Run {
    /// After an injected fault: crash the active, reopen it healthy, and check it against the
    /// model with or without `pending` (the write that was not acknowledged).
    fn crash(&mut self, pending: Option<&[Op]>) {
        trace(format_args!(
            "crash (pending {pending:?}), reopening healthy"
        ));
        self.active.crash();
        self.armed = false;
        let got = state_of(self.active.d()).unwrap_or_else(|e| unexpected("read after crash", &e));
        let without = self.model.clone();
        let with = pending.map(|ops| {
            let mut m = self.model.clone();
            m.apply(ops);
            m
        });
        if got == without {
            // The failed write (if any) left nothing.
        } else if with.as_ref() == Some(&got) {
            // Its commit reached the disk before the failure was reported.
            self.model = got;
        } else {
            panic!(
                "after a crash the active holds {got:?}, expected {without:?} or {with:?} (pending {pending:?})"
            );
        }
        assert_clean(self.active.d(), "active after crash");
        self.check_standby();
    }

    /// The standby's digest equals the active's at the same lsn; it is never ahead.
    fn check_standby(&mut self) {
        let a = match self.active.d().status() {
            Ok(s) => s,
            Err(e) if self.armed && is_fault(&e) => return self.crash(None),
            Err(e) => unexpected("active status", &e),
        };
        let b = self
            .standby
            .status()
            .unwrap_or_else(|e| unexpected("standby status", &e));
        assert!(
            b.position.lsn <= a.position.lsn,
            "the standby ({}) is ahead of the active ({})",
            b.position,
            a.position
        );
        if b.position.lsn == a.position.lsn {
            // Before the first record a position only names its replica's node.
            if a.position.lsn > Lsn::ZERO {
                assert_eq!(b.position, a.position, "same lsn, other position");
            }
            assert_eq!(b.digest, a.digest, "same lsn, other content");
        }
    }

    fn write(&mut self, ops: Vec<Op>) {
        match self.active.d().write(ops.clone()) {
            Ok(pos) => {
                self.model.apply(&ops);
                assert_eq!(pos.lsn.0, self.model.lsn, "acknowledged at another lsn");
            }
            Err(e) if self.armed && is_fault(&e) => self.crash(Some(&ops)),
            Err(e) => unexpected("write", &e),
        }
    }

    fn ship(&mut self, input: &mut Input<'_>) {
        let from = self
            .standby
            .status()
            .unwrap_or_else(|e| unexpected("standby status", &e))
            .position;
        let limit = 1 + input.below(8);
        let entries = match self.active.d().read_log(from.lsn.next(), limit, usize::MAX) {
            Ok(e) => e,
            Err(StoreError::LogTruncated { .. }) => return self.resync(input),
            Err(e) if self.armed && is_fault(&e) => return self.crash(None),
            Err(e) => unexpected("read_log", &e),
        };
        let mangle = input.below(8);
        let refused = |standby: &Domain, bytes: &[u8], what: &str| {
            match standby.apply(bytes) {
                Ok(p) => panic!("a {what} record was applied at {p}"),
                Err(
                    StoreError::CorruptRecord { .. }
                    | StoreError::OutOfOrder { .. }
                    | StoreError::ChainMismatch { .. }
                    | StoreError::StaleEpoch { .. },
                ) => {}
                Err(e) => unexpected(what, &e),
            }
            let now = standby
                .status()
                .unwrap_or_else(|e| unexpected("standby status", &e))
                .position;
            assert_eq!(now, from, "a refused {what} record moved the standby");
        };
        match mangle {
            0 if !entries.is_empty() => {
                let mut bytes = entries[0].bytes.clone();
                let at = input.below(bytes.len());
                bytes[at] ^= 1 << input.below(8);
                refused(&self.standby, &bytes, "corrupted");
                return;
            }
            1 if entries.len() > 1 => {
                refused(&self.standby, &entries[1].bytes, "out-of-order");
                return;
            }
            2 if from.lsn > Lsn::ZERO => {
                if let Ok(old) = self.active.d().read_log(from.lsn, 1, usize::MAX) {
                    if let Some(e) = old.first() {
                        refused(&self.standby, &e.bytes, "repeated");
                    }
                }
                return;
            }
            _ => {}
        }
        for e in &entries {
            if let Err(err) = self.standby.apply(&e.bytes) {
                unexpected("apply", &err);
            }
        }
        self.check_standby();
    }

    fn snapshot(&mut self) {
        match state_of(self.active.d()) {
            Ok(got) => assert_eq!(
                got, self.model,
                "the active's snapshot differs from the model"
            ),
            Err(e) if self.armed && is_fault(&e) => self.crash(None),
            Err(e) => unexpected("snapshot", &e),
        }
    }

    fn resync(&mut self, input: &mut Input<'_>) {
        let (target, rows) = {
            let snap = match self.active.d().snapshot() {
                Ok(s) => s,
                Err(e) if self.armed && is_fault(&e) => return self.crash(None),
                Err(e) => unexpected("snapshot", &e),
            };
            let mut rows = Vec::new();
            if let Err(e) = snap.for_each(|item| {
                rows.push(item);
                Ok::<(), StoreError>(())
            }) {
                if self.armed && is_fault(&e) {
                    drop(snap);
                    return self.crash(None);
                }
                unexpected("snapshot rows", &e);
            }
            let target = ResyncTarget {
                uid: snap.uid.expect("the active has a uid"),
                position: snap.position.clone(),
                epoch: snap.epoch.clone(),
                history: snap.history.clone(),
                digest: snap.digest,
            };
            (target, rows)
        };
        let chunk = 1 + input.below(4);
        let mut resync = self
            .standby
            .begin_resync(target.clone(), None)
            .unwrap_or_else(|e| unexpected("begin_resync", &e));
        for rows in rows.chunks(chunk) {
            resync
                .add(rows)
                .unwrap_or_else(|e| unexpected("resync add", &e));
        }
        let pos = resync
            .finish()
            .unwrap_or_else(|e| unexpected("resync finish", &e));
        assert_eq!(pos, target.position);
        assert_clean(&self.standby, "standby after resync");
        self.check_standby();
    }

    fn truncate(&mut self, input: &mut Input<'_>) {
        let below = Lsn(input.below(usize::try_from(self.model.lsn).unwrap_or(0) + 2) as u64);
        match self.active.d().truncate_log(below) {
            Ok(start) => assert!(start.0 <= self.model.lsn + 1, "log start past the end"),
            Err(e) if self.armed && is_fault(&e) => self.crash(None),
            Err(e) => unexpected("truncate", &e),
        }
    }

    fn arm(&mut self, input: &mut Input<'_>) {
        let after = u64::from(input.byte()) * 4 + u64::from(input.byte() % 4);
        let kind = if input.byte() % 2 == 0 {
            FaultKind::Eio
        } else {
            FaultKind::DiskFull
        };
        if input.byte() % 2 == 0 {
            self.active.plan.fail_after(after, kind);
        } else {
            self.active.plan.fail_sync_after(after, kind);
        }
        self.armed = true;
    }
}

/// With `DOMSYNC_MODEL_TRACE` set, tells what runs (to read a finding).
fn trace(what: std::fmt::Arguments<'_>) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("DOMSYNC_MODEL_TRACE").is_some()) {
        eprintln!("store_model: {what}");
    }
}

/// Runs the operations `bytes` describe and checks the stores against the model.
pub fn store_model(bytes: &[u8]) {
    let scratch = Scratch::new();
    run(&scratch.0, bytes);
}

fn run(dir: &Path, bytes: &[u8]) {
    let mut input = Input { bytes };
    let plan = FaultPlan::new();
    let a_dir = dir.join("a");
    let store = Store::open(&a_dir, options("a", Some(&plan))).expect("open the active's store");
    let domain = store
        .create_domain(&domain_id())
        .expect("create the domain");
    let standby_store =
        Store::open(dir.join("b"), options("b", None)).expect("open the standby's store");
    let standby = standby_store
        .join_domain(&domain_id())
        .expect("join the domain");
    let mut run = Run {
        active: Active {
            dir: a_dir,
            plan,
            store: Some(store),
            domain: Some(domain),
        },
        standby,
        _standby_store: standby_store,
        model: Model::default(),
        armed: false,
    };
    for _ in 0..MAX_OPS {
        if input.bytes.is_empty() {
            break;
        }
        let opcode = input.below(10);
        trace(format_args!(
            "op {opcode} (model lsn {}, armed {})",
            run.model.lsn, run.armed
        ));
        match opcode {
            0 => run.write(vec![Op::Put {
                key: KEYS[input.below(KEYS.len())].to_vec(),
                value: input.value(16),
            }]),
            1 => run.write(vec![Op::Delete {
                key: KEYS[input.below(KEYS.len())].to_vec(),
            }]),
            2 => run.write(vec![Op::InstallPolicy {
                name: POLICIES[input.below(POLICIES.len())].to_string(),
                content: input.value(32),
            }]),
            3 => run.write(vec![Op::RemovePolicy {
                name: POLICIES[input.below(POLICIES.len())].to_string(),
            }]),
            4 => run.ship(&mut input),
            5 => run.snapshot(),
            6 => run.resync(&mut input),
            7 => run.truncate(&mut input),
            8 => run.arm(&mut input),
            _ => {
                let n = 1 + input.below(4);
                let ops = (0..n).map(|_| input.op()).collect();
                run.write(ops);
            }
        }
    }
    // The end: healthy again, every acknowledged write is there, and the standby catches up to
    // the same content.
    run.active.plan.disarm();
    run.armed = false;
    let got = state_of(run.active.d()).unwrap_or_else(|e| unexpected("final read", &e));
    assert_eq!(got, run.model, "the active's state differs from the model");
    assert_clean(run.active.d(), "active");
    let mut rounds = 0;
    loop {
        let a = run
            .active
            .d()
            .status()
            .unwrap_or_else(|e| unexpected("status", &e));
        let b = run
            .standby
            .status()
            .unwrap_or_else(|e| unexpected("status", &e));
        if a.position.lsn == b.position.lsn {
            break;
        }
        rounds += 1;
        assert!(rounds < 200, "the standby does not catch up");
        let mut catch_up = Input { bytes: &[3, 3] };
        run.ship(&mut catch_up);
    }
    run.check_standby();
    assert_clean(&run.standby, "standby");
}
