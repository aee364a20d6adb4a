//! Frames on QUIC streams: each message is one checked frame (see [`crate::codec`]): version,
//! `u32` length, payload, CRC32. The length is checked against a cap before anything is
//! allocated; a bad frame ends the stream with a typed error, never a panic.

use crate::codec::{self, CodecError, FRAME_HEADER};

/// Buffer reserved up front for a frame; larger frames grow as their bytes arrive.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame from the peer: {0}")]
    Codec(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    /// The stream failed (connection lost, reset by the peer, refused).
    #[error("stream failed: {0}")]
    Stream(String),
}

/// Writes one already encoded frame.
///
/// # Errors
/// [`FrameError::Stream`] when the stream is gone.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), FrameError> {
    send.write_all(frame)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}

/// Reads one frame's bytes (checked by the caller's decoder). `Ok(None)` when the peer
/// finished the stream cleanly between frames.
///
/// # Errors
/// [`FrameError::Codec`] for an unknown version or a length above `cap` (checked before
/// allocating), [`FrameError::Truncated`], or [`FrameError::Stream`].
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    cap: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match recv.read(&mut header[got..]).await {
            Ok(Some(n)) => got += n,
            Ok(None) if got == 0 => return Ok(None),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    let total = codec::frame_len(&header, cap)?;
    // The buffer grows with the bytes that actually arrive (bounded by flow control), not
    // with what the header claims: a peer cannot make us reserve the cap for free.
    let mut frame = Vec::with_capacity(total.min(INITIAL_CAPACITY));
    frame.extend_from_slice(&header);
    while frame.len() < total {
        match recv.read_chunk(total - frame.len(), true).await {
            Ok(Some(chunk)) => frame.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated),
            Err(e) => return Err(FrameError::Stream(e.to_string())),
        }
    }
    Ok(Some(frame))
}

/// Checks a frame read by [`read_frame`] (CRC, payload) and decodes it.
///
/// # Errors
/// [`FrameError::Codec`].
pub fn open_frame<T: serde::de::DeserializeOwned>(
    frame: &[u8],
    cap: usize,
) -> Result<T, FrameError> {
    Ok(codec::open(frame, cap)?)
}
