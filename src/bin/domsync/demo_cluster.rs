//! The replication part of `domsync demo`: one active and two standbys of the demo domain on
//! loopback, each a node with its own store and certificate from a throwaway deployment CA.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use domsync::model::{DomainId, Lsn, NodeId, Op};
use domsync::net::{pki, Identity, PeerRole, TlsFiles};
use domsync::node::{ActiveConfig, Node, NodeConfig};
use domsync::repl::{Durability, SyncStatus};
use domsync::store::{Domain, Store, StoreOptions};

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How long the demo waits for a standby before saying it failed.
const PATIENCE: Duration = Duration::from_secs(30);

struct DemoNode {
    node: Node,
    domain: Domain,
}

fn start_node(pki_dir: &Path, name: &str, domain: Domain) -> DemoResult<Node> {
    let creds = TlsFiles::in_dir(pki_dir, &Identity::new(PeerRole::Node, name)?).load()?;
    let config = NodeConfig::new("127.0.0.1:0".parse()?, creds, BTreeMap::new());
    let node = Node::start(config)?;
    drop(domain);
    Ok(node)
}

async fn wait_for(domain: &Domain, lsn: Lsn) -> DemoResult<()> {
    let mut positions = domain.subscribe();
    tokio::time::timeout(PATIENCE, positions.wait_for(|p| p.lsn >= lsn))
        .await
        .map_err(|_| {
            format!(
                "standby of {} did not reach lsn {lsn} within {PATIENCE:?}",
                domain.id()
            )
        })??;
    Ok(())
}

/// Gives the standbys' acknowledgements a moment to reach the active (bounded).
async fn wait_synced(active: &Node, id: &DomainId) {
    let deadline = Instant::now() + PATIENCE;
    while !active
        .sync_status(id)
        .iter()
        .all(|r| r.status == SyncStatus::Synchronized)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn show_status(active: &Node, id: &DomainId) {
    for r in active.sync_status(id) {
        println!(
            "  standby {:<7} {}  (durable lsn {})",
            r.node.to_string(),
            r.status,
            r.ack.durable
        );
    }
}

/// Runs the cluster part of the demo on `active_domain` (already holding the walkthrough's
/// records), under `dir`.
pub fn run(dir: &Path, active_store: &Store, active_domain: &Domain) -> DemoResult<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cluster(dir, active_store, active_domain))
}

async fn cluster(dir: &Path, active_store: &Store, active_domain: &Domain) -> DemoResult<()> {
    let id = active_domain.id().clone();
    let active_name = active_store.node().to_string();
    println!("\n== replication: active {active_name} and standbys node-b, node-c on loopback (mutual TLS, QUIC)");
    let pki_dir = dir.join("pki");
    if !pki_dir.join(pki::CA_CERT_FILE).exists() {
        pki::init_ca(&pki_dir)?;
        for n in [active_name.as_str(), "node-b", "node-c"] {
            pki::issue(
                &pki_dir,
                PeerRole::Node,
                n,
                &pki_dir,
                pki::DEFAULT_LEAF_DAYS,
            )?;
        }
    }
    let active = start_node(&pki_dir, &active_name, active_domain.clone())?;
    let standby_ids = vec![NodeId::new("node-b")?, NodeId::new("node-c")?];
    active.serve_active(
        active_domain.clone(),
        ActiveConfig::new(Durability::Standby, standby_ids.clone()),
    );
    let mut standbys = Vec::new();
    for n in &standby_ids {
        let store = Store::open(dir.join(n.as_str()), StoreOptions::new(n.clone()))?;
        let domain = match store.domain(&id) {
            Ok(d) => d,
            Err(_) => store.join_domain(&id)?,
        };
        let node = start_node(&pki_dir, n.as_str(), domain.clone())?;
        node.set_peer(NodeId::new(&active_name)?, active.local_addr()?);
        node.follow(domain.clone(), NodeId::new(&active_name)?);
        standbys.push(DemoNode { node, domain });
    }

    println!("\n== 2000 writes from 32 concurrent writers, durability `standby` (acknowledged after a standby's fsync)");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..32u32 {
        let node = active.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..(2000 / 32 + 1) {
                let ops = vec![Op::Put {
                    key: format!("app/{t:02}/{i:03}").into_bytes(),
                    value: vec![b'v'; 100],
                }];
                node.write(&id, ops).await?;
            }
            Ok::<(), domsync::node::WriteError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let end = active_domain.status()?;
    println!(
        "committed up to lsn {} in {:.2} s ({:.0} writes/s)",
        end.position.lsn,
        elapsed.as_secs_f64(),
        2016.0 / elapsed.as_secs_f64()
    );
    for s in &standbys {
        wait_for(&s.domain, end.position.lsn).await?;
    }
    wait_synced(&active, &id).await;
    show_status(&active, &id);

    println!("\n== cut node-b's connection, write 200 more, node-b resumes from its log position");
    let resyncs_before = standbys[0]
        .node
        .follower_status(&id)
        .map_or(0, |r| r.resyncs);
    standbys[0]
        .node
        .disconnect(&NodeId::new(&active_name)?)
        .await;
    for i in 0..200 {
        active
            .write(
                &id,
                vec![Op::Put {
                    key: format!("after-cut/{i:03}").into_bytes(),
                    value: b"x".to_vec(),
                }],
            )
            .await?;
    }
    let end = active_domain.status()?;
    for s in &standbys {
        wait_for(&s.domain, end.position.lsn).await?;
    }
    let report = standbys[0].node.follower_status(&id);
    let resyncs = report.as_ref().map_or(0, |r| r.resyncs) - resyncs_before;
    println!(
        "node-b caught up to lsn {} with {resyncs} snapshot(s) after the cut",
        end.position.lsn
    );

    println!("\n== every replica at the same lsn has the same content digest");
    println!(
        "  {active_name:<8} lsn {}  digest {}",
        end.position.lsn, end.digest
    );
    let mut consistent = true;
    for (n, s) in standby_ids.iter().zip(&standbys) {
        let st = s.domain.status()?;
        let clean = s.domain.verify()?.is_clean();
        println!(
            "  {:<8} lsn {}  digest {}  verify {}",
            n.to_string(),
            st.position.lsn,
            st.digest,
            if clean { "clean" } else { "FAULTS" }
        );
        consistent &= st.digest == end.digest && st.position == end.position && clean;
    }
    wait_synced(&active, &id).await;
    show_status(&active, &id);
    for s in &standbys {
        s.node.shutdown().await;
    }
    active.shutdown().await;
    if !consistent {
        return Err("a standby differs from the active".into());
    }
    println!("replicas consistent.");
    Ok(())
}
