//! The domsyncd service: what `domsyncd` runs (DESIGN.md §10). [`Config`] is its configuration
//! file, parsed and checked as a whole before anything is opened or bound.
//!
//! Modules depend one way: `config` and `error` are leaves; `run` (the [`Daemon`] runtime)
//! uses them; `admin_server` (the [`AdminServer`]), `metrics` and `placement` serve or help a
//! [`Daemon`]; `service` starts the runtime and then the admin server ([`Daemon::start`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod admin_server;
mod app_server;
mod config;
mod crl_watch;
mod descriptors;
mod error;
mod local_socket;
mod metrics;
mod placement;
mod preflight;
mod run;
mod service;

pub use admin_server::AdminServer;
pub use app_server::{peer_may_connect, AppServer};
pub use config::{
    AppGrant, Apps, Config, ConfigError, DomainConfig, Limits, NodeSection, Problem, TlsSection,
    DEFAULT_PATH,
};
pub use descriptors::Shortage as DescriptorShortage;
pub use error::{AdminServerError, AppServerError, DaemonError};
pub use metrics::serve as serve_metrics;
pub use placement::{
    plan as plan_placement, Move as PlacementMove, Node as PlacementNode, Plan as PlacementPlan,
    Want as PlacementWant,
};
pub use preflight::SERVICE_USER;
pub use run::{Daemon, Placement};

/// The issuer certificates and CRLs of `domain` (one read), without the CRLs' bytes, as the
/// admin `Trust` request answers and `domsync crl|issuer list` shows them.
///
/// # Errors
/// [`domsync_store::StoreError`] when the domain cannot be read.
pub fn trust_report(
    d: &domsync_store::Domain,
    domain: domsync_proto::model::DomainId,
) -> Result<domsync_proto::admin::TrustReport, domsync_store::StoreError> {
    let read = d.trust()?;
    let (issuers, mut crls, mut legacy) = read.value;
    for c in &mut crls {
        c.der = Vec::new();
    }
    for c in &mut legacy {
        c.der = Vec::new();
    }
    Ok(domsync_proto::admin::TrustReport {
        domain,
        accept_unverified_crls: d.accepts_unverified_crls(),
        issuers,
        crls,
        legacy,
        position: read.position,
    })
}
