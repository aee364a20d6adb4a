//! Watches: the changes of a key range read back from the domain's log, from a position in
//! this replica's history, sent in batches each with the position after it.
//!
//! Only what [`Domain::key_changes`] returns is sent: it checks that the position the watch
//! stands on is still in this replica's history (same lsn, same chain) before reading on, so
//! a standby rewound under a running watch never delivers the records it lost: the next read
//! fails and the watch ends with [`AppError::Diverged`].

// An `AppError` is the answer itself, sent as it is: boxing it would only move it.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;

use super::dispatch::{me, readable, store_failed};
use super::{send, send_or_end, Access, Shared};
use crate::Daemon;
use domsync_proto::app::{Answer, AppError, KeyRange, MAX_PAGE_BYTES};
use domsync_proto::gateway::Served;
use domsync_proto::model::{DomainId, Position};
use domsync_store::{Domain, KeyChanges, StoreError};

/// Most log records read per batch.
pub const BATCH_RECORDS: usize = 1024;

/// When nothing watched changed but the position moved, a progress mark is sent after at
/// most this long (so a resumption does not fall off the retained log)...
pub const MARK_INTERVAL: Duration = Duration::from_secs(2);

/// ...or after this many records passed.
pub const MARK_RECORDS: u64 = 4096;

/// How long a watch from a position ahead of this replica (a lagging standby) waits for the
/// replica to reach it before deciding it is not in its history.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How often an idle watch sends a progress mark at its position (so a client that went away
/// is noticed).
pub const IDLE_MARK: Duration = Duration::from_secs(30);

/// Runs one watch on `w` until the client goes away (`gone`), the server stops, or an error
/// ends it (sent as [`Answer::Error`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<W: AsyncWrite + Unpin>(
    daemon: &Daemon,
    access: &Access,
    shared: &Shared,
    w: &mut W,
    domain: DomainId,
    range: KeyRange,
    from: Option<Position>,
    gone: impl Future<Output = ()>,
) {
    tokio::pin!(gone);
    let d = match readable(daemon, access, &domain) {
        Ok(d) => d,
        Err(e) => {
            let _ = send(w, &Answer::Error(e)).await;
            return;
        }
    };
    let Ok(_permit) = std::sync::Arc::clone(&shared.watches).try_acquire_owned() else {
        tracing::warn!(client = %access, domain = %domain, "watch refused: too many watches");
        let busy = AppError::Busy(format!(
            "node {} serves {} watches already",
            me(daemon),
            domsync_proto::app::MAX_WATCHES
        ));
        let _ = send(w, &Answer::Error(busy)).await;
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    let mut rx = d.subscribe();
    let start = match from {
        Some(p) => p,
        None => rx.borrow_and_update().clone(),
    };
    // A position ahead of this replica: wait (bounded) for the replica to reach it.
    if rx.borrow_and_update().lsn < start.lsn {
        let want = start.lsn;
        let _ = tokio::time::timeout(CATCH_UP_WAIT, rx.wait_for(|p| p.lsn >= want)).await;
    }
    // The first read checks the position before anything is promised.
    rx.borrow_and_update();
    let first = match changes(daemon, &d, &start, &range) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(client = %access, domain = %domain, error = %e, "watch refused");
            let _ = send(w, &Answer::Error(e)).await;
            return;
        }
    };
    let status = match d.status() {
        Ok(s) => s,
        Err(e) => {
            let _ = send(w, &Answer::Error(store_failed(daemon, e))).await;
            return;
        }
    };
    let watching = Answer::Watching {
        served: Served {
            node: me(daemon),
            role: status.role,
            epoch: status.epoch,
            position: status.position,
        },
        position: start.clone(),
    };
    if send(w, &watching).await.is_err() {
        return;
    }
    tracing::debug!(client = %access, domain = %domain, from = %start, "watch started");
    let mut pos = start;
    let mut next = Some(first);
    let mut last_sent = Instant::now();
    let mut skipped: u64 = 0;
    loop {
        let batch = match next.take() {
            Some(b) => b,
            None => {
                rx.borrow_and_update();
                match changes(daemon, &d, &pos, &range) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = send(w, &Answer::Error(e)).await;
                        return;
                    }
                }
            }
        };
        let advanced = batch.through.lsn > pos.lsn;
        if !batch.events.is_empty() {
            let answer = Answer::Events {
                events: batch.events,
                position: batch.through.clone(),
            };
            if send_or_end(w, &answer, true).await.is_err() {
                return;
            }
            last_sent = Instant::now();
            skipped = 0;
        } else if advanced {
            skipped = skipped.saturating_add(batch.through.lsn.0 - pos.lsn.0);
        }
        pos = batch.through;
        if skipped >= MARK_RECORDS || (skipped > 0 && last_sent.elapsed() >= MARK_INTERVAL) {
            if mark(w, &pos).await.is_err() {
                return;
            }
            last_sent = Instant::now();
            skipped = 0;
        }
        if advanced {
            continue;
        }
        // Caught up: wait for the next commit, a mark due, the client or the server to go.
        let due = if skipped > 0 {
            MARK_INTERVAL.saturating_sub(last_sent.elapsed())
        } else {
            IDLE_MARK.saturating_sub(last_sent.elapsed())
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    let e = AppError::Unavailable(format!("domain {domain} was closed on node {}", me(daemon)));
                    let _ = send(w, &Answer::Error(e)).await;
                    return;
                }
            }
            () = tokio::time::sleep(due) => {
                if mark(w, &pos).await.is_err() {
                    return;
                }
                last_sent = Instant::now();
                skipped = 0;
            }
            () = &mut gone => return,
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Resolves when the server stops.
async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A progress mark: nothing watched changed up to `pos`.
async fn mark<W: AsyncWrite + Unpin>(
    w: &mut W,
    pos: &Position,
) -> Result<(), domsync_net::FrameError> {
    let answer = Answer::Events {
        events: Vec::new(),
        position: pos.clone(),
    };
    send(w, &answer).await
}

/// The next batch after `pos`, with the store's refusals as the client sees them.
fn changes(
    daemon: &Daemon,
    d: &Domain,
    pos: &Position,
    range: &KeyRange,
) -> Result<KeyChanges, AppError> {
    match d.key_changes(pos, range, BATCH_RECORDS, MAX_PAGE_BYTES) {
        Ok(c) => Ok(c),
        Err(StoreError::LogTruncated { log_start, .. }) => Err(AppError::Compacted {
            domain: d.id().clone(),
            node: me(daemon),
            from: pos.clone(),
            oldest: log_start,
        }),
        Err(StoreError::NotInHistory { .. }) => Err(AppError::Diverged {
            domain: d.id().clone(),
            node: me(daemon),
            from: pos.clone(),
        }),
        Err(e) => Err(store_failed(daemon, e)),
    }
}
