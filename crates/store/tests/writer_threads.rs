//! Writer threads are bounded per store, not per domain. Alone in its test binary: it counts
//! the threads of the process.

use std::time::{Duration, Instant};

use domsync_proto::model::{NodeId, Op};
use domsync_store::{Domain, Store, StoreOptions};

const DOMAINS: usize = 300;
const POOL: usize = 4;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// 300 domains, each with a write in flight at once: every write is committed, and the
/// process gained at most the pool's threads (today one per domain would be 300).
#[test]
fn three_hundred_domains_share_the_pool_threads() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let before = threads();
    let mut options = StoreOptions::new(NodeId::new("node-a").unwrap());
    options.writer_threads = POOL;
    let store = Store::open(dir.path(), options).unwrap();
    let domains: Vec<Domain> = (0..DOMAINS)
        .map(|i| {
            store
                .create_domain(&format!("tenant-{i:03}").parse().unwrap())
                .unwrap()
        })
        .collect();
    let positions = rt.block_on(async {
        let tasks: Vec<_> = domains
            .iter()
            .map(|d| {
                let d = d.clone();
                tokio::spawn(async move {
                    d.write_async(vec![Op::Put {
                        key: b"owner".to_vec(),
                        value: d.id().to_string().into_bytes(),
                    }])
                    .await
                })
            })
            .collect();
        let mut positions = Vec::new();
        for task in tasks {
            let written = tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("every write is answered within two minutes")
                .unwrap();
            positions.push(written.unwrap());
        }
        positions
    });
    let during = threads();
    assert!(
        during <= before + POOL + 2,
        "{during} threads with {DOMAINS} domains open, {before} before: the pool holds {POOL}"
    );
    for (d, pos) in domains.iter().zip(&positions) {
        assert_eq!(pos.lsn.0, 1, "{}", d.id());
        let read = d.get(b"owner").unwrap();
        assert_eq!(read.value.as_deref(), Some(d.id().as_str().as_bytes()));
    }

    // Closing: every database is released (reopening works) and the threads end.
    drop(domains);
    store.close();
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads() > before {
        assert!(
            Instant::now() < deadline,
            "{} threads after the store closed, {before} before",
            threads()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let store = Store::open(
        dir.path(),
        StoreOptions::new(NodeId::new("node-a").unwrap()),
    )
    .unwrap();
    let d = store.domain(&"tenant-299".parse().unwrap()).unwrap();
    assert_eq!(d.status().unwrap().position.lsn.0, 1);
}
