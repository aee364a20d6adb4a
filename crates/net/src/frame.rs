//! The one framing of every domsync stream (replication, gateway and admin, over QUIC or the
//! local admin socket): each message is one checked frame of [`domsync_proto::codec`] —
//! version, `u32` length, postcard payload, CRC32. The length is checked against a cap before
//! anything is allocated, and the buffer grows only with bytes that actually arrive; a bad
//! frame ends the stream with a typed [`FrameError`], never a panic.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use domsync_net::{read_message, write_message};
//! let mut wire = Vec::new();
//! write_message(&mut wire, &("hello", 7u32), 1024).await?;
//! let back: Option<(String, u32)> = read_message(&mut wire.as_slice(), 1024).await?;
//! assert_eq!(back, Some(("hello".to_string(), 7)));
//! # Ok(())
//! # }
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use domsync_proto::codec::{self, CodecError, FRAME_HEADER};

/// Most bytes read into the frame per step; larger frames grow as their bytes arrive.
const READ_STEP: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent bytes that are not a valid frame (or a message was too large to send).
    #[error("bad frame: {0}")]
    Codec(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended in the middle of a frame")]
    Truncated,
    /// The stream failed (connection lost, reset by the peer, refused).
    #[error("stream failed: {0}")]
    Stream(String),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        FrameError::Stream(e.to_string())
    }
}

/// Writes one already encoded frame and flushes it.
///
/// # Errors
/// [`FrameError::Stream`] when the stream is gone.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame's bytes (checked by the caller's decoder, see [`open_frame`]). `Ok(None)`
/// when the peer finished the stream cleanly between frames.
///
/// # Errors
/// [`FrameError::Codec`] for an unknown version or a length above `cap` (checked before
/// allocating), [`FrameError::Truncated`], or [`FrameError::Stream`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    cap: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => got += n,
        }
    }
    let total = codec::frame_len(&header, cap)?;
    // The buffer grows with the bytes that actually arrive (bounded by flow control), not
    // with what the header claims: a peer cannot make us reserve the cap for free.
    let mut frame = Vec::with_capacity(total.min(READ_STEP));
    frame.extend_from_slice(&header);
    while frame.len() < total {
        let start = frame.len();
        let want = (total - start).min(READ_STEP);
        frame.resize(start + want, 0);
        match r.read(&mut frame[start..]).await? {
            0 => return Err(FrameError::Truncated),
            n => frame.truncate(start + n),
        }
    }
    Ok(Some(frame))
}

/// Checks a frame read by [`read_frame`] (CRC, payload) and decodes it.
///
/// # Errors
/// [`FrameError::Codec`].
pub fn open_frame<T: DeserializeOwned>(frame: &[u8], cap: usize) -> Result<T, FrameError> {
    Ok(codec::open(frame, cap)?)
}

/// Encodes `message` as a checked frame of at most `cap` payload bytes and writes it.
///
/// # Errors
/// [`FrameError::Codec`] when the message is too large, [`FrameError::Stream`].
pub async fn write_message<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    message: &T,
    cap: usize,
) -> Result<(), FrameError> {
    let frame = codec::seal(message, cap)?;
    write_frame(w, &frame).await
}

/// Reads and decodes one message; `Ok(None)` when the peer closed cleanly between frames.
///
/// # Errors
/// [`FrameError`].
pub async fn read_message<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    cap: usize,
) -> Result<Option<T>, FrameError> {
    match read_frame(r, cap).await? {
        Some(frame) => open_frame(&frame, cap).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let msg = (String::from("key"), vec![7u8; 100_000]);
        let cap = 1 << 20;
        let mut buf = Vec::new();
        write_message(&mut buf, &msg, cap).await.unwrap();
        let back: Option<(String, Vec<u8>)> = read_message(&mut buf.as_slice(), cap).await.unwrap();
        assert_eq!(back, Some(msg));
        // Too large a length is refused from the header alone.
        let mut huge = vec![codec::FORMAT_VERSION];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_frame(&mut huge.as_slice(), cap).await,
            Err(FrameError::Codec(CodecError::TooLarge { .. }))
        ));
        // A flipped bit fails the CRC; a cut frame is truncated; nothing is a clean end.
        let mut bad = buf.clone();
        bad[6] ^= 1;
        assert!(matches!(
            read_message::<_, (String, Vec<u8>)>(&mut bad.as_slice(), cap).await,
            Err(FrameError::Codec(_))
        ));
        assert!(matches!(
            read_frame(&mut &buf[..buf.len() - 1], cap).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(read_frame(&mut &[][..], cap).await, Ok(None)));
    }
}
