//! Checking a configuration: the file's text parsed into its raw shape, then every key
//! checked, every problem listed with the key it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection};
use domsync_proto::admin::DomainSpec;
use domsync_proto::model::{DomainId, NodeId};
use domsync_proto::repl::Durability;

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
    crl: Option<PathBuf>,
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
pub(super) struct RawDomain {
    name: Option<String>,
    #[serde(default)]
    replicas: Vec<String>,
    durability: Option<String>,
    #[serde(default)]
    gateways: Vec<String>,
    retention_bytes: Option<u64>,
    weight: Option<u32>,
    region: Option<String>,
    #[serde(default)]
    accept_unverified_crls: bool,
}

/// Highest `[limits] gateway_connections_per_gateway` accepted.
const MAX_CONNECTIONS_PER_GATEWAY: usize = 1 << 20;
/// Range of `[limits] gateway_answer_timeout_ms` accepted.
const MIN_ANSWER_TIMEOUT_MS: u128 = 100;
const MAX_ANSWER_TIMEOUT_MS: u128 = 3_600_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    gateway_connections: Option<usize>,
    gateway_connections_per_gateway: Option<usize>,
    gateway_answer_timeout_ms: Option<u64>,
    gateway_streams: Option<usize>,
    gateway_request_bytes: Option<usize>,
    guard_window_ms: Option<u64>,
    confirm_timeout_ms: Option<u64>,
}

/// TOML text into its raw shape; a syntax error or an unknown key is the file's one problem.
pub(super) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        problems: vec![Problem {
            key: String::new(),
            message: e.message().replace('\n', " "),
        }],
    })
}

/// Collects problems while checking.
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
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
pub(super) fn check_domains(
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
                accept_unverified_crls: d.accept_unverified_crls,
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
                crl: t.crl,
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
            gateway_connections_per_gateway: l
                .gateway_connections_per_gateway
                .unwrap_or(defaults.gateway_connections_per_gateway),
            gateway_answer_timeout: l
                .gateway_answer_timeout_ms
                .map_or(defaults.gateway_answer_timeout, Duration::from_millis),
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
        if !(1..=MAX_CONNECTIONS_PER_GATEWAY).contains(&limits.gateway_connections_per_gateway) {
            c.problem(
                "limits.gateway_connections_per_gateway",
                format!(
                    "must be between 1 and {MAX_CONNECTIONS_PER_GATEWAY} (connections one \
                     gateway certificate may hold at once; default 64)"
                ),
            );
        }
        let answer_ms = limits.gateway_answer_timeout.as_millis();
        if !(MIN_ANSWER_TIMEOUT_MS..=MAX_ANSWER_TIMEOUT_MS).contains(&answer_ms) {
            c.problem(
                "limits.gateway_answer_timeout_ms",
                format!(
                    "must be between {MIN_ANSWER_TIMEOUT_MS} and {MAX_ANSWER_TIMEOUT_MS} \
                     (milliseconds a gateway answer waits to be read; default 30000)"
                ),
            );
        }
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

    /// Checks the deployment CRL (`tls.crl`), when there is one: it must parse (PEM or DER) and
    /// be signed by the CA of `tls.ca`. Returns it, for `domsyncd --check` to tell (`path`,
    /// the configuration file, names it in errors).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the problem under `tls.crl`.
    pub fn check_crl(
        &self,
        path: &Path,
    ) -> Result<Option<domsync_net::RevocationList>, ConfigError> {
        let Some(crl) = &self.tls.crl else {
            return Ok(None);
        };
        domsync_net::RevocationList::load(crl, &self.tls.ca)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                problems: vec![Problem {
                    key: "tls.crl".into(),
                    message: e.to_string(),
                }],
            })
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
            accept_unverified_crls: false,
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
}

#[cfg(test)]
mod tests {
    use super::super::GOOD;
    use super::*;

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
        let text = include_str!("../../../../fixtures/domsync.toml");
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
    fn gateway_limits_per_gateway_and_answer_timeout_have_defaults_and_ranges() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.limits.gateway_connections_per_gateway, 64);
        assert_eq!(c.limits.gateway_answer_timeout, Duration::from_secs(30));
        let text = GOOD.replace(
            "guard_window_ms = 2000",
            "guard_window_ms = 2000\ngateway_connections_per_gateway = 3\ngateway_answer_timeout_ms = 500",
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.limits.gateway_connections_per_gateway, 3);
        assert_eq!(c.limits.gateway_answer_timeout, Duration::from_millis(500));
        let text = GOOD.replace(
            "guard_window_ms = 2000",
            "guard_window_ms = 2000\ngateway_connections_per_gateway = 0\ngateway_answer_timeout_ms = 0",
        );
        let err = Config::parse(&text, Path::new("x.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let per = problems
            .iter()
            .find(|p| p.key == "limits.gateway_connections_per_gateway")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(per.message.contains("between 1 and"), "{err}");
        let answer = problems
            .iter()
            .find(|p| p.key == "limits.gateway_answer_timeout_ms")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(answer.message.contains("between 100 and"), "{err}");
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
}
