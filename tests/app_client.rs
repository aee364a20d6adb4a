//! The Rust application client (`domsync_client::app`) against real `domsyncd` processes:
//! reads, transactions, conflicts, scans and watches over the application socket; a watch
//! resumed after its daemon restarts; and over QUIC with two nodes, reads from the standby,
//! a transaction that follows `NotActive` to the active, and a watch that survives a
//! failover, each without gap or repeat; a watch that saw a write lost in a forced failover
//! ends with `Diverged` once its node rejoins the new history.

use std::path::PathBuf;
use std::time::Duration;

use domsync_client::app::{AppClient, AppTarget, ClientError};
use domsync_net::PeerRole;
use domsync_proto::app::{AppError, AtLeast, Condition, Event, KeyRange, Scan, Txn};
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync_testkit::cli::{domsync_cmd, run};
use domsync_testkit::poll::GUARD;
use domsync_testkit::process::{Cluster, Daemon};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn dom() -> DomainId {
    DomainId::new("t1").unwrap()
}

/// Grants of the application certificate `app1`: every domain, with writes.
const APPS: &str = "\n[apps]\n[[apps.grants]]\nid = \"app1\"\ndomains = [\"*\"]\nwrite = true\n";

/// Starts `me` with t1 replicated on `replicas` and the grants of [`APPS`].
fn start(c: &Cluster, me: &str, replicas: &[&str]) -> Daemon {
    let domains = vec![(
        "t1".to_owned(),
        replicas.iter().map(|s| s.to_string()).collect(),
        "local".to_owned(),
    )];
    let mut text = c.node_config(me, "guard_window_ms = 300", domains).text();
    text.push_str(APPS);
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

fn remote(c: &Cluster, nodes: &[&str]) -> AppTarget {
    AppTarget::Remote {
        nodes: nodes
            .iter()
            .map(|n| (NodeId::new(*n).unwrap(), c.addr(n).parse().unwrap()))
            .collect(),
        pki: c.pki(),
        id: "app1".into(),
    }
}

/// Retries `attempt` until it succeeds, within the guard.
async fn until<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "{what}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects once the daemon serves t1 in `role`.
async fn client_when(target: AppTarget, role: Role) -> AppClient {
    until("the daemon serves t1", || {
        let target = target.clone();
        async move {
            let c = AppClient::connect(target)
                .await
                .map_err(|e| e.to_string())?;
            let hello = c.hello().await.map_err(|e| e.to_string())?;
            match hello.domains.iter().find(|d| d.domain == dom()) {
                Some(d) if d.role == role => Ok(c),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

fn put_op(k: &str, v: &str) -> Op {
    Op::Put {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
    }
}

#[test]
fn socket_client_reads_writes_scans_and_conflicts() {
    let c = Cluster::new(&["a"]);
    let _a = start(&c, "a", &["a"]);
    rt().block_on(async {
        let client = client_when(AppTarget::Socket(app_socket(&c, "a")), Role::Active).await;
        let d = dom();
        let p1 = client.put(&d, b"rule/7", b"allow 443").await.unwrap();
        let got = client
            .get(
                &d,
                b"rule/7",
                AtLeast {
                    lsn: p1.lsn,
                    wait_ms: 1000,
                },
            )
            .await
            .unwrap();
        let entry = got.entry.unwrap();
        assert_eq!(
            (entry.value.as_slice(), entry.version),
            (&b"allow 443"[..], p1.lsn)
        );
        assert_eq!(
            (got.served.node.as_str(), got.served.role),
            ("a", Role::Active)
        );
        assert!(client
            .get(&d, b"none", AtLeast::default())
            .await
            .unwrap()
            .entry
            .is_none());

        // A stale version: Conflict naming the current one, nothing written.
        let stale = Txn {
            domain: d.clone(),
            conditions: vec![Condition::Version {
                key: b"rule/7".to_vec(),
                version: Lsn(p1.lsn.0 + 5),
            }],
            ops: vec![put_op("rule/7", "deny")],
        };
        match client.txn(stale).await {
            Err(ClientError::App(AppError::Conflict {
                index: 0, current, ..
            })) => {
                assert_eq!(current, Some(p1.lsn))
            }
            other => panic!("{other:?}"),
        }
        let right = Txn {
            domain: d.clone(),
            conditions: vec![
                Condition::Version {
                    key: b"rule/7".to_vec(),
                    version: p1.lsn,
                },
                Condition::Absent {
                    key: b"rule/8".to_vec(),
                },
            ],
            ops: vec![put_op("rule/7", "deny"), put_op("rule/8", "x")],
        };
        let p2 = client.txn(right).await.unwrap();
        assert_eq!(p2.lsn, p1.lsn.next());

        // 25 keys: pages of 10 follow their continuations; scan_all reads them at once.
        for i in 0..25 {
            client
                .put(&d, format!("k/{i:02}").as_bytes(), b"v")
                .await
                .unwrap();
        }
        let (all, served) = client
            .scan_all(&d, KeyRange::prefix(b"k/"), AtLeast::default())
            .await
            .unwrap();
        assert_eq!(all.len(), 25);
        assert!(all.windows(2).all(|w| w[0].key < w[1].key));
        let mut paged = Vec::new();
        let mut continuation = None;
        loop {
            let page = client
                .scan(Scan {
                    domain: d.clone(),
                    range: KeyRange::prefix(b"k/"),
                    limit: 10,
                    keys_only: true,
                    at_least: AtLeast::default(),
                    continuation: continuation.take(),
                })
                .await
                .unwrap();
            assert!(page.entries.len() <= 10);
            assert_eq!(page.served.position, served.position);
            paged.extend(page.entries.into_iter().map(|e| e.key));
            match page.more {
                Some(m) => continuation = Some(m),
                None => break,
            }
        }
        assert_eq!(paged, all.iter().map(|e| e.key.clone()).collect::<Vec<_>>());

        // A policy package written by a transaction, its SHA-256 checked by the client.
        let pp = client
            .txn(Txn {
                domain: d.clone(),
                conditions: vec![],
                ops: vec![Op::InstallPolicy {
                    name: "edge".into(),
                    content: b"allow 443".to_vec(),
                }],
            })
            .await
            .unwrap();
        let pol = client.policy(&d, "edge", AtLeast::default()).await.unwrap();
        assert_eq!(
            (pol.content.as_slice(), pol.info.version),
            (&b"allow 443"[..], pp.lsn.0)
        );

        // A watch from p2 sees the changes after it, in order, each once.
        let mut w = client
            .watch(&d, KeyRange::prefix(b"rule/"), Some(p2.clone()))
            .await
            .unwrap();
        let p3 = client.delete(&d, b"rule/8").await.unwrap();
        let events = collect(&mut w, p3.lsn).await;
        assert_eq!(events, [(b"rule/8".to_vec(), None, p3.lsn)]);
        assert_eq!(w.position().lsn, p3.lsn);
    });
}

type Seen = (Vec<u8>, Option<Vec<u8>>, Lsn);

/// Events of `w` until its position reaches `upto`.
async fn collect(w: &mut domsync_client::app::Watch, upto: Lsn) -> Vec<Seen> {
    let mut seen = Vec::new();
    while w.position().lsn < upto {
        let b = tokio::time::timeout(GUARD, w.next())
            .await
            .expect("a batch in time")
            .unwrap();
        seen.extend(
            b.events
                .into_iter()
                .map(|e: Event| (e.key, e.value.map(|v| v.into_vec()), e.lsn)),
        );
    }
    seen
}

#[test]
fn a_watch_resumes_after_its_daemon_restarts_without_gap_or_repeat() {
    let c = Cluster::new(&["a"]);
    let mut a = start(&c, "a", &["a"]);
    let rt = rt();
    let client = rt.block_on(client_when(
        AppTarget::Socket(app_socket(&c, "a")),
        Role::Active,
    ));
    let d = dom();
    let (mut w, p1) = rt.block_on(async {
        let mut w = client
            .watch(&d, KeyRange::prefix(b"k/"), None)
            .await
            .unwrap();
        let p1 = client.put(&d, b"k/1", b"1").await.unwrap();
        assert_eq!(
            collect(&mut w, p1.lsn).await,
            [(b"k/1".to_vec(), Some(b"1".to_vec()), p1.lsn)]
        );
        (w, p1)
    });
    // The daemon stops; keys are written on its stopped store (local mode); it starts again.
    a.stop();
    let data = c.dir.path().join("a/state");
    let mut written = vec![(b"k/1".to_vec(), Some(b"1".to_vec()), p1.lsn)];
    for i in 2..6 {
        let mut cmd = domsync_cmd(&["--data"]);
        cmd.arg(&data).args([
            "--node",
            "a",
            "kv",
            "put",
            "t1",
            &format!("k/{i}"),
            &i.to_string(),
            "--json",
        ]);
        let out = run(cmd);
        assert_eq!(out.code, 0, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        written.push((
            format!("k/{i}").into_bytes(),
            Some(i.to_string().into_bytes()),
            Lsn(v["lsn"].as_u64().unwrap()),
        ));
    }
    let _a = start(&c, "a", &["a"]);
    rt.block_on(async {
        let p6 = client.put(&d, b"k/6", b"6").await.unwrap();
        written.push((b"k/6".to_vec(), Some(b"6".to_vec()), p6.lsn));
        let seen = collect(&mut w, p6.lsn).await;
        assert_eq!(seen, written[1..]);
        assert_eq!(w.position(), &p6);
    });
}

/// `domsync --socket <admin socket of node> ARGS`.
fn admin(c: &Cluster, node: &str, args: &[&str]) -> domsync_testkit::cli::Out {
    let mut cmd = domsync_cmd(&["--socket"]);
    cmd.arg(c.socket(node)).args(args);
    run(cmd)
}

#[test]
fn two_nodes_standby_reads_redirects_and_a_watch_through_a_failover() {
    let c = Cluster::new(&["a", "b"]);
    domsync_net::pki::issue(&c.pki(), PeerRole::App, "app1", &c.pki(), 30).unwrap();
    let a = start(&c, "a", &["a", "b"]);
    let mut b = start(&c, "b", &["a", "b"]);
    let rt = rt();
    let d = dom();
    rt.block_on(async {
        // b first: reads go there; transactions to the active, a.
        let client = client_when(remote(&c, &["b", "a"]), Role::Standby).await;
        let only_a = client_when(remote(&c, &["a"]), Role::Active).await;
        let p1 = client.put(&d, b"k/1", b"1").await.unwrap();
        assert_eq!(p1.epoch.node.as_str(), "a");
        let got = client
            .get(
                &d,
                b"k/1",
                AtLeast {
                    lsn: p1.lsn,
                    wait_ms: 10_000,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            (got.served.node.as_str(), got.served.role),
            ("b", Role::Standby)
        );
        assert_eq!(got.entry.unwrap().version, p1.lsn);
        let mut w = client
            .watch(&d, KeyRange::prefix(b"k/"), Some(p1.clone()))
            .await
            .unwrap();
        assert_eq!(w.served().node.as_str(), "b");

        // Switchover to b: the client still believes a is active; a answers NotActive
        // naming b, and the transaction follows.
        let out = admin(&c, "a", &["switchover", "t1", "--to", "b"]);
        assert_eq!(out.code, 0, "{out}\n{}", a.log());
        let p2 = until("a transaction on the new active", || async {
            client
                .put(&d, b"k/2", b"2")
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(p2.epoch.node.as_str(), "b");
        // a (standby now) has it before b goes away: the acknowledged writes survive.
        only_a
            .get(
                &d,
                b"k/2",
                AtLeast {
                    lsn: p2.lsn,
                    wait_ms: 10_000,
                },
            )
            .await
            .unwrap();
        let mut seen = collect(&mut w, p2.lsn).await;

        // The active, b, stops; a is promoted; the watch resumes on a from its position.
        b.stop();
        let out = admin(&c, "a", &["promote", "t1", "--force"]);
        assert_eq!(out.code, 0, "{out}\n{}", a.log());
        let p3 = until("a transaction after the failover", || async {
            client
                .put(&d, b"k/3", b"3")
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        assert_eq!(p3.epoch.node.as_str(), "a");
        seen.extend(collect(&mut w, p3.lsn).await);
        assert_eq!(w.served().node.as_str(), "a");
        let keys: Vec<(&[u8], Lsn)> = seen.iter().map(|(k, _, l)| (k.as_slice(), *l)).collect();
        assert_eq!(keys, [(&b"k/2"[..], p2.lsn), (&b"k/3"[..], p3.lsn)]);
        let _: &Position = w.position();
    });
}

/// A watch that delivered a write the next history does not hold (acknowledged with `local`
/// durability by an active that then lost a forced failover) is not silently continued: once
/// its node rejoins the new history, the watch ends with `Diverged`, and nothing of the lost
/// history is delivered after the write it saw.
#[test]
fn a_watch_that_saw_a_write_lost_in_a_forced_failover_ends_diverged() {
    let c = Cluster::new(&["a", "b"]);
    let mut a = start(&c, "a", &["a", "b"]);
    let mut b = start(&c, "b", &["a", "b"]);
    let rt = rt();
    let d = dom();
    let on_a = rt.block_on(client_when(
        AppTarget::Socket(app_socket(&c, "a")),
        Role::Active,
    ));
    let on_b = rt.block_on(client_when(
        AppTarget::Socket(app_socket(&c, "b")),
        Role::Standby,
    ));
    let mut w = rt.block_on(async {
        let p1 = on_a.put(&d, b"k/1", b"1").await.unwrap();
        let at = AtLeast {
            lsn: p1.lsn,
            wait_ms: 10_000,
        };
        on_b.get(&d, b"k/1", at).await.unwrap();
        on_a.watch(&d, KeyRange::prefix(b"k/"), Some(p1))
            .await
            .unwrap()
    });
    // b goes away; a acknowledges k/2 alone (durability local) and the watch sees it.
    b.stop();
    let p2 = rt.block_on(on_a.put(&d, b"k/2", b"lost")).unwrap();
    rt.block_on(async {
        let seen = collect(&mut w, p2.lsn).await;
        assert_eq!(seen, [(b"k/2".to_vec(), Some(b"lost".to_vec()), p2.lsn)]);
    });
    // a stops; b comes back and is force-promoted; b writes its own record at the same lsn.
    a.stop();
    let _b = start(&c, "b", &["a", "b"]);
    let out = admin(&c, "b", &["promote", "t1", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    let on_b = rt.block_on(client_when(
        AppTarget::Socket(app_socket(&c, "b")),
        Role::Active,
    ));
    let q2 = rt.block_on(on_b.put(&d, b"k/2", b"kept")).unwrap();
    assert_eq!(q2.lsn, p2.lsn);
    assert_ne!(q2.chain, p2.chain);
    // a rejoins: fenced by b's epoch, rewound (its k/2 archived) and resynchronized. The
    // watch, reconnecting to a, must end with Diverged, never deliver b's k/2 as if it
    // followed the lost one.
    let _a = start(&c, "a", &["a", "b"]);
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let next = tokio::time::timeout_at(deadline, w.next())
                .await
                .expect("the watch ends in time");
            match next {
                Ok(batch) => assert!(
                    batch.events.is_empty(),
                    "delivered after a lost write: {:?}",
                    batch.events
                ),
                Err(ClientError::App(AppError::Diverged { from, .. })) => {
                    assert_eq!(from.lsn, p2.lsn);
                    break;
                }
                Err(e) => panic!("expected Diverged, got {e}"),
            }
        }
    });
}
