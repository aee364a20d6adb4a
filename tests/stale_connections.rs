//! Stale QUIC connections to a restarted peer, with real `domsyncd` processes: two findings of
//! a fault-injection campaign, reproduced as operator sequences.
//!
//! * `promotion_after_a_restarted_standby_and_a_paused_one_loses_no_acknowledged_write`
//!   (finding 1): domain t1 on a, b, c with durability `standby` and a writer running all
//!   along. a hands t1 over to b; c is SIGKILLed and restarted (a's cached connection to the
//!   old c process is dead from then on); a is SIGSTOPped for 2 s while b's writes are
//!   acknowledged by c; b is SIGKILLed and a resumed. An unforced promotion on a used to answer
//!   `promoted ... not reached by the guard's probe: b, c` (c was running) and the writes
//!   acknowledged during the pause ended only in collision archives. Now: a is refused (it is
//!   behind c, which must be named), c is promoted without --force, b rejoins, and every
//!   acknowledged write is on c with its value (none only in a collision archive).
//! * `switchover_to_a_standby_restarted_a_moment_ago_succeeds` (finding 2): a SIGKILLed and
//!   restarted standby b, synchronized again, is handed t1 at once: the switchover used to fail
//!   with `no answer within 2s; this node stays active` (a's cached connection to the old b
//!   process was dead); it must succeed, a must follow b, and b must take writes.
//!
//! Every wait polls a condition up to a bounded deadline; the only fixed sleep is the 2 s
//! SIGSTOP window, which is part of the fault.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

mod torture_support;

use domsync_proto::admin::DomainReport;
use domsync_proto::admin::{Answer, NodeStatus, Request};
use domsync_proto::model::{Lsn, Op, Role};
use domsync_proto::repl::SyncStatus;
use domsync_testkit::cli::{self, Out};
use domsync_testkit::poll::free_port;
use torture_support::{
    admin, check_acked, dom, lock, pause, Rig, Shared, Topology, Writer, CONVERGE, NODES,
    ONE_AT_A_TIME,
};

const DOMAIN: &str = "t1";

const DOMAINS: [(&str, [&str; 3]); 1] = [(DOMAIN, ["a", "b", "c"])];

/// Short guard window (the dead active's last sighting ages out quickly), short confirmation
/// timeout; every domain of a [`Rig`] has durability `standby`.
const LIMITS: &str = "guard_window_ms = 300\nconfirm_timeout_ms = 2000";

/// Bound of the waits for a state the test knows must come (synchronization, an
/// acknowledgement); far above what they take.
const WAIT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_rig() -> Rig {
    let ports: BTreeMap<String, u16> = NODES.iter().map(|n| (n.to_string(), free_port())).collect();
    Rig::new(Topology::loopback(&ports), &DOMAINS, LIMITS)
}

/// `domsync --socket <node's admin socket> ARGS`, run off the executor.
async fn cli(rig: &Rig, node: &str, args: &[&str]) -> Out {
    let socket = rig.socket(node);
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli::domsync(&socket, &args)
    })
    .await
    .unwrap()
}

fn t1(s: &NodeStatus) -> &DomainReport {
    s.domains
        .iter()
        .find(|d| d.domain.as_str() == DOMAIN)
        .unwrap_or_else(|| panic!("{DOMAIN} not in the status of {}: {s:?}", s.node))
}

async fn status(rig: &Rig, n: &str) -> NodeStatus {
    rig.status(n)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", rig.logs(40)))
}

/// The lsn of t1 on `n`.
async fn lsn(rig: &Rig, n: &str) -> Lsn {
    t1(&status(rig, n).await)
        .replica
        .as_ref()
        .unwrap_or_else(|| panic!("{DOMAIN} not open on {n}"))
        .position
        .lsn
}

/// Polls `check` on the status of `n` every 50 ms until it gives `Ok`; panics (with the logs)
/// after [`WAIT`] with its last `Err`.
async fn wait_on(
    rig: &Rig,
    n: &str,
    what: &str,
    check: impl Fn(&DomainReport) -> Result<(), String>,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let why = match rig.status(n).await {
            Ok(s) => match check(t1(&s)) {
                Ok(()) => return,
                Err(why) => why,
            },
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}: {why}\n{}",
            rig.logs(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the active `active` sees `standby` connected, synchronized and durable up to
/// at least `durable` (which only the standby's current process can have confirmed).
async fn wait_standby_on_active(rig: &Rig, active: &str, standby: &str, durable: Lsn) {
    let what = format!(
        "{active} sees {standby} synchronized at lsn >= {}",
        durable.0
    );
    wait_on(rig, active, &what, |r| {
        let sb = r
            .standbys
            .iter()
            .find(|sb| sb.node.as_str() == standby)
            .ok_or_else(|| format!("{standby} not among the standbys: {r:?}"))?;
        if sb.connected && sb.status == SyncStatus::Synchronized && sb.durable >= durable {
            Ok(())
        } else {
            Err(format!("{sb:?}"))
        }
    })
    .await;
}

/// Waits until `standby` follows `active`, connected and synchronized.
async fn wait_follower(rig: &Rig, standby: &str, active: &str) {
    let what = format!("{standby} follows {active} synchronized");
    wait_on(rig, standby, &what, |r| {
        let f = r
            .follower
            .as_ref()
            .ok_or_else(|| format!("follows nobody: {r:?}"))?;
        if f.active.as_str() == active && f.connected && f.status == SyncStatus::Synchronized {
            Ok(())
        } else {
            Err(format!("{f:?}"))
        }
    })
    .await;
}

/// Writes `key = value` on `n` over the admin protocol; the position it was acknowledged at.
async fn put(rig: &Rig, n: &str, key: &str, value: &str) -> Lsn {
    let req = Request::Write {
        domain: dom(DOMAIN),
        ops: vec![Op::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }],
    };
    match admin(&rig.socket(n), &req, Duration::from_secs(20)).await {
        Ok(Answer::Written { position, .. }) => position.lsn,
        other => panic!("write {key} on {n}: {other:?}\n{}", rig.logs(40)),
    }
}

/// Acknowledged writes so far, and how many of them `node` acknowledged.
fn acked(ledger: &Shared, node: &str) -> (usize, usize) {
    let l = lock(ledger);
    let all = l.acked.get(DOMAIN).map_or(&[][..], Vec::as_slice);
    (all.len(), all.iter().filter(|a| a.node == node).count())
}

/// Waits until `node` acknowledged more than `before` writes of the load.
async fn wait_acked_by(rig: &Rig, ledger: &Shared, node: &str, before: usize) {
    let deadline = Instant::now() + WAIT;
    while acked(ledger, node).1 <= before {
        assert!(
            Instant::now() < deadline,
            "no write acknowledged by {node} within {WAIT:?} ({} unknown outcomes)\n{}",
            lock(ledger).maybe,
            rig.logs(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `domsync promote t1` on `n` (unforced), retried while the only objection is that the dead
/// active was seen alive within the guard window (its last sighting ages out); the last answer.
async fn promote_unforced(rig: &Rig, n: &str) -> Out {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = cli(rig, n, &["promote", DOMAIN]).await;
        if out.code == 0 || !out.stderr.contains("was seen active") || Instant::now() > deadline {
            return out;
        }
        eprintln!("promote {DOMAIN} on {n}: {}", out.stderr.trim());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Lines of `n`'s log that say something about promotions, probes, fences and hand-overs.
fn log_lines(rig: &Rig, n: &str) -> String {
    let log = std::fs::read_to_string(rig.dir.path().join(format!("{n}.log"))).unwrap_or_default();
    let wanted = [
        "promot",
        "probe",
        "fenc",
        "switchover",
        "took over",
        "stepped",
        "collision",
        "archiv",
        "epoch",
    ];
    log.lines()
        .filter(|l| wanted.iter().any(|w| l.contains(w)))
        .map(|l| format!("  {n}: {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn promotion_after_a_restarted_standby_and_a_paused_one_loses_no_acknowledged_write() {
    let _one = lock(&ONE_AT_A_TIME);
    runtime().block_on(finding_1());
}

async fn finding_1() {
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());
    let mut rig = new_rig();
    rig.start(&NODES);
    let (actives, _) = rig.converge(CONVERGE).await.unwrap();
    assert_eq!(actives[DOMAIN], "a", "{actives:?}");
    lap("a, b, c up; a active");

    let ledger = Shared::default();
    let mut writer = Writer::spawn(DOMAIN, "a", rig.sockets(), ledger.clone(), 0x5eed_0001);
    wait_acked_by(&rig, &ledger, "a", 0).await;
    lap("writer running against a");

    // ---- a hands t1 over to b (the writer follows the NotActive hint, and is retargeted).
    let out = cli(&rig, "a", &["switchover", DOMAIN, "--to", "b"]).await;
    assert_eq!(out.code, 0, "switchover to b: {out}\n{}", rig.logs(40));
    assert!(out.stdout.starts_with("switched t1 over to b: "), "{out}");
    writer.retarget("b");
    {
        let _paused = pause(std::slice::from_ref(&writer)).await;
        let (actives, _) = rig
            .converge(CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("after the switchover: {e}"));
        assert_eq!(actives[DOMAIN], "b", "{actives:?}");
    }
    wait_acked_by(&rig, &ledger, "b", 0).await;
    lap("switched over to b; writes acknowledged by b");

    // ---- SIGKILL of c, restarted on the same state; synchronized again as confirmed by the
    // new process: durable past b's position at the kill (all the old one can have confirmed).
    rig.kill("c");
    let at_kill = lsn(&rig, "b").await;
    let acked_at_kill = acked(&ledger, "b").1;
    wait_acked_by(&rig, &ledger, "b", acked_at_kill).await; // a confirms meanwhile
    rig.start(&["c"]);
    let at_restart = lsn(&rig, "b").await.max(Lsn(at_kill.0 + 1));
    wait_follower(&rig, "c", "b").await;
    wait_standby_on_active(&rig, "b", "c", at_restart).await;
    lap("c killed, restarted, synchronized with b");

    // ---- SIGSTOP of a for 2 s: b's writes go on, acknowledged by c alone.
    let a_before = lsn(&rig, "a").await;
    let (_, by_b_before) = acked(&ledger, "b");
    rig.daemons["a"].signal("STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, by_b_after) = acked(&ledger, "b");
    assert!(
        by_b_after > by_b_before,
        "no write acknowledged by b while a was stopped\n{}",
        rig.logs(40)
    );
    lap(&format!(
        "a stopped 2 s; {} writes acknowledged by b meanwhile",
        by_b_after - by_b_before
    ));

    // ---- SIGKILL of b, then SIGCONT of a: a cannot catch up any more.
    rig.kill("b");
    rig.daemons["a"].signal("CONT");
    let (a_lsn, c_lsn) = (lsn(&rig, "a").await, lsn(&rig, "c").await);
    eprintln!(
        "after the kill of b: a at lsn {} (was {} before the stop), c at lsn {}",
        a_lsn.0, a_before.0, c_lsn.0
    );
    assert!(
        a_lsn < c_lsn,
        "precondition: a (lsn {}) should be behind c (lsn {})",
        a_lsn.0,
        c_lsn.0
    );
    lap("b killed, a resumed behind c");

    // ---- Unforced promotion on a: refused (behind c, named), or else it holds every
    // acknowledged write.
    let t = Instant::now();
    let out = promote_unforced(&rig, "a").await;
    eprintln!("promote on a ({:?}): {out}", t.elapsed());
    let final_active = if out.code == 0 {
        // Allowed only if nothing acknowledged is lost: check on a at once.
        eprintln!("promotion on a succeeded: checking that it holds every acknowledged write");
        writer.retarget("a");
        writer.stop().await;
        let (actives, _) = rig
            .converge(CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("after the promotion of a ({out}): {e}"));
        assert_eq!(actives[DOMAIN], "a");
        let kv = rig.read_replica("a", DOMAIN).await.unwrap();
        let all = lock(&ledger).acked.get(DOMAIN).cloned().unwrap_or_default();
        if let Err(e) = check_acked(DOMAIN, "a", &kv, &all, None) {
            panic!(
                "the unforced promotion of a succeeded ({}) and lost acknowledged writes: {e}\n{}\n{}",
                out.stdout.trim(),
                log_lines(&rig, "a"),
                log_lines(&rig, "c")
            );
        }
        "a"
    } else {
        let refused_behind_c =
            out.stderr.contains("behind c (") || out.stderr.contains("c holds records");
        assert!(
            out.code == 1 && refused_behind_c,
            "the unforced promotion of a must be refused because c holds more: {out}\n{}\n{}",
            log_lines(&rig, "a"),
            log_lines(&rig, "c")
        );
        lap("promotion on a refused: behind c");

        // ---- Unforced promotion on c: b (the old active) is dead, a is reachable and behind.
        let t = Instant::now();
        let out = promote_unforced(&rig, "c").await;
        eprintln!("promote on c ({:?}): {out}", t.elapsed());
        assert_eq!(
            out.code,
            0,
            "unforced promotion of c: {out}\n{}\n{}",
            log_lines(&rig, "c"),
            log_lines(&rig, "a")
        );
        assert!(
            out.stdout.starts_with("promoted t1: active in epoch "),
            "{out}"
        );
        assert!(!out.stdout.contains("warning"), "{out}");
        let unreached: Vec<&str> = out
            .stdout
            .lines()
            .find_map(|l| {
                l.strip_prefix("not reached (the old active, fenced by every other replica): ")
            })
            .map(|l| l.split(", ").collect())
            .unwrap_or_default();
        assert_eq!(unreached, ["b"], "only the dead b may be unreached: {out}");
        writer.retarget("c");
        wait_acked_by(&rig, &ledger, "c", 0).await;
        lap("c promoted unforced; writes acknowledged by c");
        "c"
    };

    // ---- b restarts (its store says active in the old epoch): it steps down and follows.
    rig.start(&["b"]);
    lap("b restarted");
    writer.stop().await;
    let (actives, statuses) = rig
        .converge(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("final convergence: {e}"));
    assert_eq!(actives[DOMAIN], final_active, "{actives:?}");
    let lsns: Vec<(String, u64)> = statuses
        .iter()
        .map(|(n, s)| (n.clone(), t1(s).replica.as_ref().unwrap().position.lsn.0))
        .collect();
    lap(&format!("converged: {lsns:?}"));

    // ---- Every acknowledged write is on the final active with its value; none is only in
    // a collision archive.
    let kv = rig.read_replica(final_active, DOMAIN).await.unwrap();
    let all = lock(&ledger).acked.get(DOMAIN).cloned().unwrap_or_default();
    let mut cache = std::collections::HashMap::new();
    let (archived, records) = rig.archived(DOMAIN, &mut cache).await.unwrap();
    let missing: Vec<String> = all
        .iter()
        .filter(|a| kv.get(&a.key) != Some(&a.value))
        .map(|a| {
            format!(
                "{} (acked by {} at lsn {}{})",
                a.key,
                a.node,
                a.position.lsn.0,
                if archived.contains(&a.key) {
                    ", only in a collision archive"
                } else {
                    ""
                }
            )
        })
        .collect();
    let only_archived = all
        .iter()
        .filter(|a| kv.get(&a.key) != Some(&a.value) && archived.contains(&a.key))
        .count();
    let acked_keys: HashSet<&str> = all.iter().map(|a| a.key.as_str()).collect();
    let acked_in_archives = archived
        .iter()
        .filter(|k| acked_keys.contains(k.as_str()))
        .count();
    eprintln!(
        "acknowledged {} writes ({} unknown outcomes); on {final_active}: {} keys; collision archives: {records} records, {} keys, {acked_in_archives} of them acknowledged",
        all.len(),
        lock(&ledger).maybe,
        kv.len(),
        archived.len()
    );
    assert!(
        missing.is_empty() && only_archived == 0,
        "{} acknowledged writes are not on {final_active} with their value ({only_archived} only in a collision archive), e.g. {:?}\n{}\n{}\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        log_lines(&rig, "a"),
        log_lines(&rig, "b"),
        log_lines(&rig, "c")
    );
    rig.stop_all().unwrap();
    lap("done");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn switchover_to_a_standby_restarted_a_moment_ago_succeeds() {
    let _one = lock(&ONE_AT_A_TIME);
    runtime().block_on(finding_2());
}

async fn finding_2() {
    let started = Instant::now();
    let lap = |what: &str| eprintln!("[{:>6.2?}] {what}", started.elapsed());
    let mut rig = new_rig();
    rig.start(&NODES);
    let (actives, _) = rig.converge(CONVERGE).await.unwrap();
    assert_eq!(actives[DOMAIN], "a", "{actives:?}");
    let first = put(&rig, "a", "before/kill", "1").await;
    wait_standby_on_active(&rig, "a", "b", first).await;
    lap("a active, b synchronized");

    // ---- SIGKILL of b, restarted; synchronized again as a sees it: durable up to a write
    // made after the restart, which only the new process can have confirmed.
    rig.kill("b");
    put(&rig, "a", "while/b/down", "1").await;
    rig.start(&["b"]);
    let after = put(&rig, "a", "after/restart", "1").await;
    wait_standby_on_active(&rig, "a", "b", after).await;
    lap("b killed, restarted, synchronized");

    // ---- At once: switchover to b.
    let t = Instant::now();
    let out = cli(&rig, "a", &["switchover", DOMAIN, "--to", "b"]).await;
    let took = t.elapsed();
    eprintln!("switchover ({took:?}): {out}");
    assert_eq!(
        out.code,
        0,
        "switchover to the restarted b: {out}\n{}\n{}",
        log_lines(&rig, "a"),
        log_lines(&rig, "b")
    );
    assert!(
        out.stdout
            .starts_with("switched t1 over to b: active in epoch "),
        "{out}"
    );
    lap("switched over to b");

    // ---- b is active, a (and c) follow it, and b takes writes.
    let (actives, statuses) = rig
        .converge(CONVERGE)
        .await
        .unwrap_or_else(|e| panic!("after the switchover: {e}"));
    assert_eq!(actives[DOMAIN], "b", "{actives:?}");
    let a = t1(&statuses["a"]);
    assert_eq!(a.replica.as_ref().unwrap().role, Role::Standby, "{a:?}");
    assert_eq!(a.follower.as_ref().unwrap().active.as_str(), "b", "{a:?}");
    let out = cli(&rig, "b", &["kv", "put", DOMAIN, "after/switchover", "yes"]).await;
    assert_eq!(out.code, 0, "write on b: {out}");
    assert!(out.stdout.starts_with("put at lsn "), "{out}");
    let out = cli(&rig, "a", &["kv", "put", DOMAIN, "k", "v"]).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("its active is b"), "{out}");
    rig.converge(CONVERGE).await.unwrap();
    rig.stop_all().unwrap();
    lap("done");
}
