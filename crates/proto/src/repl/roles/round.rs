//! A round of probes to several peers at once, with the retry on a fresh connection.

use super::*;

/// One peer's probe: a first attempt (on the cached connection when there is one) and, if
/// that one was on a cached connection and failed or did not answer in [`PROBE_ATTEMPT`],
/// one more on a fresh connection within [`PROBE_BUDGET`].
#[derive(Debug, Clone)]
pub(super) struct PeerAsk {
    peer: NodeId,
    req: u64,
    fresh: bool,
    deadline: Instant,
    budget_end: Instant,
    first: Option<String>,
    result: Option<Result<Option<ProbeAnswer>, String>>,
}

/// A round of probes to several peers at once.
#[derive(Debug, Clone)]
pub(super) struct Round {
    epoch: Option<Epoch>,
    asks: Vec<PeerAsk>,
}

impl Round {
    pub(super) fn start(
        now: Instant,
        peers: &[NodeId],
        epoch: Option<&Epoch>,
        connected: &[NodeId],
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) -> Round {
        let mut asks = Vec::with_capacity(peers.len());
        for peer in peers {
            let fresh = !connected.contains(peer);
            let req = next_req(ids);
            out.push_back(Action::Probe {
                req,
                peer: peer.clone(),
                epoch: epoch.cloned(),
                fresh,
            });
            asks.push(PeerAsk {
                peer: peer.clone(),
                req,
                fresh,
                deadline: now + PROBE_ATTEMPT,
                budget_end: now + PROBE_BUDGET,
                first: None,
                result: None,
            });
        }
        Round {
            epoch: epoch.cloned(),
            asks,
        }
    }

    /// A round of one probe, without an epoch: the switchover's target, asked where it
    /// stands.
    pub(super) fn target(
        now: Instant,
        peer: &NodeId,
        connected: &[NodeId],
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) -> Round {
        Round::start(now, std::slice::from_ref(peer), None, connected, ids, out)
    }

    /// Takes the answer to `req`; false when it belongs to no pending ask of this round.
    pub(super) fn answered(
        &mut self,
        now: Instant,
        req: u64,
        result: Result<Option<ProbeAnswer>, String>,
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) -> bool {
        let Some(i) = self
            .asks
            .iter()
            .position(|a| a.req == req && a.result.is_none())
        else {
            return false;
        };
        match result {
            Ok(answer) => self.asks[i].result = Some(Ok(answer)),
            Err(why) => self.failed(i, now, why, ids, out),
        }
        true
    }

    pub(super) fn failed(
        &mut self,
        i: usize,
        now: Instant,
        why: String,
        ids: &mut u64,
        out: &mut VecDeque<Action>,
    ) {
        let epoch = self.epoch.clone();
        let ask = &mut self.asks[i];
        if !ask.fresh && now < ask.budget_end {
            // The cached connection may be dead without knowing it: once more, afresh.
            ask.req = next_req(ids);
            ask.fresh = true;
            ask.deadline = ask.budget_end;
            ask.first = Some(why);
            out.push_back(Action::Probe {
                req: ask.req,
                peer: ask.peer.clone(),
                epoch,
                fresh: true,
            });
            return;
        }
        let why = match ask.first.take() {
            Some(first) => format!("{why} (first attempt: {first})"),
            None => why,
        };
        ask.result = Some(Err(why));
    }

    pub(super) fn timeout(&mut self, now: Instant, ids: &mut u64, out: &mut VecDeque<Action>) {
        for i in 0..self.asks.len() {
            let a = &self.asks[i];
            if a.result.is_none() && a.deadline <= now {
                let waited = if a.fresh && a.first.is_some() {
                    PROBE_BUDGET
                } else {
                    PROBE_ATTEMPT
                };
                let why = if a.fresh && a.first.is_some() {
                    format!("no answer within {waited:?} on a fresh connection")
                } else {
                    format!("no answer within {waited:?}")
                };
                self.failed(i, now, why, ids, out);
            }
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.asks
            .iter()
            .filter(|a| a.result.is_none())
            .map(|a| a.deadline)
            .min()
    }

    pub(super) fn done(&self) -> bool {
        self.asks.iter().all(|a| a.result.is_some())
    }

    pub(super) fn results(&self) -> Vec<(NodeId, Result<Option<ProbeAnswer>, String>)> {
        self.asks
            .iter()
            .map(|a| {
                let r = a.result.clone().unwrap_or_else(|| Err("not asked".into()));
                (a.peer.clone(), r)
            })
            .collect()
    }
}

pub(super) fn next_req(ids: &mut u64) -> u64 {
    *ids = ids.wrapping_add(1);
    *ids
}
