//! Key versions and what applications build on them, through the store's public API: the
//! version of a key is the lsn of the record that last changed it, on the active and on a
//! standby (shipped records and snapshots); transaction conditions are checked in the write
//! transaction (so two read-modify-writes of one key cannot both win); scans page in key
//! order; the changes of a key range are read back from the log in order, from a position
//! that must be in this replica's history.

use std::sync::{Arc, Barrier};

use domsync_proto::app::{Condition, KeyRange};
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role, SnapshotItem};
use domsync_store::{Domain, ResyncTarget, Store, StoreError, StoreOptions};

fn store(dir: &std::path::Path, node: &str) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new(node).unwrap())).unwrap()
}

fn id(s: &str) -> DomainId {
    s.parse().unwrap()
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn version(d: &Domain, key: &str) -> Option<Lsn> {
    d.get_entry(key.as_bytes())
        .unwrap()
        .value
        .map(|e| e.version)
}

#[test]
fn a_keys_version_is_the_lsn_that_last_changed_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let p1 = d.write(vec![put("a", "1"), put("b", "1")]).unwrap();
    let p2 = d.put("a", "2").unwrap();
    assert_eq!(version(&d, "a"), Some(p2.lsn));
    assert_eq!(version(&d, "b"), Some(p1.lsn));
    let read = d.get_entry(b"a").unwrap();
    assert_eq!(read.position, p2);
    assert_eq!(read.value.unwrap().value, b"2");
    let p3 = d.delete("a").unwrap();
    assert_eq!(version(&d, "a"), None);
    // Written again after a delete: the new record's lsn.
    let p4 = d.put("a", "3").unwrap();
    assert!(p4.lsn > p3.lsn);
    assert_eq!(version(&d, "a"), Some(p4.lsn));
    // Kept across a reopen.
    drop(d);
    s.close();
    let s = store(dir.path(), "a");
    let d = s.domain(&id("t")).unwrap();
    assert_eq!(version(&d, "a"), Some(p4.lsn));
    assert!(d.verify().unwrap().is_clean());
}

#[test]
fn a_standby_holds_the_same_versions_by_records_and_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (sa, sb, sc) = (
        store(&dir.path().join("a"), "a"),
        store(&dir.path().join("b"), "b"),
        store(&dir.path().join("c"), "c"),
    );
    let active = sa.create_domain(&id("t")).unwrap();
    let p1 = active.put("k1", "v").unwrap();
    let p2 = active.put("k2", "v").unwrap();
    active.put("k1", "w").unwrap();
    let standby = sb.join_domain(&id("t")).unwrap();
    for e in active.read_log(Lsn(1), usize::MAX, usize::MAX).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    for key in ["k1", "k2"] {
        assert_eq!(version(&standby, key), version(&active, key), "{key}");
    }
    assert_eq!(version(&standby, "k2"), Some(p2.lsn));
    assert_ne!(version(&standby, "k1"), Some(p1.lsn));
    // A snapshot carries the versions too.
    let snap = active.snapshot().unwrap();
    let mut rows = Vec::new();
    snap.for_each::<StoreError>(|item| {
        rows.push(item);
        Ok(())
    })
    .unwrap();
    assert!(rows
        .iter()
        .any(|r| matches!(r, SnapshotItem::KvAt { version, .. } if *version == p2.lsn)));
    let target = ResyncTarget {
        uid: snap.uid.unwrap(),
        position: snap.position.clone(),
        epoch: snap.epoch.clone(),
        history: snap.history.clone(),
        digest: snap.digest,
    };
    let copy = sc.join_domain(&id("t")).unwrap();
    let mut resync = copy.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    for key in ["k1", "k2"] {
        assert_eq!(version(&copy, key), version(&active, key), "{key}");
    }
}

#[test]
fn conditions_decide_in_the_write_transaction_and_a_conflict_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let absent = |k: &str| Condition::Absent {
        key: k.as_bytes().to_vec(),
    };
    let p1 = d.write_if(vec![absent("k")], vec![put("k", "1")]).unwrap();
    let before = d.status().unwrap().position;
    // Absent fails now: the key exists, and its version is named.
    match d.write_if(vec![absent("k")], vec![put("k", "2")]) {
        Err(StoreError::Conflict {
            index: 0,
            key,
            current: Some(v),
            ..
        }) => {
            assert_eq!((key.as_slice(), v), (&b"k"[..], p1.lsn));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        d.status().unwrap().position,
        before,
        "a conflict wrote a record"
    );
    assert_eq!(d.get(b"k").unwrap().value.as_deref(), Some(&b"1"[..]));
    // Version and value conditions; the first failing one is named by index.
    let good = Condition::Version {
        key: b"k".to_vec(),
        version: p1.lsn,
    };
    let stale_value = Condition::Value {
        key: b"k".to_vec(),
        value: b"0".to_vec(),
    };
    match d.write_if(vec![good.clone(), stale_value], vec![put("k", "2")]) {
        Err(StoreError::Conflict { index: 1, .. }) => {}
        other => panic!("expected the second condition to fail, got {other:?}"),
    }
    match d.write_if(vec![absent("gone")], vec![put("x", "1")]) {
        Ok(_) => {}
        other => panic!("absent key, condition holds: {other:?}"),
    }
    match d.write_if(
        vec![Condition::Version {
            key: b"gone".to_vec(),
            version: Lsn(0),
        }],
        vec![put("x", "2")],
    ) {
        Err(StoreError::Conflict { current: None, .. }) => {}
        other => panic!("a version condition on an absent key must fail, got {other:?}"),
    }
    let p = d
        .write_if(
            vec![
                good,
                Condition::Value {
                    key: b"k".to_vec(),
                    value: b"1".to_vec(),
                },
            ],
            vec![put("k", "2")],
        )
        .unwrap();
    assert_eq!(version(&d, "k"), Some(p.lsn));
}

#[test]
fn of_concurrent_read_modify_writes_of_one_key_exactly_one_wins_each_round() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = Arc::new(s.create_domain(&id("t")).unwrap());
    d.put("counter", "0").unwrap();
    const WRITERS: usize = 8;
    for round in 1..=5 {
        let read = d.get_entry(b"counter").unwrap().value.unwrap();
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (d, barrier, seen) = (Arc::clone(&d), Arc::clone(&barrier), read.version);
                std::thread::spawn(move || {
                    barrier.wait();
                    d.write_if(
                        vec![Condition::Version {
                            key: b"counter".to_vec(),
                            version: seen,
                        }],
                        vec![put("counter", &format!("{round}:{w}"))],
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
            .count();
        assert_eq!(
            (won, conflicts),
            (1, WRITERS - 1),
            "round {round}: {results:?}"
        );
    }
}

#[test]
fn a_standby_refuses_a_transaction_as_not_active_before_any_condition() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "b");
    let d = s.join_domain(&id("t")).unwrap();
    assert_eq!(d.status().unwrap().role, Role::Standby);
    match d.write_if(
        vec![Condition::Version {
            key: b"k".to_vec(),
            version: Lsn(9),
        }],
        vec![put("k", "1")],
    ) {
        Err(StoreError::NotActive { .. }) => {}
        other => panic!("expected NotActive, got {other:?}"),
    }
}

#[test]
fn scans_page_in_key_order_within_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let mut ops: Vec<Op> = (0..25)
        .map(|i| put(&format!("r/{i:02}"), "value"))
        .collect();
    ops.push(put("r0", "outside"));
    ops.push(put("q", "outside"));
    let p = d.write(ops).unwrap();
    let range = KeyRange::prefix(b"r/");
    let mut keys = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0;
    loop {
        let page = d
            .scan(&range, after.as_deref(), 10, usize::MAX, false)
            .unwrap();
        assert_eq!(page.position, p);
        pages += 1;
        assert!(page.value.entries.len() <= 10);
        for e in &page.value.entries {
            assert_eq!((e.value.as_slice(), e.version), (&b"value"[..], p.lsn));
        }
        keys.extend(page.value.entries.iter().map(|e| e.key.clone()));
        if !page.value.more {
            break;
        }
        after = keys.last().cloned();
    }
    let want: Vec<Vec<u8>> = (0..25).map(|i| format!("r/{i:02}").into_bytes()).collect();
    assert_eq!((keys, pages), (want, 3));
    // Keys only; a byte budget still sends one entry per page.
    let page = d.scan(&range, None, 100, 1, true).unwrap().value;
    assert_eq!(page.entries.len(), 1);
    assert!(page.more && page.entries[0].value.is_empty());
    // An empty range.
    let none = d.scan(&KeyRange::prefix(b"s/"), None, 10, usize::MAX, false);
    assert!(none.unwrap().value.entries.is_empty());
}

#[test]
fn key_changes_come_from_the_log_in_order_from_a_position_of_this_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let start = d.put("other", "x").unwrap();
    let p2 = d
        .write(vec![put("w/a", "1"), put("elsewhere", "1")])
        .unwrap();
    let p3 = d.delete("w/a").unwrap();
    let p4 = d.put("other", "y").unwrap();
    let range = KeyRange::prefix(b"w/");
    let c = d.key_changes(&start, &range, 100, usize::MAX).unwrap();
    assert_eq!(c.through, p4, "the position after the last record read");
    let seen: Vec<(Vec<u8>, Option<Vec<u8>>, Lsn)> = c
        .events
        .iter()
        .map(|e| (e.key.clone(), e.value.as_ref().map(|v| v.to_vec()), e.lsn))
        .collect();
    assert_eq!(
        seen,
        vec![
            (b"w/a".to_vec(), Some(b"1".to_vec()), p2.lsn),
            (b"w/a".to_vec(), None, p3.lsn),
        ]
    );
    // Resuming from a batch's position gives what follows, and nothing at the end.
    let part = d.key_changes(&start, &range, 1, usize::MAX).unwrap();
    assert_eq!((part.events.len(), &part.through), (1, &p2));
    let rest = d
        .key_changes(&part.through, &range, 100, usize::MAX)
        .unwrap();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].lsn, p3.lsn);
    let end = d.key_changes(&p4, &range, 100, usize::MAX).unwrap();
    assert!(end.events.is_empty() && end.through == p4);
    // A position whose chain is not this replica's, or that it has not reached.
    let forged = Position {
        chain: p2.chain ^ 1,
        ..p2.clone()
    };
    assert!(matches!(
        d.key_changes(&forged, &range, 100, usize::MAX),
        Err(StoreError::NotInHistory { .. })
    ));
    let ahead = Position {
        lsn: Lsn(p4.lsn.0 + 5),
        ..p4.clone()
    };
    assert!(matches!(
        d.key_changes(&ahead, &range, 100, usize::MAX),
        Err(StoreError::NotInHistory { .. })
    ));
    // Once the log is cut, older positions are refused as truncated.
    d.truncate_log(p4.lsn).unwrap();
    assert!(matches!(
        d.key_changes(&start, &range, 100, usize::MAX),
        Err(StoreError::LogTruncated { .. })
    ));
    // What changed since a scan's position, after its last key.
    assert_eq!(d.changed_since(&p4, &range, b"w/").unwrap(), Some(false));
    let p5 = d.put("w/b", "1").unwrap();
    assert_eq!(d.changed_since(&p4, &range, b"w/a").unwrap(), Some(true));
    assert_eq!(d.changed_since(&p4, &range, b"w/c").unwrap(), Some(false));
    assert_eq!(d.changed_since(&p5, &range, b"w/").unwrap(), Some(false));
    assert_eq!(d.changed_since(&start, &range, b"w/").unwrap(), None);
}

#[test]
fn a_database_of_an_earlier_release_gains_versions_from_its_next_writes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    d.put("old", "1").unwrap();
    let path = d.path().to_owned();
    drop(d);
    s.close();
    // As an earlier release left it: no version table.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let table: redb::TableDefinition<&[u8], u64> = redb::TableDefinition::new("kv_version");
        assert!(txn.delete_table(table).unwrap());
        txn.commit().unwrap();
    }
    let s = store(dir.path(), "a");
    let d = s.domain(&id("t")).unwrap();
    assert_eq!(
        version(&d, "old"),
        Some(Lsn(0)),
        "unknown versions read as 0"
    );
    let p = d
        .write_if(
            vec![Condition::Version {
                key: b"old".to_vec(),
                version: Lsn(0),
            }],
            vec![put("old", "2")],
        )
        .unwrap();
    assert_eq!(version(&d, "old"), Some(p.lsn));
    assert!(d.verify().unwrap().is_clean());
}
