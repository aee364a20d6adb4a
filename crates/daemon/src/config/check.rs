//! Checking a configuration: the file's text parsed into its raw shape, then every key
//! checked, every problem listed with the key it concerns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Checker, Fields};
use super::{
    AppGrant, Apps, Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection,
};
use domsync_proto::admin::DomainSpec;
use domsync_proto::model::{DomainId, NodeId};
use domsync_proto::repl::Durability;

struct RawConfig {
    node: Option<RawNode>,
    tls: Option<RawTls>,
    peers: Vec<(String, RawPeer)>,
    domains: Vec<RawDomain>,
    limits: Limits,
    apps: RawApps,
}

#[derive(Default)]
struct RawApps {
    socket: Option<PathBuf>,
    group: Option<String>,
    local_write: Option<bool>,
    grants: Vec<(String, RawGrant)>,
}

struct RawGrant {
    id: Option<String>,
    domains: Option<Vec<String>>,
    write: bool,
}

struct RawNode {
    id: Option<String>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    admin_socket: Option<PathBuf>,
    gateway_listen: Option<String>,
    metrics: Option<String>,
    region: Option<String>,
}

struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    crl: Option<PathBuf>,
}

struct RawPeer {
    id: Option<String>,
    address: Option<String>,
    region: Option<String>,
}

pub(super) struct RawDomain {
    /// Its key (`domains[2]`).
    key: String,
    name: Option<String>,
    replicas: Option<Vec<String>>,
    durability: Option<String>,
    gateways: Vec<String>,
    retention_bytes: Option<u64>,
    weight: Option<u64>,
    region: Option<String>,
    accept_unverified_crls: bool,
}

const ADDRESS: &str = "a string: an address IP:PORT, e.g. \"127.0.0.1:7400\"";
const PATH: &str = "a string: a path, e.g. \"/var/lib/domsync\"";
const NODE_ID: &str = "a string: a node id, e.g. \"a\"";
const REGION: &str = "a string: a region name, e.g. \"eu-west\"";

/// One `[limits]` key: its range, what it bounds, and its default.
struct LimitRange {
    key: &'static str,
    min: u64,
    max: u64,
    what: &'static str,
}

impl LimitRange {
    fn allowed(&self) -> String {
        format!("a whole number from {} to {}", self.min, self.max)
    }
}

/// Every `[limits]` key, with the range accepted.
const LIMITS: [LimitRange; 7] = [
    LimitRange {
        key: "gateway_connections",
        min: 1,
        max: 1 << 20,
        what: "gateway connections at once; default 4096",
    },
    LimitRange {
        key: "gateway_connections_per_gateway",
        min: 1,
        max: 1 << 20,
        what: "connections one gateway certificate may hold at once; default 64",
    },
    LimitRange {
        key: "gateway_answer_timeout_ms",
        min: 100,
        max: 3_600_000,
        what: "milliseconds a gateway answer waits to be read; default 30000",
    },
    LimitRange {
        key: "gateway_streams",
        min: 1,
        max: 65_536,
        what: "gateway requests in progress per connection; default 64",
    },
    LimitRange {
        key: "gateway_request_bytes",
        min: 1024,
        max: domsync_proto::gateway::MAX_REQUEST_BYTES as u64,
        what: "largest gateway request in bytes; default and most 65536",
    },
    LimitRange {
        key: "guard_window_ms",
        min: 100,
        max: 600_000,
        what: "milliseconds a sighting of the active counts as alive; default 5000",
    },
    LimitRange {
        key: "confirm_timeout_ms",
        min: 100,
        max: 3_600_000,
        what: "milliseconds a standby-durability write waits for its confirmation; default 5000",
    },
];

/// Range of `[[domains]] retention_bytes` (64 KiB to 1 TiB).
const RETENTION_BYTES: (u64, u64) = (64 << 10, 1 << 40);
/// Range of `[[domains]] weight`.
const WEIGHT: (u64, u64) = (1, 1_000_000);

/// The keys of a `[[domains]]` entry.
const DOMAIN_KEYS: &[&str] = &[
    "name",
    "replicas",
    "durability",
    "gateways",
    "retention_bytes",
    "weight",
    "region",
    "accept_unverified_crls",
];

/// Reads every `[[domains]]` entry of `top` (the document).
pub(super) fn read_domains(c: &mut Checker<'_>, top: &Fields<'_, '_>) -> Vec<RawDomain> {
    let mut out = Vec::new();
    for (key, t) in top.tables(c, "domains") {
        let f = c.table(&key, t, DOMAIN_KEYS);
        let replicas = f.strings(c, "replicas", "node ids (strings)");
        out.push(RawDomain {
            name: f.string(c, "name", "a string: a domain name, e.g. \"tenant-1\""),
            replicas: t
                .get("replicas")
                .is_some_and(|v| v.get_ref().is_array())
                .then_some(replicas),
            durability: f.string(c, "durability", "a string: local, standby or all"),
            gateways: f.strings(c, "gateways", "gateway ids (strings)"),
            retention_bytes: f.uint(
                c,
                "retention_bytes",
                &format!(
                    "a whole number of bytes from {} to {}",
                    RETENTION_BYTES.0, RETENTION_BYTES.1
                ),
            ),
            weight: f.uint(
                c,
                "weight",
                &format!("a whole number from {} to {}", WEIGHT.0, WEIGHT.1),
            ),
            region: f.string(c, "region", REGION),
            accept_unverified_crls: f.boolean(c, "accept_unverified_crls").unwrap_or(false),
            key,
        });
    }
    out
}

fn read_config(c: &mut Checker<'_>, doc: &toml::de::DeTable<'_>) -> RawConfig {
    let top = c.table(
        "",
        doc,
        &["node", "tls", "peers", "domains", "limits", "apps"],
    );
    let node = top.table(c, "node").map(|t| {
        let f = c.table(
            "node",
            t,
            &[
                "id",
                "state_dir",
                "listen",
                "admin_socket",
                "gateway_listen",
                "metrics",
                "region",
            ],
        );
        RawNode {
            id: f.string(c, "id", NODE_ID),
            state_dir: f.string(c, "state_dir", PATH).map(PathBuf::from),
            listen: f.string(c, "listen", ADDRESS),
            admin_socket: f.string(c, "admin_socket", PATH).map(PathBuf::from),
            gateway_listen: f.string(c, "gateway_listen", ADDRESS),
            metrics: f.string(c, "metrics", ADDRESS),
            region: f.string(c, "region", REGION),
        }
    });
    let tls = top.table(c, "tls").map(|t| {
        let f = c.table("tls", t, &["ca", "cert", "key", "crl"]);
        let mut path = |k| f.string(c, k, PATH).map(PathBuf::from);
        RawTls {
            ca: path("ca"),
            cert: path("cert"),
            key: path("key"),
            crl: path("crl"),
        }
    });
    let mut peers = Vec::new();
    for (key, t) in top.tables(c, "peers") {
        let f = c.table(&key, t, &["id", "address", "region"]);
        let peer = RawPeer {
            id: f.string(c, "id", NODE_ID),
            address: f.string(c, "address", ADDRESS),
            region: f.string(c, "region", REGION),
        };
        peers.push((key, peer));
    }
    let domains = read_domains(c, &top);
    let mut limits = Limits::default();
    if let Some(t) = top.table(c, "limits") {
        let names: Vec<&str> = LIMITS.iter().map(|l| l.key).collect();
        let f = c.table("limits", t, &names);
        for l in &LIMITS {
            let Some(n) = f.uint(c, l.key, &l.allowed()) else {
                continue;
            };
            if !(l.min..=l.max).contains(&n) {
                c.problem(
                    format!("limits.{}", l.key),
                    format!(
                        "{n} is out of range; must be between {} and {} ({})",
                        l.min, l.max, l.what
                    ),
                );
                continue;
            }
            let ms = Duration::from_millis(n);
            let count = usize::try_from(n).unwrap_or(usize::MAX);
            match l.key {
                "gateway_connections" => limits.gateway_connections = count,
                "gateway_connections_per_gateway" => {
                    limits.gateway_connections_per_gateway = count;
                }
                "gateway_answer_timeout_ms" => limits.gateway_answer_timeout = ms,
                "gateway_streams" => limits.gateway_streams = count,
                "gateway_request_bytes" => limits.gateway_request_bytes = count,
                "guard_window_ms" => limits.guard_window = ms,
                "confirm_timeout_ms" => limits.confirm_timeout = ms,
                _ => unreachable!("every limit is read"),
            }
        }
    }
    let apps = read_apps(c, &top);
    RawConfig {
        node,
        tls,
        peers,
        domains,
        limits,
        apps,
    }
}

/// Reads `[apps]` and its `[[apps.grants]]`.
fn read_apps(c: &mut Checker<'_>, top: &Fields<'_, '_>) -> RawApps {
    let Some(t) = top.table(c, "apps") else {
        return RawApps::default();
    };
    let f = c.table("apps", t, &["socket", "group", "local_write", "grants"]);
    let mut grants = Vec::new();
    for (key, g) in f.tables(c, "grants") {
        let gf = c.table(&key, g, &["id", "domains", "write"]);
        let domains = gf.strings(c, "domains", "domain names (strings), or [\"*\"] for all");
        grants.push((
            key,
            RawGrant {
                id: gf.string(
                    c,
                    "id",
                    "a string: an app certificate id, e.g. \"editor-1\"",
                ),
                domains: g
                    .get("domains")
                    .is_some_and(|v| v.get_ref().is_array())
                    .then_some(domains),
                write: gf.boolean(c, "write").unwrap_or(false),
            },
        ));
    }
    RawApps {
        socket: f.string(c, "socket", PATH).map(PathBuf::from),
        group: f.string(
            c,
            "group",
            "a string: a Unix group name, e.g. \"domsync-app\"",
        ),
        local_write: f.boolean(c, "local_write"),
        grants,
    }
}

/// Checks `[apps]`: a group name that can be one, grant ids that are app identities, listed
/// once, with domain names (or `"*"` alone).
fn check_apps(c: &mut Checker<'_>, raw: RawApps, admin_socket: Option<&Path>) -> Apps {
    let socket = raw.socket.unwrap_or_else(|| {
        admin_socket
            .and_then(Path::parent)
            .unwrap_or(Path::new("/run/domsync"))
            .join("app.sock")
    });
    if let Some(g) = &raw.group {
        let ok = !g.is_empty()
            && g.len() <= 32
            && g.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
            && !g.starts_with('-');
        if !ok {
            c.problem(
                "apps.group",
                format!(
                    "{g:?} is not a Unix group name; write a group name such as \"domsync-app\""
                ),
            );
        }
    }
    let mut grants = Vec::new();
    let mut seen = BTreeSet::new();
    for (key, g) in raw.grants {
        let id = c.required(&format!("{key}.id"), g.id);
        let id = id.and_then(|id| {
            match domsync_net::Identity::new(domsync_net::PeerRole::App, id.as_str()) {
                Ok(_) => Some(id),
                Err(e) => {
                    c.problem(format!("{key}.id"), e.to_string());
                    None
                }
            }
        });
        let domains = c.required(&format!("{key}.domains"), g.domains);
        let domains = domains.and_then(|list| {
            if list.iter().any(|d| d == "*") {
                if list.len() > 1 {
                    c.problem(
                        format!("{key}.domains"),
                        "\"*\" (every domain) must be alone in the list",
                    );
                    return None;
                }
                return Some(None);
            }
            let mut out = Vec::new();
            for (j, d) in list.iter().enumerate() {
                match DomainId::new(d.as_str()) {
                    Ok(d) => out.push(d),
                    Err(e) => c.problem(format!("{key}.domains[{j}]"), e.to_string()),
                }
            }
            (out.len() == list.len()).then_some(Some(out))
        });
        if let (Some(id), Some(domains)) = (id, domains) {
            if !seen.insert(id.clone()) {
                c.problem(
                    format!("{key}.id"),
                    format!("app {id} has two grants; merge them into one"),
                );
                continue;
            }
            grants.push(AppGrant {
                id,
                domains,
                write: g.write,
            });
        }
    }
    Apps {
        socket,
        group: raw.group,
        local_write: raw.local_write.unwrap_or(true),
        grants,
    }
}

impl Checker<'_> {
    /// `v`, or a problem when the key is missing (a key present with a wrong value has its
    /// problem already).
    fn required<T>(&mut self, key: &str, v: Option<T>) -> Option<T> {
        if v.is_none() && !self.has(key) {
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

/// Checks `[[domains]]` entries (each named by its key in problems): names valid and unique,
/// replicas this node or listed peers, durability and gateway ids valid.
pub(super) fn check_domains(
    c: &mut Checker<'_>,
    raw: Vec<RawDomain>,
    self_id: Option<&NodeId>,
    peers: &BTreeMap<NodeId, SocketAddr>,
) -> Vec<DomainConfig> {
    let mut domains = Vec::new();
    let mut names = BTreeSet::new();
    for d in raw {
        let key = d.key;
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
        let rkey = format!("{key}.replicas");
        let d_replicas = match d.replicas {
            // Not a list: told already.
            None if c.has(&rkey) => Vec::new(),
            None => {
                c.problem(&rkey, "missing; list the replica nodes, primary first");
                Vec::new()
            }
            Some(list) => {
                if list.is_empty() && !c.has(&format!("{rkey}[0]")) {
                    c.problem(&rkey, "is empty; list the replica nodes, primary first");
                }
                list
            }
        };
        for (j, r) in d_replicas.iter().enumerate() {
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
        let retention_bytes = d.retention_bytes.unwrap_or(256 << 20);
        let retention_ok = (RETENTION_BYTES.0..=RETENTION_BYTES.1).contains(&retention_bytes);
        if !retention_ok {
            c.problem(
                format!("{key}.retention_bytes"),
                format!(
                    "{retention_bytes} is out of range; must be between {} and {} (bytes of \
                     change log kept; default 268435456)",
                    RETENTION_BYTES.0, RETENTION_BYTES.1
                ),
            );
        }
        let weight = d.weight.unwrap_or(1);
        let weight = match u32::try_from(weight) {
            Ok(w) if (WEIGHT.0..=WEIGHT.1).contains(&weight) => Some(w),
            _ => {
                c.problem(
                    format!("{key}.weight"),
                    format!(
                        "{weight} is out of range; must be between {} and {} (relative load \
                         of the domain; default 1)",
                        WEIGHT.0, WEIGHT.1
                    ),
                );
                None
            }
        };
        if let (Some(name), Some(durability), false, true, Some(weight)) =
            (name, durability, replicas.is_empty(), retention_ok, weight)
        {
            domains.push(DomainConfig {
                name,
                replicas,
                durability,
                gateways: d.gateways,
                retention_bytes,
                weight,
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
        let mut c = Checker::new(text);
        let Some(doc) = c.document() else {
            return Err(invalid(c.into_problems()));
        };
        let raw = read_config(&mut c, doc.get_ref());
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
        for (key, p) in raw.peers {
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
        let domains = check_domains(&mut c, raw.domains, self_id.as_ref(), &peers);
        let limits = raw.limits;
        let admin_socket = node.as_ref().map(|n| n.admin_socket.clone());
        let apps = check_apps(&mut c, raw.apps, admin_socket.as_deref());
        let problems = c.into_problems();
        match (node, tls, problems.is_empty()) {
            (Some(node), Some(tls), true) => Ok(Config {
                node,
                tls,
                peers,
                peer_regions,
                domains,
                limits,
                apps,
            }),
            _ => Err(invalid(problems)),
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
                    at: None,
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
            key: "domain".into(),
            name: Some(spec.name.clone()),
            replicas: Some(spec.replicas.clone()),
            durability: spec.durability.clone(),
            gateways: spec.gateways.clone(),
            retention_bytes: spec.retention_bytes,
            weight: spec.weight.map(u64::from),
            region: spec.region.clone(),
            accept_unverified_crls: false,
        };
        let mut c = Checker::new("");
        let mut domains = check_domains(&mut c, vec![raw], Some(&self.node.id), &self.peers);
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
        // A header, then one line per problem, each starting with the file.
        let text = err.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), problems.len() + 1, "{text}");
        assert!(
            lines[1..].iter().all(|l| l.starts_with("x.toml:")),
            "{text}"
        );
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

#[cfg(test)]
mod placed {
    //! Every problem named by its key path and `line:column`, all at once.
    use super::super::GOOD;
    use super::*;

    /// The error's lines (header first).
    #[test]
    fn apps_have_defaults_and_grants_are_checked() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        assert_eq!(c.apps.socket, PathBuf::from("/run/domsync/app.sock"));
        assert_eq!((c.apps.group.as_deref(), c.apps.local_write), (None, true));
        assert!(c.apps.grants.is_empty());
        let text = format!(
            "{GOOD}{}",
            r#"
    [apps]
    group = "domsync-app"
    local_write = false
    [[apps.grants]]
    id = "editor-1"
    domains = ["t1"]
    write = true
    [[apps.grants]]
    id = "reader"
    domains = ["*"]
"#
        );
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert_eq!(c.apps.group.as_deref(), Some("domsync-app"));
        assert!(!c.apps.local_write);
        let t1 = DomainId::new("t1").unwrap();
        let t2 = DomainId::new("t2").unwrap();
        let g = &c.apps.grants;
        assert_eq!((g[0].id.as_str(), g[0].write), ("editor-1", true));
        assert!(g[0].covers(&t1) && !g[0].covers(&t2));
        assert!(g[1].covers(&t2) && !g[1].write && g[1].domains.is_none());

        let bad = format!(
            "{GOOD}{}",
            r#"
    [apps]
    colour = "blue"
    local_write = "yes"
    group = "bad group"
    [[apps.grants]]
    id = "a/b"
    domains = ["*", "t1"]
    [[apps.grants]]
    id = "x"
    [[apps.grants]]
    id = "y"
    domains = ["t1"]
    [[apps.grants]]
    id = "y"
    domains = ["t2"]
"#
        );
        let lines = refused(&bad);
        has(
            &lines,
            "x.toml:23:5: apps.colour: unknown key; allowed here: socket, group",
        );
        has(
            &lines,
            "x.toml:24:19: apps.local_write: the string \"yes\" is not true or false",
        );
        has(
            &lines,
            "x.toml:25:13: apps.group: \"bad group\" is not a Unix group name",
        );
        has(&lines, "x.toml:27:10: apps.grants[0].id: ");
        has(
            &lines,
            "x.toml:28:15: apps.grants[0].domains: \"*\" (every domain) must be alone",
        );
        has(
            &lines,
            "x.toml:29:5: apps.grants[1].domains: missing; it is required",
        );
        has(
            &lines,
            "x.toml:35:10: apps.grants[3].id: app y has two grants",
        );
    }

    fn refused(text: &str) -> Vec<String> {
        let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        err.to_string().lines().map(str::to_owned).collect()
    }

    fn has(lines: &[String], want: &str) {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "no line starting {want:?} in {lines:#?}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_place_all_at_once() {
        let text = GOOD
            .replace("listen = \"127.0.0.1:7400\"", "listen = 7400")
            .replace(
                "replicas = [\"a\", \"b\"]",
                "replicas = \"a\"\nretention_bytes = \"big\"",
            )
            .replace("guard_window_ms = 2000", "guard_window_ms = -5");
        let lines = refused(&text);
        assert_eq!(
            lines[0], "configuration x.toml refused (4 problems):",
            "{lines:#?}"
        );
        has(
            &lines,
            "x.toml:4:14: node.listen: the integer 7400 is not a string: an address IP:PORT",
        );
        has(
            &lines,
            "x.toml:14:16: domains[0].replicas: the string \"a\" is not a list of node ids",
        );
        has(&lines, "x.toml:15:19: domains[0].retention_bytes: the string \"big\" is not a whole number of bytes from 65536 to");
        has(&lines, "x.toml:21:23: limits.guard_window_ms: the integer -5 is not a whole number from 100 to 600000");
        assert!(
            !lines.iter().any(|l| l.contains("invalid type")),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_duplicate_key_is_placed_and_named() {
        // The rest of the file is read on: its problems are listed too.
        let text = GOOD
            .replace("id = \"a\"", "id = \"a\"\n    id = \"c\"")
            .replace(
                "[limits]",
                "[limits]\n    confirm_timeout_ms = 0\n    [node]",
            );
        let lines = refused(&text);
        assert_eq!(lines.len(), 5, "{lines:#?}");
        has(
            &lines,
            "x.toml:4:5: node.id: is set twice (or its table is written twice); keep one",
        );
        has(
            &lines,
            "x.toml:21:26: limits.confirm_timeout_ms: 0 is out of range",
        );
        has(&lines, "x.toml:22:6: node: is set twice");
        // guard_window_ms now follows the second [node].
        has(
            &lines,
            "x.toml:23:5: node.guard_window_ms: unknown key; allowed here: id,",
        );
    }

    #[test]
    fn a_nul_byte_and_a_bad_string_are_placed() {
        let text = GOOD.replace("ca = \"ca.pem\"", "ca = \"ca\0.pem\"");
        let lines = refused(&text);
        assert!(lines.len() >= 2, "{lines:#?}");
        has(&lines, "x.toml:6:13: tls.ca: TOML syntax error");
        assert!(lines[1].contains("tls.ca: TOML syntax error"), "{lines:#?}");
        assert!(lines.iter().all(|l| !l.contains('\0')), "{lines:#?}");
        let text = GOOD.replace("cert = \"node-a.pem\"", "cert = \"node-a.pem");
        let lines = refused(&text);
        has(&lines, "x.toml:7:");
        assert!(
            lines[1].contains("tls.cert: TOML syntax error"),
            "{lines:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_placed_with_what_is_allowed() {
        let text = GOOD.replace("[limits]", "[limits]\n    gateway_conections = 5");
        let lines = refused(&text);
        has(
            &lines,
            "x.toml:20:5: limits.gateway_conections: unknown key; allowed here: gateway_connections,",
        );
    }

    #[test]
    fn zero_and_absurd_limits_are_refused_with_the_range() {
        for (key, value, range) in [
            ("gateway_connections", "0", "between 1 and 1048576"),
            ("gateway_connections", "100000000", "between 1 and 1048576"),
            ("confirm_timeout_ms", "0", "between 100 and 3600000"),
            ("guard_window_ms", "0", "between 100 and 600000"),
            ("gateway_streams", "0", "between 1 and 65536"),
            ("gateway_request_bytes", "0", "between 1024 and 65536"),
            (
                "gateway_answer_timeout_ms",
                "99999999",
                "between 100 and 3600000",
            ),
        ] {
            let text = GOOD.replace("guard_window_ms = 2000", &format!("{key} = {value}"));
            let lines = refused(&text);
            has(
                &lines,
                &format!(
                    "x.toml:20:{}: limits.{key}: {value} is out of range; must be {range}",
                    key.len() + 8
                ),
            );
        }
        let text = GOOD.replace(
            "durability = \"all\"",
            "durability = \"all\"\nweight = 0\nretention_bytes = 0",
        );
        let lines = refused(&text);
        has(
            &lines,
            "x.toml:19:10: domains[1].weight: 0 is out of range; must be between 1 and",
        );
        has(&lines, "x.toml:20:19: domains[1].retention_bytes: 0 is out of range; must be between 65536 and");
    }

    #[test]
    fn a_missing_key_is_placed_at_its_table() {
        let text = GOOD.replace("    key = \"node-a.key\"\n", "");
        let lines = refused(&text);
        assert_eq!(lines.len(), 2, "{lines:#?}");
        has(&lines, "x.toml:5:5: tls.key: missing; it is required");
    }
}
