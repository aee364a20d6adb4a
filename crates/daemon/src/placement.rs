//! Placement for load sharing: which node should be active for each domain, so actives are
//! balanced across nodes by weight, near their gateways by region, with as few moves as
//! possible. Pure: [`plan`] takes the domains, the nodes and where the actives are now.
//!
//! The crate exports it as [`plan_placement`](crate::plan_placement), with
//! [`PlacementNode`](crate::PlacementNode), [`PlacementWant`](crate::PlacementWant),
//! [`PlacementPlan`](crate::PlacementPlan) and [`PlacementMove`](crate::PlacementMove).
//!
//! ```
//! use std::collections::BTreeMap;
//! use domsync_daemon::{plan_placement, PlacementNode, PlacementWant};
//! use domsync_proto::model::NodeId;
//!
//! let n = |s: &str| NodeId::new(s).unwrap();
//! let nodes = [PlacementNode { id: n("a"), region: None }, PlacementNode { id: n("b"), region: None }];
//! let want = |name: &str| PlacementWant {
//!     domain: name.parse().unwrap(),
//!     replicas: vec![n("a"), n("b")],
//!     weight: 1,
//!     region: None,
//! };
//! let domains = [want("t1"), want("t2")];
//! // Both active on `a`: one moves to `b`.
//! let now = BTreeMap::from([(domains[0].domain.clone(), n("a")), (domains[1].domain.clone(), n("a"))]);
//! let p = plan_placement(&domains, &nodes, &now);
//! assert_eq!(p.moves.len(), 1);
//! assert_eq!(p.load[&n("a")], 1);
//! ```

use std::collections::BTreeMap;

use domsync_proto::model::{DomainId, NodeId};

/// A node that can hold actives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub id: NodeId,
    /// Its region, if configured.
    pub region: Option<String>,
}

/// What a domain asks of placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The domain.
    pub domain: DomainId,
    /// Its replicas, primary first (only they can be active).
    pub replicas: Vec<NodeId>,
    /// Its relative load.
    pub weight: u32,
    /// The region its gateways are in, if configured.
    pub region: Option<String>,
}

/// One switchover the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The domain.
    pub domain: DomainId,
    /// Where it is active now (`None` when unknown).
    pub from: Option<NodeId>,
    /// Where it should be active.
    pub to: NodeId,
}

/// A placement plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The active node of every domain.
    pub active: BTreeMap<DomainId, NodeId>,
    /// The switchovers that get there, heaviest domain first.
    pub moves: Vec<Move>,
    /// Total weight of actives per node once done.
    pub load: BTreeMap<NodeId, u64>,
}

/// Proposes an active node for every domain.
///
/// Domains are placed heaviest first, each on an eligible replica (one of `nodes`): a node in
/// the domain's region if it has one there, then the one whose load stays lowest, then the
/// node where it is active now (no move), then the earlier replica in its list.
/// Deterministic.
pub fn plan(domains: &[Want], nodes: &[Node], now: &BTreeMap<DomainId, NodeId>) -> Plan {
    let mut load: BTreeMap<NodeId, u64> = nodes.iter().map(|n| (n.id.clone(), 0)).collect();
    let region: BTreeMap<&NodeId, Option<&str>> =
        nodes.iter().map(|n| (&n.id, n.region.as_deref())).collect();
    let mut order: Vec<&Want> = domains.iter().collect();
    order.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.domain.cmp(&b.domain)));
    let mut out = Plan::default();
    for want in order {
        let current = now.get(&want.domain);
        let best = want
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| load.contains_key(*r))
            .min_by_key(|(i, r)| {
                let after = load[*r] + u64::from(want.weight);
                let far = match (&want.region, region.get(r).copied().flatten()) {
                    (Some(w), Some(h)) => w != h,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                (far, after, current != Some(*r), *i)
            })
            .map(|(_, r)| r.clone());
        let Some(to) = best else {
            continue;
        };
        if let Some(l) = load.get_mut(&to) {
            *l += u64::from(want.weight);
        }
        if current != Some(&to) {
            out.moves.push(Move {
                domain: want.domain.clone(),
                from: current.cloned(),
                to: to.clone(),
            });
        }
        out.active.insert(want.domain.clone(), to);
    }
    out.load = load;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn want(name: &str, replicas: &[&str], weight: u32, region: Option<&str>) -> Want {
        Want {
            domain: name.parse().unwrap(),
            replicas: replicas.iter().map(|r| n(r)).collect(),
            weight,
            region: region.map(str::to_owned),
        }
    }

    fn nodes(spec: &[(&str, Option<&str>)]) -> Vec<Node> {
        spec.iter()
            .map(|(id, r)| Node {
                id: n(id),
                region: r.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn six_equal_domains_on_three_nodes_get_two_actives_each() {
        let all = ["a", "b", "c"];
        let domains: Vec<Want> = (0..6)
            .map(|i| want(&format!("t{i}"), &all, 1, None))
            .collect();
        let p = plan(
            &domains,
            &nodes(&[("a", None), ("b", None), ("c", None)]),
            &BTreeMap::new(),
        );
        assert!(p.load.values().all(|l| *l == 2), "{:?}", p.load);
        assert_eq!(p.moves.len(), 6);
        // Placing again from the result moves nothing.
        let again = plan(
            &domains,
            &nodes(&[("a", None), ("b", None), ("c", None)]),
            &p.active,
        );
        assert!(again.moves.is_empty());
    }

    #[test]
    fn weights_regions_and_replica_lists_are_respected() {
        let ns = nodes(&[("a", Some("eu")), ("b", Some("us")), ("c", Some("eu"))]);
        let domains = [
            want("heavy", &["a", "b", "c"], 10, None),
            want("paris", &["b", "a"], 1, Some("eu")),
            want("ny", &["a", "b"], 1, Some("us")),
            want("only-c", &["c"], 5, Some("us")),
        ];
        let p = plan(&domains, &ns, &BTreeMap::new());
        // Paris's only replica in its region is `a`; New York's is `b`.
        assert_eq!(p.active[&"paris".parse().unwrap()], n("a"));
        assert_eq!(p.active[&"ny".parse().unwrap()], n("b"));
        assert_eq!(p.active[&"only-c".parse().unwrap()], n("c"));
        assert_eq!(p.load.values().sum::<u64>(), 17);
        assert_eq!(p.moves.len(), 4);
    }

    #[test]
    fn a_balanced_placement_stays_where_it_is() {
        let ns = nodes(&[("a", None), ("b", None)]);
        let domains = [
            want("t1", &["a", "b"], 1, None),
            want("t2", &["a", "b"], 1, None),
        ];
        let now = BTreeMap::from([
            ("t1".parse().unwrap(), n("b")),
            ("t2".parse().unwrap(), n("a")),
        ]);
        assert!(plan(&domains, &ns, &now).moves.is_empty());
    }
}
