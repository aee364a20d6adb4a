//! Domains added and removed at runtime, the placement plan and rebalance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

pub use domsync_client::admin::Target;
use domsync_proto::admin::{AdminError, Answer, DomainSpec, PlanReport, Request};
use domsync_proto::model::NodeId;

use super::*;

// ---- Domains added at runtime, placement plan and rebalance ----

/// `domsync domain add NAME --replicas a,b,c ...`.
#[derive(clap::Args)]
pub struct DomainAddArgs {
    /// The domain.
    pub name: String,
    /// Replica nodes in order, the primary (creates the domain, first active) first.
    #[arg(long, value_delimiter = ',', required = true, value_name = "NODE,...")]
    pub replicas: Vec<String>,
    /// Durability of acknowledged writes: local, standby (default) or all.
    #[arg(long)]
    pub durability: Option<String>,
    /// A gateway granted the domain (repeat for several).
    #[arg(long = "gateway", value_name = "G")]
    pub gateways: Vec<String>,
    /// Relative load of the domain (placement; default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Region whose node should hold the active (placement).
    #[arg(long)]
    pub region: Option<String>,
    /// Most bytes of change log kept for lagging standbys (default 256 MiB).
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Also send it to every other replica's daemon over remote admin (their addresses come
    /// from the daemon's configuration; needs --admin-pki DIR and --admin-id ID).
    #[arg(long)]
    pub all: bool,
}

/// The admin certificate for reaching other daemons (`--admin-pki`, `--admin-id`).
#[derive(Debug, Clone)]
pub struct AdminCert {
    /// Directory with ca.pem and admin-<id>.pem/.key.
    pub pki: PathBuf,
    /// The admin id, when given.
    pub id: Option<String>,
}

impl AdminCert {
    /// The remote target of the node at `addr`.
    fn remote(&self, node: &NodeId, addr: SocketAddr, why: &str) -> Result<Target, String> {
        let id = self.id.clone().ok_or_else(|| {
            format!("{why} needs --admin-id ID (and --admin-pki DIR) to reach node {node} at {addr} over remote admin")
        })?;
        Ok(Target::Remote {
            node: node.clone(),
            addr,
            pki: self.pki.clone(),
            id,
        })
    }
}

/// The plan as the daemon at `target` sees it.
fn get_plan(target: &Target) -> Result<Result<PlanReport, AdminError>, Box<dyn std::error::Error>> {
    match call_one(target, &Request::Plan)? {
        Answer::Plan(p) => Ok(Ok(p)),
        Answer::Error(e) => Ok(Err(e)),
        other => Err(unexpected(&other)),
    }
}

/// The daemons to send a domain add/remove to: `target`, and with `all` every other replica
/// (through remote admin, at the address the daemon's configuration gives it).
fn replica_targets(
    target: &Target,
    cert: &AdminCert,
    all: bool,
    replicas: &[NodeId],
    what: &str,
) -> Result<Vec<(String, Target)>, Box<dyn std::error::Error>> {
    let mut out = vec![(target.to_string(), target.clone())];
    if !all {
        return Ok(out);
    }
    let plan = match get_plan(target)? {
        Ok(p) => p,
        Err(e) => return Err(format!("{target}: {e}").into()),
    };
    for r in replicas.iter().filter(|r| **r != plan.node) {
        let node = plan.nodes.iter().find(|n| n.id == *r).ok_or_else(|| {
            format!(
                "replica {r} is not a peer of node {}: add it to [[peers]] first",
                plan.node
            )
        })?;
        out.push((format!("node {r}"), cert.remote(r, node.address, what)?));
    }
    Ok(out)
}

/// `domsync domain add NAME --replicas ...`: on the daemon, and with `--all` on every replica.
pub fn domain_add(target: &Target, cert: &AdminCert, args: DomainAddArgs) -> Res {
    let spec = DomainSpec {
        name: args.name,
        replicas: args.replicas,
        durability: args.durability,
        gateways: args.gateways,
        retention_bytes: args.retention_bytes,
        weight: args.weight,
        region: args.region,
    };
    let replicas = spec
        .replicas
        .iter()
        .map(NodeId::new)
        .collect::<Result<Vec<_>, _>>()?;
    let targets = replica_targets(target, cert, args.all, &replicas, "domain add --all")?;
    let count = targets.len();
    for (name, t) in targets {
        match call_one(&t, &Request::DomainAdd(spec.clone()))? {
            Answer::DomainAdded {
                domain,
                replica_here: true,
            } => println!("{name}: added domain {domain}; it is being placed there"),
            Answer::DomainAdded {
                domain,
                replica_here: false,
            } => println!(
                "{name}: added domain {domain}; that node is not one of its replicas (recorded for placement only)"
            ),
            Answer::Error(e) => {
                eprintln!("domsync: error: {name}: {e}");
                return Ok(ExitCode::from(1));
            }
            other => return Err(unexpected(&other)),
        }
    }
    if !args.all && count == 1 {
        eprintln!(
            "domsync: run the same `domain add` on every replica's daemon ({}), or add --all",
            spec.replicas.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `domsync domain remove NAME [--all]`.
pub fn domain_remove(target: &Target, cert: &AdminCert, name: &str, all: bool) -> Res {
    let d = domain(name)?;
    let replicas = if all {
        match get_plan(target)? {
            Ok(p) => p.nodes.into_iter().map(|n| n.id).collect(),
            Err(e) => return Ok(failed(&e)),
        }
    } else {
        Vec::new()
    };
    for (label, t) in replica_targets(target, cert, all, &replicas, "domain remove --all")? {
        match call_one(&t, &Request::DomainRemove { domain: d.clone() })? {
            Answer::DomainRemoved { domain } => println!(
                "{label}: domain {domain} is no longer served there (its store files stay in the state directory)"
            ),
            Answer::Error(AdminError::UnknownDomain { .. }) if all && label != target.to_string() => {
                println!("{label}: domain {d} was not added there");
            }
            Answer::Error(e) => {
                eprintln!("domsync: error: {label}: {e}");
                return Ok(match e {
                    AdminError::UnknownDomain { .. } => ExitCode::from(EXIT_NOT_FOUND),
                    _ => ExitCode::from(1),
                });
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `domsync plan [--json]`.
pub fn plan(target: &Target, json: bool) -> Res {
    match get_plan(target)? {
        Ok(p) => {
            if json {
                println!("{}", plan_json(&p));
            } else {
                print!("{}", plan_text(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e)),
    }
}

/// `domsync rebalance [--dry-run]`: the plan of the daemon at `target`, carried out one
/// switchover at a time, each sent to the daemon active for its domain (this one through
/// `target`, the others through remote admin); stops at the first failure.
pub fn rebalance(target: &Target, cert: &AdminCert, dry_run: bool) -> Res {
    let p = match get_plan(target)? {
        Ok(p) => p,
        Err(e) => return Ok(failed(&e)),
    };
    if p.moves.is_empty() {
        println!("balanced: nothing to move");
        return Ok(ExitCode::SUCCESS);
    }
    // Every step's daemon, worked out before anything moves.
    let mut steps = Vec::new();
    for m in &p.moves {
        let Some(from) = &m.from else {
            eprintln!(
                "domsync: error: rebalance refused: no replica of {} answered as its active; promote one (`domsync promote {}`) and run rebalance again (nothing was moved)",
                m.domain, m.domain
            );
            return Ok(ExitCode::from(1));
        };
        let t = if *from == p.node {
            target.clone()
        } else {
            let node = p.nodes.iter().find(|n| n.id == *from).ok_or_else(|| {
                format!(
                    "node {from} has no address in node {}'s configuration; add it to [[peers]]",
                    p.node
                )
            })?;
            cert.remote(from, node.address, "rebalance")?
        };
        steps.push((m, from, t));
    }
    let total = steps.len();
    for (i, (m, from, t)) in steps.into_iter().enumerate() {
        println!(
            "step {}/{total}: switchover {} from {from} to {}{}",
            i + 1,
            m.domain,
            m.to,
            if dry_run { " (dry run)" } else { "" }
        );
        if dry_run {
            continue;
        }
        let req = Request::Switchover {
            domain: m.domain.clone(),
            to: m.to.clone(),
        };
        let fail = |why: String| {
            eprintln!(
                "domsync: error: rebalance stopped at domain {} (switchover {from} -> {}): {why}; the earlier steps stay done: fix this and run `domsync rebalance` again",
                m.domain, m.to
            );
            Ok(ExitCode::from(1))
        };
        match call_one(&t, &req) {
            Ok(Answer::SwitchedOver {
                epoch,
                position,
                pause_ms,
                ..
            }) => println!(
                "  done: {} active on {} in epoch {epoch} at lsn {}, writes paused {pause_ms} ms",
                m.domain, m.to, position.lsn
            ),
            Ok(Answer::Error(e)) => return fail(e.to_string()),
            Ok(other) => return fail(format!("unexpected answer {other:?}")),
            Err(e) => return fail(e.to_string()),
        }
    }
    if !dry_run {
        println!("rebalanced: {total} domains moved");
    }
    Ok(ExitCode::SUCCESS)
}
