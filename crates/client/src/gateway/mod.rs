//! The gateway service (DESIGN.md §8): security gateways read their policy packages and CRLs
//! from any replica of a domain, active or standby, over QUIC (ALPN `domsync-gw/1`).
//!
//! The messages are [`domsync_proto::gateway`]. The node side is served by `domsync_node::Node`
//! for every domain it holds (grants per domain: `Node::grant`).
//!
//! The gateway side is a [`Client`] of one domain that prefers the nearest node, fails over,
//! reads monotonically, verifies packages and keeps the last good copies in a [`Cache`] on
//! disk; its node ranking ([`Health`]) is computed without I/O.

mod assembly;
mod cache;
mod client;
mod config;
mod exchange;
mod held;
mod lookup;
mod pool;
mod select;
#[cfg(test)]
mod tests;
mod watch;

pub use cache::{Cache, CacheError, CachedCrl, CachedPolicy};
pub use client::Client;
pub use config::{ClientConfig, CrlCopy, Error, Listing, NodeReport, Origin, Package, Update};
pub use select::Health;
pub use watch::Watch;

/// Parses `ID=ADDRESS` (as in `--node a=10.0.0.1:7400`): a node id and its gateway address.
///
/// ```
/// let (id, addr) = domsync_client::gateway::parse_node("a=127.0.0.1:7400")?;
/// assert_eq!((id.as_str(), addr.port()), ("a", 7400));
/// # Ok::<(), String>(())
/// ```
///
/// # Errors
/// One line naming the text and what was expected.
pub fn parse_node(
    text: &str,
) -> Result<(domsync_proto::model::NodeId, std::net::SocketAddr), String> {
    let (id, addr) = text.split_once('=').ok_or_else(|| {
        format!("--node {text:?}: expected ID=ADDRESS, for example a=10.0.0.1:7400")
    })?;
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| format!("--node {text:?}: bad address {addr:?} ({e}); use IP:PORT"))?;
    let id = domsync_proto::model::NodeId::new(id).map_err(|e| format!("--node {text:?}: {e}"))?;
    Ok((id, addr))
}
