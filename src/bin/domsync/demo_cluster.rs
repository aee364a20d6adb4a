//! The cluster part of `domsync demo`: three daemons on loopback, each with its own
//! configuration, store and certificate from a throwaway deployment CA; six domains whose
//! actives are spread over the three; writes, a policy install, a gateway reading from a
//! standby, a switchover, and a forced failover with the old active rejoining.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_client::gateway::{Client, ClientConfig};
use domsync_daemon::{Config, Daemon, Placement};
use domsync_net::{pki, Identity, PeerRole, TlsFiles};
use domsync_proto::model::{DomainId, NodeId, Op, Role};
use domsync_proto::repl::SyncStatus;

type DemoResult<T> = Result<T, Box<dyn std::error::Error>>;

/// How long the demo waits for the cluster before saying it failed.
const PATIENCE: Duration = Duration::from_secs(60);

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
const DOMAINS: [&str; 6] = [
    "tenant-1", "tenant-2", "tenant-3", "tenant-4", "tenant-5", "tenant-6",
];

/// Runs the cluster demo under `dir`.
pub fn run(dir: &Path) -> DemoResult<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cluster(dir))
}

fn free_udp_port() -> DemoResult<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The configuration of node `me`: every node a peer, every domain on all three, primaries
/// taking turns so the actives are spread.
fn config_text(dir: &Path, me: &str, ports: &BTreeMap<&str, u16>) -> String {
    let pki = dir.join("pki");
    let mut t = format!(
        "[node]\nid = \"{me}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"{}\"\n\n\
         [tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/node-{me}.pem\"\nkey = \"{p}/node-{me}.key\"\n\n\
         [limits]\nconfirm_timeout_ms = 2000\nguard_window_ms = 1000\n\n\
         [apps]\nsocket = \"{}\"\n",
        dir.join(me).display(),
        ports[me],
        dir.join(format!("{me}.sock")).display(),
        dir.join(format!("{me}-app.sock")).display(),
        p = pki.display(),
    );
    for peer in NODES.iter().filter(|n| **n != me) {
        let _ = write!(
            t,
            "\n[[peers]]\nid = \"{peer}\"\naddress = \"127.0.0.1:{}\"\n",
            ports[peer]
        );
    }
    for (i, d) in DOMAINS.iter().enumerate() {
        let replicas: Vec<String> = (0..3)
            .map(|k| format!("\"{}\"", NODES[(i + k) % 3]))
            .collect();
        let _ = write!(
            t,
            "\n[[domains]]\nname = \"{d}\"\nreplicas = [{}]\ndurability = \"standby\"\ngateways = [\"gw-1\"]\n",
            replicas.join(", ")
        );
    }
    t
}

async fn start(dir: &Path, me: &str) -> DemoResult<Arc<Daemon>> {
    let path = dir.join(format!("{me}.toml"));
    let config = Config::load(&path)?;
    Ok(Daemon::start(config).await?)
}

/// Prints one line per domain and replica across the running daemons.
fn table(title: &str, daemons: &[&Arc<Daemon>]) {
    println!("\n== {title}");
    println!(
        "{:<10} {:<8} {:<8} {:<10} {:>5}  sync",
        "domain", "node", "role", "epoch", "lsn"
    );
    let reports: Vec<_> = daemons.iter().map(|d| d.status()).collect();
    for d in DOMAINS {
        for r in &reports {
            let Some(rep) = r.domains.iter().find(|x| x.domain.as_str() == d) else {
                continue;
            };
            let Some(replica) = &rep.replica else {
                println!("{d:<10} {:<8} {:?}", r.node.to_string(), rep.placement);
                continue;
            };
            let sync = if replica.role == Role::Active {
                rep.standbys
                    .iter()
                    .map(|s| format!("{} {}", s.node, s.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                rep.follower.as_ref().map_or_else(String::new, |f| {
                    format!("follows {}: {}", f.active, f.status)
                })
            };
            let collisions = if rep.collisions > 0 {
                format!("  [{} archived]", rep.collisions)
            } else {
                String::new()
            };
            println!(
                "{d:<10} {:<8} {:<8} {:<10} {:>5}  {sync}{collisions}",
                r.node.to_string(),
                replica.role.to_string(),
                replica.epoch.to_string(),
                replica.position.lsn.to_string(),
            );
        }
    }
}

/// The daemon where `domain` is active now.
fn active_of<'a>(daemons: &[&'a Arc<Daemon>], domain: &DomainId) -> Option<&'a Arc<Daemon>> {
    daemons.iter().copied().find(|d| {
        d.node()
            .replica(domain)
            .and_then(|r| r.status().ok())
            .is_some_and(|s| s.role == Role::Active)
    })
}

/// Waits until every domain has one active and every replica holds the active's exact state.
async fn converge(daemons: &[&Arc<Daemon>]) -> DemoResult<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut done = true;
        for d in DOMAINS {
            let id: DomainId = d.parse()?;
            let states: Vec<_> = daemons
                .iter()
                .map(|x| x.node().replica(&id).and_then(|r| r.status().ok()))
                .collect();
            let actives = states
                .iter()
                .flatten()
                .filter(|s| s.role == Role::Active)
                .count();
            let first = states.first().cloned().flatten();
            let same = states.iter().all(|s| {
                matches!((s, &first), (Some(s), Some(f)) if s.position == f.position && s.digest == f.digest)
            });
            let active = active_of(daemons, &id).map(|x| x.node().id().clone());
            let synced = daemons.iter().all(|x| {
                x.node().follower_status(&id).is_none_or(|f| {
                    f.status == SyncStatus::Synchronized && Some(&f.active) == active.as_ref()
                })
            });
            done &= actives == 1 && same && synced;
        }
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the cluster did not converge in time".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster(dir: &Path) -> DemoResult<()> {
    println!("\n== cluster: three daemons on loopback, six domains (mutual TLS, QUIC)");
    // A fresh cluster every run.
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    crate::create_private_dir(dir)?;
    let pki_dir = dir.join("pki");
    pki::init_ca(&pki_dir)?;
    for n in NODES {
        pki::issue(
            &pki_dir,
            PeerRole::Node,
            n,
            &pki_dir,
            pki::DEFAULT_LEAF_DAYS,
        )?;
    }
    pki::issue(
        &pki_dir,
        PeerRole::Gateway,
        "gw-1",
        &pki_dir,
        pki::DEFAULT_LEAF_DAYS,
    )?;
    let mut ports = BTreeMap::new();
    for n in NODES {
        ports.insert(n, free_udp_port()?);
    }
    for n in NODES {
        crate::write_private(
            &dir.join(format!("{n}.toml")),
            config_text(dir, n, &ports).as_bytes(),
        )?;
    }
    let a = start(dir, NODES[0]).await?;
    let b = start(dir, NODES[1]).await?;
    let mut c = start(dir, NODES[2]).await?;
    converge(&[&a, &b, &c]).await?;
    table(
        "six domains, actives spread over three nodes",
        &[&a, &b, &c],
    );

    // Writes on each domain's active, confirmed by a standby; a policy package on tenant-1.
    for d in DOMAINS {
        let id: DomainId = d.parse()?;
        let active = active_of(&[&a, &b, &c], &id).ok_or("no active")?;
        active
            .node()
            .write(
                &id,
                vec![Op::Put {
                    key: b"ntp/server".to_vec(),
                    value: b"10.0.0.1".to_vec(),
                }],
            )
            .await?;
    }
    let t1: DomainId = DOMAINS[0].parse()?;
    let active = active_of(&[&a, &b, &c], &t1).ok_or("no active")?;
    active
        .node()
        .write(
            &t1,
            vec![Op::InstallPolicy {
                name: "edge".into(),
                content: b"allow tcp/443 from any".to_vec(),
            }],
        )
        .await?;
    converge(&[&a, &b, &c]).await?;
    table(
        "after a write on every domain and a policy install on tenant-1",
        &[&a, &b, &c],
    );

    // A gateway prefers a standby of tenant-1 and reads the package there.
    let standby = [&a, &b, &c]
        .into_iter()
        .find(|d| d.node().follower_status(&t1).is_some())
        .ok_or("no standby")?;
    let creds = TlsFiles::in_dir(&pki_dir, &Identity::new(PeerRole::Gateway, "gw-1")?).load()?;
    let mut nodes = vec![(standby.node().id().clone(), standby.node().local_addr()?)];
    for d in [&a, &b, &c] {
        if d.node().id() != standby.node().id() {
            nodes.push((d.node().id().clone(), d.node().local_addr()?));
        }
    }
    let mut gw = ClientConfig::new(t1.clone(), nodes, creds);
    gw.rtt_step = Duration::from_secs(1);
    let client = Client::new(gw)?;
    let package = client.fetch("edge").await?;
    println!(
        "\n== gateway gw-1 read package edge (version {}, {} bytes) from {} ({}) at lsn {}",
        package.info.version,
        package.content.len(),
        package.served.node,
        package.served.role,
        package.served.position.lsn
    );

    // Planned switchover of tenant-1 to that standby.
    let to = standby.node().id().clone();
    let s = active
        .node()
        .switchover(&t1, &to, Duration::from_secs(10))
        .await?;
    converge(&[&a, &b, &c]).await?;
    table(
        &format!(
            "switchover of tenant-1 to {to}: writes paused {:.1} ms",
            s.pause.as_secs_f64() * 1e3
        ),
        &[&a, &b, &c],
    );

    // node-c is lost; its domains are promoted elsewhere (forced: it cannot be asked), and
    // node-c comes back, steps down and follows.
    println!("\n== {} stops", NODES[2]);
    c.shutdown().await;
    drop(c);
    // The operator knows node-c is down: the guard asks the others only.
    let peers: Vec<NodeId> = NODES[..2]
        .iter()
        .map(|n| NodeId::new(*n))
        .collect::<Result<_, _>>()?;
    for d in DOMAINS {
        let id: DomainId = d.parse()?;
        if active_of(&[&a, &b], &id).is_some() {
            continue;
        }
        let target = [&a, &b]
            .into_iter()
            .find(|x| x.node().follower_status(&id).is_some())
            .ok_or("no standby left")?;
        let dc = target
            .config()
            .domains
            .into_iter()
            .find(|x| x.name == id)
            .ok_or("domain not configured")?;
        let others: Vec<NodeId> = dc
            .replicas
            .iter()
            .filter(|r| *r != target.node().id())
            .cloned()
            .collect();
        let mut active_config = domsync_node::ActiveConfig::new(dc.durability, others);
        active_config.retention_bytes = dc.retention_bytes;
        let p = target
            .node()
            .promote(&id, &peers, active_config, true)
            .await?;
        println!(
            "promoted {d} on {} (forced) in epoch {}, {} records behind",
            target.node().id(),
            p.epoch,
            p.behind_records
        );
    }
    for d in DOMAINS {
        let id: DomainId = d.parse()?;
        let active = active_of(&[&a, &b], &id).ok_or("no active")?;
        active
            .node()
            .write(
                &id,
                vec![Op::Put {
                    key: b"after/failover".to_vec(),
                    value: b"yes".to_vec(),
                }],
            )
            .await?;
    }
    table(
        &format!("{} lost, its domains promoted", NODES[2]),
        &[&a, &b],
    );

    c = start(dir, NODES[2]).await?;
    converge(&[&a, &b, &c]).await?;
    table(
        &format!("{} back: it stepped down and resynchronized", NODES[2]),
        &[&a, &b, &c],
    );
    let waiting = [&a, &b, &c]
        .iter()
        .flat_map(|d| d.placements().into_values())
        .filter(|p| !matches!(p, Placement::Serving(_)))
        .count();
    if waiting > 0 {
        return Err(format!("{waiting} domains are not served").into());
    }
    client.close().await;
    for d in [&a, &b, &c] {
        d.shutdown().await;
    }
    Ok(())
}
