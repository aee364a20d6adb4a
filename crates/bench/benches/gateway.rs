//! The gateway service on loopback, served by a standby (QUIC, mutual TLS, stores on disk):
//!
//! 1. Policy fetches per second and per-fetch latency p50/p99 with 1, 100 and 1,000 gateway
//!    connections, each fetching in a loop for a fixed time, for 4 KiB and 256 KiB packages.
//! 2. Watch notification latency: a gateway watches a package on the standby; the time from
//!    the commit on the active returning to the push arriving, p50/p99 over 200 installs.
//!    Target: p99 under 10 ms.
//!
//! `cargo bench --bench gateway` (`DOMSYNC_BENCH_SECS` sets the seconds per fetch round,
//! default 3).

use std::time::{Duration, Instant};

use domsync_net::{read_frame, write_frame};
use domsync_net::{Credentials, PeerRole, ALPN_GATEWAY, SERVER_NAME};
use domsync_node::{ActiveConfig, Node};
use domsync_proto::gateway::{Query, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use domsync_proto::model::{DomainId, Lsn};
use domsync_proto::repl::Durability;
use domsync_store::{Domain, Store};
use domsync_testkit::cluster::{nid, replicated, Deployment};
use quinn::Endpoint;

const GUARD: Duration = Duration::from_secs(120);

fn dom() -> DomainId {
    "bench".parse().expect("domain id")
}

struct Setup {
    b: Node,
    da: Domain,
    db: Domain,
    gateway: Credentials,
    _a: Node,
    _stores: (Store, Store),
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = Deployment::new(
        dir.path(),
        &[
            (PeerRole::Node, "a"),
            (PeerRole::Node, "b"),
            (PeerRole::Gateway, "g"),
        ],
    );
    let config = ActiveConfig::new(Durability::Local, vec![nid("b")]);
    let mut c = replicated(&deployment, &dom(), "a", &["b"], config, |_, _| {});
    let (nb, na) = (c.nodes.remove(1), c.nodes.remove(0));
    let (a, b, da, db) = (na.node, nb.node, c.active, c.standbys.remove(0));
    b.grant(&dom(), "g");
    Setup {
        b,
        da,
        db,
        gateway: deployment.credentials(PeerRole::Gateway, "g"),
        _a: a,
        _stores: (na.store, nb.store),
        _dir: dir,
    }
}

async fn reach(domain: &Domain, lsn: Lsn) {
    let mut positions = domain.subscribe();
    tokio::time::timeout(GUARD, positions.wait_for(|p| p.lsn >= lsn))
        .await
        .expect("standby did not catch up")
        .expect("position channel");
}

async fn connect(endpoint: &Endpoint, creds: &Credentials, node: &Node) -> quinn::Connection {
    let config = domsync_net::client_config(creds, ALPN_GATEWAY).expect("client config");
    endpoint
        .connect_with(config, node.local_addr().expect("addr"), SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake")
}

/// One fetch of the package; returns the bytes of content received.
async fn fetch(conn: &quinn::Connection, frame: &[u8]) -> Result<u64, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, frame)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    loop {
        let frame = read_frame(&mut recv, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended before the package did")?;
        match domsync_proto::gateway::decode::<Response>(&frame, MAX_RESPONSE_BYTES)
            .map_err(|e| e.to_string())?
        {
            Response::Chunk(c) => bytes += c.len() as u64,
            Response::PolicyEnd => return Ok(bytes),
            Response::PolicyBegin { .. } => {}
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

/// Reads one pushed package to its end; returns its version.
async fn next_push(recv: &mut quinn::RecvStream) -> u64 {
    let mut version = 0;
    loop {
        let frame = tokio::time::timeout(GUARD, read_frame(recv, MAX_RESPONSE_BYTES))
            .await
            .expect("push in time")
            .expect("read")
            .expect("frame");
        match domsync_proto::gateway::decode::<Response>(&frame, MAX_RESPONSE_BYTES)
            .expect("decode")
        {
            Response::PolicyBegin { info, .. } => version = info.version,
            Response::PolicyEnd => return version,
            _ => {}
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn fetch_round(conns: &[quinn::Connection], size: usize, secs: u64) {
    let name = format!("p{size}");
    let frame = domsync_proto::gateway::encode(
        &Request {
            domain: dom(),
            seen: Vec::new(),
            query: Query::GetPolicy {
                name,
                if_newer_than: None,
                at_least: None,
                wait_ms: 0,
            },
        },
        MAX_REQUEST_BYTES,
    )
    .expect("encode");
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let (conn, frame) = (conn.clone(), frame.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                match fetch(&conn, &frame).await {
                    Ok(n) if n == size as u64 => latencies.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done.expect("task");
        all.extend(l);
        errors += e;
    }
    let took = started.elapsed();
    all.sort();
    println!(
        "{:>5} connections, {:>3} KiB: {:>8.0} fetches/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} fetches, {errors} errors, {:.0} MiB/s)",
        conns.len(),
        size / 1024,
        all.len() as f64 / took.as_secs_f64(),
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        all.len(),
        (all.len() * size) as f64 / took.as_secs_f64() / (1 << 20) as f64,
    );
}

async fn watch_latency(s: &Setup) {
    let endpoint = Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let conn = connect(&endpoint, &s.gateway, &s.b).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let watch = Request {
        domain: dom(),
        seen: Vec::new(),
        query: Query::Watch {
            policies: vec![("watched".into(), None)],
            crls: Vec::new(),
        },
    };
    write_frame(
        &mut send,
        &domsync_proto::gateway::encode(&watch, MAX_REQUEST_BYTES).expect("encode"),
    )
    .await
    .expect("write");
    send.finish().expect("finish");
    // The watch first sends the version the standby holds; each push after that carries the
    // install just committed (checked by its lsn, so a late push is never counted early).
    next_push(&mut recv).await;
    let mut latencies = Vec::new();
    for i in 0..200u32 {
        let p =
            s.da.install_policy("watched", format!("version {i}").into_bytes())
                .expect("install");
        let committed = Instant::now();
        let version = next_push(&mut recv).await;
        latencies.push(committed.elapsed());
        assert_eq!(version, p.lsn.0, "the push is the install just made");
    }
    latencies.sort();
    println!(
        "watch on the standby, commit on the active to push received: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms over {} installs (target p99 < 10 ms)",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        latencies.len()
    );
}

fn main() {
    let secs = std::env::var("DOMSYNC_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let s = setup().await;
        for size in [4 * 1024, 256 * 1024] {
            let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let p =
                s.da.install_policy(&format!("p{size}"), content)
                    .expect("install");
            reach(&s.db, p.lsn).await;
        }
        // The first install of the watched package, so the watch starts from a version.
        let p =
            s.da.install_policy("watched", b"v0".to_vec())
                .expect("install");
        reach(&s.db, p.lsn).await;
        watch_latency(&s).await;
        let endpoints: Vec<Endpoint> = (0..10)
            .map(|_| Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint"))
            .collect();
        let mut conns = Vec::new();
        for n in [1usize, 100, 1000] {
            while conns.len() < n {
                let e = &endpoints[conns.len() % endpoints.len()];
                conns.push(connect(e, &s.gateway, &s.b).await);
            }
            for size in [4 * 1024, 256 * 1024] {
                fetch_round(&conns, size, secs).await;
            }
        }
    });
}
