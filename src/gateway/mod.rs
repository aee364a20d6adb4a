//! The gateway service (DESIGN.md §8): security gateways read their policy packages and CRLs
//! from any replica of a domain, active or standby, over QUIC (ALPN `domsync-gw/1`).
//!
//! [`protocol`] holds the messages. The node side is served by [`crate::node::Node`] for
//! every domain it holds (grants per domain: [`crate::node::Node::grant`]).
//!
//! The gateway side is [`client`]: a [`Client`] of one domain that prefers the nearest node,
//! fails over, reads monotonically, verifies packages and keeps the last good copies in a
//! [`cache`] on disk. [`select`] is its node ranking, without I/O.

pub mod cache;
pub mod client;
pub mod protocol;
pub mod select;

pub use client::{
    Client, ClientConfig, CrlCopy, Error, Listing, NodeReport, Origin, Package, Update, Watch,
};
pub use protocol::{CrlInfo, Query, Refusal, Request, Response, Served};
