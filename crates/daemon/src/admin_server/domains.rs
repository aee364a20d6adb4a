//! Domains added and removed at runtime, and the placement plan: where each domain is
//! active now and where [`plan_placement`] would put it.

use std::sync::Arc;

use super::dispatch::me;
use crate::{plan_placement, Daemon, DomainConfig, PlacementNode, PlacementWant};
use domsync_proto::admin::{
    AdminError, Answer, DomainSpec, PlanDomain, PlanMove, PlanNode, PlanReport,
};
use domsync_proto::model::{DomainId, NodeId, Role};

/// `domsync domain add`: kept and placed by [`Daemon::add_domain`].
pub(super) async fn add(daemon: &Arc<Daemon>, spec: DomainSpec) -> Result<Answer, AdminError> {
    let replica_here = daemon.add_domain(&spec).await?;
    Ok(Answer::DomainAdded {
        domain: spec
            .name
            .parse()
            .map_err(|e| AdminError::BadRequest(format!("domain add refused: {e}")))?,
        replica_here,
    })
}

/// `domsync domain remove`: see [`Daemon::remove_domain`].
pub(super) async fn remove(daemon: &Arc<Daemon>, domain: DomainId) -> Result<Answer, AdminError> {
    daemon.remove_domain(&domain).await?;
    Ok(Answer::DomainRemoved { domain })
}

/// Where `domain` is active now: this node's replica when it is active, else the replica
/// answering a probe as active (the highest epoch wins); `None` when no replica says so.
async fn current_active(daemon: &Arc<Daemon>, dc: &DomainConfig) -> Option<NodeId> {
    let me = me(daemon);
    if let Some(s) = daemon
        .node()
        .replica(&dc.name)
        .and_then(|d| d.status().ok())
    {
        if s.role == Role::Active {
            return Some(me);
        }
    }
    let mut probes = tokio::task::JoinSet::new();
    for peer in dc.replicas.iter().filter(|r| **r != me).cloned() {
        let daemon = Arc::clone(daemon);
        let domain = dc.name.clone();
        probes.spawn(async move {
            let answer = daemon.node().probe(&peer, &domain, None).await;
            (peer, answer)
        });
    }
    let mut best: Option<(domsync_proto::model::Epoch, NodeId)> = None;
    while let Some(joined) = probes.join_next().await {
        let Ok((peer, answer)) = joined else { continue };
        match answer {
            Ok(Some(a)) if a.role == Role::Active => {
                if best.as_ref().is_none_or(|(e, _)| a.epoch > *e) {
                    best = Some((a.epoch, peer));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(target: super::LOG, domain = %dc.name, peer = %peer, error = %e, "plan: peer did not answer its probe");
            }
        }
    }
    best.map(|(_, n)| n)
}

/// The placement plan of every domain of the configuration in force (file and added
/// domains): where each is active now (asked of the replicas), where
/// [`plan_placement`] puts it, and the switchovers.
pub(super) async fn plan(daemon: &Arc<Daemon>) -> PlanReport {
    let config = daemon.config();
    let me = me(daemon);
    let mut nodes = vec![PlacementNode {
        id: me.clone(),
        region: config.node.region.clone(),
    }];
    nodes.extend(config.peers.keys().map(|id| PlacementNode {
        id: id.clone(),
        region: config.peer_regions.get(id).cloned(),
    }));
    let mut lookups = tokio::task::JoinSet::new();
    for dc in config.domains.iter().cloned() {
        let daemon = Arc::clone(daemon);
        lookups.spawn(async move {
            let active = current_active(&daemon, &dc).await;
            (dc.name, active)
        });
    }
    let mut now = std::collections::BTreeMap::new();
    while let Some(joined) = lookups.join_next().await {
        if let Ok((name, Some(active))) = joined {
            now.insert(name, active);
        }
    }
    let wants: Vec<PlacementWant> = config
        .domains
        .iter()
        .map(|d| PlacementWant {
            domain: d.name.clone(),
            replicas: d.replicas.clone(),
            weight: d.weight,
            region: d.region.clone(),
        })
        .collect();
    let p = plan_placement(&wants, &nodes, &now);
    let load_now = |id: &NodeId| -> u64 {
        wants
            .iter()
            .filter(|w| now.get(&w.domain) == Some(id))
            .map(|w| u64::from(w.weight))
            .sum()
    };
    PlanReport {
        node: me.clone(),
        nodes: nodes
            .iter()
            .map(|n| PlanNode {
                id: n.id.clone(),
                region: n.region.clone(),
                address: if n.id == me {
                    config.node.listen
                } else {
                    config.peers[&n.id]
                },
                load_now: load_now(&n.id),
                load: p.load.get(&n.id).copied().unwrap_or(0),
            })
            .collect(),
        domains: config
            .domains
            .iter()
            .map(|d| PlanDomain {
                domain: d.name.clone(),
                weight: d.weight,
                region: d.region.clone(),
                active: now.get(&d.name).cloned(),
                planned: p.active.get(&d.name).cloned(),
            })
            .collect(),
        moves: p
            .moves
            .into_iter()
            .map(|m| PlanMove {
                domain: m.domain,
                from: m.from,
                to: m.to,
            })
            .collect(),
    }
}
