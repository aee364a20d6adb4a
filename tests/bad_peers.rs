//! Bad peers on every protocol while normal traffic continues (DESIGN.md §4, invariant 8):
//! random bytes, truncated frames, huge length prefixes and valid frames in invalid order on
//! `domsync-repl/1`, `domsync-gw/1`, `domsync-admin/1` and the local admin socket, plus UDP
//! garbage, against two real `domsyncd` processes. Meanwhile a writer commits with `standby`
//! durability on the active and a gateway fetches from the standby: every write and every read
//! must keep succeeding, both daemons stay up and converge, and their peak memory stays
//! bounded although the bad peers push far more bytes than the bound.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domsync_client::gateway::{Client, ClientConfig, Origin};
use domsync_net::read_frame;
use domsync_net::{
    self, pki, Identity, PeerRole, ALPN_ADMIN, ALPN_GATEWAY, ALPN_REPL, CLOSE_REFUSED,
};
use domsync_net::{read_message, write_message};
use domsync_proto::admin::{
    Answer, Request as AdminRequest, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES as MAX_ADMIN_REQUEST,
};
use domsync_proto::codec::{self, FORMAT_VERSION};
use domsync_proto::gateway::{self as gw, Query, Refusal, Request as GwRequest, Response};
use domsync_proto::model::{DomainId, Op};
use domsync_proto::repl::decode_message;
use domsync_proto::repl::encode_message;
use domsync_proto::repl::{Ack, Message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use domsync_testkit::cli::{domain_of, report, status_json, wait_status};
use domsync_testkit::nid;
use domsync_testkit::pki::creds;
use domsync_testkit::poll::GUARD;
use domsync_testkit::process::{Cluster, Daemon, GATEWAY};
use domsync_testkit::rng::Rng;

/// Longest a hostile exchange may take before the node must have ended it: the longest idle
/// limit of the node's protocols (60 s for an admin request) plus slack. A hang guard, not a
/// timing goal.
const END_GUARD: Duration = Duration::from_secs(90);

/// Peak resident memory a daemon may gain during the hostile phase.
const MEMORY_BOUND_KIB: u64 = 96 * 1024;

fn dom(s: &str) -> DomainId {
    s.parse().unwrap()
}

/// A frame header claiming `len` payload bytes.
fn header(len: u32) -> Vec<u8> {
    let mut h = vec![FORMAT_VERSION];
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// The first `keep` bytes of a valid frame of `len` payload bytes (a truncated frame).
fn truncated(len: u32, keep: usize, rng: &mut Rng) -> Vec<u8> {
    let mut f = header(len);
    f.extend(rng.bytes(keep));
    f
}

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What the normal traffic did.
#[derive(Default)]
struct Traffic {
    writes: AtomicU64,
    reads: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Traffic {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One admin request over the local socket.
async fn admin_call(stream: &mut UnixStream, request: &AdminRequest) -> Result<Answer, String> {
    write_message(stream, request, MAX_ADMIN_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    read_message::<_, Answer>(stream, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the daemon closed the admin socket".to_owned())
}

/// Writes to `t1` on the active until `stop`; every write must be acknowledged. Every 20th
/// write installs a new version of the package `pkg` the gateway reads.
async fn writer(socket: std::path::PathBuf, traffic: Arc<Traffic>, stop: Arc<AtomicBool>) {
    let mut stream = UnixStream::connect(&socket).await.unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let op = if i % 20 == 1 {
            Op::InstallPolicy {
                name: "pkg".into(),
                content: vec![(i % 251) as u8; 8 * 1024],
            }
        } else {
            Op::Put {
                key: format!("k{}", i % 500).into_bytes(),
                value: i.to_le_bytes().to_vec(),
            }
        };
        let request = AdminRequest::Write {
            domain: dom("t1"),
            ops: vec![op],
        };
        match tokio::time::timeout(GUARD, admin_call(&mut stream, &request)).await {
            Ok(Ok(Answer::Written { .. })) => {
                traffic.writes.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                traffic.fail(format!("write {i}: {other:?}"));
                return;
            }
        }
    }
}

/// Fetches `pkg` from the standby until `stop`; every fetch must be served by the node (not a
/// held copy) and versions never go backwards.
async fn reader(client: Client, traffic: Arc<Traffic>, stop: Arc<AtomicBool>) {
    let mut last = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(GUARD, client.fetch("pkg")).await {
            Ok(Ok(p)) if !matches!(p.origin, Origin::Held { .. }) => {
                let version = p.info.version;
                if version < last {
                    traffic.fail(format!(
                        "package version went back from {last} to {version}"
                    ));
                    return;
                }
                last = version;
                traffic.reads.fetch_add(1, Ordering::Relaxed);
                // Paced: a gateway polls, it does not spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => {
                traffic.fail(format!("gateway fetch: {other:?}"));
                return;
            }
        }
    }
}

/// A QUIC connection to `addr` with the certificate of `who` on `alpn`.
async fn connect(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    who: &Identity,
    alpn: &[u8],
    addr: &str,
) -> quinn::Connection {
    let creds = domsync_net::TlsFiles::in_dir(pki_dir, who).load().unwrap();
    let config = domsync_net::client_config_for(&creds, alpn, None).unwrap();
    tokio::time::timeout(
        GUARD,
        endpoint
            .connect_with(config, addr.parse().unwrap(), domsync_net::SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// How a hostile stream ended.
#[derive(Debug)]
enum Ended {
    /// The node finished its side, after sending these frames.
    Finished(Vec<Vec<u8>>),
    /// The node reset or stopped the stream, or closed the connection.
    Broken(String),
}

/// Sends `bytes` on a new stream (finishing it when `finish`) and reads what the node sends
/// until it ends the stream; panics if the node leaves it hanging past [`END_GUARD`].
async fn hostile_stream(
    conn: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
    cap: usize,
    what: &str,
) -> Ended {
    let exchange = async {
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Ended::Broken(e.to_string()),
        };
        // The node may stop reading at once: a failed write is one way of ending.
        let written = send.write_all(bytes).await;
        if finish {
            drop(send.finish());
        }
        if let Err(e) = written {
            return Ended::Broken(e.to_string());
        }
        let mut frames = Vec::new();
        loop {
            match read_frame(&mut recv, cap).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return Ended::Finished(frames),
                Err(e) => return Ended::Broken(e.to_string()),
            }
        }
    };
    let ended = tokio::time::timeout(END_GUARD, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: the node left the stream hanging"));
    match &ended {
        Ended::Broken(why) => println!("{what}: ended by the node: {why}"),
        Ended::Finished(frames) => println!("{what}: finished after {} frames", frames.len()),
    }
    ended
}

/// Random bytes, a truncated frame, a huge length prefix and a length at the cap, on one
/// connection.
async fn framing_attacks(conn: &quinn::Connection, cap: usize, rng: &mut Rng, what: &str) {
    for bytes in [
        rng.bytes(64 * 1024),
        truncated(1000, 10, rng),
        header(u32::MAX),
        header(u32::try_from(cap).unwrap_or(u32::MAX)),
        rng.bytes(3),
    ] {
        hostile_stream(conn, &bytes, true, cap, &format!("{what} framing")).await;
    }
}

/// On a connection of its own, in the background: a header within the cap, then nothing more
/// while the stream stays open. The node must give up on it by itself.
fn silent(conn: quinn::Connection, cap: usize, what: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bytes = truncated(
            u32::try_from(cap / 2).unwrap_or(u32::MAX),
            100,
            &mut Rng::from_state(7),
        );
        hostile_stream(&conn, &bytes, false, cap, what).await;
    })
}

/// What a [`flood`] left: the bytes claimed by its headers and handed to its connections,
/// and its connections and streams, still open (silent) until dropped.
struct Flood {
    claimed: u64,
    written: u64,
    _conns: Vec<quinn::Connection>,
    _streams: Vec<(quinn::SendStream, quinn::RecvStream)>,
}

/// How long a flooding stream keeps pushing bytes the node does not take.
const FLOOD_PUSH: Duration = Duration::from_secs(5);

/// Many streams on several connections, each claiming the largest frame the protocol allows
/// and pushing `per_stream` bytes of it (as far as the node's flow control lets it within
/// [`FLOOD_PUSH`]), then going silent.
async fn flood(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    who: &Identity,
    alpn: &[u8],
    addr: &str,
    claim: usize,
    per_stream: usize,
) -> Flood {
    let mut tasks = Vec::new();
    let mut conns = Vec::new();
    for c in 0..4u64 {
        let conn = connect(endpoint, pki_dir, who, alpn, addr).await;
        for s in 0..32u64 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::from_state(c * 1000 + s);
                let Ok((mut send, recv)) = conn.open_bi().await else {
                    return (0, 0, None);
                };
                let mut bytes = header(u32::try_from(claim).unwrap_or(u32::MAX));
                bytes.extend(rng.bytes(per_stream));
                let pushed = tokio::time::timeout(FLOOD_PUSH, send.write_all(&bytes)).await;
                let written = if matches!(pushed, Ok(Ok(()))) {
                    bytes.len() as u64
                } else {
                    0
                };
                (claim as u64, written, Some((send, recv)))
            }));
        }
        conns.push(conn);
    }
    let (mut claimed, mut written) = (0, 0);
    let mut streams = Vec::new();
    for t in tasks {
        let (c, w, s) = t.await.unwrap();
        claimed += c;
        written += w;
        streams.extend(s);
    }
    Flood {
        claimed,
        written,
        _conns: conns,
        _streams: streams,
    }
}

/// The hostile side of the replication protocol, with a valid node certificate of a node that
/// holds no replica (`x`).
async fn repl_attacks(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    addr: &str,
    rng: &mut Rng,
) -> tokio::task::JoinHandle<()> {
    let x = Identity::new(PeerRole::Node, "x").unwrap();
    let conn = connect(endpoint, pki_dir, &x, ALPN_REPL, addr).await;
    let quiet = silent(
        connect(endpoint, pki_dir, &x, ALPN_REPL, addr).await,
        domsync_proto::repl::MAX_MESSAGE_BYTES,
        "repl silent",
    );
    framing_attacks(&conn, domsync_proto::repl::MAX_MESSAGE_BYTES, rng, "repl").await;
    // Valid messages in an order the protocol never uses: each must end the stream.
    let out_of_order = [
        Message::Ack(Ack::default()),
        Message::Records(Vec::new()),
        Message::SnapshotEnd { rows: 5 },
        Message::TookOver(Err("nobody asked".into())),
        Message::ProbeAnswer(None),
    ];
    for m in out_of_order {
        let frame = encode_message(&m).unwrap();
        let ended = hostile_stream(
            &conn,
            &frame,
            false,
            domsync_proto::repl::MAX_MESSAGE_BYTES,
            &format!("repl {m:?}"),
        )
        .await;
        if let Ended::Finished(frames) = &ended {
            assert!(frames.is_empty(), "repl {m:?} was answered: {ended:?}");
        }
    }
    // A probe for a domain the node does not hold, then records on the same stream.
    let mut bytes = encode_message(&Message::Probe {
        domain: dom("nope"),
        epoch: None,
    })
    .unwrap();
    bytes.extend(encode_message(&Message::Records(Vec::new())).unwrap());
    let ended = hostile_stream(
        &conn,
        &bytes,
        true,
        domsync_proto::repl::MAX_MESSAGE_BYTES,
        "repl probe",
    )
    .await;
    if let Ended::Finished(frames) = &ended {
        let answers: Vec<Message> = frames.iter().map(|f| decode_message(f).unwrap()).collect();
        assert_eq!(answers, vec![Message::ProbeAnswer(None)], "repl probe");
    }
    conn.close(0u32.into(), b"done");
    // A gateway certificate may not speak replication.
    let g = Identity::new(PeerRole::Gateway, GATEWAY).unwrap();
    let conn = connect(endpoint, pki_dir, &g, ALPN_REPL, addr).await;
    let refused = tokio::time::timeout(END_GUARD, conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(&refused, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == CLOSE_REFUSED),
        "gateway certificate on repl: {refused}"
    );
    quiet
}

/// The hostile side of the gateway protocol, with the granted gateway's certificate.
async fn gateway_attacks(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    addr: &str,
    rng: &mut Rng,
) -> tokio::task::JoinHandle<()> {
    let g = Identity::new(PeerRole::Gateway, GATEWAY).unwrap();
    let conn = connect(endpoint, pki_dir, &g, ALPN_GATEWAY, addr).await;
    let quiet = silent(
        connect(endpoint, pki_dir, &g, ALPN_GATEWAY, addr).await,
        gw::MAX_RESPONSE_BYTES,
        "gateway silent",
    );
    framing_attacks(&conn, gw::MAX_RESPONSE_BYTES, rng, "gateway").await;
    // An answer where a request belongs: a typed refusal.
    let wrong = gw::encode(&Response::PolicyEnd, gw::MAX_RESPONSE_BYTES).unwrap();
    let ended = hostile_stream(
        &conn,
        &wrong,
        true,
        gw::MAX_RESPONSE_BYTES,
        "gateway answer",
    )
    .await;
    if let Ended::Finished(frames) = &ended {
        for f in frames {
            let r: Response = gw::decode(f, gw::MAX_RESPONSE_BYTES).unwrap();
            assert!(
                matches!(r, Response::Refused(Refusal::BadRequest(_))),
                "gateway answer as request: {r:?}"
            );
        }
    }
    // A valid request followed by garbage on the same stream.
    let mut bytes = gw::encode(
        &GwRequest {
            domain: dom("t1"),
            seen: Vec::new(),
            query: Query::ListPolicies,
        },
        gw::MAX_REQUEST_BYTES,
    )
    .unwrap();
    bytes.extend(rng.bytes(5000));
    hostile_stream(
        &conn,
        &bytes,
        true,
        gw::MAX_RESPONSE_BYTES,
        "gateway trailing",
    )
    .await;
    conn.close(0u32.into(), b"done");
    quiet
}

/// The hostile side of remote administration, with an admin certificate.
async fn admin_attacks(
    endpoint: &quinn::Endpoint,
    pki_dir: &Path,
    addr: &str,
    rng: &mut Rng,
) -> tokio::task::JoinHandle<()> {
    let ops = Identity::new(PeerRole::Admin, "ops").unwrap();
    let conn = connect(endpoint, pki_dir, &ops, ALPN_ADMIN, addr).await;
    let quiet = silent(
        connect(endpoint, pki_dir, &ops, ALPN_ADMIN, addr).await,
        MAX_ADMIN_REQUEST,
        "admin silent",
    );
    framing_attacks(&conn, MAX_ANSWER_BYTES, rng, "admin").await;
    let wrong = codec::seal(
        &Answer::Discarded {
            domain: dom("t1"),
            id: 1,
        },
        MAX_ANSWER_BYTES,
    )
    .unwrap();
    hostile_stream(&conn, &wrong, true, MAX_ANSWER_BYTES, "admin answer").await;
    let mut bytes = codec::seal(&AdminRequest::Status, MAX_ADMIN_REQUEST).unwrap();
    bytes.extend(rng.bytes(5000));
    hostile_stream(&conn, &bytes, true, MAX_ANSWER_BYTES, "admin trailing").await;
    conn.close(0u32.into(), b"done");
    quiet
}

/// The hostile side of the local admin socket.
async fn socket_attacks(socket: &Path, rng: &mut Rng) {
    let wrong = codec::seal(
        &Answer::Discarded {
            domain: dom("t1"),
            id: 1,
        },
        MAX_ANSWER_BYTES,
    )
    .unwrap();
    for bytes in [
        rng.bytes(64 * 1024),
        truncated(1000, 10, rng),
        header(u32::MAX),
        wrong,
    ] {
        let mut s = UnixStream::connect(socket).await.unwrap();
        let exchange = async {
            // The daemon may close at once: a failed write is one way of ending.
            if s.write_all(&bytes).await.is_ok() {
                drop(s.shutdown().await);
            }
            let mut sink = Vec::new();
            drop(s.read_to_end(&mut sink).await);
        };
        tokio::time::timeout(END_GUARD, exchange)
            .await
            .expect("the admin socket left a bad client hanging");
    }
}

/// Random datagrams at the node's UDP port.
async fn udp_garbage(addr: &str, rng: &mut Rng) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..2000 {
        let len = 1 + (rng.next() % 1400) as usize;
        drop(socket.send_to(&rng.bytes(len), addr).await);
    }
}

/// Waits until the writer has had `more` writes acknowledged beyond `from`.
async fn progress(traffic: &Traffic, from: u64, what: &str) {
    let deadline = Instant::now() + GUARD;
    while traffic.writes.load(Ordering::Relaxed) < from + 3 {
        let failures = traffic.failures.lock().unwrap().clone();
        assert!(failures.is_empty(), "after {what}: {failures:?}");
        assert!(Instant::now() < deadline, "writes stalled after {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(c: &Cluster, me: &str) -> Daemon {
    let domains = vec![(
        "t1".to_owned(),
        vec!["a".to_owned(), "b".to_owned()],
        "standby".to_owned(),
    )];
    let config = c
        .node_config(me, "guard_window_ms = 300", domains)
        .write(c.config_path(me));
    let mut d = Daemon::spawn(me, c.dir.path(), &config, GUARD, &[]);
    d.socket = c.socket(me);
    d.ready();
    d
}

#[test]
fn bad_peers_on_every_protocol_leave_normal_traffic_alone() {
    let c = Cluster::new(&["a", "b"]);
    pki::issue(&c.pki(), PeerRole::Node, "x", &c.pki(), 30).unwrap();
    let (mut a, mut b) = (start(&c, "a"), start(&c, "b"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let traffic = Arc::new(Traffic::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pki_dir = c.pki();
    let (addr_a, addr_b) = (c.addr("a"), c.addr("b"));

    wait_status(&c.socket("a"), "t1 active on a", |s| {
        report(s, "t1").is_some_and(|d| d["role"] == "active")
    });
    let claimed = rt.block_on(async {
        // Normal traffic: the first package must be on the standby before the reader starts.
        let mut s = UnixStream::connect(&c.socket("a")).await.unwrap();
        let first = AdminRequest::Write {
            domain: dom("t1"),
            ops: vec![Op::InstallPolicy {
                name: "pkg".into(),
                content: vec![1; 8 * 1024],
            }],
        };
        let answer = admin_call(&mut s, &first).await;
        assert!(matches!(answer, Ok(Answer::Written { .. })), "{answer:?}");
        let config = ClientConfig::new(
            dom("t1"),
            vec![(nid("b"), addr_b.parse().unwrap())],
            creds(&pki_dir, PeerRole::Gateway, GATEWAY),
        );
        let client = Client::new(config).unwrap();
        let w = tokio::spawn(writer(
            c.socket("a"),
            Arc::clone(&traffic),
            Arc::clone(&stop),
        ));
        let r = tokio::spawn(reader(client, Arc::clone(&traffic), Arc::clone(&stop)));
        progress(&traffic, 0, "start").await;
        while traffic.reads.load(Ordering::Relaxed) == 0 {
            assert!(traffic.failures.lock().unwrap().is_empty());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let before = (peak_kib(a.child.id()), peak_kib(b.child.id()));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut rng = Rng::from_state(0x5eed);
        let (mut claimed, mut pushed) = (0u64, 0u64);
        let mut quiet = Vec::new();
        for addr in [&addr_a, &addr_b] {
            let n = traffic.writes.load(Ordering::Relaxed);
            quiet.push(repl_attacks(&endpoint, &pki_dir, addr, &mut rng).await);
            progress(&traffic, n, "replication attacks").await;
            let n = traffic.writes.load(Ordering::Relaxed);
            quiet.push(gateway_attacks(&endpoint, &pki_dir, addr, &mut rng).await);
            progress(&traffic, n, "gateway attacks").await;
            let n = traffic.writes.load(Ordering::Relaxed);
            quiet.push(admin_attacks(&endpoint, &pki_dir, addr, &mut rng).await);
            progress(&traffic, n, "admin attacks").await;
            let n = traffic.writes.load(Ordering::Relaxed);
            udp_garbage(addr, &mut rng).await;
            progress(&traffic, n, "UDP garbage").await;
        }
        for node in ["a", "b"] {
            let n = traffic.writes.load(Ordering::Relaxed);
            socket_attacks(&c.socket(node), &mut rng).await;
            progress(&traffic, n, "admin socket attacks").await;
        }
        // Floods: far more claimed and pushed bytes than the memory bound.
        let x = Identity::new(PeerRole::Node, "x").unwrap();
        let ops = Identity::new(PeerRole::Admin, "ops").unwrap();
        let g = Identity::new(PeerRole::Gateway, GATEWAY).unwrap();
        let floods: [(&Identity, &[u8], usize); 3] = [
            (&x, ALPN_REPL, domsync_proto::repl::MAX_MESSAGE_BYTES - 64),
            (&x, ALPN_REPL, domsync_proto::repl::MAX_INBOUND_BYTES - 64),
            (&g, ALPN_GATEWAY, gw::MAX_REQUEST_BYTES),
        ];
        let mut open = Vec::new();
        for addr in [&addr_a, &addr_b] {
            for (who, alpn, claim) in
                floods
                    .iter()
                    .copied()
                    .chain([(&ops, ALPN_ADMIN, MAX_ADMIN_REQUEST - 64)])
            {
                let n = traffic.writes.load(Ordering::Relaxed);
                let f = flood(&endpoint, &pki_dir, who, alpn, addr, claim, 1 << 20).await;
                claimed += f.claimed;
                pushed += f.written;
                open.push(f);
                progress(&traffic, n, "floods").await;
            }
        }
        for q in quiet {
            q.await.unwrap();
        }
        let after = (peak_kib(a.child.id()), peak_kib(b.child.id()));
        println!(
            "peak RSS a {} -> {} KiB, b {} -> {} KiB; floods claimed {} MiB and pushed {} MiB; \
             {} writes, {} reads",
            before.0,
            after.0,
            before.1,
            after.1,
            claimed >> 20,
            pushed >> 20,
            traffic.writes.load(Ordering::Relaxed),
            traffic.reads.load(Ordering::Relaxed)
        );
        for (node, (b4, af)) in [("a", (before.0, after.0)), ("b", (before.1, after.1))] {
            assert!(
                af - b4 < MEMORY_BOUND_KIB,
                "{node} grew from {b4} KiB to {af} KiB under bad peers"
            );
        }
        drop(open);
        stop.store(true, Ordering::Relaxed);
        w.await.unwrap();
        r.await.unwrap();
        claimed
    });
    drop(rt);
    let failures = traffic.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "normal traffic failed: {failures:?}");
    assert!(
        claimed > 10 * MEMORY_BOUND_KIB * 1024,
        "the floods claimed only {claimed} bytes"
    );
    for d in [&mut a, &mut b] {
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "{} exited: {}",
            d.name,
            d.log()
        );
    }
    // Both replicas converge to the same digest at the same lsn.
    let deadline = Instant::now() + GUARD;
    loop {
        let (sa, sb) = (status_json(&c.socket("a")), status_json(&c.socket("b")));
        let (da, db) = (domain_of(&sa, "t1"), domain_of(&sb, "t1"));
        if da["lsn"] == db["lsn"] && da["digest"] == db["digest"] {
            assert!(da["lsn"].as_f64().unwrap() > 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "no convergence: {da:?} {db:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
