//! Full resync through the store API: a snapshot is built aside and switched in atomically
//! (invariant 6); divergent records go to the collision archive (invariant 5).

use domsync_proto::model::SnapshotItem;
use domsync_proto::model::{DomainId, Lsn, NodeId};
use domsync_store::{Domain, ResyncTarget, Store, StoreError, StoreOptions};

fn store(dir: &std::path::Path, node: &str) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new(node).unwrap())).unwrap()
}

fn id() -> DomainId {
    "t".parse().unwrap()
}

/// The snapshot of `active` as a target and its rows.
fn snapshot_of(active: &Domain) -> (ResyncTarget, Vec<SnapshotItem>) {
    let snap = active.snapshot().unwrap();
    let mut rows = Vec::new();
    snap.for_each::<StoreError>(|item| {
        rows.push(item);
        Ok(())
    })
    .unwrap();
    let target = ResyncTarget {
        uid: snap.uid.unwrap(),
        position: snap.position.clone(),
        epoch: snap.epoch.clone(),
        history: snap.history.clone(),
        digest: snap.digest,
    };
    (target, rows)
}

fn fill(active: &Domain, n: usize) {
    for i in 0..n {
        active.put(format!("k{i:04}"), vec![b'x'; 100]).unwrap();
    }
    active
        .install_policy("edge", b"allow 443".to_vec())
        .unwrap();
}

#[test]
fn snapshot_switched_in_then_records_apply_on_top() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let active = a.create_domain(&id()).unwrap();
    let standby = b.join_domain(&id()).unwrap();
    fill(&active, 300);
    active.truncate_log(Lsn(200)).unwrap();

    let (target, rows) = snapshot_of(&active);
    let mut resync = standby.begin_resync(target.clone(), None).unwrap();
    for chunk in rows.chunks(64) {
        resync.add(chunk).unwrap();
    }
    let mut commits = standby.subscribe();
    assert_eq!(resync.finish().unwrap(), target.position);
    assert_eq!(*commits.borrow_and_update(), target.position);

    let (sa, sb) = (active.status().unwrap(), standby.status().unwrap());
    assert_eq!(sb.position, sa.position);
    assert_eq!(sb.digest, sa.digest);
    assert_eq!(sb.uid, sa.uid);
    assert_eq!(sb.log_start, sa.position.lsn.next());
    assert!(standby.verify().unwrap().is_clean());
    assert_eq!(standby.get(b"k0007").unwrap().value, Some(vec![b'x'; 100]));

    // Records committed after the snapshot apply on its chain.
    let p = active.put("after", "1").unwrap();
    for e in active.read_log(p.lsn, 10, 1 << 20).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    assert_eq!(
        standby.status().unwrap().digest,
        active.status().unwrap().digest
    );
    // Reopening the store serves the switched-in file.
    drop(standby);
    b.close();
    let reopened = b.domain(&id()).unwrap();
    assert_eq!(reopened.status().unwrap().position, p);
}

#[test]
fn a_snapshot_that_does_not_add_up_leaves_the_old_state() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let active = a.create_domain(&id()).unwrap();
    let standby = b.join_domain(&id()).unwrap();
    fill(&active, 10);
    let (target, mut rows) = snapshot_of(&active);
    rows.pop();
    let mut resync = standby.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    assert!(matches!(
        resync.finish(),
        Err(StoreError::SnapshotMismatch { .. })
    ));
    let s = standby.status().unwrap();
    assert_eq!(s.position.lsn, Lsn(0));
    assert!(s.uid.is_none());
    assert!(hidden_files(&dir.path().join("b")).is_empty());
}

fn hidden_files(node_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(node_dir.join("domains"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

const CHILD_ENV: &str = "DOMSYNC_RESYNC_CHILD";

/// Runs only when re-executed by the test below: syncs a standby to lsn 10 through the log,
/// starts a resync, adds part of the rows and dies at once (no destructor runs).
#[test]
fn resync_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let a = store(&dir.join("a"), "a");
    let active = a.domain(&id()).unwrap();
    let (target, rows) = snapshot_of(&active);
    let b = store(&dir.join("b"), "b");
    let standby = b.join_domain(&id()).unwrap();
    for e in active.read_log(Lsn(1), 10, 1 << 20).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    let mut resync = standby.begin_resync(target, None).unwrap();
    resync.add(&rows[..20]).unwrap();
    assert!(!hidden_files(&dir.join("b")).is_empty());
    std::process::abort();
}

#[test]
fn a_crash_midway_keeps_the_previous_state_and_a_later_resync_completes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = store(&dir.path().join("a"), "a");
        fill(&a.create_domain(&id()).unwrap(), 50);
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["resync_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die midway");

    let a = store(&dir.path().join("a"), "a");
    let active = a.domain(&id()).unwrap();
    let b = store(&dir.path().join("b"), "b");
    assert!(
        hidden_files(&dir.path().join("b")).is_empty(),
        "half-built file removed on open"
    );
    let standby = b.domain(&id()).unwrap();
    let before = standby.status().unwrap();
    assert_eq!(before.position.lsn, Lsn(10), "the previous state is intact");
    assert!(standby.verify().unwrap().is_clean());

    let (target, rows) = snapshot_of(&active);
    let mut resync = standby.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    assert_eq!(
        standby.status().unwrap().digest,
        active.status().unwrap().digest
    );
    assert!(standby.verify().unwrap().is_clean());
}

#[test]
fn records_after_the_fork_go_to_the_collision_archive() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let active = a.create_domain(&id()).unwrap();
    let standby = b.join_domain(&id()).unwrap();
    fill(&active, 10);
    for e in active.read_log(Lsn(1), 100, 1 << 20).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    let held: Vec<Vec<u8>> = standby
        .read_log(Lsn(7), 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    // The active says the histories share only lsn 1..=6: 7..=11 here are set aside.
    let (target, rows) = snapshot_of(&active);
    let mut resync = standby.begin_resync(target, Some(Lsn(6))).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    let archived: Vec<Vec<u8>> = standby
        .collisions()
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(archived, held);
    assert_eq!(
        standby.status().unwrap().digest,
        active.status().unwrap().digest
    );
    // A later resync keeps the archive.
    let (target, rows) = snapshot_of(&active);
    let mut resync = standby.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    assert_eq!(standby.collisions().unwrap().len(), held.len());
}

/// Builds `standby` anew from `active`'s snapshot; `fork` as a rewind gives it.
fn resync_from(standby: &Domain, active: &Domain, fork: Option<Lsn>) {
    let (target, rows) = snapshot_of(active);
    let mut resync = standby.begin_resync(target, fork).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
}

fn log_bytes(d: &Domain, from: u64, to: u64) -> Vec<Vec<u8>> {
    d.read_log(Lsn(from), (to + 1 - from) as usize, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect()
}

fn archived(d: &Domain) -> Vec<Vec<u8>> {
    d.collisions()
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect()
}

/// Invariant 5 across two rewinds (the path of simulation seed 862 of `sim_roles`): `b` writes
/// records that `a` then receives only as snapshot state; `b` is later resynced from `a` at a
/// fork above them, so its log no longer holds them; a third replica that stopped below them
/// wins. Its fork is below both `a`'s and `b`'s log start, and yet every record after it is
/// archived somewhere, byte for byte.
#[test]
fn a_rewind_below_the_log_start_of_a_replica_resynced_by_snapshot_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a")
        .create_domain(&id())
        .unwrap();
    let b = store(&dir.path().join("b"), "b")
        .join_domain(&id())
        .unwrap();
    let c = store(&dir.path().join("c"), "c")
        .join_domain(&id())
        .unwrap();
    resync_from(&b, &a, None);
    resync_from(&c, &a, None);
    // 1@a writes 1..=5; b and c apply them.
    for i in 0..5 {
        a.put(format!("a{i}"), "1").unwrap();
    }
    for e in a.read_log(Lsn(1), 100, usize::MAX).unwrap() {
        b.apply(&e.bytes).unwrap();
        c.apply(&e.bytes).unwrap();
    }
    // b is promoted (2@b) and writes 6..=10; c follows it up to 7 only.
    let eb = b.promote().unwrap();
    for i in 0..5 {
        b.put(format!("b{i}"), "1").unwrap();
    }
    let b_wrote = log_bytes(&b, 6, 10);
    for bytes in &b_wrote[..2] {
        c.apply(bytes).unwrap();
    }
    // a, fenced, rewinds to b (fork 5): it holds 6..=10 only as state.
    a.demote(&eb).unwrap();
    resync_from(&a, &b, Some(Lsn(5)));
    assert_eq!(a.status().unwrap().log_start, Lsn(11));
    // a is promoted (3@a) and writes 11..=12; b, fenced, rewinds to a (fork 10). No replica
    // holds 6..=10 in its log any more.
    let ea = a.promote().unwrap();
    a.put("a-late", "1").unwrap();
    a.put("a-later", "1").unwrap();
    let a_wrote = log_bytes(&a, 11, 12);
    b.demote(&ea).unwrap();
    resync_from(&b, &a, Some(Lsn(10)));
    assert_eq!(b.status().unwrap().log_start, Lsn(13));
    assert!(archived(&b).is_empty(), "6..=10 are on a's history");
    // c, which holds 2@b up to 7, is promoted (3@c, above 3@a) and writes 8. a and b rewind
    // to it at fork 7: below both their log starts.
    let ec = c.promote().unwrap();
    assert!(ec > ea);
    c.put("c0", "1").unwrap();
    for d in [&a, &b] {
        d.demote(&ec).unwrap();
        resync_from(d, &c, Some(Lsn(7)));
        assert_eq!(d.status().unwrap().digest, c.status().unwrap().digest);
        assert!(d.verify().unwrap().is_clean());
    }
    // a archives what its log held (11..=12); b archives its own 8..=10, which it kept.
    assert_eq!(archived(&a), a_wrote);
    assert_eq!(archived(&b), b_wrote[2..].to_vec());
    // Every record written after the fork is in c's state or archived: nothing dropped.
    let mut kept = archived(&a);
    kept.extend(archived(&b));
    for r in b_wrote[2..].iter().chain(&a_wrote) {
        assert!(kept.contains(r), "a record after the fork was dropped");
    }
}

/// Invariant 5, hostile disk: a collision archive entry that fails its CRC is reported by
/// `verify`, counted (not hidden) while the readable ones are still listed, never stops the
/// replica from computing what it follows with, and can be discarded.
#[test]
fn a_corrupt_archived_record_is_reported_and_can_be_discarded() {
    use redb::ReadableTable as _;
    const COLLISIONS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("collisions");
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b_dir = dir.path().join("b");
    let b = store(&b_dir, "b");
    let active = a.create_domain(&id()).unwrap();
    let standby = b.join_domain(&id()).unwrap();
    fill(&active, 10);
    for e in active.read_log(Lsn(1), 100, 1 << 20).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    resync_from(&standby, &active, Some(Lsn(6)));
    let ids: Vec<u64> = standby.collisions().unwrap().iter().map(|a| a.id).collect();
    assert_eq!(ids.len(), 5);
    drop(standby);
    drop(b);

    // One archived record is damaged on disk.
    let path = b_dir.join("domains").join(format!("{}.redb", id()));
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(COLLISIONS).unwrap();
            let mut bytes = t.get(ids[2]).unwrap().unwrap().value().to_vec();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x5a;
            t.insert(ids[2], bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let b = store(&b_dir, "b");
    let standby = b.domain(&id()).unwrap();
    let (records, corrupt) = standby.archive().unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(corrupt, vec![ids[2]]);
    let report = standby.verify().unwrap();
    assert!(
        report
            .faults
            .iter()
            .any(|f| f.what.contains("collision archive record")),
        "{:?}",
        report.faults
    );
    assert!(standby.discard_collision(ids[2]).unwrap());
    assert_eq!(standby.archive().unwrap(), (records, Vec::new()));
    assert!(standby.verify().unwrap().is_clean());
}

/// Invariant 1 on the resync path: a standby that recorded a newer epoch (fenced by a
/// promotion) refuses a snapshot from an active that does not know it, and keeps its state;
/// the same snapshot is taken before the fence.
#[test]
fn a_fenced_standby_refuses_the_snapshot_of_an_older_active() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let active = a.create_domain(&id()).unwrap();
    let standby = b.join_domain(&id()).unwrap();
    fill(&active, 5);
    resync_from(&standby, &active, None);
    let before = standby.status().unwrap();
    fill(&active, 3);
    let newer = domsync_proto::model::Epoch {
        term: 2,
        node: NodeId::new("c").unwrap(),
    };
    standby.demote(&newer).unwrap();
    let (target, rows) = snapshot_of(&active);
    let mut resync = standby.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    assert!(matches!(
        resync.finish(),
        Err(StoreError::Fenced { ref epoch, .. }) if *epoch == newer
    ));
    let after = standby.status().unwrap();
    assert_eq!(after.position, before.position);
    assert_eq!(after.digest, before.digest);
    assert_eq!(after.epoch, newer);
}
