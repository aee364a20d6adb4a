//! Replication end to end: real quinn + mutual TLS on 127.0.0.1 ephemeral ports, several nodes
//! in one test process, each with its own store.

use std::path::Path;
use std::time::Duration;

use domsync_net::{Credentials, PeerRole};
use domsync_node::{ActiveConfig, WriteError};
use domsync_proto::model::{DomainId, Lsn, NodeId, Op};
use domsync_proto::repl::{Durability, SyncStatus};
use domsync_store::{Domain, Store, StoreOptions};
use domsync_testkit::cluster::{
    nid, reach, replicated, until, Deployment, TestNode, GUARD, TEST_TICK,
};

fn dom() -> DomainId {
    "tenant-1".parse().unwrap()
}

/// A deployment CA with node certificates for `nodes`, in `dir` (the `pki` directory of the
/// test's directory).
fn deployment(dir: &Path, nodes: &[&str]) {
    let parent = dir
        .parent()
        .expect("the pki directory is inside the test's directory");
    Deployment::nodes(parent, nodes);
}

fn creds(dir: &Path, node: &str) -> Credentials {
    let parent = dir
        .parent()
        .expect("the pki directory is inside the test's directory");
    Deployment::existing(parent).credentials(PeerRole::Node, node)
}

fn start(dir: &Path, _pki_dir: &Path, name: &str) -> TestNode {
    Deployment::existing(dir).start(name)
}

/// Node `a` of a fresh deployment with nodes `names`, serving the domain as active.
fn active_node(dir: &Path, names: &[&str], config: ActiveConfig) -> (TestNode, Domain) {
    let pki_dir = dir.join("pki");
    deployment(&pki_dir, names);
    let a = start(dir, &pki_dir, "a");
    // `a` serves only listed peers; the others start later (their address is set when `a`
    // must dial them; a placeholder lists them meanwhile).
    for n in names.iter().filter(|n| **n != "a") {
        a.node.set_peer(nid(n), "127.0.0.1:9".parse().unwrap());
    }
    let active = a.store.create_domain(&dom()).unwrap();
    a.node.serve_active(active.clone(), config);
    (a, active)
}

/// An active on `a` and standbys on `b`, `c`.
async fn cluster(
    dir: &Path,
    durability: Durability,
    standbys: &[&str],
) -> (TestNode, Vec<TestNode>, Domain, Vec<Domain>) {
    let mut names = vec!["a"];
    names.extend_from_slice(standbys);
    let deployment = Deployment::nodes(dir, &names);
    let ids: Vec<NodeId> = standbys.iter().map(|s| nid(s)).collect();
    let config = ActiveConfig::new(durability, ids);
    let mut c = replicated(&deployment, &dom(), "a", standbys, config, |n, _| {
        n.tick = TEST_TICK;
    });
    let a = c.nodes.remove(0);
    (a, c.nodes, c.active, c.standbys)
}

fn put(i: usize) -> Vec<Op> {
    vec![Op::Put {
        key: format!("key-{:05}", i % 3000).into_bytes(),
        value: vec![(i % 251) as u8; 100],
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_standbys_converge_after_ten_thousand_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _nodes, active, replicas) = cluster(dir.path(), Durability::Local, &["b", "c"]).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let node = a.node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..625 {
                node.write(&dom(), put(t * 625 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = active.status().unwrap();
    assert_eq!(end.position.lsn, Lsn(10_000));
    for r in &replicas {
        reach(r, end.position.lsn).await;
        let s = r.status().unwrap();
        assert_eq!(s.position, end.position);
        assert_eq!(s.digest, end.digest);
        assert!(r.verify().unwrap().is_clean());
    }
    let reports = a.node.sync_status(&dom());
    assert_eq!(reports.len(), 2);
    until("the awaited state", || {
        a.node
            .sync_status(&dom())
            .iter()
            .all(|r| r.status == SyncStatus::Synchronized)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_from_the_log_without_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (a, nodes, active, replicas) = cluster(dir.path(), Durability::Local, &["b"]).await;
    for i in 0..200 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&replicas[0], Lsn(200)).await;
    // The first sync of a new standby is a snapshot; count from here, once the follower
    // itself has seen that it holds everything.
    until("the awaited state", || {
        nodes[0].node.follower_status(&dom()).unwrap().status == SyncStatus::Synchronized
    })
    .await;
    let resyncs = nodes[0].node.follower_status(&dom()).unwrap().resyncs;
    // Cut the connection from the standby's side, write more meanwhile, then let it resume.
    nodes[0].node.disconnect(&nid("a")).await;
    for i in 200..500 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&replicas[0], Lsn(500)).await;
    let report = nodes[0].node.follower_status(&dom()).unwrap();
    assert_eq!(report.resyncs, resyncs, "resumed by log, not by snapshot");
    assert_eq!(
        replicas[0].status().unwrap().digest,
        active.status().unwrap().digest
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_retention_is_resynced_by_snapshot_then_streams() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let config = ActiveConfig::new(Durability::Local, vec![nid("b")]);
    let (a, active) = active_node(dir.path(), &["a", "b"], config);
    for i in 0..3000 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    active.install_policy("edge", vec![7u8; 100_000]).unwrap();
    active.truncate_log(Lsn(2500)).unwrap();

    let b = start(dir.path(), &pki_dir, "b");
    b.node.set_peer(nid("a"), a.node.local_addr().unwrap());
    let standby = b.store.join_domain(&dom()).unwrap();
    b.node.follow(standby.clone(), nid("a"));
    reach(&standby, Lsn(3001)).await;
    for i in 0..100 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&standby, Lsn(3101)).await;
    let (sa, sb) = (active.status().unwrap(), standby.status().unwrap());
    assert_eq!(sb.digest, sa.digest);
    assert_eq!(sb.uid, sa.uid);
    until("the awaited state", || {
        b.node.follower_status(&dom()).unwrap().resyncs == 1
    })
    .await;
    assert!(standby.verify().unwrap().is_clean());
    let policy = standby.policy("edge").unwrap().value.unwrap();
    assert_eq!(policy.content, vec![7u8; 100_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_durability_acks_only_what_a_standby_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (a, nodes, _active, replicas) = cluster(dir.path(), Durability::Standby, &["b"]).await;
    let mut last = Lsn::ZERO;
    for i in 0..50 {
        last = a.node.write(&dom(), put(i)).await.unwrap().lsn;
    }
    // The active goes away right after the acknowledgement: the standby has it durably.
    a.node.shutdown().await;
    drop(a);
    nodes[0].node.shutdown().await;
    let standby = &replicas[0];
    assert_eq!(standby.status().unwrap().position.lsn, last);
    assert!(standby.get(b"key-00049").unwrap().value.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_write_says_it_is_committed_locally() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ActiveConfig::new(Durability::Standby, vec![nid("b")]);
    config.confirm_timeout = Duration::from_millis(200);
    let (a, active) = active_node(dir.path(), &["a", "b"], config);
    // No standby is running: the write commits here and is reported unconfirmed.
    let err = a.node.write(&dom(), put(1)).await.unwrap_err();
    match &err {
        WriteError::Unconfirmed {
            position,
            confirmed_by,
            ..
        } => {
            assert_eq!(position.lsn, Lsn(1));
            assert!(confirmed_by.is_empty());
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("committed locally"));
    assert_eq!(active.status().unwrap().position.lsn, Lsn(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_replica_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _nodes, _active, _replicas) = cluster(dir.path(), Durability::Local, &["b"]).await;
    let pki_dir = dir.path().join("pki");
    Deployment::existing(dir.path()).issue(PeerRole::Node, "x");
    let x = start(dir.path(), &pki_dir, "x");
    x.node.set_peer(nid("a"), a.node.local_addr().unwrap());
    let d = x.store.join_domain(&dom()).unwrap();
    a.node.write(&dom(), put(1)).await.unwrap();
    // Not listed as a peer of `a`: its connection is refused.
    x.node.follow(d.clone(), nid("a"));
    until("the awaited state", || {
        x.node
            .follower_status(&dom())
            .is_some_and(|r| !r.connected && r.position.lsn == Lsn(0))
    })
    .await;
    // Listed as a peer, but not a replica of the domain: it is told exactly what a node
    // without the domain would say, and gets nothing.
    a.node.set_peer(nid("x"), x.node.local_addr().unwrap());
    until("the awaited state", || {
        x.node
            .follower_status(&dom())
            .and_then(|r| r.last_error)
            .is_some_and(|e| e.contains("has no replica of the domain"))
    })
    .await;
    assert_eq!(d.status().unwrap().position.lsn, Lsn(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_standbys_need_within_the_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let mut config = ActiveConfig::new(Durability::Local, vec![nid("b")]);
    config.retention_bytes = 40_000;
    config.retention_interval = Duration::from_millis(20);
    let (a, active) = active_node(dir.path(), &["a", "b"], config);
    let b = start(dir.path(), &pki_dir, "b");
    b.node.set_peer(nid("a"), a.node.local_addr().unwrap());
    let standby = b.store.join_domain(&dom()).unwrap();
    b.node.follow(standby.clone(), nid("a"));
    for i in 0..100 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&standby, Lsn(100)).await;
    // Everything the standby holds durably is trimmed.
    until("the awaited state", || {
        active.status().unwrap().log_start == Lsn(101)
    })
    .await;

    assert_eq!(a.node.unreplicated_trimmed(&dom()), Some(0));
    // The standby stops following; the log grows past the cap and is trimmed to it.
    b.node.unfollow(&dom());
    for i in 100..1100 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    until("the awaited state", || {
        let s = active.status().unwrap();
        s.log_start > Lsn(101) && s.log_bytes <= 40_000
    })
    .await;

    assert_eq!(
        standby.status().unwrap().position.lsn,
        Lsn(100),
        "not followed meanwhile"
    );
    // What the cap dropped past lsn 100 no standby held: reported, not silent.
    let log_start = active.status().unwrap().log_start;
    until("the awaited state", || {
        a.node.unreplicated_trimmed(&dom()) == Some(log_start.0 - 101)
    })
    .await;
    // Behind the retained log, the standby comes back through a snapshot, then streams.
    b.node.follow(standby.clone(), nid("a"));
    reach(&standby, Lsn(1100)).await;
    // The follower counts the resync once the switched-in state is reported back to it.
    until("the awaited state", || {
        b.node.follower_status(&dom()).unwrap().resyncs == 1
    })
    .await;
    a.node.write(&dom(), put(7)).await.unwrap();
    reach(&standby, Lsn(1101)).await;
    assert_eq!(
        standby.status().unwrap().digest,
        active.status().unwrap().digest
    );
}

/// A hand-driven active on node `a`'s certificate: it serves a snapshot of `source` at lsn 0,
/// then, stream after stream, a corrupt record, a corrupt frame, and finally the true log.
async fn fake_active(endpoint: quinn::Endpoint, source: Domain) {
    use domsync_net::{open_frame, read_frame, write_frame};
    use domsync_proto::repl::{encode_message, MAX_MESSAGE_BYTES};
    use domsync_proto::repl::{Answer, Message, RecordBytes, SnapshotHeader};

    let incoming = endpoint.accept().await.unwrap();
    let (conn, _peer) = domsync_net::accept(incoming, domsync_net::ALPN_REPL)
        .await
        .unwrap();
    let records: Vec<Vec<u8>> = source
        .read_log(Lsn(1), 1000, 1 << 24)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    let status = source.status().unwrap();
    for round in 0.. {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let frame = read_frame(&mut recv, MAX_MESSAGE_BYTES)
            .await
            .unwrap()
            .unwrap();
        let Message::Follow(follow) = open_frame(&frame, MAX_MESSAGE_BYTES).unwrap() else {
            panic!("a stream starts with Follow");
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        if follow.uid.is_none() {
            // An empty snapshot at lsn 0 of the source's incarnation.
            let mut empty = status.position.clone();
            empty.lsn = Lsn(0);
            empty.chain = 0;
            out.push(
                encode_message(&Message::Answer(Answer::Snapshot {
                    why: domsync_proto::repl::SnapshotWhy::NeverSynchronized,
                }))
                .unwrap(),
            );
            out.push(
                encode_message(&Message::SnapshotBegin(SnapshotHeader {
                    uid: status.uid.unwrap(),
                    position: empty,
                    epoch: status.epoch.clone(),
                    history: status.history.clone(),
                    digest: Default::default(),
                }))
                .unwrap(),
            );
            out.push(encode_message(&Message::SnapshotEnd { rows: 0 }).unwrap());
        } else {
            assert_eq!(follow.position.lsn, Lsn(0), "nothing corrupt was applied");
            out.push(encode_message(&Message::Answer(Answer::Stream { from: Lsn(1) })).unwrap());
        }
        match round {
            0 => {
                // A record whose payload was damaged after it was sealed: its CRC fails.
                let mut bad = records[0].clone();
                let mid = bad.len() / 2;
                bad[mid] ^= 0x40;
                out.push(encode_message(&Message::Records(vec![RecordBytes(bad)])).unwrap());
            }
            1 => {
                // A frame damaged on the wire: its own CRC fails.
                let mut frame =
                    encode_message(&Message::Records(vec![RecordBytes(records[0].clone())]))
                        .unwrap();
                let mid = frame.len() / 2;
                frame[mid] ^= 0x01;
                out.push(frame);
            }
            _ => {
                let all = records.iter().cloned().map(RecordBytes).collect();
                out.push(encode_message(&Message::Records(all)).unwrap());
            }
        }
        for f in out {
            write_frame(&mut send, &f).await.unwrap();
        }
        if round < 2 {
            // Keep reading until the standby ends the stream on its side.
            while let Ok(Some(_)) = read_frame(&mut recv, MAX_MESSAGE_BYTES).await {}
        } else {
            // Keep the stream open until the standby acknowledged everything.
            while let Ok(Some(frame)) = read_frame(&mut recv, MAX_MESSAGE_BYTES).await {
                if let Ok(Message::Ack(ack)) = open_frame::<Message>(&frame, MAX_MESSAGE_BYTES) {
                    if ack.applied >= status.position.lsn {
                        return;
                    }
                }
            }
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_and_frames_on_the_wire_are_refused_and_the_stream_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    deployment(&pki_dir, &["a", "b"]);
    // The true log, written by a real store of node a.
    let source_store = Store::open(dir.path().join("source"), StoreOptions::new(nid("a"))).unwrap();
    let source = source_store.create_domain(&dom()).unwrap();
    for i in 0..20 {
        source.write(put(i)).unwrap();
    }
    let server = domsync_net::server_config(
        &creds(&pki_dir, "a"),
        &[domsync_net::ALPN_REPL],
        std::sync::Arc::new(domsync_net::transport_config()),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let fake = tokio::spawn(fake_active(endpoint, source.clone()));

    let b = start(dir.path(), &pki_dir, "b");
    b.node.set_peer(nid("a"), addr);
    let standby = b.store.join_domain(&dom()).unwrap();
    b.node.follow(standby.clone(), nid("a"));
    reach(&standby, Lsn(20)).await;
    tokio::time::timeout(GUARD, fake).await.unwrap().unwrap();

    let report = b.node.follower_status(&dom()).unwrap();
    assert_eq!(report.refused, 2, "{report:?}");
    assert_eq!(
        standby.status().unwrap().digest,
        source.status().unwrap().digest
    );
    assert!(standby.verify().unwrap().is_clean());
}

/// A bare QUIC connection with node `name`'s certificate, for tests that speak the protocol
/// by hand. Keep the endpoint alive as long as the connection.
async fn raw_connection(
    pki_dir: &Path,
    name: &str,
    to: std::net::SocketAddr,
) -> (quinn::Endpoint, quinn::Connection) {
    let client =
        domsync_net::client_config_for(&creds(pki_dir, name), domsync_net::ALPN_REPL, None)
            .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client);
    let conn = endpoint
        .connect(to, domsync_net::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    (endpoint, conn)
}

/// The next message on a stream (hang-guarded).
async fn next_message(recv: &mut quinn::RecvStream) -> domsync_proto::repl::Message {
    use domsync_net::{open_frame, read_frame};
    use domsync_proto::repl::MAX_MESSAGE_BYTES;
    let frame = tokio::time::timeout(GUARD, read_frame(recv, MAX_MESSAGE_BYTES))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    open_frame(&frame, MAX_MESSAGE_BYTES).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_domain_does_not_block_another_on_the_same_connection() {
    use domsync_net::write_frame;
    use domsync_proto::repl::encode_message;
    use domsync_proto::repl::{Follow, Message};

    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    deployment(&pki_dir, &["a", "b"]);
    let a = start(dir.path(), &pki_dir, "a");
    a.node.set_peer(nid("b"), "127.0.0.1:9".parse().unwrap());
    let big_id: DomainId = "big".parse().unwrap();
    let big = a.store.create_domain(&big_id).unwrap();
    let small = a.store.create_domain(&dom()).unwrap();
    for d in [&big, &small] {
        a.node.serve_active(
            d.clone(),
            ActiveConfig::new(Durability::Local, vec![nid("b")]),
        );
    }
    // 16 MiB in the big domain: far more than one stream's flow-control window.
    for i in 0..64 {
        big.put(format!("blob-{i}"), vec![i as u8; 256 * 1024])
            .unwrap();
    }

    // A standby on one connection that follows both domains and never reads the big one.
    let (_endpoint, conn) = raw_connection(&pki_dir, "b", a.node.local_addr().unwrap()).await;
    let follow = |domain: DomainId| {
        encode_message(&Message::Follow(Follow {
            domain,
            uid: None,
            position: domsync_proto::model::Position::empty(nid("b")),
            epoch: domsync_proto::model::Epoch {
                term: 0,
                node: nid("b"),
            },
            history_tail: vec![],
            collision_fork: None,
        }))
        .unwrap()
    };
    let (mut big_send, _big_recv_never_read) = conn.open_bi().await.unwrap();
    write_frame(&mut big_send, &follow(big_id.clone()))
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, &follow(dom())).await.unwrap();

    // The small domain's snapshot and then its new records arrive.
    loop {
        if let Message::SnapshotEnd { .. } = next_message(&mut recv).await {
            break;
        }
    }
    let p = a.node.write(&dom(), put(1)).await.unwrap();
    loop {
        match next_message(&mut recv).await {
            Message::Records(records) => {
                let last = domsync_proto::codec::decode_record(&records.last().unwrap().0).unwrap();
                assert_eq!(last.lsn, p.lsn);
                break;
            }
            Message::Heartbeat { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The big domain's stream is indeed stalled: the active could not push it all.
    let stalled = a.node.sync_status(&big_id);
    assert_ne!(stalled[0].status, SyncStatus::Synchronized);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_end_their_stream_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _nodes, active, replicas) = cluster(dir.path(), Durability::Local, &["b"]).await;
    let pki_dir = dir.path().join("pki");
    let (_endpoint, conn) = raw_connection(&pki_dir, "b", a.node.local_addr().unwrap()).await;
    let mut hostile: Vec<Vec<u8>> = vec![
        vec![1, 0xff, 0xff, 0xff, 0xff], // length far over the cap
        vec![9, 1, 0, 0, 0, 0],          // unknown version
        vec![1, 0, 0, 0, 4, 1, 2, 3, 4, 0, 0, 0, 0], // bad CRC
    ];
    // A frame that claims 60 MiB and then ends after a few bytes.
    let mut short = vec![1];
    short.extend_from_slice(&(60u32 << 20).to_le_bytes());
    short.extend_from_slice(&[0u8; 100]);
    hostile.push(short);
    for bytes in hostile {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        // The node ends the stream without an answer.
        let answer = tokio::time::timeout(GUARD, recv.read_to_end(1 << 20))
            .await
            .unwrap();
        assert!(matches!(answer.as_deref(), Ok([]) | Err(_)), "{answer:?}");
    }
    // Replication of the domain goes on.
    let p = a.node.write(&dom(), put(1)).await.unwrap();
    reach(&replicas[0], p.lsn).await;
    assert_eq!(
        replicas[0].status().unwrap().digest,
        active.status().unwrap().digest
    );
}

const CHILD_ENV: &str = "DOMSYNC_REPL_STANDBY_CHILD";

/// Runs only when re-executed by the test below: a standby node `b` that follows the domain
/// from the active at the address given, until it is killed.
#[test]
fn standby_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (dir, addr) = spec.split_once('|').unwrap();
    let dir = Path::new(dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let b = start(dir, &dir.join("pki"), "b");
        b.node.set_peer(nid("a"), addr.parse().unwrap());
        let standby = b.store.join_domain(&dom()).unwrap();
        b.node.follow(standby, nid("a"));
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_process_killed_midway_through_a_snapshot_restarts_intact_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let config = ActiveConfig::new(Durability::Local, vec![nid("b")]);
    let (a, active) = active_node(dir.path(), &["a", "b"], config);
    // About 32 MiB of state, so the snapshot takes a while to load.
    for i in 0..512 {
        active
            .put(format!("blob-{i:04}"), vec![(i % 251) as u8; 64 * 1024])
            .unwrap();
    }
    let addr = a.node.local_addr().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "standby_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{addr}", dir.path().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while the snapshot is being built aside.
    let half_built = dir.path().join("b/domains/.tenant-1.resync.redb");
    until("the awaited state", || half_built.exists()).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        half_built.exists(),
        "killed midway: the half-built file is still there"
    );

    // Restarted: the previous (empty) state is intact, then the resync completes.
    let b = start(dir.path(), &dir.path().join("pki"), "b");
    assert!(
        !half_built.exists(),
        "the half-built file is removed on open"
    );
    let standby = b.store.domain(&dom()).unwrap();
    let before = standby.status().unwrap();
    assert_eq!(before.position.lsn, Lsn(0));
    assert!(before.uid.is_none());
    assert!(standby.verify().unwrap().is_clean());
    b.node.set_peer(nid("a"), addr);
    b.node.follow(standby.clone(), nid("a"));
    reach(&standby, Lsn(512)).await;
    assert_eq!(
        standby.status().unwrap().digest,
        active.status().unwrap().digest
    );
    assert!(standby.verify().unwrap().is_clean());
}
