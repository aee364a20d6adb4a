//! The application server of real `domsyncd` processes, spoken to in raw frames: over the
//! local socket (`[apps] socket`: mode 0660 and the group of `[apps] group` when set, else
//! 0600) and over QUIC with app certificates (`domsync-app/1`, authorized by
//! `[[apps.grants]]`).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use domsync_net::{Identity, PeerRole, TlsFiles, ALPN_APP};
use domsync_proto::app::{
    Answer, AppError, AtLeast, Condition, Continuation, Event, KeyRange, Request, Scan, Txn,
    MAX_ANSWER_BYTES, MAX_REQUEST_BYTES,
};
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::{Cluster, Daemon};
use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixStream;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn dom(name: &str) -> DomainId {
    DomainId::new(name).unwrap()
}

/// Starts `me` with `domains` (`(name, replicas)`) and `apps`, the text of an `[apps]`
/// section (empty: none).
fn start(c: &Cluster, me: &str, domains: &[(&str, &[&str])], apps: &str) -> Daemon {
    let domains = domains
        .iter()
        .map(|(n, r)| {
            (
                n.to_string(),
                r.iter().map(|s| s.to_string()).collect(),
                "local".to_owned(),
            )
        })
        .collect();
    let mut text = c.node_config(me, "guard_window_ms = 300", domains).text();
    text.push_str(apps);
    let path = c.config_path(me);
    std::fs::write(&path, text).unwrap();
    let mut d = Daemon::spawn(me, c.dir.path(), &path, GUARD, &[]);
    d.socket = c.socket(me);
    d.ready();
    d
}

/// The application socket of `node` (the default: beside its admin socket).
fn app_socket(c: &Cluster, node: &str) -> PathBuf {
    c.dir.path().join(node).join("run/app.sock")
}

async fn local(path: &Path) -> UnixStream {
    UnixStream::connect(path).await.unwrap()
}

async fn ask(s: &mut UnixStream, req: &Request) -> Answer {
    domsync_net::write_message(s, req, MAX_REQUEST_BYTES)
        .await
        .unwrap();
    next(s).await
}

async fn next<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> Answer {
    tokio::time::timeout(GUARD, domsync_net::read_message(s, MAX_ANSWER_BYTES))
        .await
        .expect("an answer in time")
        .unwrap()
        .expect("an answer, not the end of the stream")
}

fn put(domain: &str, conditions: Vec<Condition>, kv: &[(&str, &str)]) -> Request {
    Request::Txn(Txn {
        domain: dom(domain),
        conditions,
        ops: kv
            .iter()
            .map(|(k, v)| Op::Put {
                key: k.as_bytes().to_vec(),
                value: v.as_bytes().to_vec(),
            })
            .collect(),
    })
}

fn get(domain: &str, key: &str, at_least: AtLeast) -> Request {
    Request::Get {
        domain: dom(domain),
        key: key.as_bytes().to_vec(),
        at_least,
    }
}

fn committed(a: Answer) -> Position {
    match a {
        Answer::Committed { position } => position,
        other => panic!("not committed: {other:?}"),
    }
}

fn error(a: Answer) -> AppError {
    match a {
        Answer::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    }
}

fn scan(domain: &str, limit: u32, continuation: Option<Continuation>) -> Request {
    Request::Scan(Scan {
        domain: dom(domain),
        range: KeyRange::prefix(b"k"),
        limit,
        keys_only: false,
        at_least: AtLeast::default(),
        continuation,
    })
}

#[test]
fn local_reads_scans_and_conditional_transactions() {
    let c = Cluster::new(&["a"]);
    let _a = start(&c, "a", &[("t1", &["a"])], "");
    let path = app_socket(&c, "a");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    // No group: the service user's and root's only, like the admin socket.
    assert_eq!(mode & 0o777, 0o600, "app socket mode {mode:o}");
    let admin_mode = std::fs::metadata(c.socket("a"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        admin_mode & 0o777,
        0o600,
        "admin socket mode {admin_mode:o}"
    );
    rt().block_on(async {
        let mut s = local(&path).await;
        match ask(&mut s, &Request::Hello).await {
            Answer::Hello { node, domains, .. } => {
                assert_eq!(node.as_str(), "a");
                assert_eq!(domains.len(), 1);
                assert!(domains[0].writable);
                assert_eq!(domains[0].active.as_ref().map(NodeId::as_str), Some("a"));
            }
            other => panic!("{other:?}"),
        }
        let p1 = committed(
            ask(
                &mut s,
                &put("t1", vec![], &[("k1", "1"), ("k2", "2"), ("k3", "3")]),
            )
            .await,
        );
        let p2 = committed(ask(&mut s, &put("t1", vec![], &[("k4", "4"), ("k5", "5")])).await);
        assert_eq!(p2.lsn, Lsn(p1.lsn.0 + 1));

        // A key with its version and the position served.
        match ask(&mut s, &get("t1", "k2", AtLeast::default())).await {
            Answer::Value { served, entry } => {
                let e = entry.unwrap();
                assert_eq!((e.value.as_slice(), e.version), (&b"2"[..], p1.lsn));
                assert_eq!(served.position, p2);
            }
            other => panic!("{other:?}"),
        }

        // A scan in pages of two; the continuation holds while the rest is unchanged.
        let Answer::Page(first) = ask(&mut s, &scan("t1", 2, None)).await else {
            panic!("no page")
        };
        let keys = |p: &domsync_proto::app::Page| {
            p.entries
                .iter()
                .map(|e| String::from_utf8(e.key.clone()).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(&first), ["k1", "k2"]);
        let more = first.more.clone().unwrap();
        assert_eq!(more.position, p2);
        let Answer::Page(second) = ask(&mut s, &scan("t1", 2, Some(more.clone()))).await else {
            panic!("no page")
        };
        assert_eq!(keys(&second), ["k3", "k4"]);
        assert_eq!(second.served.position, p2);
        // A key before the continuation changes: the rest is the same, served at p2.
        let p3 = committed(ask(&mut s, &put("t1", vec![], &[("k1", "one")])).await);
        let more = second.more.clone().unwrap();
        let Answer::Page(third) = ask(&mut s, &scan("t1", 2, Some(more.clone()))).await else {
            panic!("no page")
        };
        assert_eq!(keys(&third), ["k5"]);
        assert_eq!(third.served.position, p2);
        assert!(third.more.is_none());
        // A key in the rest changes: the continuation is gone.
        let p4 = committed(ask(&mut s, &put("t1", vec![], &[("k5", "five")])).await);
        match error(ask(&mut s, &scan("t1", 2, Some(more))).await) {
            AppError::ContinuationGone { at, now, .. } => {
                assert_eq!((at, now.lsn), (p2.clone(), p4.lsn));
            }
            other => panic!("{other:?}"),
        }

        // Conditions: the first failing one is named with the key's current version and
        // nothing is written.
        let req = put(
            "t1",
            vec![
                Condition::Value {
                    key: b"k2".to_vec(),
                    value: b"2".to_vec(),
                },
                Condition::Version {
                    key: b"k1".to_vec(),
                    version: p1.lsn,
                },
            ],
            &[("k9", "nine")],
        );
        match error(ask(&mut s, &req).await) {
            AppError::Conflict {
                index,
                key,
                current,
            } => assert_eq!((index, key, current), (1, b"k1".to_vec(), Some(p3.lsn))),
            other => panic!("{other:?}"),
        }
        let req = put(
            "t1",
            vec![Condition::Absent {
                key: b"k2".to_vec(),
            }],
            &[("k9", "nine")],
        );
        match error(ask(&mut s, &req).await) {
            AppError::Conflict { index, current, .. } => {
                assert_eq!((index, current), (0, Some(p1.lsn)))
            }
            other => panic!("{other:?}"),
        }
        match ask(&mut s, &get("t1", "k9", AtLeast::default())).await {
            Answer::Value { entry, served } => {
                assert_eq!(entry, None);
                assert_eq!(served.position, p4, "a refused transaction wrote");
            }
            other => panic!("{other:?}"),
        }
        let req = put(
            "t1",
            vec![
                Condition::Absent {
                    key: b"k9".to_vec(),
                },
                Condition::Version {
                    key: b"k1".to_vec(),
                    version: p3.lsn,
                },
            ],
            &[("k9", "nine")],
        );
        let p5 = committed(ask(&mut s, &req).await);
        assert_eq!(p5.lsn, Lsn(p4.lsn.0 + 1));

        // A malformed frame is refused with one line and the connection closed; the
        // daemon serves the next connection.
        let mut bad = local(&path).await;
        bad.write_all(&[1, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0])
            .await
            .unwrap();
        match error(next(&mut bad).await) {
            AppError::BadRequest(why) => assert!(!why.contains('\n'), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut again = local(&path).await;
        assert!(matches!(
            ask(&mut again, &Request::Hello).await,
            Answer::Hello { .. }
        ));
    });
}

async fn connect_app(pki: &Path, id: &str, addr: &str) -> quinn::Connection {
    let who = Identity::new(PeerRole::App, id).unwrap();
    let creds = TlsFiles::in_dir(pki, &who).load().unwrap();
    let client = domsync_net::client_config_for(&creds, ALPN_APP, None).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint
        .connect_with(client, addr.parse().unwrap(), domsync_net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

async fn remote(conn: &quinn::Connection, req: &Request) -> Answer {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    domsync_net::write_message(&mut send, req, MAX_REQUEST_BYTES)
        .await
        .unwrap();
    let _ = send.finish();
    next(&mut recv).await
}

#[test]
fn app_certificates_get_what_their_grant_says() {
    let c = Cluster::new(&["a"]);
    let pki = c.pki();
    for id in ["editor", "reader", "stranger"] {
        domsync_net::pki::issue(&pki, PeerRole::App, id, &pki, 30).unwrap();
    }
    let apps = r#"
[apps]
local_write = false
[[apps.grants]]
id = "editor"
domains = ["t1"]
write = true
[[apps.grants]]
id = "reader"
domains = ["*"]
"#;
    let a = start(&c, "a", &[("t1", &["a"]), ("t2", &["a"])], apps);
    let addr = c.addr("a");
    rt().block_on(async {
        let editor = connect_app(&pki, "editor", &addr).await;
        match remote(&editor, &Request::Hello).await {
            Answer::Hello { domains, .. } => {
                let names: Vec<_> = domains.iter().map(|d| d.domain.as_str()).collect();
                assert_eq!(names, ["t1"]);
                assert!(domains[0].writable);
            }
            other => panic!("{other:?}"),
        }
        let p = committed(remote(&editor, &put("t1", vec![], &[("k", "v")])).await);
        // A domain not granted and a domain not held get the same answer.
        for d in ["t2", "nowhere"] {
            match error(remote(&editor, &get(d, "k", AtLeast::default())).await) {
                AppError::Forbidden { domain, node } => {
                    assert_eq!((domain.as_str(), node.as_str()), (d, "a"))
                }
                other => panic!("{d}: {other:?}"),
            }
        }
        let reader = connect_app(&pki, "reader", &addr).await;
        match remote(&reader, &get("t1", "k", AtLeast::default())).await {
            Answer::Value { entry, .. } => assert_eq!(entry.unwrap().version, p.lsn),
            other => panic!("{other:?}"),
        }
        match error(remote(&reader, &put("t1", vec![], &[("k", "w")])).await) {
            AppError::ReadOnly { domain, .. } => assert_eq!(domain.as_str(), "t1"),
            other => panic!("{other:?}"),
        }
        // Authenticated, not granted: nothing readable.
        let stranger = connect_app(&pki, "stranger", &addr).await;
        match remote(&stranger, &Request::Hello).await {
            Answer::Hello { domains, .. } => assert!(domains.is_empty(), "{domains:?}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            error(remote(&stranger, &get("t1", "k", AtLeast::default())).await),
            AppError::Forbidden { .. }
        ));
        // A malformed frame on a stream: refused, the connection still serves.
        let (mut send, mut recv) = editor.open_bi().await.unwrap();
        send.write_all(b"\x01garbage-garbage").await.unwrap();
        let _ = send.finish();
        assert!(matches!(
            error(next(&mut recv).await),
            AppError::BadRequest(_)
        ));
        assert!(matches!(
            remote(&editor, &Request::Hello).await,
            Answer::Hello { .. }
        ));
        // local_write = false: local clients read, do not write.
        let mut s = local(&app_socket(&c, "a")).await;
        assert!(matches!(
            error(ask(&mut s, &put("t1", vec![], &[("k", "x")])).await),
            AppError::ReadOnly { .. }
        ));
    });
    drop(a);
}

#[test]
fn standby_reads_wait_transactions_go_to_the_active_and_watches_resume() {
    let c = Cluster::new(&["a", "b"]);
    let _a = start(&c, "a", &[("t1", &["a", "b"])], "");
    let _b = start(&c, "b", &[("t1", &["a", "b"])], "");
    let (sa, sb) = (app_socket(&c, "a"), app_socket(&c, "b"));
    rt().block_on(async {
        // Both serve t1 (a as its active) before anything is asked.
        for (sock, role) in [(&sa, Role::Active), (&sb, Role::Standby)] {
            poll_async(|| async move {
                let mut s = local(sock).await;
                match ask(&mut s, &Request::Hello).await {
                    Answer::Hello { domains, .. } if domains.iter().any(|d| d.role == role) => {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }
        let mut a = local(&sa).await;
        let mut b = local(&sb).await;
        // The standby refuses transactions, naming the active.
        let answer = poll_async(|| async {
            let mut b = local(&sb).await;
            match ask(&mut b, &put("t1", vec![], &[("x", "1")])).await {
                Answer::Error(AppError::NotActive { active, node, .. }) => Ok((active, node)),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(answer.0.as_ref().map(NodeId::as_str), Some("a"));
        assert_eq!(answer.1.as_str(), "b");

        // A watch on the active, from now.
        let mut w = local(&sa).await;
        let watch = |from| Request::Watch {
            domain: dom("t1"),
            range: KeyRange::prefix(b"k"),
            from,
        };
        let start = match ask(&mut w, &watch(None)).await {
            Answer::Watching { position, .. } => position,
            other => panic!("no watch: {other:?}"),
        };
        let p1 = committed(ask(&mut a, &put("t1", vec![], &[("k1", "1"), ("other", "x")])).await);
        let p2 = committed(ask(&mut a, &put("t1", vec![], &[("k2", "2")])).await);
        assert!(p1.lsn > start.lsn);
        let mut seen: Vec<Event> = Vec::new();
        let mut resume = start.clone();
        while resume.lsn < p2.lsn {
            match next(&mut w).await {
                Answer::Events { events, position } => {
                    seen.extend(events);
                    resume = position;
                }
                other => panic!("{other:?}"),
            }
        }
        let got: Vec<_> = seen.iter().map(|e| (e.key.clone(), e.lsn)).collect();
        assert_eq!(got, [(b"k1".to_vec(), p1.lsn), (b"k2".to_vec(), p2.lsn)]);
        assert_eq!(resume, p2);

        // A read at least at p2 on the standby waits for it, then answers from there.
        match ask(
            &mut b,
            &get(
                "t1",
                "k2",
                AtLeast {
                    lsn: p2.lsn,
                    wait_ms: 10_000,
                },
            ),
        )
        .await
        {
            Answer::Value { served, entry } => {
                assert!(served.position.lsn >= p2.lsn);
                assert_eq!(served.node.as_str(), "b");
                assert_eq!(entry.unwrap().version, p2.lsn);
            }
            other => panic!("{other:?}"),
        }
        // A position nobody reached: Behind after the wait.
        let far = Lsn(p2.lsn.0 + 1000);
        match error(
            ask(
                &mut b,
                &get(
                    "t1",
                    "k2",
                    AtLeast {
                        lsn: far,
                        wait_ms: 200,
                    },
                ),
            )
            .await,
        ) {
            AppError::Behind { want, served, .. } => {
                assert_eq!(want, far);
                assert_eq!(served.node.as_str(), "b");
            }
            other => panic!("{other:?}"),
        }

        // Resumed on the standby from the last batch: the next change, no gap, no repeat.
        let p3 = committed(ask(&mut a, &put("t1", vec![], &[("k3", "3")])).await);
        let mut wb = local(&sb).await;
        match ask(&mut wb, &watch(Some(resume.clone()))).await {
            Answer::Watching { position, .. } => assert_eq!(position, resume),
            other => panic!("{other:?}"),
        }
        let mut seen = Vec::new();
        let mut at = resume.clone();
        while at.lsn < p3.lsn {
            match next(&mut wb).await {
                Answer::Events { events, position } => {
                    seen.extend(events);
                    at = position;
                }
                other => panic!("{other:?}"),
            }
        }
        let got: Vec<_> = seen.iter().map(|e| (e.key.clone(), e.lsn)).collect();
        assert_eq!(got, [(b"k3".to_vec(), p3.lsn)]);
        // And on the same node as well.
        let mut wa = local(&sa).await;
        assert!(matches!(
            ask(&mut wa, &watch(Some(resume.clone()))).await,
            Answer::Watching { .. }
        ));
        match next(&mut wa).await {
            Answer::Events { events, position } => {
                assert_eq!(position, p3);
                assert_eq!(events.len(), 1);
                assert_eq!(events[0].key, b"k3");
            }
            other => panic!("{other:?}"),
        }

        // A position not in this history (another chain at that lsn): Diverged.
        let forged = Position {
            chain: p2.chain ^ 1,
            ..p2.clone()
        };
        let mut wf = local(&sa).await;
        match error(ask(&mut wf, &watch(Some(forged.clone()))).await) {
            AppError::Diverged { from, node, .. } => {
                assert_eq!((from, node.as_str()), (forged, "a"))
            }
            other => panic!("{other:?}"),
        }
    });
}

async fn poll_async<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_group_of_apps_owns_the_socket() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to create a group and chgrp the socket");
        return;
    }
    let made = std::process::Command::new("groupadd")
        .args(["-f", "domsync-apptest"])
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: groupadd is not available");
        return;
    }
    let out = std::process::Command::new("getent")
        .args(["group", "domsync-apptest"])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let gid: u32 = line.split(':').nth(2).unwrap().trim().parse().unwrap();
    let c = Cluster::new(&["a"]);
    let _a = start(
        &c,
        "a",
        &[("t1", &["a"])],
        "\n[apps]\ngroup = \"domsync-apptest\"\n",
    );
    let meta = std::fs::metadata(app_socket(&c, "a")).unwrap();
    assert_eq!(meta.gid(), gid);
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // A user whose primary group is another one and who is in the group only as a
    // supplementary group writes and reads through the socket (SO_PEERGROUPS); the same user
    // without the group is refused. The directories above the socket let others through.
    for dir in [
        c.dir.path().to_owned(),
        c.dir.path().join("a"),
        c.dir.path().join("a/run"),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let socket = app_socket(&c, "a");
    let as_nobody = |groups: &str, args: &[&str]| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                &format!("--groups={groups}"),
            ])
            .arg(domsync_testkit::process::binary("domsync"))
            .arg("--app-socket")
            .arg(&socket)
            .args(args)
            .env_remove("DOMSYNC_APP_SOCKET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = as_nobody(&gid.to_string(), &["kv", "put", "t1", "by-member", "1"]);
    assert!(ok, "a member of the group could not write: {text}");
    let (ok, text) = as_nobody(&gid.to_string(), &["kv", "get", "t1", "by-member"]);
    assert!(ok && text.trim() == "1", "{text}");
    let (ok, text) = as_nobody("65534", &["kv", "get", "t1", "by-member"]);
    assert!(!ok, "a user outside the group read the socket: {text}");
    assert!(
        text.contains(&socket.display().to_string()) && text.lines().count() == 1,
        "the refusal names the socket in one line: {text}"
    );
    // A group that does not exist: the start fails with one line naming it.
    let c2 = Cluster::new(&["a"]);
    let mut text2 = c2.node_config("a", "guard_window_ms = 300", vec![]).text();
    text2.push_str("\n[apps]\ngroup = \"no-such-group-x\"\n");
    let path = c2.config_path("a");
    std::fs::write(&path, text2).unwrap();
    let mut d = Daemon::spawn("a", c2.dir.path(), &path, GUARD, &[]);
    let status = d.wait_exit();
    assert!(!status.success());
    poll(GUARD, Duration::from_millis(50), || {
        let log = d.log();
        if log.contains("no-such-group-x") && log.contains("apps.group") {
            Ok(())
        } else {
            Err(log)
        }
    });
}

#[test]
fn watches_past_the_node_limit_are_refused_busy() {
    let c = Cluster::new(&["a"]);
    let pki = c.pki();
    domsync_net::pki::issue(&pki, PeerRole::App, "watcher", &pki, 30).unwrap();
    let apps = "\n[apps]\n[[apps.grants]]\nid = \"watcher\"\ndomains = [\"*\"]\n";
    let _a = start(&c, "a", &[("t1", &["a"])], apps);
    let addr = c.addr("a");
    rt().block_on(async {
        // 18 connections of 60 watches: more than MAX_WATCHES, within each connection's
        // streams in progress.
        let per = 60;
        let conns = domsync_proto::app::MAX_WATCHES / per + 2;
        let mut held = Vec::new();
        let mut open = Vec::new();
        let (mut watching, mut busy) = (0, 0);
        for _ in 0..conns {
            let conn = connect_app(&pki, "watcher", &addr).await;
            for _ in 0..per {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let req = Request::Watch {
                    domain: dom("t1"),
                    range: KeyRange::prefix(b""),
                    from: None,
                };
                domsync_net::write_message(&mut send, &req, MAX_REQUEST_BYTES)
                    .await
                    .unwrap();
                let _ = send.finish();
                match next(&mut recv).await {
                    Answer::Watching { .. } => watching += 1,
                    Answer::Error(AppError::Busy(why)) => {
                        assert!(why.contains("watches"), "{why}");
                        busy += 1;
                    }
                    other => panic!("{other:?}"),
                }
                held.push((send, recv));
            }
            open.push(conn);
        }
        assert_eq!(watching, domsync_proto::app::MAX_WATCHES);
        assert_eq!(busy, conns * per - domsync_proto::app::MAX_WATCHES);
        // Other requests are still served.
        let mut s = local(&app_socket(&c, "a")).await;
        assert!(matches!(
            ask(&mut s, &Request::Hello).await,
            Answer::Hello { .. }
        ));
    });
}

#[test]
fn a_watch_from_before_the_retained_log_is_compacted() {
    let c = Cluster::new(&["a"]);
    // The last [[domains]] table takes the retention cap: the log keeps about 64 KiB.
    let _a = start(&c, "a", &[("t1", &["a"])], "retention_bytes = 65536\n");
    rt().block_on(async {
        let mut s = local(&app_socket(&c, "a")).await;
        let first = committed(ask(&mut s, &put("t1", vec![], &[("k0", "v")])).await);
        let big = "x".repeat(16 * 1024);
        for i in 1..=12 {
            committed(
                ask(
                    &mut s,
                    &put("t1", vec![], &[(&format!("k{i}"), big.as_str())]),
                )
                .await,
            );
        }
        let watch = Request::Watch {
            domain: dom("t1"),
            range: KeyRange::prefix(b"k"),
            from: Some(first.clone()),
        };
        let oldest = poll_async(|| async {
            let mut w = local(&app_socket(&c, "a")).await;
            match ask(&mut w, &watch).await {
                Answer::Error(AppError::Compacted { oldest, from, .. }) => {
                    assert_eq!(from, first);
                    Ok(oldest)
                }
                other => Err(format!("not compacted yet: {other:?}")),
            }
        })
        .await;
        assert!(oldest > Lsn(first.lsn.0 + 1), "{oldest:?}");
    });
}
