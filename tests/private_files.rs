//! Owner-only files whatever the umask: real `domsyncd` processes and `domsync` runs started
//! under umask 022 (any start outside the hardened systemd unit) create every directory 0700
//! and every file 0600 — state directories, domain databases (created, resynchronized from a
//! snapshot, added at runtime), admin-domains.toml, the admin socket's directory — and so does
//! the gateway client with its cache. A state directory found open to others is tightened.
//!
//! One test in its own binary: the mask is set in each child process only, never in the test.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use domsync_testkit::cli::{domain_of, domsync_cmd, run, socket_cmd, wait_status, Out};
use domsync_testkit::poll::GUARD;
use domsync_testkit::process::{with_umask, Cluster, Daemon, GATEWAY};

const UMASK: u32 = 0o022;

/// Runs `cmd` under [`UMASK`], asserting exit 0.
fn ok(mut cmd: Command) -> Out {
    let out = run(with_umask(&mut cmd, UMASK));
    assert_eq!(out.code, 0, "{out}");
    out
}

/// Every entry under `root` (itself included) with its mode.
fn walk(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.clone(), meta.permissions().mode() & 0o7777));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                todo.push(entry.unwrap().path());
            }
        }
    }
    out
}

fn start(c: &Cluster, me: &str, domains: &[(&str, &[&str])]) -> Daemon {
    let config = c.config(me, domains);
    let mut d = Daemon::spawn_with_umask(me, c.dir.path(), &config, GUARD, &[], UMASK);
    d.socket = c.socket(me);
    d.ready();
    d
}

#[test]
fn every_file_and_directory_domsync_creates_is_owner_only_under_umask_022() {
    let c = Cluster::new(&["a", "b"]);
    let domains: &[(&str, &[&str])] = &[("t1", &["a", "b"])];
    // b's state directory exists already, open to every local user: it is tightened.
    let b_state = c.dir.path().join("b/state");
    // (Its parent is the test's, made owner-only here: only what domsync makes is checked.)
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(c.dir.path().join("b"))
        .unwrap();
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&b_state)
        .unwrap();
    std::fs::set_permissions(&b_state, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut b = start(&c, "b", domains);
    let a = start(&c, "a", domains);
    let (sa, sb) = (c.socket("a"), c.socket("b"));
    wait_status(&sa, "t1 active on a", |s| {
        domain_of(s, "t1")["role"] == "active"
    });
    let package = c.dir.path().join("package.bin");
    std::fs::write(&package, vec![7u8; 300 * 1024]).unwrap();
    for i in 0..20 {
        ok(socket_cmd(&sa, &["kv", "put", "t1", &format!("k{i}"), "v"]));
    }
    ok(socket_cmd(
        &sa,
        &["policy", "install", "t1", "fw", package.to_str().unwrap()],
    ));
    // b loses its replica and starts again behind: it is sent a snapshot (a resync file
    // renamed into place).
    b.kill();
    std::fs::remove_file(b_state.join("domains/t1.redb")).unwrap();
    let b = start(&c, "b", domains);
    // A domain added at runtime on both (admin-domains.toml, a new database on each).
    for s in [&sa, &sb] {
        ok(socket_cmd(
            s,
            &[
                "domain",
                "add",
                "t2",
                "--replicas",
                "a,b",
                "--durability",
                "local",
                "--gateway",
                GATEWAY,
            ],
        ));
    }
    wait_status(&sa, "t2 active on a", |s| {
        domain_of(s, "t2")["role"] == "active"
    });
    ok(socket_cmd(&sa, &["kv", "put", "t2", "k", "v"]));
    let t1 = domain_of(
        &wait_status(&sa, "t1 at lsn 21", |s| {
            domain_of(s, "t1")["lsn"].as_f64() == Some(21.0)
        }),
        "t1",
    )
    .clone();
    for (domain, lsn) in [("t1", 21.0), ("t2", 1.0)] {
        wait_status(&sb, &format!("b holds {domain} at lsn {lsn}"), |s| {
            domain_of(s, domain)["lsn"].as_f64() == Some(lsn)
        });
    }
    assert_eq!(
        domain_of(&wait_status(&sb, "b's digest", |_| true), "t1")["digest"],
        t1["digest"]
    );

    // A gateway fetch with a cache directory that does not exist yet.
    let cache = c.dir.path().join("gateway/cache");
    let out = c.dir.path().join("fw.out");
    let pki = c.pki();
    ok(domsync_cmd(&[
        "gateway",
        "fetch",
        "fw",
        "--pki",
        pki.to_str().unwrap(),
        "--id",
        GATEWAY,
        "--domain",
        "t1",
        "--node",
        &format!("a={}", c.addr("a")),
        "--cache",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&out).unwrap().len(), 300 * 1024);

    let mut checked = Vec::new();
    for root in [
        c.dir.path().join("a"),
        c.dir.path().join("b"),
        c.dir.path().join("gateway"),
    ] {
        checked.extend(walk(&root));
    }
    checked.push((
        out.clone(),
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777,
    ));
    let open: Vec<String> = checked
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .map(|(p, mode)| format!("{} {mode:o}", p.display()))
        .collect();
    assert!(open.is_empty(), "open to other users: {open:#?}");
    // What was checked includes what matters.
    let names: Vec<String> = checked
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    for want in [
        "a/state/domains/t1.redb",
        "a/state/domains/t2.redb",
        "b/state/domains/t1.redb",
        "b/state/domains/t2.redb",
        "a/state/admin-domains.toml",
        "b/state/admin-domains.toml",
        "a/run/admin.sock",
        "gateway/cache",
    ] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "{want} not found among {names:#?}"
        );
    }
    assert!(
        checked
            .iter()
            .any(|(p, m)| p.starts_with(&cache) && p.is_file() && *m == 0o600),
        "no cached file: {names:#?}"
    );
    assert!(
        b.log().contains("tightened to owner-only"),
        "no warning for b's state directory: {}",
        b.log()
    );
    drop((a, b));
}
