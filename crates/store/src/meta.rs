//! The metadata row of a domain: identity, role, epoch, history, position, retention, digest.

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use domsync_proto::codec;
use domsync_proto::model::StateDigest;
use domsync_proto::model::{DomainId, DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Position, Role};

/// Cap on the encoded metadata row.
const MAX_META_BYTES: usize = 4 * 1024 * 1024;

/// Everything a domain database knows about itself. Stored as one checked frame in the `meta`
/// table and rewritten in every commit, atomically with the data and the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DomainMeta {
    pub domain: DomainId,
    /// `None` until a standby has received its first snapshot.
    pub uid: Option<DomainUid>,
    pub role: Role,
    /// The highest epoch this replica has seen.
    pub epoch: Epoch,
    pub history: Vec<HistoryEntry>,
    pub position: Position,
    /// First lsn still held in the log; `position.lsn + 1` when the log is empty.
    pub log_start: Lsn,
    /// Chain of the position just before `log_start`.
    pub log_base_chain: u32,
    pub digest: StateDigest,
    /// Bytes of the records held in the log.
    pub log_bytes: u64,
}

impl DomainMeta {
    /// A new domain, active on its primary in epoch `(1, primary)`.
    pub fn new_active(domain: DomainId, primary: NodeId, uid: DomainUid) -> Self {
        let epoch = Epoch {
            term: 1,
            node: primary.clone(),
        };
        DomainMeta {
            domain,
            uid: Some(uid),
            role: Role::Active,
            history: vec![HistoryEntry {
                epoch: epoch.clone(),
                first_lsn: Lsn(1),
            }],
            epoch,
            position: Position::empty(primary),
            log_start: Lsn(1),
            log_base_chain: 0,
            digest: StateDigest::default(),
            log_bytes: 0,
        }
    }

    /// An empty standby replica that has never synchronized.
    pub fn new_standby(domain: DomainId, node: NodeId) -> Self {
        DomainMeta {
            domain,
            uid: None,
            role: Role::Standby,
            epoch: Epoch {
                term: 0,
                node: node.clone(),
            },
            history: Vec::new(),
            position: Position::empty(node),
            log_start: Lsn(1),
            log_base_chain: 0,
            digest: StateDigest::default(),
            log_bytes: 0,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        codec::seal(self, MAX_META_BYTES).map_err(|e| StoreError::Corrupt {
            domain: self.domain.clone(),
            what: format!("metadata cannot be encoded: {e}"),
        })
    }

    pub fn decode(domain: &DomainId, bytes: &[u8]) -> Result<Self, StoreError> {
        let meta: DomainMeta =
            codec::open(bytes, MAX_META_BYTES).map_err(|e| StoreError::Corrupt {
                domain: domain.clone(),
                what: format!("metadata row: {e}"),
            })?;
        if &meta.domain != domain {
            return Err(StoreError::Corrupt {
                domain: domain.clone(),
                what: format!("metadata names domain {}", meta.domain),
            });
        }
        Ok(meta)
    }

    /// Records that `epoch` wrote from `lsn` on, unless it already is the last history entry.
    pub fn note_epoch(&mut self, epoch: &Epoch, lsn: Lsn) {
        if self.history.last().map(|h| &h.epoch) != Some(epoch) {
            self.history.push(HistoryEntry {
                epoch: epoch.clone(),
                first_lsn: lsn,
            });
        }
        if *epoch > self.epoch {
            self.epoch = epoch.clone();
        }
    }

    /// The active this replica knows of, when it is not itself.
    pub fn known_active(&self, me: &NodeId) -> Option<NodeId> {
        (self.epoch.term > 0 && &self.epoch.node != me).then(|| self.epoch.node.clone())
    }
}
