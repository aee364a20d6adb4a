//! Micro-benchmarks of the layers under replication: record encoding and decoding (`codec`),
//! a standby applying a shipped record durably (`apply`), and a snapshot read and cut into
//! 256 KiB `SnapshotRows` messages as the active ships it (`snapshot_chunking`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use domsync_proto::codec::{decode_record, encode_record};
use domsync_proto::model::SnapshotItem;
use domsync_proto::model::{DomainId, Epoch, Lsn, NodeId, Op, Record};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::Message;
use domsync_store::{Domain, ResyncTarget, Store, StoreError, StoreOptions};

/// Chunk size of the node's snapshot stream (its default `snapshot_chunk_bytes`).
const CHUNK_BYTES: usize = 256 * 1024;

fn record(value_len: usize) -> Record {
    Record {
        epoch: Epoch {
            term: 1,
            node: NodeId::new("a").expect("node id"),
        },
        lsn: Lsn(42),
        time: 1_700_000_000_000_000,
        prev_chain: 0x1234_5678,
        ops: vec![Op::Put {
            key: b"vpn/tunnels/branch-0042/psk".to_vec(),
            value: vec![7; value_len],
        }],
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for len in [100usize, 4096, 256 * 1024] {
        let rec = record(len);
        let bytes = encode_record(&rec).expect("encode");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode_record", len), &rec, |b, rec| {
            b.iter(|| encode_record(black_box(rec)).expect("encode"));
        });
        group.bench_with_input(
            BenchmarkId::new("decode_record", len),
            &bytes,
            |b, bytes| {
                b.iter(|| decode_record(black_box(bytes)).expect("decode"));
            },
        );
    }
    group.finish();
}

fn store(dir: &std::path::Path, node: &str) -> Store {
    Store::open(dir, StoreOptions::new(NodeId::new(node).expect("node id"))).expect("open store")
}

/// A standby applying records shipped by an active, one durable commit each.
fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    group.sample_size(10);
    let id: DomainId = "bench".parse().expect("domain id");
    for len in [100usize, 4096] {
        let dir = tempfile::tempdir().expect("tempdir");
        let active = store(&dir.path().join("a"), "a")
            .create_domain(&id)
            .expect("create");
        let standby_store = store(&dir.path().join("b"), "b");
        let standby = standby_store.join_domain(&id).expect("join");
        // A fresh standby starts from a snapshot; records follow it.
        resync(&active, &standby);
        // Each iteration ships one new record: written on the active (not measured), applied
        // on the standby (measured).
        let mut i = 0u64;
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("record", len), |b| {
            b.iter_batched(
                || {
                    i += 1;
                    let at = active.put(format!("k{i}"), vec![1u8; len]).expect("write");
                    active
                        .read_log(at.lsn, 1, 1 << 20)
                        .expect("log")
                        .remove(0)
                        .bytes
                },
                |bytes| standby.apply(black_box(&bytes)).expect("apply"),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

/// Moves `active`'s state into the empty `standby` through a snapshot, as a full resync does.
fn resync(active: &Domain, standby: &Domain) {
    let snap = active.snapshot().expect("snapshot");
    let target = ResyncTarget {
        uid: snap.uid.expect("an active's domain has a uid"),
        position: snap.position.clone(),
        epoch: snap.epoch.clone(),
        history: snap.history.clone(),
        digest: snap.digest,
    };
    let mut resync = standby.begin_resync(target, None).expect("begin resync");
    let mut items = Vec::new();
    snap.for_each::<StoreError>(|item| {
        items.push(item);
        Ok(())
    })
    .expect("rows");
    resync.add(&items).expect("add");
    resync.finish().expect("finish");
}

fn item_bytes(item: &SnapshotItem) -> usize {
    match item {
        SnapshotItem::Kv { key, value } => key.len() + value.len(),
        other => std::mem::size_of_val(other),
    }
}

/// Reads a snapshot of 10,000 keys of 100 B (and of 1,000 keys of 4 KiB) and cuts it into
/// encoded `SnapshotRows` messages of about [`CHUNK_BYTES`].
fn snapshot_chunking(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_chunking");
    group.sample_size(10);
    let id: DomainId = "bench".parse().expect("domain id");
    for (keys, len) in [(10_000usize, 100usize), (1_000, 4096)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path(), "a");
        let domain = s.create_domain(&id).expect("create");
        for batch in 0..keys / 100 {
            let ops = (0..100)
                .map(|i| Op::Put {
                    key: format!("tenant/object-{:06}", batch * 100 + i).into_bytes(),
                    value: vec![3u8; len],
                })
                .collect();
            domain.write(ops).expect("write");
        }
        group.throughput(Throughput::Bytes((keys * len) as u64));
        group.bench_function(BenchmarkId::new(format!("{keys}_keys"), len), |b| {
            b.iter(|| {
                let snap = domain.snapshot().expect("snapshot");
                let mut chunk = Vec::new();
                let (mut size, mut sent) = (0usize, 0usize);
                snap.for_each::<StoreError>(|item| {
                    size += item_bytes(&item);
                    chunk.push(item);
                    if size >= CHUNK_BYTES {
                        size = 0;
                        let m = Message::SnapshotRows(std::mem::take(&mut chunk));
                        sent += encode_message(&m).expect("encode").len();
                    }
                    Ok(())
                })
                .expect("rows");
                let m = Message::SnapshotRows(chunk);
                sent += encode_message(&m).expect("encode").len();
                black_box(sent)
            });
        });
    }
    group.finish();
}

criterion_group!(benches, codec, apply, snapshot_chunking);
criterion_main!(benches);
