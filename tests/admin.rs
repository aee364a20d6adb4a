//! Administration of real `domsyncd` processes through the `domsync` CLI: status (table and
//! JSON), writes sent to the active, promote and switchover on two nodes, and who may
//! administer: the Unix socket (mode 0600, service user and root only) and the remote ALPN
//! `domsync-admin/1` (admin certificates only; node and gateway certificates are refused).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use domsync_net::{Identity, PeerRole, TlsFiles, ALPN_ADMIN};
use domsync_proto::admin::{Answer, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};

use domsync_testkit::cli::{domain_of, domsync, ok, run, socket_cmd, status_json, wait_status};
use domsync_testkit::poll::GUARD;
use domsync_testkit::process::Cluster;
use serde_json::Value;

const CRL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca-2.der");

#[test]
fn status_and_writes_through_the_admin_socket() {
    let c = Cluster::new(&["a"]);
    let a = c.start("a", &[("t1", &["a"]), ("t2", &["a"])]);
    let sock = &a.socket;
    let mode = std::fs::metadata(sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    // Writes through the CLI land on the daemon's active.
    assert!(ok(sock, &["kv", "put", "t1", "k", "v"]).starts_with("put at lsn 1"));
    let policy = c.dir.path().join("edge.pol");
    std::fs::write(&policy, b"allow 443").unwrap();
    let out = ok(
        sock,
        &["policy", "install", "t1", "edge", policy.to_str().unwrap()],
    );
    assert!(out.starts_with("installed policy edge version 2"), "{out}");
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca.pem");
    let out = ok(sock, &["issuer", "add", "t1", ca]);
    assert!(out.contains(" in t1 at lsn 3"), "{out}");
    // The fixture CRLs were made once; their nextUpdate passes on 2026-12-24.
    let out = ok(sock, &["crl", "put", "t1", CRL, "--allow-stale"]);
    assert!(out.contains(" in t1 at lsn 4"), "{out}");
    assert!(ok(sock, &["kv", "del", "t1", "k"]).starts_with("deleted at lsn 5"));
    // Compaction through the daemon; the domain serves on.
    let out = ok(sock, &["compact", "t1"]);
    assert!(out.starts_with("compacted domain t1: database "), "{out}");
    // The trust material is listed through the daemon as well.
    let list = domsync_testkit::cli::parse_json(&ok(sock, &["crl", "list", "t1", "--json"]));
    assert_eq!(list["crls"][0]["number"], "2");
    assert!(list["crls"][0]["verified_by"].is_string());
    assert_eq!(list["accept_unverified_crls"], false);
    let issuers = domsync_testkit::cli::parse_json(&ok(sock, &["issuer", "list", "t1", "--json"]));
    assert_eq!(issuers[0]["subject"], "O=domsync,CN=domsync fixture CA");

    // The table names every domain with role, epoch and position.
    let table = ok(sock, &["status"]);
    assert!(table.starts_with("node a\n"), "{table}");
    // stdout is a pipe here: no colour, whatever the terminal of the test run.
    assert!(!table.contains('\x1b'), "escape codes in {table:?}");
    let list = domsync_testkit::cli::parse_json(&ok(sock, &["collisions", "list", "t1", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    let line = |d: &str| {
        table
            .lines()
            .find(|l| l.starts_with(d))
            .unwrap_or_else(|| panic!("{d} missing: {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("t1")[..5], ["t1", "active", "1@a", "5", "serving"]);
    assert_eq!(line("t2")[..5], ["t2", "active", "1@a", "0", "serving"]);
    let s = status_json(sock);
    assert_eq!(s["node"].as_str().unwrap(), "a");
    assert_eq!(s["domains"].as_array().unwrap().len(), 2);
    let t1 = domain_of(&s, "t1");
    assert_eq!(t1["role"].as_str().unwrap(), "active");
    assert_eq!(t1["lsn"].as_f64().unwrap(), 5.0);
    assert_eq!(t1["crls"][0]["number"], "2");
    assert_eq!(t1["crls"][0]["verified"], true);
    assert_eq!(t1["epoch"]["node"].as_str().unwrap(), "a");
    assert_eq!(t1["digest"].as_str().unwrap().len(), 64);

    // One-line errors and exit codes.
    let out = domsync(sock, &["kv", "put", "nope", "k", "v"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("domsync: error: domain nope is not held by node a"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1);
    let older = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca-1.der");
    let out = domsync(sock, &["crl", "put", "t1", older, "--allow-stale"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("lower than the stored 2"),
        "{}",
        out.stderr
    );
    let out = domsync(sock, &["collisions", "show", "t1", "7"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let out = ok(sock, &["collisions", "list", "t1"]);
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
    let gone = c.dir.path().join("nowhere.sock");
    let out = domsync(&gone, &["status"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach domsyncd"),
        "{}",
        out.stderr
    );

    // Without --socket, writes still work locally on a state directory.
    let local = c.dir.path().join("local");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_domsync"));
    cmd.env_remove("DOMSYNC_SOCKET").arg("--data").arg(&local);
    let out = run({
        let mut c2 = Command::new(env!("CARGO_BIN_EXE_domsync"));
        c2.env_remove("DOMSYNC_SOCKET")
            .arg("--data")
            .arg(&local)
            .args(["domain", "create", "x"]);
        c2
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run({
        cmd.args(["kv", "put", "x", "k", "v"]);
        cmd
    });
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The socket goes away with the daemon.
    let mut a = a;
    let pid = a.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = a.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", a.log());
    assert!(!a.socket.exists(), "socket left behind");
}

#[test]
fn a_foreign_user_on_the_admin_socket_is_refused() {
    let c = Cluster::new(&["a"]);
    let a = c.start("a", &[("t1", &["a"])]);
    let sock = &a.socket;
    let mode = std::fs::metadata(sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");
    if !is_root() {
        eprintln!("not root: cannot run the client as another user; only the mode was checked");
        return;
    }
    // Let `nobody` reach the socket's directory: only the socket's own mode stops it.
    for d in [
        c.dir.path().to_path_buf(),
        c.dir.path().join("a"),
        c.dir.path().join("a/run"),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    const NOBODY: u32 = 65534;
    let as_nobody = |args: &[&str]| {
        let mut cmd = socket_cmd(sock, args);
        cmd.uid(NOBODY).gid(NOBODY);
        run(cmd)
    };
    // Mode 0600: the kernel refuses the connection.
    let out = as_nobody(&["status"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("cannot reach domsyncd"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.to_lowercase().contains("permission denied"),
        "{}",
        out.stderr
    );
    // Even with the socket opened up, the daemon checks the peer's uid and refuses.
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["status"][..], &["kv", "put", "t1", "k", "v"]] {
        let out = as_nobody(args);
        assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr
                .starts_with("domsync: error: refused: uid 65534 may not administer this node"),
            "{}",
            out.stderr
        );
    }
    assert!(
        a.log()
            .contains("admin connection refused: not the service user or root"),
        "{}",
        a.log()
    );
    // Root (the service user here) is served; nothing was written by the refused client.
    let s = status_json(sock);
    assert_eq!(domain_of(&s, "t1")["lsn"].as_f64().unwrap(), 0.0);
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Sends one admin request over QUIC with the certificate of `who`; the answer, or the reason
/// the node closed the connection.
async fn remote_request(pki: &Path, who: &Identity, addr: &str) -> Result<Answer, String> {
    let creds = TlsFiles::in_dir(pki, who).load().unwrap();
    let client = domsync_net::client_config_for(&creds, ALPN_ADMIN, None).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client, addr.parse().unwrap(), domsync_net::SERVER_NAME)
        .unwrap()
        .await
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        domsync_net::write_message(&mut send, &Request::Status, MAX_REQUEST_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        domsync_net::read_message::<_, Answer>(&mut recv, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no answer".to_string())
    };
    let result = tokio::time::timeout(GUARD, attempt)
        .await
        .map_err(|_| "hang".to_string())?;
    match (result, conn.close_reason()) {
        (_, Some(quinn::ConnectionError::ApplicationClosed(c))) => Err(format!(
            "closed {}: {}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        )),
        (r, _) => r,
    }
}

#[test]
fn remote_admin_takes_admin_certificates_only() {
    let c = Cluster::new(&["a", "b"]);
    let a = c.start("a", &[("t1", &["a"])]);
    let addr = c.addr("a");
    let pki = c.pki();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = Identity::new(PeerRole::Admin, "ops").unwrap();
    match rt.block_on(remote_request(&pki, &admin, &addr)) {
        Ok(Answer::Status(s)) => assert_eq!(s.node.as_str(), "a"),
        other => panic!("admin refused: {other:?}"),
    }
    for who in [
        Identity::new(PeerRole::Gateway, "g").unwrap(),
        Identity::new(PeerRole::Node, "b").unwrap(),
    ] {
        let got = rt.block_on(remote_request(&pki, &who, &addr));
        let Err(why) = got else {
            panic!("{who} was served: {got:?}");
        };
        assert!(
            why.contains(&domsync_net::CLOSE_REFUSED.to_string()) && why.contains("admin"),
            "{who}: {why}"
        );
    }
    drop(rt);
    let log = a.log();
    assert!(
        log.contains("domsync://gateway/g") && log.contains("domsync://node/b"),
        "refusals not logged: {log}"
    );

    // The CLI over --remote: an admin works, a gateway's certificate is refused.
    let remote_to = |target: &str, id: &str, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_domsync"));
        cmd.env_remove("DOMSYNC_SOCKET")
            .env_remove("DOMSYNC_REMOTE")
            .args(["--remote", target, "--admin-pki"])
            .arg(&pki)
            .args(["--admin-id", id])
            .args(args);
        run(cmd)
    };
    let named = format!("a={addr}");
    let remote = |id: &str, args: &[&str]| remote_to(&named, id, args);
    // --remote names the node it expects: another node answering there is refused, naming
    // both identities and what to do.
    let out = remote_to(
        &format!("wrongid={addr}"),
        "ops",
        &["kv", "put", "t1", "k", "w"],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    for part in [
        "domsync://node/a",
        "domsync://node/wrongid",
        "--remote ID=ADDR",
    ] {
        assert!(out.stderr.contains(part), "{part}: {}", out.stderr);
    }
    // A bare address is refused when the command line is parsed, showing the form.
    let out = remote_to(&addr, "ops", &["status"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("expected ID=ADDR"), "{}", out.stderr);
    let out = remote("ops", &["kv", "put", "t1", "k", "v"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = remote("ops", &["status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("t1"), "{}", out.stdout);
    // A gateway certificate under an admin's file name is still a gateway's.
    std::fs::copy(pki.join("gateway-g.pem"), pki.join("admin-fake.pem")).unwrap();
    std::fs::copy(pki.join("gateway-g.key"), pki.join("admin-fake.key")).unwrap();
    let out = remote("fake", &["status"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("refused"), "{}", out.stderr);
}

/// Waits until both nodes report `t1` at the same lsn with the same digest.
fn converged(a: &Path, b: &Path, lsn: f64) {
    let deadline = Instant::now() + GUARD;
    loop {
        let (sa, sb) = (status_json(a), status_json(b));
        let (da, db) = (domain_of(&sa, "t1"), domain_of(&sb, "t1"));
        if da["lsn"].as_f64().unwrap() == lsn
            && db["lsn"].as_f64().unwrap() == lsn
            && da["digest"] == db["digest"]
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence at lsn {lsn}: {da:?} {db:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn promote_and_switchover_through_the_cli_on_two_nodes() {
    let c = Cluster::new(&["a", "b"]);
    let domains: &[(&str, &[&str])] = &[("t1", &["a", "b"])];
    let mut b = c.start("b", domains);
    let a = c.start("a", domains);
    let (sa, sb) = (a.socket.clone(), b.socket.clone());
    wait_status(&sa, "t1 created on a", |s| {
        domain_of(s, "t1")["role"] == "active"
    });
    for i in 0..5 {
        ok(&sa, &["kv", "put", "t1", &format!("k{i}"), "v"]);
    }
    converged(&sa, &sb, 5.0);
    // a's table shows b synchronized; b's shows it following a.
    let s = wait_status(&sa, "b synchronized", |s| {
        domain_of(s, "t1")["standbys"]
            .as_array()
            .unwrap()
            .first()
            .is_some_and(|sb| sb["sync_status"]["name"] == "Synchronized")
    });
    let sbj = domain_of(&s, "t1")["standbys"].as_array().unwrap()[0].clone();
    assert_eq!(sbj["node"].as_str().unwrap(), "b");
    assert_eq!(sbj["lag"]["records"].as_f64().unwrap(), 0.0);
    assert!(sbj["last_sync_ms"].is_number(), "{sbj:?}");
    let table = ok(&sa, &["status"]);
    assert!(
        table.contains("  standby b") && table.contains("Synchronized"),
        "{table}"
    );
    let table = ok(&sb, &["status"]);
    assert!(table.contains("  follows a"), "{table}");

    // A write sent to the standby's daemon is refused, naming the active.
    let out = domsync(&sb, &["kv", "put", "t1", "x", "y"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("domain t1 is not active on node b: its active is a"),
        "{}",
        out.stderr
    );
    let out = domsync(&sb, &["switchover", "t1", "--to", "a"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("not active on this node"),
        "{}",
        out.stderr
    );

    // Switchover a -> b through a's daemon.
    let out = ok(&sa, &["switchover", "t1", "--to", "b"]);
    assert!(out.starts_with("switched t1 over to b"), "{out}");
    // The hand-over was at exactly a's position: a follows b synchronized, with a last sync,
    // from the moment the switchover returns (it used to say `last sync never`).
    let s = status_json(&sa);
    let follower = &domain_of(&s, "t1")["follower"];
    assert_eq!(follower["active"].as_str().unwrap(), "b", "{follower:?}");
    assert!(follower["last_sync_ms"].is_number(), "{follower:?}");
    wait_status(&sb, "b active", |s| domain_of(s, "t1")["role"] == "active");
    ok(&sb, &["kv", "put", "t1", "after-switchover", "1"]);
    let out = domsync(&sa, &["kv", "put", "t1", "x", "y"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("its active is b"), "{}", out.stderr);
    converged(&sa, &sb, 6.0);

    // b is lost; a is promoted through its daemon once the guard no longer hears b.
    b.kill();
    let deadline = Instant::now() + GUARD;
    let promoted = loop {
        let out = domsync(&sa, &["promote", "t1"]);
        if out.code == 0 {
            break out.stdout;
        }
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(Instant::now() < deadline, "never promoted: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        promoted.starts_with("promoted t1: active in epoch"),
        "{promoted}"
    );
    ok(&sa, &["kv", "put", "t1", "after-promote", "1"]);
    let s = status_json(&sa);
    assert_eq!(domain_of(&s, "t1")["role"].as_str().unwrap(), "active");
    assert_eq!(domain_of(&s, "t1")["lsn"].as_f64().unwrap(), 7.0);

    // b comes back, learns the higher epoch, follows a: equal digests.
    let b = c.start("b", domains);
    converged(&sa, &b.socket, 7.0);
    let s = wait_status(&b.socket, "b follows a", |s| {
        domain_of(s, "t1")["role"] == "standby"
    });
    assert_eq!(domain_of(&s, "t1")["collisions"].as_f64().unwrap(), 0.0);
}

#[test]
fn collisions_are_listed_reapplied_on_the_new_active_and_discarded() {
    let c = Cluster::new(&["a", "b"]);
    let domains: &[(&str, &[&str])] = &[("t1", &["a", "b"])];
    let mut b = c.start("b", domains);
    let mut a = c.start("a", domains);
    let (sa, sb) = (a.socket.clone(), b.socket.clone());
    wait_status(&sa, "t1 created on a", |s| {
        domain_of(s, "t1")["role"] == "active"
    });
    ok(&sa, &["kv", "put", "t1", "shared", "1"]);
    converged(&sa, &sb, 1.0);
    // b is lost; a goes on alone (durability local), then is lost too.
    b.kill();
    ok(&sa, &["kv", "put", "t1", "lost-1", "x"]);
    ok(&sa, &["kv", "put", "t1", "lost-2", "y"]);
    a.kill();
    // b comes back first and is promoted (forced: a cannot be asked).
    let _b_again = c.start("b", domains);
    let deadline = Instant::now() + GUARD;
    loop {
        let out = domsync(&sb, &["promote", "t1", "--force"]);
        if out.code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never promoted: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&sb, &["kv", "put", "t1", "new", "z"]);
    // a comes back, steps down, archives its two divergent records and follows b.
    let a = c.start("a", domains);
    let s = wait_status(&a.socket, "a archives its divergent records", |s| {
        let d = domain_of(s, "t1");
        d["role"] == "standby" && d["collisions"] == 2.0
    });
    assert!(
        ok(&a.socket, &["status"]).contains("2 archived collisions"),
        "{s:?}"
    );
    let list = ok(&a.socket, &["collisions", "list", "t1"]);
    let ids: Vec<String> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    // When each record was written reads as a time (RFC 3339), not raw microseconds.
    assert!(
        list.lines().skip(1).all(|l| l
            .split_whitespace()
            .nth(3)
            .is_some_and(|t| t.len() == 27 && t.ends_with('Z') && t.as_bytes()[10] == b'T')),
        "{list}"
    );
    let show = ok(&a.socket, &["collisions", "show", "t1", &ids[0]]);
    assert!(show.contains("put \"lost-1\""), "{show}");
    // Re-applying needs the active: a standby's daemon says so and names it.
    let out = domsync(&a.socket, &["collisions", "reapply", "t1", &ids[0]]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("its active is b") && out.stderr.contains("--on-socket"),
        "{}",
        out.stderr
    );
    let sb_path = sb.to_str().unwrap();
    let out = ok(
        &a.socket,
        &[
            "collisions",
            "reapply",
            "t1",
            &ids[0],
            "--on-socket",
            sb_path,
        ],
    );
    assert!(out.starts_with("re-applied record"), "{out}");
    ok(&a.socket, &["collisions", "discard", "t1", &ids[1]]);
    let out = domsync(&a.socket, &["collisions", "discard", "t1", &ids[1]]);
    assert_eq!(out.code, 4, "already gone: {}", out.stderr);
    converged(&a.socket, &sb, 3.0);
    let s = status_json(&a.socket);
    assert_eq!(domain_of(&s, "t1")["collisions"].as_f64().unwrap(), 0.0);
    // The archive is empty: the active no longer calls a a collision, and a's link, which
    // recovered, carries no error from before as its current state.
    wait_status(
        &sb,
        "b sees a synchronized once its archive is empty",
        |s| {
            domain_of(s, "t1")["standbys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["node"] == "a" && x["sync_status"]["name"] == "Synchronized")
        },
    );
    let s = wait_status(&a.socket, "a synchronized with b", |s| {
        domain_of(s, "t1")["follower"]["sync_status"]["name"] == "Synchronized"
    });
    let follower = &domain_of(&s, "t1")["follower"];
    assert_eq!(
        follower.get("last_error"),
        Some(&Value::Null),
        "{follower:?}"
    );
}

/// A standby that is down is shown as such by its active: disconnected, never
/// `Synchronized`, and its time lag keeps growing (it used to stay at `0.000 s`).
#[test]
fn a_standby_that_is_down_shows_a_growing_lag() {
    let c = Cluster::new(&["a", "b"]);
    let domains: &[(&str, &[&str])] = &[("t1", &["a", "b"])];
    let mut b = c.start("b", domains);
    let a = c.start("a", domains);
    let sa = a.socket.clone();
    wait_status(&sa, "t1 created on a", |s| {
        domain_of(s, "t1")["role"] == "active"
    });
    ok(&sa, &["kv", "put", "t1", "before", "1"]);
    converged(&sa, &b.socket, 1.0);
    b.kill();
    let standby_b = |s: &Value| -> Value {
        domain_of(s, "t1")["standbys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == "b")
            .cloned()
            .unwrap_or(Value::Null)
    };
    let s = wait_status(&sa, "a shows b disconnected and lagging", |s| {
        let x = standby_b(s);
        x["connected"] == false && x["sync_status"]["name"] == "Lagging"
    });
    let first = standby_b(&s)["lag"]["ms"].as_f64().unwrap();
    let s = wait_status(&sa, "b's lag grows while it is down", |s| {
        standby_b(s)["lag"]["ms"].as_f64().unwrap() >= first + 1000.0
    });
    assert_eq!(
        standby_b(&s)["sync_status"]["name"].as_str().unwrap(),
        "Lagging",
        "{s:?}"
    );
}
