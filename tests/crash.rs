//! Crash test: a child process writes from several threads and is killed with SIGKILL at a
//! random moment; every write it acknowledged must survive, and the store must verify clean.
//!
//! The test binary re-executes itself: `crash_child` does nothing unless
//! `DOMSYNC_CRASH_CHILD_DIR` is set, in which case it writes forever.
//!
//! Two workloads: plain writes (the kill lands in group commits, mostly before any
//! checkpoint, so the log is replayed at every reopen), and `churn`: checkpoints every 2 ms,
//! every tenth value 16 KiB (segments roll over), one in a hundred 600 KiB (stored in pieces)
//! and a retention thread that keeps cutting
//! the log, so kills also land in checkpoints, roll-overs and segment removal.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domsync_proto::model::{DomainId, Lsn, NodeId};
use domsync_store::{Store, StoreError, StoreOptions};
use domsync_testkit::rng::Rng;

const CHILD_ENV: &str = "DOMSYNC_CRASH_CHILD_DIR";
const MODE_ENV: &str = "DOMSYNC_CRASH_MODE";
const THREADS: usize = 4;
const CYCLES: usize = 50;
const MAX_ACKS: u64 = 200;
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

fn domain_id() -> DomainId {
    "crash".parse().expect("valid domain id")
}

fn node() -> NodeId {
    NodeId::new("n").expect("valid node id")
}

fn value_of(key: &str) -> Vec<u8> {
    let mut v = format!("value-of-{key}-{}", key.len()).into_bytes();
    // Churn keys ending in 7 carry 16 KiB, so the log rolls over to new segments.
    if key.starts_with('c') && key.contains("7-") {
        v.resize(16 * 1024, b'.');
    }
    // One churn key in a hundred carries 600 KiB: stored in three pieces.
    if key.starts_with('c') && key.contains("33-r") {
        v.resize(600 * 1024, b'#');
    }
    v
}

/// The child: opens (or creates) the domain and writes unique keys from 4 threads forever,
/// printing `ack <key> <lsn>` after every acknowledged write.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let churn = std::env::var(MODE_ENV).is_ok_and(|m| m == "churn");
    let mut options = StoreOptions::new(node());
    if churn {
        options.checkpoint_interval = Duration::from_millis(2);
    }
    let store = Store::open(&dir, options).expect("open store");
    let id = domain_id();
    let domain = match store.domain(&id) {
        Ok(d) => d,
        Err(StoreError::UnknownDomain { .. }) => store.create_domain(&id).expect("create"),
        Err(e) => panic!("open domain: {e}"),
    };
    // Keys must be unique across child runs too: tag them with the lsn this run starts at
    // (each earlier run acknowledged at least one write, so it strictly grows).
    let run = domain.status().expect("status").position.lsn.0;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    if churn {
        // Retention: keep about the last 50 records in the log.
        let domain = domain.clone();
        std::thread::spawn(move || loop {
            let end = domain.status().expect("status").position.lsn.0;
            domain
                .truncate_log(Lsn(end.saturating_sub(50).max(1)))
                .expect("truncate");
            std::thread::sleep(Duration::from_millis(3));
        });
    }
    let prefix = if churn { "c" } else { "t" };
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let domain = domain.clone();
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for counter in 0u64.. {
                    let key = format!("{prefix}{t}-{counter}-r{run}");
                    let pos = domain
                        .put(key.as_bytes(), value_of(&key))
                        .expect("put failed");
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    writeln!(out, "ack {key} {}", pos.lsn.0).expect("write ack");
                    out.flush().expect("flush ack");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
}

/// Parses one whole `ack <key> <lsn>` line; anything else (e.g. a line cut by the kill) is
/// ignored.
fn parse_ack(line: &str) -> Option<(String, u64)> {
    let mut parts = line.split(' ');
    if parts.next()? != "ack" {
        return None;
    }
    let key = parts.next()?.to_string();
    let lsn = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((key, lsn))
}

/// Runs one child, kills it after at least `want` acks, and returns all whole acks it printed.
fn run_child(dir: &Path, want: u64, cycle: usize, mode: &str) -> Vec<(String, u64)> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(MODE_ENV, mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<(String, u64)>();
    let reader = std::thread::spawn(move || {
        // Read raw bytes: only lines ending in '\n' count, so a line cut by the kill is dropped.
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if buf.last() != Some(&b'\n') {
                break;
            }
            let Ok(line) = std::str::from_utf8(&buf[..buf.len() - 1]) else {
                continue;
            };
            if let Some(ack) = parse_ack(line) {
                if tx.send(ack).is_err() {
                    break;
                }
            }
        }
    });

    let mut acks = Vec::new();
    while (acks.len() as u64) < want {
        match rx.recv_timeout(ACK_TIMEOUT) {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "cycle {cycle}: child gave {} of {want} acks before {e:?} \
                     (child status {status:?}); child hung or died",
                    acks.len()
                );
            }
        }
    }
    child.kill().expect("SIGKILL child");
    child.wait().expect("wait child");
    reader.join().expect("reader thread");
    // Everything the child printed before dying was acknowledged too.
    acks.extend(rx.try_iter());
    acks
}

#[test]
fn sigkill_never_loses_acknowledged_writes() {
    crash_cycles("plain", CYCLES);
}

/// Kills landing in checkpoints, segment roll-overs and retention.
#[test]
fn sigkill_during_checkpoints_roll_overs_and_retention_never_loses_acknowledged_writes() {
    crash_cycles("churn", CYCLES / 2);
}

fn crash_cycles(mode: &str, cycles: usize) {
    let seed = std::env::var("DOMSYNC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("crash test seed: {seed} (rerun with DOMSYNC_CRASH_SEED={seed})");
    let mut rng = Rng::from_state(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let id = domain_id();
    let started = Instant::now();
    let mut all: BTreeMap<String, u64> = BTreeMap::new();

    let mut log_started_late = false;
    for cycle in 0..cycles {
        let want = 1 + rng.next() % MAX_ACKS;
        let acks = run_child(dir, want, cycle, mode);
        assert!(acks.len() as u64 >= want);
        for (key, lsn) in acks {
            assert!(
                all.insert(key.clone(), lsn).is_none(),
                "cycle {cycle}: key {key} acked twice"
            );
        }

        let store = Store::open(dir, StoreOptions::new(node())).expect("reopen store");
        let domain = store.domain(&id).expect("reopen domain");
        let max_acked = all.values().copied().max().unwrap_or(0);
        for (key, lsn) in &all {
            let read = domain.get(key.as_bytes()).expect("get");
            assert_eq!(
                read.value.as_deref(),
                Some(value_of(key).as_slice()),
                "cycle {cycle} (seed {seed}): acked key {key} at lsn {lsn} lost or wrong"
            );
        }
        let status = domain.status().expect("status");
        let end = status.position.lsn.0;
        assert!(
            end >= max_acked,
            "cycle {cycle} (seed {seed}): position lsn {end} < max acked lsn {max_acked}"
        );
        let start = status.log_start.0;
        log_started_late |= start > 1;
        let log = domain
            .read_log(status.log_start, usize::MAX, usize::MAX)
            .expect("read log");
        let lsns: Vec<u64> = log.iter().map(|e| e.record.lsn.0).collect();
        let expected: Vec<u64> = (start..=end).collect();
        assert!(
            lsns == expected,
            "cycle {cycle} (seed {seed}): log lsns not contiguous {start}..={end}: {} records, \
             first {:?}, last {:?}",
            lsns.len(),
            lsns.first(),
            lsns.last()
        );
        let report = domain.verify().expect("verify");
        assert!(
            report.is_clean(),
            "cycle {cycle} (seed {seed}): verify faults: {:?}",
            report.faults
        );
        drop(domain);
        store.close();
        drop(store);
    }
    if mode == "churn" {
        assert!(log_started_late, "retention never cut the log");
        let segments = std::fs::read_dir(dir.join("domains/crash.log"))
            .expect("log dir")
            .count();
        assert!(segments >= 1);
        let first_kept = std::fs::read_dir(dir.join("domains/crash.log"))
            .expect("log dir")
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse::<u64>()
                    .ok()
            })
            .min()
            .unwrap_or(0);
        assert!(first_kept > 1, "retention never removed a whole segment");
    }
    println!(
        "crash test ({mode}): {cycles} cycles, {} acked writes, {:?}",
        all.len(),
        started.elapsed()
    );
}
