//! The protocol core of domsync: everything two parties must agree on, and every decision that
//! does not need I/O. Nothing here touches tokio, quinn or redb; the other crates execute what
//! this one decides.
//!
//! - [`model`]: the vocabulary (domains, nodes, epochs, positions, records, operations, the
//!   content digest, snapshot rows);
//! - [`codec`]: checked byte formats (frames, record encoding, the CRC chain);
//! - [`repl`]: replication and the role protocol, as sans-IO state machines with an explicit
//!   `now`: the active's `Shipper`, the standby's `Follower`, durability, and `repl::roles`
//!   (promotion with its guard and fencing rounds, switchover, hand-over, step-down), with
//!   authorization of every peer request against the local configuration;
//! - [`gateway`]: the messages gateways exchange with any replica (policy packages, CRLs);
//! - [`admin`]: the messages of `domsync` to a running `domsyncd`.
//!
//! Every wire message is pinned by golden vectors (`fixtures/wire/` in the repository).
//!
//! ```
//! use domsync_proto::codec::{decode_record, encode_record};
//! use domsync_proto::model::{Epoch, Lsn, NodeId, Op, Record};
//!
//! let record = Record {
//!     epoch: Epoch { term: 1, node: NodeId::new("a")? },
//!     lsn: Lsn(1),
//!     time: 0,
//!     prev_chain: 0,
//!     ops: vec![Op::Put { key: b"ntp/server".to_vec(), value: b"10.0.0.1".to_vec() }],
//! };
//! assert_eq!(decode_record(&encode_record(&record)?)?, record);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod codec;
pub mod gateway;
pub mod model;
pub mod repl;
