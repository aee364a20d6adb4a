//! The domsyncd service: what `domsyncd` runs (DESIGN.md §10). [`Config`] is its configuration
//! file, parsed and checked as a whole before anything is opened or bound.
//!
//! Modules depend one way: `config` and `error` are leaves; `run` (the [`Daemon`] runtime)
//! uses them; `admin_server` (the [`AdminServer`]), `metrics` and `placement` serve or help a
//! [`Daemon`]; `service` starts the runtime and then the admin server ([`Daemon::start`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod admin_server;
mod config;
mod crl_watch;
mod error;
mod metrics;
mod placement;
mod preflight;
mod run;
mod service;

pub use admin_server::AdminServer;
pub use config::{
    Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection, DEFAULT_PATH,
};
pub use error::{AdminServerError, DaemonError};
pub use metrics::serve as serve_metrics;
pub use placement::{
    plan as plan_placement, Move as PlacementMove, Node as PlacementNode, Plan as PlacementPlan,
    Want as PlacementWant,
};
pub use preflight::SERVICE_USER;
pub use run::{Daemon, Placement};
