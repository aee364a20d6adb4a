//! Which node of a remote target a request goes to (sans IO: the client reports what happened,
//! this decides where to go next).
//!
//! * Reads go to the preferred node: the first of the list at first, then the last node that
//!   answered (a node that fails hands the preference to the next one in the list).
//! * Transactions go to the node believed active for their domain (learnt from `Hello` and
//!   from `NotActive` answers), else in read order; a `NotActive` naming another node of the
//!   list is followed at most [`MAX_REDIRECTS`] times.

use std::collections::HashMap;

use domsync_proto::app::DomainState;
use domsync_proto::model::{DomainId, NodeId};

/// Most `NotActive` redirects a transaction follows.
pub(crate) const MAX_REDIRECTS: usize = 2;

/// The nodes of a remote target and what the client believes of them.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    nodes: Vec<NodeId>,
    preferred: usize,
    active: HashMap<DomainId, NodeId>,
}

impl Route {
    /// The nodes in order of preference.
    pub(crate) fn new(nodes: Vec<NodeId>) -> Route {
        Route {
            nodes,
            preferred: 0,
            active: HashMap::new(),
        }
    }

    /// Where a read goes, in order: the preferred node, then the others in list order.
    pub(crate) fn read_order(&self) -> Vec<usize> {
        let n = self.nodes.len();
        (0..n).map(|i| (self.preferred + i) % n).collect()
    }

    /// Where a transaction on `domain` goes, in order: its believed active first.
    pub(crate) fn txn_order(&self, domain: &DomainId) -> Vec<usize> {
        let mut order = self.read_order();
        if let Some(i) = self.active.get(domain).and_then(|a| self.index(a)) {
            order.retain(|&j| j != i);
            order.insert(0, i);
        }
        order
    }

    /// The node answered a read.
    pub(crate) fn answered(&mut self, i: usize) {
        if i < self.nodes.len() {
            self.preferred = i;
        }
    }

    /// The node could not be reached: the preference moves on when it was the preferred one.
    pub(crate) fn unreachable(&mut self, i: usize) {
        if i == self.preferred && !self.nodes.is_empty() {
            self.preferred = (i + 1) % self.nodes.len();
        }
    }

    /// What a `Hello` said of each domain's active.
    pub(crate) fn learn(&mut self, domains: &[DomainState]) {
        for d in domains {
            self.learn_active(&d.domain, d.active.as_ref());
        }
    }

    /// A node said `active` is the active of `domain` (`None`: it does not know).
    pub(crate) fn learn_active(&mut self, domain: &DomainId, active: Option<&NodeId>) {
        match active {
            Some(a) => {
                self.active.insert(domain.clone(), a.clone());
            }
            None => {
                self.active.remove(domain);
            }
        }
    }

    /// Where a transaction goes after node `from` answered `NotActive { active }`, given the
    /// nodes `tried` already and the redirects followed so far; `None`: give up.
    pub(crate) fn redirect(
        &mut self,
        domain: &DomainId,
        active: Option<&NodeId>,
        tried: &[usize],
        redirects: usize,
    ) -> Option<usize> {
        self.learn_active(domain, active);
        if redirects >= MAX_REDIRECTS {
            return None;
        }
        match active.and_then(|a| self.index(a)) {
            Some(i) if !tried.contains(&i) => Some(i),
            // Named a node not in the list, or one that already refused: ask the others.
            _ => self
                .txn_order(domain)
                .into_iter()
                .find(|i| !tried.contains(i)),
        }
    }

    /// The position of `node` in the list.
    pub(crate) fn index(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n == node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::new(*n).unwrap()).collect()
    }

    #[test]
    fn reads_stay_on_the_node_that_answered() {
        let mut r = Route::new(ids(&["a", "b", "c"]));
        assert_eq!(r.read_order(), vec![0, 1, 2]);
        r.unreachable(0);
        assert_eq!(r.read_order(), vec![1, 2, 0]);
        r.answered(1);
        r.unreachable(2); // not the preferred one: nothing changes
        assert_eq!(r.read_order(), vec![1, 2, 0]);
    }

    #[test]
    fn transactions_go_to_the_believed_active_and_follow_redirects() {
        let d = DomainId::new("t1").unwrap();
        let [a, b, c]: [NodeId; 3] = ids(&["a", "b", "c"]).try_into().unwrap();
        let mut r = Route::new(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(r.txn_order(&d), vec![0, 1, 2]);
        // a is a standby naming c: go to c, and remember it.
        assert_eq!(r.redirect(&d, Some(&c), &[0], 0), Some(2));
        assert_eq!(r.txn_order(&d), vec![2, 0, 1]);
        // c names a (which refused already): ask b, the one not tried.
        assert_eq!(r.redirect(&d, Some(&a), &[0, 2], 1), Some(1));
        // Bounded.
        assert_eq!(r.redirect(&d, Some(&c), &[0], MAX_REDIRECTS), None);
        // Unknown active: the next node not tried; none left: give up.
        assert_eq!(r.redirect(&d, None, &[0], 0), Some(1));
        assert_eq!(r.redirect(&d, None, &[0, 1, 2], 1), None);
        // An active not in the list is not followed.
        let x = NodeId::new("x").unwrap();
        assert_eq!(r.redirect(&d, Some(&x), &[0, 1], 0), Some(2));
    }
}
