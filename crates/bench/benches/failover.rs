//! Role changes on loopback, 20 runs each, p50/p99 printed:
//!
//! 1. Promotion: the active of a two-node domain is shut down; time from `Node::promote` on the
//!    synchronized standby (split-brain probe of the dead peer included) to its first accepted
//!    write. Target: under 50 ms.
//! 2. Switchover: 16 writers keep writing (following `NotActive` hints) while the active hands
//!    over to its standby; the pause is the longest time any writer waited for one write
//!    across the hand-over, and `Switchover::pause` (stop to hand-over) is shown beside it.
//!    Target: under 250 ms.
//!
//! Stores are on disk (real fsync), QUIC with mutual TLS on 127.0.0.1.
//! `cargo bench --bench failover`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_node::{ActiveConfig, Node};
use domsync_proto::model::{DomainId, Lsn, Op};
use domsync_proto::repl::Durability;
use domsync_store::{Domain, Store};
use domsync_testkit::cluster::{nid, replicated, Deployment};

const RUNS: usize = 20;
const GUARD: Duration = Duration::from_secs(60);

fn dom() -> DomainId {
    "bench".parse().expect("domain id")
}

fn put(i: u64) -> Vec<Op> {
    vec![Op::Put {
        key: format!("k{:05}", i % 4096).into_bytes(),
        value: vec![1; 100],
    }]
}

struct Pair {
    a: Node,
    b: Node,
    db: Domain,
    _stores: (Store, Store),
    _dir: tempfile::TempDir,
}

/// Active `a`, standby `b` (standby durability), synchronized at lsn 100.
async fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let deployment = Deployment::nodes(dir.path(), &["a", "b"]);
    let config = ActiveConfig::new(Durability::Standby, vec![nid("b")]);
    let mut c = replicated(&deployment, &dom(), "a", &["b"], config, |n, _| {
        n.tick = Duration::from_millis(10);
        n.connect_timeout = Duration::from_millis(200);
    });
    let (nb, na) = (c.nodes.remove(1), c.nodes.remove(0));
    let (a, b, db) = (na.node, nb.node, c.standbys.remove(0));
    // Once promoted, `b` has no standby left to confirm writes: local durability there.
    b.configure(&dom(), ActiveConfig::new(Durability::Local, vec![nid("a")]));
    for i in 0..100 {
        a.write(&dom(), put(i)).await.expect("write");
    }
    let mut positions = db.subscribe();
    tokio::time::timeout(GUARD, positions.wait_for(|p| p.lsn >= Lsn(100)))
        .await
        .expect("standby caught up")
        .expect("watch");
    // The standby must also know it holds everything the active announced.
    while b.follower_status(&dom()).map(|r| r.status.name()) != Some("Synchronized") {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Pair {
        a,
        b,
        db,
        _stores: (na.store, nb.store),
        _dir: dir,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(label: &str, mut v: Vec<Duration>, target: Duration) {
    v.sort();
    println!(
        "{label}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms over {} runs (target < {} ms)",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        v.len(),
        target.as_millis()
    );
}

async fn promotion() -> Duration {
    let p = pair().await;
    p.a.shutdown().await;
    let config = ActiveConfig::new(Durability::Local, vec![nid("a")]);
    let started = Instant::now();
    p.b.promote(&dom(), &[nid("a")], config, false)
        .await
        .expect("promote");
    p.b.write(&dom(), put(7)).await.expect("first write");
    let took = started.elapsed();
    assert_eq!(
        p.db.status().expect("status").role,
        domsync_proto::model::Role::Active
    );
    p.b.shutdown().await;
    took
}

async fn switchover() -> (Duration, Duration) {
    let p = Arc::new(pair().await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let (p, stop) = (Arc::clone(&p), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut target = 0usize;
            let mut i = w * 100_000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                loop {
                    let node = if target == 0 { &p.a } else { &p.b };
                    match node.write(&dom(), put(i)).await {
                        Ok(_) | Err(domsync_node::WriteError::Unconfirmed { .. }) => break,
                        Err(_) => {
                            target = 1 - target;
                            tokio::task::yield_now().await;
                        }
                    }
                }
                worst = worst.max(started.elapsed());
                i += 1;
            }
            worst
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let done =
        p.a.switchover(&dom(), &nid("b"), Duration::from_secs(10))
            .await
            .expect("switchover");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut worst = Duration::ZERO;
    for w in writers {
        worst = worst.max(w.await.expect("writer"));
    }
    p.a.shutdown().await;
    p.b.shutdown().await;
    (worst, done.pause)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // `cargo test --benches` runs this with `--bench` absent: keep that run short.
    let runs = if std::env::args().any(|a| a == "--bench") {
        RUNS
    } else {
        1
    };
    rt.block_on(async {
        let mut promotions = Vec::new();
        for _ in 0..runs {
            promotions.push(promotion().await);
        }
        let mut pauses = Vec::new();
        let mut handovers = Vec::new();
        for _ in 0..runs {
            let (worst, pause) = switchover().await;
            pauses.push(worst);
            handovers.push(pause);
        }
        println!("\n=== failover: role changes, active + 1 standby on loopback ===");
        report(
            "promote -> first write",
            promotions,
            Duration::from_millis(50),
        );
        report(
            "switchover: longest writer wait",
            pauses,
            Duration::from_millis(250),
        );
        report(
            "switchover: stop -> hand-over",
            handovers,
            Duration::from_millis(250),
        );
    });
}
