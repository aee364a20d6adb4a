//! The domsyncd service: what `domsyncd` runs (DESIGN.md §10). [`Config`] is its configuration
//! file, parsed and checked as a whole before anything is opened or bound.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod admin_server;
mod config;
pub mod metrics;
pub mod placement;
mod run;

pub use admin_server::{AdminServer, AdminServerError};
pub use config::{
    Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection, DEFAULT_PATH,
};
pub use run::{Daemon, DaemonError, Placement};
