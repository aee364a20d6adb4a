//! Exchanges with peers for the role machine: probes (with the retry on a fresh connection),
//! one-message asks, and the gateways' sightings of an active.

use std::time::{Duration, Instant};

use crate::{lock, Node};
use domsync_net::{open_frame, read_frame, write_frame};
use domsync_proto::model::{DomainId, Epoch, NodeId};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::roles::{PROBE_ATTEMPT, TAKE_OVER_TIMEOUT};
use domsync_proto::repl::MAX_MESSAGE_BYTES;
use domsync_proto::repl::{authorize, Ask, LocalDomain, PeerRefusal};
use domsync_proto::repl::{Message, ProbeAnswer};
use domsync_proto::repl::{Seer, Sighting};

use super::*;

impl Node {
    /// Asks `peer` where it stands on `domain`, telling it our `epoch` when we are active (a
    /// lower active that hears it steps down and follows us) or a candidate epoch to record
    /// (the fencing round of a promotion).
    ///
    /// "Reached" means a fresh exchange: a connection that does not answer (a peer restarted
    /// a moment ago looks alive until its idle timeout) is dropped and the probe is tried
    /// again on a new one, within [`PROBE_BUDGET`].
    ///
    /// # Errors
    /// A one-line description of what failed (connection, stream, answer).
    pub async fn probe(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Result<Option<ProbeAnswer>, String> {
        self.probe_within(peer, domain, epoch, PROBE_BUDGET).await
    }

    /// [`Node::probe`] within `budget` (at least one attempt on a fresh connection when the
    /// first does not answer, as long as the budget allows).
    async fn probe_within(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
        budget: Duration,
    ) -> Result<Option<ProbeAnswer>, String> {
        let deadline = tokio::time::Instant::now() + budget;
        let cached = self.has_connection(peer);
        // First on the connection in place (if any), then once on a fresh one.
        let first = tokio::time::timeout(
            PROBE_ATTEMPT.min(budget),
            self.probe_once(peer, domain, epoch),
        )
        .await;
        let why = match first {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", PROBE_ATTEMPT.min(budget)),
        };
        if !cached {
            // That attempt dialed afresh already: the peer is out of reach.
            return Err(why);
        }
        // The connection may be dead without knowing it (the peer restarted): dial afresh.
        self.disconnect(peer).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, self.probe_once(peer, domain, epoch)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("{e} (first attempt: {why})")),
            Err(_) => Err(format!(
                "no answer within {budget:?} on a fresh connection (first attempt: {why})"
            )),
        }
    }

    pub(super) async fn probe_once(
        &self,
        peer: &NodeId,
        domain: &DomainId,
        epoch: Option<&Epoch>,
    ) -> Result<Option<ProbeAnswer>, String> {
        let conn = self.connection(peer).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = encode_message(&Message::Probe {
            domain: domain.clone(),
            epoch: epoch.cloned(),
        })
        .map_err(|e| e.to_string())?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut recv, MAX_MESSAGE_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the peer ended the stream without answering")?;
        drop(send.finish());
        match open_frame::<Message>(&answer, MAX_MESSAGE_BYTES).map_err(|e| e.to_string())? {
            Message::ProbeAnswer(a) => Ok(a),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }

    /// Checks that `peer` may `ask` about `domain` (invariant 9), logging a refusal.
    pub(crate) fn authorize(
        &self,
        peer: &NodeId,
        ask: Ask,
        domain: &DomainId,
        replicas: &[NodeId],
    ) -> Result<(), PeerRefusal> {
        let followed = lock(&self.inner.standbys).get(domain).map(|sd| sd.active());
        let local = (!replicas.is_empty()).then_some(LocalDomain {
            replicas,
            followed: followed.as_ref(),
        });
        authorize(peer, ask, local)
    }

    /// Records a gateway's report that it reached `active` (epoch `epoch`) of `domain`
    /// `ago` before its request arrived; the latest report per gateway is kept.
    pub fn record_sighting(
        &self,
        domain: &DomainId,
        gateway: &str,
        active: NodeId,
        epoch: Epoch,
        ago: Duration,
    ) {
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let mut all = lock(&self.inner.sightings);
        let per = all.entry(domain.clone()).or_default();
        let newer = per.get(gateway).is_none_or(|(_, _, t)| at >= *t);
        if newer && (per.len() < MAX_SIGHTINGS || per.contains_key(gateway)) {
            per.insert(gateway.to_owned(), (active, epoch, at));
        }
    }

    /// Gateways' latest reports of an active of `domain`, with their age now.
    pub fn sightings(&self, domain: &DomainId) -> Vec<Sighting> {
        let now = Instant::now();
        lock(&self.inner.sightings)
            .get(domain)
            .map(|per| {
                per.iter()
                    .map(|(g, (active, epoch, at))| Sighting {
                        seer: Seer::Gateway(g.clone()),
                        active: active.clone(),
                        epoch: epoch.clone(),
                        age: now.saturating_duration_since(*at),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How this node's replica of `domain` stands, for a peer's probe.
    pub(super) fn probe_answer(&self, domain: &DomainId) -> Option<ProbeAnswer> {
        let replica = lock(&self.inner.actives)
            .get(domain)
            .map(|ad| ad.domain().clone())
            .or_else(|| {
                lock(&self.inner.standbys)
                    .get(domain)
                    .map(|sd| sd.domain().clone())
            })?;
        let s = replica.status().ok()?;
        let heard_active = self.heard_active(domain, &s.epoch);
        Some(ProbeAnswer {
            role: s.role,
            epoch: s.epoch,
            position: s.position,
            heard_active,
        })
    }

    /// Sends one message on a new stream to `peer` and reads one answer.
    pub(super) async fn ask(&self, peer: &NodeId, m: &Message) -> Result<Message, String> {
        let conn = self.connection(peer).await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let frame = encode_message(m).map_err(|e| e.to_string())?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| e.to_string())?;
        let Ok(answer) =
            tokio::time::timeout(TAKE_OVER_TIMEOUT, read_frame(&mut recv, MAX_MESSAGE_BYTES)).await
        else {
            self.disconnect(peer).await;
            return Err(format!("no answer within {TAKE_OVER_TIMEOUT:?}"));
        };
        let answer = answer
            .map_err(|e| e.to_string())?
            .ok_or("the peer ended the stream without answering")?;
        drop(send.finish());
        open_frame::<Message>(&answer, MAX_MESSAGE_BYTES).map_err(|e| e.to_string())
    }
}
