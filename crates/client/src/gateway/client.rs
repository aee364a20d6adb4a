//! The gateway client library (DESIGN.md §8): what a security gateway's firmware links to read
//! its policy packages and CRLs from the nodes of its domain.
//!
//! A [`Client`] is configured with the nodes of one domain ([`ClientConfig`]). It keeps one
//! QUIC connection per node it uses and one stream per request (see
//! [`super::protocol`]), and:
//!
//! * **prefers the nearest node**: every node is connected to once and its round trip measured
//!   (quinn's RTT estimate, refreshed after each answer); requests go to the node with the
//!   lowest round trip ([`super::select`]), fail over to the next on an error, a refusal, a bad
//!   answer or a timeout, and come back to a node that failed once it answers again (it is
//!   re-probed in the background, with a backoff capped at [`ClientConfig::recheck`]);
//! * **reads monotonically**: once it has seen version V of a package (or number N of a CRL),
//!   it never returns an older one. A node that answers older is not believed: a package
//!   request asks a lagging node to wait for V (`at_least`, up to [`ClientConfig::lag_wait`])
//!   and moves to the next node when it answers `Behind`; a node whose list or CRL is older
//!   than what the client saw is skipped;
//! * **never takes "not found" from one node for the domain's word**: a standby that knows it
//!   is behind answers `Behind` instead (and is skipped), and a "not found" is final only when
//!   no other configured node has the item: the others are asked in turn, and when none has
//!   it the error names the node at the highest position and the nodes that could not be
//!   asked;
//! * **verifies** each package's size and SHA-256 against its [`PolicyInfo`] before accepting
//!   it (a mismatch skips that node), reading at most `info.size` bytes (itself capped at
//!   [`MAX_POLICY_BYTES`]);
//! * **caches** the last good package and CRL on disk ([`super::cache`]) when
//!   [`ClientConfig::cache_dir`] is set: when no node can answer, a fetch returns the held copy
//!   marked [`Origin::Held`];
//! * tells every node the **last active it saw** for the domain (node, epoch, how long ago)
//!   with each request, for the split-brain guard of a promotion.
//!
//! Every result says who served it ([`Served`]: node, role, epoch, position).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use domsync_client::gateway::{Client, ClientConfig, Update};
//! use domsync_net::{Identity, PeerRole, TlsFiles};
//!
//! let me = Identity::new(PeerRole::Gateway, "gw-17")?;
//! let credentials = TlsFiles::in_dir("/etc/domsync/pki".as_ref(), &me).load()?;
//! let nodes = vec![
//!     ("a".parse()?, "10.0.0.1:7400".parse()?),
//!     ("b".parse()?, "10.0.0.2:7400".parse()?),
//! ];
//! let mut config = ClientConfig::new("tenant-1".parse()?, nodes, credentials);
//! config.cache_dir = Some("/var/cache/domsync-gw".into());
//! let client = Client::new(config)?;
//!
//! // The current package (or the held copy when no node answers).
//! let package = client.fetch("fw-rules").await?;
//! println!("{} {} from {} ({:?})", package.info.name, package.info.stamp(), package.served.node, package.origin);
//!
//! // Then every new version, pushed by the nodes; failover and resumption are built in.
//! let mut watch = client.watch(&["fw-rules"], &["CN=Tenant CA"])?;
//! loop {
//!     match watch.next().await {
//!         Ok(Update::Policy(p)) => println!("new package {} {}", p.info.name, p.info.stamp()),
//!         Ok(other) => println!("{other:?}"),
//!         Err(e) => eprintln!("{e}"), // no node answered this round; next() tries again
//!     }
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, Notify};

use super::cache::{Cache, CachedCrl, CachedPolicy};
use super::select::{Health, SelectConfig, Selector};
use domsync_net::{client_config_for, Credentials, Identity, PeerRole, TlsError, ALPN_GATEWAY};
use domsync_net::{read_frame, write_frame};
use domsync_proto::gateway::{
    CrlInfo, Query, Refusal, Request, Response, Served, MAX_NAMES, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, MAX_WAIT_MS,
};
use domsync_proto::model::Heard;
use domsync_proto::model::{
    Crl, CrlNumber, DomainId, Epoch, NodeId, PolicyInfo, Position, Version, MAX_POLICY_BYTES,
};

/// How long a cold client waits for the other nodes' first round trips once one node answered,
/// so that its first request already goes to the nearest.
const PROBE_GRACE: Duration = Duration::from_millis(100);

/// Pause of a watch between two rounds in which no node could be reached.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The domain read.
    pub domain: DomainId,
    /// Its nodes and their addresses, in order of preference when round trips are equal.
    /// Each node must present the certificate `domsync://node/<id>`.
    pub nodes: Vec<(NodeId, SocketAddr)>,
    /// This gateway's credentials (`domsync://gateway/<id>`).
    pub credentials: Credentials,
    /// Where to keep the last good copies (none: memory only).
    pub cache_dir: Option<PathBuf>,
    /// Longest wait for a connection to a node.
    pub connect_timeout: Duration,
    /// Longest wait for each answer frame of a node (beyond `lag_wait` for the first).
    pub request_timeout: Duration,
    /// How long a lagging node may take to reach a version the client has seen before it is
    /// skipped (at most [`MAX_WAIT_MS`]).
    pub lag_wait: Duration,
    /// Longest time a failed node waits before it is probed again; also how often a watch
    /// checks whether a better node is back.
    pub recheck: Duration,
    /// First retry of a failed node; doubles per failure up to `recheck`.
    pub retry_min: Duration,
    /// Round trips compare in steps of this size; within a step the node listed first wins.
    pub rtt_step: Duration,
}

impl ClientConfig {
    /// A configuration with the default timeouts: connect 3 s, answer frames 10 s, lag wait
    /// 2 s, recheck 30 s, first retry 500 ms, round-trip step 5 ms; no cache.
    pub fn new(
        domain: DomainId,
        nodes: Vec<(NodeId, SocketAddr)>,
        credentials: Credentials,
    ) -> ClientConfig {
        ClientConfig {
            domain,
            nodes,
            credentials,
            cache_dir: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            lag_wait: Duration::from_secs(2),
            recheck: Duration::from_secs(30),
            retry_min: Duration::from_millis(500),
            rtt_step: Duration::from_millis(5),
        }
    }
}

/// Where a returned copy comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Sent now by the serving node.
    Fetched,
    /// The client's copy, confirmed current by the serving node (it has nothing newer).
    Confirmed,
    /// No node could answer (`why` says what each did): this is the last good copy the client
    /// holds, from memory or its disk cache; `served` names the node that sent it then.
    Held {
        /// What the nodes did, one line.
        why: String,
    },
}

/// A policy package and who served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Name, version, size, SHA-256 (checked against `content`).
    pub info: PolicyInfo,
    /// The content.
    pub content: Arc<Vec<u8>>,
    /// Who served it (for [`Origin::Confirmed`], the node that confirmed it).
    pub served: Served,
    /// Where this copy comes from.
    pub origin: Origin,
}

/// A CRL and who served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlCopy {
    /// The CRL (issuer, number, validity, DER).
    pub crl: Crl,
    /// Who served it (for [`Origin::Confirmed`], the node that confirmed it).
    pub served: Served,
    /// Where this copy comes from.
    pub origin: Origin,
}

/// A list and who served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    /// The items.
    pub items: Vec<T>,
    /// Who served it.
    pub served: Served,
}

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new version of a watched package (verified).
    Policy(Package),
    /// A new CRL of a watched issuer.
    Crl(CrlCopy),
    /// A watched package was removed from the domain.
    PolicyRemoved {
        /// Package name.
        name: String,
        /// Who said so.
        served: Served,
    },
    /// A watched issuer's CRL was removed from the domain.
    CrlRemoved {
        /// Issuer.
        issuer: String,
        /// Who said so.
        served: Served,
    },
}

/// How the client sees one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub node: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// Up (with its round trip), down, unknown or being probed.
    pub health: Health,
}

/// Why a request of the client failed. Each message is one line: what happened, what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("gateway client: {0}")]
    Config(String),
    /// The credentials are not usable for a gateway client.
    #[error("gateway client credentials: {0}")]
    Tls(#[from] TlsError),
    /// The client's UDP socket could not be opened.
    #[error("cannot open the gateway client's UDP socket: {0}; check the bind address and that the process may open sockets")]
    Endpoint(String),
    /// No node could answer, and there is no held copy to fall back on.
    #[error("no node of domain {domain} could answer ({detail}); check that the nodes run, are reachable and grant this gateway")]
    Unavailable {
        /// The domain.
        domain: DomainId,
        /// What each node did.
        detail: String,
    },
    /// The package does not exist: no configured node that could be asked holds it, and
    /// `served` is the "not found" of the one at the highest position (none of them behind
    /// what the client saw, none of them knowing itself behind the domain).
    #[error("package {name} does not exist in domain {domain} (node {}, {}, lsn {}{}); check the name with `domsync gateway list`", .served.node, .served.role, .served.position.lsn, unasked(.unreached))]
    PolicyNotFound {
        /// The domain.
        domain: DomainId,
        /// The package asked for.
        name: String,
        /// Who said so.
        served: Box<Served>,
        /// Configured nodes that could not be asked (unreachable, refused, bad answer): one
        /// of them may hold a newer position.
        unreached: Vec<NodeId>,
    },
    /// There is no CRL of this issuer: as [`Error::PolicyNotFound`].
    #[error("no CRL of issuer {issuer} in domain {domain} (node {}, {}, lsn {}{}); check the issuer with `domsync gateway list`", .served.node, .served.role, .served.position.lsn, unasked(.unreached))]
    CrlNotFound {
        /// The domain.
        domain: DomainId,
        /// The issuer asked for.
        issuer: String,
        /// Who said so.
        served: Box<Served>,
        /// Configured nodes that could not be asked: one of them may hold a newer position.
        unreached: Vec<NodeId>,
    },
}

/// Why one node's answer was not used (the client moves on to the next node).
#[derive(Debug, Clone)]
enum Fail {
    Connect(String),
    Timeout(&'static str),
    Stream(String),
    Refused(Refusal),
    /// The answer broke the protocol or failed verification.
    Bad(String),
    /// The node is behind what the client has seen.
    Behind(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Connect(e) => write!(f, "cannot connect: {e}"),
            Fail::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Fail::Stream(e) => write!(f, "stream failed: {e}"),
            Fail::Refused(r) => write!(f, "refused: {r}"),
            Fail::Bad(e) => write!(f, "bad answer: {e}"),
            Fail::Behind(e) => write!(f, "behind: {e}"),
        }
    }
}

/// A gateway client of one domain; cheap to clone (clones share connections, node ranking,
/// the versions seen and the cache). See the module documentation.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("domain", &self.inner.domain)
            .field("nodes", &self.inner.nodes)
            .finish_non_exhaustive()
    }
}

struct Inner {
    domain: DomainId,
    nodes: Vec<(NodeId, SocketAddr)>,
    quic: Vec<quinn::ClientConfig>,
    endpoint: quinn::Endpoint,
    connect_timeout: Duration,
    request_timeout: Duration,
    lag_wait: Duration,
    recheck: Duration,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    state: Mutex<State>,
    probed: Notify,
    cache: Option<Cache>,
    written: Written,
}

#[derive(Default)]
struct Slot {
    conn: Option<quinn::Connection>,
    failed_at: Option<Instant>,
}

struct State {
    selector: Selector,
    policies: HashMap<String, PolicyState>,
    crls: HashMap<String, CrlState>,
    /// The last answer from an active: node, epoch, when.
    active: Option<(NodeId, Epoch, Instant)>,
}

#[derive(Default)]
struct PolicyState {
    /// The highest version seen anywhere (lists, fetches, watches).
    known: Option<Version>,
    /// The last good copy.
    held: Option<Package>,
    /// Whether the disk cache was consulted.
    loaded: bool,
}

#[derive(Default)]
struct CrlState {
    /// The highest number seen, and the position of the answer that showed it.
    known: Option<(CrlNumber, Position)>,
    held: Option<CrlCopy>,
    loaded: bool,
}

/// What one request asks.
enum Ask<'a> {
    ListPolicies,
    Fetch(&'a str),
    ListCrls,
    Crl(&'a str),
}

/// What one node answered (before it becomes a result).
#[derive(Debug)]
enum Got {
    Policies(Listing<PolicyInfo>),
    Package(Package),
    Crls(Listing<CrlInfo>),
    Crl(CrlCopy),
    /// The package or CRL asked for is not there, as of `served`'s position (and that node
    /// is not behind what the client saw).
    NotFound(Served),
}

/// How a request across the nodes ended without the item.
#[derive(Debug)]
enum Miss {
    /// No node that could be asked holds it: the "not found" at the highest position, and the
    /// nodes that could not be asked.
    Absent {
        served: Served,
        unreached: Vec<NodeId>,
    },
    /// No node gave a usable answer.
    Failed(Vec<(NodeId, Fail)>),
}

/// The way of one request through the configured nodes, in the order they are asked; no I/O.
///
/// The first answer that carries the item (a package, a CRL, a list, a confirmation of the
/// held copy) ends the request. A "not found" does not: another node may hold a newer
/// position where the item exists (a standby that was wiped, say, and does not know it yet),
/// so the next nodes are asked too. Only when no node sent the item is the "not found" of the
/// node at the highest position (epoch, then lsn; the earliest asked among equals) the
/// result, naming the nodes that could not be asked; with no "not found" at all (every node
/// behind or unreachable), the failures.
#[derive(Debug, Default)]
struct Lookup {
    absent: Option<(NodeId, Served)>,
    failures: Vec<(NodeId, Fail)>,
}

impl Lookup {
    /// Takes node `node`'s answer: `Some` when it ends the request.
    fn answer(&mut self, node: NodeId, answer: Result<Got, Fail>) -> Option<Got> {
        match answer {
            Ok(Got::NotFound(served)) => {
                let higher = self.absent.as_ref().is_none_or(|(_, best)| {
                    (&served.position.epoch, served.position.lsn)
                        > (&best.position.epoch, best.position.lsn)
                });
                if higher {
                    self.absent = Some((node, served));
                }
                None
            }
            Ok(got) => Some(got),
            Err(fail) => {
                self.failures.push((node, fail));
                None
            }
        }
    }

    /// Every node was asked and none sent the item.
    fn finish(self) -> Miss {
        match self.absent {
            Some((_, served)) => Miss::Absent {
                served,
                // A node that answered `Behind` was asked: it does not have the item.
                unreached: self
                    .failures
                    .into_iter()
                    .filter(|(_, f)| !matches!(f, Fail::Behind(_)))
                    .map(|(n, _)| n)
                    .collect(),
            },
            None => Miss::Failed(self.failures),
        }
    }
}

/// The tail of a "not found" message naming the nodes that could not be asked.
fn unasked(unreached: &[NodeId]) -> String {
    match unreached {
        [] => String::new(),
        [one] => format!("; node {one} could not be asked and may hold it"),
        many => format!(
            "; nodes {} could not be asked and may hold it",
            many.iter()
                .map(NodeId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One request's stream.
struct Exchange {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: quinn::Connection,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    lock_any(m)
}

fn lock_any<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The newest copy written to the disk cache per item, so that background writes finishing
/// out of order never replace a newer copy.
#[derive(Default)]
struct Written {
    policies: Mutex<HashMap<String, Version>>,
    crls: Mutex<HashMap<String, CrlNumber>>,
}

/// A version as the position of the record that wrote it.
fn version_position(v: &Version) -> Position {
    Position {
        epoch: v.epoch.clone(),
        lsn: v.lsn,
        chain: 0,
    }
}

/// Whether position `a` is at or past `b` (epoch, then lsn; chains are not compared).
fn reached(a: &Position, b: &Position) -> bool {
    (&a.epoch, a.lsn) >= (&b.epoch, b.lsn)
}

/// A node that answered `Behind` unasked: it knows it is behind the domain and cannot vouch
/// that an item is missing.
fn knows_behind(served: &Served) -> Fail {
    Fail::Behind(format!(
        "{} at {}, knows it is behind the domain",
        served.role, served.position
    ))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn summary(failures: &[(NodeId, Fail)]) -> String {
    if failures.is_empty() {
        return "no node configured".to_owned();
    }
    failures
        .iter()
        .map(|(n, f)| format!("{n}: {f}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Client {
    /// A client with its own QUIC endpoint on an ephemeral UDP port (IPv6 when a node has an
    /// IPv6 address). Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] without nodes or for credentials that are not a gateway's;
    /// [`Error::Tls`]; [`Error::Endpoint`] when the socket cannot be opened.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let bind: SocketAddr = if config.nodes.iter().any(|(_, a)| a.is_ipv6()) {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|e| Error::Endpoint(format!("{bind}: {e}")))?;
        Client::with_endpoint(config, endpoint)
    }

    /// A client using an existing endpoint (many clients may share one UDP socket). The
    /// endpoint needs no default client configuration: each connection brings its own.
    ///
    /// # Errors
    /// As [`Client::new`], without [`Error::Endpoint`].
    pub fn with_endpoint(config: ClientConfig, endpoint: quinn::Endpoint) -> Result<Client, Error> {
        if config.nodes.is_empty() {
            return Err(Error::Config(format!(
                "no node given for domain {}; pass at least one node id and address",
                config.domain
            )));
        }
        if config.credentials.identity.role != PeerRole::Gateway {
            return Err(Error::Config(format!(
                "the credentials are {}, not a gateway's; issue one with `domsync pki issue --role gateway`",
                config.credentials.identity.uri()
            )));
        }
        let mut quic = Vec::with_capacity(config.nodes.len());
        for (node, _) in &config.nodes {
            let expect = Identity::new(PeerRole::Node, node.as_str())
                .map_err(|e| Error::Config(format!("node {node}: {e}")))?;
            quic.push(client_config_for(
                &config.credentials,
                ALPN_GATEWAY,
                Some(&expect),
            )?);
        }
        let cache = match &config.cache_dir {
            Some(dir) => match Cache::open(dir) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "gateway cache unusable; running without it");
                    None
                }
            },
            None => None,
        };
        let select = SelectConfig {
            rtt_step: config.rtt_step,
            recheck: config.recheck,
            retry_min: config.retry_min.min(config.recheck),
        };
        let n = config.nodes.len();
        Ok(Client {
            inner: Arc::new(Inner {
                domain: config.domain,
                quic,
                endpoint,
                connect_timeout: config.connect_timeout,
                request_timeout: config.request_timeout,
                lag_wait: config
                    .lag_wait
                    .min(Duration::from_millis(u64::from(MAX_WAIT_MS))),
                recheck: config.recheck,
                slots: (0..n).map(|_| tokio::sync::Mutex::default()).collect(),
                state: Mutex::new(State {
                    selector: Selector::new(n, select),
                    policies: HashMap::new(),
                    crls: HashMap::new(),
                    active: None,
                }),
                probed: Notify::new(),
                cache,
                written: Written::default(),
                nodes: config.nodes,
            }),
        })
    }

    /// The domain this client reads.
    pub fn domain(&self) -> &DomainId {
        &self.inner.domain
    }

    /// How the client sees each node now (configuration order).
    pub fn nodes(&self) -> Vec<NodeReport> {
        let st = lock(&self.inner.state);
        self.inner
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (node, addr))| NodeReport {
                node: node.clone(),
                addr: *addr,
                health: st.selector.health(i).cloned().unwrap_or(Health::Unknown),
            })
            .collect()
    }

    /// The node requests go to first now, if any is up.
    pub fn preferred(&self) -> Option<NodeId> {
        let st = lock(&self.inner.state);
        st.selector
            .preferred(Instant::now())
            .map(|i| self.inner.nodes[i].0.clone())
    }

    /// Connects to every node that is not up (all of them on a fresh client) and waits until
    /// each answered or failed (bounded by the connect timeout), so that the next request
    /// goes to the nearest. Requests do this by themselves; this is for callers that want the
    /// ranking up front.
    pub async fn measure(&self) -> Vec<NodeReport> {
        let due = lock(&self.inner.state).selector.probe_all(Instant::now());
        self.spawn_probes(due);
        let deadline = Instant::now() + self.inner.connect_timeout + Duration::from_millis(100);
        loop {
            let notified = self.inner.probed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock(&self.inner.state).selector.probing() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                break;
            }
        }
        self.nodes()
    }

    /// The packages of the domain, from the nearest node not behind the versions the client
    /// has seen.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no node could answer.
    pub async fn list_policies(&self) -> Result<Listing<PolicyInfo>, Error> {
        match self.ask(&Ask::ListPolicies).await {
            Ok(Got::Policies(l)) => Ok(l),
            Ok(_) | Err(Miss::Absent { .. }) => Err(self.unexpected()),
            Err(Miss::Failed(failures)) => Err(self.unavailable(&failures)),
        }
    }

    /// Package `name`: a newer version when a node has one (verified, cached), else the
    /// client's copy confirmed current; never older than a version the client has seen. When
    /// no node can answer, the held copy (memory or disk cache) marked [`Origin::Held`].
    ///
    /// A node's "not found" is final only when no other configured node holds the package:
    /// the others are asked in turn, and the package comes from the first that has it.
    ///
    /// # Errors
    /// [`Error::PolicyNotFound`] when every node that could be asked said so (the one at the
    /// highest position is named; the held copy is dropped); [`Error::Unavailable`] when no
    /// node could answer and no copy is held.
    pub async fn fetch(&self, name: &str) -> Result<Package, Error> {
        self.load_policy(name).await;
        match self.ask(&Ask::Fetch(name)).await {
            Ok(Got::Package(p)) => Ok(p),
            Ok(_) => Err(self.unexpected()),
            Err(Miss::Absent { served, unreached }) => {
                if let Some(write) = self.forget_policy(name, &served) {
                    let _ = write.await;
                }
                Err(Error::PolicyNotFound {
                    domain: self.inner.domain.clone(),
                    name: name.to_owned(),
                    served: Box::new(served),
                    unreached,
                })
            }
            Err(Miss::Failed(failures)) => {
                let held = lock(&self.inner.state)
                    .policies
                    .get(name)
                    .and_then(|p| p.held.clone());
                match held {
                    Some(mut p) => {
                        p.origin = Origin::Held {
                            why: summary(&failures),
                        };
                        Ok(p)
                    }
                    None => Err(self.unavailable(&failures)),
                }
            }
        }
    }

    /// The CRLs of the domain (without their bytes), from the nearest node not behind the CRL
    /// numbers the client has seen.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no node could answer.
    pub async fn list_crls(&self) -> Result<Listing<CrlInfo>, Error> {
        match self.ask(&Ask::ListCrls).await {
            Ok(Got::Crls(l)) => Ok(l),
            Ok(_) | Err(Miss::Absent { .. }) => Err(self.unexpected()),
            Err(Miss::Failed(failures)) => Err(self.unavailable(&failures)),
        }
    }

    /// The CRL of `issuer` (RFC 4514 text, as listed): as [`Client::fetch`], by CRL number.
    ///
    /// # Errors
    /// [`Error::CrlNotFound`] when every node that could be asked said so; [`Error::Unavailable`]
    /// when no node could answer and no copy is held.
    pub async fn crl(&self, issuer: &str) -> Result<CrlCopy, Error> {
        self.load_crl(issuer).await;
        match self.ask(&Ask::Crl(issuer)).await {
            Ok(Got::Crl(c)) => Ok(c),
            Ok(_) => Err(self.unexpected()),
            Err(Miss::Absent { served, unreached }) => {
                if let Some(write) = self.forget_crl(issuer, &served) {
                    let _ = write.await;
                }
                Err(Error::CrlNotFound {
                    domain: self.inner.domain.clone(),
                    issuer: issuer.to_owned(),
                    served: Box::new(served),
                    unreached,
                })
            }
            Err(Miss::Failed(failures)) => {
                let held = lock(&self.inner.state)
                    .crls
                    .get(issuer)
                    .and_then(|c| c.held.clone());
                match held {
                    Some(mut c) => {
                        c.origin = Origin::Held {
                            why: summary(&failures),
                        };
                        Ok(c)
                    }
                    None => Err(self.unavailable(&failures)),
                }
            }
        }
    }

    /// The copy of package `name` the client holds (memory, else disk cache), without asking
    /// any node; marked [`Origin::Held`].
    pub async fn held_policy(&self, name: &str) -> Option<Package> {
        self.load_policy(name).await;
        let mut p = lock(&self.inner.state)
            .policies
            .get(name)
            .and_then(|p| p.held.clone())?;
        p.origin = Origin::Held {
            why: "held copy, not asked".to_owned(),
        };
        Some(p)
    }

    /// The CRL of `issuer` the client holds, without asking any node; marked
    /// [`Origin::Held`].
    pub async fn held_crl(&self, issuer: &str) -> Option<CrlCopy> {
        self.load_crl(issuer).await;
        let mut c = lock(&self.inner.state)
            .crls
            .get(issuer)
            .and_then(|c| c.held.clone())?;
        c.origin = Origin::Held {
            why: "held copy, not asked".to_owned(),
        };
        Some(c)
    }

    /// Watches packages and CRL issuers: [`Watch::next`] yields each version newer than the
    /// one the client holds, as the nodes push them. The stream is opened on the first
    /// `next()`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty watch or more than [`MAX_NAMES`] packages or issuers.
    pub fn watch(&self, policies: &[&str], crls: &[&str]) -> Result<Watch, Error> {
        if policies.is_empty() && crls.is_empty() {
            return Err(Error::Config(
                "a watch needs at least one package or CRL issuer".to_owned(),
            ));
        }
        if policies.len() > MAX_NAMES || crls.len() > MAX_NAMES {
            return Err(Error::Config(format!(
                "a watch covers at most {MAX_NAMES} packages and {MAX_NAMES} CRL issuers; use several watches"
            )));
        }
        let mut recheck = tokio::time::interval(self.inner.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Watch {
            client: self.clone(),
            policies: policies.iter().map(|s| (*s).to_owned()).collect(),
            crls: crls.iter().map(|s| (*s).to_owned()).collect(),
            stream: None,
            recheck,
            pause: false,
            failures: Vec::new(),
        })
    }

    /// Closes every connection (requests in progress fail; a later request reconnects).
    pub async fn close(&self) {
        for slot in &self.inner.slots {
            if let Some(conn) = slot.lock().await.conn.take() {
                conn.close(0u32.into(), b"gateway client closed");
            }
        }
    }

    fn unexpected(&self) -> Error {
        Error::Unavailable {
            domain: self.inner.domain.clone(),
            detail: "internal: an answer of the wrong kind was matched; report this bug".into(),
        }
    }

    fn unavailable(&self, failures: &[(NodeId, Fail)]) -> Error {
        Error::Unavailable {
            domain: self.inner.domain.clone(),
            detail: summary(failures),
        }
    }

    /// The gateway's last-seen active, for every request.
    fn seen(&self) -> Vec<(DomainId, Heard)> {
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
    fn note(&self, st: &mut State, served: &Served) {
        if served.role == domsync_proto::model::Role::Active {
            st.active = Some((served.node.clone(), served.epoch.clone(), Instant::now()));
        }
    }

    fn spawn_probes(&self, due: Vec<usize>) {
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
    async fn candidates(&self) -> Vec<usize> {
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
    async fn connection(&self, i: usize) -> Result<quinn::Connection, Fail> {
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
        if let Some(t) = slot.failed_at {
            if t.elapsed() < self.inner.connect_timeout {
                return Err(Fail::Connect(format!(
                    "the last attempt failed {} ms ago",
                    t.elapsed().as_millis()
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
                slot.failed_at = None;
                Ok(c)
            }
            Ok(Err(e)) => {
                slot.failed_at = Some(Instant::now());
                Err(Fail::Connect(format!("{addr}: {e}")))
            }
            Err(_) => {
                slot.failed_at = Some(Instant::now());
                Err(Fail::Timeout("the connection"))
            }
        }
    }

    /// Opens a stream on node `i` and sends the request.
    async fn open(&self, i: usize, query: Query) -> Result<Exchange, Fail> {
        let conn = self.connection(i).await?;
        let request = Request {
            domain: self.inner.domain.clone(),
            seen: self.seen(),
            query,
        };
        let frame = domsync_proto::gateway::encode(&request, MAX_REQUEST_BYTES)
            .map_err(|e| Fail::Bad(format!("request not encodable: {e}")))?;
        let (mut send, recv) = tokio::time::timeout(self.inner.request_timeout, conn.open_bi())
            .await
            .map_err(|_| Fail::Timeout("a stream"))?
            .map_err(|e| Fail::Stream(e.to_string()))?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| Fail::Stream(e.to_string()))?;
        send.finish().map_err(|e| Fail::Stream(e.to_string()))?;
        Ok(Exchange {
            _send: send,
            recv,
            conn,
        })
    }

    async fn read(&self, ex: &mut Exchange, extra: Duration) -> Result<Response, Fail> {
        let wait = self.inner.request_timeout + extra;
        match tokio::time::timeout(wait, read_frame(&mut ex.recv, MAX_RESPONSE_BYTES)).await {
            Err(_) => Err(Fail::Timeout("the answer")),
            Ok(Err(e)) => Err(Fail::Stream(e.to_string())),
            Ok(Ok(None)) => Err(Fail::Stream("the node ended the answer early".into())),
            Ok(Ok(Some(frame))) => domsync_proto::gateway::decode(&frame, MAX_RESPONSE_BYTES)
                .map_err(|e| Fail::Bad(format!("undecodable frame: {e}"))),
        }
    }

    /// Tries the nodes in order until one gives an answer that carries the item; a "not
    /// found" moves on to the next node too (see [`Lookup`]).
    async fn ask(&self, ask: &Ask<'_>) -> Result<Got, Miss> {
        let mut lookup = Lookup::default();
        for i in self.candidates().await {
            let node = self.inner.nodes[i].0.clone();
            let answer = match self.attempt(i, ask).await {
                Ok((got, rtt)) => {
                    lock(&self.inner.state).selector.succeeded(i, rtt);
                    if matches!(got, Got::NotFound(_)) {
                        tracing::debug!(%node, "gateway request: not found there; asking the next node");
                    }
                    Ok(got)
                }
                Err(fail) => {
                    tracing::debug!(%node, error = %fail, "gateway request: trying the next node");
                    lock(&self.inner.state).selector.failed(i, Instant::now());
                    Err(fail)
                }
            };
            if let Some(got) = lookup.answer(node, answer) {
                return Ok(got);
            }
        }
        Err(lookup.finish())
    }

    async fn attempt(&self, i: usize, ask: &Ask<'_>) -> Result<(Got, Duration), Fail> {
        let got = match ask {
            Ask::ListPolicies => {
                let mut ex = self.open(i, Query::ListPolicies).await?;
                let got = self.list_policies_answer(&mut ex).await?;
                (got, ex.conn.rtt())
            }
            Ask::Fetch(name) => self.fetch_from(i, name).await?,
            Ask::ListCrls => {
                let mut ex = self.open(i, Query::ListCrls).await?;
                let got = self.list_crls_answer(&mut ex).await?;
                (got, ex.conn.rtt())
            }
            Ask::Crl(issuer) => self.crl_from(i, issuer).await?,
        };
        Ok(got)
    }

    async fn list_policies_answer(&self, ex: &mut Exchange) -> Result<Got, Fail> {
        let (served, list) = match self.read(ex, Duration::ZERO).await? {
            Response::Policies { served, list } => (served, list),
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        let mut st = lock(&self.inner.state);
        for (name, ps) in &st.policies {
            let Some(known) = &ps.known else { continue };
            match list.iter().find(|p| &p.name == name) {
                Some(p) if p.stamp() < *known => {
                    return Err(Fail::Behind(format!(
                        "lists package {name} at {}, the client saw {known}",
                        p.stamp()
                    )))
                }
                None if !reached(&served.position, &version_position(known)) => {
                    return Err(Fail::Behind(format!(
                        "at {} without package {name}, the client saw {known}",
                        served.position
                    )))
                }
                _ => {}
            }
        }
        for p in &list {
            let ps = st.policies.entry(p.name.clone()).or_default();
            if ps.known.as_ref().is_none_or(|k| p.stamp() > *k) {
                ps.known = Some(p.stamp());
            }
        }
        self.note(&mut st, &served);
        Ok(Got::Policies(Listing {
            items: list,
            served,
        }))
    }

    async fn list_crls_answer(&self, ex: &mut Exchange) -> Result<Got, Fail> {
        let (served, list) = match self.read(ex, Duration::ZERO).await? {
            Response::Crls { served, list } => (served, list),
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        let mut st = lock(&self.inner.state);
        for (issuer, cs) in &st.crls {
            let Some((known, at)) = &cs.known else {
                continue;
            };
            match list.iter().find(|c| &c.issuer == issuer) {
                Some(c) if c.number < *known => {
                    return Err(Fail::Behind(format!(
                        "lists CRL {} of {issuer}, the client saw {known}",
                        c.number
                    )))
                }
                None if !reached(&served.position, at) => {
                    return Err(Fail::Behind(format!(
                        "at {} without the CRL of {issuer}, the client saw it at {at}",
                        served.position
                    )))
                }
                _ => {}
            }
        }
        for c in &list {
            let cs = st.crls.entry(c.issuer.clone()).or_default();
            if cs.known.as_ref().is_none_or(|(k, _)| c.number > *k) {
                cs.known = Some((c.number.clone(), served.position.clone()));
            }
        }
        self.note(&mut st, &served);
        Ok(Got::Crls(Listing {
            items: list,
            served,
        }))
    }

    async fn fetch_from(&self, i: usize, name: &str) -> Result<(Got, Duration), Fail> {
        let (held, known) = {
            let st = lock(&self.inner.state);
            let ps = st.policies.get(name);
            (
                ps.and_then(|p| p.held.clone()),
                ps.and_then(|p| p.known.clone()),
            )
        };
        let held_version = held.as_ref().map(|p| p.info.stamp());
        let at_least = known.as_ref().map(version_position);
        let extra = if at_least.is_some() {
            self.inner.lag_wait
        } else {
            Duration::ZERO
        };
        let query = Query::GetPolicy {
            name: name.to_owned(),
            if_newer_than: held_version.clone(),
            at_least: at_least.clone(),
            wait_ms: u32::try_from(extra.as_millis()).unwrap_or(MAX_WAIT_MS),
        };
        let mut ex = self.open(i, query).await?;
        let got = match self.read(&mut ex, extra).await? {
            Response::PolicyBegin { served, info } => {
                if info.name != name {
                    return Err(Fail::Bad(format!(
                        "asked for package {name}, got {}",
                        info.name
                    )));
                }
                let v = info.stamp();
                if known.as_ref().is_some_and(|k| v < *k) {
                    return Err(Fail::Behind(format!(
                        "sent {name} {v}, the client saw {}",
                        known.as_ref().map(ToString::to_string).unwrap_or_default()
                    )));
                }
                let mut assembly = Assembly::begin(served, info)?;
                loop {
                    match self.read(&mut ex, Duration::ZERO).await? {
                        Response::Chunk(c) => assembly.chunk(&c)?,
                        Response::PolicyEnd => break,
                        Response::Refused(r) => return Err(Fail::Refused(r)),
                        other => {
                            return Err(Fail::Bad(format!(
                                "unexpected {} inside a package",
                                kind(&other)
                            )))
                        }
                    }
                }
                let package = assembly.end()?;
                if held_version.as_ref().is_some_and(|h| v <= *h) {
                    // The node ignored `if_newer_than`; ours is as new.
                    return Err(Fail::Bad(format!(
                        "sent {name} {v} though the client holds it"
                    )));
                }
                if let Some(write) = self.accept_policy(&package) {
                    let _ = write.await;
                }
                Got::Package(package)
            }
            Response::NotModified { served } => {
                let Some(mut p) = held else {
                    return Err(Fail::Bad(
                        "answered not modified to a request without a version".into(),
                    ));
                };
                if known.as_ref().is_some_and(|k| p.info.stamp() < *k) {
                    return Err(Fail::Behind(format!(
                        "has nothing newer than {}, but the client saw {}",
                        p.info.stamp(),
                        known.as_ref().map(ToString::to_string).unwrap_or_default()
                    )));
                }
                self.note(&mut lock(&self.inner.state), &served);
                p.served = served;
                p.origin = Origin::Confirmed;
                Got::Package(p)
            }
            Response::NotFound { served } => {
                if let Some(k) = &known {
                    if !reached(&served.position, &version_position(k)) {
                        return Err(Fail::Behind(format!(
                            "at {} without package {name}, the client saw {k}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                Got::NotFound(served)
            }
            // Not for want of the asked position: it knows it is behind the domain.
            Response::Behind { served }
                if at_least
                    .as_ref()
                    .is_none_or(|a| reached(&served.position, a)) =>
            {
                return Err(knows_behind(&served))
            }
            Response::Behind { served } => {
                return Err(Fail::Behind(format!(
                    "at {} after waiting {} ms",
                    served.position,
                    extra.as_millis()
                )))
            }
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        Ok((got, ex.conn.rtt()))
    }

    async fn crl_from(&self, i: usize, issuer: &str) -> Result<(Got, Duration), Fail> {
        let (held, known) = {
            let st = lock(&self.inner.state);
            let cs = st.crls.get(issuer);
            (
                cs.and_then(|c| c.held.clone()),
                cs.and_then(|c| c.known.clone()),
            )
        };
        let query = Query::GetCrl {
            issuer: issuer.to_owned(),
            if_newer_than: held.as_ref().map(|c| c.crl.number.clone()),
        };
        let mut ex = self.open(i, query).await?;
        let got = match self.read(&mut ex, Duration::ZERO).await? {
            Response::Crl { served, crl } => {
                if crl.issuer != issuer {
                    return Err(Fail::Bad(format!(
                        "asked for the CRL of {issuer}, got {}",
                        crl.issuer
                    )));
                }
                if let Some((k, _)) = known.as_ref().filter(|(k, _)| crl.number < *k) {
                    return Err(Fail::Behind(format!(
                        "sent CRL {} of {issuer}, the client saw {k}",
                        crl.number
                    )));
                }
                let copy = CrlCopy {
                    crl,
                    served,
                    origin: Origin::Fetched,
                };
                if let Some(write) = self.accept_crl(&copy) {
                    let _ = write.await;
                }
                Got::Crl(copy)
            }
            Response::NotModified { served } => {
                let Some(mut c) = held else {
                    return Err(Fail::Bad(
                        "answered not modified to a request without a number".into(),
                    ));
                };
                if let Some((k, at)) = &known {
                    if c.crl.number < *k || !reached(&served.position, at) {
                        return Err(Fail::Behind(format!(
                            "at {}, the client saw CRL {k} of {issuer} at {at}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                c.served = served;
                c.origin = Origin::Confirmed;
                Got::Crl(c)
            }
            Response::NotFound { served } => {
                if let Some((k, at)) = &known {
                    if !reached(&served.position, at) {
                        return Err(Fail::Behind(format!(
                            "at {} without the CRL of {issuer}, the client saw {k} at {at}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                Got::NotFound(served)
            }
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        Ok((got, ex.conn.rtt()))
    }

    /// Records a verified package as the held copy (memory now, disk in the background;
    /// await the handle to wait for the disk).
    fn accept_policy(&self, p: &Package) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, &p.served);
            let ps = st.policies.entry(p.info.name.clone()).or_default();
            let v = p.info.stamp();
            if ps.known.as_ref().is_none_or(|k| v > *k) {
                ps.known = Some(v.clone());
            }
            if ps.held.as_ref().is_none_or(|h| v > h.info.stamp()) {
                ps.held = Some(p.clone());
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let entry = CachedPolicy {
            info: p.info.clone(),
            served: p.served.clone(),
            content: p.content.to_vec(),
        };
        Some(tokio::task::spawn_blocking(move || {
            // Writes may run in any order: never replace a newer copy.
            let mut written = lock_any(&inner.written.policies);
            let v = entry.info.stamp();
            if written.get(&entry.info.name).is_some_and(|w| *w >= v) {
                return;
            }
            match cache.store_policy(&inner.domain, &entry) {
                Ok(()) => {
                    written.insert(entry.info.name.clone(), v);
                }
                Err(e) => tracing::warn!(error = %e, "gateway cache not updated"),
            }
        }))
    }

    fn accept_crl(&self, c: &CrlCopy) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, &c.served);
            let cs = st.crls.entry(c.crl.issuer.clone()).or_default();
            if cs.known.as_ref().is_none_or(|(k, _)| c.crl.number > *k) {
                cs.known = Some((c.crl.number.clone(), c.served.position.clone()));
            }
            if cs.held.as_ref().is_none_or(|h| c.crl.number > h.crl.number) {
                cs.held = Some(c.clone());
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let entry = CachedCrl {
            crl: c.crl.clone(),
            served: c.served.clone(),
        };
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.crls);
            let n = entry.crl.number.clone();
            if written.get(&entry.crl.issuer).is_some_and(|w| *w >= n) {
                return;
            }
            match cache.store_crl(&inner.domain, &entry) {
                Ok(()) => {
                    written.insert(entry.crl.issuer.clone(), n);
                }
                Err(e) => tracing::warn!(error = %e, "gateway cache not updated"),
            }
        }))
    }

    /// A node not behind the client said the package is gone: drop the held copy.
    fn forget_policy(&self, name: &str, served: &Served) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, served);
            if let Some(ps) = st.policies.get_mut(name) {
                ps.held = None;
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.policies);
            written.remove(&name);
            if let Err(e) = cache.remove_policy(&inner.domain, &name) {
                tracing::warn!(error = %e, "gateway cache not updated");
            }
        }))
    }

    fn forget_crl(&self, issuer: &str, served: &Served) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, served);
            if let Some(cs) = st.crls.get_mut(issuer) {
                cs.held = None;
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let issuer = issuer.to_owned();
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.crls);
            written.remove(&issuer);
            if let Err(e) = cache.remove_crl(&inner.domain, &issuer) {
                tracing::warn!(error = %e, "gateway cache not updated");
            }
        }))
    }

    /// Loads the cached copy of a package once (the newer of memory and disk is kept).
    async fn load_policy(&self, name: &str) {
        {
            let mut st = lock(&self.inner.state);
            let ps = st.policies.entry(name.to_owned()).or_default();
            if ps.loaded {
                return;
            }
            ps.loaded = true;
        }
        let Some(cache) = self.inner.cache.clone() else {
            return;
        };
        let (domain, key) = (self.inner.domain.clone(), name.to_owned());
        let Ok(Some(c)) =
            tokio::task::spawn_blocking(move || cache.load_policy(&domain, &key)).await
        else {
            return;
        };
        let v = c.info.stamp();
        let mut st = lock(&self.inner.state);
        let ps = st.policies.entry(name.to_owned()).or_default();
        if ps.held.as_ref().is_none_or(|h| v > h.info.stamp()) {
            ps.held = Some(Package {
                info: c.info,
                content: Arc::new(c.content),
                served: c.served,
                origin: Origin::Held {
                    why: "from the cache".into(),
                },
            });
        }
        if ps.known.as_ref().is_none_or(|k| v > *k) {
            ps.known = Some(v);
        }
    }

    async fn load_crl(&self, issuer: &str) {
        {
            let mut st = lock(&self.inner.state);
            let cs = st.crls.entry(issuer.to_owned()).or_default();
            if cs.loaded {
                return;
            }
            cs.loaded = true;
        }
        let Some(cache) = self.inner.cache.clone() else {
            return;
        };
        let (domain, key) = (self.inner.domain.clone(), issuer.to_owned());
        let Ok(Some(c)) = tokio::task::spawn_blocking(move || cache.load_crl(&domain, &key)).await
        else {
            return;
        };
        let mut st = lock(&self.inner.state);
        let cs = st.crls.entry(issuer.to_owned()).or_default();
        if cs.known.as_ref().is_none_or(|(k, _)| c.crl.number > *k) {
            cs.known = Some((c.crl.number.clone(), c.served.position.clone()));
        }
        if cs.held.as_ref().is_none_or(|h| c.crl.number > h.crl.number) {
            cs.held = Some(CrlCopy {
                crl: c.crl,
                served: c.served,
                origin: Origin::Held {
                    why: "from the cache".into(),
                },
            });
        }
    }
}

fn kind(r: &Response) -> &'static str {
    match r {
        Response::Policies { .. } => "package list",
        Response::PolicyBegin { .. } => "package",
        Response::Chunk(_) => "chunk",
        Response::PolicyEnd => "package end",
        Response::NotModified { .. } => "not-modified",
        Response::NotFound { .. } => "not-found",
        Response::Behind { .. } => "behind",
        Response::Crls { .. } => "CRL list",
        Response::Crl { .. } => "CRL",
        Response::Removed { .. } => "removal",
        Response::Refused(_) => "refusal",
    }
}

/// A package being received: bounded by its announced size (itself at most
/// [`MAX_POLICY_BYTES`]), verified at the end.
struct Assembly {
    served: Served,
    info: PolicyInfo,
    content: Vec<u8>,
}

impl Assembly {
    fn begin(served: Served, info: PolicyInfo) -> Result<Assembly, Fail> {
        if info.size > MAX_POLICY_BYTES as u64 {
            return Err(Fail::Bad(format!(
                "package {} announced {} bytes, above the {MAX_POLICY_BYTES}-byte limit",
                info.name, info.size
            )));
        }
        // Fits: at most MAX_POLICY_BYTES.
        let size = info.size as usize;
        Ok(Assembly {
            served,
            content: Vec::with_capacity(size.min(4 * domsync_proto::gateway::CHUNK_BYTES)),
            info,
        })
    }

    fn chunk(&mut self, piece: &[u8]) -> Result<(), Fail> {
        if (self.content.len() + piece.len()) as u64 > self.info.size {
            return Err(Fail::Bad(format!(
                "package {} sent more than its {} bytes",
                self.info.name, self.info.size
            )));
        }
        self.content.extend_from_slice(piece);
        Ok(())
    }

    fn end(self) -> Result<Package, Fail> {
        if self.content.len() as u64 != self.info.size {
            return Err(Fail::Bad(format!(
                "package {} ended at {} of its {} bytes",
                self.info.name,
                self.content.len(),
                self.info.size
            )));
        }
        if <[u8; 32]>::from(Sha256::digest(&self.content)) != self.info.sha256 {
            return Err(Fail::Bad(format!(
                "package {} {} does not match its SHA-256",
                self.info.name,
                self.info.stamp()
            )));
        }
        Ok(Package {
            info: self.info,
            content: Arc::new(self.content),
            served: self.served,
            origin: Origin::Fetched,
        })
    }
}

/// A watch of packages and CRL issuers ([`Client::watch`]). [`Watch::next`] yields each
/// version newer than the one the client holds and not older than one it has seen, in the
/// order the nodes push them, never the same version twice and never an older one. When the
/// serving node fails, the watch resumes on the next node from the versions it holds; every
/// recheck interval it moves back to a better node that has recovered.
///
/// The nodes push the current version at each commit or apply, so versions committed in a
/// quick burst may arrive as the last of the burst only.
pub struct Watch {
    client: Client,
    policies: Vec<String>,
    crls: Vec<String>,
    stream: Option<WatchStream>,
    recheck: tokio::time::Interval,
    pause: bool,
    /// Streams that failed since the last good frame.
    failures: Vec<(NodeId, Fail)>,
}

struct WatchStream {
    node: usize,
    frames: mpsc::Receiver<Result<Response, Fail>>,
    task: tokio::task::JoinHandle<()>,
    assembly: Option<Assembly>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Event {
    Frame(Box<Option<Result<Response, Fail>>>),
    Tick,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("policies", &self.policies)
            .field("crls", &self.crls)
            .field("node", &self.node())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The node the watch is connected to now, if any.
    pub fn node(&self) -> Option<NodeId> {
        let s = self.stream.as_ref()?;
        Some(self.client.inner.nodes[s.node].0.clone())
    }

    /// The next update. Failover is internal: an error means no node could be reached, or
    /// every node's stream failed in turn, in a whole round (the watch stays usable; call
    /// `next()` again to keep trying, after a short pause). Cancel-safe: a `next()` dropped
    /// before it returns loses no update.
    ///
    /// # Errors
    /// [`Error::Unavailable`] as above.
    pub async fn next(&mut self) -> Result<Update, Error> {
        loop {
            if self.stream.is_none() {
                if self.pause {
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                match self.open_any().await {
                    Ok(s) => {
                        self.pause = false;
                        self.stream = Some(s);
                    }
                    Err(e) => {
                        self.pause = true;
                        return Err(e);
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let event = tokio::select! {
                f = stream.frames.recv() => Event::Frame(Box::new(f)),
                _ = self.recheck.tick() => Event::Tick,
            };
            let event = match event {
                Event::Tick => {
                    self.move_to_better().await;
                    continue;
                }
                Event::Frame(f) => *f,
            };
            let fail = match event {
                Some(Ok(response)) => match self.handle(response) {
                    Ok(update) => {
                        self.failures.clear();
                        match update {
                            Some(update) => return Ok(update),
                            None => continue,
                        }
                    }
                    Err(fail) => fail,
                },
                Some(Err(fail)) => fail,
                None => Fail::Stream("the watch stream ended".into()),
            };
            self.drop_stream(fail);
            // Every node failed in turn without one good frame (refused everywhere, say):
            // report it rather than spin.
            if self.failures.len() >= self.client.inner.nodes.len() {
                self.pause = true;
                let failures = std::mem::take(&mut self.failures);
                return Err(self.client.unavailable(&failures));
            }
        }
    }

    fn drop_stream(&mut self, fail: Fail) {
        if let Some(s) = self.stream.take() {
            let node = self.client.inner.nodes[s.node].0.clone();
            tracing::info!(%node, error = %fail, "gateway watch: moving to the next node");
            lock(&self.client.inner.state)
                .selector
                .failed(s.node, Instant::now());
            self.failures.push((node, fail));
        }
    }

    async fn open_any(&mut self) -> Result<WatchStream, Error> {
        let mut failures = Vec::new();
        for i in self.client.candidates().await {
            match self.open_on(i).await {
                Ok(s) => return Ok(s),
                Err(fail) => {
                    lock(&self.client.inner.state)
                        .selector
                        .failed(i, Instant::now());
                    failures.push((self.client.inner.nodes[i].0.clone(), fail));
                }
            }
        }
        Err(self.client.unavailable(&failures))
    }

    /// Opens a watch on node `i` from the versions the client holds.
    async fn open_on(&self, i: usize) -> Result<WatchStream, Fail> {
        for name in &self.policies {
            self.client.load_policy(name).await;
        }
        for issuer in &self.crls {
            self.client.load_crl(issuer).await;
        }
        let query = {
            let st = lock(&self.client.inner.state);
            Query::Watch {
                policies: self
                    .policies
                    .iter()
                    .map(|n| {
                        let held = st.policies.get(n).and_then(|p| p.held.as_ref());
                        (n.clone(), held.map(|p| p.info.stamp()))
                    })
                    .collect(),
                crls: self
                    .crls
                    .iter()
                    .map(|n| {
                        let held = st.crls.get(n).and_then(|c| c.held.as_ref());
                        (n.clone(), held.map(|c| c.crl.number.clone()))
                    })
                    .collect(),
            }
        };
        let mut ex = self.client.open(i, query).await?;
        let rtt = ex.conn.rtt();
        lock(&self.client.inner.state).selector.succeeded(i, rtt);
        // One frame in flight (at most MAX_RESPONSE_BYTES) plus the one being handled.
        let (tx, frames) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut ex.recv, MAX_RESPONSE_BYTES).await {
                    Ok(Some(f)) => domsync_proto::gateway::decode(&f, MAX_RESPONSE_BYTES)
                        .map_err(|e| Fail::Bad(format!("undecodable frame: {e}"))),
                    Ok(None) => Err(Fail::Stream("the node ended the watch".into())),
                    Err(e) => Err(Fail::Stream(e.to_string())),
                };
                let end = frame.is_err();
                if tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(WatchStream {
            node: i,
            frames,
            task,
            assembly: None,
        })
    }

    /// On each recheck tick: probe nodes due for it, and move to a better node that is up.
    async fn move_to_better(&mut self) {
        let Some(current) = self.stream.as_ref().map(|s| s.node) else {
            return;
        };
        let due = lock(&self.client.inner.state)
            .selector
            .due_for_probe(Instant::now());
        self.client.spawn_probes(due);
        let better = lock(&self.client.inner.state)
            .selector
            .better_than(current, Instant::now());
        if let Some(b) = better {
            if let Ok(s) = self.open_on(b).await {
                let node = &self.client.inner.nodes[b].0;
                tracing::info!(%node, "gateway watch: back on a better node");
                self.stream = Some(s);
            }
        }
    }

    /// One pushed frame: an update to yield, nothing yet, or a reason to leave the node.
    fn handle(&mut self, response: Response) -> Result<Option<Update>, Fail> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match response {
            Response::PolicyBegin { served, info } => {
                if !self.policies.contains(&info.name) {
                    return Err(Fail::Bad(format!("pushed unwatched package {}", info.name)));
                }
                stream.assembly = Some(Assembly::begin(served, info)?);
                Ok(None)
            }
            Response::Chunk(piece) => match stream.assembly.as_mut() {
                Some(a) => a.chunk(&piece).map(|()| None),
                None => Err(Fail::Bad("a chunk outside a package".into())),
            },
            Response::PolicyEnd => {
                let Some(a) = stream.assembly.take() else {
                    return Err(Fail::Bad("a package end outside a package".into()));
                };
                let package = a.end()?;
                let v = package.info.stamp();
                let fresh = {
                    let mut st = lock(&self.client.inner.state);
                    self.client.note(&mut st, &package.served);
                    let ps = st.policies.entry(package.info.name.clone()).or_default();
                    let newer = ps.held.as_ref().is_none_or(|h| v > h.info.stamp());
                    let not_older = ps.known.as_ref().is_none_or(|k| v >= *k);
                    newer && not_older
                };
                if !fresh {
                    return Ok(None);
                }
                drop(self.client.accept_policy(&package));
                Ok(Some(Update::Policy(package)))
            }
            Response::Crl { served, crl } => {
                if !self.crls.contains(&crl.issuer) {
                    return Err(Fail::Bad(format!("pushed unwatched CRL {}", crl.issuer)));
                }
                let fresh = {
                    let mut st = lock(&self.client.inner.state);
                    self.client.note(&mut st, &served);
                    let cs = st.crls.entry(crl.issuer.clone()).or_default();
                    let newer = cs.held.as_ref().is_none_or(|h| crl.number > h.crl.number);
                    let not_older = cs.known.as_ref().is_none_or(|(k, _)| crl.number >= *k);
                    newer && not_older
                };
                if !fresh {
                    return Ok(None);
                }
                let copy = CrlCopy {
                    crl,
                    served,
                    origin: Origin::Fetched,
                };
                drop(self.client.accept_crl(&copy));
                Ok(Some(Update::Crl(copy)))
            }
            Response::Removed { served, name } => {
                if self.policies.contains(&name) {
                    let (held, behind) = {
                        let st = lock(&self.client.inner.state);
                        let ps = st.policies.get(&name);
                        let known = ps.and_then(|p| p.known.as_ref());
                        (
                            ps.is_some_and(|p| p.held.is_some()),
                            known.is_some_and(|k| !reached(&served.position, &version_position(k))),
                        )
                    };
                    // A lagging node that does not have the package yet is not believed.
                    if behind || !held {
                        return Ok(None);
                    }
                    drop(self.client.forget_policy(&name, &served));
                    Ok(Some(Update::PolicyRemoved { name, served }))
                } else if self.crls.contains(&name) {
                    let (held, behind) = {
                        let st = lock(&self.client.inner.state);
                        let cs = st.crls.get(&name);
                        let known = cs.and_then(|c| c.known.as_ref());
                        (
                            cs.is_some_and(|c| c.held.is_some()),
                            known.is_some_and(|(_, at)| !reached(&served.position, at)),
                        )
                    };
                    if behind || !held {
                        return Ok(None);
                    }
                    drop(self.client.forget_crl(&name, &served));
                    Ok(Some(Update::CrlRemoved {
                        issuer: name,
                        served,
                    }))
                } else {
                    Err(Fail::Bad(format!("pushed the removal of unwatched {name}")))
                }
            }
            Response::Refused(r) => Err(Fail::Refused(r)),
            other => Err(Fail::Bad(format!("unexpected {} in a watch", kind(&other)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domsync_proto::model::Lsn;

    fn served(lsn: u64) -> Served {
        let node = NodeId::new("a").unwrap();
        let epoch = Epoch {
            term: 1,
            node: node.clone(),
        };
        Served {
            node,
            role: domsync_proto::model::Role::Standby,
            epoch: epoch.clone(),
            position: Position {
                epoch,
                lsn: Lsn(lsn),
                chain: 0,
            },
        }
    }

    fn info(content: &[u8]) -> PolicyInfo {
        PolicyInfo {
            name: "p".into(),
            version: 3,
            epoch: served(3).epoch,
            size: content.len() as u64,
            sha256: Sha256::digest(content).into(),
            installed: 0,
        }
    }

    #[test]
    fn assembly_verifies_size_and_digest_and_stops_past_the_size() {
        let content = b"0123456789";
        let mut a = Assembly::begin(served(3), info(content)).unwrap();
        a.chunk(&content[..4]).unwrap();
        a.chunk(&content[4..]).unwrap();
        assert_eq!(&a.end().unwrap().content[..], content);

        let mut a = Assembly::begin(served(3), info(content)).unwrap();
        a.chunk(content).unwrap();
        assert!(matches!(a.chunk(b"x"), Err(Fail::Bad(_))), "past info.size");

        let mut a = Assembly::begin(served(3), info(content)).unwrap();
        a.chunk(&content[..9]).unwrap();
        assert!(a.end().is_err(), "short");

        let mut a = Assembly::begin(served(3), info(content)).unwrap();
        a.chunk(b"0123456780").unwrap();
        assert!(a.end().is_err(), "digest");

        let mut big = info(content);
        big.size = MAX_POLICY_BYTES as u64 + 1;
        assert!(Assembly::begin(served(3), big).is_err());
    }

    #[test]
    fn positions_compare_by_epoch_then_lsn() {
        let mut later_epoch = served(1).position;
        later_epoch.epoch.term = 2;
        assert!(reached(&later_epoch, &served(9).position));
        assert!(reached(&served(9).position, &served(9).position));
        assert!(!reached(&served(8).position, &served(9).position));
    }

    fn at(node: &str, term: u64, lsn: u64) -> Served {
        let node = NodeId::new(node).unwrap();
        let epoch = Epoch {
            term,
            node: NodeId::new("a").unwrap(),
        };
        Served {
            node,
            role: domsync_proto::model::Role::Standby,
            epoch: epoch.clone(),
            position: Position {
                epoch,
                lsn: Lsn(lsn),
                chain: 0,
            },
        }
    }

    fn found(node: &str) -> Got {
        let content = b"0123456789";
        Got::Package(Package {
            info: info(content),
            content: Arc::new(content.to_vec()),
            served: at(node, 1, 3),
            origin: Origin::Fetched,
        })
    }

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn a_not_found_is_not_final_while_another_node_may_hold_the_item() {
        // The finding: a standby at lsn 0 said "not found" first; the next node has it.
        let mut lookup = Lookup::default();
        assert!(lookup
            .answer(n("a"), Ok(Got::NotFound(at("a", 1, 0))))
            .is_none());
        assert!(lookup
            .answer(n("b"), Err(Fail::Timeout("the connection")))
            .is_none());
        let got = lookup.answer(n("c"), Ok(found("c")));
        assert!(
            matches!(&got, Some(Got::Package(p)) if p.served.node == n("c")),
            "{got:?}"
        );
    }

    #[test]
    fn when_no_node_has_it_the_not_found_at_the_highest_position_wins() {
        let mut lookup = Lookup::default();
        for (node, answer) in [
            ("a", Ok(Got::NotFound(at("a", 1, 7)))),
            ("b", Err(Fail::Behind("standby at 1@a/9".into()))),
            ("c", Ok(Got::NotFound(at("c", 2, 1)))),
            ("d", Err(Fail::Connect("refused".into()))),
            ("e", Ok(Got::NotFound(at("e", 2, 1)))),
            ("f", Err(Fail::Refused(Refusal::Forbidden))),
        ] {
            assert!(lookup.answer(n(node), answer).is_none());
        }
        let Miss::Absent { served, unreached } = lookup.finish() else {
            panic!("expected not found")
        };
        // Epoch before lsn; the first asked among equals; `Behind` was asked.
        assert_eq!(served.node, n("c"));
        assert_eq!(unreached, vec![n("d"), n("f")]);
        let err = Error::PolicyNotFound {
            domain: "gw".parse().unwrap(),
            name: "fw-rules".into(),
            served: Box::new(served),
            unreached,
        };
        let msg = err.to_string();
        assert_eq!(msg.lines().count(), 1, "{msg}");
        assert!(
            msg.starts_with(
                "package fw-rules does not exist in domain gw (node c, standby, lsn 1; \
                 nodes d, f could not be asked and may hold it); check the name"
            ),
            "{msg}"
        );
    }

    #[test]
    fn with_every_node_behind_or_unreachable_nothing_is_said_not_to_exist() {
        let mut lookup = Lookup::default();
        assert!(lookup
            .answer(n("a"), Err(Fail::Behind("never synchronized".into())))
            .is_none());
        assert!(lookup
            .answer(n("b"), Err(Fail::Timeout("the connection")))
            .is_none());
        let Miss::Failed(failures) = lookup.finish() else {
            panic!("a not-found from nobody")
        };
        let nodes: Vec<_> = failures.iter().map(|(node, _)| node.clone()).collect();
        assert_eq!(nodes, vec![n("a"), n("b")]);
        assert!(matches!(Lookup::default().finish(), Miss::Failed(f) if f.is_empty()));
    }

    #[test]
    fn a_single_node_not_asked_is_named() {
        let mut lookup = Lookup::default();
        lookup.answer(n("a"), Ok(Got::NotFound(at("a", 1, 2))));
        lookup.answer(n("b"), Err(Fail::Stream("reset".into())));
        let Miss::Absent { served, unreached } = lookup.finish() else {
            panic!("expected not found")
        };
        let err = Error::CrlNotFound {
            domain: "gw".parse().unwrap(),
            issuer: "CN=X".into(),
            served: Box::new(served),
            unreached,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("(node a, standby, lsn 2; node b could not be asked and may hold it)"),
            "{msg}"
        );
    }

    #[test]
    fn failures_summarize_on_one_line() {
        let s = summary(&[
            (NodeId::new("a").unwrap(), Fail::Timeout("the connection")),
            (NodeId::new("b").unwrap(), Fail::Refused(Refusal::Forbidden)),
        ]);
        assert!(!s.contains('\n'));
        assert!(s.starts_with("a: timed out waiting for the connection; b: refused: forbidden"));
    }
}
