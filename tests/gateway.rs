//! The gateway client library over real QUIC on loopback: reads from either role, watches
//! pushed from a standby, failover mid-watch without gaps or repeats, monotonic reads past a
//! lagging standby, the disk cache with every node down, and `domsync gateway` itself.
//!
//! No sleeps-and-hope: every wait is for a condition, bounded by [`GUARD`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use domsync_client::gateway::Cache;
use domsync_client::gateway::{Client, ClientConfig, Error, Origin, Update};
use domsync_net::PeerRole;
use domsync_node::{ActiveConfig, Node};
use domsync_proto::model::{CrlNumber, DomainId, HeldCrl, Lsn, Role, Version};
use domsync_proto::repl::{Durability, SyncStatus};
use domsync_store::{Domain, Store};
use tokio::time::timeout;

use domsync_testkit::cli::{domsync_cmd, run};
use domsync_testkit::cluster::{mesh, Deployment, TestNode, TEST_TICK};
use domsync_testkit::nid;
use domsync_testkit::pki::creds;

/// Hang guard only.
const GUARD: Duration = Duration::from_secs(60);

const GW: &str = "gw";

fn dom() -> DomainId {
    "tenant-1".parse().unwrap()
}

fn crl_der(n: u8) -> Vec<u8> {
    domsync_testkit::pki::fixture_crl(n)
}

fn issuer() -> String {
    HeldCrl::from_der(&crl_der(1)).unwrap().issuer.to_string()
}

fn number(n: u8) -> CrlNumber {
    CrlNumber::from_be_bytes(&[n])
}

/// Active `a` (local durability) and standbys following it; gateway `gw` granted everywhere.
struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<&'static str, Node>,
    replicas: BTreeMap<&'static str, Domain>,
    _stores: Vec<Store>,
}

/// Node `name` of the deployment, quick to give up on a peer that does not answer.
fn start_node(deployment: &Deployment, name: &str) -> TestNode {
    deployment.start_with(name, |config, _| {
        config.tick = TEST_TICK;
        config.connect_timeout = Duration::from_millis(500);
    })
}

async fn cluster(names: &[&'static str]) -> Cluster {
    cluster_with(names, &[]).await
}

/// As [`cluster`], except that the standbys in `never_synced` follow a node that does not
/// exist: they hold the domain, serve gateways, and never synchronize (lsn 0, like a replica
/// whose store was wiped and that has not caught up yet).
async fn cluster_with(names: &[&'static str], never_synced: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let mut certs: Vec<(PeerRole, &str)> = names.iter().map(|n| (PeerRole::Node, *n)).collect();
    certs.push((PeerRole::Gateway, GW));
    let deployment = Deployment::new(dir.path(), &certs);
    let started: Vec<TestNode> = names.iter().map(|n| start_node(&deployment, n)).collect();
    mesh(&started.iter().collect::<Vec<_>>());
    let mut nodes = BTreeMap::new();
    let mut stores = Vec::new();
    for (n, t) in names.iter().zip(started) {
        nodes.insert(*n, t.node);
        stores.push(t.store);
    }
    let mut replicas = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let store = &stores[i];
        let node = &nodes[n];
        if i == 0 {
            let d = store.create_domain(&dom()).unwrap();
            d.add_issuer(&domsync_testkit::pki::fixture_crl_issuer())
                .unwrap();
            let standbys = names[1..].iter().map(|s| nid(s)).collect();
            node.serve_active(d.clone(), ActiveConfig::new(Durability::Local, standbys));
            replicas.insert(*n, d);
        } else {
            let d = store.join_domain(&dom()).unwrap();
            let active = if never_synced.contains(n) {
                "ghost"
            } else {
                names[0]
            };
            node.follow(d.clone(), nid(active));
            replicas.insert(*n, d);
        }
        node.grant(&dom(), GW);
    }
    Cluster {
        dir,
        nodes,
        replicas,
        _stores: stores,
    }
}

impl Cluster {
    fn pki(&self) -> std::path::PathBuf {
        self.dir.path().join("pki")
    }

    fn addr(&self, n: &str) -> std::net::SocketAddr {
        self.nodes[n].local_addr().unwrap()
    }

    /// A client configuration for these nodes, in this order of preference (round trips on
    /// loopback are all in one step, so the order decides), with short timeouts.
    fn config(&self, order: &[&str]) -> ClientConfig {
        let nodes = order.iter().map(|n| (nid(n), self.addr(n))).collect();
        let mut c = ClientConfig::new(dom(), nodes, creds(&self.pki(), PeerRole::Gateway, GW));
        c.rtt_step = Duration::from_secs(10);
        c.connect_timeout = Duration::from_millis(500);
        c.request_timeout = Duration::from_secs(5);
        c.lag_wait = Duration::from_millis(300);
        c.recheck = Duration::from_secs(60);
        c.retry_min = Duration::from_millis(100);
        c
    }

    /// Installs a package on the active; returns its version.
    async fn install(&self, name: &str, content: Vec<u8>) -> Version {
        let active = self.replicas.values().next().unwrap().clone();
        let name = name.to_owned();
        let pos = tokio::task::spawn_blocking(move || active.install_policy(&name, content))
            .await
            .unwrap()
            .unwrap();
        Version {
            epoch: pos.epoch,
            lsn: pos.lsn,
        }
    }

    async fn put_crl(&self, n: u8) -> Lsn {
        let active = self.replicas.values().next().unwrap().clone();
        tokio::task::spawn_blocking(move || active.put_crl(&crl_der(n), true))
            .await
            .unwrap()
            .unwrap()
            .lsn
    }

    /// Waits until standby `n` reports itself synchronized with its active and connected to it.
    async fn synchronized(&self, n: &str) {
        let node = self.nodes[n].clone();
        timeout(GUARD, async move {
            loop {
                let report = node.follower_status(&dom());
                if report.is_some_and(|r| r.connected && r.status == SyncStatus::Synchronized) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the standby never reported itself synchronized");
    }

    async fn reach(&self, n: &str, lsn: Lsn) {
        let mut positions = self.replicas[n].subscribe();
        timeout(GUARD, positions.wait_for(|p| p.lsn >= lsn))
            .await
            .expect("replica did not reach the lsn in time")
            .unwrap();
    }
}

fn content(v: u32) -> Vec<u8> {
    format!("policy body, version {v}\n")
        .repeat(100)
        .into_bytes()
}

async fn next(watch: &mut domsync_client::gateway::Watch) -> Update {
    timeout(GUARD, watch.next())
        .await
        .expect("no update in time")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_a_policy_and_a_crl_from_the_active_and_from_a_standby() {
    let c = cluster(&["a", "b"]).await;
    let v1 = c.install("fw", content(1)).await;
    let lsn = c.put_crl(2).await;
    c.reach("b", lsn).await;
    // A standby vouches that an item does not exist only once synchronized.
    c.synchronized("b").await;

    for (node, role) in [("a", Role::Active), ("b", Role::Standby)] {
        let client = Client::new(c.config(&[node])).unwrap();
        let p = client.fetch("fw").await.unwrap();
        assert_eq!(p.info.stamp(), v1);
        assert_eq!(&p.content[..], &content(1)[..]);
        assert_eq!(p.origin, Origin::Fetched);
        assert_eq!((p.served.node.as_str(), p.served.role), (node, role));
        assert_eq!(p.served.position.lsn, lsn, "read at the node's position");
        assert_eq!(p.served.epoch.term, 1);

        let crl = client.crl(&issuer()).await.unwrap();
        assert_eq!(crl.crl.number, number(2));
        assert_eq!(crl.crl.der, crl_der(2));
        assert_eq!((crl.served.node.as_str(), crl.served.role), (node, role));
        assert_eq!(crl.served.position.lsn, lsn);

        let list = client.list_policies().await.unwrap();
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.served.role, role);
        let crls = client.list_crls().await.unwrap();
        assert_eq!(crls.items[0].number, number(2));

        // Asked again: the node confirms the held copy instead of sending it again.
        let again = client.fetch("fw").await.unwrap();
        assert_eq!(again.origin, Origin::Confirmed);
        assert_eq!(again.info.stamp(), v1);
        let again = client.crl(&issuer()).await.unwrap();
        assert_eq!(again.origin, Origin::Confirmed);

        // The issuer certificate that verified it is served too; the fixture CA has no delta.
        let issuers = client.issuers().await.unwrap();
        assert_eq!(issuers.items.len(), 1);
        assert_eq!(issuers.items[0].subject.to_string(), issuer());
        assert_eq!(issuers.served.role, role);
        let delta = client.delta_crl(&issuer()).await.unwrap_err();
        assert!(matches!(delta, Error::CrlNotFound { .. }), "{delta}");

        let missing = client.fetch("nope").await.unwrap_err();
        assert!(matches!(missing, Error::PolicyNotFound { .. }), "{missing}");
        assert_eq!(missing.to_string().lines().count(), 1);
    }

    // A refusal moves the client to the next node, and that request tells it which active
    // the gateway saw last (the split-brain guard's evidence).
    let client = Client::new(c.config(&["a", "b"])).unwrap();
    assert_eq!(client.fetch("fw").await.unwrap().served.node, nid("a"));
    c.nodes["a"].revoke(&dom(), GW);
    let p = client.fetch("fw").await.unwrap();
    assert_eq!((p.served.node.as_str(), p.origin), ("b", Origin::Confirmed));
    let sightings = c.nodes["b"].sightings(&dom());
    assert_eq!(sightings.len(), 1, "{sightings:?}");
    assert_eq!(sightings[0].active, nid("a"));
    assert_eq!(sightings[0].epoch.term, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_policy_reaches_a_gateway_watching_a_standby_without_polling() {
    let c = cluster(&["a", "b"]).await;
    // The client prefers the standby; its recheck interval (60 s) is far beyond the test, so
    // nothing is polled: every update below is pushed.
    let client = Client::new(c.config(&["b", "a"])).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("b")));
    let mut watch = client.watch(&["fw"], &[issuer().as_str()]).unwrap();

    let started = Instant::now();
    let v1 = c.install("fw", content(1)).await;
    let Update::Policy(p) = next(&mut watch).await else {
        panic!("expected a package")
    };
    assert_eq!(p.info.stamp(), v1);
    assert_eq!(
        (p.served.node.as_str(), p.served.role),
        ("b", Role::Standby)
    );
    assert_eq!(watch.node(), Some(nid("b")));

    for v in 2..=4 {
        let version = c.install("fw", content(v)).await;
        let Update::Policy(p) = next(&mut watch).await else {
            panic!("expected a package")
        };
        assert_eq!(p.info.stamp(), version);
        assert_eq!(&p.content[..], &content(v)[..]);
        assert_eq!(p.served.role, Role::Standby);
    }
    c.put_crl(1).await;
    let Update::Crl(crl) = next(&mut watch).await else {
        panic!("expected a CRL")
    };
    assert_eq!(
        (crl.crl.number.clone(), crl.served.role),
        (number(1), Role::Standby)
    );
    c.put_crl(2).await;
    let Update::Crl(crl) = next(&mut watch).await else {
        panic!("expected a CRL")
    };
    assert_eq!(crl.crl.number, number(2));
    assert!(started.elapsed() < Duration::from_secs(30));
    // The watch's stream never moved off the standby.
    assert_eq!(watch.node(), Some(nid("b")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_preferred_node_killed_mid_watch_the_client_continues_without_gaps_or_repeats() {
    let c = cluster(&["a", "b", "c"]).await;
    let client = Client::new(c.config(&["b", "c", "a"])).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("b")));
    let mut watch = client.watch(&["fw"], &[]).unwrap();

    let mut installed = Vec::new();
    let mut yielded = Vec::new();
    let mut served_by = Vec::new();
    // Before: three versions, each pushed by b.
    for v in 1..=3 {
        let version = c.install("fw", content(v)).await;
        installed.push(version);
        let Update::Policy(p) = next(&mut watch).await else {
            panic!("expected a package")
        };
        yielded.push(p.info.stamp());
        served_by.push(p.served.node.clone());
    }
    assert!(served_by.iter().all(|n| n == &nid("b")));

    // During: b is killed, and a version is installed while the client finds out.
    c.nodes["b"].shutdown().await;
    let version = c.install("fw", content(4)).await;
    installed.push(version);
    let Update::Policy(p) = next(&mut watch).await else {
        panic!("expected a package")
    };
    yielded.push(p.info.stamp());
    assert_eq!(p.served.node, nid("c"), "the next node in the order");
    assert_eq!(&p.content[..], &content(4)[..]);

    // After: more versions, from c.
    for v in 5..=7 {
        let version = c.install("fw", content(v)).await;
        installed.push(version);
        let Update::Policy(p) = next(&mut watch).await else {
            panic!("expected a package")
        };
        assert_eq!(p.served.node, nid("c"));
        yielded.push(p.info.stamp());
    }
    assert_eq!(yielded, installed, "every version, once, in order");
    assert!(
        yielded.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing"
    );
    // Nothing is repeated after the last version (bounded check).
    assert!(timeout(Duration::from_millis(500), watch.next())
        .await
        .is_err());
    // A fetch agrees and does not go backwards.
    let p = client.fetch("fw").await.unwrap();
    assert_eq!(p.info.stamp(), *installed.last().unwrap());
    assert_ne!(p.served.node, nid("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_returns_to_the_preferred_node_when_it_recovers() {
    let c = cluster(&["a", "b", "c"]).await;
    let mut config = c.config(&["b", "c", "a"]);
    config.recheck = Duration::from_millis(200);
    let client = Client::new(config).unwrap();
    client.measure().await;
    let mut watch = client.watch(&["fw"], &[]).unwrap();
    c.install("fw", content(1)).await;
    let Update::Policy(p) = next(&mut watch).await else {
        panic!("expected a package")
    };
    assert_eq!(p.served.node, nid("b"));

    // b refuses (grant withdrawn) and the connections drop: the watch moves to c.
    c.nodes["b"].revoke(&dom(), GW);
    client.close().await;
    let v2 = c.install("fw", content(2)).await;
    let Update::Policy(p) = next(&mut watch).await else {
        panic!("expected a package")
    };
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v2.clone(), "c"));

    // b recovers: within a few recheck intervals the watch is back on it.
    c.nodes["b"].grant(&dom(), GW);
    let deadline = Instant::now() + GUARD;
    let mut last = v2;
    let mut v = 3;
    loop {
        assert!(Instant::now() < deadline, "the watch never came back to b");
        let version = c.install("fw", content(v)).await;
        let Update::Policy(p) = next(&mut watch).await else {
            panic!("expected a package")
        };
        assert_eq!(p.info.stamp(), version);
        assert!(p.info.stamp() > last);
        last = p.info.stamp();
        v += 1;
        if p.served.node == nid("b") {
            break;
        }
        // Let a recheck tick pass before the next version (a condition: the watch is idle).
        let _ = timeout(Duration::from_millis(250), watch.next()).await;
    }
    assert_eq!(watch.node(), Some(nid("b")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_standby_is_skipped_or_waited_for_never_believed_over_a_newer_answer() {
    let c = cluster(&["a", "b"]).await;
    c.install("fw", content(1)).await;
    let lsn = c.put_crl(1).await;
    c.reach("b", lsn).await;
    // b stops following (it follows a node that does not exist): it keeps serving what it
    // has, and lags from now on.
    c.nodes["b"].unfollow(&dom());
    c.nodes["b"].follow(c.replicas["b"].clone(), nid("ghost"));
    let v2 = c.install("fw", content(2)).await;
    c.put_crl(2).await;

    // A gateway reads the new versions from the active; its cache remembers them.
    let cache = tempfile::tempdir().unwrap();
    let mut config = c.config(&["a"]);
    config.cache_dir = Some(cache.path().to_owned());
    let first = Client::new(config).unwrap();
    assert_eq!(first.fetch("fw").await.unwrap().info.stamp(), v2);
    assert_eq!(first.crl(&issuer()).await.unwrap().crl.number, number(2));

    // The same gateway restarted, preferring the lagging standby: b waits, answers Behind,
    // and the answer comes from a. Never version 1.
    let mut config = c.config(&["b", "a"]);
    config.cache_dir = Some(cache.path().to_owned());
    let client = Client::new(config.clone()).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("b")));
    let p = client.fetch("fw").await.unwrap();
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v2.clone(), "a"));
    assert_eq!(&p.content[..], &content(2)[..]);
    let crl = client.crl(&issuer()).await.unwrap();
    assert_eq!(
        (crl.crl.number.clone(), crl.served.node.as_str()),
        (number(2), "a")
    );
    let list = client.list_policies().await.unwrap();
    assert_eq!(list.served.node, nid("a"));
    assert_eq!(list.items[0].stamp(), v2);
    let crls = client.list_crls().await.unwrap();
    assert_eq!(crls.served.node, nid("a"));

    // With only the lagging standby to ask, the client keeps what it has (held, not b's).
    let mut only_b = c.config(&["b"]);
    only_b.cache_dir = Some(cache.path().to_owned());
    let lagging = Client::new(only_b.clone()).unwrap();
    let p = lagging.fetch("fw").await.unwrap();
    assert_eq!(p.info.stamp(), v2);
    assert!(matches!(p.origin, Origin::Held { .. }), "{:?}", p.origin);
    let crl = lagging.crl(&issuer()).await.unwrap();
    assert_eq!(crl.crl.number, number(2));
    assert!(matches!(crl.origin, Origin::Held { .. }));
    // A watch on the lagging standby yields nothing older either.
    let mut watch = lagging.watch(&["fw"], &[issuer().as_str()]).unwrap();
    assert!(timeout(Duration::from_millis(300), watch.next())
        .await
        .is_err());

    // Waited for: a request that may wait long enough is answered by b once it catches up.
    // The other clients leave b first, so that the patient one's connection can be seen.
    client.close().await;
    lagging.close().await;
    drop(watch);
    let b = c.nodes["b"].clone();
    let connections = |n: usize| {
        let b = b.clone();
        async move {
            while b.gateway_connections() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    timeout(GUARD, connections(0)).await.unwrap();
    only_b.lag_wait = Duration::from_secs(20);
    let patient = Client::new(only_b).unwrap();
    let asked = Instant::now();
    let fetch = tokio::spawn(async move { patient.fetch("fw").await });
    // Connected: the request follows on that connection at once; b is still behind.
    timeout(GUARD, connections(1)).await.unwrap();
    c.nodes["b"].unfollow(&dom());
    c.nodes["b"].follow(c.replicas["b"].clone(), nid("a"));
    let p = timeout(GUARD, fetch).await.unwrap().unwrap().unwrap();
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v2, "b"));
    assert_eq!(p.origin, Origin::Confirmed);
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "answered, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_node_down_a_fresh_client_returns_the_cached_copy_and_ignores_a_damaged_one() {
    let c = cluster(&["a"]).await;
    let v1 = c.install("fw", content(1)).await;
    let v2 = c.install("other", content(9)).await;
    c.put_crl(1).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = c.config(&["a"]);
    config.cache_dir = Some(cache.path().to_owned());
    let client = Client::new(config.clone()).unwrap();
    assert_eq!(client.fetch("fw").await.unwrap().info.stamp(), v1);
    assert_eq!(client.fetch("other").await.unwrap().info.stamp(), v2);
    client.crl(&issuer()).await.unwrap();
    drop(client);
    c.nodes["a"].shutdown().await;

    let fresh = Client::new(config.clone()).unwrap();
    let p = fresh.fetch("fw").await.unwrap();
    assert_eq!(p.info.stamp(), v1);
    assert_eq!(&p.content[..], &content(1)[..]);
    assert_eq!(p.served.node, nid("a"), "who served it then");
    let Origin::Held { why } = &p.origin else {
        panic!("expected the held copy, got {:?}", p.origin)
    };
    assert!(why.contains("a:"), "{why}");
    let crl = fresh.crl(&issuer()).await.unwrap();
    assert_eq!(crl.crl.number, number(1));
    assert!(matches!(crl.origin, Origin::Held { .. }));

    // A damaged cache file is ignored (no panic): no copy, a clear one-line error.
    let files = Cache::open(cache.path()).unwrap();
    let path = files.policy_path(&dom(), "fw");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(files.policy_path(&dom(), "other"), b"garbage").unwrap();
    let fresh = Client::new(config).unwrap();
    for name in ["fw", "other"] {
        let err = fresh.fetch(name).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        let msg = err.to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(msg.contains("check that the nodes run"), "{msg}");
    }
    // The CRL's file is intact.
    assert_eq!(fresh.crl(&issuer()).await.unwrap().crl.number, number(1));
}

fn domsync(args: Vec<String>) -> (i32, String, String) {
    let out = run(domsync_cmd(&args));
    (out.code, out.stdout, out.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_gateway_fetch_crl_and_list_against_a_running_node() {
    let c = cluster(&["a", "b"]).await;
    let v1 = c.install("fw", content(1)).await;
    let lsn = c.put_crl(2).await;
    c.reach("b", lsn).await;
    let out_file = c.dir.path().join("fw.bin");
    let common = |sub: &str| -> Vec<String> {
        vec![
            "gateway".into(),
            sub.into(),
            "--node".into(),
            format!("b={}", c.addr("b")),
            "--node".into(),
            format!("a={}", c.addr("a")),
            "--pki".into(),
            c.pki().display().to_string(),
            "--id".into(),
            GW.into(),
            "--domain".into(),
            dom().to_string(),
            "--cache".into(),
            c.dir.path().join("gw-cache").display().to_string(),
        ]
    };
    let mut fetch = common("fetch");
    fetch.extend(["fw".into(), "--out".into(), out_file.display().to_string()]);
    let (code, out, err) = tokio::task::spawn_blocking(move || domsync(fetch))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with(&format!("package=fw version={v1} size=")),
        "{out}"
    );
    assert!(
        out.contains(" role=standby ") || out.contains(" role=active "),
        "{out}"
    );
    assert!(out.contains(&format!(" position={lsn} ")), "{out}");
    assert!(out.trim_end().ends_with("origin=fetched"), "{out}");
    assert_eq!(std::fs::read(&out_file).unwrap(), content(1));

    let mut crl = common("crl");
    crl.push(issuer());
    let (code, out, err) = tokio::task::spawn_blocking(move || domsync(crl))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("crl issuer=") && out.contains(" number=2 "),
        "{out}"
    );

    let list = common("list");
    let (code, out, err) = tokio::task::spawn_blocking(move || domsync(list))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");

    let mut missing = common("fetch");
    missing.push("nope".into());
    let (code, _, err) = tokio::task::spawn_blocking(move || domsync(missing))
        .await
        .unwrap();
    assert_eq!(code, 4, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Every node down: the cached copy, marked as such; exit 0.
    for n in c.nodes.values() {
        n.shutdown().await;
    }
    let mut fetch = common("fetch");
    fetch.extend(["fw".into(), "--connect-timeout".into(), "0.3".into()]);
    let (code, out, err) = tokio::task::spawn_blocking(move || domsync(fetch))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.trim_end().ends_with("origin=held"), "{out}");
    assert!(err.contains("cached copy"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_share_one_endpoint_and_a_watch_refused_everywhere_reports_instead_of_spinning() {
    let c = cluster(&["a", "b"]).await;
    let v1 = c.install("fw", content(1)).await;
    c.reach("b", v1.lsn).await;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let one = Client::with_endpoint(c.config(&["a", "b"]), endpoint.clone()).unwrap();
    let two = Client::with_endpoint(c.config(&["b", "a"]), endpoint.clone()).unwrap();
    let (p1, p2) = tokio::join!(one.fetch("fw"), two.fetch("fw"));
    let (p1, p2) = (p1.unwrap(), p2.unwrap());
    assert_eq!(
        (p1.info.stamp(), p1.served.node.as_str()),
        (v1.clone(), "a")
    );
    assert_eq!((p2.info.stamp(), p2.served.node.as_str()), (v1, "b"));

    for n in c.nodes.values() {
        n.revoke(&dom(), GW);
    }
    let mut watch = one.watch(&["fw"], &[]).unwrap();
    let err = timeout(GUARD, watch.next()).await.unwrap().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("forbidden"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // Granted again: the same watch carries on.
    for n in c.nodes.values() {
        n.grant(&dom(), GW);
    }
    let v2 = c.install("fw", content(2)).await;
    let update = loop {
        match timeout(GUARD, watch.next()).await.unwrap() {
            Ok(u) => break u,
            Err(e) => assert!(e.to_string().contains("forbidden"), "{e}"),
        }
    };
    let Update::Policy(p) = update else {
        panic!("expected a package")
    };
    assert_eq!(p.info.stamp(), v2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_that_never_synchronized_is_asked_first_and_the_package_comes_from_another_node()
{
    // The finding: a replica whose store was wiped rejoined as standby at lsn 0 while the
    // active had installed the package; the gateway reached it first and was told the package
    // does not exist, and asked no other node.
    let c = cluster_with(&["a", "b", "c"], &["c"]).await;
    let v1 = c.install("fw", content(1)).await;
    let lsn = c.put_crl(1).await;
    c.reach("b", lsn).await;
    let report = c.nodes["c"].follower_status(&dom()).unwrap();
    assert_eq!(report.status, SyncStatus::NeverSynchronized);
    assert_eq!(c.replicas["c"].status().unwrap().position.lsn, Lsn::ZERO);

    let client = Client::new(c.config(&["c", "b", "a"])).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("c")), "c is asked first");
    let p = client.fetch("fw").await.unwrap();
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v1.clone(), "b"));
    assert_eq!(&p.content[..], &content(1)[..]);
    assert_eq!(p.origin, Origin::Fetched);
    let crl = client.crl(&issuer()).await.unwrap();
    assert_eq!(
        (crl.crl.number.clone(), crl.served.node.as_str()),
        (number(1), "b")
    );
    // Lists: c's (empty) list is not taken for the domain's.
    let fresh = Client::new(c.config(&["c", "b", "a"])).unwrap();
    fresh.measure().await;
    let list = fresh.list_policies().await.unwrap();
    assert_ne!(list.served.node, nid("c"));
    assert_eq!(list.items.len(), 1);
    let crls = fresh.list_crls().await.unwrap();
    assert_ne!(crls.served.node, nid("c"));
    assert_eq!(crls.items.len(), 1);

    // A package nobody holds is still "not found", from a node that can vouch for it.
    let missing = client.fetch("nope").await.unwrap_err();
    let Error::PolicyNotFound { served, .. } = &missing else {
        panic!("expected not found, got {missing}")
    };
    assert_ne!(served.node, nid("c"), "{missing}");
    assert_eq!(served.position.lsn, lsn, "{missing}");
    let msg = missing.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(!msg.contains("could not be asked"), "{msg}");

    // The same from the shell, nodes in the order of the finding: exit 0, served by a node that
    // holds the package.
    let out_file = c.dir.path().join("fw.bin");
    let args = vec![
        "gateway".into(),
        "fetch".into(),
        "fw".into(),
        "--node".into(),
        format!("c={}", c.addr("c")),
        "--node".into(),
        format!("b={}", c.addr("b")),
        "--node".into(),
        format!("a={}", c.addr("a")),
        "--pki".into(),
        c.pki().display().to_string(),
        "--id".into(),
        GW.into(),
        "--domain".into(),
        dom().to_string(),
        "--out".into(),
        out_file.display().to_string(),
    ];
    let (code, out, err) = tokio::task::spawn_blocking(move || domsync(args))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    // The command ranks nodes by measured round trip (5 ms steps), so which synchronized node
    // serves depends on the machine's load; never the standby that holds nothing.
    assert!(
        !out.contains(" node=c ") && (out.contains(" node=b ") || out.contains(" node=a ")),
        "{out}"
    );
    assert_eq!(std::fs::read(&out_file).unwrap(), content(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_that_stopped_following_never_says_a_newer_package_does_not_exist() {
    let c = cluster(&["a", "b"]).await;
    let v1 = c.install("fw", content(1)).await;
    c.reach("b", v1.lsn).await;
    // b loses its active (it follows a node that does not exist) and misses a new package.
    c.nodes["b"].unfollow(&dom());
    c.nodes["b"].follow(c.replicas["b"].clone(), nid("ghost"));
    let v2 = c.install("fresh", content(2)).await;
    assert!(!c.nodes["b"].follower_status(&dom()).unwrap().connected);

    // A client that never saw `fresh` (nothing tells it b is behind) asks b first.
    let client = Client::new(c.config(&["b", "a"])).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("b")));
    let p = client.fetch("fresh").await.unwrap();
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v2, "a"));
    assert_eq!(&p.content[..], &content(2)[..]);

    // With only b to ask: b still serves what it holds, and says it is behind rather than
    // that `fresh` does not exist.
    let only_b = Client::new(c.config(&["b"])).unwrap();
    let p = only_b.fetch("fw").await.unwrap();
    assert_eq!((p.info.stamp(), p.served.node.as_str()), (v1, "b"));
    let err = only_b.fetch("fresh").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("b: behind"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_package_no_node_holds_is_not_found_at_the_highest_position_naming_nodes_not_asked() {
    let c = cluster(&["a", "b", "c"]).await;
    let v1 = c.install("fw", content(1)).await;
    for n in ["b", "c"] {
        c.reach(n, v1.lsn).await;
        c.synchronized(n).await;
    }
    let client = Client::new(c.config(&["c", "b", "a"])).unwrap();
    client.measure().await;
    assert_eq!(client.preferred(), Some(nid("c")));
    let err = client.fetch("nope").await.unwrap_err();
    let Error::PolicyNotFound {
        domain,
        name,
        served,
        ..
    } = &err
    else {
        panic!("expected not found, got {err}")
    };
    assert_eq!((domain, name.as_str()), (&dom(), "nope"));
    // Every node is at the same position: the first asked is named.
    assert_eq!(
        (served.node.as_str(), served.role, served.position.lsn),
        ("c", Role::Standby, v1.lsn)
    );
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("package nope does not exist in domain tenant-1 (node c, standby, lsn"),
        "{msg}"
    );
    assert!(!msg.contains("could not be asked"), "{msg}");
    let err = client.crl("CN=Nobody").await.unwrap_err();
    assert!(matches!(err, Error::CrlNotFound { .. }), "{err}");

    // One node down: still "not found" from the others, naming the node that could not be
    // asked.
    c.nodes["b"].shutdown().await;
    let client = Client::new(c.config(&["c", "b", "a"])).unwrap();
    client.measure().await;
    let err = client.fetch("nope").await.unwrap_err();
    assert!(matches!(err, Error::PolicyNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("node b could not be asked"), "{msg}");
    // And an existing package is still found.
    assert_eq!(client.fetch("fw").await.unwrap().info.stamp(), v1);
}

/// A gateway whose certificate comes from another CA: the error names the certificate problem
/// (as the admin CLI does), not only "the last attempt failed 0 ms ago".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_with_a_certificate_from_another_ca_is_told_the_tls_reason() {
    let c = cluster(&["a"]).await;
    let other = tempfile::tempdir().unwrap();
    domsync_testkit::pki::init_pki(other.path(), &[(PeerRole::Gateway, GW)]);
    let mut config = c.config(&["a"]);
    config.credentials = creds(other.path(), PeerRole::Gateway, GW);
    let client = Client::new(config).unwrap();
    let err = timeout(GUARD, client.fetch("fw"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(!msg.contains("the last attempt failed"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");
}
