//! Decoding errors.

/// Bytes that do not decode as a checked frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the header or the declared length needs.
    #[error("truncated frame: {got} bytes where {needed} are needed")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The format version byte is not one this build reads.
    #[error("unknown format version {version}: written by a newer domsync? upgrade this node")]
    UnknownVersion {
        /// The version found.
        version: u8,
    },
    /// The declared payload length is over the cap.
    #[error("frame declares {len} payload bytes, over the limit of {cap}")]
    TooLarge {
        /// Declared (or actual, when encoding) payload length.
        len: u64,
        /// The cap.
        cap: u64,
    },
    /// Bytes follow the end of the frame.
    #[error("{extra} unexpected bytes after the end of the frame")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The CRC32 does not match the bytes.
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}")]
    Checksum {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the bytes.
        computed: u32,
    },
    /// The checksum holds but the payload does not decode.
    #[error("payload does not decode: {reason}")]
    Payload {
        /// What postcard reported.
        reason: String,
    },
    /// The payload decoded but left bytes over.
    #[error("payload has {extra} bytes left over after decoding")]
    TrailingPayload {
        /// How many.
        extra: usize,
    },
}

impl CodecError {
    /// A stable short name of the error kind, as used in `fixtures/`.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::Truncated { .. } => "truncated",
            CodecError::UnknownVersion { .. } => "unknown-version",
            CodecError::TooLarge { .. } => "too-large",
            CodecError::TrailingBytes { .. } => "trailing-bytes",
            CodecError::Checksum { .. } => "checksum",
            CodecError::Payload { .. } => "payload",
            CodecError::TrailingPayload { .. } => "trailing-payload",
        }
    }
}
