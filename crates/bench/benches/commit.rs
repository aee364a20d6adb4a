//! Durable commit cost: latency of one write, and throughput of many concurrent writers with
//! group commit on (`group`) and off (`per_write`, `max_batch = 1`).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use domsync_proto::model::{DomainId, NodeId};
use domsync_store::{Domain, Store, StoreOptions};

const VALUE_LEN: usize = 100;
/// Writes each thread does per measured iteration.
const WRITES_PER_THREAD: u64 = 16;

fn open(max_batch: Option<usize>) -> (tempfile::TempDir, Store, Domain) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut options = StoreOptions::new(NodeId::new("bench").expect("node id"));
    if let Some(n) = max_batch {
        options.max_batch = n;
    }
    let store = Store::open(dir.path(), options).expect("open store");
    let id: DomainId = "bench".parse().expect("domain id");
    let domain = store.create_domain(&id).expect("create domain");
    (dir, store, domain)
}

fn commit_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit_latency");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    let (_dir, _store, domain) = open(None);
    let value = vec![0xABu8; VALUE_LEN];
    let mut i = 0u64;
    group.bench_function("put_100b", |b| {
        b.iter(|| {
            i += 1;
            black_box(
                domain
                    .put(format!("k{i}").into_bytes(), value.clone())
                    .expect("put"),
            )
        });
    });
    group.finish();
}

/// Every thread does `WRITES_PER_THREAD` puts per iteration; returns the total elapsed time.
fn run_writers(domain: &Domain, threads: usize, iters: u64, next: &mut u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let base = *next;
        *next += 1;
        let barrier = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let domain = domain.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let value = vec![0xCDu8; VALUE_LEN];
                    barrier.wait();
                    for w in 0..WRITES_PER_THREAD {
                        let key = format!("i{base}-t{t}-w{w}");
                        black_box(domain.put(key.into_bytes(), value.clone()).expect("put"));
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("writer thread");
        }
        total += start.elapsed();
    }
    total
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(2));
    for threads in [1usize, 8, 64] {
        group.throughput(Throughput::Elements(threads as u64 * WRITES_PER_THREAD));
        for (mode, max_batch) in [("group", None), ("per_write", Some(1))] {
            let (_dir, _store, domain) = open(max_batch);
            let mut next = 0u64;
            group.bench_with_input(BenchmarkId::new(mode, threads), &threads, |b, &threads| {
                b.iter_custom(|iters| run_writers(&domain, threads, iters, &mut next));
            });
            let stats = domain.stats();
            eprintln!(
                "throughput/{mode}/{threads}: {} records in {} commits ({:.1} records/commit)",
                stats.records,
                stats.commits,
                stats.records as f64 / stats.commits.max(1) as f64
            );
        }
    }
    group.finish();
}

criterion_group!(benches, commit_latency, throughput);
criterion_main!(benches);
