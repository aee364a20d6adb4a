//! domsync: replicated configuration of many isolated domains.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod codec;
pub mod model;
pub mod store;
