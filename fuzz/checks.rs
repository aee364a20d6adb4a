//! The checks the fuzz targets run, shared with the stable test `tests/fuzz_corpus.rs`, which
//! replays every committed corpus file through them: whatever a decoder accepts must encode
//! again and decode back to the same value, and nothing may panic.

// Each target and the stable test use only some of these.
#![allow(dead_code)]

use domsync_proto::codec::{self, chain_next, FORMAT_VERSION};

/// `bytes` as given, and as the payload of a frame with a correct header and CRC (random bytes
/// almost never carry a valid CRC, so this reaches the postcard decoding behind it).
pub fn framings(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![bytes.to_vec()];
    if let Ok(len) = u32::try_from(bytes.len()) {
        let mut framed = vec![FORMAT_VERSION];
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(bytes);
        let crc = chain_next(0, &framed);
        framed.extend_from_slice(&crc.to_le_bytes());
        out.push(framed);
    }
    out
}

fn round_trip<T>(frame: &[u8], cap: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = codec::open::<T>(frame, cap) {
        // A value decoded from at most `cap` bytes may re-encode longer (postcard accepts
        // over-long varints): only a successful re-encoding must decode back.
        if let Ok(again) = codec::seal(&message, cap) {
            let back: T = codec::open(&again, cap).expect("a re-encoded message decodes");
            assert_eq!(back, message, "round trip changed the message");
        }
    }
}

/// Every wire message of every ALPN, framed as on the wire: replication (`domsync-repl/1`),
/// gateway (`domsync-gw/1`) requests and answers, admin (`domsync-admin/1`) requests and
/// answers.
pub fn wire(bytes: &[u8]) {
    use domsync_proto::{admin, app, gateway, repl};
    for frame in framings(bytes) {
        round_trip::<repl::Message>(&frame, repl::MAX_MESSAGE_BYTES);
        round_trip::<gateway::Request>(&frame, gateway::MAX_REQUEST_BYTES);
        round_trip::<gateway::Response>(&frame, gateway::MAX_RESPONSE_BYTES);
        round_trip::<admin::Request>(&frame, admin::MAX_REQUEST_BYTES);
        round_trip::<admin::Answer>(&frame, admin::MAX_ANSWER_BYTES);
        round_trip::<app::Request>(&frame, app::MAX_REQUEST_BYTES);
        round_trip::<app::Answer>(&frame, app::MAX_ANSWER_BYTES);
    }
}

/// The daemon's configuration parser on arbitrary text: a typed error or a configuration,
/// never a panic; an accepted configuration names its node and every problem list is
/// non-empty.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match domsync_daemon::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        Ok(c) => assert!(!c.node.id.as_str().is_empty()),
        Err(domsync_daemon::ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty());
        }
        Err(_) => {}
    }
}

/// CRL and issuer ingestion on arbitrary DER: a typed error, or a parsed CRL that keeps its
/// bytes and names its issuer in RFC 4514 text; verifying it against any parsed issuer
/// certificate gives a typed answer, never a panic.
pub fn crl(bytes: &[u8]) {
    if let Ok(c) = domsync_proto::model::HeldCrl::from_der(bytes) {
        assert_eq!(c.der, bytes, "a parsed CRL keeps the bytes as uploaded");
        assert!(!c.issuer.to_string().is_empty());
        assert_eq!(
            domsync_proto::model::DistinguishedName::from_der(c.issuer.der()).as_ref(),
            Ok(&c.issuer)
        );
    }
    if let Ok(cert) = domsync_proto::model::IssuerCert::from_der(bytes) {
        assert_eq!(cert.der, bytes);
        let _ = cert.subject.to_string();
    }
    let _ = domsync_proto::model::DistinguishedName::from_der(bytes).map(|n| n.to_string());
}
