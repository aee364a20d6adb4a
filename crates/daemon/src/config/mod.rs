//! The daemon's configuration file (`/etc/domsync/domsync.toml` by default), parsed and
//! checked as a whole: every problem is listed with the key it concerns, and nothing is opened
//! or bound until the file is clean.
//!
//! ```
//! use domsync_daemon::Config;
//! let config = Config::parse(r#"
//!     [node]
//!     id = "a"
//!     state_dir = "/var/lib/domsync"
//!     listen = "127.0.0.1:7400"
//!
//!     [tls]
//!     ca = "/etc/domsync/pki/ca.pem"
//!     cert = "/etc/domsync/pki/node-a.pem"
//!     key = "/etc/domsync/pki/node-a.key"
//!
//!     [[peers]]
//!     id = "b"
//!     address = "127.0.0.1:7401"
//!
//!     [[domains]]
//!     name = "tenant-1"
//!     replicas = ["a", "b"]
//!     durability = "standby"
//!     gateways = ["gw-1"]
//! "#, "domsync.toml".as_ref())?;
//! assert_eq!(config.domains[0].primary().as_str(), "a");
//! # Ok::<(), domsync_daemon::ConfigError>(())
//! ```
//!
//! The schema is here; `check` parses and checks the text, `added` keeps the domains added at
//! runtime (`<state_dir>/admin-domains.toml`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use domsync_proto::model::{DomainId, NodeId};
use domsync_proto::repl::Durability;

mod added;
mod check;
mod raw;

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/domsync/domsync.toml";

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// This node.
    pub node: NodeSection,
    /// TLS files of this node.
    pub tls: TlsSection,
    /// The other nodes, by id.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Regions of the peers that have one (`[[peers]] region`, placement).
    pub peer_regions: BTreeMap<NodeId, String>,
    /// The domains this node holds a replica of (others' domains are ignored).
    pub domains: Vec<DomainConfig>,
    /// Limits.
    pub limits: Limits,
    /// `[apps]`: who may use the application protocol here.
    pub apps: Apps,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeSection {
    /// This node's id; must match the node certificate.
    pub id: NodeId,
    /// Where the domain stores live.
    pub state_dir: PathBuf,
    /// UDP address of QUIC: replication, gateway and remote admin (ALPN tells them apart).
    pub listen: SocketAddr,
    /// Unix socket of local admin.
    pub admin_socket: PathBuf,
    /// A separate UDP address for gateways only (e.g. on the gateways' network); without it
    /// gateways use `listen`.
    pub gateway_listen: Option<SocketAddr>,
    /// Prometheus metrics over HTTP (local address), if wanted.
    pub metrics: Option<SocketAddr>,
    /// Region of this node (placement).
    pub region: Option<String>,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsSection {
    /// The deployment CA (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The deployment CA's revocation list (PEM or DER), enforced on every handshake; `None`
    /// without `crl`. Reloaded with the files above on SIGHUP.
    pub crl: Option<PathBuf>,
}

/// One `[[domains]]` entry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DomainConfig {
    /// The domain.
    pub name: DomainId,
    /// Replica nodes in order, the primary (creates the domain, first active) first.
    pub replicas: Vec<NodeId>,
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Gateways granted the domain.
    pub gateways: Vec<String>,
    /// Most bytes of change log kept.
    pub retention_bytes: u64,
    /// Relative load of the domain (placement).
    pub weight: u32,
    /// Region whose node should hold the active (placement).
    pub region: Option<String>,
    /// Accept CRLs of issuers the domain holds no certificate of (stored unverified and
    /// shown so in status). Off by default: a CRL must verify against an issuer certificate
    /// added with `domsync issuer add`.
    pub accept_unverified_crls: bool,
}

impl DomainConfig {
    /// The primary replica.
    pub fn primary(&self) -> &NodeId {
        // `replicas` is never empty once checked.
        &self.replicas[0]
    }
}

/// `[apps]`: the local application socket and the grants of application certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Apps {
    /// The local socket (default: `app.sock` beside `node.admin_socket`).
    pub socket: PathBuf,
    /// The Unix group whose members (primary or supplementary) may use the local socket
    /// besides root and the service user; `None`: only those two.
    pub group: Option<String>,
    /// Whether local clients may write (default true).
    pub local_write: bool,
    /// What each application certificate (`domsync://app/<id>`) may read and write.
    pub grants: Vec<AppGrant>,
}

/// One `[[apps.grants]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppGrant {
    /// The application's certificate id.
    pub id: String,
    /// The domains it may read; `None`: every domain held here (`["*"]`).
    pub domains: Option<Vec<DomainId>>,
    /// Whether it may write them.
    pub write: bool,
}

impl AppGrant {
    /// A grant (for tests and tools building a configuration by hand).
    pub fn new(id: impl Into<String>, domains: Option<Vec<DomainId>>, write: bool) -> AppGrant {
        AppGrant {
            id: id.into(),
            domains,
            write,
        }
    }

    /// Whether the grant covers `domain`.
    pub fn covers(&self, domain: &DomainId) -> bool {
        self.domains.as_ref().is_none_or(|d| d.contains(domain))
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Gateway connections at once.
    pub gateway_connections: usize,
    /// Gateway connections at once per gateway certificate.
    pub gateway_connections_per_gateway: usize,
    /// How long a gateway answer waits for the gateway to read it before the stream is cut.
    pub gateway_answer_timeout: Duration,
    /// Gateway requests in progress per connection.
    pub gateway_streams: usize,
    /// Largest gateway request, bytes.
    pub gateway_request_bytes: usize,
    /// How long a promotion guard counts a sighting of the active as "alive".
    pub guard_window: Duration,
    /// How long a standby-durability write waits for its confirmation.
    pub confirm_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            gateway_connections: 4096,
            gateway_connections_per_gateway: 64,
            gateway_answer_timeout: Duration::from_secs(30),
            gateway_streams: 64,
            gateway_request_bytes: domsync_proto::gateway::MAX_REQUEST_BYTES,
            guard_window: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(5),
        }
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key concerned (`domains[2].replicas`), or empty for the file as a whole.
    pub key: String,
    /// Where it is in the file: 1-based line and column, when the file has it (not for a
    /// key that is missing with its whole table).
    pub at: Option<(usize, usize)>,
    /// What is wrong and what to do.
    pub message: String,
}

/// A configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration {path}: {detail}; pass --config FILE or create it (see fixtures/domsync.toml)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// `node.state_dir` is not a usable directory.
    #[error("node.state_dir {path} {detail}; point node.state_dir at a directory (it is created when missing)")]
    StateDir {
        /// The state directory.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The file has problems; all of them are listed.
    #[error("{}", display_problems(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

/// A header line, then one line per problem: `FILE:LINE:COLUMN: KEY: what is wrong; what to do`
/// (the place left out when the file does not have it, the key when it is the file's syntax).
fn display_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "configuration {} refused ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str(&format!("\n{}:{p}", path.display()));
    }
    out
}

/// `LINE:COLUMN: KEY: message`, without the parts it does not have; starts with a space when
/// there is no place (it follows `FILE:`).
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.at {
            write!(f, "{line}:{column}:")?;
        }
        if !self.key.is_empty() {
            write!(f, " {}:", self.key)?;
        }
        write!(f, " {}", self.message)
    }
}

impl Config {
    /// The domains this node holds a replica of.
    pub fn local_domains(&self) -> impl Iterator<Item = &DomainConfig> {
        self.domains
            .iter()
            .filter(|d| d.replicas.contains(&self.node.id))
    }
}

/// A clean configuration file, the tests' starting point.
#[cfg(test)]
const GOOD: &str = r#"
    [node]
    id = "a"
    listen = "127.0.0.1:7400"
    [tls]
    ca = "ca.pem"
    cert = "node-a.pem"
    key = "node-a.key"
    [[peers]]
    id = "b"
    address = "127.0.0.1:7401"
    [[domains]]
    name = "t1"
    replicas = ["a", "b"]
    [[domains]]
    name = "t2"
    replicas = ["b", "a"]
    durability = "all"
    [limits]
    guard_window_ms = 2000
"#;
