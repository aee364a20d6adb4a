//! The client's settings ([`ClientConfig`]), the public types of its results ([`Origin`],
//! [`Package`], [`CrlCopy`], [`Listing`], [`Update`], [`NodeReport`]) and its [`Error`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::select::Health;
use domsync_net::{Credentials, TlsError};
use domsync_proto::gateway::Served;
use domsync_proto::model::{Crl, DomainId, NodeId, PolicyInfo};

/// Settings of a [`Client`](super::Client).
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
    /// skipped (at most [`MAX_WAIT_MS`](domsync_proto::gateway::MAX_WAIT_MS)).
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

/// What a [`Watch`](super::Watch) yields.
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
