//! Placement through the `domsync` CLI against three real `domsyncd` processes on loopback:
//! `plan` proposes spreading four domains all active on one node, `rebalance` carries it out
//! (one switchover at a time, the remote steps over `domsync-admin/1`), the actives end up
//! spread and every replica of every domain holds the same state; `domain add` creates a
//! domain at runtime that is served and survives a daemon restart (admin-domains.toml);
//! `domain remove` refuses a domain of the configuration file and removes an added one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use domsync_testkit::cli::{domsync, ok, parse_json, report, status_json, wait_status};
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::{Cluster, Daemon};
use serde_json::Value;

const NODES: [&str; 3] = ["a", "b", "c"];

/// Four domains, all with `a` as primary: all start active on `a`.
const DOMAINS: [(&str, &[&str]); 4] = [
    ("t1", &["a", "b", "c"]),
    ("t2", &["a", "c", "b"]),
    ("t3", &["a", "b", "c"]),
    ("t4", &["a", "c", "b"]),
];

fn start_all(c: &Cluster) -> BTreeMap<&'static str, Daemon> {
    NODES.iter().map(|n| (*n, c.start(n, &DOMAINS))).collect()
}

/// Role of `domain` on a node's status (`None`: not listed or not open).
fn role(status: &Value, domain: &str) -> Option<String> {
    report(status, domain)?["role"].as_str().map(str::to_owned)
}

/// Waits until every replica of every domain in `domains` is open, exactly one is active and
/// every standby is synchronized with the same lsn and digest as its active. Returns the
/// active of each domain.
fn wait_converged(c: &Cluster, domains: &[&str]) -> BTreeMap<String, String> {
    poll(GUARD, Duration::from_millis(100), || {
        let statuses: Vec<(&str, Value)> = NODES
            .iter()
            .map(|n| (*n, status_json(&c.socket(n))))
            .collect();
        let mut actives = BTreeMap::new();
        let mut good = true;
        for d in domains {
            let mut states = Vec::new();
            for (node, s) in &statuses {
                let Some(r) = report(s, d) else {
                    good = false;
                    continue;
                };
                if r["placement"] != "serving" || r["role"].is_null() {
                    good = false;
                    continue;
                }
                if r["role"] == "active" {
                    actives.insert((*d).to_owned(), (*node).to_owned());
                    if r["standbys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|sb| sb["sync_status"]["name"] != "Synchronized")
                    {
                        good = false;
                    }
                }
                states.push((
                    r["role"].as_str().unwrap().to_owned(),
                    r["lsn"].as_f64().unwrap(),
                    r["digest"].as_str().unwrap().to_owned(),
                ));
            }
            let active_count = states.iter().filter(|s| s.0 == "active").count();
            let same = states
                .windows(2)
                .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2);
            if states.len() != NODES.len() || active_count != 1 || !same {
                good = false;
            }
        }
        if good {
            return Ok(actives);
        }
        Err(format!(
            "not converged: {:?}",
            statuses.iter().map(|(n, s)| (n, s)).collect::<Vec<_>>()
        ))
    })
}

fn admin_args(c: &Cluster) -> Vec<String> {
    vec![
        "--admin-pki".into(),
        c.pki().display().to_string(),
        "--admin-id".into(),
        "ops".into(),
    ]
}

fn with<'a>(args: &'a [&'a str], extra: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect()
}

#[test]
fn plan_proposes_spreading_and_rebalance_carries_it_out() {
    let started = Instant::now();
    let c = Cluster::new(&NODES);
    let nodes = start_all(&c);
    let names: Vec<&str> = DOMAINS.iter().map(|d| d.0).collect();
    wait_converged(&c, &names);
    for (i, d) in names.iter().enumerate() {
        let out = ok(&c.socket("a"), &["kv", "put", d, "k", &format!("v{i}")]);
        assert!(out.starts_with("put at lsn 1"), "{out}");
    }
    let actives = wait_converged(&c, &names);
    assert!(actives.values().all(|n| n == "a"), "{actives:?}");

    // The plan, asked of any node, spreads them: 2 / 1 / 1 with two moves off `a`.
    let table = ok(&c.socket("c"), &["plan"]);
    assert!(table.starts_with("plan by node c\n"), "{table}");
    assert!(table.contains("moves (2):"), "{table}");
    let moves: Vec<&str> = table.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(moves.len(), 2, "{table}");
    assert!(moves.iter().all(|m| m.contains(": a -> ")), "{table}");
    let plan = parse_json(&ok(&c.socket("a"), &["plan", "--json"]));
    assert_eq!(plan["node"].as_str().unwrap(), "a");
    let load: BTreeMap<&str, (f64, f64)> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap(),
                (n["load_now"].as_f64().unwrap(), n["load"].as_f64().unwrap()),
            )
        })
        .collect();
    assert_eq!(load["a"], (4.0, 2.0), "{plan:?}");
    assert_eq!(load["b"], (0.0, 1.0), "{plan:?}");
    assert_eq!(load["c"], (0.0, 1.0), "{plan:?}");
    let planned: Vec<(String, String)> = plan["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["from"].as_str().unwrap(), "a");
            (
                m["domain"].as_str().unwrap().to_owned(),
                m["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();

    // A dry run prints the steps and moves nothing.
    let admin = admin_args(&c);
    let dry = ok(&c.socket("b"), &with(&["rebalance", "--dry-run"], &admin));
    assert_eq!(dry.matches("(dry run)").count(), 2, "{dry}");
    // Without an admin certificate, a rebalance asked of `b` cannot reach `a`: refused
    // before anything moves.
    let out = domsync(&c.socket("b"), &["rebalance"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--admin-id"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // Asked of `b`, the switchovers go to `a` over remote admin, one at a time.
    let done = ok(&c.socket("b"), &with(&["rebalance"], &admin));
    assert_eq!(done.matches("  done: ").count(), 2, "{done}");
    assert!(done.contains("rebalanced: 2 domains moved"), "{done}");

    // Every node now shows the actives spread as planned, and every replica converged.
    let actives = wait_converged(&c, &names);
    for (d, to) in &planned {
        assert_eq!(&actives[d], to, "{actives:?}");
    }
    let per_node = |n: &str| actives.values().filter(|a| *a == n).count();
    assert_eq!((per_node("a"), per_node("b"), per_node("c")), (2, 1, 1));
    for n in NODES {
        let s = status_json(&c.socket(n));
        for d in &names {
            let want = if actives[*d] == n {
                "active"
            } else {
                "standby"
            };
            assert_eq!(role(&s, d).as_deref(), Some(want), "{d} on {n}");
        }
    }
    // Writes go on at the new actives, and the plan is now balanced.
    for (d, to) in &planned {
        let out = ok(&c.socket(to), &["kv", "put", d, "after", "1"]);
        assert!(out.starts_with("put at lsn"), "{out}");
    }
    wait_converged(&c, &names);
    let table = ok(&c.socket("a"), &["plan"]);
    assert!(table.contains("moves: none (balanced)"), "{table}");
    let again = ok(&c.socket("a"), &with(&["rebalance"], &admin));
    assert!(again.contains("balanced: nothing to move"), "{again}");
    drop(nodes);
    eprintln!("plan and rebalance: {:?}", started.elapsed());
}

#[test]
fn domains_added_at_runtime_are_served_kept_and_removed() {
    let started = Instant::now();
    let c = Cluster::new(&NODES);
    let mut nodes = start_all(&c);
    let names: Vec<&str> = DOMAINS.iter().map(|d| d.0).collect();
    wait_converged(&c, &names);

    // A bad add is refused with one line naming the problem; nothing is written.
    let out = domsync(
        &c.socket("a"),
        &["domain", "add", "t5", "--replicas", "b,zz"],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("zz"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // A name of the configuration file is refused too.
    let out = domsync(&c.socket("a"), &["domain", "add", "t1", "--replicas", "a"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("configuration file"), "{}", out.stderr);

    // `domain add` on every replica's daemon: t5 (primary b) is created and served.
    for n in NODES {
        let out = ok(
            &c.socket(n),
            &[
                "domain",
                "add",
                "t5",
                "--replicas",
                "b,c,a",
                "--durability",
                "local",
                "--gateway",
                "g",
                "--weight",
                "2",
            ],
        );
        assert!(out.contains("added domain t5"), "{out}");
    }
    // With --all, one command reaches every replica (remote admin for the others).
    let admin = admin_args(&c);
    let out = ok(
        &c.socket("a"),
        &with(
            &[
                "domain",
                "add",
                "t6",
                "--replicas",
                "c,a,b",
                "--durability",
                "local",
            ],
            &admin,
        ),
    );
    // (without --all it says to run it on the other replicas)
    assert!(out.contains("added domain t6"), "{out}");
    let out = ok(
        &c.socket("a"),
        &with(
            &[
                "domain",
                "add",
                "t6",
                "--replicas",
                "c,a,b",
                "--durability",
                "local",
                "--all",
            ],
            &admin,
        ),
    );
    assert_eq!(out.matches("added domain t6").count(), 3, "{out}");
    let out = ok(&c.socket("b"), &["kv", "put", "t5", "k", "v"]);
    assert!(out.starts_with("put at lsn 1"), "{out}");
    let out = ok(&c.socket("c"), &["kv", "put", "t6", "k", "v"]);
    assert!(out.starts_with("put at lsn 1"), "{out}");
    let all = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let actives = wait_converged(&c, &all);
    assert_eq!(actives["t5"], "b");
    assert_eq!(actives["t6"], "c");
    let kept = c.dir.path().join("a/state").join("admin-domains.toml");
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(
        text.contains("name = \"t5\"") && text.contains("weight = 2"),
        "{text}"
    );

    // The plan counts the added domains and their weights.
    let plan = parse_json(&ok(&c.socket("a"), &["plan", "--json"]));
    assert_eq!(plan["domains"].as_array().unwrap().len(), 6, "{plan:?}");

    // A restart of `a` (its configuration file still without t5, t6) serves them again.
    if let Some(mut a) = nodes.remove("a") {
        a.stop();
    }
    nodes.insert("a", c.start("a", &DOMAINS));
    let s = wait_status(&c.socket("a"), "t5 and t6 served after restart", |s| {
        role(s, "t5").as_deref() == Some("standby") && role(s, "t6").as_deref() == Some("standby")
    });
    assert_eq!(s["domains"].as_array().unwrap().len(), 6);
    let out = ok(&c.socket("b"), &["kv", "put", "t5", "k2", "v2"]);
    assert!(out.starts_with("put at lsn 2"), "{out}");
    wait_converged(&c, &all);

    // Removing a domain of the configuration file is refused with one line saying what to do.
    let out = domsync(&c.socket("a"), &["domain", "remove", "t1"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("configuration file") && out.stderr.contains("SIGHUP"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // An unknown domain: exit 4.
    let out = domsync(&c.socket("a"), &["domain", "remove", "nope"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);

    // Removing an added one stops serving it; its store file stays.
    for n in NODES {
        let out = ok(&c.socket(n), &["domain", "remove", "t5"]);
        assert!(out.contains("no longer served"), "{out}");
        wait_status(&c.socket(n), "t5 gone", |s| {
            role(s, "t5").is_none()
                && !s["domains"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["domain"] == "t5")
        });
    }
    let out = ok(
        &c.socket("a"),
        &with(&["domain", "remove", "t6", "--all"], &admin),
    );
    assert_eq!(out.matches("no longer served").count(), 3, "{out}");
    for n in NODES {
        let s = status_json(&c.socket(n));
        assert_eq!(s["domains"].as_array().unwrap().len(), 4, "{n}: {s:?}");
        let file = c.dir.path().join(n).join("state/domains/t5.redb");
        assert!(file.exists(), "{} is gone", file.display());
    }
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(!text.contains("t5") && !text.contains("t6"), "{text}");
    // Writes on a removed domain are refused (not served).
    let out = domsync(&c.socket("b"), &["kv", "put", "t5", "k3", "v3"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    drop(nodes);
    eprintln!("domain add/remove: {:?}", started.elapsed());
}
