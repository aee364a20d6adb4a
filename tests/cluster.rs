//! The cluster as an operator runs it: three real `domsyncd` processes on loopback, each with
//! its own configuration file, state directory and certificate from a deployment CA made with
//! `domsync pki`, driven only through the `domsync` CLI.
//!
//! Six domains with rotating primaries (actives spread two per node); writes sent to each
//! active's daemon (and refused by a standby's, naming the active); a policy read by a gateway
//! from a standby; a switchover; a promotion refused while the old active is alive; SIGKILL of
//! that node, an unforced promotion once the guard allows it and forced ones; the killed node
//! restarted (it steps down and follows); SIGTERM of another node (exit 0), writes while it is
//! down, its restart; and at the end every replica of every domain at the same lsn and digest.
//!
//! Readiness is `READY=1` on a `NOTIFY_SOCKET` the test listens on; every other wait polls
//! `domsync status --json` up to a deadline. Diagnostics: `CLUSTER_TRACE=1` prints why each
//! convergence poll is not there yet, `CLUSTER_KEEP_LOGS=DIR` keeps the three daemons' logs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use domsync_testkit::cli::{self, domsync_cmd, report, run, status_json, Out};
use domsync_testkit::poll::poll;
use domsync_testkit::process::{self, Daemon, GATEWAY};
use serde_json::Value;

/// Hang guard only: every wait polls a condition up to this deadline.
const GUARD: Duration = Duration::from_secs(90);

const NODES: [&str; 3] = ["a", "b", "c"];

/// `(name, replicas primary first, durability)`: primaries rotate, so two actives per node.
const DOMAINS: [(&str, [&str; 3], &str); 6] = [
    ("t1", ["a", "b", "c"], "standby"),
    ("t2", ["b", "c", "a"], "standby"),
    ("t3", ["c", "a", "b"], "local"),
    ("t4", ["a", "c", "b"], "standby"),
    ("t5", ["b", "a", "c"], "standby"),
    ("t6", ["c", "b", "a"], "local"),
];

/// The cluster's files: PKI, one configuration and state directory per node.
struct Cluster(process::Cluster);

impl std::ops::Deref for Cluster {
    type Target = process::Cluster;
    fn deref(&self) -> &process::Cluster {
        &self.0
    }
}

impl Cluster {
    /// A deployment CA and certificates made with `domsync pki`, one config file per node.
    fn new() -> Cluster {
        let c = Cluster(process::Cluster::without_pki(&NODES));
        let pki = c.pki().display().to_string();
        let out = run(&mut domsync_cmd(&["pki", "init", "--dir", &pki]));
        assert_eq!(out.code, 0, "pki init: {out}");
        let issue = |role: &str, id: &str| {
            let out = run(&mut domsync_cmd(&[
                "pki", "issue", "--role", role, "--id", id, "--dir", &pki,
            ]));
            assert_eq!(out.code, 0, "pki issue {role} {id}: {out}");
            assert!(
                out.stdout.contains(&format!("domsync://{role}/{id}")),
                "{out}"
            );
        };
        for n in NODES {
            issue("node", n);
        }
        issue("gateway", GATEWAY);
        for n in NODES {
            let domains = DOMAINS
                .iter()
                .map(|(name, replicas, durability)| {
                    let replicas = replicas.iter().map(|r| r.to_string()).collect();
                    (name.to_string(), replicas, durability.to_string())
                })
                .collect();
            let limits = "guard_window_ms = 1000\nconfirm_timeout_ms = 5000";
            c.node_config(n, limits, domains).write(c.config_path(n));
        }
        c
    }

    /// Spawns `domsyncd --config` for `node` with a `NOTIFY_SOCKET` of the test's.
    fn spawn(&self, node: &'static str) -> Daemon {
        Daemon::spawn(node, self.dir.path(), &self.config_path(node), GUARD, &[])
    }

    /// Starts `node` and waits for its `READY=1`.
    fn start(&self, node: &'static str) -> Daemon {
        let d = self.spawn(node);
        d.ready();
        d
    }

    /// `domsync --socket <node's admin socket> ARGS`.
    fn domsync(&self, node: &str, args: &[&str]) -> Out {
        cli::domsync(&self.socket(node), args)
    }

    /// Like [`Cluster::domsync`], asserting exit 0; returns stdout.
    fn ok(&self, node: &str, args: &[&str]) -> String {
        cli::ok(&self.socket(node), args)
    }

    fn status(&self, node: &str) -> Value {
        status_json(&self.socket(node))
    }

    /// `domsync gateway fetch NAME` of domain `domain` as gateway `g`, asking `nodes` in order.
    fn gateway_fetch(&self, domain: &str, name: &str, nodes: &[&str], out: &Path) -> Out {
        let pki = self.pki().display().to_string();
        let out = out.display().to_string();
        let mut args = vec![
            "gateway".to_owned(),
            "fetch".into(),
            name.into(),
            "--pki".into(),
            pki,
            "--id".into(),
            GATEWAY.into(),
            "--domain".into(),
            domain.into(),
            "--out".into(),
            out,
            "--connect-timeout".into(),
            "1".into(),
        ];
        for n in nodes {
            args.push("--node".into());
            args.push(format!("{n}={}", self.addr(n)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&mut domsync_cmd(&args))
    }

    /// Waits until every domain is served by every node of `up`, exactly one of them is
    /// active, every standby of `up` follows it synchronized (as the active and the standby
    /// both report), and all hold the same lsn and digest. Returns the active of each domain
    /// and the last statuses.
    fn converged(&self, up: &[&str]) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
        let deadline = Instant::now() + GUARD;
        poll(GUARD, Duration::from_millis(50), || {
            let statuses: BTreeMap<String, Value> = up
                .iter()
                .map(|n| ((*n).to_owned(), self.status(n)))
                .collect();
            match check_converged(&statuses) {
                Ok(actives) => Ok((actives, statuses)),
                Err(why) => {
                    if std::env::var_os("CLUSTER_TRACE").is_some() {
                        eprintln!(
                            "  {:?} left: {why}",
                            deadline.saturating_duration_since(Instant::now())
                        );
                    }
                    Err(format!(
                        "not converged: {why}\n{statuses:#?}\n{}",
                        self.logs()
                    ))
                }
            }
        })
    }

    fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "--- log of {n} (last lines)\n{}\n",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

fn check_converged(statuses: &BTreeMap<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let mut actives = BTreeMap::new();
    for (domain, _, _) in DOMAINS {
        let mut active = None;
        let mut states = Vec::new();
        for (node, s) in statuses {
            let r = report(s, domain).ok_or(format!("{domain} not listed on {node}"))?;
            if r["placement"] != "serving" || r["role"].is_null() {
                return Err(format!("{domain} not served on {node}"));
            }
            let role = r["role"].as_str().unwrap();
            if role == "active" {
                if active.replace(node.clone()).is_some() {
                    return Err(format!("{domain}: two actives"));
                }
                for sb in r["standbys"].as_array().unwrap() {
                    let sb_node = sb["node"].as_str().unwrap();
                    let name = sb["sync_status"]["name"].as_str().unwrap();
                    if statuses.contains_key(sb_node) && name != "Synchronized" {
                        return Err(format!("{domain}: standby {sb_node} {name} on {node}"));
                    }
                }
            }
            states.push((
                node.clone(),
                role.to_owned(),
                r["lsn"].as_f64().unwrap(),
                r["digest"].as_str().unwrap().to_owned(),
                r["epoch"]["term"].as_f64().unwrap(),
                r["epoch"]["node"].as_str().unwrap().to_owned(),
            ));
        }
        let active = active.ok_or(format!("{domain}: no active"))?;
        for (node, role, lsn, digest, term, epoch_node) in &states {
            let first = &states[0];
            if (lsn, digest, term, epoch_node) != (&first.2, &first.3, &first.4, &first.5) {
                return Err(format!("{domain}: {node} differs: {states:?}"));
            }
            if role == "standby" {
                let f = &report(&statuses[node], domain).unwrap()["follower"];
                if f.is_null()
                    || f["active"].as_str().unwrap() != active
                    || f["sync_status"]["name"] != "Synchronized"
                {
                    return Err(format!("{domain}: {node} does not follow {active}: {f:?}"));
                }
            }
        }
        actives.insert(domain.to_owned(), active);
    }
    Ok(actives)
}

fn lsn(status: &Value, domain: &str) -> f64 {
    report(status, domain).unwrap()["lsn"].as_f64().unwrap()
}

/// Runs `f` for every item at once (the daemons' probes of a dead peer wait in parallel).
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = items.iter().map(|i| s.spawn(|| f(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn three_daemons_driven_through_the_cli() {
    let started = Instant::now();
    let mut step = Instant::now();
    let mut lap = |what: &str| {
        eprintln!("{what}: {:?}", step.elapsed());
        step = Instant::now();
    };
    let c = Cluster::new();
    let names: Vec<&str> = DOMAINS.iter().map(|d| d.0).collect();

    // ---- Start: all three at once, each READY on its own; placement by primaries.
    let mut daemons: BTreeMap<&str, Daemon> = NODES.iter().map(|n| (*n, c.spawn(n))).collect();
    for d in daemons.values() {
        d.ready();
    }
    let (actives, statuses) = c.converged(&NODES);
    for (name, replicas, _) in DOMAINS {
        assert_eq!(actives[name], replicas[0], "{name}: {actives:?}");
    }
    for n in NODES {
        assert_eq!(statuses[n]["node"].as_str().unwrap(), n);
        assert_eq!(actives.values().filter(|a| *a == n).count(), 2);
        assert_eq!(
            statuses[n]["domains"].as_array().unwrap().len(),
            DOMAINS.len()
        );
    }
    let table = c.ok("a", &["status"]);
    assert!(table.starts_with("node a\n"), "{table}");
    for name in &names {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(name) && l.contains("serving")),
            "{table}"
        );
    }
    lap("start and placement");

    // ---- Writes on each domain's active daemon; a standby's daemon refuses, naming the active.
    for (name, replicas, _) in DOMAINS {
        let out = c.ok(replicas[0], &["kv", "put", name, "ntp/server", "10.0.0.1"]);
        assert!(out.starts_with("put at lsn 1 "), "{out}");
        let out = c.domsync(replicas[1], &["kv", "put", name, "ntp/server", "10.0.0.2"]);
        assert_eq!(out.code, 1, "{out}");
        assert!(
            out.stderr
                .contains(&format!("its active is {}", replicas[0])),
            "{out}"
        );
    }
    let policy = c.dir.path().join("edge.pol");
    std::fs::write(&policy, b"allow tcp/443 from any\ndeny any\n").unwrap();
    let out = c.ok(
        "a",
        &[
            "policy",
            "install",
            "t1",
            "edge",
            &policy.display().to_string(),
        ],
    );
    assert!(
        out.starts_with("installed policy edge version 2 at lsn 2 "),
        "{out}"
    );
    let out = c.ok("c", &["kv", "del", "t3", "ntp/server"]);
    assert!(out.starts_with("deleted at lsn 2 "), "{out}");
    let (_, statuses) = c.converged(&NODES);
    assert_eq!(lsn(&statuses["b"], "t1"), 2.0);
    lap("writes");

    // ---- A gateway reads the package from a standby of t1 (b, the only node it is given, so
    // the answer is the standby's: the client's nearest-node choice plays no part).
    let fetched = c.dir.path().join("edge.out");
    let out = c.gateway_fetch("t1", "edge", &["b"], &fetched);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("package=edge ")
            && out.stdout.contains(" node=b role=standby ")
            && out.stdout.contains(" origin=fetched"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&policy).unwrap()
    );
    lap("gateway read from a standby");

    // ---- Switchover of t1 from a to b, asked of a; then writes go to b and a refuses.
    let out = c.ok("a", &["switchover", "t1", "--to", "b"]);
    assert!(
        out.starts_with("switched t1 over to b: active in epoch "),
        "{out}"
    );
    let (actives, _) = c.converged(&NODES);
    assert_eq!(actives["t1"], "b");
    let out = c.ok("b", &["kv", "put", "t1", "after/switchover", "yes"]);
    assert!(out.starts_with("put at lsn 3 "), "{out}");
    let out = c.domsync("a", &["kv", "put", "t1", "k", "v"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("its active is b"), "{out}");
    lap("switchover");

    // ---- b is now active for t1, t2 and t5. Promoting its standby c of t2 is refused while
    // b is alive (it answers the probe), and nothing changes.
    let out = c.domsync("c", &["promote", "t2"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("b was seen active for t2") && out.stderr.contains("--force"),
        "{out}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
    let s = c.status("c");
    assert_eq!(
        report(&s, "t2").unwrap()["role"].as_str().unwrap(),
        "standby"
    );
    // Promoting an active is refused too.
    let out = c.domsync("b", &["promote", "t2"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("not a standby"), "{out}");
    lap("promotion refused while the active lives");

    // ---- SIGKILL of b. t2 is promoted on c without --force once the guard allows (b does
    // not answer, a last heard it over a guard window ago); t1 and t5 are forced on a, at the
    // same time (each probe of b waits for its timeout).
    let mut b = daemons.remove("b").unwrap();
    b.signal("KILL");
    assert!(!b.wait_exit().success());
    drop(b);
    let kill_time = Instant::now();
    eprintln!("killed b at {:?}", started.elapsed());
    let results = parallel(
        &[("c", "t2", false), ("a", "t1", true), ("a", "t5", true)],
        |(node, domain, force)| {
            let deadline = Instant::now() + GUARD;
            loop {
                let mut args = vec!["promote", *domain];
                if *force {
                    args.push("--force");
                }
                let out = c.domsync(node, &args);
                if out.code == 0 || *force || Instant::now() > deadline {
                    return out;
                }
                // Refused: the guard still sees b alive through a peer or a gateway.
                assert!(out.stderr.contains("b was seen active for"), "{out}");
                std::thread::sleep(Duration::from_millis(200));
            }
        },
    );
    for ((node, domain, force), out) in [("c", "t2", false), ("a", "t1", true), ("a", "t5", true)]
        .iter()
        .zip(&results)
    {
        assert_eq!(out.code, 0, "promote {domain} on {node}: {out}");
        assert!(
            out.stdout
                .starts_with(&format!("promoted {domain}: active in epoch ")),
            "{out}"
        );
        assert!(out.stdout.contains(&format!("@{node} from lsn")), "{out}");
        let unreached = if *force {
            "warning: forced without reaching b: "
        } else {
            "not reached (the old active, fenced by every other replica): b"
        };
        assert!(out.stdout.contains(unreached), "{out}");
    }
    eprintln!("promotions done {:?} after the kill", kill_time.elapsed());
    let (actives, _) = c.converged(&["a", "c"]);
    assert_eq!(
        (
            actives["t1"].as_str(),
            actives["t2"].as_str(),
            actives["t5"].as_str()
        ),
        ("a", "c", "a")
    );
    // Writes go on at the new actives; a gateway asking the dead b first gets the package
    // from the next node.
    for (node, domain) in [("a", "t1"), ("c", "t2"), ("a", "t5")] {
        let out = c.ok(node, &["kv", "put", domain, "after/failover", "yes"]);
        assert!(out.starts_with("put at lsn "), "{out}");
    }
    let out = c.gateway_fetch("t1", "edge", &["b", "c"], &fetched);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains(" node=c role=standby "), "{out}");
    assert_eq!(
        std::fs::read(&fetched).unwrap(),
        std::fs::read(&policy).unwrap()
    );
    lap("SIGKILL of b and promotions");

    // ---- b restarts: its store says active for t1, t2, t5 in the old epochs; it hears the
    // new ones, steps down and follows, with nothing of its own to archive.
    daemons.insert("b", c.start("b"));
    let (actives, statuses) = c.converged(&NODES);
    assert_eq!(
        (
            actives["t1"].as_str(),
            actives["t2"].as_str(),
            actives["t5"].as_str()
        ),
        ("a", "c", "a")
    );
    for name in &names {
        assert_eq!(
            report(&statuses["b"], name).unwrap()["collisions"]
                .as_f64()
                .unwrap(),
            0.0
        );
    }
    lap("b restarted and rejoined");

    // ---- SIGTERM of c (active for t2, t3, t6): a clean exit 0. Writes go on where a is
    // active; c's replicas of them fall behind.
    let mut cd = daemons.remove("c").unwrap();
    cd.signal("TERM");
    let status = cd.wait_exit();
    assert!(status.success(), "c after SIGTERM: {status}: {}", cd.log());
    drop(cd);
    for domain in ["t1", "t4", "t5"] {
        let out = c.ok("a", &["kv", "put", domain, "while/c/down", "1"]);
        assert!(out.starts_with("put at lsn "), "{out}");
    }
    // A domain whose active is c cannot be written while c is down (b refuses: not active).
    let out = c.domsync("b", &["kv", "put", "t6", "k", "v"]);
    assert_eq!(out.code, 1, "{out}");
    lap("SIGTERM of c");

    // ---- c restarts, still active for t2, t3, t6; it catches up on the others.
    daemons.insert("c", c.start("c"));
    let (actives, _) = c.converged(&NODES);
    for domain in ["t2", "t3", "t6"] {
        assert_eq!(actives[domain], "c", "{actives:?}");
        let out = c.ok("c", &["kv", "put", domain, "after/restart", "1"]);
        assert!(out.starts_with("put at lsn "), "{out}");
    }
    lap("c restarted");

    // ---- Convergence: every domain at the same lsn, epoch and digest on all three nodes.
    let (actives, statuses) = c.converged(&NODES);
    for name in &names {
        let per_node: Vec<(f64, &str)> = NODES
            .iter()
            .map(|n| {
                let r = report(&statuses[*n], name).unwrap();
                (r["lsn"].as_f64().unwrap(), r["digest"].as_str().unwrap())
            })
            .collect();
        assert!(
            per_node.windows(2).all(|w| w[0] == w[1]),
            "{name}: {per_node:?}"
        );
        assert!(per_node[0].0 >= 2.0, "{name}: {per_node:?}");
    }
    eprintln!("actives at the end: {actives:?}");

    // ---- Every node stops cleanly.
    for d in daemons.values() {
        d.signal("TERM");
    }
    for d in daemons.values_mut() {
        let status = d.wait_exit();
        assert!(status.success(), "{}: {status}: {}", d.name, d.log());
    }
    lap("final convergence and stop");
    if let Some(keep) = std::env::var_os("CLUSTER_KEEP_LOGS") {
        std::fs::create_dir_all(&keep).unwrap();
        for n in NODES {
            let log = c.dir.path().join(format!("{n}.log"));
            std::fs::copy(&log, Path::new(&keep).join(format!("{n}.log"))).unwrap();
        }
    }
    eprintln!("cluster test: {:?}", started.elapsed());
}
