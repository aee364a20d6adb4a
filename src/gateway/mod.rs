//! The gateway service (DESIGN.md §8): security gateways read their policy packages and CRLs
//! from any replica of a domain, active or standby, over QUIC (ALPN `domsync-gw/1`).
//!
//! [`protocol`] holds the messages. The node side is served by [`crate::node::Node`] for
//! every domain it holds (grants per domain: [`crate::node::Node::grant`]).

pub mod protocol;

pub use protocol::{CrlInfo, Query, Refusal, Request, Response, Served};
