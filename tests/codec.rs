//! Record codec through the public API: exact round trips, detection of flipped, truncated and
//! extended frames, the size cap, the chain, and the golden / bad byte fixtures in
//! `fixtures/records/` (see its README; `DOMSYNC_BLESS=1` rewrites them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::Once;

use domsync_proto::codec::{
    chain_next, decode_record, encode_record, seal, CodecError, FORMAT_VERSION, FRAME_OVERHEAD,
    MAX_RECORD_BYTES,
};
use domsync_proto::model::{Crl, CrlNumber, Epoch, HeldCrl, IssuerCert, Lsn, NodeId, Op, Record};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const CRL_1: &[u8] = include_bytes!("../fixtures/crl/fixture-ca-1.der");
const CRL_2: &[u8] = include_bytes!("../fixtures/crl/fixture-ca-2.der");

// ---- allocation counting: lets tests assert that a refusal allocates nothing ----

/// The system allocator, counting the bytes each thread asks for.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the counter is a const-initialised
// thread local without destructor, so touching it never allocates or recurses.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the bytes it allocated on this thread.
fn allocated_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

// ---- helpers ----

fn node(name: &str) -> NodeId {
    NodeId::new(name).expect("valid node name")
}

/// A fixture CRL as an earlier release stored it (`Op::PutLegacyCrl`): the issuer as
/// x509-parser's display text.
fn crl(der: &[u8]) -> Crl {
    use x509_parser::prelude::FromDer as _;
    let held = HeldCrl::from_der(der).expect("fixture CRL parses");
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    Crl {
        issuer: parsed.issuer().to_string(),
        number: held.number,
        this_update: held.this_update,
        next_update: held.next_update,
        der: der.to_vec(),
    }
}

/// A fixture CRL as this release holds it.
fn held(der: &[u8]) -> HeldCrl {
    let mut crl = HeldCrl::from_der(der).expect("fixture CRL parses");
    crl.verified_by = Some([0x5a; 32]);
    crl
}

fn epoch(term: u64) -> Epoch {
    let node = node("node-a");
    Epoch { term, node }
}

fn record(term: u64, lsn: u64, ops: Vec<Op>) -> Record {
    Record {
        epoch: epoch(term),
        lsn: Lsn(lsn),
        time: 1_700_000_000_000_000,
        prev_chain: 0x1234_5678,
        ops,
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
}

fn del(key: &str) -> Op {
    let key = key.as_bytes().to_vec();
    Op::Delete { key }
}

fn policy(content: Vec<u8>) -> Op {
    let name = "fw-rules.v1".into();
    Op::InstallPolicy { name, content }
}

/// `Err(kind)` when the bytes are refused.
fn decode_kind(bytes: &[u8]) -> Result<Record, &'static str> {
    decode_record(bytes).map_err(|e| e.kind())
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/records")
}

/// With `DOMSYNC_BLESS=1`, (re)writes every golden and bad fixture, once per test run, before
/// either fixture test reads them (`cases.txt` is written by hand).
fn bless_once() {
    static BLESS: Once = Once::new();
    if std::env::var("DOMSYNC_BLESS").as_deref() != Ok("1") {
        return;
    }
    BLESS.call_once(|| {
        let golden = golden()
            .into_iter()
            .map(|(n, r)| (format!("{n}.bin"), encode_record(&r)));
        let bad = bad_fixtures()
            .into_iter()
            .map(|(n, b)| (n.to_owned(), Ok(b)));
        for (name, bytes) in golden.chain(bad) {
            fs::write(fixtures_dir().join(name), bytes.unwrap()).unwrap();
        }
    });
}

/// A header declaring `len` payload bytes, followed by just 4 bytes.
fn header_only(len: u32) -> Vec<u8> {
    [&[FORMAT_VERSION][..], &len.to_le_bytes(), &[0; 4]].concat()
}

/// A frame around raw payload bytes with a correct length and CRC.
fn frame(version: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_le_bytes();
    let body = [&[version][..], &len, payload].concat();
    [&body[..], &crc32fast::hash(&body).to_le_bytes()].concat()
}

/// The kind a frame must be refused with once byte `i` of a valid frame of `valid_len` bytes
/// is changed, giving `bytes`: the version byte, the length field and the rest each have
/// their own check, and CRC32 catches every change of a single byte.
fn flip_kind(bytes: &[u8], i: usize, valid_len: usize) -> &'static str {
    match i {
        0 => "unknown-version",
        1..=4 => {
            let declared = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
            let actual = valid_len - FRAME_OVERHEAD;
            if declared > MAX_RECORD_BYTES {
                "too-large"
            } else if declared > actual {
                "truncated"
            } else {
                "trailing-bytes"
            }
        }
        _ => "checksum",
    }
}

/// Position of an op's variant; the exhaustive match makes a new variant fail to compile here
/// until the golden set below covers it.
fn variant(op: &Op) -> usize {
    match op {
        Op::Put { .. } => 0,
        Op::Delete { .. } => 1,
        Op::InstallPolicy { .. } => 2,
        Op::RemovePolicy { .. } => 3,
        Op::PutLegacyCrl(_) => 4,
        Op::RemoveLegacyCrl { .. } => 5,
        Op::AddIssuer(_) => 6,
        Op::RemoveIssuer { .. } => 7,
        Op::PutCrl { .. } => 8,
        Op::RemoveCrl { .. } => 9,
    }
}
const VARIANTS: usize = 10;

/// The golden records, each pinned byte for byte by `fixtures/records/<name>.bin`.
fn golden() -> Vec<(&'static str, Record)> {
    let issuer = crl(CRL_1).issuer;
    let multi = vec![put("a", ""), put("b", "2"), del("a"), policy(vec![7])];
    let multi = [multi, vec![Op::PutLegacyCrl(crl(CRL_2))]].concat();
    let issuer_cert = IssuerCert::from_der(&domsync_testkit::pki::fixture_crl_issuer()).unwrap();
    let name = issuer_cert.subject.clone();
    let all = [
        ("empty-ops", vec![]),
        ("put", vec![put("k", "v")]),
        ("delete", vec![del("k")]),
        ("install-policy", vec![policy((0u8..=255).collect())]),
        ("remove-policy", vec![Op::RemovePolicy { name: "p".into() }]),
        ("put-crl", vec![Op::PutLegacyCrl(crl(CRL_1))]),
        ("remove-crl", vec![Op::RemoveLegacyCrl { issuer }]),
        ("multi-op", multi),
        ("add-issuer", vec![Op::AddIssuer(issuer_cert.clone())]),
        (
            "remove-issuer",
            vec![Op::RemoveIssuer {
                subject: name.clone(),
                sha256: issuer_cert.sha256,
            }],
        ),
        (
            "put-verified-crl",
            vec![Op::PutCrl {
                crl: held(CRL_1),
                allow_stale: true,
            }],
        ),
        (
            "remove-verified-crl",
            vec![Op::RemoveCrl {
                issuer: name,
                number: held(CRL_1).number,
            }],
        ),
    ];
    let mut out: Vec<_> = (all.into_iter().zip(1..))
        .map(|((name, ops), lsn)| (name, record(1 + lsn / 4, lsn, ops)))
        .collect();
    // Largest integers (10-byte varints) and the longest node name.
    let mut max = record(u64::MAX, u64::MAX, vec![put("k", "v")]);
    (max.epoch.node, max.time, max.prev_chain) = (node(&"z".repeat(64)), u64::MAX, u32::MAX);
    out.push(("max-fields", max));
    out
}

/// The bad frames of `fixtures/records/`, each failing one check of the decoder.
fn bad_fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let good = encode_record(&record(1, 2, vec![put("k", "v")])).unwrap();
    let n = good.len();
    let mut flipped_crc = good.clone();
    flipped_crc[n - 1] ^= 0xff;
    let mut trailing = good.clone();
    trailing.push(0);
    // A record whose single op has variant tag 6, which does not exist.
    let unknown_op = seal(&(epoch(1), Lsn(2), 0u64, 0u32, 1u8, 6u8), MAX_RECORD_BYTES).unwrap();
    // A whole record and then one more byte inside the payload.
    let extra = seal(&(record(1, 2, vec![put("k", "v")]), 0u8), MAX_RECORD_BYTES).unwrap();
    vec![
        ("bad-flipped-crc.bin", flipped_crc),
        ("bad-truncated-header.bin", good[..3].to_vec()),
        ("bad-truncated-payload.bin", good[..n - 6].to_vec()),
        ("bad-version.bin", frame(2, &good[5..n - 4])),
        ("bad-too-large.bin", header_only(u32::MAX)),
        ("bad-trailing.bin", trailing),
        ("bad-payload.bin", unknown_op),
        ("bad-trailing-payload.bin", extra),
    ]
}

// ---- property tests ----

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    // Crl fields are public, so any combination can be encoded (the codec checks none).
    let any_crl = (
        "\\PC{0,20}",
        bytes(21),
        any::<(i64, Option<i64>)>(),
        bytes(64),
    )
        .prop_map(|(issuer, n, (this_update, next_update), der)| Crl {
            issuer,
            number: CrlNumber(n),
            this_update,
            next_update,
            der,
        });
    let crl = prop_oneof![Just(crl(CRL_1)), Just(crl(CRL_2)), any_crl];
    prop_oneof![
        (bytes(16), bytes(32)).prop_map(|(key, value)| Op::Put { key, value }),
        bytes(16).prop_map(|key| Op::Delete { key }),
        ("\\PC{0,12}", bytes(64)).prop_map(|(name, content)| Op::InstallPolicy { name, content }),
        "\\PC{0,12}".prop_map(|name| Op::RemovePolicy { name }),
        crl.prop_map(Op::PutLegacyCrl),
        "\\PC{0,20}".prop_map(|issuer| Op::RemoveLegacyCrl { issuer }),
        (any::<bool>(), any::<bool>()).prop_map(|(second, allow_stale)| Op::PutCrl {
            crl: held(if second { CRL_2 } else { CRL_1 }),
            allow_stale,
        }),
        bytes(21).prop_map(|n| Op::RemoveCrl {
            issuer: held(CRL_1).issuer,
            number: CrlNumber(n),
        }),
    ]
}

fn record_strategy() -> impl Strategy<Value = Record> {
    let epoch = (any::<u64>(), "[a-z0-9][a-z0-9._-]{0,15}").prop_map(|(term, name)| Epoch {
        term,
        node: node(&name),
    });
    let fields = (any::<u64>(), any::<u64>(), any::<u32>());
    (epoch, fields, vec(op_strategy(), 0..8)).prop_map(|(epoch, (lsn, time, prev_chain), ops)| {
        Record {
            epoch,
            lsn: Lsn(lsn),
            time,
            prev_chain,
            ops,
        }
    })
}

proptest! {
    #[test]
    fn round_trip_is_exact_and_encoding_deterministic(rec in record_strategy()) {
        let bytes = encode_record(&rec).unwrap();
        prop_assert_eq!(&bytes, &encode_record(&rec.clone()).unwrap());
        prop_assert_eq!(bytes[0], FORMAT_VERSION);
        let declared = u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
        prop_assert_eq!(declared + FRAME_OVERHEAD, bytes.len());
        prop_assert_eq!(decode_record(&bytes).unwrap(), rec);
    }

    #[test]
    fn a_flipped_byte_is_detected(rec in record_strategy(), at in any::<Index>(), xor in 1u8..) {
        let mut bytes = encode_record(&rec).unwrap();
        let (len, i) = (bytes.len(), at.index(bytes.len()));
        bytes[i] ^= xor;
        let err = decode_record(&bytes).unwrap_err();
        prop_assert_eq!(err.kind(), flip_kind(&bytes, i, len));
    }

    #[test]
    fn appended_bytes_are_refused(rec in record_strategy(), extra in vec(any::<u8>(), 1..16)) {
        let mut bytes = encode_record(&rec).unwrap();
        bytes.extend_from_slice(&extra);
        let err = decode_record(&bytes).unwrap_err();
        prop_assert_eq!(err, CodecError::TrailingBytes { extra: extra.len() });
    }
}

// ---- exhaustive corruption of the golden records ----

#[test]
fn every_single_byte_flip_and_truncation_of_golden_records_is_detected() {
    for (name, rec) in golden() {
        let good = encode_record(&rec).unwrap();
        for i in 0..good.len() {
            for xor in [0x01, 0x80, 0xff] {
                let mut bytes = good.clone();
                bytes[i] ^= xor;
                let expected = Err(flip_kind(&bytes, i, good.len()));
                assert_eq!(
                    decode_kind(&bytes),
                    expected,
                    "{name}: byte {i} ^ {xor:#04x}"
                );
            }
            let truncated = decode_kind(&good[..i]);
            assert_eq!(truncated, Err("truncated"), "{name}: first {i} bytes");
        }
    }
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    // The counter sees allocations made by the closure.
    assert!(allocated_during(|| std::hint::black_box(vec![0u8; 64])).1 >= 64);
    let cap = u32::try_from(MAX_RECORD_BYTES).unwrap();
    // At the cap the length is accepted and the frame is short of bytes instead.
    for (declared, kind) in [
        (u32::MAX, "too-large"),
        (cap + 1, "too-large"),
        (cap, "truncated"),
    ] {
        let bytes = header_only(declared);
        let (result, allocated) = allocated_during(|| decode_kind(&bytes));
        assert_eq!(result, Err(kind), "length {declared}");
        assert_eq!(allocated, 0, "length {declared}: refused after allocating");
    }
}

#[test]
fn a_huge_op_count_in_a_small_frame_does_not_preallocate() {
    // Valid frame and CRC; the payload claims 2^28 ops but holds none.
    let mut payload = postcard::to_allocvec(&(epoch(1), Lsn(1), 0u64, 0u32)).unwrap();
    payload.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]); // varint 2^28
    let bytes = frame(FORMAT_VERSION, &payload);
    let (result, allocated) = allocated_during(|| decode_kind(&bytes));
    assert_eq!(result, Err("payload"));
    assert!(
        allocated < 1024,
        "{allocated} bytes allocated for a {}-byte frame",
        bytes.len()
    );
}

// ---- chain ----

#[test]
fn chain_is_crc32_continued_from_the_previous_chain() {
    // Standard CRC-32 (ISO-HDLC) over the frame without its CRC trailer: pinned because
    // stored positions hold chains that nodes compare.
    assert_eq!(chain_next(0, b"123456789\0\0\0\0"), 0xCBF4_3926);
    for (name, rec) in golden() {
        let bytes = encode_record(&rec).unwrap();
        assert_ne!(chain_next(1, &bytes), chain_next(2, &bytes), "{name}");
    }
}

/// Two histories that differ must end on different chains, whether the records differ or
/// only their order does.
#[test]
fn chain_differs_for_different_records_and_order() {
    let a = encode_record(&record(1, 2, vec![put("k", "a")])).unwrap();
    let b = encode_record(&record(1, 2, vec![put("k", "b")])).unwrap();
    for prev in [0, 0x5555_5555] {
        assert_ne!(
            chain_next(prev, &a),
            chain_next(prev, &b),
            "records not told apart"
        );
        let ab = chain_next(chain_next(prev, &a), &b);
        assert_ne!(
            ab,
            chain_next(chain_next(prev, &b), &a),
            "order not told apart"
        );
    }
}

// ---- fixtures ----

#[test]
fn golden_vectors_match_fixtures() {
    bless_once();
    let mut covered = HashSet::new();
    for (name, rec) in golden() {
        covered.extend(rec.ops.iter().map(variant));
        let bytes = encode_record(&rec).unwrap();
        let path = fixtures_dir().join(format!("{name}.bin"));
        let stored = fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (DOMSYNC_BLESS=1 writes it)", path.display()));
        assert!(
            stored == bytes,
            "{name}: encoding differs from {}",
            path.display()
        );
        assert_eq!(decode_record(&stored).unwrap(), rec, "{name}");
    }
    assert_eq!(
        covered.len(),
        VARIANTS,
        "golden records must cover every Op variant"
    );
}

#[test]
fn bad_fixtures_fail_with_the_listed_kind() {
    bless_once();
    let dir = fixtures_dir();
    let cases = fs::read_to_string(dir.join("cases.txt")).unwrap();
    let mut listed = HashSet::new();
    for line in cases.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let [file, expected] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("cases.txt: expected `file kind`, got {line:?}");
        };
        let bytes = fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        match decode_kind(&bytes) {
            Ok(_) if expected == "ok" => {}
            Err(kind) if kind == expected => {}
            got => panic!("{file}: expected {expected}, got {got:?}"),
        }
        listed.insert(file.to_owned());
    }
    for (name, _) in bad_fixtures() {
        assert!(listed.contains(name), "{name} is not listed in cases.txt");
    }
}
