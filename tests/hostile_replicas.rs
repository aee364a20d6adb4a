//! Hostile replication peers holding valid certificates of the deployment CA, against real
//! `domsyncd` processes (invariant 9: authenticated is not authorized).
//!
//! Three configured nodes `a`, `b`, `c`, each a peer of the others. Domain `t1` has replicas
//! `a` (primary: active in epoch 1@a) and `b` (standby), durability `standby`; `c` is a
//! legitimate peer through its own domain `t2` (replicas `c`, `a`) but no replica of `t1`.
//! Node `x` holds a node certificate of the same CA but is in no `[[peers]]` list.
//!
//! Each test starts its own cluster, so one attack that succeeds cannot hide the others:
//! 1. `x` is refused on `domsync-repl/1` and learns nothing; the refusal is logged.
//! 2. `c` (a peer, not a replica of `t1`) gets for `t1` exactly what an unknown domain gets:
//!    an empty probe answer, a refused hand-over, a `Follow` rejected as `UnknownDomain`.
//! 3. A hand-over offered to the active `a` by its own standby `b` is refused.
//! 4. Epochs with term `u64::MAX` in a `Probe` and in a `Follow` fence nothing.
//!
//! After each attack `a` is still active in 1@a and accepts writes, which reach `b`, still a
//! synchronized standby following `a`.

use std::path::Path;
use std::time::Duration;

use domsync_net::{pki, Identity, PeerRole, ALPN_REPL, CLOSE_REFUSED};
use domsync_net::{read_frame, write_frame};
use domsync_proto::model::{DomainId, Epoch, NodeId, Position};
use domsync_proto::repl::{decode_message, encode_message, MAX_MESSAGE_BYTES};
use domsync_proto::repl::{Answer, Durability, Follow, Message, RejectReason, TakeOver};

use domsync_testkit::cli::{domain_of, ok, parse_json, status_json, wait_status};
use domsync_testkit::nid;
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::{Cluster, Daemon};
use serde_json::Value;

/// How long a refusal that happens at once (the node closes the connection right after its
/// handshake, and logs it) may take to be seen. A hang guard for the failing case only.
const REFUSAL_GUARD: Duration = Duration::from_secs(10);

/// `u64::MAX` as `status --json` would print it.
const MAX_TERM_TEXT: &str = "18446744073709551615";

fn dom(s: &str) -> DomainId {
    s.parse().unwrap()
}

fn epoch(term: u64, node: &str) -> Epoch {
    Epoch {
        term,
        node: nid(node),
    }
}

/// A running cluster with `t1` synchronized from `a` to `b`.
struct Setup {
    cluster: Cluster,
    a: Daemon,
    b: Daemon,
    /// The real `c`, a peer serving `t2`; attacks use its certificate from their own client.
    _c: Daemon,
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
}

impl Setup {
    fn start() -> Setup {
        let cluster = Cluster::new(&["a", "b", "c"]);
        pki::issue(&cluster.pki(), PeerRole::Node, "x", &cluster.pki(), 30).unwrap();
        let domains = vec![
            (
                "t1".to_owned(),
                vec!["a".to_owned(), "b".to_owned()],
                "standby".to_owned(),
            ),
            (
                "t2".to_owned(),
                vec!["c".to_owned(), "a".to_owned()],
                "local".to_owned(),
            ),
        ];
        let spawn = |me: &str| {
            let config = cluster
                .node_config(
                    me,
                    "guard_window_ms = 300\nconfirm_timeout_ms = 5000",
                    domains.clone(),
                )
                .write(cluster.config_path(me));
            let mut d = Daemon::spawn(me, cluster.dir.path(), &config, GUARD, &[]);
            d.socket = cluster.socket(me);
            d
        };
        let (b, c, a) = (spawn("b"), spawn("c"), spawn("a"));
        for d in [&b, &c, &a] {
            d.ready();
        }
        wait_status(&a.socket, "t1 active on a", |s| {
            field(domain_of(s, "t1"), "role") == "active"
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let endpoint =
            rt.block_on(async { quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap() });
        let s = Setup {
            cluster,
            a,
            b,
            _c: c,
            rt,
            endpoint,
        };
        for i in 0..3 {
            s.write(&format!("k{i}"));
        }
        s.synchronized("setup");
        s
    }

    /// A write of `key` on `a` through its admin socket; must be acknowledged.
    fn write(&self, key: &str) -> String {
        ok(&self.a.socket, &["kv", "put", "t1", key, "v"])
    }

    /// Waits until `b` follows `a` synchronized at `a`'s lsn; returns that lsn.
    fn synchronized(&self, what: &str) -> f64 {
        let lsn = domain_of(&status_json(&self.a.socket), "t1")["lsn"]
            .as_f64()
            .unwrap();
        wait_status(
            &self.b.socket,
            &format!("{what}: b synchronized at lsn {lsn}"),
            |s| {
                let d = domain_of(s, "t1");
                field(d, "role") == "standby"
                    && d["lsn"].as_f64().unwrap() == lsn
                    && d["follower"].is_object()
                    && d["follower"]["active"] == "a"
                    && d["follower"]["sync_status"]["name"] == "Synchronized"
            },
        );
        lsn
    }

    /// `a` is still active in 1@a for `t1` and takes writes, which reach `b`; `b` is still a
    /// standby following `a` and has not recorded a term of `u64::MAX`.
    fn still_healthy(&self, after: &str) {
        let sa = status_json(&self.a.socket);
        let da = domain_of(&sa, "t1");
        assert_eq!(field(da, "role"), "active", "after {after}: a {da:?}");
        assert_eq!(
            epoch_of(da),
            (1.0, "a".to_owned()),
            "after {after}: a's epoch {da:?}"
        );
        let lsn = da["lsn"].as_f64().unwrap();
        let out = self.write(&format!("after-{}", after.replace(' ', "-")));
        assert!(out.starts_with("put at lsn"), "after {after}: {out}");
        let synced = self.synchronized(after);
        assert!(
            synced > lsn,
            "after {after}: a's lsn did not move from {lsn}"
        );
        let raw = ok(&self.b.socket, &["status", "--json"]);
        let db = domain_of(&parse_json(&raw), "t1").clone();
        assert_eq!(field(&db, "role"), "standby", "after {after}: b {db:?}");
        assert_eq!(
            db["follower"]["active"].as_str().unwrap(),
            "a",
            "after {after}: b {db:?}"
        );
        assert!(
            !raw.contains(MAX_TERM_TEXT),
            "after {after}: b recorded a term of u64::MAX: {raw}"
        );
    }

    fn addr(&self, node: &str) -> String {
        self.cluster.addr(node)
    }

    fn pki(&self) -> std::path::PathBuf {
        self.cluster.pki()
    }
}

/// The string field `key` of a status object (`""` when it is null).
fn field<'a>(d: &'a Value, key: &str) -> &'a str {
    d[key].as_str().unwrap_or("")
}

/// `(term, node)` of a domain report's epoch.
fn epoch_of(d: &Value) -> (f64, String) {
    let e = &d["epoch"];
    (
        e["term"].as_f64().unwrap(),
        e["node"].as_str().unwrap().to_owned(),
    )
}

/// A QUIC connection on `domsync-repl/1` to `addr` with the certificate of node `who`.
async fn dial(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    who: &str,
    addr: &str,
) -> Result<quinn::Connection, String> {
    let me = Identity::new(PeerRole::Node, who).unwrap();
    let creds = domsync_net::TlsFiles::in_dir(pki_dir, &me).load().unwrap();
    let config = domsync_net::client_config_for(&creds, ALPN_REPL, None).unwrap();
    let connecting = endpoint
        .connect_with(config, addr.parse().unwrap(), domsync_net::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(GUARD, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => panic!("the handshake with {addr} as {who} hung"),
    }
}

/// Sends `m` as the first message of a new stream, finishes the stream and reads the node's
/// first answer: `Ok(None)` when it finished the stream without one, `Err` when the stream
/// or connection failed.
async fn ask(conn: &quinn::Connection, m: &Message) -> Result<Option<Message>, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, &encode_message(m).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        drop(send.finish());
        match read_frame(&mut recv, MAX_MESSAGE_BYTES).await {
            Ok(Some(frame)) => Ok(Some(decode_message(&frame).map_err(|e| e.to_string())?)),
            Ok(None) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    };
    let answer = tokio::time::timeout(GUARD, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {m:?}"));
    println!("{m:?} -> {answer:?}");
    answer
}

/// Like [`ask`], on a fresh connection as `who`; panics when the exchange fails.
fn ask_as(s: &Setup, who: &str, to: &str, m: &Message) -> Message {
    s.rt.block_on(async {
        let conn = dial(&s.endpoint, &s.pki(), who, &s.addr(to))
            .await
            .unwrap_or_else(|e| panic!("{who} -> {to}: handshake failed: {e}"));
        let answer = ask(&conn, m).await;
        conn.close(0u32.into(), b"done");
        answer
            .unwrap_or_else(|e| panic!("{who} -> {to} {m:?}: stream failed: {e}"))
            .unwrap_or_else(|| panic!("{who} -> {to} {m:?}: finished without an answer"))
    })
}

fn probe(domain: &str, epoch: Option<Epoch>) -> Message {
    Message::Probe {
        domain: dom(domain),
        epoch,
    }
}

fn follow(domain: &str, from: &str, epoch: Epoch) -> Message {
    Message::Follow(Follow {
        domain: dom(domain),
        uid: None,
        position: Position::empty(nid(from)),
        epoch,
        history_tail: Vec::new(),
        collision_fork: None,
    })
}

fn take_over(domain: &str, epoch: Epoch, last: Position, standbys: &[&str]) -> Message {
    Message::TakeOver(TakeOver {
        domain: dom(domain),
        epoch,
        last,
        durability: Durability::Local,
        standbys: standbys.iter().map(|n| nid(n)).collect::<Vec<NodeId>>(),
    })
}

#[test]
fn a_node_of_the_ca_not_listed_as_a_peer_is_refused_and_learns_nothing() {
    let s = Setup::start();
    let (refused, answer) = s.rt.block_on(async {
        let conn = match dial(&s.endpoint, &s.pki(), "x", &s.addr("b")).await {
            Ok(conn) => conn,
            Err(e) => return (format!("handshake failed: {e}"), None),
        };
        let answer = ask(&conn, &probe("t1", None)).await;
        let closed = tokio::time::timeout(REFUSAL_GUARD, conn.closed()).await;
        let refused = match closed {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == CLOSE_REFUSED => {
                format!(
                    "closed with CLOSE_REFUSED: {}",
                    String::from_utf8_lossy(&c.reason)
                )
            }
            Ok(other) => format!("NOT REFUSED: the connection ended otherwise: {other}"),
            Err(_) => format!("NOT REFUSED: the connection was still open after {REFUSAL_GUARD:?}"),
        };
        (refused, answer.ok().flatten())
    });
    println!("x -> b: {refused}; answer {answer:?}");
    if let Some(m) = &answer {
        assert_eq!(
            m,
            &Message::ProbeAnswer(None),
            "x learned something about t1"
        );
    }
    assert!(!refused.starts_with("NOT REFUSED"), "x on b: {refused}");
    poll(REFUSAL_GUARD, Duration::from_millis(20), || {
        let log = s.b.log();
        if log.contains("not listed in [[peers]]") && log.contains("node x") {
            Ok(())
        } else {
            Err(format!("b did not log the refusal of x: {log}"))
        }
    });
    s.still_healthy("x refused");
}

#[test]
fn a_peer_that_is_no_replica_gets_what_an_unknown_domain_gets() {
    let s = Setup::start();
    // Probes to the standby b: t1 looks exactly like a domain b does not hold.
    let t1 = ask_as(&s, "c", "b", &probe("t1", None));
    let nope = ask_as(&s, "c", "b", &probe("nope", None));
    assert_eq!(nope, Message::ProbeAnswer(None), "unknown domain probe");
    assert_eq!(t1, nope, "c's probe for t1 on b");

    // A hand-over to b from c, which b does not follow and which is no replica of t1. It
    // carries b's exact position and a new epoch of b (what b learns from a, the active it
    // follows), so that only the sender's authorization can make b refuse it.
    let answer = ask_as(&s, "a", "b", &probe("t1", None));
    let Message::ProbeAnswer(Some(pb)) = answer else {
        panic!("a's probe of t1 on b: {answer:?}");
    };
    let last = pb.position;
    let took = ask_as(&s, "c", "b", &take_over("t1", epoch(2, "b"), last, &["c"]));
    assert!(
        matches!(took, Message::TookOver(Err(_))),
        "c's hand-over of t1 to b: {took:?}"
    );

    // A Follow for t1 from c to the active a: rejected as an unknown domain.
    let t1 = ask_as(&s, "c", "a", &follow("t1", "c", epoch(0, "c")));
    let nope = ask_as(&s, "c", "a", &follow("nope", "c", epoch(0, "c")));
    let Message::Answer(Answer::Reject { reason, .. }) = &nope else {
        panic!("follow of an unknown domain: {nope:?}");
    };
    assert_eq!(*reason, RejectReason::UnknownDomain, "{nope:?}");
    assert!(
        matches!(
            &t1,
            Message::Answer(Answer::Reject {
                reason: RejectReason::UnknownDomain,
                ..
            })
        ),
        "c's follow of t1 on a: {t1:?}"
    );
    s.still_healthy("c as a replica");
}

#[test]
fn the_active_refuses_a_hand_over_from_its_own_standby() {
    let s = Setup::start();
    // b is a replica of t1: it may ask where a stands.
    let answer = ask_as(&s, "b", "a", &probe("t1", None));
    let Message::ProbeAnswer(Some(pa)) = answer else {
        panic!("b's probe of t1 on a: {answer:?}");
    };
    let took = ask_as(
        &s,
        "b",
        "a",
        &take_over("t1", epoch(2, "a"), pa.position, &["b"]),
    );
    assert!(
        matches!(took, Message::TookOver(Err(_))),
        "b's hand-over of t1 to the active a: {took:?}"
    );
    s.still_healthy("hand-over to the active");
}

#[test]
fn a_term_of_u64_max_fences_nothing() {
    let s = Setup::start();
    // As a, to the standby b: a probe announcing epoch u64::MAX@a.
    let probed = ask_as(&s, "a", "b", &probe("t1", Some(epoch(u64::MAX, "a"))));
    println!("probe with term u64::MAX to b: {probed:?}");
    // As b, to the active a: a Follow having seen epoch u64::MAX@b. Its first answer is
    // awaited, so a has decided on it before the checks.
    let followed = s.rt.block_on(async {
        let conn = dial(&s.endpoint, &s.pki(), "b", &s.addr("a"))
            .await
            .unwrap_or_else(|e| panic!("b -> a: handshake failed: {e}"));
        let answer = ask(&conn, &follow("t1", "b", epoch(u64::MAX, "b"))).await;
        conn.close(0u32.into(), b"done");
        answer
    });
    println!("follow with term u64::MAX to a: {followed:?}");
    let sb = status_json(&s.b.socket);
    let db = domain_of(&sb, "t1");
    assert!(
        epoch_of(db).0 < 1e18,
        "b recorded a term of u64::MAX for t1: {db:?}"
    );
    s.still_healthy("terms of u64::MAX");
}
