//! The shared vocabulary of domsync (DESIGN.md section 2): identifiers, epochs, log
//! sequence numbers, positions, roles, operations and change-log records.
//!
//! Everything here is plain data: no I/O, no locks. Every other layer speaks in these types.

mod crl;
mod digest;
mod heard;
mod ids;
mod name;
mod op;
mod position;
mod record;
mod snapshot;

pub use crl::{utc, Crl, CrlError, CrlNumber, HeldCrl, IssuerCert, MAX_ISSUER_CERT_BYTES};
pub use digest::{DigestTable, StateDigest};
pub use heard::Heard;
pub use ids::{DomainId, DomainUid, NameError, NodeId};
pub use name::{DistinguishedName, IssuerKey, NameDerError, MAX_NAME_BYTES};
pub use op::{
    check_policy_name, Op, PolicyInfo, MAX_CRL_BYTES, MAX_KEY_BYTES, MAX_POLICY_BYTES,
    MAX_POLICY_NAME,
};
pub use position::{Epoch, HistoryEntry, Lsn, Position, Role, Version};
pub use record::Record;
pub use snapshot::{Policy, SnapshotItem};
