//! Durability modes and the writers waiting for standbys' confirmations.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::model::{Lsn, NodeId};

/// When a write on the active is acknowledged (per domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Durability {
    /// After the active's own fsync.
    #[default]
    Local,
    /// After the active's fsync and one standby's fsync.
    Standby,
    /// After the active's fsync and the fsync of every configured standby.
    All,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Local => "local",
            Durability::Standby => "standby",
            Durability::All => "all",
        })
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Durability::Local),
            "standby" => Ok(Durability::Standby),
            "all" => Ok(Durability::All),
            other => Err(format!(
                "unknown durability {other:?}: use local, standby or all"
            )),
        }
    }
}

/// A write committed on the active whose remote confirmation did not come in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    /// The write's lsn (committed and durable on the active).
    pub lsn: Lsn,
    /// The mode asked for.
    pub mode: Durability,
    /// Standbys that had confirmed it when the wait ended.
    pub confirmed_by: Vec<NodeId>,
}

#[derive(Debug)]
struct Waiter {
    lsn: Lsn,
    mode: Durability,
    deadline: Instant,
}

/// The writers of one domain waiting for standbys' durable acknowledgements.
///
/// ```
/// use std::time::{Duration, Instant};
/// use domsync_proto::model::{Lsn, NodeId};
/// use domsync_proto::repl::{Confirmations, Durability};
/// let now = Instant::now();
/// let b = NodeId::new("b")?;
/// let mut c = Confirmations::new([b.clone(), NodeId::new("c")?]);
/// assert_eq!(c.wait(1, Lsn(5), Durability::Standby, now + Duration::from_secs(1)), None);
/// assert_eq!(c.on_durable(&b, Lsn(5)), vec![1]);
/// # Ok::<(), domsync_proto::model::NameError>(())
/// ```
#[derive(Debug, Default)]
pub struct Confirmations {
    durable: BTreeMap<NodeId, Lsn>,
    waiters: BTreeMap<u64, Waiter>,
}

impl Confirmations {
    /// Confirmations over the domain's configured standbys.
    pub fn new(standbys: impl IntoIterator<Item = NodeId>) -> Confirmations {
        Confirmations {
            durable: standbys.into_iter().map(|n| (n, Lsn::ZERO)).collect(),
            waiters: BTreeMap::new(),
        }
    }

    /// True when `lsn` is confirmed for `mode`.
    pub fn is_confirmed(&self, lsn: Lsn, mode: Durability) -> bool {
        match mode {
            Durability::Local => true,
            Durability::Standby => self.durable.values().any(|d| *d >= lsn),
            Durability::All => self.durable.values().all(|d| *d >= lsn),
        }
    }

    /// Registers writer `id` waiting for `lsn` under `mode` until `deadline`. Returns
    /// `Some(id)` when `lsn` is already confirmed (nothing to wait for), `None` when the writer
    /// now waits for [`Confirmations::on_durable`] or [`Confirmations::on_tick`].
    pub fn wait(&mut self, id: u64, lsn: Lsn, mode: Durability, deadline: Instant) -> Option<u64> {
        if self.is_confirmed(lsn, mode) {
            return Some(id);
        }
        debug_assert!(mode != Durability::Local, "local durability never waits");
        debug_assert!(!self.waiters.contains_key(&id), "writer {id} waits twice");
        self.waiters.insert(
            id,
            Waiter {
                lsn,
                mode,
                deadline,
            },
        );
        None
    }

    /// A standby's durable lsn moved: returns the writers now confirmed.
    pub fn on_durable(&mut self, standby: &NodeId, lsn: Lsn) -> Vec<u64> {
        match self.durable.get_mut(standby) {
            Some(d) if *d < lsn => *d = lsn,
            _ => return Vec::new(),
        }
        let done: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| self.is_confirmed(w.lsn, w.mode))
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            self.waiters.remove(id);
        }
        self.check_invariants();
        done
    }

    /// Debug builds: every writer still waiting is unconfirmed (a confirmed writer left
    /// waiting would hang until its deadline and then be told it was not confirmed).
    fn check_invariants(&self) {
        debug_assert!(
            self.waiters
                .values()
                .all(|w| !self.is_confirmed(w.lsn, w.mode)),
            "a confirmed writer is still waiting"
        );
    }

    /// Time passed: returns the writers whose deadline expired, with what was confirmed.
    pub fn on_tick(&mut self, now: Instant) -> Vec<(u64, Unconfirmed)> {
        let expired: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.waiters.remove(&id).map(|w| (id, w)))
            .map(|(id, w)| {
                let confirmed_by = self
                    .durable
                    .iter()
                    .filter(|(_, d)| **d >= w.lsn)
                    .map(|(n, _)| n.clone())
                    .collect();
                (
                    id,
                    Unconfirmed {
                        lsn: w.lsn,
                        mode: w.mode,
                        confirmed_by,
                    },
                )
            })
            .collect()
    }

    /// Forgets a writer that stopped waiting.
    pub fn cancel(&mut self, id: u64) {
        self.waiters.remove(&id);
    }

    /// The earliest deadline of a waiting writer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiters.values().map(|w| w.deadline).min()
    }

    /// Each configured standby's durable lsn.
    pub fn durable(&self) -> impl Iterator<Item = (&NodeId, Lsn)> {
        self.durable.iter().map(|(n, l)| (n, *l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn standby_needs_one_all_needs_every_configured_standby() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let mut c = Confirmations::new([n("b"), n("c")]);
        assert_eq!(c.wait(1, Lsn(3), Durability::Standby, later), None);
        assert_eq!(c.wait(2, Lsn(3), Durability::All, later), None);
        assert_eq!(c.wait(3, Lsn(3), Durability::Local, later), Some(3));
        assert_eq!(c.on_durable(&n("b"), Lsn(3)), vec![1]);
        assert_eq!(
            c.on_durable(&n("x"), Lsn(9)),
            Vec::<u64>::new(),
            "not configured"
        );
        assert_eq!(c.on_durable(&n("c"), Lsn(2)), Vec::<u64>::new());
        assert_eq!(c.on_durable(&n("c"), Lsn(4)), vec![2]);
        assert_eq!(c.wait(4, Lsn(4), Durability::All, later), None);
        assert!(c.is_confirmed(Lsn(3), Durability::All));
    }

    #[test]
    fn an_expired_wait_reports_who_confirmed() {
        let now = Instant::now();
        let mut c = Confirmations::new([n("b"), n("c")]);
        assert_eq!(c.wait(1, Lsn(5), Durability::All, now), None);
        c.on_durable(&n("c"), Lsn(5));
        let expired = c.on_tick(now);
        assert_eq!(
            expired,
            vec![(
                1,
                Unconfirmed {
                    lsn: Lsn(5),
                    mode: Durability::All,
                    confirmed_by: vec![n("c")],
                }
            )]
        );
        assert_eq!(c.next_deadline(), None);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in [Durability::Local, Durability::Standby, Durability::All] {
            assert_eq!(m.to_string().parse::<Durability>(), Ok(m));
        }
        assert!("fast"
            .parse::<Durability>()
            .unwrap_err()
            .contains("local, standby or all"));
    }
}
