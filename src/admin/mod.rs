//! Administration of a running daemon (DESIGN.md §9, §10): the [`protocol`] spoken by
//! `domsync` to `domsyncd`, and the daemon's [`server`] for it.
//!
//! Two ways in, one protocol:
//! * the local Unix socket `node.admin_socket` (default `/run/domsync/admin.sock`), mode 0600,
//!   served only to the daemon's own user and root (checked with `SO_PEERCRED`);
//! * the QUIC protocol `domsync-admin/1` ([`crate::net::ALPN_ADMIN`]) on the node's endpoint,
//!   for admin certificates (`domsync://admin/<id>`) only.
//!
//! Requests: status, promote, switchover, writes (sent to the active; a standby answers
//! [`protocol::AdminError::NotActive`] naming the active and forwards nothing), the
//! collision archive (list, show, reapply, discard), domains added and removed at runtime
//! (kept in `<state_dir>/admin-domains.toml`, merged with the configuration file, which wins
//! on a name clash) and the placement plan of every configured domain.

pub mod protocol;
pub mod server;

pub use protocol::{AdminError, Answer, NodeStatus, Request};
pub use server::{AdminServer, AdminServerError};
