//! The application client: what firmware on the appliance (or an application elsewhere, with
//! an application certificate) uses to read and change a domain's keys through a running
//! `domsyncd`, over the local application socket or over QUIC (`domsync-app/1`). It carries
//! the messages of [`domsync_proto::app`].
//!
//! * Reads (`get`, `scan`, `policy`, `crl`) are served by any replica, each answer saying who
//!   served it and at which position; `AtLeast` makes a lagging standby wait or say `Behind`.
//! * Transactions go to the domain's active: with several remote nodes the client sends them
//!   where the last answer said the active is, and follows a `NotActive` naming another node.
//! * A [`Watch`] delivers every change of its keys once, in order, and resumes by itself after
//!   a dropped connection or a failover, on the same or another node, from the position of the
//!   last batch it delivered.
//!
//! ```no_run
//! # async fn demo() -> Result<(), domsync_client::app::ClientError> {
//! use domsync_client::app::{AppClient, AppTarget};
//! use domsync_proto::app::AtLeast;
//! use domsync_proto::model::DomainId;
//!
//! let client = AppClient::connect(AppTarget::Socket("/run/domsync/app.sock".into())).await?;
//! let domain = DomainId::new("fw-east").map_err(|e| domsync_client::app::ClientError::Usage(e.to_string()))?;
//! let position = client.put(&domain, b"rule/7", b"allow 443").await?;
//! let got = client.get(&domain, b"rule/7", AtLeast { lsn: position.lsn, wait_ms: 1000 }).await?;
//! assert_eq!(got.entry.map(|e| e.value), Some(b"allow 443".to_vec()));
//! # Ok(()) }
//! ```

mod conn;
mod error;
mod remote;
mod text;
mod watch;

pub use error::ClientError;
pub use text::{parse_position, position_text};
pub use watch::Watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use domsync_proto::app::{
    Answer, AppError, AtLeast, Entry, Event, KeyRange, Page, Request, Scan, Txn,
};
use domsync_proto::gateway::Served;
use domsync_proto::model::{Crl, DomainId, IssuerKey, NodeId, Op, PolicyInfo, Position};

use conn::{Failure, Place, QuicLink, SocketLink};
use remote::Route;
use watch::answer_name;

pub use domsync_proto::app::DomainState;

/// How many times [`AppClient::scan_all`] starts a scan again after `ContinuationGone`.
pub const SCAN_RESTARTS: u32 = 3;

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum AppTarget {
    /// Its application socket (`[apps] socket`, default `/run/domsync/app.sock`).
    Socket(PathBuf),
    /// Nodes reached over QUIC with an application certificate `domsync://app/<id>`. Each
    /// node must prove it is the node named (certificate `domsync://node/<node>`).
    Remote {
        /// The nodes, in order of preference.
        nodes: Vec<(NodeId, SocketAddr)>,
        /// Directory holding `ca.pem` and `app-<id>.pem` / `.key`.
        pki: PathBuf,
        /// The application's id.
        id: String,
    },
}

/// One key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// The key with its value and version; `None`: no such key at the position served.
    pub entry: Option<Entry>,
    /// Who served it, at which position.
    pub served: Served,
}

/// What [`AppClient::hello`] learns.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The node answering.
    pub node: NodeId,
    /// Its protocol version.
    pub protocol: u32,
    /// The domains this client may read there.
    pub domains: Vec<DomainState>,
}

/// A package as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyCopy {
    /// Name, version, size, SHA-256.
    pub info: PolicyInfo,
    /// The content (its SHA-256 checked by the client).
    pub content: Vec<u8>,
    /// Who served it.
    pub served: Served,
}

/// A batch of changes delivered by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The changes, in lsn order (empty: a progress mark).
    pub events: Vec<Event>,
    /// The position after them: where a new watch would resume.
    pub position: Position,
}

/// A connection (or a set of remote nodes) serving an application. Cheap to clone; safe to
/// use from several tasks (requests on the Unix socket are serialized, on QUIC they run on
/// their own streams).
///
/// A transaction whose answer was lost (the connection broke after it was sent) is never sent
/// again: it fails with [`ClientError::Connect`] saying its outcome is unknown; read the keys
/// back before retrying.
#[derive(Clone)]
pub struct AppClient {
    inner: Arc<Inner>,
}

enum Inner {
    Socket(SocketLink),
    Remote {
        links: Vec<QuicLink>,
        route: Mutex<Route>,
    },
}

impl AppClient {
    /// Connects to the daemon (the first node of a remote target that answers), and checks
    /// its protocol version with a `Hello`.
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the socket or nodes tried and what to check.
    pub async fn connect(target: AppTarget) -> Result<AppClient, ClientError> {
        let inner = match target {
            AppTarget::Socket(path) => Inner::Socket(SocketLink::new(path)),
            AppTarget::Remote { nodes, pki, id } => {
                if nodes.is_empty() {
                    return Err(ClientError::Usage(
                        "no node given: name at least one node as ID=ADDR (--app-remote)".into(),
                    ));
                }
                let links = nodes
                    .iter()
                    .map(|(node, addr)| QuicLink::new(node.clone(), *addr, &pki, &id))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ClientError::Usage)?;
                let route = Route::new(nodes.into_iter().map(|(n, _)| n).collect());
                Inner::Remote {
                    links,
                    route: Mutex::new(route),
                }
            }
        };
        let client = AppClient {
            inner: Arc::new(inner),
        };
        client.hello().await?;
        Ok(client)
    }

    /// The node answering and the domains this client may use there.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        match self.read(&Request::Hello).await? {
            (
                Answer::Hello {
                    protocol,
                    node,
                    domains,
                },
                place,
            ) => {
                if protocol != domsync_proto::app::PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "{place} speaks application protocol {protocol}, this client {}: use a client of the same release as domsyncd",
                        domsync_proto::app::PROTOCOL_VERSION
                    )));
                }
                self.with_route(|r| r.learn(&domains));
                Ok(Hello {
                    node,
                    protocol,
                    domains,
                })
            }
            (other, place) => Err(unexpected(&place, "Hello", &other)),
        }
    }

    /// One key.
    ///
    /// # Errors
    /// [`ClientError::App`] with [`AppError::Behind`](domsync_proto::app::AppError::Behind),
    /// `Forbidden`, ...; [`ClientError::Connect`] / [`ClientError::Protocol`].
    pub async fn get(
        &self,
        domain: &DomainId,
        key: &[u8],
        at_least: AtLeast,
    ) -> Result<Got, ClientError> {
        let req = Request::Get {
            domain: domain.clone(),
            key: key.to_vec(),
            at_least,
        };
        match self.read(&req).await? {
            (Answer::Value { served, entry }, _) => Ok(Got { entry, served }),
            (other, place) => Err(unexpected(&place, "Value", &other)),
        }
    }

    /// One page of a scan.
    ///
    /// # Errors
    /// As [`AppClient::get`]; `ContinuationGone` for a continuation that cannot be served.
    pub async fn scan(&self, scan: Scan) -> Result<Page, ClientError> {
        match self.read(&Request::Scan(scan)).await? {
            (Answer::Page(page), _) => Ok(page),
            (other, place) => Err(unexpected(&place, "Page", &other)),
        }
    }

    /// Every key of `range`, at one position: pages followed by their continuations; a scan
    /// whose continuation is gone starts again (at most [`SCAN_RESTARTS`] times).
    ///
    /// # Errors
    /// As [`AppClient::scan`].
    pub async fn scan_all(
        &self,
        domain: &DomainId,
        range: KeyRange,
        at_least: AtLeast,
    ) -> Result<(Vec<Entry>, Served), ClientError> {
        self.scan_all_with(domain, range, at_least, false).await
    }

    /// [`AppClient::scan_all`], with only keys and versions when `keys_only` (values empty).
    ///
    /// # Errors
    /// As [`AppClient::scan`].
    pub async fn scan_all_with(
        &self,
        domain: &DomainId,
        range: KeyRange,
        at_least: AtLeast,
        keys_only: bool,
    ) -> Result<(Vec<Entry>, Served), ClientError> {
        let mut restarts = 0;
        'scan: loop {
            let mut entries = Vec::new();
            let mut continuation = None;
            loop {
                let page = self
                    .scan(Scan {
                        domain: domain.clone(),
                        range: range.clone(),
                        limit: 0,
                        keys_only,
                        at_least,
                        continuation: continuation.take(),
                    })
                    .await;
                let page = match page {
                    Err(ClientError::App(AppError::ContinuationGone { .. }))
                        if restarts < SCAN_RESTARTS =>
                    {
                        restarts += 1;
                        continue 'scan;
                    }
                    other => other?,
                };
                entries.extend(page.entries);
                match page.more {
                    Some(more) => continuation = Some(more),
                    None => return Ok((entries, page.served)),
                }
            }
        }
    }

    /// A transaction, on the domain's active.
    ///
    /// # Errors
    /// [`ClientError::App`] with `Conflict` (nothing written), `NotActive`, `Refused`,
    /// `Unconfirmed`, ...; [`ClientError::Connect`] saying the outcome is unknown when the
    /// connection failed after the transaction was sent.
    pub async fn txn(&self, txn: Txn) -> Result<Position, ClientError> {
        let domain = txn.domain.clone();
        let req = Request::Txn(txn);
        let (answer, place) = match &*self.inner {
            Inner::Socket(link) => (link.call(&req).await.map_err(failure)?, link.place()),
            Inner::Remote { links, route } => {
                let mut order = lock(route).txn_order(&domain);
                let mut tried = Vec::new();
                let mut redirects = 0;
                let mut unreached = Vec::new();
                loop {
                    let Some(i) = order.first().copied() else {
                        return Err(ClientError::Connect(format!(
                            "no node took the transaction on domain {domain}: {}; check that the domain's active is up and listed",
                            unreached.join("; ")
                        )));
                    };
                    order.remove(0);
                    tried.push(i);
                    let Some(link) = links.get(i) else { continue };
                    match link.call(&req).await {
                        Ok(Answer::Error(AppError::NotActive { active, .. })) => {
                            let mut r = lock(route);
                            match r.redirect(&domain, active.as_ref(), &tried, redirects) {
                                Some(next) => {
                                    redirects += 1;
                                    order.retain(|&j| j != next);
                                    order.insert(0, next);
                                }
                                None => {
                                    return Err(ClientError::App(AppError::NotActive {
                                        domain,
                                        node: link.node.clone(),
                                        active,
                                    }))
                                }
                            }
                        }
                        // The read preference stays where it is: only reads move it.
                        Ok(answer) => {
                            if matches!(answer, Answer::Committed { .. }) {
                                lock(route).learn_active(&domain, Some(&link.node));
                            }
                            break (answer, link.place());
                        }
                        Err(Failure::Unreached(e)) => {
                            lock(route).unreachable(i);
                            unreached.push(e);
                        }
                        Err(e) => return Err(failure(e)),
                    }
                }
            }
        };
        match answer {
            Answer::Committed { position } => Ok(position),
            Answer::Error(e) => Err(ClientError::App(e)),
            other => Err(unexpected(&place, "Committed", &other)),
        }
    }

    /// Sets one key (a transaction without conditions).
    ///
    /// # Errors
    /// As [`AppClient::txn`].
    pub async fn put(
        &self,
        domain: &DomainId,
        key: &[u8],
        value: &[u8],
    ) -> Result<Position, ClientError> {
        self.txn(Txn {
            domain: domain.clone(),
            conditions: Vec::new(),
            ops: vec![Op::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            }],
        })
        .await
    }

    /// Removes one key (a transaction without conditions; removing a missing key is not an
    /// error).
    ///
    /// # Errors
    /// As [`AppClient::txn`].
    pub async fn delete(&self, domain: &DomainId, key: &[u8]) -> Result<Position, ClientError> {
        self.txn(Txn {
            domain: domain.clone(),
            conditions: Vec::new(),
            ops: vec![Op::Delete { key: key.to_vec() }],
        })
        .await
    }

    /// Watches `range` from `from` (`None`: from now).
    ///
    /// # Errors
    /// As [`AppClient::get`]; `Compacted` / `Diverged` when `from` cannot be resumed.
    pub async fn watch(
        &self,
        domain: &DomainId,
        range: KeyRange,
        from: Option<Position>,
    ) -> Result<Watch, ClientError> {
        Watch::open(self.clone(), domain.clone(), range, from).await
    }

    /// A policy package, its content checked against its SHA-256.
    ///
    /// # Errors
    /// `NoSuchPolicy`, `Behind`, ...; [`ClientError::Protocol`] when the content does not
    /// match its SHA-256.
    pub async fn policy(
        &self,
        domain: &DomainId,
        name: &str,
        at_least: AtLeast,
    ) -> Result<PolicyCopy, ClientError> {
        let req = Request::GetPolicy {
            domain: domain.clone(),
            name: name.to_owned(),
            at_least,
        };
        match self.read(&req).await? {
            (
                Answer::Policy {
                    served,
                    info,
                    content,
                },
                place,
            ) => {
                use sha2::Digest as _;
                let sum: [u8; 32] = sha2::Sha256::digest(&content).into();
                if sum != info.sha256 || content.len() as u64 != info.size {
                    return Err(ClientError::Protocol(format!(
                        "{place} sent policy package {name} of domain {domain} whose content does not match its SHA-256 or size: read it again, and check node {}'s store with `domsync verify`",
                        served.node
                    )));
                }
                Ok(PolicyCopy {
                    info,
                    content,
                    served,
                })
            }
            (other, place) => Err(unexpected(&place, "Policy", &other)),
        }
    }

    /// The CRL of an issuer (`None`: none held), or the delta CRL beside its base.
    ///
    /// # Errors
    /// As [`AppClient::get`].
    pub async fn crl(
        &self,
        domain: &DomainId,
        issuer: IssuerKey,
        delta: bool,
        at_least: AtLeast,
    ) -> Result<(Option<Crl>, Served), ClientError> {
        let req = Request::GetCrl {
            domain: domain.clone(),
            issuer,
            delta,
            at_least,
        };
        match self.read(&req).await? {
            (Answer::Crl { served, crl }, _) => Ok((crl, served)),
            (other, place) => Err(unexpected(&place, "Crl", &other)),
        }
    }

    /// Closes the QUIC connections (the socket connection closes when the last clone goes).
    pub async fn close(&self) {
        if let Inner::Remote { links, .. } = &*self.inner {
            for l in links {
                l.close().await;
            }
        }
    }

    /// Sends a read (or `Hello`) to the preferred node that answers; `Answer::Error` becomes
    /// [`ClientError::App`].
    async fn read(&self, req: &Request) -> Result<(Answer, Place), ClientError> {
        let (answer, place) = match &*self.inner {
            Inner::Socket(link) => (link.call(req).await.map_err(failure)?, link.place()),
            Inner::Remote { links, route } => {
                let order = lock(route).read_order();
                let mut unreached = Vec::new();
                let mut got = None;
                for i in order {
                    let Some(link) = links.get(i) else { continue };
                    match link.call(req).await {
                        Ok(a) => {
                            lock(route).answered(i);
                            got = Some((a, link.place()));
                            break;
                        }
                        Err(Failure::Unreached(e)) => {
                            lock(route).unreachable(i);
                            unreached.push(e);
                        }
                        Err(e) => return Err(failure(e)),
                    }
                }
                got.ok_or_else(|| {
                    ClientError::Connect(format!(
                        "no node answered: {}; check that domsyncd runs there with [apps] enabled and the addresses (--app-remote ID=ADDR)",
                        unreached.join("; ")
                    ))
                })?
            }
        };
        match answer {
            Answer::Error(e) => Err(ClientError::App(e)),
            a => Ok((a, place)),
        }
    }

    /// Opens a watch's own stream: a new socket connection, or a stream on the preferred
    /// node that answers.
    async fn open_stream(&self, req: &Request) -> Result<(watch::Stream, Place), ClientError> {
        match &*self.inner {
            Inner::Socket(link) => {
                let mut s = link.open().await.map_err(failure)?;
                domsync_net::write_message(&mut s, req, domsync_proto::app::MAX_REQUEST_BYTES)
                    .await
                    .map_err(|e| ClientError::Connect(format!("{}: {e}", link.place())))?;
                Ok((watch::Stream::Unix(s), link.place()))
            }
            Inner::Remote { links, route } => {
                let order = lock(route).read_order();
                let mut unreached = Vec::new();
                for i in order {
                    let Some(link) = links.get(i) else { continue };
                    match link.open(req, true).await {
                        Ok((send, recv)) => {
                            lock(route).answered(i);
                            return Ok((watch::Stream::Quic { _send: send, recv }, link.place()));
                        }
                        Err(Failure::Unreached(e)) => {
                            lock(route).unreachable(i);
                            unreached.push(e);
                        }
                        Err(e) => return Err(failure(e)),
                    }
                }
                Err(ClientError::Connect(format!(
                    "no node answered: {}; check that domsyncd runs there with [apps] enabled",
                    unreached.join("; ")
                )))
            }
        }
    }

    /// A watch on `node` failed: a remote target prefers the next node for its resumption.
    fn watch_failed(&self, node: &NodeId) {
        self.with_route(|r| {
            if let Some(i) = r.index(node) {
                r.unreachable(i);
            }
        });
    }

    fn with_route(&self, f: impl FnOnce(&mut Route)) {
        if let Inner::Remote { route, .. } = &*self.inner {
            f(&mut lock(route));
        }
    }
}

/// The route, even when a task panicked holding it (it holds no invariant a panic breaks).
fn lock(route: &Mutex<Route>) -> std::sync::MutexGuard<'_, Route> {
    route.lock().unwrap_or_else(|p| p.into_inner())
}

fn failure(f: Failure) -> ClientError {
    match f {
        Failure::Unreached(e) | Failure::Unknown(e) => ClientError::Connect(e),
        Failure::Protocol(e) => ClientError::Protocol(e),
        Failure::Usage(e) => ClientError::Usage(e),
    }
}

fn unexpected(place: &Place, want: &str, got: &Answer) -> ClientError {
    ClientError::Protocol(format!(
        "{place} answered {} where {want} was expected; check that domsyncd and the client are of the same release",
        answer_name(got)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send>(_: &T) {}

    /// Applications spawn these on a multi-threaded runtime.
    #[allow(dead_code)]
    async fn futures_are_send(c: AppClient, d: DomainId, mut w: Watch) {
        send(&AppClient::connect(AppTarget::Socket("x".into())));
        send(&c.get(&d, b"k", AtLeast::default()));
        send(&c.scan_all(&d, KeyRange::prefix(b""), AtLeast::default()));
        send(&c.put(&d, b"k", b"v"));
        send(&c.watch(&d, KeyRange::prefix(b""), None));
        send(&w.next());
        send(&c);
        send(&w);
    }
}
