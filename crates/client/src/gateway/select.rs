//! Which node a gateway client asks first, sans-IO (no tokio, no quinn): every decision takes
//! an explicit `now`, so it is tested without a network or a clock.
//!
//! Each node of the domain is [`Health::Unknown`] until a connection to it is tried,
//! [`Health::Up`] with its measured round trip once it answered, [`Health::Down`] after an
//! error or a timeout (until a retry time that backs off exponentially up to the recheck
//! interval), and [`Health::Probing`] while the client reconnects to it in the background.
//!
//! [`Selector::order`] lists the nodes to try for a request: nodes that are up first, by
//! round trip, then the others (a last resort: they may have recovered). Round trips compare
//! in steps of `rtt_step`: within one step the node listed first in the configuration wins, so
//! two nodes at nearly the same distance do not trade places on noise. A node that is down is
//! re-probed when its retry time comes ([`Selector::due_for_probe`]); once it answers again it
//! takes its place in the order back, and a watch moves back to it
//! ([`Selector::better_than`]).

use std::time::{Duration, Instant};

/// Settings of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectConfig {
    /// Round trips compare in steps of this size; within a step the node listed first wins.
    pub rtt_step: Duration,
    /// Longest time a failed node waits before it is probed again (the backoff's cap).
    pub recheck: Duration,
    /// Wait before the first re-probe of a failed node; doubles with each further failure.
    pub retry_min: Duration,
}

impl Default for SelectConfig {
    fn default() -> SelectConfig {
        SelectConfig {
            rtt_step: Duration::from_millis(5),
            recheck: Duration::from_secs(30),
            retry_min: Duration::from_millis(500),
        }
    }
}

/// What the client knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Never tried.
    Unknown,
    /// Answered; its last measured round trip.
    Up {
        /// Round trip.
        rtt: Duration,
    },
    /// Failed; not probed again before `retry_at`.
    Down {
        /// When it may be probed again.
        retry_at: Instant,
        /// Failures in a row.
        failures: u32,
    },
    /// A connection attempt is in progress.
    Probing {
        /// Failures in a row before this attempt.
        failures: u32,
    },
}

/// The node ranking of one gateway client; see the module documentation.
#[derive(Debug, Clone)]
pub struct Selector {
    config: SelectConfig,
    nodes: Vec<Health>,
    /// The last round trip measured per node, kept while it is down (so that it takes its
    /// place back when it recovers).
    rtts: Vec<Option<Duration>>,
}

impl Selector {
    /// A selector for `nodes` nodes (indexes in configuration order), all unknown.
    pub fn new(nodes: usize, config: SelectConfig) -> Selector {
        Selector {
            config,
            nodes: vec![Health::Unknown; nodes],
            rtts: vec![None; nodes],
        }
    }

    /// How node `i` stands.
    pub fn health(&self, i: usize) -> Option<&Health> {
        self.nodes.get(i)
    }

    /// Nodes to connect to now: never tried, or down with their retry time passed. They are
    /// marked [`Health::Probing`]; report each attempt with [`Selector::probed`].
    pub fn due_for_probe(&mut self, now: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, h) in self.nodes.iter_mut().enumerate() {
            let failures = match h {
                Health::Unknown => 0,
                Health::Down { retry_at, failures } if *retry_at <= now => *failures,
                _ => continue,
            };
            *h = Health::Probing { failures };
            out.push(i);
        }
        out
    }

    /// Marks every node that is not up and not being probed as due for a probe now (an
    /// explicit measurement), and returns them as [`Selector::due_for_probe`] does.
    pub fn probe_all(&mut self, now: Instant) -> Vec<usize> {
        for h in &mut self.nodes {
            if let Health::Down { retry_at, .. } = h {
                *retry_at = now;
            }
        }
        self.due_for_probe(now)
    }

    /// Whether some probe is still in progress.
    pub fn probing(&self) -> bool {
        self.nodes
            .iter()
            .any(|h| matches!(h, Health::Probing { .. }))
    }

    /// Whether some node is up.
    pub fn any_up(&self) -> bool {
        self.nodes.iter().any(|h| matches!(h, Health::Up { .. }))
    }

    /// The result of a connection attempt: its round trip, or `None` when it failed.
    pub fn probed(&mut self, i: usize, rtt: Option<Duration>, now: Instant) {
        match rtt {
            Some(rtt) => self.succeeded(i, rtt),
            None => self.failed(i, now),
        }
    }

    /// Node `i` answered; `rtt` is its current round trip.
    pub fn succeeded(&mut self, i: usize, rtt: Duration) {
        if let (Some(h), Some(r)) = (self.nodes.get_mut(i), self.rtts.get_mut(i)) {
            *h = Health::Up { rtt };
            *r = Some(rtt);
        }
    }

    /// Node `i` failed (connection error, timeout, refusal, a bad answer, or too far behind):
    /// it goes to the end of the order until its retry time.
    pub fn failed(&mut self, i: usize, now: Instant) {
        let Some(h) = self.nodes.get_mut(i) else {
            return;
        };
        let failures = match h {
            Health::Down { failures, .. } | Health::Probing { failures } => {
                failures.saturating_add(1)
            }
            Health::Unknown | Health::Up { .. } => 1,
        };
        let retry_at = now + backoff(&self.config, failures);
        *h = Health::Down { retry_at, failures };
    }

    /// The nodes in the order a request tries them: up nodes by round trip step, then
    /// configuration order; then the others by configuration order (unknown or probing
    /// before down).
    pub fn order(&self, now: Instant) -> Vec<usize> {
        let mut out: Vec<usize> = (0..self.nodes.len()).collect();
        out.sort_by_key(|&i| self.rank(i, now));
        out
    }

    /// The node to prefer now: the first up node of [`Selector::order`].
    pub fn preferred(&self, now: Instant) -> Option<usize> {
        self.order(now)
            .into_iter()
            .find(|&i| matches!(self.nodes[i], Health::Up { .. }))
    }

    /// An up node that ranks before `current` (a watch on `current` should move to it), if
    /// any.
    pub fn better_than(&self, current: usize, now: Instant) -> Option<usize> {
        let best = self.preferred(now)?;
        (best != current && self.rank(best, now) < self.rank(current, now)).then_some(best)
    }

    fn rank(&self, i: usize, now: Instant) -> (u8, u128, usize) {
        let step = self.config.rtt_step.as_micros().max(1);
        match &self.nodes[i] {
            Health::Up { rtt } => (0, rtt.as_micros() / step, i),
            Health::Unknown | Health::Probing { .. } => (1, 0, i),
            Health::Down { retry_at, .. } if *retry_at <= now => (1, 0, i),
            Health::Down { .. } => (2, 0, i),
        }
    }
}

/// How long a node that failed `failures` times in a row waits before it is probed again:
/// `retry_min`, doubling, capped at `recheck`.
pub fn backoff(config: &SelectConfig, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    config
        .retry_min
        .saturating_mul(1u32 << shift)
        .min(config.recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_answering_node_comes_first() {
        let now = Instant::now();
        let mut s = Selector::new(3, SelectConfig::default());
        assert_eq!(s.due_for_probe(now), vec![0, 1, 2]);
        s.probed(0, Some(Duration::from_millis(40)), now);
        s.probed(1, Some(Duration::from_millis(2)), now);
        s.probed(2, Some(Duration::from_millis(9)), now);
        assert_eq!(s.order(now), vec![1, 2, 0]);
        s.failed(1, now);
        assert_eq!(s.order(now), vec![2, 0, 1]);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> SelectConfig {
        SelectConfig {
            rtt_step: ms(5),
            recheck: ms(4_000),
            retry_min: ms(500),
        }
    }

    fn up(rtts: &[u64], now: Instant) -> Selector {
        let mut s = Selector::new(rtts.len(), config());
        assert_eq!(s.due_for_probe(now).len(), rtts.len());
        for (i, r) in rtts.iter().enumerate() {
            s.probed(i, Some(ms(*r)), now);
        }
        s
    }

    #[test]
    fn lowest_round_trip_first_within_a_step_configuration_order() {
        let now = Instant::now();
        let s = up(&[30, 3, 1, 12], now);
        // 3 and 1 ms are in the same 5 ms step: the node listed first (1) wins.
        assert_eq!(s.order(now), vec![1, 2, 3, 0]);
        assert_eq!(s.preferred(now), Some(1));
    }

    #[test]
    fn unknown_nodes_are_probed_once_and_ranked_after_up_nodes() {
        let now = Instant::now();
        let mut s = Selector::new(3, config());
        assert_eq!(s.due_for_probe(now), vec![0, 1, 2]);
        assert!(s.probing());
        assert!(
            s.due_for_probe(now).is_empty(),
            "no second probe while one runs"
        );
        s.probed(2, Some(ms(1)), now);
        assert_eq!(s.order(now), vec![2, 0, 1]);
        assert!(s.any_up());
    }

    #[test]
    fn failed_node_goes_last_and_backs_off_exponentially_up_to_recheck() {
        let t0 = Instant::now();
        let mut s = up(&[1, 20], t0);
        s.failed(0, t0);
        assert_eq!(s.order(t0), vec![1, 0]);
        assert_eq!(s.preferred(t0), Some(1));
        // Not probed before its retry time.
        assert!(s.due_for_probe(t0 + ms(499)).is_empty());
        let t1 = t0 + ms(500);
        assert_eq!(s.due_for_probe(t1), vec![0]);
        s.probed(0, None, t1);
        assert_eq!(
            s.health(0),
            Some(&Health::Down {
                retry_at: t1 + ms(1_000),
                failures: 2
            })
        );
        assert_eq!(backoff(&config(), 3), ms(2_000));
        assert_eq!(backoff(&config(), 4), ms(4_000));
        assert_eq!(backoff(&config(), 40), ms(4_000), "capped at recheck");
    }

    #[test]
    fn returns_to_the_preferred_node_when_it_recovers() {
        let t0 = Instant::now();
        let mut s = up(&[1, 20, 20], t0);
        s.failed(0, t0);
        // A watch moved to node 1; nothing better while 0 is down.
        assert_eq!(s.better_than(1, t0), None);
        let t1 = t0 + ms(600);
        assert_eq!(s.due_for_probe(t1), vec![0]);
        assert_eq!(s.better_than(1, t1), None, "not before the probe answers");
        s.probed(0, Some(ms(1)), t1);
        assert_eq!(s.better_than(1, t1), Some(0));
        assert_eq!(s.better_than(0, t1), None);
        assert_eq!(s.order(t1), vec![0, 1, 2]);
    }

    #[test]
    fn a_down_node_whose_retry_time_passed_ranks_with_unknown_nodes() {
        let t0 = Instant::now();
        let mut s = up(&[1, 1, 1], t0);
        s.failed(0, t0);
        s.failed(1, t0 + ms(100));
        assert_eq!(s.order(t0 + ms(550)), vec![2, 0, 1]);
        assert_eq!(s.probe_all(t0 + ms(200)), vec![0, 1]);
    }

    #[test]
    fn a_node_that_slows_down_loses_its_place() {
        let now = Instant::now();
        let mut s = up(&[1, 9], now);
        assert_eq!(s.preferred(now), Some(0));
        s.succeeded(0, ms(50));
        assert_eq!(s.preferred(now), Some(1));
        assert_eq!(s.better_than(0, now), Some(1));
    }
}
