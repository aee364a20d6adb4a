//! Store behaviour through the public API: writes, standby applies, CRLs, group commit,
//! at-rest corruption, snapshots and log retention.

use std::collections::HashSet;
use std::sync::Arc;

use domsync_proto::codec::{decode_record, encode_record};
use domsync_proto::model::{CrlError, DomainId, Lsn, NodeId, Op, Record, Role};
use domsync_store::{Domain, Store, StoreError, StoreOptions};

const CRL_1: &[u8] = include_bytes!("../fixtures/crl/fixture-ca-1.der");
const CRL_2: &[u8] = include_bytes!("../fixtures/crl/fixture-ca-2.der");

fn store(dir: &std::path::Path, node: &str) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new(node).unwrap())).unwrap()
}

fn id(s: &str) -> DomainId {
    s.parse().unwrap()
}

/// Ships every record of `active` from `from` to `standby`.
fn ship(active: &Domain, standby: &Domain, from: u64) {
    for e in active.read_log(Lsn(from), usize::MAX, usize::MAX).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
}

#[test]
fn a_write_commits_data_record_and_position_together() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let p1 = d.put("k", "v1").unwrap();
    let p2 = d
        .write(vec![
            Op::Put {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
            },
            Op::Delete { key: b"x".to_vec() },
        ])
        .unwrap();
    assert_eq!((p1.lsn, p2.lsn), (Lsn(1), Lsn(2)));
    let log = d.read_log(Lsn(1), 10, usize::MAX).unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].record.ops.len(), 2);
    let r = d.get(b"k").unwrap();
    assert_eq!(r.value.as_deref(), Some(&b"v2"[..]));
    assert_eq!(r.position, p2);
    assert_eq!(r.role, Role::Active);
    drop(d);
    s.close();
    // Reopened, everything is still there.
    let s = store(dir.path(), "a");
    let d = s.domain(&id("t")).unwrap();
    assert_eq!(d.status().unwrap().position, p2);
    assert!(d.verify().unwrap().is_clean());
}

#[test]
fn standby_refuses_writes_and_applies_in_order_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let active = a.create_domain(&id("t")).unwrap();
    let standby = b.join_domain(&id("t")).unwrap();
    assert!(matches!(
        standby.put("k", "v"),
        Err(StoreError::NotActive { .. })
    ));

    active.put("k1", "v1").unwrap();
    active.install_policy("p", b"rules".to_vec()).unwrap();
    active
        .add_issuer(&domsync_testkit::pki::fixture_crl_issuer())
        .unwrap();
    active.put_crl(CRL_1, true).unwrap();
    active.delete("k1").unwrap();
    let log = active.read_log(Lsn(1), usize::MAX, usize::MAX).unwrap();

    // Out of order: refused, untouched.
    let err = standby.apply(&log[1].bytes).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                expected: Lsn(1),
                got: Lsn(2),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(standby.status().unwrap().position.lsn, Lsn(0));
    // Corrupt: refused, untouched.
    let mut bad = log[0].bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    assert!(matches!(
        standby.apply(&bad),
        Err(StoreError::CorruptRecord { .. })
    ));
    assert_eq!(standby.status().unwrap().position.lsn, Lsn(0));

    ship(&active, &standby, 1);
    // Applying the same record twice is refused: exactly once.
    assert!(matches!(
        standby.apply(&log[3].bytes),
        Err(StoreError::OutOfOrder { .. })
    ));
    // The active does not take records.
    assert!(matches!(
        active.apply(&log[0].bytes),
        Err(StoreError::NotStandby { .. })
    ));

    let (sa, sb) = (active.status().unwrap(), standby.status().unwrap());
    assert_eq!(sa.position, sb.position);
    assert_eq!(sa.digest, sb.digest);
    assert_eq!(sb.history, sa.history);
    let p = standby.policy("p").unwrap();
    assert_eq!(p.role, Role::Standby);
    assert_eq!(p.value.unwrap().info.version, 2);
    assert!(standby.verify().unwrap().is_clean());
    assert_eq!(
        active.snapshot().unwrap().compute_digest().unwrap(),
        sb.digest
    );
}

#[test]
fn a_record_from_another_history_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let b = store(&dir.path().join("b"), "b");
    let c = store(&dir.path().join("c"), "c");
    let one = a.create_domain(&id("t")).unwrap();
    let other = c.create_domain(&id("t")).unwrap();
    let standby = b.join_domain(&id("t")).unwrap();
    one.put("k", "1").unwrap();
    one.put("k", "2").unwrap();
    other.put("k", "x").unwrap();
    other.put("k", "y").unwrap();
    ship(&one, &standby, 1);
    // A lsn-3 record forged on top of the other history: right lsn, wrong chain.
    let mut rec: Record =
        decode_record(&other.read_log(Lsn(2), 1, usize::MAX).unwrap()[0].bytes).unwrap();
    rec.lsn = Lsn(3);
    let err = standby.apply(&encode_record(&rec).unwrap()).unwrap_err();
    assert!(matches!(err, StoreError::ChainMismatch { .. }), "{err}");
    assert_eq!(standby.status().unwrap().position.lsn, Lsn(2));
}

#[test]
fn crl_upload_is_parsed_and_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    assert!(matches!(
        d.put_crl(b"not a crl", true),
        Err(StoreError::Crl { .. })
    ));
    let mut trailing = CRL_1.to_vec();
    trailing.push(0);
    assert!(matches!(
        d.put_crl(&trailing, true),
        Err(StoreError::Crl { .. })
    ));
    // No issuer certificate held yet: refused, naming the check.
    let err = d.put_crl(CRL_2, true).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Crl {
                source: CrlError::UnknownIssuer { .. },
                ..
            }
        ),
        "{err}"
    );
    d.add_issuer(&domsync_testkit::pki::fixture_crl_issuer())
        .unwrap();
    d.put_crl(CRL_2, true).unwrap();
    let err = d.put_crl(CRL_1, true).unwrap_err();
    assert!(matches!(err, StoreError::CrlOutdated { .. }), "{err}");
    let crls = d.crls().unwrap();
    assert_eq!(crls.value.len(), 1);
    let crl = &crls.value[0];
    assert_eq!(crl.number.to_string(), "2");
    assert!(crl.issuer.contains("domsync fixture CA"));
    assert!(crl.next_update.unwrap() > crl.this_update);
    assert_eq!(d.crl(&crl.issuer).unwrap().value.unwrap().der, CRL_2);
    // Two records (the issuer, the CRL): refused uploads leave no trace.
    assert_eq!(d.status().unwrap().position.lsn, Lsn(2));
}

#[test]
fn concurrent_writers_get_contiguous_unique_lsns_one_record_each() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let writers = 32;
    let per = 20;
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for w in 0..writers {
            let (d, acked) = (d.clone(), Arc::clone(&acked));
            scope.spawn(move || {
                for i in 0..per {
                    let key = format!("w{w}-{i}");
                    let pos = d.put(key.clone(), key.clone()).unwrap();
                    acked.lock().unwrap().push((pos.lsn, key));
                }
            });
        }
    });
    let acked = acked.lock().unwrap();
    let total = writers * per;
    let lsns: HashSet<u64> = acked.iter().map(|(l, _)| l.0).collect();
    assert_eq!(lsns.len(), total, "every writer got its own lsn");
    assert_eq!(lsns, (1..=total as u64).collect());
    let log = d.read_log(Lsn(1), usize::MAX, usize::MAX).unwrap();
    assert_eq!(log.len(), total);
    for (lsn, key) in acked.iter() {
        let rec = &log[(lsn.0 - 1) as usize].record;
        assert_eq!(
            rec.ops,
            vec![Op::Put {
                key: key.clone().into_bytes(),
                value: key.clone().into_bytes()
            }]
        );
    }
    let stats = d.stats();
    assert_eq!(stats.records, total as u64);
    assert!(stats.commits <= stats.records);
}

#[test]
fn a_byte_flipped_on_disk_is_reported_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let marker = b"MARKER-7f3a9c-only-in-the-log";
    let path;
    {
        let s = store(dir.path(), "a");
        let d = s.create_domain(&id("t")).unwrap();
        d.put("a", "1").unwrap();
        d.delete(marker.to_vec()).unwrap(); // the key exists nowhere but in record 2
        d.put("b", "2").unwrap();
        path = d.path().to_path_buf();
    }
    // The record is in the log segment (the durable point) and nowhere in the tables.
    let mut flipped = 0;
    let log_dir = path.with_extension("log");
    for file_path in [path.clone()].into_iter().chain(
        std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| e.unwrap().path()),
    ) {
        let mut file = std::fs::read(&file_path).unwrap();
        let mut i = 0;
        while let Some(off) = file[i..].windows(marker.len()).position(|w| w == marker) {
            file[i + off + 3] ^= 0x01;
            flipped += 1;
            i += off + marker.len();
        }
        std::fs::write(&file_path, &file).unwrap();
    }
    assert!(flipped >= 1, "marker not found in the domain's files");

    let s = store(dir.path(), "a");
    let d = s.domain(&id("t")).unwrap();
    let report = d.verify().unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.faults[0].lsn, Some(Lsn(2)), "{:?}", report.faults);
    let err = d.read_log(Lsn(1), 10, usize::MAX).unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptRecord { lsn: Lsn(2), .. }),
        "{err}"
    );
    assert!(err.to_string().contains("domain t"));
    // Record 1 is still served on its own; nothing from 2 on is.
    assert_eq!(d.read_log(Lsn(1), 1, usize::MAX).unwrap().len(), 1);
    // A standby fed from this log never gets record 2.
    let b = store(&dir.path().join("b"), "b");
    let standby = b.join_domain(&id("t")).unwrap();
    for e in d.read_log(Lsn(1), 1, usize::MAX).unwrap() {
        standby.apply(&e.bytes).unwrap();
    }
    assert!(d.read_log(Lsn(2), 10, usize::MAX).is_err());
    assert_eq!(standby.status().unwrap().position.lsn, Lsn(1));
}

#[test]
fn truncation_keeps_the_chain_and_refuses_old_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    for i in 0..10 {
        d.put(format!("k{i}"), "v").unwrap();
    }
    assert_eq!(d.truncate_log(Lsn(6)).unwrap(), Lsn(6));
    assert!(matches!(
        d.read_log(Lsn(3), 10, usize::MAX),
        Err(StoreError::LogTruncated { .. })
    ));
    assert_eq!(d.read_log(Lsn(6), 100, usize::MAX).unwrap().len(), 5);
    assert!(d.verify().unwrap().is_clean());
    d.put("k", "after").unwrap();
    assert!(d.verify().unwrap().is_clean());
    // Truncating past the end stops at the end.
    assert_eq!(d.truncate_log(Lsn(1000)).unwrap(), Lsn(12));
    assert!(d.verify().unwrap().is_clean());
}

#[test]
fn snapshot_sees_one_position() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    d.put("k1", "v").unwrap();
    d.install_policy("p", b"x".to_vec()).unwrap();
    let snap = d.snapshot().unwrap();
    d.put("k2", "later").unwrap();
    let mut rows = 0;
    snap.for_each(|_| {
        rows += 1;
        Ok::<(), StoreError>(())
    })
    .unwrap();
    assert_eq!(rows, 2);
    assert_eq!(snap.position.lsn, Lsn(2));
    assert_eq!(snap.compute_digest().unwrap(), snap.digest);
    assert_ne!(d.status().unwrap().digest, snap.digest);
}

#[test]
fn commits_are_pushed_to_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    let d = s.create_domain(&id("t")).unwrap();
    let mut rx = d.subscribe();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pos = d
            .write_async(vec![Op::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            }])
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), pos);
    });
}

#[test]
fn domains_are_isolated_files_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), "a");
    s.create_domain(&id("one")).unwrap().put("k", "1").unwrap();
    s.create_domain(&id("two")).unwrap();
    assert!(matches!(
        s.create_domain(&id("one")),
        Err(StoreError::DomainExists { .. })
    ));
    assert_eq!(s.domain_ids().unwrap(), vec![id("one"), id("two")]);
    assert_eq!(s.domain(&id("two")).unwrap().get(b"k").unwrap().value, None);
    assert!(matches!(
        s.domain(&id("three")),
        Err(StoreError::UnknownDomain { .. })
    ));
    assert!("../x".parse::<DomainId>().is_err());
}

/// Invariant 5 with relays: a standby takes records of an older epoch that the active which
/// accepted its stream relays (the stream was accepted in `since`), and refuses the stream's
/// next batch once an epoch above `since` naming another node is recorded (a fence).
#[test]
fn a_relayed_older_epoch_is_applied_and_a_fence_after_the_stream_began_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let id: DomainId = "t1".parse().unwrap();
    let (b, c, s, x) = (
        NodeId::new("b").unwrap(),
        NodeId::new("c").unwrap(),
        NodeId::new("s").unwrap(),
        NodeId::new("x").unwrap(),
    );
    let writer = Store::open(dir.path().join("b"), StoreOptions::new(b.clone())).unwrap();
    let active = writer.create_domain(&id).unwrap();
    for i in 0..3 {
        active.put(format!("k{i}"), "v").unwrap();
    }
    let written_by_b = active.status().unwrap().epoch;
    let log: Vec<Vec<u8>> = active
        .read_log(Lsn(1), 100, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    let standby = Store::open(dir.path().join("s"), StoreOptions::new(s))
        .unwrap()
        .join_domain(&id)
        .unwrap();
    // The standby knows b's epoch only (it followed b); c, a newer active it has no epoch of
    // yet, accepted its stream and relays b's records.
    standby.demote(&written_by_b).unwrap();
    let since = standby.highest_epoch().unwrap();
    let at = standby
        .apply_batch_from(&c, &since, log[..2].to_vec())
        .unwrap();
    assert_eq!(at.lsn, Lsn(2));
    assert_eq!(at.epoch, written_by_b, "b's records, relayed by c");
    // Another promotion fences this standby (an epoch of x) while c's stream is open: c's next
    // batch is refused and nothing of it is applied.
    standby
        .demote(&domsync_proto::model::Epoch {
            term: written_by_b.term + 2,
            node: x,
        })
        .unwrap();
    match standby.apply_batch_from(&c, &since, log[2..].to_vec()) {
        Err(StoreError::Fenced { from, .. }) => assert_eq!(from, c),
        other => panic!("a batch after the fence was not refused: {other:?}"),
    }
    assert_eq!(standby.status().unwrap().position.lsn, Lsn(2));
}

/// Values longer than a piece (248 KiB) are kept in pieces: every read path, the digest, the
/// log shipped to a standby, a snapshot and `verify` see them whole, and replacing or removing
/// one leaves none of its pieces behind.
#[test]
fn long_values_are_read_whole_by_every_path_and_replaced_cleanly() {
    use domsync_proto::app::KeyRange;
    use domsync_store::ResyncTarget;
    let dir = tempfile::tempdir().unwrap();
    let a = store(&dir.path().join("a"), "a");
    let d = a.create_domain(&id("t")).unwrap();
    let pattern =
        |len: usize, salt: u8| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8 ^ salt).collect() };
    let piece = 248 * 1024;
    let long = pattern(3 * piece + 5, 1);
    let exact = pattern(piece, 2);
    let package = pattern((1 << 20) + 3, 3);
    d.put("long", long.clone()).unwrap();
    d.put("exact", exact.clone()).unwrap();
    d.put("short", "v").unwrap();
    d.install_policy("pkg", package.clone()).unwrap();

    assert_eq!(d.get(b"long").unwrap().value.as_deref(), Some(&long[..]));
    assert_eq!(d.get(b"exact").unwrap().value.as_deref(), Some(&exact[..]));
    assert_eq!(d.get_entry(b"long").unwrap().value.unwrap().value, long);
    let listed = d.list(b"", 10).unwrap().value;
    assert_eq!(listed[1], (b"long".to_vec(), long.clone()));
    let page = d
        .scan(&KeyRange::prefix(b"lo"), None, 10, usize::MAX, false)
        .unwrap()
        .value;
    assert_eq!(page.entries[0].value, long);
    let reader = d.policy_reader("pkg").unwrap().value.unwrap();
    let mut streamed = Vec::new();
    while streamed.len() < package.len() {
        let part = reader.read_at(streamed.len() as u64, 100_000).unwrap();
        assert!(!part.is_empty());
        streamed.extend(part);
    }
    assert_eq!(streamed, package);
    drop(reader);
    assert!(d.verify().unwrap().is_clean());

    // Shipped as records, the standby ends in the same state and digest.
    let b = store(&dir.path().join("b"), "b");
    let standby = b.join_domain(&id("t")).unwrap();
    ship(&d, &standby, 1);
    assert_eq!(
        standby.get(b"long").unwrap().value.as_deref(),
        Some(&long[..])
    );
    assert_eq!(standby.status().unwrap().digest, d.status().unwrap().digest);

    // Through a snapshot into a fresh replica.
    let c = store(&dir.path().join("c"), "c");
    let fresh = c.join_domain(&id("t")).unwrap();
    let snap = d.snapshot().unwrap();
    let mut resync = fresh
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
    let mut rows = Vec::new();
    snap.for_each::<StoreError>(|row| {
        rows.push(row);
        Ok(())
    })
    .unwrap();
    drop(snap);
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    assert_eq!(
        fresh.get(b"long").unwrap().value.as_deref(),
        Some(&long[..])
    );
    let reader = fresh.policy_reader("pkg").unwrap().value.unwrap();
    assert_eq!(
        reader.read_at(piece as u64 - 2, 4).unwrap(),
        package[piece - 2..piece + 2]
    );
    drop(reader);
    assert!(fresh.verify().unwrap().is_clean());

    // Replaced by a shorter value, removed: no piece is left, and the digests still agree.
    d.put("long", "now short").unwrap();
    d.delete("exact").unwrap();
    d.remove_policy("pkg").unwrap();
    let back = pattern(2 * piece + 1, 4);
    d.put("exact", back.clone()).unwrap();
    ship(&d, &standby, 5);
    for r in [&d, &standby] {
        assert_eq!(
            r.get(b"long").unwrap().value.as_deref(),
            Some(&b"now short"[..])
        );
        assert_eq!(r.get(b"exact").unwrap().value.as_deref(), Some(&back[..]));
        assert!(r.policy_reader("pkg").unwrap().value.is_none());
        assert!(r.verify().unwrap().is_clean());
    }
    assert_eq!(standby.status().unwrap().digest, d.status().unwrap().digest);
    let path = d.path().to_path_buf();
    drop((d, standby, fresh));
    drop((a, b, c));
    // Only the two pieces of the last value remain in the active's file.
    let db = redb::Database::open(path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let pieces: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("pieces");
    let table = txn.open_table(pieces).unwrap();
    assert_eq!(redb::ReadableTableMetadata::len(&table).unwrap(), 2);
}
