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

mod error;

pub use error::ClientError;

use std::net::SocketAddr;
use std::path::PathBuf;

use domsync_proto::app::{AtLeast, Entry, Event, KeyRange, Page, Scan, Txn};
use domsync_proto::gateway::Served;
use domsync_proto::model::{Crl, DomainId, IssuerKey, NodeId, PolicyInfo, Position};

pub use domsync_proto::app::DomainState;

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
#[derive(Clone)]
pub struct AppClient {
    _private: (),
}

impl AppClient {
    /// Connects to the daemon (the first node of a remote target that answers).
    ///
    /// # Errors
    /// [`ClientError::Connect`] naming the socket or nodes tried and what to check.
    pub async fn connect(target: AppTarget) -> Result<AppClient, ClientError> {
        let _ = target;
        Err(ClientError::Usage("not built yet".into()))
    }

    /// The node answering and the domains this client may use there.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn hello(&self) -> Result<Hello, ClientError> {
        Err(ClientError::Usage("not built yet".into()))
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
        let _ = (domain, key, at_least);
        Err(ClientError::Usage("not built yet".into()))
    }

    /// One page of a scan.
    ///
    /// # Errors
    /// As [`AppClient::get`]; `ContinuationGone` for a continuation that cannot be served.
    pub async fn scan(&self, scan: Scan) -> Result<Page, ClientError> {
        let _ = scan;
        Err(ClientError::Usage("not built yet".into()))
    }

    /// Every key of `range`, at one position: pages followed by their continuations; a scan
    /// whose continuation is gone starts again (at most a few times).
    ///
    /// # Errors
    /// As [`AppClient::scan`].
    pub async fn scan_all(
        &self,
        domain: &DomainId,
        range: KeyRange,
        at_least: AtLeast,
    ) -> Result<(Vec<Entry>, Served), ClientError> {
        let _ = (domain, range, at_least);
        Err(ClientError::Usage("not built yet".into()))
    }

    /// A transaction, on the domain's active.
    ///
    /// # Errors
    /// [`ClientError::App`] with `Conflict` (nothing written), `NotActive`, `Refused`,
    /// `Unconfirmed`, ...
    pub async fn txn(&self, txn: Txn) -> Result<Position, ClientError> {
        let _ = txn;
        Err(ClientError::Usage("not built yet".into()))
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
        let _ = (domain, key, value);
        Err(ClientError::Usage("not built yet".into()))
    }

    /// Removes one key (a transaction without conditions; removing a missing key is not an
    /// error).
    ///
    /// # Errors
    /// As [`AppClient::txn`].
    pub async fn delete(&self, domain: &DomainId, key: &[u8]) -> Result<Position, ClientError> {
        let _ = (domain, key);
        Err(ClientError::Usage("not built yet".into()))
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
        let _ = (domain, range, from);
        Err(ClientError::Usage("not built yet".into()))
    }

    /// A policy package, its content checked against its SHA-256.
    ///
    /// # Errors
    /// `NoSuchPolicy`, `Behind`, ...
    pub async fn policy(
        &self,
        domain: &DomainId,
        name: &str,
        at_least: AtLeast,
    ) -> Result<PolicyCopy, ClientError> {
        let _ = (domain, name, at_least);
        Err(ClientError::Usage("not built yet".into()))
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
        let _ = (domain, issuer, delta, at_least);
        Err(ClientError::Usage("not built yet".into()))
    }
}

/// A running watch. Resumes by itself after a dropped connection or on another node (remote
/// targets), from the position of the last batch delivered: no gap, no repeat. Ends with an
/// error when no node can resume it (`Compacted`, `Diverged`: read again and watch anew).
pub struct Watch {
    _private: (),
}

impl Watch {
    /// The next batch of changes (or progress mark).
    ///
    /// # Errors
    /// [`ClientError`] when the watch cannot go on.
    pub async fn next(&mut self) -> Result<Batch, ClientError> {
        Err(ClientError::Usage("not built yet".into()))
    }

    /// The position after the last batch delivered.
    pub fn position(&self) -> &Position {
        unimplemented!()
    }
}
