//! The `domsync` command as an operator runs it: one-line errors, exit codes, `verify`.

use std::process::Command;

fn domsync(data: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_domsync"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn local_walkthrough_and_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(domsync(d, &["domain", "create", "t1"]).0, 0);
    assert_eq!(domsync(d, &["kv", "put", "t1", "k", "v"]).0, 0);
    let (code, out, _) = domsync(d, &["kv", "get", "t1", "k"]);
    assert_eq!((code, out.trim()), (0, "v"));
    let crl = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca-2.der");
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca.pem");
    // No issuer certificate held: refused in one line saying what to do.
    let (code, _, err) = domsync(d, &["crl", "put", "t1", crl, "--allow-stale"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("domsync issuer add"), "{err}");
    let (code, out, err) = domsync(d, &["issuer", "add", "t1", ca]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("holding issuer O=domsync,CN=domsync fixture CA (id "),
        "{out}"
    );
    // The fixture CRLs were made once; their nextUpdate passes on 2026-12-24.
    let (code, out, err) = domsync(d, &["crl", "put", "t1", crl, "--allow-stale"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("stored CRL number 2 of O=domsync,CN=domsync fixture CA in t1"),
        "{out}"
    );
    let (code, out, _) = domsync(d, &["crl", "list", "t1", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["crls"][0]["number"], "2");
    assert_eq!(list["crls"][0]["kind"], "base");
    assert!(list["crls"][0]["verified_by"].is_string(), "{out}");
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/crl/fixture-ca-1.der");
    let (code, _, err) = domsync(d, &["crl", "put", "t1", old, "--allow-stale"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("lower than the stored 2"), "{err}");
    // Removing names the number.
    let (code, _, err) = domsync(
        d,
        &[
            "crl",
            "remove",
            "t1",
            "O=domsync,CN=domsync fixture CA",
            "1",
        ],
    );
    assert_eq!((code, err.trim().lines().count()), (1, 1), "{err}");
    assert!(err.contains("no CRL number 1"), "{err}");
    let (code, out, err) = domsync(
        d,
        &[
            "crl",
            "remove",
            "t1",
            "O=domsync,CN=domsync fixture CA",
            "2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed CRL number 2"), "{out}");
    let (code, out, _) = domsync(d, &["log", "show", "t1"]);
    assert_eq!(code, 0);
    assert!(out.contains("crc ok"), "{out}");
    let (code, _, err) = domsync(d, &["kv", "put", "nope", "k", "v"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("domsync: error: domain nope does not exist"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    let (code, _, err) = domsync(d, &["policy", "install", "t1", "p", "/nonexistent/file"]);
    assert_eq!((code, err.trim().lines().count()), (1, 1), "{err}");
    assert_eq!(domsync(d, &["verify"]).0, 0);
}

#[test]
fn verify_names_domain_and_lsn_of_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(domsync(d, &["domain", "create", "t2"]).0, 0);
    let marker = "ZZMARKER-only-in-record-2";
    assert_eq!(domsync(d, &["kv", "put", "t2", "a", "b"]).0, 0);
    assert_eq!(domsync(d, &["kv", "del", "t2", marker]).0, 0);
    // The record lives in the domain's log segment (the durable point); the tables hold only
    // the state (a delete leaves no value).
    let path = d.join("domains/t2.log/00000000000000000001.seg");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let (code, out, _) = domsync(d, &["verify"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("domain t2: FAULT at lsn 2"), "{out}");
    let (_, out, _) = domsync(d, &["log", "show", "t2"]);
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("2  CORRUPT")),
        "{out}"
    );
}

#[test]
fn demo_runs_with_built_in_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_domsync"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("demo complete"));
    assert!(stdout.contains("faults: 0"));
    // Six domains on three daemons: a switchover, a forced failover and the old active back.
    assert!(stdout.contains("switchover of tenant-1 to"), "{stdout}");
    assert!(stdout.contains("(forced)"), "{stdout}");
    assert!(
        stdout.contains("back: it stepped down and resynchronized"),
        "{stdout}"
    );
    assert!(stdout.contains("from node-"), "{stdout}");
    assert!(stdout.contains("(standby) at lsn"), "{stdout}");
}

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_domsync"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn global_options_show_only_where_they_apply_under_their_own_headings() {
    const STORE: [&str; 2] = ["--data", "--node"];
    const DAEMON: [&str; 4] = ["--socket", "--remote", "--admin-pki", "--admin-id"];
    // Their own files: none of the store or daemon options.
    for args in [
        &["pki", "issue"][..],
        &["pki", "init"],
        &["pki"],
        &["demo"],
        &["doctor"],
    ] {
        let text = help(args);
        for opt in STORE.iter().chain(&DAEMON) {
            assert!(!text.contains(opt), "{args:?} shows {opt}:\n{text}");
        }
    }
    // Daemon only: the connection, not the store.
    for args in [&["status"][..], &["collisions", "list"], &["domain", "add"]] {
        let text = help(args);
        assert!(text.contains("Daemon connection:"), "{args:?}:\n{text}");
        assert!(
            text.contains("--socket") && !text.contains("--data"),
            "{args:?}:\n{text}"
        );
    }
    // Local only: the store, not the connection.
    for args in [&["verify"][..], &["domain", "create"], &["log", "show"]] {
        let text = help(args);
        assert!(text.contains("Local store:"), "{args:?}:\n{text}");
        assert!(
            text.contains("--data") && !text.contains("--socket"),
            "{args:?}:\n{text}"
        );
    }
    // Both (local, or the writes sent to a daemon), each under its heading.
    let text = help(&["kv", "put"]);
    assert!(
        text.contains("Local store:") && text.contains("Daemon connection:"),
        "{text}"
    );
    // The hidden options are still accepted where a script gives them.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_domsync"))
        .args(["pki", "init", "--out"])
        .arg(dir.path().join("pki"))
        .args(["--data", "/nonexistent"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn list_commands_answer_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(domsync(d, &["domain", "create", "t1"]).0, 0);
    assert_eq!(domsync(d, &["kv", "put", "t1", "k", "v"]).0, 0);
    let pol = d.join("edge.pol");
    std::fs::write(&pol, b"allow 443").unwrap();
    let (code, _, err) = domsync(
        d,
        &["policy", "install", "t1", "edge", pol.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");

    let json = |args: &[&str]| -> serde_json::Value {
        let (code, out, err) = domsync(d, args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let domains = json(&["domain", "list", "--json"]);
    assert_eq!(domains[0]["domain"], "t1");
    assert_eq!(domains[0]["lsn"], 2);
    let kv = json(&["kv", "list", "t1", "--json"]);
    assert_eq!(kv["keys"][0]["key"], "k");
    assert_eq!(kv["keys"][0]["value"], "v");
    let policies = json(&["policy", "list", "t1", "--json"]);
    assert_eq!(policies["packages"][0]["name"], "edge");
    assert_eq!(policies["packages"][0]["version"], 2);
}

/// Space freed by deletes is returned to the file system by `domsync compact`, and
/// everything still reads and verifies afterwards.
#[test]
fn compact_returns_the_space_of_deleted_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    {
        let store = domsync_store::Store::open(
            d,
            domsync_store::StoreOptions::new(domsync_proto::model::NodeId::new("local").unwrap()),
        )
        .unwrap();
        let t = store.create_domain(&"t".parse().unwrap()).unwrap();
        for i in 0..2000 {
            t.put(format!("k{i}"), vec![b'x'; 4096]).unwrap();
        }
        for i in 1..2000 {
            t.delete(format!("k{i}")).unwrap();
        }
    }
    let size = || std::fs::metadata(d.join("domains/t.redb")).unwrap().len();
    let before = size();
    let (code, out, err) = domsync(d, &["compact", "t"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("compacted domain t: database "), "{out}");
    let after = size();
    assert!(after * 2 < before, "{before} -> {after}: {out}");
    let (code, out, _) = domsync(d, &["kv", "get", "t", "k0"]);
    assert_eq!(code, 0);
    assert!(out.contains(&"x".repeat(4096)), "{out}");
    assert_eq!(domsync(d, &["verify"]).0, 0);
    let (code, _, err) = domsync(d, &["compact", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("domain nope does not exist"), "{err}");
}
