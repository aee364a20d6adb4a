//! `domsync kv get|put|del|list|txn|watch` with versions and --json: locally on a stopped
//! store, and through a running domsyncd's application socket (--app-socket).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use domsync_testkit::cli::{domsync_cmd, run, Out};
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::Cluster;
use serde_json::Value;

/// Exit code of a transaction whose condition failed (`kv txn` help).
const EXIT_CONFLICT: i32 = 3;

fn local(data: &Path, args: &[&str]) -> Out {
    let mut cmd = domsync_cmd(&["--data"]);
    cmd.arg(data).args(args);
    run(cmd)
}

fn app(socket: &Path, args: &[&str]) -> Out {
    let mut cmd = domsync_cmd(&["--app-socket"]);
    cmd.arg(socket).args(args);
    run(cmd)
}

fn json(out: &Out) -> Value {
    assert_eq!(out.code, 0, "{out}");
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The same walk through on either mode: `kv` runs `domsync kv ARGS` in that mode.
fn walk_through(kv: &dyn Fn(&[&str]) -> Out, node: &str) {
    let put = json(&kv(&["kv", "put", "t1", "rule/1", "allow 443", "--json"]));
    let v1 = put["lsn"].as_u64().unwrap();
    assert_eq!(put["committed"], true);
    let got = json(&kv(&["kv", "get", "t1", "rule/1", "--json"]));
    assert_eq!(got["value"], "allow 443");
    assert_eq!(got["version"], v1);
    assert_eq!(got["node"], node);
    assert_eq!(got["role"], "active");
    assert!(got["position"]
        .as_str()
        .unwrap()
        .contains(&format!(":{v1}:")));
    // Plain: the value alone; absent: exit 4.
    let out = kv(&["kv", "get", "t1", "rule/1"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "allow 443"), "{out}");
    let out = kv(&["kv", "get", "t1", "nope"]);
    assert_eq!(out.code, 4, "{out}");
    assert!(
        out.stderr.contains("\"nope\" not found in domain t1"),
        "{out}"
    );

    // A condition on a stale version: nothing written, exit 3 with the conflict.
    let stale = format!("rule/1={}", v1 + 100);
    let out = kv(&[
        "kv",
        "txn",
        "t1",
        "--if-version",
        &stale,
        "--put",
        "rule/1=deny",
        "--json",
    ]);
    assert_eq!(out.code, EXIT_CONFLICT, "{out}");
    let c: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        (c["committed"].clone(), c["conflict"]["current"].clone()),
        (Value::from(false), Value::from(v1))
    );
    assert!(
        out.stderr.contains("condition 0 failed on key \"rule/1\""),
        "{out}"
    );
    // The right version: committed, as one record with the other ops.
    let right = format!("rule/1={v1}");
    let t = json(&kv(&[
        "kv",
        "txn",
        "t1",
        "--if-version",
        &right,
        "--if-absent",
        "rule/2",
        "--put",
        "rule/1=deny",
        "--put",
        "rule/2=x",
        "--json",
    ]));
    let v2 = t["lsn"].as_u64().unwrap();
    assert!(v2 > v1);
    let list = json(&kv(&["kv", "list", "t1", "rule/", "--json"]));
    let keys: Vec<(String, u64)> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap().to_owned(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(keys, [("rule/1".to_owned(), v2), ("rule/2".to_owned(), v2)]);
    // --limit and --keys-only.
    let list = json(&kv(&[
        "kv",
        "list",
        "t1",
        "rule/",
        "--limit",
        "1",
        "--keys-only",
        "--json",
    ]));
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["truncated"], true);
    assert_eq!(list["keys"][0]["value"], "");

    // A transaction file: conditions and ops in order.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("txn");
    std::fs::write(
        &file,
        "# move rule/2\nif-value rule/2 x\nput rule/3 moved here\ndel rule/2\n",
    )
    .unwrap();
    let out = kv(&["kv", "txn", "t1", "--file", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        kv(&["kv", "get", "t1", "rule/3"]).stdout.trim(),
        "moved here"
    );
    assert_eq!(kv(&["kv", "get", "t1", "rule/2"]).code, 4);
    // Again: the condition fails now.
    assert_eq!(
        kv(&["kv", "txn", "t1", "--file", file.to_str().unwrap()]).code,
        EXIT_CONFLICT
    );
    // A bad line is named.
    std::fs::write(&file, "put rule/4 v\nfrob x\n").unwrap();
    let out = kv(&["kv", "txn", "t1", "--file", file.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains(":2: unknown word \"frob\""), "{out}");

    let del = json(&kv(&["kv", "del", "t1", "rule/3", "--json"]));
    assert!(del["lsn"].as_u64().unwrap() > v2);
    assert_eq!(kv(&["kv", "get", "t1", "rule/3"]).code, 4);
}

#[test]
fn kv_on_a_stopped_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    assert_eq!(local(&d, &["domain", "create", "t1"]).code, 0);
    walk_through(&|args| local(&d, args), "local");
    // Watch needs a daemon, and says how to reach one.
    let out = local(
        &d,
        &["kv", "watch", "t1", "--app-socket", "/nonexistent/app.sock"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("/nonexistent/app.sock"), "{out}");
}

/// The application socket of `node` (the default: beside its admin socket).
fn app_socket(c: &Cluster, node: &str) -> PathBuf {
    c.dir.path().join(node).join("run/app.sock")
}

#[test]
fn kv_through_the_application_socket() {
    let c = Cluster::new(&["a"]);
    let _a = c.start("a", &[("t1", &["a"])]);
    let s = app_socket(&c, "a");
    poll(GUARD, Duration::from_millis(100), || {
        let out = app(&s, &["kv", "list", "t1"]);
        if out.code == 0 {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    walk_through(&|args| app(&s, args), "a");

    // A watch from a position read before the writes prints them once each, one JSON
    // object per batch; the last position it printed resumes after them.
    let from = json(&app(&s, &["kv", "list", "t1", "w/", "--json"]))["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let p1 = json(&app(&s, &["kv", "put", "t1", "w/1", "one", "--json"]))["lsn"]
        .as_u64()
        .unwrap();
    json(&app(&s, &["kv", "put", "t1", "other", "x", "--json"]));
    let p2 = json(&app(&s, &["kv", "del", "t1", "w/1", "--json"]))["lsn"]
        .as_u64()
        .unwrap();
    let watch = |from: &str, count: &str| {
        let mut cmd = domsync_cmd(&["--app-socket"]);
        cmd.arg(&s)
            .args([
                "kv", "watch", "t1", "w/", "--json", "--from", from, "--count", count,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = wait_output(cmd.spawn().unwrap());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<Value>>()
    };
    let events = |lines: &[Value]| -> Vec<(Value, u64)> {
        lines
            .iter()
            .flat_map(|l| l["events"].as_array().unwrap().clone())
            .map(|e| (e["value"].clone(), e["lsn"].as_u64().unwrap()))
            .collect()
    };
    let lines = watch(&from, "2");
    assert_eq!(
        events(&lines),
        [(Value::from("one"), p1), (Value::Null, p2)]
    );
    let last = lines.last().unwrap()["position"]
        .as_str()
        .unwrap()
        .to_owned();
    let p3 = json(&app(&s, &["kv", "put", "t1", "w/3", "three", "--json"]))["lsn"]
        .as_u64()
        .unwrap();
    assert_eq!(events(&watch(&last, "1")), [(Value::from("three"), p3)]);
    // A position text that does not parse is refused before anything is sent.
    let out = app(&s, &["kv", "watch", "t1", "--from", "lsn 3"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("TERM@NODE:LSN:CHAIN"), "{out}");
}

/// Waits for a child's exit within the guard (killing it after).
fn wait_output(mut child: std::process::Child) -> std::process::Output {
    let deadline = std::time::Instant::now() + GUARD;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
