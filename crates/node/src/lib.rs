//! The node: drives the sans-IO replication core ([`domsync_proto::repl`]) over QUIC ([`domsync_net`])
//! and the local store ([`domsync_store`]).
//!
//! One [`Node`] owns one QUIC endpoint (server and client), one connection per peer node
//! (opened by the standby side, shared by all domains) and one bidirectional stream per
//! domain and standby. Every stream has its own task, so a stalled or huge domain never
//! blocks another, and a slow standby never blocks the active's local commits.
//!
//! ```no_run
//! # async fn demo(store: domsync_store::Store, creds: domsync_net::Credentials) -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeMap;
//! use domsync_node::{ActiveConfig, Node, NodeConfig};
//! use domsync_proto::repl::Durability;
//! use domsync_proto::model::NodeId;
//!
//! let peers = BTreeMap::from([(NodeId::new("b")?, "127.0.0.1:7401".parse()?)]);
//! let node = Node::start(NodeConfig::new("127.0.0.1:7400".parse()?, creds, peers))?;
//! let domain = store.create_domain(&"tenant-1".parse()?)?;
//! node.serve_active(domain, ActiveConfig::new(Durability::Standby, vec![NodeId::new("b")?]));
//! let position = node.write(&"tenant-1".parse()?, vec![/* ops */]).await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod active;
mod error;
mod gateway;
mod roles;
mod ship;
mod standby;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

pub use active::{ActiveConfig, StandbyReport};
pub use error::{NodeError, WriteError};
pub use gateway::GatewayLimits;
pub use roles::{PromoteError, Promotion, Switchover, SwitchoverError};
pub use standby::FollowerReport;

use domsync_net::{
    CertificateInfo, Credentials, Identity, PeerRole, ALPN_ADMIN, ALPN_APP, ALPN_GATEWAY, ALPN_REPL,
};
use domsync_proto::model::{DomainId, Epoch, NodeId};
use domsync_proto::repl::{Backoff, ShipConfig};

/// Settings of a [`Node`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// UDP address to listen on: replication, remote admin, and gateways unless
    /// `gateway_listen` is set.
    pub listen: SocketAddr,
    /// A separate UDP address for gateways only (e.g. on the gateways' network); when set,
    /// `listen` no longer serves gateways.
    pub gateway_listen: Option<SocketAddr>,
    /// This node's certificate, key, CA and CRL at start ([`Node::set_credentials`] replaces
    /// them).
    pub credentials: Credentials,
    /// Where the other nodes listen.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Batching and window of the active's streams.
    pub ship: ShipConfig,
    /// Reconnect backoff of the standby's followers.
    pub backoff: Backoff,
    /// Rows per snapshot message, about (bounded memory: one chunk in flight per stage).
    pub snapshot_chunk_bytes: usize,
    /// How often the stream tasks look at the clock (heartbeats, reconnects).
    pub tick: Duration,
    /// A standby whose active sends nothing (not even a heartbeat) for this long reconnects.
    pub stream_idle: Duration,
    /// How long connecting to a peer may take.
    pub connect_timeout: Duration,
    /// Most bytes of change log a standby replica keeps (for the standbys it would serve
    /// after a promotion); checked every `standby_retention_interval`.
    pub standby_retention_bytes: u64,
    /// How often a standby replica's log is trimmed.
    pub standby_retention_interval: Duration,
    /// Limits of the gateway service.
    pub gateway: GatewayLimits,
    /// Split-brain guard: an active heard from (by a peer or a gateway) within this window
    /// counts as alive, and a promotion is refused without force.
    pub guard_window: Duration,
}

impl NodeConfig {
    /// Defaults for a node listening on `listen`.
    pub fn new(
        listen: SocketAddr,
        credentials: Credentials,
        peers: BTreeMap<NodeId, SocketAddr>,
    ) -> NodeConfig {
        NodeConfig {
            listen,
            gateway_listen: None,
            credentials,
            peers,
            ship: ShipConfig::default(),
            backoff: Backoff::default(),
            snapshot_chunk_bytes: 256 * 1024,
            tick: Duration::from_millis(100),
            stream_idle: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            standby_retention_bytes: 256 << 20,
            standby_retention_interval: Duration::from_secs(1),
            guard_window: Duration::from_secs(5),
            gateway: GatewayLimits::default(),
        }
    }
}

/// A running replication node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    id: NodeId,
    config: NodeConfig,
    /// The credentials in force: new handshakes, incoming and outgoing, use them.
    credentials: Mutex<Credentials>,
    /// The certificate each configured peer presented on its latest handshake with us.
    peer_certs: Mutex<BTreeMap<NodeId, CertificateInfo>>,
    peers: Mutex<BTreeMap<NodeId, SocketAddr>>,
    endpoint: quinn::Endpoint,
    /// Gateways' own endpoint, when `gateway_listen` is set.
    gateway_endpoint: Option<quinn::Endpoint>,
    /// One slot per peer: connecting to a slow peer never holds up the others, and callers
    /// for the same peer share one attempt.
    connections: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    actives: Mutex<HashMap<DomainId, Arc<active::ActiveDomain>>>,
    standbys: Mutex<HashMap<DomainId, Arc<standby::StandbyDomain>>>,
    /// The local configuration of each domain (see [`Node::configure`]): its replicas, and
    /// how it is served when this node is its active.
    configs: Mutex<HashMap<DomainId, ActiveConfig>>,
    /// The role machine of each domain that took part in a role change.
    roles: Mutex<HashMap<DomainId, Arc<roles::RoleSlot>>>,
    /// Gateways' latest report per domain: gateway id → (active, epoch, when it reached it).
    sightings: Mutex<HashMap<DomainId, GatewaySightings>>,
    grants: Mutex<gateway::Grants>,
    gateway: gateway::GatewayCounters,
    admin: Mutex<Option<AdminHandler>>,
    app: Mutex<Option<AppHandler>>,
    shutdown: watch::Sender<bool>,
}

/// Serves an authorized remote admin connection (ALPN `domsync-admin/1`, admin certificate);
/// installed by whoever runs the node (the daemon) with [`Node::set_admin_handler`].
pub type AdminHandler = Arc<dyn Fn(quinn::Connection, Identity) + Send + Sync>;

/// Serves an authenticated application connection (ALPN `domsync-app/1`, app certificate:
/// what it may read or write is the handler's to decide); installed with
/// [`Node::set_app_handler`].
pub type AppHandler = Arc<dyn Fn(quinn::Connection, Identity) + Send + Sync>;

/// Per gateway id: the active it last reached, its epoch, and when.
type GatewaySightings = HashMap<String, (NodeId, Epoch, Instant)>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wall_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Converts a monotonic instant of the past into wall-clock time, for reports.
fn to_wall(t: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(t)
}

impl Node {
    /// Binds the endpoint and starts accepting replication connections. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// [`NodeError::NotANode`] unless the credentials are a node's, [`NodeError::Tls`] or
    /// [`NodeError::Bind`].
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let id = config
            .credentials
            .identity
            .node_id()
            .ok_or_else(|| NodeError::NotANode {
                identity: config.credentials.identity.uri(),
            })?;
        let (server, gateway_server) =
            server_configs(&config.credentials, config.gateway_listen.is_some())?;
        let endpoint =
            quinn::Endpoint::server(server, config.listen).map_err(|e| NodeError::Bind {
                addr: config.listen,
                detail: e.to_string(),
            })?;
        let gateway_endpoint = match (config.gateway_listen, gateway_server) {
            (Some(addr), Some(server)) => Some(quinn::Endpoint::server(server, addr).map_err(
                |e| NodeError::Bind {
                    addr,
                    detail: e.to_string(),
                },
            )?),
            _ => None,
        };
        let (shutdown, _) = watch::channel(false);
        let node = Node {
            inner: Arc::new(Inner {
                id,
                credentials: Mutex::new(config.credentials.clone()),
                peer_certs: Mutex::new(BTreeMap::new()),
                peers: Mutex::new(config.peers.clone()),
                config,
                endpoint,
                gateway_endpoint,
                connections: Mutex::new(HashMap::new()),
                actives: Mutex::new(HashMap::new()),
                standbys: Mutex::new(HashMap::new()),
                configs: Mutex::new(HashMap::new()),
                roles: Mutex::new(HashMap::new()),
                sightings: Mutex::new(HashMap::new()),
                grants: Mutex::new(HashMap::new()),
                gateway: gateway::GatewayCounters::default(),
                admin: Mutex::new(None),
                app: Mutex::new(None),
                shutdown,
            }),
        };
        tokio::spawn(node.clone().accept_loop(node.inner.endpoint.clone()));
        if let Some(e) = &node.inner.gateway_endpoint {
            tokio::spawn(node.clone().accept_loop(e.clone()));
        }
        tokio::spawn(Node::announce_loop(Arc::downgrade(&node.inner)));
        Ok(node)
    }

    /// This node's id (from its certificate).
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// Puts new credentials (certificate, key, CA, CRL) in force: every new handshake uses
    /// them, incoming on the main and the gateway endpoint and outgoing to peers; open
    /// connections are left as they are. All or nothing: on error the running ones stay.
    ///
    /// # Errors
    /// [`NodeError::OtherNode`] when they are not this node's, [`NodeError::Tls`] when a
    /// server configuration cannot be built from them.
    pub fn set_credentials(&self, credentials: Credentials) -> Result<(), NodeError> {
        if credentials.identity.node_id().as_ref() != Some(&self.inner.id)
            || credentials.identity.role != PeerRole::Node
        {
            return Err(NodeError::OtherNode {
                identity: credentials.identity.uri(),
                expected: self.inner.id.clone(),
            });
        }
        let (main, gateway) = server_configs(&credentials, self.inner.gateway_endpoint.is_some())?;
        // Everything is built: nothing below can fail.
        let mut current = lock(&self.inner.credentials);
        self.inner.endpoint.set_server_config(Some(main));
        if let (Some(endpoint), Some(gateway)) = (&self.inner.gateway_endpoint, gateway) {
            endpoint.set_server_config(Some(gateway));
        }
        *current = credentials;
        Ok(())
    }

    /// The credentials in force.
    pub fn credentials(&self) -> Credentials {
        lock(&self.inner.credentials).clone()
    }

    /// This node's certificate in force: identity, serial, end of validity.
    pub fn own_certificate(&self) -> Option<CertificateInfo> {
        let creds = lock(&self.inner.credentials);
        CertificateInfo::from_der(creds.chain.first()?).ok()
    }

    /// The certificate each configured peer presented on its latest handshake with this node
    /// (as client or server), by peer.
    pub fn peer_certificates(&self) -> Vec<(NodeId, CertificateInfo)> {
        lock(&self.inner.peer_certs)
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect()
    }

    /// Remembers the certificate the peer `node` presented on `conn`.
    fn saw_certificate(&self, node: &NodeId, conn: &quinn::Connection) {
        let info = domsync_net::peer_certificate(conn)
            .and_then(|der| CertificateInfo::from_der(&der).ok());
        if let Some(info) = info {
            lock(&self.inner.peer_certs).insert(node.clone(), info);
        }
    }

    /// The address the endpoint is bound to (useful with port 0).
    ///
    /// # Errors
    /// [`NodeError::Bind`] when the socket cannot tell.
    pub fn local_addr(&self) -> Result<SocketAddr, NodeError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| NodeError::Bind {
                addr: self.inner.config.listen,
                detail: e.to_string(),
            })
    }

    /// The address gateways reach this node at: the gateway endpoint's when `gateway_listen`
    /// is set, else [`Node::local_addr`].
    ///
    /// # Errors
    /// [`NodeError::Bind`] when the socket cannot tell.
    pub fn gateway_addr(&self) -> Result<SocketAddr, NodeError> {
        match &self.inner.gateway_endpoint {
            Some(e) => e.local_addr().map_err(|e| NodeError::Bind {
                addr: self
                    .inner
                    .config
                    .gateway_listen
                    .unwrap_or(self.inner.config.listen),
                detail: e.to_string(),
            }),
            None => self.local_addr(),
        }
    }

    /// Sets (or changes) where a peer node listens.
    pub fn set_peer(&self, node: NodeId, addr: SocketAddr) {
        lock(&self.inner.peers).insert(node, addr);
    }

    /// Replaces the set of peer nodes (a reloaded configuration): a node no longer listed is
    /// refused from its next connection on, and the connection to it is dropped.
    pub fn set_peers(&self, peers: BTreeMap<NodeId, SocketAddr>) {
        let gone: Vec<NodeId> = {
            let mut current = lock(&self.inner.peers);
            let gone = current
                .keys()
                .filter(|n| !peers.contains_key(*n))
                .cloned()
                .collect();
            *current = peers;
            gone
        };
        lock(&self.inner.peer_certs).retain(|n, _| !gone.contains(n));
        for node in gone {
            if let Some(slot) = lock(&self.inner.connections).remove(&node) {
                if let Ok(mut slot) = slot.try_lock() {
                    if let Some(conn) = slot.take() {
                        conn.close(domsync_net::CLOSE_REFUSED, b"no longer a configured peer");
                    }
                }
            }
        }
    }

    fn peer_addr(&self, node: &NodeId) -> Option<SocketAddr> {
        lock(&self.inner.peers).get(node).copied()
    }

    /// Sets the local configuration of `domain`: `config.standbys` are its other replicas
    /// (this node is one), and the rest says how it is served when this node is its active
    /// (after a promotion or a hand-over too: durability, standbys, retention and timeouts
    /// always come from here, never from a peer's message). Only the domain's replicas may
    /// follow, probe, fence or hand over for it (invariant 9). [`Node::serve_active`] sets it
    /// too; a node that only follows a domain should be given it before a switchover can
    /// hand the domain to it.
    ///
    /// A domain served as active here with other settings is served again with these
    /// (its standbys reconnect).
    pub fn configure(&self, domain: &DomainId, config: ActiveConfig) {
        lock(&self.inner.configs).insert(domain.clone(), config.clone());
        let running = self.active(domain);
        if let Some(ad) = running {
            if *ad.config() != config {
                tracing::info!(domain = %domain, durability = %config.durability, standbys = ?config.standbys, "domain settings changed: serving it as active with them");
                self.serve_active(ad.domain().clone(), config);
            }
        }
    }

    /// The local configuration of `domain`, if set.
    pub fn configuration(&self, domain: &DomainId) -> Option<ActiveConfig> {
        lock(&self.inner.configs).get(domain).cloned()
    }

    /// The replicas of `domain` in the local configuration (this node first), with the active
    /// this node follows for it when that one was named by [`Node::follow`] only. Empty when
    /// the domain is not held here.
    pub(crate) fn replicas(&self, domain: &DomainId) -> Vec<NodeId> {
        let held = lock(&self.inner.actives).contains_key(domain)
            || lock(&self.inner.standbys).contains_key(domain);
        if !held {
            return Vec::new();
        }
        let mut all = vec![self.id().clone()];
        let mut add = |n: &NodeId| {
            if !all.contains(n) {
                all.push(n.clone());
            }
        };
        if let Some(c) = lock(&self.inner.configs).get(domain) {
            c.standbys.iter().for_each(&mut add);
        }
        if let Some(sd) = lock(&self.inner.standbys).get(domain) {
            add(&sd.active());
        }
        all
    }

    /// Stops serving `domain` in whatever role it has here (its store is left as it is).
    pub fn release(&self, domain: &DomainId) {
        if let Some(ad) = lock(&self.inner.actives).remove(domain) {
            ad.stop();
        }
        self.unfollow(domain);
    }

    /// Stops every task, closes the endpoint and waits (briefly) for peers to be told.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        for (_, ad) in std::mem::take(&mut *lock(&self.inner.actives)) {
            ad.stop();
        }
        for (_, sd) in std::mem::take(&mut *lock(&self.inner.standbys)) {
            sd.stop();
        }
        self.inner
            .endpoint
            .close(0u32.into(), b"node shutting down");
        if let Some(e) = &self.inner.gateway_endpoint {
            e.close(0u32.into(), b"node shutting down");
        }
        // Bounded: a peer that does not answer is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        // Hand the listening addresses back now: connections still draining keep a closed
        // endpoint's driver alive, and with it its socket, so a node started again in the
        // same process could not bind its address. Rebinding twice drops the listening socket
        // (quinn keeps the previous one until traffic arrives on the new one).
        for e in std::iter::once(&self.inner.endpoint).chain(self.inner.gateway_endpoint.iter()) {
            for _ in 0..2 {
                let spare = e.local_addr().map(|a| {
                    if a.is_ipv6() {
                        SocketAddr::from(([0u16; 8], 0))
                    } else {
                        SocketAddr::from(([127, 0, 0, 1], 0))
                    }
                });
                if let Some(Err(err)) = spare
                    .ok()
                    .and_then(|a| std::net::UdpSocket::bind(a).ok())
                    .map(|socket| e.rebind(socket))
                {
                    tracing::debug!(error = %err, "listening socket not handed back");
                }
            }
        }
    }

    /// Drops the connection to `peer`, if any (streams on it end; followers reconnect after
    /// their backoff). For operators and tests of resumption.
    pub async fn disconnect(&self, peer: &NodeId) {
        let slot = lock(&self.inner.connections).get(peer).cloned();
        if let Some(slot) = slot {
            // A task holding the slot is dialing afresh already: nothing to drop, and waiting
            // for its handshake (up to the connect timeout) would only delay the caller.
            let Ok(mut slot) = slot.try_lock() else {
                return;
            };
            if let Some(conn) = slot.take() {
                conn.close(0u32.into(), b"disconnected");
            }
        }
    }

    async fn accept_loop(self, endpoint: quinn::Endpoint) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => i,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some(incoming) = incoming else { return };
            let node = self.clone();
            tokio::spawn(async move {
                match domsync_net::accept_any(
                    incoming,
                    &[ALPN_REPL, ALPN_GATEWAY, ALPN_ADMIN, ALPN_APP],
                )
                .await
                {
                    Ok((conn, peer, ALPN_GATEWAY)) => node.serve_gateway(conn, peer).await,
                    Ok((conn, peer, ALPN_ADMIN)) => node.serve_admin(conn, peer),
                    Ok((conn, peer, ALPN_APP)) => node.serve_app(conn, peer),
                    Ok((conn, peer, _)) => node.serve_connection(conn, peer).await,
                    Err(e) => tracing::warn!(error = %e, "connection refused"),
                }
            });
        }
    }

    /// Installs (or with `None` removes) the handler of remote admin connections. Without one,
    /// admin connections are closed with a refusal.
    pub fn set_admin_handler(&self, handler: Option<AdminHandler>) {
        *lock(&self.inner.admin) = handler;
    }

    /// Installs (or with `None` removes) the handler of application connections. Without
    /// one, application connections are closed with a refusal.
    pub fn set_app_handler(&self, handler: Option<AppHandler>) {
        *lock(&self.inner.app) = handler;
    }

    /// Hands an authenticated application connection to the installed handler.
    fn serve_app(&self, conn: quinn::Connection, peer: Identity) {
        let handler = lock(&self.inner.app).clone();
        match handler {
            Some(h) => h(conn, peer),
            None => {
                tracing::warn!(peer = %peer, addr = %conn.remote_address(), "application connection refused: applications are not served by this node");
                conn.close(
                    domsync_net::CLOSE_REFUSED,
                    b"applications are not served by this node",
                );
            }
        }
    }

    /// Hands an authorized admin connection to the installed handler.
    fn serve_admin(&self, conn: quinn::Connection, peer: Identity) {
        let handler = lock(&self.inner.admin).clone();
        match handler {
            Some(h) => h(conn, peer),
            None => {
                tracing::warn!(peer = %peer, addr = %conn.remote_address(), "admin connection refused: remote admin is not served by this node");
                conn.close(
                    domsync_net::CLOSE_REFUSED,
                    b"remote admin is not served by this node",
                );
            }
        }
    }

    /// Serves the streams a peer opens on its connection. Only nodes listed as peers in the
    /// local configuration are served (invariant 9): another node certificate of the
    /// deployment is refused as soon as its handshake completes, and logged.
    async fn serve_connection(self, conn: quinn::Connection, peer: Identity) {
        let Some(peer_id) = peer.node_id().filter(|_| peer.role == PeerRole::Node) else {
            return;
        };
        if self.peer_addr(&peer_id).is_none() {
            tracing::warn!(peer = %peer_id, addr = %conn.remote_address(), "replication connection refused: node {peer_id} is not listed in [[peers]] of the local configuration");
            conn.close(
                domsync_net::CLOSE_REFUSED,
                b"not a configured peer of this node",
            );
            return;
        }
        tracing::debug!(peer = %peer_id, addr = %conn.remote_address(), "replication peer connected");
        self.saw_certificate(&peer_id, &conn);
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let stream = tokio::select! {
                s = conn.accept_bi() => s,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match stream {
                Ok((send, recv)) => {
                    let node = self.clone();
                    let peer = peer_id.clone();
                    tokio::spawn(async move { node.serve_stream(peer, send, recv).await });
                }
                Err(e) => {
                    tracing::debug!(peer = %peer_id, error = %e, "replication connection ended");
                    return;
                }
            }
        }
    }

    /// True when a connection to `peer` is in place and not known to be closed (it may
    /// still be dead without knowing it: a peer restarted a moment ago).
    fn has_connection(&self, peer: &NodeId) -> bool {
        let slot = lock(&self.inner.connections).get(peer).cloned();
        slot.is_some_and(|slot| {
            slot.try_lock()
                .is_ok_and(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()))
        })
    }

    /// The connection to `peer`, opened when missing or dead.
    async fn connection(&self, peer: &NodeId) -> Result<quinn::Connection, NodeError> {
        let slot = Arc::clone(
            lock(&self.inner.connections)
                .entry(peer.clone())
                .or_default(),
        );
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = self
            .peer_addr(peer)
            .ok_or_else(|| NodeError::UnknownPeer { node: peer.clone() })?;
        let expect =
            Identity::new(PeerRole::Node, peer.as_str()).map_err(|e| NodeError::Connect {
                node: peer.clone(),
                addr,
                detail: e.to_string(),
            })?;
        let client = domsync_net::client_config_for(&self.credentials(), ALPN_REPL, Some(&expect))?;
        let connecting = self
            .inner
            .endpoint
            .connect_with(client, addr, domsync_net::SERVER_NAME)
            .map_err(|e| NodeError::Connect {
                node: peer.clone(),
                addr,
                detail: e.to_string(),
            })?;
        let limit = self.inner.config.connect_timeout;
        let conn = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| NodeError::Connect {
                node: peer.clone(),
                addr,
                detail: format!("no answer within {limit:?}"),
            })?
            .map_err(|e| NodeError::Connect {
                node: peer.clone(),
                addr,
                detail: e.to_string(),
            })?;
        self.saw_certificate(peer, &conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// The server configurations of a node: the main endpoint's (replication, admin, and gateways
/// unless they have their own endpoint) and, with `gateway_endpoint`, the gateway endpoint's.
fn server_configs(
    credentials: &Credentials,
    gateway_endpoint: bool,
) -> Result<(quinn::ServerConfig, Option<quinn::ServerConfig>), NodeError> {
    let main_alpns: &[&[u8]] = if gateway_endpoint {
        &[ALPN_REPL, ALPN_ADMIN, ALPN_APP]
    } else {
        &[ALPN_REPL, ALPN_GATEWAY, ALPN_ADMIN, ALPN_APP]
    };
    let transport = Arc::new(domsync_net::server_transport_config());
    let main = domsync_net::server_config(credentials, main_alpns, transport.clone())?;
    let gateway = if gateway_endpoint {
        Some(domsync_net::server_config(
            credentials,
            &[ALPN_GATEWAY],
            transport,
        )?)
    } else {
        None
    };
    Ok((main, gateway))
}
