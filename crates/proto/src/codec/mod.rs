//! Byte formats: checked frames (format version, length, postcard payload, CRC32) and the
//! change-log record encoding built on them.
//!
//! A frame is laid out as:
//!
//! | offset      | size | content                                           |
//! |-------------|------|---------------------------------------------------|
//! | 0           | 1    | format version (`1`)                              |
//! | 1           | 4    | payload length `n`, little endian                 |
//! | 5           | n    | postcard payload                                  |
//! | 5 + n       | 4    | CRC32 (crc32fast) of bytes `0 .. 5 + n`, LE       |
//!
//! Decoding checks, in order: header present, version known, length under the cap (before any
//! allocation), total size exact (no trailing bytes), CRC, then the payload decodes with no
//! bytes left over. The encodings are pinned by golden vectors in `fixtures/`.

mod error;
mod frame;

pub use error::CodecError;
pub use frame::{frame_len, open, seal, FORMAT_VERSION, FRAME_HEADER, FRAME_OVERHEAD};

use crate::model::Record;

/// Largest encoded record payload: a full-size policy package plus room for its envelope.
pub const MAX_RECORD_BYTES: usize = crate::model::MAX_POLICY_BYTES + 1024 * 1024;

/// Encodes a record as a checked frame.
///
/// ```
/// use domsync_proto::codec::{decode_record, encode_record};
/// use domsync_proto::model::{Epoch, Lsn, NodeId, Op, Record};
/// let rec = Record {
///     epoch: Epoch { term: 1, node: NodeId::new("a")? },
///     lsn: Lsn(1),
///     time: 0,
///     prev_chain: 0,
///     ops: vec![Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }],
/// };
/// let bytes = encode_record(&rec)?;
/// assert_eq!(decode_record(&bytes)?, rec);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`CodecError::TooLarge`] when the payload exceeds [`MAX_RECORD_BYTES`].
pub fn encode_record(record: &Record) -> Result<Vec<u8>, CodecError> {
    seal(record, MAX_RECORD_BYTES)
}

/// Decodes and checks a record frame. Never panics and never allocates more than the frame
/// holds, whatever the input.
///
/// # Errors
/// A [`CodecError`] saying what is wrong with the bytes.
pub fn decode_record(bytes: &[u8]) -> Result<Record, CodecError> {
    open(bytes, MAX_RECORD_BYTES)
}

/// The chain after a record: CRC32 continued from the previous chain over the record's
/// encoded frame without its trailing CRC. (Continuing a CRC over a message followed by its
/// own CRC gives a constant residue, which would make the chain depend on lengths only.)
///
/// ```
/// use domsync_proto::codec::chain_next;
/// let one = chain_next(0, b"first record");
/// assert_ne!(chain_next(one, b"second"), chain_next(0, b"second"));
/// assert_ne!(chain_next(0, b"put k=a...."), chain_next(0, b"put k=b...."));
/// ```
pub fn chain_next(prev: u32, encoded_record: &[u8]) -> u32 {
    let body = encoded_record
        .len()
        .checked_sub(4)
        .map_or(encoded_record, |end| &encoded_record[..end]);
    let mut h = crc32fast::Hasher::new_with_initial(prev);
    h.update(body);
    h.finalize()
}

/// The leading fields of a record (epoch, lsn, commit time), read without checking the CRC or
/// decoding the ops: for bookkeeping on records whose full check comes later (the store checks
/// every record before applying it).
///
/// ```
/// use domsync_proto::codec::{encode_record, record_head};
/// use domsync_proto::model::{Epoch, Lsn, NodeId, Record};
/// let rec = Record {
///     epoch: Epoch { term: 2, node: NodeId::new("a")? },
///     lsn: Lsn(7), time: 42, prev_chain: 0, ops: vec![],
/// };
/// let head = record_head(&encode_record(&rec)?)?;
/// assert_eq!((head.lsn, head.time), (Lsn(7), 42));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`CodecError::Truncated`] or [`CodecError::Payload`] when the fields cannot be read.
pub fn record_head(bytes: &[u8]) -> Result<RecordHead, CodecError> {
    let payload = bytes.get(5..).ok_or(CodecError::Truncated {
        needed: 5,
        got: bytes.len(),
    })?;
    postcard::take_from_bytes::<RecordHead>(payload)
        .map(|(head, _)| head)
        .map_err(|e| CodecError::Payload {
            reason: e.to_string(),
        })
}

/// The leading fields of a [`Record`] (same order, so postcard reads them as a prefix).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecordHead {
    /// The epoch of the active that wrote it.
    pub epoch: crate::model::Epoch,
    /// Its lsn.
    pub lsn: crate::model::Lsn,
    /// Commit time on the active, microseconds since the Unix epoch.
    pub time: u64,
}
