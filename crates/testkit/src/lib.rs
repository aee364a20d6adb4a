//! The one test kit of domsync: what tests, benches, the load generator and the demo share.
//!
//! - [`cluster`]: in-process nodes (a store and a QUIC node each) from one deployment PKI,
//!   meshed as peers, a domain replicated over them, and waits on positions.
#![warn(missing_docs)]

pub mod cluster;
