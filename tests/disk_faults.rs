//! Storage faults under the store: an fsync that fails (EIO, injected through the backend
//! hook) and a file system that fills up (ENOSPC, on a real small tmpfs when this runs as
//! root, injected otherwise). A failed write is never acknowledged, nothing acknowledged is
//! damaged, and the same `Domain` handle accepts writes again once the cause is gone.

use std::path::{Path, PathBuf};
use std::process::Command;

use domsync_proto::model::StateDigest;
use domsync_proto::model::{DomainId, NodeId};
use domsync_store::{Domain, FaultKind, FaultPlan, Store, StoreError, StoreOptions};

fn id() -> DomainId {
    "tenant".parse().unwrap()
}

fn options(plan: Option<&FaultPlan>) -> StoreOptions {
    let mut o = StoreOptions::new(NodeId::new("a").unwrap());
    o.cache_bytes = 1 << 20;
    o.backend = plan.map(FaultPlan::factory);
    o
}

/// The content digest of a fresh store that received `writes` in order.
fn replay(writes: &[(String, Vec<u8>)]) -> StateDigest {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options(None)).unwrap();
    let d = store.create_domain(&id()).unwrap();
    for (k, v) in writes {
        d.put(k.as_bytes(), v.clone()).unwrap();
    }
    d.status().unwrap().digest
}

/// Every acknowledged write reads back, the store verifies clean, and its digest is that of
/// a replay of `writes`.
fn assert_consistent(d: &Domain, writes: &[(String, Vec<u8>)]) {
    for (k, v) in writes {
        assert_eq!(
            d.get(k.as_bytes()).unwrap().value.as_deref(),
            Some(v.as_slice()),
            "acknowledged key {k}"
        );
    }
    let report = d.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    let status = d.status().unwrap();
    assert_eq!(status.position.lsn.0, writes.len() as u64);
    assert_eq!(status.digest, replay(writes));
    assert_eq!(
        d.snapshot().unwrap().compute_digest().unwrap(),
        status.digest
    );
}

#[test]
fn a_failed_fsync_is_not_acknowledged_and_the_domain_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let store = Store::open(dir.path(), options(Some(&plan))).unwrap();
    let d = store.create_domain(&id()).unwrap();
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..10 {
        let (k, v) = (format!("k{i}"), vec![i as u8; 100]);
        d.put(k.as_bytes(), v.clone()).unwrap();
        acked.push((k, v));
    }

    plan.fail_sync_after(0, FaultKind::Eio);
    let err = d.put("failed", "x").unwrap_err();
    assert!(
        matches!(err, StoreError::Storage { .. }),
        "expected a storage error, got {err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("not acknowledged"), "{msg}");
    assert!(plan.injected() > 0);
    // Still failing: the domain cannot reopen yet, and says so with a typed error.
    let again = d.put("failed-too", "y").unwrap_err();
    assert!(again.is_storage_fault(), "{again:?}");

    plan.disarm();
    // The same handle writes again: the writer reopened the database from disk.
    d.put("after", "z").unwrap();
    // A failure of the final fsync may leave the commit durable: the position read back
    // tells, and the state holds the failed write entirely or not at all.
    let failed_durable = d.get(b"failed").unwrap().value.is_some();
    assert!(d.get(b"failed-too").unwrap().value.is_none());
    println!("the write whose fsync failed turned out durable: {failed_durable}");
    let mut expected = acked.clone();
    if failed_durable {
        expected.push(("failed".into(), b"x".to_vec()));
    }
    expected.push(("after".into(), b"z".to_vec()));
    assert_consistent(&d, &expected);

    // Reopened from disk, on a healthy backend, the store is the same.
    drop(d);
    store.close();
    drop(store);
    let store = Store::open(dir.path(), options(None)).unwrap();
    let d = store.domain(&id()).unwrap();
    assert_consistent(&d, &expected);
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if out.status.success() {
            Some(Tmpfs(dir.to_path_buf()))
        } else {
            eprintln!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot unmount {}", self.0.display());
        }
    }
}

#[test]
fn a_full_disk_is_reported_and_writes_resume_once_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Declared before the store so that it is unmounted after the store is dropped.
    // DOMSYNC_TEST_NO_TMPFS=1 runs the fallback where mounting is allowed.
    let tmpfs = if std::env::var_os("DOMSYNC_TEST_NO_TMPFS").is_some() {
        None
    } else {
        Tmpfs::mount(&mnt, "4m")
    };
    let plan = FaultPlan::new();
    let (state, ballast) = match &tmpfs {
        Some(_) => {
            println!("path: real ENOSPC on a 4 MiB tmpfs");
            (mnt.join("state"), Some(mnt.join("ballast")))
        }
        None => {
            println!("path: ENOSPC injected through the backend (tmpfs not mountable here)");
            (dir.path().join("state"), None)
        }
    };
    if let Some(b) = &ballast {
        std::fs::write(b, vec![0xA5u8; 1 << 20]).unwrap();
    }
    let store = Store::open(
        &state,
        options(if ballast.is_some() { None } else { Some(&plan) }),
    )
    .unwrap();
    let d = store.create_domain(&id()).unwrap();

    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full = None;
    for i in 0..2_000u32 {
        if ballast.is_none() && i == 20 {
            plan.fail_after(0, FaultKind::DiskFull);
        }
        let (k, v) = (format!("k{i:05}"), vec![(i % 251) as u8; 16 * 1024]);
        match d.put(k.as_bytes(), v.clone()) {
            Ok(_) => acked.push((k, v)),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the file system never filled up");
    let StoreError::DiskFull { domain, path } = &err else {
        panic!("expected DiskFull, got {err:?}");
    };
    assert_eq!(*domain, id());
    // The file that could not grow: the database, or a segment of the domain's log.
    let log_dir = d.path().with_extension("log");
    assert!(
        path == d.path() || path.starts_with(&log_dir),
        "{}",
        path.display()
    );
    let msg = err.to_string();
    assert!(msg.contains("is full"), "{msg}");
    assert!(msg.contains("not acknowledged"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    println!("{} writes acknowledged before: {msg}", acked.len());
    assert!(acked.len() >= 20, "only {} writes fit", acked.len());

    // While the disk is full, reads give the acknowledged data or a typed error, never
    // anything else.
    let first = &acked[0];
    match d.get(first.0.as_bytes()) {
        Ok(r) => assert_eq!(r.value.as_deref(), Some(first.1.as_slice())),
        Err(e) => assert!(e.is_storage_fault(), "{e:?}"),
    }
    // Still full: still refused, with the same typed error.
    let again = d.put("still-full", vec![1u8; 16 * 1024]).unwrap_err();
    assert!(
        matches!(again, StoreError::DiskFull { .. }),
        "expected DiskFull, got {again:?}"
    );

    // Free space: the same handle writes again, without reopening the store.
    match &ballast {
        Some(b) => std::fs::remove_file(b).unwrap(),
        None => plan.disarm(),
    }
    d.put("after", "space freed").unwrap();
    // The refused writes are absent or (fsync failed after the data reached the file)
    // present whole; here the fs refused the data itself, so they must be absent.
    assert!(d.get(b"still-full").unwrap().value.is_none());
    let failed_key = format!("k{:05}", acked.len());
    let failed_durable = d.get(failed_key.as_bytes()).unwrap().value;
    assert!(
        failed_durable.is_none(),
        "a write refused for ENOSPC is durable"
    );
    let mut expected = acked.clone();
    expected.push(("after".into(), b"space freed".to_vec()));
    assert_consistent(&d, &expected);

    drop(d);
    store.close();
    drop(store);
    let store = Store::open(&state, options(None)).unwrap();
    let d = store.domain(&id()).unwrap();
    assert_consistent(&d, &expected);
    drop(d);
    drop(store);
    drop(tmpfs);
}

/// redb latches a failed read as it does a failed write; a domain that is only read must
/// recover too: the reader that meets the fault asks the writer to reopen the database.
#[test]
fn a_failed_read_recovers_without_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan::new();
    let mut acked = Vec::new();
    {
        let store = Store::open(dir.path(), options(None)).unwrap();
        let d = store.create_domain(&id()).unwrap();
        for i in 0..50 {
            let (k, v) = (format!("k{i:03}"), vec![i as u8; 500]);
            d.put(k.as_bytes(), v.clone()).unwrap();
            acked.push((k, v));
        }
    }
    // Reopened without a read cache: the next get reads from the backend.
    let mut cold = options(Some(&plan));
    cold.cache_bytes = 0;
    let store = Store::open(dir.path(), cold).unwrap();
    let d = store.domain(&id()).unwrap();
    plan.fail_after(0, FaultKind::Eio);
    let err = d.get(acked[25].0.as_bytes()).unwrap_err();
    assert!(err.is_storage_fault(), "{err:?}");
    assert!(plan.injected() > 0);
    plan.disarm();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let read = loop {
        match d.get(acked[25].0.as_bytes()) {
            Ok(r) => break r,
            Err(e) if e.is_storage_fault() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("reads did not recover: {e}"),
        }
    };
    assert_eq!(read.value.as_deref(), Some(acked[25].1.as_slice()));
    assert_consistent(&d, &acked);
}
