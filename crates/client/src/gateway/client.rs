//! The gateway client library (DESIGN.md §8): what a security gateway's firmware links to read
//! its policy packages and CRLs from the nodes of its domain.
//!
//! A [`Client`] is configured with the nodes of one domain ([`ClientConfig`]). It keeps one
//! QUIC connection per node it uses and one stream per request (see
//! [`domsync_proto::gateway`]), and:
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
//!   [`MAX_POLICY_BYTES`](domsync_proto::model::MAX_POLICY_BYTES));
//! * **caches** the last good package and CRL on disk ([`super::cache`]) when
//!   [`ClientConfig::cache_dir`] is set: when no node can answer, a fetch returns the held copy
//!   marked [`Origin::Held`];
//! * tells every node the **last active it saw** for the domain (node, epoch, how long ago)
//!   with each request, for the split-brain guard of a promotion.
//!
//! Every result says who served it ([`Served`](domsync_proto::gateway::Served): node, role,
//! epoch, position).
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::cache::Cache;
use super::config::{ClientConfig, CrlCopy, Error, Listing, NodeReport, Origin, Package};
use super::exchange::{summary, Ask, Fail};
use super::held::Written;
use super::lookup::{Got, Miss};
use super::pool::{lock, Inner, State};
use super::select::{Health, SelectConfig, Selector};
use domsync_net::{client_config_for, Identity, PeerRole, ALPN_GATEWAY};
use domsync_proto::gateway::{CrlInfo, MAX_WAIT_MS};
use domsync_proto::model::{DomainId, NodeId, PolicyInfo};

/// A gateway client of one domain; cheap to clone (clones share connections, node ranking,
/// the versions seen and the cache). See the module documentation.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("domain", &self.inner.domain)
            .field("nodes", &self.inner.nodes)
            .finish_non_exhaustive()
    }
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

    /// The issuer certificates the domain holds: the CAs whose CRLs it verified and
    /// distributes (check a fetched CRL against them, or pin them as trust anchors).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when no node could answer.
    pub async fn issuers(&self) -> Result<Listing<domsync_proto::model::IssuerCert>, Error> {
        match self.ask(&Ask::ListIssuers).await {
            Ok(Got::Issuers(l)) => Ok(l),
            Ok(_) | Err(Miss::Absent { .. }) => Err(self.unexpected()),
            Err(Miss::Failed(failures)) => Err(self.unavailable(&failures)),
        }
    }

    /// The newest delta CRL of `issuer` (RFC 4514 text), held beside its base; apply it to
    /// the base [`Client::crl`] returns when its BaseCRLNumber is at most the base's number.
    /// Not cached.
    ///
    /// # Errors
    /// [`Error::CrlNotFound`] when every node that could be asked holds no delta CRL of that
    /// issuer; [`Error::Unavailable`] when no node could answer.
    pub async fn delta_crl(&self, issuer: &str) -> Result<CrlCopy, Error> {
        match self.ask(&Ask::DeltaCrl(issuer)).await {
            Ok(Got::Crl(c)) => Ok(c),
            Ok(_) => Err(self.unexpected()),
            Err(Miss::Absent { served, unreached }) => Err(Error::CrlNotFound {
                domain: self.inner.domain.clone(),
                issuer: issuer.to_owned(),
                served: Box::new(served),
                unreached,
            }),
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

    pub(super) fn unavailable(&self, failures: &[(NodeId, Fail)]) -> Error {
        Error::Unavailable {
            domain: self.inner.domain.clone(),
            detail: summary(failures),
        }
    }
}
