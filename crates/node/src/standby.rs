//! The standby side of the node: one follower task per domain, dialing the active.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

use super::{lock, to_wall, Node};
use crate::ship::spawn_reader;
use domsync_net::{write_frame, FrameError};
use domsync_proto::model::{Lsn, NodeId, Position};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::{FollowAction, Follower, StandbyView, SyncStatus};
use domsync_store::{Domain, Resync, ResyncTarget, StoreError};

/// How a standby replica stands, as seen by the standby itself.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerReport {
    /// The active it follows.
    pub active: NodeId,
    /// Its sync status (from what the active told it).
    pub status: SyncStatus,
    /// Its position.
    pub position: Position,
    /// When it last held everything the active had announced.
    pub last_sync: Option<SystemTime>,
    /// The current error or refusal, for the operator (`None` once the link recovered).
    pub last_error: Option<String>,
    /// The latest errors and refusals with when they happened, oldest first (kept after the
    /// link recovered).
    pub recent_errors: Vec<(SystemTime, String)>,
    /// Records or snapshots refused as corrupt or out of place.
    pub refused: u64,
    /// Snapshots switched in since the node started.
    pub resyncs: u64,
    /// True while a stream to the active is open.
    pub connected: bool,
    /// This node's clock minus the active's, in milliseconds, from the active's latest
    /// heartbeat (it includes the one-way network delay); `None` before one arrived.
    pub clock_skew_ms: Option<i64>,
}

pub(super) struct StandbyDomain {
    domain: Domain,
    /// The node followed; changed when a refusal names the domain's active.
    active: Mutex<NodeId>,
    follower: Mutex<Follower>,
    resyncs: Mutex<u64>,
    /// This node's clock minus the active's (ms), measured on the latest heartbeat.
    clock_skew_ms: Mutex<Option<i64>>,
    /// Set to stop following (unfollow or node shutdown).
    stop: watch::Sender<bool>,
    /// The task following the domain: a follower that replaces this one starts only once it
    /// ended (see [`Node::follow`]).
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl StandbyDomain {
    pub(super) fn domain(&self) -> &Domain {
        &self.domain
    }

    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(super) fn active(&self) -> NodeId {
        lock(&self.active).clone()
    }
}

impl Node {
    /// Follows `domain` (a standby replica on this node) from the active on node `active`:
    /// a task connects, resumes from the local position (or resyncs) and applies records
    /// as they come, reconnecting with capped exponential backoff.
    pub fn follow(&self, domain: Domain, active: NodeId) {
        let mut follower = Follower::new(
            domain.id().clone(),
            self.inner.config.backoff,
            Instant::now(),
        );
        if let Ok(view) = standby_view(&domain) {
            follower.restore(&view);
        }
        let sd = Arc::new(StandbyDomain {
            follower: Mutex::new(follower),
            domain: domain.clone(),
            active: Mutex::new(active),
            resyncs: Mutex::new(0),
            clock_skew_ms: Mutex::new(None),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        });
        let mut standbys = lock(&self.inner.standbys);
        if *self.inner.shutdown.borrow() {
            // Checked under the lock `Node::shutdown` empties the map with: a follower
            // started now would outlive the node (and keep its endpoint bound).
            tracing::debug!(domain = %domain.id(), "node shut down: not following");
            return;
        }
        // A follower that replaces another (a higher epoch names a new active) first waits for
        // the old one's task to end: a batch from the old active that it is still applying
        // would otherwise land after the new follower told the new active its position, past
        // what the new active holds, and nothing would ever rewind it (a silent divergence
        // while the new active stays idle: torture `partitions`, seed 16458350657125441115).
        let previous = standbys
            .insert(domain.id().clone(), Arc::clone(&sd))
            .and_then(|old| {
                old.stop.send_replace(true);
                lock(&old.task).take()
            });
        tokio::spawn(self.clone().standby_retention(Arc::clone(&sd)));
        let task = tokio::spawn(self.clone().follow_after(previous, Arc::clone(&sd)));
        *lock(&sd.task) = Some(task);
        drop(standbys);
    }

    async fn follow_after(
        self,
        previous: Option<tokio::task::JoinHandle<()>>,
        sd: Arc<StandbyDomain>,
    ) {
        if let Some(previous) = previous {
            drop(previous.await);
        }
        self.follow_loop(sd).await;
    }

    /// Stops following a domain: its task ends and its stream closes. The replica keeps its
    /// state; [`Node::follow`] resumes from it.
    pub fn unfollow(&self, domain: &domsync_proto::model::DomainId) {
        if let Some(sd) = lock(&self.inner.standbys).remove(domain) {
            sd.stop.send_replace(true);
        }
    }

    /// The active this node follows for `domain` and how long ago it last heard from it,
    /// while a stream to it is open (a peer's split-brain guard).
    pub(super) fn heard_active(
        &self,
        domain: &domsync_proto::model::DomainId,
        epoch: &domsync_proto::model::Epoch,
    ) -> Option<domsync_proto::model::Heard> {
        let sd = lock(&self.inner.standbys).get(domain).cloned()?;
        let at = lock(&sd.follower).last_heard()?;
        Some(domsync_proto::model::Heard {
            node: sd.active(),
            epoch: epoch.clone(),
            ago_ms: u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Records of the collision archive of `domain` were discarded here. When this node
    /// follows the domain, its stream starts over: the active learns what the archive holds
    /// now from the new `Follow` (an empty archive is no collision) instead of keeping what
    /// the old stream told it.
    pub fn collisions_changed(&self, domain: &domsync_proto::model::DomainId) {
        let Some(sd) = lock(&self.inner.standbys).get(domain).cloned() else {
            return;
        };
        let fork = collision_fork(&sd.domain).ok().flatten();
        lock(&sd.follower).set_collision_fork(fork);
        tracing::info!(domain = %domain, active = %sd.active(), "collision archive changed: reconnecting so the active sees it");
        self.follow(sd.domain.clone(), sd.active());
    }

    /// This replica holds everything of the active it follows for `domain` (a switchover
    /// handed over at exactly its position): its follower starts synchronized.
    pub(super) fn handed_over(&self, domain: &domsync_proto::model::DomainId) {
        if let Some(sd) = lock(&self.inner.standbys).get(domain).cloned() {
            lock(&sd.follower).handed_over(Instant::now());
        }
    }

    /// Whether the standby replica of `domain` knows it is behind its active: never
    /// synchronized, lagging, or not heard from within `stream_idle` (`None` when not
    /// followed here). Reads no store (a gateway's "not found" asks it on every miss).
    pub(super) fn follower_behind(&self, domain: &domsync_proto::model::DomainId) -> Option<bool> {
        let sd = lock(&self.inner.standbys).get(domain).cloned()?;
        let f = lock(&sd.follower);
        let now = Instant::now();
        let idle = self.inner.config.stream_idle;
        let heard = f
            .last_heard()
            .is_some_and(|t| now.saturating_duration_since(t) <= idle);
        let (status, _) = f.status_at(now, idle);
        Some(
            !heard
                || matches!(
                    status,
                    SyncStatus::NeverSynchronized | SyncStatus::Lagging { .. }
                ),
        )
    }

    /// How a standby domain of this node stands (`None` when not followed here).
    pub fn follower_status(
        &self,
        domain: &domsync_proto::model::DomainId,
    ) -> Option<FollowerReport> {
        let sd = lock(&self.inner.standbys).get(domain).cloned()?;
        let position = sd.domain.subscribe().borrow().clone();
        let resyncs = *lock(&sd.resyncs);
        let fork = collision_fork(&sd.domain).ok().flatten();
        let clock_skew_ms = *lock(&sd.clock_skew_ms);
        let mut f = lock(&sd.follower);
        f.set_collision_fork(fork);
        let now = Instant::now();
        let (status, last_sync) = f.status_at(now, self.inner.config.stream_idle);
        Some(FollowerReport {
            active: sd.active(),
            status,
            position,
            last_sync: last_sync.map(to_wall),
            last_error: f.last_error().map(str::to_owned),
            recent_errors: f
                .recent_errors()
                .map(|(at, why)| (to_wall(*at), why.clone()))
                .collect(),
            refused: f.refused(),
            resyncs,
            connected: f
                .last_heard()
                .is_some_and(|t| now.saturating_duration_since(t) <= self.inner.config.stream_idle),
            clock_skew_ms,
        })
    }

    async fn follow_loop(self, sd: Arc<StandbyDomain>) {
        let mut shutdown = sd.stop.subscribe();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = Instant::now();
            let actions = lock(&sd.follower).on_tick(now);
            if actions.contains(&FollowAction::Connect) {
                let active = sd.active();
                let opened = tokio::select! {
                    opened = self.open_stream(&active) => opened,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match opened {
                    Ok((send, recv)) => {
                        let mut stream = StandbyStream {
                            node_idle: self.inner.config.stream_idle,
                            sd: Arc::clone(&sd),
                            send,
                            resync: None,
                            went_silent: false,
                            since: domsync_proto::model::Position::empty(active.clone()).epoch,
                        };
                        stream.run(recv).await;
                        if stream.went_silent {
                            // The connection may be dead without knowing it (the peer
                            // restarted): dial afresh instead of waiting out its idle timeout.
                            self.disconnect(&sd.active()).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(domain = %sd.domain.id(), active = %sd.active(), error = %e, "cannot reach the active");
                    }
                }
                let redirect = {
                    let mut f = lock(&sd.follower);
                    if f.is_connected() {
                        drop(f.disconnected(Instant::now()));
                    }
                    f.take_redirect()
                };
                // A peer's word is followed only to a replica of the domain in the local
                // configuration (invariant 9).
                let redirect = redirect.filter(|n| n != self.id());
                if let Some(stranger) = redirect
                    .as_ref()
                    .filter(|n| !self.replicas(sd.domain.id()).contains(n))
                {
                    tracing::warn!(domain = %sd.domain.id(), from = %sd.active(), named = %stranger, "the followed node names an active that is not a replica of the domain here; not followed");
                } else if let Some(next) = redirect {
                    tracing::info!(domain = %sd.domain.id(), from = %sd.active(), to = %next, "the followed node names another active; following it");
                    *lock(&sd.active) = next;
                }
                continue;
            }
            let wake = lock(&sd.follower)
                .next_attempt()
                .unwrap_or(now + self.inner.config.tick);
            tokio::select! {
                _ = tokio::time::sleep_until(wake.max(now).into()) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Keeps a standby replica's log within its size cap.
    async fn standby_retention(self, sd: Arc<StandbyDomain>) {
        let mut stop = sd.stop.subscribe();
        let mut positions = sd.domain.subscribe();
        loop {
            // Nothing to trim until the log grows: no wake-ups while idle.
            tokio::select! {
                changed = positions.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(self.inner.config.standby_retention_interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            positions.borrow_and_update();
            if !super::active::trim_log(&sd.domain, self.inner.config.standby_retention_bytes, &[])
                .await
            {
                return;
            }
        }
    }

    async fn open_stream(
        &self,
        active: &NodeId,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let conn = self.connection(active).await.map_err(|e| e.to_string())?;
        conn.open_bi().await.map_err(|e| e.to_string())
    }
}

struct StandbyStream {
    /// How long the active may stay silent (it sends heartbeats when idle).
    node_idle: std::time::Duration,
    sd: Arc<StandbyDomain>,
    send: quinn::SendStream,
    resync: Option<Resync>,
    /// The active sent nothing for `node_idle`.
    went_silent: bool,
    /// The epoch the `Follow` of this stream carried (see [`Domain::apply_batch_from_async`]).
    since: domsync_proto::model::Epoch,
}

impl StandbyStream {
    async fn run(&mut self, recv: quinn::RecvStream) {
        let (mut inbox, arrivals) = spawn_reader(recv, domsync_proto::repl::MAX_MESSAGE_BYTES);
        let mut shutdown = self.sd.stop.subscribe();
        let view = match standby_view(&self.sd.domain) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(domain = %self.sd.domain.id(), error = %e, "cannot read the local replica");
                return;
            }
        };
        self.since = view.epoch.clone();
        let mut actions = lock(&self.sd.follower).connected(&view);
        loop {
            if !self.execute(std::mem::take(&mut actions)).await {
                return;
            }
            let idle = self.node_idle;
            tokio::select! {
                m = tokio::time::timeout(idle, inbox.recv()) => {
                    let now = Instant::now();
                    let Ok(m) = m else {
                        if arrivals.since_last() < idle {
                            // A large message is still arriving: its bytes keep coming.
                            continue;
                        }
                        tracing::warn!(domain = %self.sd.domain.id(), active = %self.sd.active(), "nothing from the active for {idle:?}; reconnecting");
                        self.went_silent = true;
                        return;
                    };
                    actions = match m {
                        Some(Ok(message)) => {
                            if let domsync_proto::repl::Message::Heartbeat { time, .. } = &message {
                                let skew = i128::from(super::wall_micros()) - i128::from(*time);
                                let ms = i64::try_from(skew / 1000).unwrap_or(i64::MAX);
                                *lock(&self.sd.clock_skew_ms) = Some(ms);
                            }
                            let mut actions = lock(&self.sd.follower).on_message(message, now);
                            self.take_queued(&mut inbox, &mut actions, now);
                            merge_applies(actions)
                        }
                        Some(Err(FrameError::Codec(e))) => {
                            lock(&self.sd.follower).apply_failed(&format!("corrupt frame from the active refused: {e}"), now)
                        }
                        Some(Err(e)) => {
                            tracing::debug!(domain = %self.sd.domain.id(), error = %e, "replication stream lost");
                            return;
                        }
                        None => return,
                    };
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// While records are to be applied, takes the messages already waiting too, so one commit
    /// (and one ack) covers them all: a standby that fell behind catches up in large batches
    /// instead of one commit per message.
    fn take_queued(
        &self,
        inbox: &mut tokio::sync::mpsc::Receiver<Result<domsync_proto::repl::Message, FrameError>>,
        actions: &mut Vec<FollowAction>,
        now: Instant,
    ) {
        let mut records: usize = actions
            .iter()
            .map(|a| match a {
                FollowAction::Apply(r) => r.len(),
                _ => 0,
            })
            .sum();
        while records > 0
            && records < MAX_MERGED_RECORDS
            && actions.iter().all(|a| matches!(a, FollowAction::Apply(_)))
        {
            let more =
                match inbox.try_recv() {
                    Ok(Ok(message)) => lock(&self.sd.follower).on_message(message, now),
                    Ok(Err(FrameError::Codec(e))) => {
                        // Apply what came before the bad frame, then end the stream.
                        actions.extend(lock(&self.sd.follower).apply_failed(
                            &format!("corrupt frame from the active refused: {e}"),
                            now,
                        ));
                        return;
                    }
                    // Nothing waiting; or the stream failed, which the next `recv` reports.
                    Ok(Err(_)) | Err(_) => return,
                };
            records += more
                .iter()
                .map(|a| match a {
                    FollowAction::Apply(r) => r.len(),
                    _ => 0,
                })
                .sum::<usize>();
            actions.extend(more);
        }
    }

    /// Carries out actions. False when the stream is over.
    async fn execute(&mut self, mut actions: Vec<FollowAction>) -> bool {
        let id = self.sd.domain.id().clone();
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                if *self.sd.stop.borrow() {
                    // Replaced or unfollowed: nothing more from this stream is applied.
                    self.resync = None;
                    return false;
                }
                let now = Instant::now();
                let more = match action {
                    FollowAction::Connect => Vec::new(),
                    FollowAction::Send(m) => {
                        if matches!(m, domsync_proto::repl::Message::Ack(_)) {
                            // Nothing is acknowledged to an active this replica knows to be
                            // fenced (a newer epoch names another node), even for a batch
                            // that was committing when the newer epoch was recorded.
                            let from = self.sd.active();
                            if let Ok(highest) = self.sd.domain.highest_epoch() {
                                if highest.term > 0 && highest.node != from {
                                    tracing::warn!(domain = %id, active = %from, epoch = %highest, "no acknowledgement to a fenced active; stream closed");
                                    self.resync = None;
                                    drop(self.send.finish());
                                    return false;
                                }
                            }
                        }
                        let Ok(frame) = encode_message(&m) else {
                            return false;
                        };
                        if write_frame(&mut self.send, &frame).await.is_err() {
                            return false;
                        }
                        Vec::new()
                    }
                    FollowAction::Apply(records) => {
                        let batch = records.into_iter().map(|r| r.0).collect();
                        let from = self.sd.active();
                        match self
                            .sd
                            .domain
                            .apply_batch_from_async(&from, &self.since, batch)
                            .await
                        {
                            Ok(position) => lock(&self.sd.follower).applied(&position, now),
                            Err(e) => {
                                tracing::warn!(domain = %id, error = %e, "record refused; resuming from the local position");
                                lock(&self.sd.follower).apply_failed(&e.to_string(), now)
                            }
                        }
                    }
                    FollowAction::BeginSnapshot {
                        header,
                        archive_after,
                    } => {
                        let target = ResyncTarget {
                            uid: header.uid,
                            position: header.position,
                            epoch: header.epoch,
                            history: header.history,
                            digest: header.digest,
                        };
                        tracing::info!(domain = %id, position = %target.position, "resync from a snapshot starts");
                        let d = self.sd.domain.clone();
                        match blocking(move || d.begin_resync(target, archive_after)).await {
                            Ok(r) => {
                                self.resync = Some(r);
                                Vec::new()
                            }
                            Err(e) => lock(&self.sd.follower).apply_failed(&e.to_string(), now),
                        }
                    }
                    FollowAction::SnapshotRows(rows) => {
                        let Some(mut r) = self.resync.take() else {
                            return false;
                        };
                        match blocking(move || r.add(&rows).map(|()| r)).await {
                            Ok(r) => {
                                self.resync = Some(r);
                                Vec::new()
                            }
                            Err(e) => lock(&self.sd.follower).apply_failed(&e.to_string(), now),
                        }
                    }
                    FollowAction::FinishSnapshot { .. } => {
                        let Some(r) = self.resync.take() else {
                            return false;
                        };
                        match blocking(move || r.finish()).await {
                            Ok(position) => {
                                *lock(&self.sd.resyncs) += 1;
                                lock(&self.sd.follower).snapshot_installed(&position, now)
                            }
                            Err(e) => {
                                tracing::warn!(domain = %id, error = %e, "snapshot refused");
                                lock(&self.sd.follower).apply_failed(&e.to_string(), now)
                            }
                        }
                    }
                    FollowAction::AbortSnapshot => {
                        self.resync = None;
                        Vec::new()
                    }
                    FollowAction::Close { why } => {
                        tracing::warn!(domain = %id, active = %self.sd.active(), "replication stream closed: {why}");
                        self.resync = None;
                        drop(self.send.finish());
                        return false;
                    }
                };
                next.extend(more);
            }
            actions = next;
        }
        true
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            action: "run",
            path: std::path::PathBuf::new(),
            detail: e.to_string(),
        }),
    }
}

/// What the standby's replica holds, for the follower.
fn standby_view(domain: &Domain) -> Result<StandbyView, StoreError> {
    let s = domain.status()?;
    let collision_fork = collision_fork(domain)?;
    // The highest epoch recorded (a fence above the replica's own included): an active
    // below it steps down when it reads the `Follow`.
    let epoch = domain.highest_epoch()?.max(s.epoch);
    Ok(StandbyView {
        uid: s.uid,
        position: s.position,
        epoch,
        history: s.history,
        collision_fork,
    })
}

/// Most records merged into one apply from queued messages.
const MAX_MERGED_RECORDS: usize = 8192;

/// Joins consecutive `Apply` actions into one (order kept).
fn merge_applies(actions: Vec<FollowAction>) -> Vec<FollowAction> {
    let mut out: Vec<FollowAction> = Vec::with_capacity(actions.len());
    for action in actions {
        match (out.last_mut(), action) {
            (Some(FollowAction::Apply(batch)), FollowAction::Apply(more)) => batch.extend(more),
            (_, action) => out.push(action),
        }
    }
    out
}

/// The fork point of the records in a replica's collision archive, if it holds any.
fn collision_fork(domain: &Domain) -> Result<Option<Lsn>, StoreError> {
    let (records, corrupt) = domain.archive()?;
    let fork = records
        .iter()
        .map(|a| Lsn(a.record.lsn.0.saturating_sub(1)))
        .min();
    // A corrupt entry still needs an operator: reported as a collision from the start.
    Ok(if corrupt.is_empty() {
        fork
    } else {
        Some(Lsn::ZERO)
    })
}
