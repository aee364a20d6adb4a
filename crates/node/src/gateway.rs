//! The gateway service of a node (ALPN `domsync-gw/1`, DESIGN.md §8): policy packages and
//! CRLs read from every domain the node holds, active or standby, by the gateways granted it.
//!
//! One task per connection, one per stream. A request is one frame (capped before anything is
//! allocated); the answer names the node, its role and epoch and the position it was read at.
//! A package streams in [`CHUNK_BYTES`] pieces from one read transaction, so a reader costs
//! one piece of memory whatever the package size. A watch wakes on every commit or apply of
//! the domain and pushes what changed; nothing polls.
//!
//! A standby that knows it is behind (never synchronized, lagging, or not heard from its
//! active within the silence bound) never says an item does not exist: where the answer would
//! be `NotFound` (a package, a CRL) or a list that may lack items, it answers `Behind` with
//! where it stands, and the gateway asks another node. What it holds it still serves.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::sync::{watch, Semaphore};

use super::{lock, Node};
use domsync_net::{read_frame, write_frame, FrameError};
use domsync_net::{Identity, CLOSE_REFUSED};
use domsync_proto::gateway::{
    CrlInfo, Query, Refusal, Request, Response, Served, CHUNK_BYTES, MAX_NAMES, MAX_RESPONSE_BYTES,
    MAX_WAIT_MS,
};
use domsync_proto::model::{CrlNumber, DomainId, Epoch, IssuerKey, Position, Role, Version};
use domsync_store::{Domain, StoreError};

/// Limits of the gateway service; beyond them requests are refused with a clear error.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GatewayLimits {
    /// Gateway connections open at once, all gateways together; more are closed with a
    /// reason.
    pub max_connections: usize,
    /// Gateway connections open at once per gateway certificate (`domsync://gateway/<id>`),
    /// so that one gateway cannot take every slot; more are closed with a reason. A gateway
    /// granted no domain of this node is refused before it takes any slot.
    pub max_connections_per_gateway: usize,
    /// Requests (streams, watches included) in progress per connection; more are answered
    /// `Busy`.
    pub max_streams_per_connection: usize,
    /// Largest request frame accepted (at most [`domsync_proto::gateway::MAX_REQUEST_BYTES`]).
    pub max_request_bytes: usize,
    /// How long a gateway may take to send its request once it opened a stream.
    pub request_timeout: Duration,
    /// How long an answer may wait for the gateway to read it: a frame (one package piece,
    /// one watch push) the gateway's stream does not take within this time ends the stream
    /// (reset), and the read snapshot the answer held is released.
    pub answer_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> GatewayLimits {
        GatewayLimits {
            max_connections: 4096,
            max_connections_per_gateway: 64,
            max_streams_per_connection: 64,
            max_request_bytes: domsync_proto::gateway::MAX_REQUEST_BYTES,
            request_timeout: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(30),
        }
    }
}

/// Gateway ids granted per domain.
pub(super) type Grants = HashMap<DomainId, BTreeSet<String>>;

/// Gateway connections open now (in total and per gateway id), connections refused, and a
/// signal that grants changed (open watches re-check).
#[derive(Debug)]
pub(super) struct GatewayCounters {
    connections: AtomicUsize,
    /// Connections open per gateway id; changed together with `connections`, under this lock.
    per_gateway: Mutex<HashMap<String, usize>>,
    grants_changed: watch::Sender<u64>,
    results: [AtomicU64; RESULTS.len()],
    refused: [AtomicU64; REFUSALS.len()],
}

impl Default for GatewayCounters {
    fn default() -> GatewayCounters {
        GatewayCounters {
            connections: AtomicUsize::new(0),
            per_gateway: Mutex::new(HashMap::new()),
            grants_changed: watch::Sender::new(0),
            results: Default::default(),
            refused: Default::default(),
        }
    }
}

/// One admitted gateway connection: counted in the total and its gateway's share until
/// dropped.
struct ConnectionSlot<'a> {
    counters: &'a GatewayCounters,
    gateway: String,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        let mut per = lock(&self.counters.per_gateway);
        if let Some(n) = per.get_mut(&self.gateway) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&self.gateway);
            }
        }
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a gateway connection was refused when it was accepted.
enum Admission {
    /// The gateway is granted no domain of this node.
    NoGrant,
    /// The gateway holds its share of connections already.
    PerGateway(usize),
    /// Every gateway connection slot is taken.
    Total(usize),
}

impl Admission {
    /// The name of the limit, as logged and counted ([`REFUSALS`]).
    fn limit(&self) -> &'static str {
        match self {
            Admission::NoGrant => "no_grant",
            Admission::PerGateway(_) => "per_gateway",
            Admission::Total(_) => "total",
        }
    }

    /// The reason sent to the gateway (and logged): what happened and what to do.
    fn reason(&self, gateway: &str, node: &str) -> String {
        match self {
            Admission::NoGrant => format!(
                "forbidden: gateway {gateway} is granted no domain of node {node}; grant it a domain \
                 (gateways of [[domains]]) or ask a node that holds its domains"
            ),
            Admission::PerGateway(limit) => format!(
                "too many connections of gateway {gateway} to node {node} (limit {limit} per \
                 gateway, [limits] gateway_connections_per_gateway); reuse open connections or \
                 retry later"
            ),
            Admission::Total(limit) => format!(
                "too many gateway connections to node {node} (limit {limit}, [limits] \
                 gateway_connections); retry later or use another node"
            ),
        }
    }
}

/// Ends a stream: the error code a node resets a gateway stream with when the gateway did not
/// read its answer within [`GatewayLimits::answer_timeout`].
const RESET_ANSWER_TIMEOUT: u32 = 0x401;

/// Ends a stream: the error code a node resets a gateway stream with when the request never
/// came or could not be read as a frame.
const RESET_BAD_REQUEST: u32 = 0x400;

impl Node {
    /// Lets gateway `gateway` (the id of its certificate, `domsync://gateway/<id>`) read
    /// `domain` on this node.
    pub fn grant(&self, domain: &DomainId, gateway: &str) {
        lock(&self.inner.grants)
            .entry(domain.clone())
            .or_default()
            .insert(gateway.to_owned());
    }

    /// Withdraws a grant: requests in progress finish, open watches of that gateway on the
    /// domain end with `Forbidden`.
    pub fn revoke(&self, domain: &DomainId, gateway: &str) {
        if let Some(set) = lock(&self.inner.grants).get_mut(domain) {
            set.remove(gateway);
        }
        self.inner
            .gateway
            .grants_changed
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The gateways granted `domain`.
    pub fn grants(&self, domain: &DomainId) -> Vec<String> {
        lock(&self.inner.grants)
            .get(domain)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Gateway connections open now.
    pub fn gateway_connections(&self) -> usize {
        self.inner.gateway.connections.load(Ordering::Relaxed)
    }

    /// Gateway connections open now of the gateway `gateway` (the id of its certificate).
    pub fn gateway_connections_of(&self, gateway: &str) -> usize {
        lock(&self.inner.gateway.per_gateway)
            .get(gateway)
            .copied()
            .unwrap_or(0)
    }

    /// Gateway connections refused when accepted since the node started, by the limit that
    /// refused them ([`REFUSALS`]: `no_grant`, `per_gateway`, `total`).
    pub fn gateway_refusals(&self) -> Vec<(&'static str, u64)> {
        REFUSALS
            .iter()
            .zip(self.inner.gateway.refused.iter())
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Gateway answers sent since the node started, by result (`list`, `package`, `crl`,
    /// `not_modified`, ...).
    pub fn gateway_requests(&self) -> Vec<(&'static str, u64)> {
        RESULTS
            .iter()
            .zip(self.inner.gateway.results.iter())
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Writes one answer frame and counts it; `false` when the stream is gone or the answer
    /// cannot be encoded. A frame the gateway does not take within
    /// [`GatewayLimits::answer_timeout`] resets the stream: the caller then drops what it
    /// holds for the answer (a package's read snapshot).
    async fn respond(
        &self,
        gateway: &str,
        send: &mut quinn::SendStream,
        response: &Response,
    ) -> bool {
        if let Some(i) = result_of(response) {
            self.inner.gateway.results[i].fetch_add(1, Ordering::Relaxed);
        }
        let frame = match domsync_proto::gateway::encode(response, MAX_RESPONSE_BYTES) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(gateway, error = %e, "gateway answer could not be encoded");
                return false;
            }
        };
        let limit = self.inner.config.gateway.answer_timeout;
        match tokio::time::timeout(limit, write_frame(send, &frame)).await {
            Ok(written) => written.is_ok(),
            Err(_) => {
                tracing::warn!(gateway, limit = "answer_timeout", timeout_ms = limit.as_millis(), "gateway answer cut: the gateway did not read it within {} ms ([limits] gateway_answer_timeout_ms); stream reset", limit.as_millis());
                drop(send.reset(RESET_ANSWER_TIMEOUT.into()));
                false
            }
        }
    }

    fn granted(&self, domain: &DomainId, gateway: &str) -> bool {
        lock(&self.inner.grants)
            .get(domain)
            .is_some_and(|s| s.contains(gateway))
    }

    /// Whether `gateway` is granted at least one domain of this node.
    fn granted_any(&self, gateway: &str) -> bool {
        lock(&self.inner.grants)
            .values()
            .any(|s| s.contains(gateway))
    }

    /// Admits a gateway connection right after its handshake, or says which limit refuses
    /// it: no grant here, the gateway's own share, or the total. A refused connection never
    /// holds a slot.
    fn admit_gateway(
        &self,
        gateway: &str,
        limits: &GatewayLimits,
    ) -> Result<ConnectionSlot<'_>, Admission> {
        if !self.granted_any(gateway) {
            return Err(Admission::NoGrant);
        }
        let counters = &self.inner.gateway;
        let mut per = lock(&counters.per_gateway);
        let held = per.get(gateway).copied().unwrap_or(0);
        if held >= limits.max_connections_per_gateway {
            return Err(Admission::PerGateway(limits.max_connections_per_gateway));
        }
        if counters.connections.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(Admission::Total(limits.max_connections));
        }
        counters.connections.fetch_add(1, Ordering::Relaxed);
        *per.entry(gateway.to_owned()).or_default() += 1;
        Ok(ConnectionSlot {
            counters,
            gateway: gateway.to_owned(),
        })
    }

    /// The replica of `domain` served here, active or standby.
    pub fn replica(&self, domain: &DomainId) -> Option<Domain> {
        lock(&self.inner.actives)
            .get(domain)
            .map(|ad| ad.domain().clone())
            .or_else(|| {
                lock(&self.inner.standbys)
                    .get(domain)
                    .map(|sd| sd.domain().clone())
            })
    }

    pub(super) async fn serve_gateway(self, conn: quinn::Connection, peer: Identity) {
        let limits = self.inner.config.gateway.clone();
        let _slot = match self.admit_gateway(&peer.id, &limits) {
            Ok(slot) => slot,
            Err(refusal) => {
                let limit = refusal.limit();
                if let Some(i) = REFUSALS.iter().position(|r| *r == limit) {
                    self.inner.gateway.refused[i].fetch_add(1, Ordering::Relaxed);
                }
                let reason = refusal.reason(&peer.id, self.id().as_str());
                tracing::warn!(gateway = %peer.id, addr = %conn.remote_address(), limit, "gateway connection refused: {reason}");
                conn.close(CLOSE_REFUSED, reason.as_bytes());
                return;
            }
        };
        tracing::debug!(gateway = %peer.id, addr = %conn.remote_address(), "gateway connected");
        let streams = Arc::new(Semaphore::new(limits.max_streams_per_connection));
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Ok((mut send, recv)) = stream else {
                tracing::debug!(gateway = %peer.id, "gateway connection ended");
                return;
            };
            let node = self.clone();
            let gateway = peer.id.clone();
            let limits = limits.clone();
            match Arc::clone(&streams).try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        node.gateway_stream(&gateway, &limits, send, recv).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let why = format!(
                            "{} requests in progress on this connection (the limit)",
                            limits.max_streams_per_connection
                        );
                        node.respond(&gateway, &mut send, &Response::Refused(Refusal::Busy(why)))
                            .await;
                        drop(send.finish());
                        drop(recv);
                    });
                }
            }
        }
    }

    async fn gateway_stream(
        &self,
        gateway: &str,
        limits: &GatewayLimits,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let cap = limits
            .max_request_bytes
            .min(domsync_proto::gateway::MAX_REQUEST_BYTES);
        let frame =
            match tokio::time::timeout(limits.request_timeout, read_frame(&mut recv, cap)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None) | Err(FrameError::Stream(_))) => return,
                Ok(Err(e @ (FrameError::Codec(_) | FrameError::Truncated))) => {
                    tracing::warn!(gateway, error = %e, "gateway request refused");
                    let why = format!("{e} (requests are at most {cap} bytes)");
                    self.respond(
                        gateway,
                        &mut send,
                        &Response::Refused(Refusal::BadRequest(why)),
                    )
                    .await;
                    drop(send.finish());
                    drop(recv.stop(RESET_BAD_REQUEST.into()));
                    return;
                }
                Err(_) => {
                    tracing::debug!(gateway, "gateway stream sent no request in time");
                    drop(send.reset(RESET_BAD_REQUEST.into()));
                    return;
                }
            };
        let request: Request = match domsync_proto::gateway::decode(&frame, cap) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(gateway, error = %e, "gateway request refused");
                let why = format!("undecodable request: {e}");
                self.respond(
                    gateway,
                    &mut send,
                    &Response::Refused(Refusal::BadRequest(why)),
                )
                .await;
                drop(send.finish());
                return;
            }
        };
        let answer = self.answer(gateway, request, &mut send).await;
        if let Err(refusal) = answer {
            self.respond(gateway, &mut send, &Response::Refused(refusal))
                .await;
        }
        drop(send.finish());
        // Let the gateway read the end of the answer before the stream is dropped.
        drop(tokio::time::timeout(Duration::from_secs(5), send.stopped()).await);
    }

    async fn answer(
        &self,
        gateway: &str,
        request: Request,
        send: &mut quinn::SendStream,
    ) -> Result<(), Refusal> {
        check_bounds(&request)?;
        for (domain, heard) in &request.seen {
            if self.granted(domain, gateway) {
                self.record_sighting(
                    domain,
                    gateway,
                    heard.node.clone(),
                    heard.epoch.clone(),
                    Duration::from_millis(heard.ago_ms),
                );
            }
        }
        let replica = self
            .replica(&request.domain)
            .filter(|_| self.granted(&request.domain, gateway));
        let Some(replica) = replica else {
            tracing::warn!(gateway, domain = %request.domain, "gateway request denied: domain not granted here");
            return Err(Refusal::Forbidden);
        };
        let unavailable = |e: StoreError| Refusal::Unavailable(e.to_string());
        match request.query {
            Query::ListPolicies => {
                let read = replica.policies().map_err(unavailable)?;
                let served = self.served(read.role, read.epoch.clone(), read.position);
                // A replica that knows it is behind may lack packages: its list is not a
                // statement of what the domain holds.
                let response = if self.knows_behind(replica.id()) {
                    Response::Behind { served }
                } else {
                    Response::Policies {
                        served,
                        list: read.value,
                    }
                };
                self.respond(gateway, send, &response).await;
                Ok(())
            }
            Query::GetPolicy {
                name,
                if_newer_than,
                at_least,
                wait_ms,
            } => {
                if let Some(at_least) = at_least {
                    let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_WAIT_MS)));
                    if !reached(&replica, &at_least, wait).await {
                        let status = replica.status().map_err(unavailable)?;
                        let served =
                            self.served(status.role, status.epoch.clone(), status.position);
                        self.respond(gateway, send, &Response::Behind { served })
                            .await;
                        return Ok(());
                    }
                }
                self.send_policy(gateway, &replica, &name, if_newer_than.as_ref(), send)
                    .await
                    .map(|_| ())
            }
            Query::ListCrls => {
                let read = replica.crls().map_err(unavailable)?;
                let served = self.served(read.role, read.epoch.clone(), read.position);
                let response = if self.knows_behind(replica.id()) {
                    Response::Behind { served }
                } else {
                    let list = read.value.iter().map(CrlInfo::from).collect();
                    Response::Crls { served, list }
                };
                self.respond(gateway, send, &response).await;
                Ok(())
            }
            Query::GetCrl {
                issuer,
                if_newer_than,
            } => {
                self.send_crl(
                    gateway,
                    &replica,
                    &IssuerKey::Text(issuer),
                    false,
                    if_newer_than,
                    send,
                )
                .await
            }
            Query::GetCrlOf {
                issuer,
                delta,
                if_newer_than,
            } => {
                self.send_crl(gateway, &replica, &issuer, delta, if_newer_than, send)
                    .await
            }
            Query::ListIssuers => {
                let read = replica.issuers().map_err(unavailable)?;
                let served = self.served(read.role, read.epoch.clone(), read.position);
                let response = if self.knows_behind(replica.id()) {
                    Response::Behind { served }
                } else {
                    Response::Issuers {
                        served,
                        list: read.value,
                    }
                };
                self.respond(gateway, send, &response).await;
                Ok(())
            }
            Query::Watch { policies, crls } => {
                self.watch(gateway, &replica, policies, crls, send).await
            }
        }
    }

    /// The answer for an item this replica does not hold: `NotFound` where the replica can
    /// vouch for its position, `Behind` where it knows it is behind (see
    /// [`Node::knows_behind`]), so that no gateway takes a lagging replica's word that the
    /// item does not exist.
    fn not_found(&self, domain: &DomainId, served: Served) -> Response {
        if self.knows_behind(domain) {
            Response::Behind { served }
        } else {
            Response::NotFound { served }
        }
    }

    /// Whether this node knows that its replica of `domain` may be behind the domain's latest
    /// position: it is a standby whose follower never synchronized, is lagging, or has not
    /// heard its active within the silence bound (`NodeConfig::stream_idle`); or it is no
    /// longer followed here. An active is never behind for this purpose.
    fn knows_behind(&self, domain: &DomainId) -> bool {
        if lock(&self.inner.actives).contains_key(domain) {
            return false;
        }
        match self.follower_behind(domain) {
            Some(behind) => behind,
            // Unfollowed (or promoted) since the replica was looked up: not vouched for.
            None => !lock(&self.inner.actives).contains_key(domain),
        }
    }

    fn served(&self, role: Role, epoch: Epoch, position: Position) -> Served {
        Served {
            node: self.id().clone(),
            role,
            epoch,
            position,
        }
    }

    /// Sends one package (begin, pieces, end) unless it is not newer than `held`. Returns the
    /// version sent, `None` when nothing was.
    async fn send_policy(
        &self,
        gateway: &str,
        replica: &Domain,
        name: &str,
        held: Option<&Version>,
        send: &mut quinn::SendStream,
    ) -> Result<Option<Version>, Refusal> {
        let read = replica
            .policy_reader(name)
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let served = self.served(read.role, read.epoch.clone(), read.position);
        let Some(reader) = read.value else {
            let response = self.not_found(replica.id(), served);
            self.respond(gateway, send, &response).await;
            return Ok(None);
        };
        let version = reader.info.stamp();
        if held.is_some_and(|h| version <= *h) {
            self.respond(gateway, send, &Response::NotModified { served })
                .await;
            return Ok(None);
        }
        let info = reader.info.clone();
        if !self
            .respond(gateway, send, &Response::PolicyBegin { served, info })
            .await
        {
            return Ok(None);
        }
        let mut hash = Sha256::new();
        let mut offset = 0u64;
        while offset < reader.info.size {
            let piece = reader
                .read_at(offset, CHUNK_BYTES)
                .map_err(|e| Refusal::Unavailable(e.to_string()))?;
            if piece.is_empty() {
                break;
            }
            offset += piece.len() as u64;
            hash.update(&piece);
            if !self.respond(gateway, send, &Response::Chunk(piece)).await {
                return Ok(None);
            }
        }
        if offset != reader.info.size || <[u8; 32]>::from(hash.finalize()) != reader.info.sha256 {
            tracing::error!(domain = %replica.id(), package = name, "policy content does not match its size and SHA-256: not served");
            return Err(Refusal::Unavailable(format!(
                "the stored content of package {name} is corrupt here"
            )));
        }
        self.respond(gateway, send, &Response::PolicyEnd).await;
        Ok(Some(version))
    }

    /// Pushes the newest version of the watched packages and CRLs each time the domain
    /// commits or applies, until the gateway goes away, its grant is revoked (`Forbidden`) or
    /// the node shuts down. Versions committed faster than the gateway reads are coalesced:
    /// each push is the newest, never an older one.
    /// Answers a CRL request: the base (or newest delta) CRL of `issuer`.
    async fn send_crl(
        &self,
        gateway: &str,
        replica: &Domain,
        issuer: &IssuerKey,
        delta: bool,
        if_newer_than: Option<CrlNumber>,
        send: &mut quinn::SendStream,
    ) -> Result<(), Refusal> {
        let read = replica.crl_of(issuer, delta).map_err(|e| match e {
            StoreError::AmbiguousIssuer { .. } => Refusal::BadRequest(e.to_string()),
            e => Refusal::Unavailable(e.to_string()),
        })?;
        let served = self.served(read.role, read.epoch.clone(), read.position);
        let response = match read.value {
            None => self.not_found(replica.id(), served),
            Some(crl) if if_newer_than.as_ref().is_some_and(|n| crl.number <= *n) => {
                Response::NotModified { served }
            }
            Some(crl) => Response::Crl { served, crl },
        };
        self.respond(gateway, send, &response).await;
        Ok(())
    }

    async fn watch(
        &self,
        gateway: &str,
        replica: &Domain,
        policies: Vec<(String, Option<Version>)>,
        crls: Vec<(String, Option<CrlNumber>)>,
        send: &mut quinn::SendStream,
    ) -> Result<(), Refusal> {
        let mut policies: HashMap<String, Option<Version>> = policies.into_iter().collect();
        let mut crls: HashMap<String, Option<CrlNumber>> = crls.into_iter().collect();
        let mut commits = replica.subscribe();
        let mut grants = self.inner.gateway.grants_changed.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            commits.borrow_and_update();
            if !self
                .push_changes(gateway, replica, &mut policies, &mut crls, send)
                .await
            {
                return Ok(());
            }
            loop {
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { return Ok(()) } else { break },
                    _ = grants.changed() => {
                        if !self.granted(replica.id(), gateway) {
                            tracing::info!(gateway, domain = %replica.id(), "grant revoked: watch ended");
                            return Err(Refusal::Forbidden);
                        }
                    }
                    _ = send.stopped() => return Ok(()),
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
            }
        }
    }

    /// One pass of a watch: sends what is newer than what the gateway holds. `false` when the
    /// stream is gone.
    async fn push_changes(
        &self,
        gateway: &str,
        replica: &Domain,
        policies: &mut HashMap<String, Option<Version>>,
        crls: &mut HashMap<String, Option<CrlNumber>>,
        send: &mut quinn::SendStream,
    ) -> bool {
        if !policies.is_empty() {
            let Ok(read) = replica.policies() else {
                return true;
            };
            let current: HashMap<&str, Version> = read
                .value
                .iter()
                .map(|i| (i.name.as_str(), i.stamp()))
                .collect();
            for (name, held) in policies.iter_mut() {
                match (current.get(name.as_str()), held.as_ref()) {
                    (Some(now), Some(h)) if now <= h => {}
                    (Some(_), _) => {
                        match self
                            .send_policy(gateway, replica, name, held.as_ref(), send)
                            .await
                        {
                            Ok(Some(v)) => *held = Some(v),
                            Ok(None) => {}
                            Err(_) => return false,
                        }
                    }
                    (None, Some(_)) => {
                        let served =
                            self.served(read.role, read.epoch.clone(), read.position.clone());
                        let name = name.clone();
                        if !self
                            .respond(gateway, send, &Response::Removed { served, name })
                            .await
                        {
                            return false;
                        }
                        *held = None;
                    }
                    (None, None) => {}
                }
            }
        }
        if !crls.is_empty() {
            let Ok(read) = replica.crls() else {
                return true;
            };
            for (issuer, held) in crls.iter_mut() {
                let crl = read.value.iter().find(|c| &c.issuer == issuer);
                let served = || self.served(read.role, read.epoch.clone(), read.position.clone());
                let response = match (crl, held.as_ref()) {
                    (Some(c), Some(h)) if c.number <= *h => continue,
                    (Some(c), _) => {
                        *held = Some(c.number.clone());
                        Response::Crl {
                            served: served(),
                            crl: c.clone(),
                        }
                    }
                    (None, Some(_)) => {
                        *held = None;
                        Response::Removed {
                            served: served(),
                            name: issuer.clone(),
                        }
                    }
                    (None, None) => continue,
                };
                if !self.respond(gateway, send, &response).await {
                    return false;
                }
            }
        }
        true
    }
}

/// Refuses requests beyond the protocol's bounds.
fn check_bounds(request: &Request) -> Result<(), Refusal> {
    let bad = |what: &str| Err(Refusal::BadRequest(what.to_owned()));
    if request.seen.len() > MAX_NAMES {
        return bad(&format!("more than {MAX_NAMES} sightings"));
    }
    if let Query::Watch { policies, crls } = &request.query {
        if policies.len() > MAX_NAMES || crls.len() > MAX_NAMES {
            return bad(&format!(
                "a watch covers at most {MAX_NAMES} packages and {MAX_NAMES} CRLs"
            ));
        }
        if policies.is_empty() && crls.is_empty() {
            return bad("a watch needs at least one package or CRL");
        }
    }
    Ok(())
}

/// Waits up to `wait` for `replica` to reach `at_least` (positions compare by epoch, then lsn).
async fn reached(replica: &Domain, at_least: &Position, wait: Duration) -> bool {
    let target = (&at_least.epoch, at_least.lsn);
    let mut positions = replica.subscribe();
    tokio::time::timeout(wait, positions.wait_for(|p| (&p.epoch, p.lsn) >= target))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// What a gateway answer counts as, for metrics; `None` for the pieces of a package.
fn result_of(response: &Response) -> Option<usize> {
    let name = match response {
        Response::Policies { .. } | Response::Crls { .. } | Response::Issuers { .. } => "list",
        Response::PolicyBegin { .. } => "package",
        Response::Crl { .. } => "crl",
        Response::NotModified { .. } => "not_modified",
        Response::NotFound { .. } => "not_found",
        Response::Behind { .. } => "behind",
        Response::Removed { .. } => "removed",
        Response::Refused(Refusal::Forbidden) => "forbidden",
        Response::Refused(Refusal::BadRequest(_)) => "bad_request",
        Response::Refused(Refusal::Busy(_)) => "busy",
        Response::Refused(Refusal::Unavailable(_)) => "unavailable",
        Response::Chunk(_) | Response::PolicyEnd => return None,
    };
    RESULTS.iter().position(|r| *r == name)
}

/// The limits a gateway connection is refused by when accepted, as counted by
/// [`Node::gateway_refusals`]: granted no domain here, its own share
/// ([`GatewayLimits::max_connections_per_gateway`]), the total
/// ([`GatewayLimits::max_connections`]).
pub const REFUSALS: [&str; 3] = ["no_grant", "per_gateway", "total"];

/// The results gateway answers are counted by.
pub const RESULTS: [&str; 11] = [
    "list",
    "package",
    "crl",
    "not_modified",
    "not_found",
    "behind",
    "removed",
    "forbidden",
    "bad_request",
    "busy",
    "unavailable",
];
