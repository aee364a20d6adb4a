//! The log-first storage engine on disk: records are durable in the domain's segment log
//! before the tables hold them durably; opening replays the log past the last checkpoint,
//! cuts a torn tail and never a complete record; databases of store format 1 (log in a
//! table) are migrated at open.

use std::path::{Path, PathBuf};

use domsync_proto::codec::encode_record;
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Record};
use domsync_store::{Store, StoreError, StoreOptions};
use redb::{ReadableDatabase as _, TableDefinition};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn store(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new("a").unwrap())).unwrap()
}

fn id() -> DomainId {
    "t".parse().unwrap()
}

/// The newest segment of the domain's log and the offset where its records end.
fn newest_segment(db: &Path) -> (PathBuf, usize) {
    let dir = db.with_extension("log");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let seg = segs.pop().expect("a segment");
    let bytes = std::fs::read(&seg).unwrap();
    // Frames: version byte 1, u32 length, payload, u32 CRC; a zero byte ends them.
    let mut at = 32;
    while bytes[at] != 0 {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 5 + len + 4;
    }
    (seg, at)
}

fn write_at(path: &Path, at: usize, data: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at..at + data.len()].copy_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Writes 5 records, closes (a clean close checkpoints at lsn 5), and returns the next record
/// (lsn 6) as its active would have written it, not yet anywhere.
fn five_records_and_the_sixth(dir: &Path) -> (PathBuf, Record) {
    let s = store(dir);
    let d = s.create_domain(&id()).unwrap();
    for i in 0..5 {
        d.put(format!("k{i}"), "v").unwrap();
    }
    let st = d.status().unwrap();
    let path = d.path().to_path_buf();
    drop(d);
    s.close();
    let sixth = Record {
        epoch: st.position.epoch.clone(),
        lsn: Lsn(6),
        time: 1,
        prev_chain: st.position.chain,
        ops: vec![Op::Put {
            key: b"only-in-the-log".to_vec(),
            value: b"6".to_vec(),
        }],
    };
    (path, sixth)
}

/// A record that reached the log but not a checkpoint (a crash after its writer was answered)
/// is replayed into the tables at open; a torn frame after it is cut, and the next write
/// takes its place.
#[test]
fn records_past_the_checkpoint_are_replayed_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sixth) = five_records_and_the_sixth(dir.path());
    let (seg, end) = newest_segment(&path);
    let frame = encode_record(&sixth).unwrap();
    write_at(&seg, end, &frame);
    // A group commit torn by the crash: the start of a frame, cut short.
    let mut seventh = sixth.clone();
    seventh.lsn = Lsn(7);
    let torn = encode_record(&seventh).unwrap();
    write_at(&seg, end + frame.len(), &torn[..torn.len() / 2]);

    let s = store(dir.path());
    let d = s.domain(&id()).unwrap();
    let st = d.status().unwrap();
    assert_eq!(st.position.lsn, Lsn(6), "record 6 replayed, torn 7 cut");
    assert_eq!(
        d.get(b"only-in-the-log").unwrap().value.as_deref(),
        Some(&b"6"[..])
    );
    // The torn bytes are gone from the file (zeroed), not left to be misread later.
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes[end + frame.len()..].iter().all(|b| *b == 0));
    assert_eq!(d.put("next", "7").unwrap().lsn, Lsn(7));
    assert!(d.verify().unwrap().is_clean());
    drop(d);
    s.close();
    // And all of it survives the next open.
    let s = store(dir.path());
    let d = s.domain(&id()).unwrap();
    assert_eq!(d.status().unwrap().position.lsn, Lsn(7));
    assert_eq!(d.read_log(Lsn(1), 100, usize::MAX).unwrap().len(), 7);
    assert!(d.verify().unwrap().is_clean());
}

/// A damaged record followed by a complete one was acknowledged: it is never cut as a torn
/// tail. The domain refuses to open, in one line naming the record and the file.
#[test]
fn a_damaged_record_before_a_complete_one_is_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (path, sixth) = five_records_and_the_sixth(dir.path());
    let (seg, end) = newest_segment(&path);
    let mut frame = encode_record(&sixth).unwrap();
    let mut seventh = sixth.clone();
    seventh.lsn = Lsn(7);
    seventh.prev_chain = domsync_proto::codec::chain_next(sixth.prev_chain, &frame);
    let next = encode_record(&seventh).unwrap();
    let at = frame.len() / 2;
    frame[at] ^= 0x40;
    write_at(&seg, end, &frame);
    write_at(&seg, end + frame.len(), &next);

    let s = store(dir.path());
    let err = s.domain(&id()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(msg.contains("log record 6"), "{msg}");
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // Nothing was cut: both frames are still in the file.
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(
        &bytes[end + frame.len()..end + frame.len() + next.len()],
        &next[..]
    );
}

/// Removing the segments under an existing database (records the tables hold) is reported
/// at open, never papered over with an empty log.
#[test]
fn a_missing_log_is_reported_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = five_records_and_the_sixth(dir.path());
    std::fs::remove_dir_all(path.with_extension("log")).unwrap();
    let s = store(dir.path());
    let msg = s.domain(&id()).unwrap_err().to_string();
    assert!(msg.contains("missing"), "{msg}");
    assert!(msg.contains("domain t"), "{msg}");
}

/// A database of store format 1 (records in its `log` table, no segments) is migrated at
/// open: same records, same state, a clean verify; the table is gone and the segments hold
/// the log.
#[test]
fn a_format_1_database_is_migrated_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, frames, digest) = {
        let s = store(dir.path());
        let d = s.create_domain(&id()).unwrap();
        for i in 0..300 {
            d.put(format!("k{i}"), format!("v{i}")).unwrap();
        }
        d.delete("k7").unwrap();
        d.truncate_log(Lsn(11)).unwrap();
        let frames: Vec<(u64, Vec<u8>)> = d
            .read_log(Lsn(11), usize::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.record.lsn.0, e.bytes))
            .collect();
        let digest = d.status().unwrap().digest;
        (d.path().to_path_buf(), frames, digest)
    };
    // Turn it into what format 1 wrote: the log in a table, no log row, no segments.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            for (lsn, bytes) in &frames {
                log.insert(*lsn, bytes.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(META).unwrap();
            assert!(meta.remove("log").unwrap().is_some());
        }
        txn.commit().unwrap();
    }
    std::fs::remove_dir_all(path.with_extension("log")).unwrap();

    let s = store(dir.path());
    let d = s.domain(&id()).unwrap();
    let st = d.status().unwrap();
    assert_eq!(st.position.lsn, Lsn(301));
    assert_eq!(st.log_start, Lsn(11));
    assert_eq!(st.digest, digest);
    let migrated: Vec<(u64, Vec<u8>)> = d
        .read_log(Lsn(11), usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.record.lsn.0, e.bytes))
        .collect();
    assert_eq!(migrated, frames);
    assert!(d.verify().unwrap().is_clean());
    assert_eq!(d.put("after", "x").unwrap().lsn, Lsn(302));
    drop(d);
    s.close();
    let db = redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(txn.open_table(LOG).is_err(), "the log table is dropped");
    assert!(txn.open_table(META).unwrap().get("log").unwrap().is_some());
}

/// The write path syncs the log once per group commit, not the database: 200 commits cost 200
/// syncs of the segment and almost none of the tables (redb syncs its file only when it
/// grows it, a handful of times here); a checkpoint then syncs the database.
#[test]
fn a_group_commit_is_one_log_sync_and_the_tables_are_synced_only_when_they_grow() {
    use domsync_store::FaultPlan;
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let mut options = StoreOptions::new(NodeId::new("a").unwrap());
    options.backend = Some(plan.factory());
    options.checkpoint_interval = std::time::Duration::from_secs(3600);
    options.writer_threads = 1;
    let s = Store::open(dir.path(), options).unwrap();
    let d = s.create_domain(&id()).unwrap();
    let count = |suffix: &str| -> u64 {
        plan.syncs()
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|e| e == suffix))
            .map(|(_, n)| n)
            .sum()
    };
    let (log0, db0) = (count("seg"), count("redb"));
    d.put("one", "1").unwrap();
    assert_eq!((count("seg") - log0, count("redb") - db0), (1, 0));

    // 200 commits in a row, then 64 writers at once (however they are batched).
    let commits0 = d.stats().commits;
    let (log1, db1) = (count("seg"), count("redb"));
    for i in 0..200 {
        d.put(format!("seq{i}"), vec![b'v'; 200]).unwrap();
    }
    std::thread::scope(|scope| {
        for i in 0..64 {
            let d = d.clone();
            scope.spawn(move || d.put(format!("k{i}"), "v").unwrap());
        }
    });
    let commits = d.stats().commits - commits0;
    assert!((201..=264).contains(&commits), "{commits}");
    assert_eq!(count("seg") - log1, commits);
    let table_syncs = count("redb") - db1;
    assert!(
        table_syncs <= 5,
        "{table_syncs} database syncs for {commits} commits"
    );
    // Closing checkpoints: the database is synced then, off the write path.
    drop(d);
    s.close();
    assert!(count("redb") > db1);
}
