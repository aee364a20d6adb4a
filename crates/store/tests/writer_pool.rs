//! The writer pool: domains take turns (a flooded domain does not hold back another), every
//! queued write is answered however writes and domains interleave, closing commits what is
//! queued.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use domsync_proto::model::{NodeId, Op, Position};
use domsync_store::{Store, StoreError, StoreOptions};

const FLOOD: usize = 1000;

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Position, StoreError>> + 'a>>;

/// One writer thread, one request per commit: the flooded domain has a thousand commits
/// queued when the quiet domain's single write arrives; that write is answered after at most
/// a batch or two of the flood, long before the flood is through.
#[test]
fn a_flooded_domain_does_not_hold_back_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(NodeId::new("node-a").unwrap());
    options.writer_threads = 1;
    options.max_batch = 1;
    let store = Store::open(dir.path(), options).unwrap();
    let flooded = store.create_domain(&"flooded".parse().unwrap()).unwrap();
    let quiet = store.create_domain(&"quiet".parse().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _context = rt.enter();

    // Polled once, each write is queued (the queue holds 4096) and waits for its answer.
    let mut cx = Context::from_waker(Waker::noop());
    let mut flood: Vec<Option<Pending<'_>>> = (0..FLOOD)
        .map(|i| {
            Some(Box::pin(flooded.write_async(vec![Op::Put {
                key: format!("k{i:04}").into_bytes(),
                value: vec![7; 100],
            }])) as Pending<'_>)
        })
        .collect();
    let mut answered = Vec::new();
    let mut poll_flood = |flood: &mut Vec<Option<Pending<'_>>>, answered: &mut Vec<Position>| {
        for slot in flood.iter_mut() {
            if let Some(f) = slot {
                if let Poll::Ready(r) = f.as_mut().poll(&mut cx) {
                    answered.push(r.unwrap());
                    *slot = None;
                }
            }
        }
    };
    poll_flood(&mut flood, &mut answered);

    let pos = quiet.put("k", "v").unwrap();
    assert_eq!(pos.lsn.0, 1);
    poll_flood(&mut flood, &mut answered);
    assert!(
        answered.len() < FLOOD,
        "the quiet domain's write was answered only after the whole flood ({FLOOD} commits)"
    );

    // The rest of the flood is answered too, in order.
    for f in flood.into_iter().flatten() {
        let r = rt
            .block_on(tokio::time::timeout(Duration::from_secs(120), f))
            .expect("every queued write is answered within two minutes");
        answered.push(r.unwrap());
    }
    let mut lsns: Vec<u64> = answered.iter().map(|p| p.lsn.0).collect();
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=FLOOD as u64).collect::<Vec<_>>());
}

/// Dropping the last handle of a domain with writes still queued (their requesters gone)
/// commits them all before the database is released: the file opens again at once, with
/// every queued write in it.
#[test]
fn closing_commits_what_is_queued_then_releases_the_database() {
    const QUEUED: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(NodeId::new("node-a").unwrap());
    options.writer_threads = 1;
    options.max_batch = 1;
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let id = "tenant-1".parse().unwrap();
    let d = store.create_domain(&id).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..QUEUED {
        // Polled once: queued; then dropped: nobody waits for the answer.
        let mut write = Box::pin(d.write_async(vec![Op::Put {
            key: format!("k{i:03}").into_bytes(),
            value: b"v".to_vec(),
        }]));
        if let Poll::Ready(r) = write.as_mut().poll(&mut cx) {
            r.unwrap();
        }
    }
    drop(d);
    store.close();
    drop(store);
    let store = Store::open(dir.path(), options).unwrap();
    let d = store.domain(&id).unwrap();
    assert_eq!(d.status().unwrap().position.lsn.0, QUEUED as u64);
}

/// Eight threads write to twenty domains in interleaved order through a two-thread pool:
/// every write is answered (no wake-up is lost) and each domain's lsns are gapless.
#[test]
fn interleaved_writes_to_many_domains_are_all_answered() {
    const DOMAINS: usize = 20;
    const CLIENTS: usize = 8;
    const WRITES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(NodeId::new("node-a").unwrap());
    options.writer_threads = 2;
    let store = Store::open(dir.path(), options).unwrap();
    let domains: Vec<_> = (0..DOMAINS)
        .map(|i| {
            store
                .create_domain(&format!("tenant-{i:02}").parse().unwrap())
                .unwrap()
        })
        .collect();
    let (done_tx, done) = std::sync::mpsc::channel();
    for c in 0..CLIENTS {
        let domains = domains.clone();
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let mut lsns = Vec::new();
            for i in 0..WRITES {
                let n = (c * 7 + i * 13) % DOMAINS;
                let pos = domains[n].put(format!("c{c}-{i}"), "v").unwrap();
                lsns.push((n, pos.lsn.0));
            }
            done_tx.send(lsns).unwrap();
        });
    }
    let mut per_domain = vec![Vec::new(); DOMAINS];
    for _ in 0..CLIENTS {
        let lsns = done
            .recv_timeout(Duration::from_secs(120))
            .expect("every client's writes are answered within two minutes");
        for (n, lsn) in lsns {
            per_domain[n].push(lsn);
        }
    }
    for (n, mut lsns) in per_domain.into_iter().enumerate() {
        lsns.sort_unstable();
        assert_eq!(
            lsns,
            (1..=lsns.len() as u64).collect::<Vec<_>>(),
            "domain {n}"
        );
        assert_eq!(
            domains[n].status().unwrap().position.lsn.0,
            lsns.len() as u64
        );
    }
}
