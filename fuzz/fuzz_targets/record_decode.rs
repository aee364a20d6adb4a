//! Record decoding on arbitrary bytes: it must never panic, and whatever it accepts must
//! re-encode to a frame that decodes to the same record.
//!
//! The input is tried twice: as a whole frame (exercises the header, length and CRC checks),
//! and as the payload of a frame with a correct header and CRC, so that the postcard decoding
//! behind the CRC is reached too (random bytes almost never carry a valid CRC).

#![no_main]

use domsync_proto::codec::{chain_next, decode_record, encode_record, FORMAT_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Ok(len) = u32::try_from(data.len()) {
        let mut framed = vec![FORMAT_VERSION];
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(data);
        // chain_next from 0 is the plain CRC32 of the bytes, as the frame trailer uses.
        let crc = chain_next(0, &framed);
        framed.extend_from_slice(&crc.to_le_bytes());
        check(&framed);
    }
});

fn check(bytes: &[u8]) {
    if let Ok(record) = decode_record(bytes) {
        let again = encode_record(&record).expect("a decoded record encodes");
        let back = decode_record(&again).expect("a re-encoded record decodes");
        assert_eq!(back, record, "round trip changed the record");
    }
}
