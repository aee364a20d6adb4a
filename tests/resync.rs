//! Full resync through the store API: a snapshot is built aside and switched in atomically
//! (invariant 6); divergent records go to the collision archive (invariant 5).

use domsync::model::{DomainId, Lsn, NodeId};
use domsync::store::{Domain, ResyncTarget, SnapshotItem, Store, StoreError, StoreOptions};

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
