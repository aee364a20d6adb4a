//! The active side of one replication stream: a [`Shipper`] per standby and domain.
//!
//! Sans-IO: it is told what happens (a `Follow` arrived, the domain committed, a batch was
//! sent, an ack came in, time passed) and answers with [`ShipAction`]s for the driver to
//! carry out. It never reads the store itself: the driver describes the local replica with a
//! [`LocalView`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{Ack, Answer, Follow, Message, RejectReason, SnapshotWhy};
use super::status::SyncStatus;
use crate::model::{DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Position, Role};

/// What the active knows of its own replica when it decides how to serve a standby.
#[derive(Debug, Clone)]
pub struct LocalView {
    /// This node.
    pub node: NodeId,
    /// Role of the local replica.
    pub role: Role,
    /// Incarnation id.
    pub uid: Option<DomainUid>,
    /// Highest epoch seen.
    pub epoch: Epoch,
    /// Full history.
    pub history: Vec<HistoryEntry>,
    /// Position of the last committed record.
    pub position: Position,
    /// First lsn still held in the log.
    pub log_start: Lsn,
    /// Chain just before `log_start`.
    pub log_base_chain: u32,
}

/// Tuning of a [`Shipper`].
#[derive(Debug, Clone, Copy)]
pub struct ShipConfig {
    /// Most records in one [`Message::Records`].
    pub batch_records: usize,
    /// About the most bytes in one [`Message::Records`] (at least one record is sent).
    pub batch_bytes: usize,
    /// Most records sent and not yet acknowledged durable (the stream's window).
    pub window_records: u64,
    /// Most bytes sent and not yet acknowledged durable.
    pub window_bytes: u64,
    /// A heartbeat is sent after this long without sending anything.
    pub heartbeat: Duration,
    /// A standby that sent nothing (standbys acknowledge every heartbeat) for this long is
    /// shown disconnected, and is never `Synchronized`: its time lag keeps growing.
    pub silence: Duration,
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            batch_records: 256,
            batch_bytes: 1 << 20,
            window_records: 8192,
            window_bytes: 32 << 20,
            heartbeat: Duration::from_millis(500),
            silence: Duration::from_secs(5),
        }
    }
}

/// What the driver must do for a [`Shipper`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipAction {
    /// Send this message on the stream.
    Send(Message),
    /// Stream a snapshot of the domain (`SnapshotBegin`, rows, `SnapshotEnd`) and then call
    /// [`Shipper::snapshot_sent`] with its position.
    SendSnapshot,
    /// Read up to `max_records` / about `max_bytes` records from `from` and send them as one
    /// [`Message::Records`], then call [`Shipper::records_sent`]. If the log no longer holds
    /// `from`, call [`Shipper::log_truncated`] instead.
    SendRecords {
        /// First lsn to send.
        from: Lsn,
        /// Most records.
        max_records: usize,
        /// About the most bytes.
        max_bytes: usize,
    },
    /// End the stream: the standby cannot be served on it.
    Close {
        /// Why, in one line.
        why: String,
    },
}

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitFollow,
    Snapshot,
    Streaming,
    Closed,
}

/// The active's cursor for one standby of one domain.
#[derive(Debug)]
pub struct Shipper {
    standby: NodeId,
    config: ShipConfig,
    phase: Phase,
    /// Next lsn to send.
    next: Lsn,
    /// Latest acknowledgement.
    ack: Ack,
    /// The active's latest committed lsn.
    local: Lsn,
    /// Sent records not yet durable on the standby: `(lsn, bytes)` per batch's last lsn.
    inflight: VecDeque<(Lsn, u64)>,
    inflight_bytes: u64,
    /// Commits the standby does not hold yet, `(lsn, when)`, oldest first (capped).
    pending_commits: VecDeque<(Lsn, Instant)>,
    /// Average encoded record size seen, for byte lag of unread records.
    avg_record_bytes: u64,
    last_send: Instant,
    last_sync: Option<Instant>,
    synchronized_once: bool,
    /// Position of the snapshot sent on this stream, if one was.
    snapshot_at: Option<Lsn>,
    divergence: Option<SyncStatus>,
    /// Fork point of the standby's unresolved collision archive, if any.
    collision: Option<Lsn>,
    /// When the standby last sent anything (its `Follow` or an acknowledgement).
    last_heard: Option<Instant>,
}

const MAX_PENDING_COMMITS: usize = 1 << 16;

impl Shipper {
    /// A stream for `standby` that waits for its `Follow`.
    pub fn new(standby: NodeId, config: ShipConfig, now: Instant) -> Shipper {
        Shipper {
            standby,
            config,
            phase: Phase::AwaitFollow,
            next: Lsn(1),
            ack: Ack::default(),
            local: Lsn::ZERO,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            pending_commits: VecDeque::new(),
            avg_record_bytes: 128,
            last_send: now,
            last_sync: None,
            synchronized_once: false,
            snapshot_at: None,
            divergence: None,
            collision: None,
            last_heard: None,
        }
    }

    /// The standby this stream serves.
    pub fn standby(&self) -> &NodeId {
        &self.standby
    }

    /// The standby's latest acknowledgement.
    pub fn ack(&self) -> Ack {
        self.ack
    }

    /// The stream ended (network loss, shutdown): nothing more is sent; the status keeps
    /// counting what the standby misses until it follows again on a new stream.
    pub fn disconnected(&mut self) {
        self.phase = Phase::Closed;
    }

    /// True once the stream was closed by [`ShipAction::Close`].
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True while the stream is open and the standby sent something within
    /// [`ShipConfig::silence`]: a link that carries nothing is not a connection.
    pub fn is_connected(&self, now: Instant) -> bool {
        self.phase != Phase::Closed
            && self
                .last_heard
                .is_some_and(|t| now.saturating_duration_since(t) <= self.config.silence)
    }

    /// Decides how to serve a standby's `Follow` (DESIGN.md §6 step 2).
    ///
    /// `chain_at(lsn)` returns the local chain after `lsn` if the log still tells it.
    pub fn on_follow(
        &mut self,
        follow: &Follow,
        local: &LocalView,
        chain_at: impl Fn(Lsn) -> Option<u32>,
        now: Instant,
    ) -> Vec<ShipAction> {
        if self.phase != Phase::AwaitFollow {
            return self.close("a second Follow on one stream");
        }
        self.local = local.position.lsn;
        self.last_send = now;
        self.last_heard = Some(now);
        // A standby that holds the domain's uid completed a synchronization before (on an
        // earlier stream): while it is resynced it is lagging, not never synchronized.
        self.synchronized_once |= follow.uid.is_some();
        self.collision = follow.collision_fork;
        let answer = decide(follow, local, chain_at);
        let mut out = vec![ShipAction::Send(Message::Answer(answer.clone()))];
        match answer {
            Answer::Stream { from } => {
                self.phase = Phase::Streaming;
                self.next = from;
                self.ack = Ack {
                    received: follow.position.lsn,
                    durable: follow.position.lsn,
                    applied: follow.position.lsn,
                };
                self.note_pending(now);
                self.check_synced(now);
                out.extend(self.poll());
            }
            Answer::Snapshot { why } => {
                if why == SnapshotWhy::BehindRetention {
                    // Its records are ours (same history), only too old to stream from: it
                    // lags by the rest.
                    self.ack = Ack {
                        received: follow.position.lsn,
                        durable: follow.position.lsn,
                        applied: follow.position.lsn,
                    };
                }
                self.phase = Phase::Snapshot;
                out.push(ShipAction::SendSnapshot);
            }
            Answer::Rewind { fork } => {
                // The standby archives its records after `fork`: a collision until resolved.
                self.collision = Some(self.collision.map_or(fork, |c| c.min(fork)));
                self.divergence = Some(
                    if follow.position.lsn > local.position.lsn && fork == local.position.lsn {
                        SyncStatus::Advanced {
                            records: follow.position.lsn.0 - fork.0,
                        }
                    } else {
                        SyncStatus::Collision { fork }
                    },
                );
                self.phase = Phase::Snapshot;
                out.push(ShipAction::SendSnapshot);
            }
            Answer::Reject { reason, .. } => {
                out.extend(self.close(&format!("standby {} refused: {reason}", self.standby)));
            }
        }
        out
    }

    /// The domain committed up to `lsn` locally.
    pub fn on_commit(&mut self, lsn: Lsn, now: Instant) -> Vec<ShipAction> {
        if lsn <= self.local {
            // Idempotent: a commit already known (a status read, `Node::sync_status`, tells it
            // too and drops the actions) still answers with what is committed and not sent.
            return self.poll();
        }
        self.local = lsn;
        self.note_pending(now);
        self.poll()
    }

    fn note_pending(&mut self, now: Instant) {
        if self.local > self.ack.durable
            && self
                .pending_commits
                .back()
                .is_none_or(|(l, _)| *l < self.local)
        {
            if self.pending_commits.len() >= MAX_PENDING_COMMITS {
                // Keep the oldest (it tells the age of the lag); forget the newest sample.
                self.pending_commits.pop_back();
            }
            self.pending_commits.push_back((self.local, now));
        }
    }

    /// A batch ending at `last` (inclusive) of `bytes` encoded bytes and `records` records
    /// was handed to the network.
    pub fn records_sent(
        &mut self,
        last: Lsn,
        records: u64,
        bytes: u64,
        now: Instant,
    ) -> Vec<ShipAction> {
        if self.phase != Phase::Streaming || last < self.next {
            return Vec::new();
        }
        if last > self.local {
            // The log held more than the commits notified so far (the notification is on its
            // way): what was read from the log is committed. Without this, the standby's ack
            // of these records would look like an ack of records never committed.
            self.local = last;
            self.note_pending(now);
        }
        self.next = last.next();
        self.inflight.push_back((last, bytes));
        self.inflight_bytes += bytes;
        if let Some(per_record) = bytes.checked_div(records) {
            self.avg_record_bytes = (self.avg_record_bytes * 7 + per_record) / 8;
        }
        self.last_send = now;
        self.poll()
    }

    /// The log no longer holds the next record for this standby: it is resynced by snapshot.
    pub fn log_truncated(&mut self) -> Vec<ShipAction> {
        if self.phase != Phase::Streaming {
            return Vec::new();
        }
        // A standby that was sent a whole snapshot on this stream is being synchronized (its
        // acknowledgement may still be on the way): truncated past now, it is lagging, not
        // never synchronized.
        self.synchronized_once |= self.snapshot_at.is_some();
        self.phase = Phase::Snapshot;
        self.inflight.clear();
        self.inflight_bytes = 0;
        vec![ShipAction::SendSnapshot]
    }

    /// A snapshot at `position` was fully handed to the network; streaming goes on after it.
    pub fn snapshot_sent(&mut self, position: &Position, now: Instant) -> Vec<ShipAction> {
        if self.phase != Phase::Snapshot {
            return Vec::new();
        }
        self.phase = Phase::Streaming;
        self.next = position.lsn.next();
        self.snapshot_at = Some(position.lsn);
        self.last_send = now;
        self.local = self.local.max(position.lsn);
        self.poll()
    }

    /// The standby acknowledged.
    pub fn on_ack(&mut self, ack: Ack, now: Instant) -> Vec<ShipAction> {
        if ack.durable > self.local || ack.applied > self.local || ack.received > self.local {
            return self.close("the standby acknowledged records that were never committed");
        }
        self.last_heard = Some(now);
        self.ack.received = self.ack.received.max(ack.received);
        self.ack.durable = self.ack.durable.max(ack.durable);
        self.ack.applied = self.ack.applied.max(ack.applied);
        while let Some(&(lsn, bytes)) = self.inflight.front() {
            if lsn > self.ack.durable {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes = self.inflight_bytes.saturating_sub(bytes);
        }
        while self
            .pending_commits
            .front()
            .is_some_and(|(l, _)| *l <= self.ack.applied)
        {
            self.pending_commits.pop_front();
        }
        if self.phase == Phase::Streaming {
            self.divergence = None;
        }
        self.check_synced(now);
        self.poll()
    }

    fn check_synced(&mut self, now: Instant) {
        if self.phase == Phase::Streaming && self.ack.applied >= self.local {
            self.last_sync = Some(now);
            self.synchronized_once = true;
        }
    }

    /// Time passed: sends a heartbeat when the stream was idle for a while. `wall_micros` is
    /// the active's clock (microseconds since the Unix epoch), passed on to the standby.
    pub fn on_tick(&mut self, local: &Position, wall_micros: u64, now: Instant) -> Vec<ShipAction> {
        if self.phase == Phase::Streaming
            && now.saturating_duration_since(self.last_send) >= self.config.heartbeat
        {
            self.last_send = now;
            return vec![ShipAction::Send(Message::Heartbeat {
                position: local.clone(),
                time: wall_micros,
            })];
        }
        Vec::new()
    }

    /// The next batch to send, if the stream is streaming, there is something to send and the
    /// window allows it.
    pub fn poll(&mut self) -> Vec<ShipAction> {
        self.check_invariants();
        if self.phase != Phase::Streaming || self.next > self.local {
            return Vec::new();
        }
        let unacked = self.next.0.saturating_sub(self.ack.durable.0 + 1);
        if unacked >= self.config.window_records || self.inflight_bytes >= self.config.window_bytes
        {
            return Vec::new();
        }
        let room = self.config.window_records - unacked;
        vec![ShipAction::SendRecords {
            from: self.next,
            max_records: usize::try_from(room)
                .unwrap_or(usize::MAX)
                .min(self.config.batch_records),
            max_bytes: self.config.batch_bytes,
        }]
    }

    /// The standby's sync status and the time of its last successful sync.
    pub fn status(&self, now: Instant) -> (SyncStatus, Option<Instant>) {
        self.check_invariants();
        let status = if let Some(d) = &self.divergence {
            d.clone()
        } else if let Some(fork) = self.collision {
            SyncStatus::Collision { fork }
        } else if !self.synchronized_once && self.phase != Phase::Streaming {
            SyncStatus::NeverSynchronized
        } else if self.ack.applied >= self.local && self.is_connected(now) {
            SyncStatus::Synchronized
        } else {
            // Behind by records it lacks, or out of touch: the time lag is the age of the
            // oldest commit it has not acknowledged, and at least the time since it was last
            // heard from once the link is silent, so it keeps growing while it is down.
            let records = self.local.0.saturating_sub(self.ack.applied.0);
            let sent_unacked = self.inflight_bytes;
            let unsent = self.local.0.saturating_sub(self.next.0.saturating_sub(1));
            let mut behind = self
                .pending_commits
                .front()
                .map_or(Duration::ZERO, |(_, t)| now.saturating_duration_since(*t));
            if !self.is_connected(now) {
                let silent = self
                    .last_heard
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                behind = behind.max(silent);
            }
            SyncStatus::Lagging {
                records,
                bytes: sent_unacked + unsent * self.avg_record_bytes,
                behind,
            }
        };
        (status, self.last_sync)
    }

    /// Debug builds: the stream's bookkeeping is consistent. Called after every input that
    /// can send (through [`Shipper::poll`]) and by [`Shipper::status`], so the simulations
    /// check it at every step.
    fn check_invariants(&self) {
        // Acknowledgements above what was committed close the stream (`on_ack`).
        debug_assert!(
            self.ack.received <= self.local
                && self.ack.durable <= self.local
                && self.ack.applied <= self.local,
            "standby {} acknowledged {:?} past the committed lsn {}",
            self.standby,
            self.ack,
            self.local
        );
        // Nothing is sent past what is committed.
        debug_assert!(
            self.phase != Phase::Streaming || self.next.0 <= self.local.0 + 1,
            "next lsn {} past the committed lsn {}",
            self.next,
            self.local
        );
        // In-flight batches: in lsn order, all sent, their bytes counted exactly.
        debug_assert!(
            self.inflight
                .iter()
                .zip(self.inflight.iter().skip(1))
                .all(|(a, b)| a.0 < b.0),
            "in-flight batches out of order"
        );
        debug_assert!(
            self.inflight.back().is_none_or(|(l, _)| *l < self.next),
            "an in-flight batch at or past the next lsn {}",
            self.next
        );
        debug_assert_eq!(
            self.inflight_bytes,
            self.inflight.iter().map(|(_, b)| b).sum::<u64>(),
            "in-flight bytes miscounted"
        );
        // Commits awaiting the standby: in order, committed, bounded.
        debug_assert!(
            self.pending_commits
                .iter()
                .zip(self.pending_commits.iter().skip(1))
                .all(|(a, b)| a.0 < b.0)
                && self
                    .pending_commits
                    .back()
                    .is_none_or(|(l, _)| *l <= self.local)
                && self.pending_commits.len() <= MAX_PENDING_COMMITS,
            "pending commits out of order, past the committed lsn or unbounded"
        );
    }

    fn close(&mut self, why: &str) -> Vec<ShipAction> {
        self.phase = Phase::Closed;
        vec![ShipAction::Close {
            why: why.to_owned(),
        }]
    }
}

/// The answer to a `Follow` (DESIGN.md §6 step 2), from the active's view of itself.
pub fn decide(follow: &Follow, local: &LocalView, chain_at: impl Fn(Lsn) -> Option<u32>) -> Answer {
    let reject = |reason, active| Answer::Reject { reason, active };
    if follow.domain.as_str().is_empty() {
        return reject(RejectReason::UnknownDomain, None);
    }
    if local.role != Role::Active {
        let known = (local.epoch.term > 0 && local.epoch.node != local.node)
            .then(|| local.epoch.node.clone());
        return reject(RejectReason::NotActive, known);
    }
    if follow.epoch > local.epoch {
        return reject(RejectReason::StaleEpoch, Some(follow.epoch.node.clone()));
    }
    let Some(uid) = follow.uid else {
        return Answer::Snapshot {
            why: SnapshotWhy::NeverSynchronized,
        };
    };
    if local.uid != Some(uid) {
        return reject(RejectReason::OtherIncarnation, Some(local.node.clone()));
    }
    let theirs = follow.position.lsn;
    let ours = local.position.lsn;
    if theirs > ours {
        return Answer::Rewind {
            fork: fork_point(follow, local),
        };
    }
    let our_chain = if theirs == ours {
        Some(local.position.chain)
    } else if theirs.next() == local.log_start {
        Some(local.log_base_chain)
    } else if theirs >= local.log_start {
        chain_at(theirs)
    } else {
        None
    };
    match our_chain {
        Some(chain) if chain == follow.position.chain => {
            if theirs.next() >= local.log_start {
                Answer::Stream {
                    from: theirs.next(),
                }
            } else {
                Answer::Snapshot {
                    why: SnapshotWhy::BehindRetention,
                }
            }
        }
        Some(_) => Answer::Rewind {
            fork: fork_point(follow, local),
        },
        None => {
            // Below the retained log the chain cannot be compared; the same epoch at the
            // same lsn means the same records (one writer per epoch).
            if epoch_at(&local.history, theirs) == Some(&follow.position.epoch) || theirs == Lsn(0)
            {
                Answer::Snapshot {
                    why: SnapshotWhy::BehindRetention,
                }
            } else {
                Answer::Rewind {
                    fork: fork_point(follow, local),
                }
            }
        }
    }
}

/// The epoch that wrote `lsn` according to `history`.
fn epoch_at(history: &[HistoryEntry], lsn: Lsn) -> Option<&Epoch> {
    history
        .iter()
        .rev()
        .find(|h| h.first_lsn <= lsn)
        .map(|h| &h.epoch)
}

/// The last lsn both histories share: for each epoch both went through from the same first
/// lsn, the shorter of the two runs. Zero when nothing is known to be shared.
pub fn fork_point(follow: &Follow, local: &LocalView) -> Lsn {
    let end_of = |history: &[HistoryEntry], i: usize, last: Lsn| {
        history
            .get(i + 1)
            .map_or(last, |n| Lsn(n.first_lsn.0.saturating_sub(1)))
    };
    let mut fork = Lsn::ZERO;
    for (i, t) in follow.history_tail.iter().enumerate() {
        let their_end = end_of(&follow.history_tail, i, follow.position.lsn);
        for (j, o) in local.history.iter().enumerate() {
            if o.epoch == t.epoch && o.first_lsn == t.first_lsn {
                let our_end = end_of(&local.history, j, local.position.lsn);
                fork = fork.max(their_end.min(our_end));
            }
        }
    }
    fork.min(local.position.lsn).min(follow.position.lsn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DomainId, HistoryEntry};

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn epoch() -> Epoch {
        Epoch {
            term: 1,
            node: node("a"),
        }
    }

    fn position(lsn: u64) -> Position {
        Position {
            epoch: epoch(),
            lsn: Lsn(lsn),
            chain: lsn as u32,
        }
    }

    /// A standby at `theirs` following an active at `ours` that keeps its whole log.
    fn follow_at(theirs: u64, ours: u64) -> (Follow, LocalView) {
        let uid = DomainUid([7; 16]);
        let history = vec![HistoryEntry {
            epoch: epoch(),
            first_lsn: Lsn(1),
        }];
        let follow = Follow {
            domain: DomainId::new("d").unwrap(),
            uid: Some(uid),
            position: position(theirs),
            epoch: epoch(),
            history_tail: history.clone(),
            collision_fork: None,
        };
        let local = LocalView {
            node: node("a"),
            role: Role::Active,
            uid: Some(uid),
            epoch: epoch(),
            history,
            position: position(ours),
            log_start: Lsn(1),
            log_base_chain: 0,
        };
        (follow, local)
    }

    /// A standby that holds everything but sends nothing (down, or cut off while its stream
    /// still looks open) is not `Synchronized` once the silence is longer than the bound, and
    /// its time lag keeps growing; an acknowledgement brings it back.
    #[test]
    fn a_silent_standby_is_disconnected_and_its_lag_grows() {
        let t0 = Instant::now();
        let mut s = Shipper::new(node("b"), ShipConfig::default(), t0);
        let (follow, local) = follow_at(5, 5);
        s.on_follow(&follow, &local, |l| Some(l.0 as u32), t0);
        let ack = Ack {
            received: Lsn(5),
            durable: Lsn(5),
            applied: Lsn(5),
        };
        s.on_ack(ack, t0);
        assert_eq!(s.status(t0).0, SyncStatus::Synchronized);
        assert!(s.is_connected(t0));
        let silence = ShipConfig::default().silence;
        let later = t0 + silence + Duration::from_secs(1);
        assert!(!s.is_connected(later));
        let lag = |at| match s.status(at).0 {
            SyncStatus::Lagging {
                records: 0, behind, ..
            } => behind,
            other => panic!("{other:?}"),
        };
        let first = lag(later);
        assert!(first >= silence);
        assert!(lag(later + Duration::from_secs(10)) > first);
        s.on_ack(ack, later);
        assert_eq!(s.status(later).0, SyncStatus::Synchronized);
    }

    /// Found by the simulation (tests/sim.rs): the driver hears of commits late, so a read of
    /// the log can return records past the last commit the shipper was told of. The standby's
    /// ack of them must not end the stream as an "ack of records never committed".
    #[test]
    fn records_read_past_the_notified_commit_count_as_committed() {
        let now = Instant::now();
        let mut s = Shipper::new(node("b"), ShipConfig::default(), now);
        let (follow, local) = follow_at(2, 5);
        let actions = s.on_follow(&follow, &local, |l| Some(l.0 as u32), now);
        assert!(actions.contains(&ShipAction::SendRecords {
            from: Lsn(3),
            max_records: 256,
            max_bytes: 1 << 20,
        }));
        // The log already holds lsn 8; the commits of 6..=8 are not notified yet.
        assert!(s.records_sent(Lsn(8), 6, 600, now).is_empty());
        let ack = Ack {
            received: Lsn(8),
            durable: Lsn(8),
            applied: Lsn(8),
        };
        let actions = s.on_ack(ack, now);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, ShipAction::Close { .. })),
            "{actions:?}"
        );
        assert_eq!(s.status(now).0, SyncStatus::Synchronized);
        // The late notifications change nothing.
        assert!(s.on_commit(Lsn(8), now).is_empty());
        assert_eq!(s.status(now).0, SyncStatus::Synchronized);
        // An ack past anything sent or committed still ends the stream.
        let ack = Ack {
            received: Lsn(9),
            durable: Lsn(9),
            applied: Lsn(9),
        };
        assert!(matches!(s.on_ack(ack, now)[..], [ShipAction::Close { .. }]));
    }

    /// Found by the simulation: a standby that synchronized before and comes back behind the
    /// retained log is resynced by snapshot on a new stream (a new `Shipper`); meanwhile the
    /// active must report it lagging, not `NeverSynchronized`.
    #[test]
    fn a_standby_resynced_after_falling_behind_retention_is_lagging() {
        let now = Instant::now();
        let mut s = Shipper::new(node("b"), ShipConfig::default(), now);
        let (follow, mut local) = follow_at(2, 9);
        local.log_start = Lsn(6);
        let actions = s.on_follow(&follow, &local, |_| None, now);
        assert_eq!(
            actions,
            vec![
                ShipAction::Send(Message::Answer(Answer::Snapshot {
                    why: SnapshotWhy::BehindRetention
                })),
                ShipAction::SendSnapshot
            ]
        );
        assert!(
            matches!(s.status(now).0, SyncStatus::Lagging { records: 7, .. }),
            "{:?}",
            s.status(now)
        );

        // A standby that never held the domain is NeverSynchronized until its snapshot is in.
        // (See also `a_standby_sent_its_snapshot_is_lagging_after_a_truncation`.)
        let mut s = Shipper::new(node("c"), ShipConfig::default(), now);
        let (mut follow, local) = follow_at(0, 9);
        follow.uid = None;
        s.on_follow(&follow, &local, |_| None, now);
        assert_eq!(s.status(now).0, SyncStatus::NeverSynchronized);
    }

    /// Found by the 10,000-seed simulation soak (tests/sim.rs seeds 336 and 3871): a fresh
    /// standby is sent its snapshot, streams behind a fast writer without ever catching up (or
    /// its acknowledgement is still on the way), and the log is truncated past it. It holds
    /// the domain: it is lagging, not never synchronized.
    #[test]
    fn a_standby_sent_its_snapshot_is_lagging_after_a_truncation() {
        let now = Instant::now();
        let mut s = Shipper::new(node("c"), ShipConfig::default(), now);
        let (mut follow, local) = follow_at(0, 9);
        follow.uid = None;
        s.on_follow(&follow, &local, |_| None, now);
        s.snapshot_sent(&position(9), now);
        s.on_commit(Lsn(12), now);
        assert!(matches!(s.status(now).0, SyncStatus::Lagging { .. }));
        assert_eq!(s.log_truncated(), vec![ShipAction::SendSnapshot]);
        assert!(
            matches!(s.status(now).0, SyncStatus::Lagging { records: 12, .. }),
            "{:?}",
            s.status(now)
        );
    }
}
