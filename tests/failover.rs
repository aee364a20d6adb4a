//! Manual promotion (failover) over real QUIC: the split-brain guard, the lag check and the
//! writes a promoted standby keeps.

use std::path::Path;
use std::time::Duration;

use domsync_node::{ActiveConfig, PromoteError};
use domsync_proto::model::{DomainId, Epoch, Lsn, Op, Role};
use domsync_proto::repl::Durability;
use domsync_proto::repl::Seer;
use domsync_store::{open_file, BackendFactory, Domain};
use domsync_testkit::cluster::{mesh, nid, reach, Deployment, TestNode, GUARD, TEST_TICK};

fn dom() -> DomainId {
    "tenant-1".parse().unwrap()
}

fn start(dir: &Path, name: &str) -> TestNode {
    start_with(dir, name, None)
}

/// Node `name` of the deployment in `dir`, quick to give up on a peer that does not answer,
/// its store opened through `backend` when given.
fn start_with(
    dir: &Path,
    name: &str,
    backend: Option<std::sync::Arc<dyn BackendFactory>>,
) -> TestNode {
    Deployment::existing(dir).start_with(name, |config, options| {
        config.tick = TEST_TICK;
        config.connect_timeout = Duration::from_millis(500);
        options.backend = backend;
    })
}

/// Waits until `n`'s follower of the domain has noticed that its stream to the active is gone
/// (what a peer's split-brain guard asks it).
async fn lost_contact(n: &TestNode) {
    tokio::time::timeout(GUARD, async {
        while n.node.follower_status(&dom()).is_some_and(|r| r.connected) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the standby did not notice the lost active in time");
}

fn put(i: usize) -> Vec<Op> {
    vec![Op::Put {
        key: format!("key-{i:04}").into_bytes(),
        value: vec![7; 64],
    }]
}

/// Active `a` (standby durability) with standbys `b` and `c`, all peers of each other.
async fn cluster(dir: &Path) -> (TestNode, TestNode, TestNode, Domain, Domain, Domain) {
    Deployment::nodes(dir, &["a", "b", "c"]);
    let (a, b, c) = (start(dir, "a"), start(dir, "b"), start(dir, "c"));
    mesh(&[&a, &b, &c]);
    let da = a.store.create_domain(&dom()).unwrap();
    let mut config = ActiveConfig::new(Durability::Standby, vec![nid("b"), nid("c")]);
    config.confirm_timeout = Duration::from_millis(300);
    a.node.serve_active(da.clone(), config);
    let db = b.store.join_domain(&dom()).unwrap();
    let dc = c.store.join_domain(&dom()).unwrap();
    b.node.follow(db.clone(), nid("a"));
    c.node.follow(dc.clone(), nid("a"));
    // Each replica's local configuration of the domain (who its replicas are).
    b.node.configure(&dom(), config_for(&["a", "c"]));
    c.node.configure(&dom(), config_for(&["a", "b"]));
    (a, b, c, da, db, dc)
}

fn config_for(standbys: &[&str]) -> ActiveConfig {
    ActiveConfig::new(
        Durability::Standby,
        standbys.iter().map(|s| nid(s)).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronized_standby_promoted_after_the_active_is_lost_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _da, db, dc) = cluster(dir.path()).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.push((i, a.node.write(&dom(), put(i)).await.unwrap()));
    }
    let last = acked.last().unwrap().1.lsn;
    reach(&db, last).await;
    reach(&dc, last).await;
    a.node.shutdown().await;
    lost_contact(&c).await;

    // While the old active answers, promotion is refused naming it; now it is gone.
    let promoted = b
        .node
        .promote(
            &dom(),
            &[nid("a"), nid("c")],
            config_for(&["c", "a"]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        promoted.epoch,
        Epoch {
            term: 2,
            node: nid("b")
        }
    );
    assert_eq!(promoted.behind_records, 0);
    assert_eq!(promoted.unreachable, vec![nid("a")]);
    assert_eq!(db.status().unwrap().role, Role::Active);
    for (i, _) in &acked {
        assert!(db
            .get(format!("key-{i:04}").as_bytes())
            .unwrap()
            .value
            .is_some());
    }
    // The other standby follows the new active; writes there are confirmed by it.
    c.node.follow(dc.clone(), nid("b"));
    let p = b.node.write(&dom(), put(999)).await.unwrap();
    assert_eq!(p.epoch, promoted.epoch);
    reach(&dc, p.lsn).await;
    assert_eq!(dc.status().unwrap().digest, db.status().unwrap().digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_is_refused_while_the_old_active_answers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _c, _da, db, _dc) = cluster(dir.path()).await;
    let p = a.node.write(&dom(), put(1)).await.unwrap();
    reach(&db, p.lsn).await;
    let err = b
        .node
        .promote(&dom(), &[nid("a"), nid("c")], config_for(&["c"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PromoteError::ActiveAlive { node, .. } if *node == nid("a")),
        "{err}"
    );
    assert!(
        err.to_string().contains("a was seen active for tenant-1")
            && err.to_string().contains("by node a"),
        "{err}"
    );
    assert_eq!(db.status().unwrap().role, Role::Standby);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_is_refused_while_another_replica_or_a_gateway_still_reaches_the_old_active() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _da, db, dc) = cluster(dir.path()).await;
    let p = a.node.write(&dom(), put(1)).await.unwrap();
    reach(&db, p.lsn).await;
    reach(&dc, p.lsn).await;
    // `b` alone is cut off from `a`; `c` still follows it.
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    b.node.set_peer(nid("a"), nowhere);
    b.node.disconnect(&nid("a")).await;
    lost_contact(&b).await;
    let err = b
        .node
        .promote(&dom(), &[nid("a"), nid("c")], config_for(&["c"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PromoteError::ActiveAlive { node, seen_by: Seer::Peer(by), .. }
            if *node == nid("a") && *by == nid("c")),
        "{err}"
    );
    assert!(err.to_string().contains("by node c"), "{err}");

    // `c` loses `a` too, but a gateway reported reaching `a` a moment ago.
    c.node.set_peer(nid("a"), nowhere);
    c.node.disconnect(&nid("a")).await;
    lost_contact(&c).await;
    let epoch = db.status().unwrap().epoch;
    b.node.record_sighting(
        &dom(),
        "gw-7",
        nid("a"),
        epoch.clone(),
        Duration::from_millis(200),
    );
    let err = b
        .node
        .promote(&dom(), &[nid("a"), nid("c")], config_for(&["c"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PromoteError::ActiveAlive { seen_by: Seer::Gateway(g), .. } if g == "gw-7"),
        "{err}"
    );
    assert!(err.to_string().contains("by gateway gw-7"), "{err}");
    assert_eq!(db.status().unwrap().role, Role::Standby);

    // A report older than the guard window does not replace a newer one (probes take their
    // budget while `a` is out of reach: the newer one is given again first).
    b.node.record_sighting(
        &dom(),
        "gw-7",
        nid("a"),
        epoch.clone(),
        Duration::from_millis(200),
    );
    b.node
        .record_sighting(&dom(), "gw-7", nid("a"), epoch, Duration::from_secs(30));
    let err = b
        .node
        .promote(&dom(), &[nid("a"), nid("c")], config_for(&["c"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PromoteError::ActiveAlive { .. }),
        "an older report does not replace a newer one: {err}"
    );
    b.node.record_sighting(
        &dom(),
        "gw-8",
        nid("a"),
        db.status().unwrap().epoch,
        Duration::from_secs(30),
    );
    assert_eq!(b.node.sightings(&dom()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_is_refused_and_a_forced_promotion_reports_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _da, db, dc) = cluster(dir.path()).await;
    for i in 0..50 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&dc, Lsn(50)).await;
    c.node.unfollow(&dom());
    for i in 50..80 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&db, Lsn(80)).await;
    a.node.shutdown().await;
    lost_contact(&b).await;
    c.node.follow(dc.clone(), nid("a"));

    let err = c
        .node
        .promote(&dom(), &[nid("a"), nid("b")], config_for(&["b"]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PromoteError::Behind { node, records: 30, .. } if *node == nid("b")),
        "{err}"
    );
    assert_eq!(dc.status().unwrap().role, Role::Standby);

    let forced = c
        .node
        .promote(&dom(), &[nid("a"), nid("b")], config_for(&["b"]), true)
        .await
        .unwrap();
    assert_eq!(forced.behind_records, 30);
    assert_eq!(forced.position.lsn, Lsn(50));
    assert_eq!(dc.status().unwrap().role, Role::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_active_back_from_a_partition_steps_down_and_archives_its_divergent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, da, db, dc) = cluster(dir.path()).await;
    for i in 0..20 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&db, Lsn(20)).await;
    reach(&dc, Lsn(20)).await;
    // Partition: the standbys cannot reach `a`, which keeps writing (committed locally,
    // unconfirmed).
    let a_addr = a.node.local_addr().unwrap();
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    for n in [&b, &c] {
        n.node.set_peer(nid("a"), nowhere);
        n.node.disconnect(&nid("a")).await;
        lost_contact(n).await;
    }
    let mut divergent = Vec::new();
    for i in 100..105 {
        match a.node.write(&dom(), put(i)).await {
            Err(domsync_node::WriteError::Unconfirmed { position, .. }) => {
                divergent.push(position.lsn)
            }
            other => panic!("expected an unconfirmed write, got {other:?}"),
        }
    }
    assert_eq!(divergent, (21..=25).map(Lsn).collect::<Vec<_>>());
    // `b` is promoted (`a` is unreachable from here) and takes writes.
    let promoted = b
        .node
        .promote(
            &dom(),
            &[nid("a"), nid("c")],
            config_for(&["a", "c"]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(promoted.unreachable, vec![nid("a")]);
    c.node.follow(dc.clone(), nid("b"));
    let mut last = Lsn::ZERO;
    for i in 200..210 {
        last = b.node.write(&dom(), put(i)).await.unwrap().lsn;
    }
    assert_eq!(last, Lsn(30));
    // Heal: `b` announces its epoch; `a` steps down, archives lsn 21..=25 and follows `b`.
    b.node.set_peer(nid("a"), a_addr);
    reach(&da, Lsn(30)).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while da.status().unwrap().digest != db.status().unwrap().digest {
        assert!(
            tokio::time::Instant::now() < deadline,
            "old active did not converge"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sa = da.status().unwrap();
    assert_eq!(sa.role, Role::Standby);
    assert_eq!(sa.epoch, promoted.epoch);
    let archived: Vec<Lsn> = da
        .collisions()
        .unwrap()
        .iter()
        .map(|e| e.record.lsn)
        .collect();
    assert_eq!(
        archived, divergent,
        "the divergent writes are archived, not lost"
    );
    // Both sides report the collision until the archive is resolved.
    let fork = domsync_proto::repl::SyncStatus::Collision { fork: Lsn(20) };
    assert_eq!(a.node.follower_status(&dom()).unwrap().status, fork);
    let deadline = tokio::time::Instant::now() + GUARD;
    while b
        .node
        .sync_status(&dom())
        .iter()
        .find(|r| r.node == nid("a"))
        .map(|r| &r.status)
        != Some(&fork)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the active does not report the collision"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(da.get(b"key-0100").unwrap().value.is_none());
    assert!(matches!(
        a.node.write(&dom(), put(1)).await,
        Err(domsync_node::WriteError::NotServed { .. })
    ));
    // Re-applying an archived write on the new active makes it visible everywhere; then the
    // operator discards it from the archive.
    let archived = da.collisions().unwrap()[0].clone();
    let p = b
        .node
        .write(&dom(), archived.record.ops.clone())
        .await
        .unwrap();
    assert!(da.discard_collision(archived.id).unwrap());
    assert!(!da.discard_collision(archived.id).unwrap(), "already gone");
    assert_eq!(da.collisions().unwrap().len(), divergent.len() - 1);
    for rest in da.collisions().unwrap() {
        assert!(da.discard_collision(rest.id).unwrap());
    }
    assert_ne!(a.node.follower_status(&dom()).unwrap().status, fork);
    reach(&da, p.lsn).await;
    reach(&dc, p.lsn).await;
    assert!(da.get(b"key-0100").unwrap().value.is_some());
    assert_eq!(dc.status().unwrap().digest, db.status().unwrap().digest);
    assert_eq!(da.status().unwrap().digest, db.status().unwrap().digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_standbys_promoted_at_once_the_higher_epoch_wins_and_the_other_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, _da, db, dc) = cluster(dir.path()).await;
    for i in 0..10 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&db, Lsn(10)).await;
    reach(&dc, Lsn(10)).await;
    a.node.shutdown().await;
    // Both are promoted by force without asking each other: epochs (2, b) and (2, c).
    let pb = b
        .node
        .promote(&dom(), &[], config_for(&["a", "c"]), true)
        .await
        .unwrap();
    let pc = c
        .node
        .promote(&dom(), &[], config_for(&["a", "b"]), true)
        .await
        .unwrap();
    assert!(pc.epoch > pb.epoch);
    let on_b = b.node.write(&dom(), put(500)).await;
    // `c` announces (2, c) to `b`, which steps down and follows it; what `b` wrote in its
    // epoch is archived, not lost, and every lsn holds one record on both.
    let p = c.node.write(&dom(), put(600)).await.unwrap();
    reach(&db, p.lsn).await;
    let deadline = tokio::time::Instant::now() + GUARD;
    while db.status().unwrap().digest != dc.status().unwrap().digest {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b did not converge on c"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sb = db.status().unwrap();
    assert_eq!(
        (sb.role, sb.epoch.clone()),
        (Role::Standby, pc.epoch.clone())
    );
    assert_eq!(dc.status().unwrap().role, Role::Active);
    if on_b.is_ok() || matches!(on_b, Err(domsync_node::WriteError::Unconfirmed { .. })) {
        let archived: Vec<Epoch> = db
            .collisions()
            .unwrap()
            .into_iter()
            .map(|a| a.record.epoch)
            .collect();
        assert_eq!(archived, vec![pb.epoch.clone()]);
    }
    // Both logs from where both still hold records (retention trims what standbys hold).
    let from = sb.log_start.max(dc.status().unwrap().log_start);
    let lb = db.read_log(from, usize::MAX, usize::MAX).unwrap();
    let lc = dc.read_log(from, usize::MAX, usize::MAX).unwrap();
    assert_eq!(
        lb.iter().map(|e| &e.bytes).collect::<Vec<_>>(),
        lc.iter().map(|e| &e.bytes).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_under_write_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _c, da, db, dc) = cluster(dir.path()).await;
    for i in 0..20 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&db, Lsn(20)).await;
    // Writers keep writing to whoever they believe is active, following NotActive hints.
    let nodes = [("a", a.node.clone()), ("b", b.node.clone())];
    let writer = {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut target = 0;
            for i in 1000..1400 {
                loop {
                    match nodes[target].1.write(&dom(), put(i)).await {
                        Ok(p) => {
                            acked.push((i, p));
                            break;
                        }
                        Err(domsync_node::WriteError::Unconfirmed { position, .. }) => {
                            acked.push((i, position));
                            break;
                        }
                        // Not active (any more) here: the hint names the new active.
                        Err(_) => {
                            target = 1 - target;
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
            acked
        })
    };
    // Switch over in the middle of the load.
    reach(&da, Lsn(100)).await;
    let done = a
        .node
        .switchover(&dom(), &nid("b"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.epoch,
        Epoch {
            term: 2,
            node: nid("b")
        }
    );
    let acked = writer.await.unwrap();
    assert_eq!(acked.len(), 400);
    // Every acknowledged write is on the new active, and every replica converges.
    for (i, _) in &acked {
        assert!(
            db.get(format!("key-{i:04}").as_bytes())
                .unwrap()
                .value
                .is_some(),
            "write {i} lost"
        );
    }
    assert_eq!(db.status().unwrap().role, Role::Active);
    // `c` still dials `a`, which now refuses naming `b`: `c` follows `b` on its own.
    let end = db.status().unwrap().position.lsn;
    reach(&da, end).await;
    reach(&dc, end).await;
    assert_eq!(da.status().unwrap().role, Role::Standby);
    assert_eq!(da.status().unwrap().digest, db.status().unwrap().digest);
    assert_eq!(dc.status().unwrap().digest, db.status().unwrap().digest);
    assert!(da.collisions().unwrap().is_empty(), "nothing diverged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_comes_back_as_standby_and_nobody_follows_an_empty_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, da, db, _dc) = cluster(dir.path()).await;
    for i in 0..30 {
        a.node.write(&dom(), put(i)).await.unwrap();
    }
    reach(&db, Lsn(30)).await;
    let uid = da.status().unwrap().uid;

    // `b` loses its disk: it rejoins as a standby that never synchronized; it cannot be
    // promoted, and it takes no write, until its resync completes.
    b.node.unfollow(&dom());
    b.node.shutdown().await;
    drop(db);
    drop(b);
    std::fs::remove_dir_all(dir.path().join("b")).unwrap();
    let b = start(dir.path(), "b");
    b.node.set_peer(nid("a"), a.node.local_addr().unwrap());
    b.node.set_peer(nid("c"), c.node.local_addr().unwrap());
    let fresh = b.store.join_domain(&dom()).unwrap();
    assert!(matches!(
        fresh.put("x", "y"),
        Err(domsync_store::StoreError::NotActive { .. })
    ));
    assert!(
        fresh.promote().is_err(),
        "an empty replica is never promoted"
    );
    b.node.follow(fresh.clone(), nid("a"));
    reach(&fresh, Lsn(30)).await;
    assert_eq!(fresh.status().unwrap().uid, uid);
    assert_eq!(fresh.status().unwrap().digest, da.status().unwrap().digest);

    // `a` loses its disk and someone recreates the domain there: a new incarnation (new uid)
    // that the standby refuses to follow.
    a.node.shutdown().await;
    drop(da);
    drop(a);
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    let a = start(dir.path(), "a");
    // Only listed peers are served.
    a.node.set_peer(nid("b"), b.node.local_addr().unwrap());
    a.node.set_peer(nid("c"), c.node.local_addr().unwrap());
    let empty = a.store.create_domain(&dom()).unwrap();
    assert_ne!(empty.status().unwrap().uid, uid);
    a.node.serve_active(empty.clone(), config_for(&["b", "c"]));
    b.node.set_peer(nid("a"), a.node.local_addr().unwrap());
    b.node.follow(fresh.clone(), nid("a"));
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let report = b.node.follower_status(&dom()).unwrap();
        if report
            .last_error
            .as_ref()
            .is_some_and(|e| e.contains("another incarnation"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{report:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fresh.status().unwrap().position.lsn, Lsn(30));
    assert_eq!(fresh.status().unwrap().uid, uid);
}

/// A disk whose fsyncs wait while the gate is closed: a commit can be held in the middle.
#[derive(Debug, Default)]
struct Gate {
    closed: std::sync::atomic::AtomicBool,
    /// fsyncs waiting at the closed gate.
    waiting: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct GatedFile {
    file: redb::backends::FileBackend,
    gate: std::sync::Arc<Gate>,
}

#[derive(Debug)]
struct GatedDisk(std::sync::Arc<Gate>);

impl BackendFactory for GatedDisk {
    fn backend(&self, path: &Path) -> std::io::Result<Box<dyn redb::StorageBackend>> {
        let file =
            redb::backends::FileBackend::new(open_file(path)?).map_err(std::io::Error::other)?;
        Ok(Box::new(GatedFile {
            file,
            gate: self.0.clone(),
        }))
    }
}

impl redb::StorageBackend for GatedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.gate.closed.load(SeqCst) {
            self.gate.waiting.fetch_add(1, SeqCst);
            while self.gate.closed.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.gate.waiting.fetch_sub(1, SeqCst);
        }
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.file.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.file.close()
    }
}

/// Found by the torture test `partitions` (seed 16458350657125441115, round 58): a standby
/// that learns of a new active replaces its follower while the old one is still applying a
/// batch from the old, fenced active. If the new follower tells the new active its position
/// before that batch lands, the new active streams from there, the standby ends up holding a
/// record the new active never had, and nothing rewinds it while the new active is idle (the
/// replicas never converge). The new follower must start only once the old one is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_standby_neither_acknowledges_nor_applies_a_batch_of_the_old_active_in_flight() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    Deployment::nodes(dir.path(), &["a", "b", "c"]);
    let gate = std::sync::Arc::new(Gate::default());
    let (a, b) = (start(dir.path(), "a"), start(dir.path(), "b"));
    let c = start_with(
        dir.path(),
        "c",
        Some(std::sync::Arc::new(GatedDisk(gate.clone()))),
    );
    mesh(&[&a, &b, &c]);
    let da = a.store.create_domain(&dom()).unwrap();
    let mut config = config_for(&["b", "c"]);
    config.confirm_timeout = Duration::from_millis(300);
    a.node.serve_active(da.clone(), config);
    let db = b.store.join_domain(&dom()).unwrap();
    let dc = c.store.join_domain(&dom()).unwrap();
    b.node.follow(db.clone(), nid("a"));
    c.node.follow(dc.clone(), nid("a"));
    // Each replica's local configuration of the domain (who its replicas are).
    b.node.configure(&dom(), config_for(&["a", "c"]));
    c.node.configure(&dom(), config_for(&["a", "b"]));
    let mut last = Lsn::ZERO;
    for i in 0..20 {
        last = a.node.write(&dom(), put(i)).await.unwrap().lsn;
    }
    reach(&db, last).await;
    reach(&dc, last).await;

    // `b` stops following `a` (cut off).
    b.node.unfollow(&dom());
    tokio::time::timeout(GUARD, async {
        while a
            .node
            .sync_status(&dom())
            .iter()
            .any(|s| s.node == nid("b") && s.connected)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a did not notice b leaving");
    // `a`, not fenced yet, writes one more record; `c` is committing it when its disk stalls.
    gate.closed.store(true, SeqCst);
    let first = {
        let node = a.node.clone();
        tokio::spawn(async move { node.write(&dom(), put(20)).await })
    };
    tokio::time::timeout(GUARD, async {
        while gate.waiting.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("c did not start applying the record");
    // Meanwhile `b` is promoted and `c` learns of the new epoch (its durable record waits
    // behind the stalled commit; the fence holds at once).
    let epoch = db.promote().unwrap();
    let fencing = {
        let (dc, epoch) = (dc.clone(), epoch.clone());
        std::thread::spawn(move || dc.demote(&epoch))
    };
    tokio::time::timeout(GUARD, async {
        while dc.highest_epoch().unwrap() != epoch {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("c did not take the new epoch into account");
    // `a` writes another record, shipped to `c` while the first is still committing.
    let second = {
        let node = a.node.clone();
        tokio::spawn(async move { node.write(&dom(), put(21)).await })
    };
    gate.closed.store(false, SeqCst);
    fencing.join().unwrap().unwrap();
    // Neither write was acknowledged by `c`: the first committed before the fence but is not
    // acknowledged after it, the second is never applied (invariant 1).
    for w in [first, second] {
        assert!(
            matches!(
                w.await.unwrap(),
                Err(domsync_node::WriteError::Unconfirmed { .. })
            ),
            "a write of the fenced active was confirmed"
        );
    }
    assert!(a
        .node
        .sync_status(&dom())
        .iter()
        .all(|s| s.node != nid("c") || s.ack.durable <= last.next()));
    assert_eq!(dc.status().unwrap().position.lsn, last.next());

    // `c` follows the new active: its one record of the old epoch past the fork is archived
    // and it ends where `b` is.
    b.node.serve_active(db.clone(), config_for(&["a", "c"]));
    c.node.follow(dc.clone(), nid("b"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (here, there) = (dc.status().unwrap(), db.status().unwrap());
        if here.position == there.position
            && here.digest == there.digest
            && !dc.collisions().unwrap().is_empty()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "c at {} never rewound to b at {}",
            here.position,
            there.position
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(db.status().unwrap().position.lsn, last);
    let archived = dc.collisions().unwrap();
    assert_eq!(archived.len(), 1, "{archived:?}");
    assert_eq!(archived[0].record.lsn, last.next());
}
