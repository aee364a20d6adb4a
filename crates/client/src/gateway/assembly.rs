//! A package received in chunks: bounded by its announced size, verified against its size and
//! SHA-256 at the end.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::config::{Origin, Package};
use super::exchange::Fail;
use domsync_proto::gateway::Served;
use domsync_proto::model::{PolicyInfo, MAX_POLICY_BYTES};

/// A package being received: bounded by its announced size (itself at most
/// [`MAX_POLICY_BYTES`]), verified at the end.
pub(super) struct Assembly {
    served: Served,
    info: PolicyInfo,
    content: Vec<u8>,
}

impl Assembly {
    pub(super) fn begin(served: Served, info: PolicyInfo) -> Result<Assembly, Fail> {
        if info.size > MAX_POLICY_BYTES as u64 {
            return Err(Fail::Bad(format!(
                "package {} announced {} bytes, above the {MAX_POLICY_BYTES}-byte limit",
                info.name, info.size
            )));
        }
        // Fits: at most MAX_POLICY_BYTES.
        let size = info.size as usize;
        Ok(Assembly {
            served,
            content: Vec::with_capacity(size.min(4 * domsync_proto::gateway::CHUNK_BYTES)),
            info,
        })
    }

    pub(super) fn chunk(&mut self, piece: &[u8]) -> Result<(), Fail> {
        if (self.content.len() + piece.len()) as u64 > self.info.size {
            return Err(Fail::Bad(format!(
                "package {} sent more than its {} bytes",
                self.info.name, self.info.size
            )));
        }
        self.content.extend_from_slice(piece);
        Ok(())
    }

    pub(super) fn end(self) -> Result<Package, Fail> {
        if self.content.len() as u64 != self.info.size {
            return Err(Fail::Bad(format!(
                "package {} ended at {} of its {} bytes",
                self.info.name,
                self.content.len(),
                self.info.size
            )));
        }
        if <[u8; 32]>::from(Sha256::digest(&self.content)) != self.info.sha256 {
            return Err(Fail::Bad(format!(
                "package {} {} does not match its SHA-256",
                self.info.name,
                self.info.stamp()
            )));
        }
        Ok(Package {
            info: self.info,
            content: Arc::new(self.content),
            served: self.served,
            origin: Origin::Fetched,
        })
    }
}
