//! Roles in the store: promotion to a new epoch, demotion and fencing by a higher epoch.

use domsync_proto::model::{DomainId, Epoch, HistoryEntry, Lsn, NodeId, Role};
use domsync_store::{Domain, Store, StoreError, StoreOptions};

fn store(dir: &std::path::Path, node: &str) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new(node).unwrap())).unwrap()
}

fn id() -> DomainId {
    "t".parse().unwrap()
}

fn ship(from: &Domain, to: &Domain, start: u64) {
    for e in from.read_log(Lsn(start), usize::MAX, usize::MAX).unwrap() {
        to.apply(&e.bytes).unwrap();
    }
}

fn epoch(term: u64, node: &str) -> Epoch {
    Epoch {
        term,
        node: NodeId::new(node).unwrap(),
    }
}

#[test]
fn a_promoted_standby_writes_in_a_new_epoch_and_the_old_active_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        store(&dir.path().join("a"), "a"),
        store(&dir.path().join("b"), "b"),
    );
    let old = a.create_domain(&id()).unwrap();
    for i in 0..5 {
        old.put(format!("k{i}"), "v").unwrap();
    }
    let new = b.join_domain(&id()).unwrap();
    // A standby that never synchronized holds nothing and cannot be promoted.
    assert!(matches!(
        new.promote(),
        Err(StoreError::InvalidWrite { .. })
    ));
    resync(&old, &new);
    assert!(matches!(old.promote(), Err(StoreError::NotStandby { .. })));

    let e = new.promote().unwrap();
    assert_eq!(e, epoch(2, "b"));
    let s = new.status().unwrap();
    assert_eq!(s.role, Role::Active);
    assert_eq!(
        s.history.last(),
        Some(&HistoryEntry {
            epoch: epoch(2, "b"),
            first_lsn: Lsn(6)
        })
    );
    let p = new.put("after", "promotion").unwrap();
    assert_eq!((p.lsn, p.epoch.clone()), (Lsn(6), epoch(2, "b")));

    // The old active learns of the higher epoch: writes are refused at once, durably.
    old.demote(&e).unwrap();
    assert!(matches!(
        old.put("x", "y"),
        Err(StoreError::NotActive { .. })
    ));
    let so = old.status().unwrap();
    assert_eq!((so.role, so.epoch.clone()), (Role::Standby, e.clone()));
    // It follows the new active from the shared prefix.
    ship(&new, &old, 6);
    assert_eq!(old.status().unwrap().digest, new.status().unwrap().digest);
    assert_eq!(old.get(b"after").unwrap().position.epoch, epoch(2, "b"));

    // Roles survive a restart.
    drop((old, new));
    a.close();
    b.close();
    assert_eq!(
        b.domain(&id()).unwrap().status().unwrap().role,
        Role::Active
    );
    assert_eq!(
        a.domain(&id()).unwrap().status().unwrap().role,
        Role::Standby
    );
}

#[test]
fn an_equal_term_from_a_higher_node_fences_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let d = a.create_domain(&id()).unwrap();
    d.put("k", "v").unwrap();
    // Another node promoted itself to (1, z) > (1, a): same term, higher node.
    d.demote(&epoch(1, "z")).unwrap();
    assert!(matches!(d.put("k", "w"), Err(StoreError::NotActive { .. })));
    // A lower epoch changes nothing.
    let b = store(&dir.path().join("b"), "b");
    let other = b.create_domain(&id()).unwrap();
    other.demote(&epoch(1, "a")).unwrap();
    other.put("k", "v").unwrap();
}

/// Loads `to` with a snapshot of `from` (the path a new standby takes).
fn resync(from: &Domain, to: &Domain) {
    use domsync_proto::model::SnapshotItem;
    use domsync_store::ResyncTarget;
    let snap = from.snapshot().unwrap();
    let mut rows: Vec<SnapshotItem> = Vec::new();
    snap.for_each::<StoreError>(|r| {
        rows.push(r);
        Ok(())
    })
    .unwrap();
    let mut r = to
        .begin_resync(
            ResyncTarget {
                uid: snap.uid.unwrap(),
                position: snap.position.clone(),
                epoch: snap.epoch.clone(),
                history: snap.history.clone(),
                digest: snap.digest,
            },
            None,
        )
        .unwrap();
    r.add(&rows).unwrap();
    r.finish().unwrap();
}
