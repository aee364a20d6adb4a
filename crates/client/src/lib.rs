//! Clients of a domsync deployment.
//!
//! - [`gateway`]: what a security gateway embeds to read its domain's policy packages and CRLs
//!   from any replica, with failover, monotonic reads and an on-disk cache of the last good
//!   copies. It needs neither the store nor the certificate tools.
//! - [`admin`]: one connection to a running `domsyncd` (local socket or QUIC).
//! - [`app`]: what applications use to read, change and watch a domain's keys through a
//!   running `domsyncd` (application socket or QUIC), with failover and resumable watches.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod gateway;
mod quic;
