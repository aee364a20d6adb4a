//! In-process clusters: each node is a store and a QUIC [`Node`] on loopback, in one
//! directory, with certificates from one deployment CA. Tests, benches and the load generator
//! build their topologies from these pieces instead of each keeping its own builder.
//!
//! ```no_run
//! # async fn demo() {
//! use domsync_node::ActiveConfig;
//! use domsync_proto::repl::Durability;
//! use domsync_testkit::cluster::{nid, reach, replicated, Deployment};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let deployment = Deployment::nodes(dir.path(), &["a", "b"]);
//! let domain = "tenant-1".parse().unwrap();
//! let config = ActiveConfig::new(Durability::Standby, vec![nid("b")]);
//! let c = replicated(&deployment, &domain, "a", &["b"], config, |_, _| {});
//! let position = c.nodes[0].node.write(&domain, vec![]).await.unwrap();
//! reach(&c.standbys[0], position.lsn).await;
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domsync_net::{pki, Credentials, PeerRole};
use domsync_node::{ActiveConfig, Node, NodeConfig};
use domsync_proto::model::{DomainId, Lsn, NodeId};
use domsync_store::{Domain, Store, StoreOptions};

pub use crate::poll::GUARD;

/// The tick of test nodes: timers (retries, heartbeats) fire in tens of milliseconds.
pub const TEST_TICK: Duration = Duration::from_millis(20);

/// A node id (panics on an invalid one: test input).
pub fn nid(name: &str) -> NodeId {
    NodeId::new(name).unwrap_or_else(|e| panic!("node id {name:?}: {e}"))
}

/// A deployment: a CA and certificates in `<dir>/pki`, and one state directory per node
/// under `dir`.
#[derive(Debug, Clone)]
pub struct Deployment {
    dir: PathBuf,
    pki: PathBuf,
}

impl Deployment {
    /// A CA and a certificate (30 days) for each `(role, name)`.
    pub fn new(dir: &Path, certs: &[(PeerRole, &str)]) -> Deployment {
        let pki_dir = dir.join("pki");
        crate::pki::init_pki(&pki_dir, certs);
        Deployment {
            dir: dir.to_path_buf(),
            pki: pki_dir,
        }
    }

    /// The deployment already made in `dir` (by [`Deployment::new`]).
    pub fn existing(dir: &Path) -> Deployment {
        Deployment {
            dir: dir.to_path_buf(),
            pki: dir.join("pki"),
        }
    }

    /// A CA and node certificates for `nodes`.
    pub fn nodes(dir: &Path, nodes: &[&str]) -> Deployment {
        let certs: Vec<(PeerRole, &str)> = nodes.iter().map(|n| (PeerRole::Node, *n)).collect();
        Deployment::new(dir, &certs)
    }

    /// Issues one more certificate (30 days) from the deployment's CA.
    pub fn issue(&self, role: PeerRole, name: &str) {
        pki::issue(&self.pki, role, name, &self.pki, 30)
            .unwrap_or_else(|e| panic!("certificate of {role} {name}: {e}"));
    }

    /// The PKI directory (`ca.pem`, `<role>-<id>.pem`/`.key`).
    pub fn pki(&self) -> &Path {
        &self.pki
    }

    /// The directory holding the nodes' state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The credentials of `name` in `role`.
    pub fn credentials(&self, role: PeerRole, name: &str) -> Credentials {
        crate::pki::creds(&self.pki, role, name)
    }

    /// Starts node `name` on an ephemeral loopback port with a [`TEST_TICK`] and no peers.
    pub fn start(&self, name: &str) -> TestNode {
        self.start_with(name, |config, _| config.tick = TEST_TICK)
    }

    /// Starts node `name` on an ephemeral loopback port with no peers and the node's and
    /// store's defaults, changed by `adjust` before they start.
    pub fn start_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut NodeConfig, &mut StoreOptions),
    ) -> TestNode {
        let mut options = StoreOptions::new(nid(name));
        let loopback: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = NodeConfig::new(
            loopback,
            self.credentials(PeerRole::Node, name),
            BTreeMap::new(),
        );
        adjust(&mut config, &mut options);
        let store = Store::open(self.dir.join(name), options)
            .unwrap_or_else(|e| panic!("store of {name}: {e}"));
        let node = Node::start(config).unwrap_or_else(|e| panic!("node {name}: {e}"));
        TestNode {
            name: nid(name),
            node,
            store,
        }
    }
}

/// One node of an in-process cluster.
#[derive(Debug)]
pub struct TestNode {
    /// Its id.
    pub name: NodeId,
    /// The QUIC node.
    pub node: Node,
    /// Its store.
    pub store: Store,
}

impl TestNode {
    /// Its UDP address.
    pub fn addr(&self) -> SocketAddr {
        self.node
            .local_addr()
            .unwrap_or_else(|e| panic!("address of {}: {e}", self.name))
    }
}

/// Makes every node a peer of every other.
pub fn mesh(nodes: &[&TestNode]) {
    for x in nodes {
        for y in nodes {
            if x.name != y.name {
                x.node.set_peer(y.name.clone(), y.addr());
            }
        }
    }
}

/// A domain replicated over in-process nodes: the active first.
#[derive(Debug)]
pub struct Replicated {
    /// The nodes: the active's first, then the standbys' in the order given.
    pub nodes: Vec<TestNode>,
    /// The active replica.
    pub active: Domain,
    /// The standby replicas, in the order given.
    pub standbys: Vec<Domain>,
}

/// Starts `active` and `standbys` (all peers of each other), creates `domain` on `active`
/// and serves it there with `config`, and has every standby join and follow it. Each standby
/// is configured with the domain's replicas (every other node), as a daemon would. `adjust`
/// changes each node's settings before it starts.
pub fn replicated(
    deployment: &Deployment,
    domain: &DomainId,
    active: &str,
    standbys: &[&str],
    config: ActiveConfig,
    adjust: impl Fn(&mut NodeConfig, &mut StoreOptions),
) -> Replicated {
    let mut nodes = vec![deployment.start_with(active, &adjust)];
    for s in standbys {
        nodes.push(deployment.start_with(s, &adjust));
    }
    mesh(&nodes.iter().collect::<Vec<_>>());
    let primary = nodes[0]
        .store
        .create_domain(domain)
        .unwrap_or_else(|e| panic!("create {domain} on {active}: {e}"));
    nodes[0].node.serve_active(primary.clone(), config.clone());
    let mut replicas = Vec::new();
    for n in &nodes[1..] {
        let d = n
            .store
            .join_domain(domain)
            .unwrap_or_else(|e| panic!("join {domain} on {}: {e}", n.name));
        n.node.follow(d.clone(), nid(active));
        let others: Vec<NodeId> = nodes
            .iter()
            .filter(|m| m.name != n.name)
            .map(|m| m.name.clone())
            .collect();
        let mut local = config.clone();
        local.standbys = others;
        n.node.configure(domain, local);
        replicas.push(d);
    }
    Replicated {
        nodes,
        active: primary,
        standbys: replicas,
    }
}

/// Waits until `domain` holds `lsn` (woken by each commit or apply, never polled).
pub async fn reach(domain: &Domain, lsn: Lsn) {
    let mut positions = domain.subscribe();
    tokio::time::timeout(GUARD, positions.wait_for(|p| p.lsn >= lsn))
        .await
        .unwrap_or_else(|_| panic!("{} did not reach lsn {lsn} within {GUARD:?}", domain.id()))
        .unwrap_or_else(|e| panic!("{} closed: {e}", domain.id()));
}

/// Waits until `f` holds, looking again every 10 ms (for state that has no channel).
pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not reached within {GUARD:?}"));
}
