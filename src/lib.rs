//! domsync keeps the configuration of many isolated **domains** in a local ACID store (one
//! redb database per domain) and records every committed transaction as a checksummed,
//! chained **change-log record**: the unit that standbys apply and gateways' reads come from.
//!
//! Layers (DESIGN.md §3), each using only those before it:
//! - [`model`]: the vocabulary (domains, nodes, epochs, positions, records, ops);
//! - [`codec`]: checked byte formats (record frames, CRC chain);
//! - [`store`]: redb, group commit, standby apply, log reading, verify, snapshots, the
//!   collision archive;
//! - [`repl`]: sans-IO state machines with an explicit `now`: the active's `Shipper`, the
//!   standby's `Follower`, durability, and the role protocol (`repl::roles::Roles`:
//!   promotion with its guard and fencing rounds, switchover, hand-over, step-down), with
//!   authorization of every peer request against the local configuration;
//! - [`net`]: QUIC and mutual TLS (identities, deployment PKI, framing);
//! - [`node`]: the async glue that executes what `repl` decides, over `net` and `store`;
//! - [`gateway`]: the gateway service's protocol and the client gateways embed;
//! - [`admin`], [`daemon`]: administration and the `domsyncd` service.
//!
//! The binaries are `domsyncd` (the service under systemd) and `domsync` (the command).
//!
//! # Example: an active and a standby replica of one domain
//!
//! ```
//! use domsync::model::{Lsn, NodeId, Op};
//! use domsync::store::{Store, StoreError, StoreOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let active_node = Store::open(dir.path().join("a"), StoreOptions::new(NodeId::new("a")?))?;
//! let standby_node = Store::open(dir.path().join("b"), StoreOptions::new(NodeId::new("b")?))?;
//!
//! // The primary creates the domain: active in epoch (1, a), with a fresh uid.
//! let tenant = "tenant-1".parse()?;
//! let active = active_node.create_domain(&tenant)?;
//! let standby = standby_node.join_domain(&tenant)?;
//!
//! // Writes are durable (fsynced) when they return; each is one record with its own lsn.
//! let mut commits = active.subscribe();
//! active.put("ntp/server", "10.0.0.1")?;
//! active.write(vec![
//!     Op::Put { key: b"log/level".to_vec(), value: b"info".to_vec() },
//!     Op::InstallPolicy { name: "edge".into(), content: b"allow 443".to_vec() },
//! ])?;
//! assert_eq!(commits.borrow_and_update().lsn, Lsn(2));
//!
//! // The standby is read-only and applies the active's records in order.
//! assert!(matches!(standby.put("x", "y"), Err(StoreError::NotActive { .. })));
//! for entry in active.read_log(Lsn(1), 100, 1 << 20)? {
//!     standby.apply(&entry.bytes)?;
//! }
//!
//! // Every read reports the position it was served at; same lsn, same content digest.
//! let read = standby.policy("edge")?;
//! assert_eq!(read.value.map(|p| p.info.version), Some(2));
//! assert_eq!(read.position, active.status()?.position);
//! assert_eq!(standby.status()?.digest, active.status()?.digest);
//! assert!(standby.verify()?.is_clean());
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
pub mod codec;
pub mod daemon;
pub mod gateway;
pub mod model;
pub mod net;
pub mod node;
pub mod repl;
pub mod store;
