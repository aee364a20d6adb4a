//! The client's connections to the nodes of its domain: the shared state ([`Inner`],
//! [`State`], one [`Slot`] per node), probing and ranking the nodes, the last active seen, and
//! the locking helpers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::cache::Cache;
use super::client::Client;
use super::exchange::Fail;
use super::held::{CrlState, PolicyState, Written};
use super::select::Selector;
use domsync_proto::gateway::Served;
use domsync_proto::model::Heard;
use domsync_proto::model::{DomainId, Epoch, NodeId};

/// How long a cold client waits for the other nodes' first round trips once one node answered,
/// so that its first request already goes to the nearest.
const PROBE_GRACE: Duration = Duration::from_millis(100);

pub(super) struct Inner {
    pub(super) domain: DomainId,
    pub(super) nodes: Vec<(NodeId, SocketAddr)>,
    pub(super) quic: Vec<quinn::ClientConfig>,
    pub(super) endpoint: quinn::Endpoint,
    pub(super) connect_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) lag_wait: Duration,
    pub(super) recheck: Duration,
    pub(super) slots: Vec<tokio::sync::Mutex<Slot>>,
    pub(super) state: Mutex<State>,
    pub(super) probed: Notify,
    pub(super) cache: Option<Cache>,
    pub(super) written: Written,
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) conn: Option<quinn::Connection>,
    /// When the last connection attempt failed, and why (the TLS or transport reason, told
    /// again to requests refused before the next attempt).
    failed: Option<(Instant, String)>,
}

pub(super) struct State {
    pub(super) selector: Selector,
    pub(super) policies: HashMap<String, PolicyState>,
    pub(super) crls: HashMap<String, CrlState>,
    /// The last answer from an active: node, epoch, when.
    pub(super) active: Option<(NodeId, Epoch, Instant)>,
}

pub(super) fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    lock_any(m)
}

pub(super) fn lock_any<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// The gateway's last-seen active, for every request.
    pub(super) fn seen(&self) -> Vec<(DomainId, Heard)> {
        let st = lock(&self.inner.state);
        st.active
            .iter()
            .map(|(node, epoch, at)| {
                (
                    self.inner.domain.clone(),
                    Heard {
                        node: node.clone(),
                        epoch: epoch.clone(),
                        ago_ms: millis(at.elapsed()),
                    },
                )
            })
            .collect()
    }

    /// Notes who served an answer (an active feeds the sightings sent with each request).
    pub(super) fn note(&self, st: &mut State, served: &Served) {
        if served.role == domsync_proto::model::Role::Active {
            st.active = Some((served.node.clone(), served.epoch.clone(), Instant::now()));
        }
    }

    pub(super) fn spawn_probes(&self, due: Vec<usize>) {
        for i in due {
            let client = self.clone();
            tokio::spawn(async move {
                let rtt = client.connection(i).await.ok().map(|c| c.rtt());
                lock(&client.inner.state)
                    .selector
                    .probed(i, rtt, Instant::now());
                client.inner.probed.notify_waiters();
            });
        }
    }

    /// The nodes to try, best first. Starts probes of nodes due for one; a client with no
    /// node up waits for its probes (until all answered, or one did and [`PROBE_GRACE`]
    /// passed, or the connect timeout).
    pub(super) async fn candidates(&self) -> Vec<usize> {
        let (due, any_up) = {
            let mut st = lock(&self.inner.state);
            (
                st.selector.due_for_probe(Instant::now()),
                st.selector.any_up(),
            )
        };
        self.spawn_probes(due);
        if !any_up {
            let deadline = Instant::now() + self.inner.connect_timeout;
            let mut grace: Option<Instant> = None;
            loop {
                let notified = self.inner.probed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let now = Instant::now();
                let until = {
                    let st = lock(&self.inner.state);
                    if !st.selector.probing() {
                        break;
                    }
                    if st.selector.any_up() {
                        *grace.get_or_insert(now + PROBE_GRACE)
                    } else {
                        deadline
                    }
                };
                let left = until.min(deadline).saturating_duration_since(now);
                if left.is_zero() {
                    break;
                }
                // A timeout just re-checks the conditions above.
                let _ = tokio::time::timeout(left, notified).await;
            }
        }
        lock(&self.inner.state).selector.order(Instant::now())
    }

    /// The connection to node `i`, opened when missing or closed. A node whose connection
    /// failed less than a connect timeout ago fails at once.
    pub(super) async fn connection(&self, i: usize) -> Result<quinn::Connection, Fail> {
        let (Some(slot), Some((_, addr)), Some(quic)) = (
            self.inner.slots.get(i),
            self.inner.nodes.get(i),
            self.inner.quic.get(i),
        ) else {
            return Err(Fail::Connect("no such node".into()));
        };
        let mut slot = slot.lock().await;
        if let Some(c) = &slot.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        slot.conn = None;
        if let Some((t, why)) = &slot.failed {
            if t.elapsed() < self.inner.connect_timeout {
                return Err(Fail::Connect(format!(
                    "{why} (last attempt {} ms ago; retried after {} ms)",
                    t.elapsed().as_millis(),
                    self.inner.connect_timeout.as_millis()
                )));
            }
        }
        let connecting = self
            .inner
            .endpoint
            .connect_with(quic.clone(), *addr, domsync_net::SERVER_NAME)
            .map_err(|e| Fail::Connect(format!("{addr}: {e}")))?;
        match tokio::time::timeout(self.inner.connect_timeout, connecting).await {
            Ok(Ok(c)) => {
                slot.conn = Some(c.clone());
                slot.failed = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                // The TLS reason (`UnknownIssuer`, `certificate expired`, ...) is in `e`.
                let why = format!("{addr}: {e}");
                slot.failed = Some((Instant::now(), why.clone()));
                Err(Fail::Connect(why))
            }
            Err(_) => {
                slot.failed = Some((
                    Instant::now(),
                    format!(
                        "{addr}: no handshake within {} ms",
                        self.inner.connect_timeout.as_millis()
                    ),
                ));
                Err(Fail::Timeout("the connection"))
            }
        }
    }
}
