//! The one test kit of domsync: what the integration tests (`tests/` of the root package),
//! the simulations, the torture suite and the load generator share, instead of a copy per
//! test binary.
//!
//! - [`cluster`]: in-process nodes (a store and a QUIC node each) from one deployment PKI,
//!   meshed as peers, a domain replicated over them, and waits on positions.
//! - [`rng`]: the seeded deterministic generator ([`rng::Rng`], splitmix64) behind every
//!   random choice of a simulation, torture run, crash test or benchmark; a seed printed by a
//!   run replays it. Suite-specific draws (a simulation's random operation, say) live with the
//!   suite, built on it.
//! - [`pki`]: a deployment CA and certificates in a directory ([`pki::init_pki`]) and the
//!   credentials loaded from it ([`pki::creds`]).
//! - [`poll`]: bounded waiting ([`poll::poll`] up to the hang guard [`poll::GUARD`]) and free
//!   loopback ports ([`poll::free_port`]).
//! - [`process`]: real `domsyncd` processes: configuration files ([`process::NodeConfig`]),
//!   daemons started with a `NOTIFY_SOCKET` the test reads ([`process::Daemon`]), a cluster's
//!   files ([`process::Cluster`]), and where the binaries are ([`process::binary`]: next to
//!   the test binary, or `$DOMSYNC_BIN_DIR`).
//! - [`cli`]: runs of the `domsync` command ([`cli::Out`], [`cli::ok`], ...) and its
//!   `status --json` as a [`serde_json::Value`] ([`cli::status_json`], [`cli::wait_status`],
//!   [`cli::domain_of`]).
//!
//! Everything here panics on failure: it is test code, and a panic with the reason is the
//! report.
#![warn(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod openssl;
pub mod pki;
pub mod poll;
pub mod process;
pub mod rng;

pub use cluster::nid;
