//! The daemon layer: what `domsyncd` runs (DESIGN.md §10). [`Config`] is its configuration
//! file, parsed and checked as a whole before anything is opened or bound.

mod config;
pub mod metrics;
pub mod placement;
mod run;

pub use config::{
    Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection, DEFAULT_PATH,
};
pub use run::{Daemon, DaemonError, Placement};
