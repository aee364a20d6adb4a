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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use domsync_proto::admin::DomainSpec;
use domsync_proto::model::{DomainId, NodeId};
use domsync_proto::repl::Durability;

/// The default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/domsync/domsync.toml";

/// The file, under `node.state_dir`, holding the domains added at runtime with
/// `domsync domain add` (a `[[domains]]` list like the configuration file's).
pub const ADDED_DOMAINS_FILE: &str = "admin-domains.toml";

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
}

impl DomainConfig {
    /// The primary replica.
    pub fn primary(&self) -> &NodeId {
        // `replicas` is never empty once checked.
        &self.replicas[0]
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Gateway connections at once.
    pub gateway_connections: usize,
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
    /// The file has problems; all of them are listed.
    #[error("{}", display_problems(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn display_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "configuration {} refused ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        if p.key.is_empty() {
            out.push_str(&format!(" [{}]", p.message));
        } else {
            out.push_str(&format!(" [{}: {}]", p.key, p.message));
        }
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Option<RawNode>,
    tls: Option<RawTls>,
    #[serde(default)]
    peers: Vec<RawPeer>,
    #[serde(default)]
    domains: Vec<RawDomain>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Option<String>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    admin_socket: Option<PathBuf>,
    gateway_listen: Option<String>,
    metrics: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Option<String>,
    address: Option<String>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: Option<String>,
    #[serde(default)]
    replicas: Vec<String>,
    durability: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    retention_bytes: Option<u64>,
    weight: Option<u32>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdded {
    #[serde(default)]
    domains: Vec<RawDomain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    gateway_connections: Option<usize>,
    gateway_streams: Option<usize>,
    gateway_request_bytes: Option<usize>,
    guard_window_ms: Option<u64>,
    confirm_timeout_ms: Option<u64>,
}

/// TOML text into its raw shape; a syntax error or an unknown key is the file's one problem.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        problems: vec![Problem {
            key: String::new(),
            message: e.message().replace('\n', " "),
        }],
    })
}

/// Collects problems while checking.
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() {
            self.problem(key, "missing; it is required");
        }
        v
    }

    fn node_id(&mut self, key: &str, s: &str) -> Option<NodeId> {
        match NodeId::new(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(key, format!("{e}"));
                None
            }
        }
    }

    fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    key,
                    format!("{s:?} is not an address; write IP:PORT, e.g. 127.0.0.1:7400"),
                );
                None
            }
        }
    }
}

/// Checks `[[domains]]` entries (`section` names them in problems): names valid and unique,
/// replicas this node or listed peers, durability and gateway ids valid.
fn check_domains(
    c: &mut Checker,
    raw: Vec<RawDomain>,
    self_id: Option<&NodeId>,
    peers: &BTreeMap<NodeId, SocketAddr>,
    section: &str,
) -> Vec<DomainConfig> {
    let mut domains = Vec::new();
    let mut names = BTreeSet::new();
    for (i, d) in raw.into_iter().enumerate() {
        let key = format!("{section}[{i}]");
        let name = c.required(&format!("{key}.name"), d.name);
        let name = name.and_then(|s| match s.parse::<DomainId>() {
            Ok(n) => Some(n),
            Err(e) => {
                c.problem(format!("{key}.name"), format!("{e}"));
                None
            }
        });
        if let Some(n) = &name {
            if !names.insert(n.clone()) {
                c.problem(format!("{key}.name"), format!("domain {n} is listed twice"));
            }
        }
        let mut replicas = Vec::new();
        if d.replicas.is_empty() {
            c.problem(
                format!("{key}.replicas"),
                "missing; list the replica nodes, primary first",
            );
        }
        for (j, r) in d.replicas.iter().enumerate() {
            let rkey = format!("{key}.replicas[{j}]");
            let Some(r) = c.node_id(&rkey, r) else {
                continue;
            };
            let known = self_id == Some(&r) || peers.contains_key(&r);
            if !known {
                c.problem(
                    &rkey,
                    format!("node {r} is neither this node nor a listed peer; add it to [[peers]]"),
                );
            }
            if replicas.contains(&r) {
                c.problem(&rkey, format!("node {r} is listed twice"));
            }
            replicas.push(r);
        }
        let durability = match d.durability.as_deref() {
            None | Some("standby") => Some(Durability::Standby),
            Some("local") => Some(Durability::Local),
            Some("all") => Some(Durability::All),
            Some(other) => {
                c.problem(
                    format!("{key}.durability"),
                    format!("{other:?} is not a durability; use local, standby or all"),
                );
                None
            }
        };
        for (j, g) in d.gateways.iter().enumerate() {
            if domsync_net::Identity::new(domsync_net::PeerRole::Gateway, g.clone()).is_err() {
                c.problem(
                    format!("{key}.gateways[{j}]"),
                    format!("{g:?} is not a gateway id (letters, digits, '-', '_', '.')"),
                );
            }
        }
        if let (Some(name), Some(durability), false) = (name, durability, replicas.is_empty()) {
            domains.push(DomainConfig {
                name,
                replicas,
                durability,
                gateways: d.gateways,
                retention_bytes: d.retention_bytes.unwrap_or(256 << 20),
                weight: d.weight.unwrap_or(1),
                region: d.region,
            });
        }
    }
    domains
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Invalid`] listing every problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks configuration text (`path` names it in errors).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawConfig = parse_toml(text, path)?;
        let mut c = Checker {
            problems: Vec::new(),
        };
        let node = c.required("node", raw.node);
        let tls = c.required("tls", raw.tls);
        let mut self_id = None;
        let node = node.and_then(|n| {
            let id = c.required("node.id", n.id);
            let id = id.and_then(|s| c.node_id("node.id", &s));
            self_id.clone_from(&id);
            let listen = c.required("node.listen", n.listen);
            let listen = listen.and_then(|s| c.addr("node.listen", &s));
            let metrics = n.metrics.and_then(|s| c.addr("node.metrics", &s));
            let gateway_listen = n
                .gateway_listen
                .and_then(|s| c.addr("node.gateway_listen", &s));
            let state_dir = n
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/domsync"));
            let admin_socket = n
                .admin_socket
                .unwrap_or_else(|| PathBuf::from("/run/domsync/admin.sock"));
            Some(NodeSection {
                id: id?,
                state_dir,
                listen: listen?,
                admin_socket,
                gateway_listen,
                metrics,
                region: n.region,
            })
        });
        let tls = tls.and_then(|t| {
            Some(TlsSection {
                ca: c.required("tls.ca", t.ca)?,
                cert: c.required("tls.cert", t.cert)?,
                key: c.required("tls.key", t.key)?,
            })
        });
        let mut peers = BTreeMap::new();
        let mut peer_regions = BTreeMap::new();
        for (i, p) in raw.peers.into_iter().enumerate() {
            let key = format!("peers[{i}]");
            let id = c.required(&format!("{key}.id"), p.id);
            let id = id.and_then(|s| c.node_id(&format!("{key}.id"), &s));
            let addr = c.required(&format!("{key}.address"), p.address);
            let addr = addr.and_then(|s| c.addr(&format!("{key}.address"), &s));
            if let (Some(id), Some(addr)) = (id, addr) {
                if self_id.as_ref() == Some(&id) {
                    c.problem(
                        format!("{key}.id"),
                        "is this node itself; list only the other nodes",
                    );
                } else if peers.insert(id.clone(), addr).is_some() {
                    c.problem(format!("{key}.id"), format!("peer {id} is listed twice"));
                } else if let Some(region) = p.region {
                    peer_regions.insert(id, region);
                }
            }
        }
        let domains = check_domains(&mut c, raw.domains, self_id.as_ref(), &peers, "domains");
        let defaults = Limits::default();
        let limits = raw.limits.map_or(defaults.clone(), |l| Limits {
            gateway_connections: l
                .gateway_connections
                .unwrap_or(defaults.gateway_connections),
            gateway_streams: l.gateway_streams.unwrap_or(defaults.gateway_streams),
            gateway_request_bytes: l
                .gateway_request_bytes
                .unwrap_or(defaults.gateway_request_bytes),
            guard_window: l
                .guard_window_ms
                .map_or(defaults.guard_window, Duration::from_millis),
            confirm_timeout: l
                .confirm_timeout_ms
                .map_or(defaults.confirm_timeout, Duration::from_millis),
        });
        if limits.gateway_request_bytes > domsync_proto::gateway::MAX_REQUEST_BYTES {
            c.problem(
                "limits.gateway_request_bytes",
                format!(
                    "at most {} bytes",
                    domsync_proto::gateway::MAX_REQUEST_BYTES
                ),
            );
        }
        match (node, tls, c.problems.is_empty()) {
            (Some(node), Some(tls), true) => Ok(Config {
                node,
                tls,
                peers,
                peer_regions,
                domains,
                limits,
            }),
            _ => Err(invalid(c.problems)),
        }
    }

    /// Where the domains added at runtime are kept: `<state_dir>/admin-domains.toml`.
    pub fn added_domains_path(&self) -> PathBuf {
        self.node.state_dir.join(ADDED_DOMAINS_FILE)
    }

    /// Reads the domains added at runtime (`admin-domains.toml`, see
    /// [`Config::added_domains_path`]); none when the file does not exist. They are checked
    /// against this configuration (node id, peers) like the file's own `[[domains]]`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Invalid`] listing every problem.
    pub fn load_added_domains(&self) -> Result<Vec<DomainConfig>, ConfigError> {
        let path = self.added_domains_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => self.parse_added_domains(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ConfigError::Read {
                path,
                detail: e.to_string(),
            }),
        }
    }

    /// Parses and checks the text of an added-domains file (`path` names it in errors).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn parse_added_domains(
        &self,
        text: &str,
        path: &Path,
    ) -> Result<Vec<DomainConfig>, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawAdded = parse_toml(text, path)?;
        let mut c = Checker {
            problems: Vec::new(),
        };
        let domains = check_domains(
            &mut c,
            raw.domains,
            Some(&self.node.id),
            &self.peers,
            "domains",
        );
        if c.problems.is_empty() {
            Ok(domains)
        } else {
            Err(invalid(c.problems))
        }
    }

    /// Checks one domain to add at runtime, exactly like a `[[domains]]` entry.
    ///
    /// # Errors
    /// Every problem on one line, each with the option it concerns.
    pub fn check_spec(&self, spec: &DomainSpec) -> Result<DomainConfig, String> {
        let raw = RawDomain {
            name: Some(spec.name.clone()),
            replicas: spec.replicas.clone(),
            durability: spec.durability.clone(),
            gateways: spec.gateways.clone(),
            retention_bytes: spec.retention_bytes,
            weight: spec.weight,
            region: spec.region.clone(),
        };
        let mut c = Checker {
            problems: Vec::new(),
        };
        let mut domains = check_domains(
            &mut c,
            vec![raw],
            Some(&self.node.id),
            &self.peers,
            "domain",
        );
        match (domains.pop(), c.problems.is_empty()) {
            (Some(d), true) => Ok(d),
            _ => Err(c
                .problems
                .iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// This configuration (the file's) with the domains added at runtime merged in. The
    /// configuration file wins: an added domain whose name the file also defines is left out,
    /// and its name returned in the second list.
    pub fn merged(&self, added: &[DomainConfig]) -> (Config, Vec<DomainId>) {
        let mut out = self.clone();
        let mut shadowed = Vec::new();
        for d in added {
            if self.domains.iter().any(|f| f.name == d.name) {
                shadowed.push(d.name.clone());
            } else {
                out.domains.push(d.clone());
            }
        }
        (out, shadowed)
    }

    /// The domains this node holds a replica of.
    pub fn local_domains(&self) -> impl Iterator<Item = &DomainConfig> {
        self.domains
            .iter()
            .filter(|d| d.replicas.contains(&self.node.id))
    }
}

/// The text of an added-domains file (`admin-domains.toml`) holding `domains`: a
/// `[[domains]]` list that [`Config::parse_added_domains`] reads back.
pub fn added_domains_toml(domains: &[DomainConfig]) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| toml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from(
        "# Domains added with `domsync domain add` (written by domsyncd; the configuration\n\
         # file wins over an entry of the same name). Remove them with `domsync domain remove`.\n",
    );
    for d in domains {
        let replicas: Vec<String> = d.replicas.iter().map(ToString::to_string).collect();
        let durability = match d.durability {
            Durability::Local => "local",
            Durability::Standby => "standby",
            Durability::All => "all",
        };
        out.push_str(&format!(
            "\n[[domains]]\nname = {}\nreplicas = [{}]\ndurability = \"{durability}\"\ngateways = [{}]\nretention_bytes = {}\nweight = {}\n",
            toml_string(d.name.as_str()),
            list(&replicas),
            list(&d.gateways),
            d.retention_bytes,
            d.weight,
        ));
        if let Some(r) = &d.region {
            out.push_str(&format!("region = {}\n", toml_string(r)));
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.domains.len(), 2);
        assert_eq!(c.domains[0].durability, Durability::Standby);
        assert_eq!(c.domains[1].primary().as_str(), "b");
        assert_eq!(c.limits.guard_window, Duration::from_secs(2));
        assert_eq!(c.node.state_dir, PathBuf::from("/var/lib/domsync"));
        assert_eq!(c.local_domains().count(), 2);
    }

    #[test]
    fn the_documented_example_is_valid() {
        let text = include_str!("../../../fixtures/domsync.toml");
        let c = Config::parse(text, Path::new("fixtures/domsync.toml")).unwrap();
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peer_regions[&NodeId::new("b").unwrap()], "eu-west");
        assert_eq!(c.domains[1].primary().as_str(), "b");
        assert_eq!(c.limits.guard_window, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let bad = r#"
            [node]
            id = "a"
            listen = "nowhere"
            [tls]
            ca = "ca.pem"
            cert = "c.pem"
            [[peers]]
            id = "a"
            address = "127.0.0.1:1"
            [[domains]]
            name = "t1"
            replicas = ["a", "zz"]
            durability = "sometimes"
            [[domains]]
            name = "t1"
        "#;
        let err = Config::parse(bad, Path::new("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "node.listen",
            "tls.key",
            "peers[0].id",
            "domains[0].replicas[1]",
            "domains[0].durability",
            "domains[1].name",
            "domains[1].replicas",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("x.toml"), "{line}");
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused() {
        let err = Config::parse("[node]\nidd = \"a\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("idd"), "{err}");
        let err = Config::parse("[node\n", Path::new("x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
    }

    #[test]
    fn peers_may_name_their_region() {
        let text = GOOD.replace(
            "address = \"127.0.0.1:7401\"",
            "address = \"127.0.0.1:7401\"\nregion = \"eu-west\"",
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.peer_regions[&NodeId::new("b").unwrap()], "eu-west");
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert!(c.peer_regions.is_empty());
    }

    #[test]
    fn added_domains_round_trip_are_checked_and_the_file_wins() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        let spec = |name: &str, replicas: &[&str]| DomainSpec {
            name: name.into(),
            replicas: replicas.iter().map(|r| (*r).to_owned()).collect(),
            durability: Some("all".into()),
            gateways: vec!["gw-1".into()],
            weight: Some(3),
            region: Some("eu \"west\"\\1".into()),
            ..DomainSpec::default()
        };
        let t3 = c.check_spec(&spec("t3", &["b", "a"])).unwrap();
        assert_eq!(t3.weight, 3);
        assert_eq!(t3.durability, Durability::All);
        let err = c.check_spec(&spec("t 4", &["a", "zz"])).unwrap_err();
        assert!(err.contains("zz") && err.contains("[[peers]]"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // The same file text reads back the same domains.
        let t1 = c.check_spec(&spec("t1", &["a"])).unwrap();
        let text = added_domains_toml(&[t3.clone(), t1.clone()]);
        let back = c
            .parse_added_domains(&text, Path::new("admin-domains.toml"))
            .unwrap();
        assert_eq!(back, vec![t3.clone(), t1.clone()]);
        // The configuration file wins on a name clash.
        let (merged, shadowed) = c.merged(&back);
        assert_eq!(shadowed, vec![t1.name.clone()]);
        assert_eq!(merged.domains.len(), 3);
        assert_eq!(merged.domains[0].replicas.len(), 2);
        assert_eq!(merged.domains[2], t3);
        // A broken file is refused with its key.
        let err = c
            .parse_added_domains(
                "[[domains]]\nname = \"x\"\nreplicas = [\"q\"]\n",
                Path::new("f"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("domains[0].replicas[0]"), "{err}");
    }
}
