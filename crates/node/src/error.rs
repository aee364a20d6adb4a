//! Errors of the node layer, one line each.

use std::net::SocketAddr;

use domsync_net::TlsError;
use domsync_proto::model::{DomainId, NodeId, Position};
use domsync_proto::repl::Durability;
use domsync_store::StoreError;

/// What starting or running a node can fail with.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The credentials are not a node's.
    #[error("the certificate names {identity}, not a node: issue one with `domsync pki issue --role node --id NAME`")]
    NotANode {
        /// The identity found.
        identity: String,
    },
    /// New credentials name another node than the running one.
    #[error("the new certificate names {identity}, but this node is {expected}: point tls.cert at this node's certificate")]
    OtherNode {
        /// The identity found.
        identity: String,
        /// The running node.
        expected: NodeId,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {detail}; pick a free address or stop the other listener")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        detail: String,
    },
    /// No address is known for a peer node.
    #[error("no address is configured for node {node}: add it to the peers")]
    UnknownPeer {
        /// The node.
        node: NodeId,
    },
    /// A peer could not be reached.
    #[error("cannot connect to node {node} at {addr}: {detail}")]
    Connect {
        /// The node.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// What failed.
        detail: String,
    },
}

/// What a replicated write can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store refused or failed the write (nothing committed), e.g. not active.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write is committed and durable on this node, but the standbys did not confirm it in
    /// time. It is not lost here; it is not yet known to survive the loss of this node.
    #[error("write to domain {domain} is committed locally at lsn {} but not confirmed by {mode} durability in time (confirmed by: {}); check the standbys with `domsync status`", position.lsn, if confirmed_by.is_empty() { "none".to_string() } else { confirmed_by.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ") })]
    Unconfirmed {
        /// The domain.
        domain: DomainId,
        /// Where the write committed locally.
        position: Position,
        /// The durability asked for.
        mode: Durability,
        /// Standbys that had confirmed it.
        confirmed_by: Vec<NodeId>,
    },
    /// The domain is not served as active by this node.
    #[error("domain {domain} is not served as active by this node: write on its active node")]
    NotServed {
        /// The domain.
        domain: DomainId,
    },
}
