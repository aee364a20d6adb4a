//! The checked frame: version, length, postcard payload, CRC32.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CodecError;

/// Format version written in byte 0 of every frame.
pub const FORMAT_VERSION: u8 = 1;
/// Header (version + length) plus trailer (CRC32) in bytes.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER + 4;
/// Bytes before the payload: version and `u32` length.
pub const FRAME_HEADER: usize = 5;
const HEADER: usize = FRAME_HEADER;

/// Checks a frame header read from a stream (version, then the length against `cap`) before
/// anything is allocated; returns the whole frame's length, header and trailer included.
///
/// # Errors
/// [`CodecError::UnknownVersion`] or [`CodecError::TooLarge`].
pub fn frame_len(header: &[u8; FRAME_HEADER], cap: usize) -> Result<usize, CodecError> {
    if header[0] != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { version: header[0] });
    }
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > cap {
        return Err(CodecError::TooLarge {
            len: len as u64,
            cap: cap as u64,
        });
    }
    Ok(FRAME_OVERHEAD + len)
}

/// Encodes `value` with postcard into a checked frame.
///
/// # Errors
/// [`CodecError::TooLarge`] when the payload is over `cap` bytes, [`CodecError::Payload`] when
/// the value cannot be serialized.
pub fn seal<T: Serialize>(value: &T, cap: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION, 0, 0, 0, 0];
    out = postcard::to_extend(value, out).map_err(|e| CodecError::Payload {
        reason: e.to_string(),
    })?;
    let len = out.len() - HEADER;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| (*l as usize) <= cap)
        .ok_or(CodecError::TooLarge {
            len: len as u64,
            cap: cap as u64,
        })?;
    out[1..HEADER].copy_from_slice(&len32.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks and decodes a frame made by [`seal`]. See the module docs for the order of checks.
///
/// # Errors
/// A [`CodecError`] naming the first check that failed.
pub fn open<T: DeserializeOwned>(bytes: &[u8], cap: usize) -> Result<T, CodecError> {
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(CodecError::Truncated {
            needed: FRAME_OVERHEAD,
            got: 0,
        });
    };
    if bytes.len() < FRAME_OVERHEAD {
        return Err(CodecError::Truncated {
            needed: FRAME_OVERHEAD,
            got: bytes.len(),
        });
    }
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { version });
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    if u64::from(len) > cap as u64 {
        return Err(CodecError::TooLarge {
            len: u64::from(len),
            cap: cap as u64,
        });
    }
    let total = FRAME_OVERHEAD + len as usize;
    if bytes.len() < total {
        return Err(CodecError::Truncated {
            needed: total,
            got: bytes.len(),
        });
    }
    if bytes.len() > total {
        return Err(CodecError::TrailingBytes {
            extra: bytes.len() - total,
        });
    }
    let (body, trailer) = bytes.split_at(total - 4);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    let (value, left) =
        postcard::take_from_bytes::<T>(&body[HEADER..]).map_err(|e| CodecError::Payload {
            reason: e.to_string(),
        })?;
    if !left.is_empty() {
        return Err(CodecError::TrailingPayload { extra: left.len() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let bytes = seal(&(7u8, "x".to_string()), 100).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(
            u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize,
            bytes.len() - 9
        );
        assert_eq!(
            open::<(u8, String)>(&bytes, 100).unwrap(),
            (7, "x".to_string())
        );
    }

    #[test]
    fn cap_is_checked_both_ways() {
        let big = vec![0u8; 50];
        assert!(matches!(seal(&big, 10), Err(CodecError::TooLarge { .. })));
        let bytes = seal(&big, 100).unwrap();
        assert!(matches!(
            open::<Vec<u8>>(&bytes, 10),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_declared_length_is_refused_before_allocating() {
        let mut bytes = vec![FORMAT_VERSION];
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        assert!(matches!(
            open::<Vec<u8>>(&bytes, 1 << 20),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn leftover_payload_is_refused() {
        // A frame whose payload holds a u8 and one extra byte: the CRC holds, decoding must not.
        let mut body = vec![FORMAT_VERSION, 2, 0, 0, 0, 5, 9];
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            open::<u8>(&body, 10),
            Err(CodecError::TrailingPayload { extra: 1 })
        );
    }
}
