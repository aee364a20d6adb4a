//! The standby side of one replication stream: a [`Follower`] per domain.
//!
//! Sans-IO: the driver tells it when a stream is open, what arrived, what the store applied
//! and when time passed; it answers with [`FollowAction`]s. Reconnection uses capped
//! exponential backoff; after a reconnect the standby resumes from its own position.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::{
    Ack, Answer, Follow, Message, RecordBytes, RejectReason, SnapshotHeader, HISTORY_TAIL,
};
use super::status::SyncStatus;
use crate::codec::{decode_record, record_head};
use crate::model::SnapshotItem;
use crate::model::{DomainId, DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Position};

/// How many past errors a follower keeps (with their time) for the operator.
pub const ERROR_HISTORY: usize = 8;

/// Backoff between attempts to reach the active.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n` (0 = first retry): `initial * 2^n`, capped at `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
    }
}

/// What the standby's own replica looks like when it (re)connects.
#[derive(Debug, Clone)]
pub struct StandbyView {
    /// Incarnation held, if any.
    pub uid: Option<DomainUid>,
    /// Position of the last applied record.
    pub position: Position,
    /// Highest epoch seen.
    pub epoch: Epoch,
    /// Full history.
    pub history: Vec<HistoryEntry>,
    /// When the collision archive holds records: the fork point they diverged after.
    pub collision_fork: Option<Lsn>,
}

/// What the driver must do for a [`Follower`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowAction {
    /// Open a stream to the active, then call [`Follower::connected`].
    Connect,
    /// Send this message on the stream.
    Send(Message),
    /// Apply these records in order (each one durable commit), calling
    /// [`Follower::applied`] after each batch, or [`Follower::apply_failed`].
    Apply(Vec<RecordBytes>),
    /// Start building a new state aside for this snapshot. If `archive_after` is set, the
    /// local records after that lsn diverged and go to the collision archive first.
    BeginSnapshot {
        /// What the snapshot is taken at.
        header: SnapshotHeader,
        /// Local records after this lsn are archived, not lost.
        archive_after: Option<Lsn>,
    },
    /// Add rows to the snapshot being built.
    SnapshotRows(Vec<SnapshotItem>),
    /// Check and switch in the built snapshot (`rows` rows in all), then call
    /// [`Follower::snapshot_installed`] or [`Follower::apply_failed`].
    FinishSnapshot {
        /// Rows the active sent.
        rows: u64,
    },
    /// Drop any snapshot being built (the stream ended before its end).
    AbortSnapshot,
    /// End the stream; a new one is opened after the backoff.
    Close {
        /// Why, in one line.
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No stream; the next attempt is due at `retry_at`.
    Idle { retry_at: Instant },
    /// Asked the driver to connect.
    Connecting,
    /// Sent `Follow`, waiting for the answer.
    AwaitAnswer,
    /// Answered with a snapshot, waiting for its header.
    AwaitSnapshot { archive_after: Option<Lsn> },
    /// Receiving snapshot rows.
    Snapshot { rows: u64 },
    /// Snapshot complete, waiting for the store to switch it in.
    Installing,
    /// Receiving records.
    Streaming,
}

/// The standby's follower of one domain.
#[derive(Debug)]
pub struct Follower {
    domain: DomainId,
    backoff: Backoff,
    phase: Phase,
    attempt: u32,
    /// Highest lsn handed to the store for applying.
    received: Lsn,
    /// Highest lsn applied (durable).
    applied: Lsn,
    /// Last position the active told (heartbeat or records).
    active_lsn: Lsn,
    active_time: u64,
    /// Received batches not yet applied: `(last lsn, its commit time, bytes)`.
    pending: VecDeque<(Lsn, u64, u64)>,
    /// Newest commit time (active's clock) of the records received.
    newest_time: u64,
    /// Commit time (active's clock) of the last applied record, when known.
    applied_time: Option<u64>,
    last_sync: Option<Instant>,
    ever_synced: bool,
    /// The current error: set by a refusal or violation, cleared once the link holds
    /// everything again (it stays in `errors`).
    last_error: Option<String>,
    /// The latest errors with when they happened, newest last (at most [`ERROR_HISTORY`]).
    errors: VecDeque<(Instant, String)>,
    refused: u64,
    /// The active a refusal named, for the driver to follow instead.
    redirect: Option<NodeId>,
    /// Fork point of the records in the local collision archive, while it holds any.
    archived: Option<Lsn>,
    /// When the active last sent anything on the current stream.
    last_heard: Option<Instant>,
    /// When the active last sent anything on any stream (kept across reconnections).
    last_contact: Option<Instant>,
}

impl Follower {
    /// A follower that connects at once.
    pub fn new(domain: DomainId, backoff: Backoff, now: Instant) -> Follower {
        Follower {
            domain,
            backoff,
            phase: Phase::Idle { retry_at: now },
            attempt: 0,
            received: Lsn::ZERO,
            applied: Lsn::ZERO,
            active_lsn: Lsn::ZERO,
            active_time: 0,
            pending: VecDeque::new(),
            newest_time: 0,
            applied_time: None,
            last_sync: None,
            ever_synced: false,
            last_error: None,
            errors: VecDeque::new(),
            refused: 0,
            redirect: None,
            archived: None,
            last_heard: None,
            last_contact: None,
        }
    }

    /// Tells a new follower what its replica already holds (after a restart), so its status
    /// is right before it first reaches the active.
    pub fn restore(&mut self, local: &StandbyView) {
        self.received = self.received.max(local.position.lsn);
        self.applied = self.applied.max(local.position.lsn);
        self.active_lsn = self.active_lsn.max(local.position.lsn);
        self.ever_synced |= local.uid.is_some();
        self.archived = local.collision_fork;
    }

    /// The replica holds everything its active has: a switchover handed the active role
    /// over at exactly this replica's position. Synchronized from now, until told otherwise.
    pub fn handed_over(&mut self, now: Instant) {
        self.ever_synced = true;
        self.active_lsn = self.applied;
        self.synced(now);
    }

    /// Time passed: connects when an attempt is due.
    pub fn on_tick(&mut self, now: Instant) -> Vec<FollowAction> {
        match self.phase {
            Phase::Idle { retry_at } if now >= retry_at => {
                self.phase = Phase::Connecting;
                vec![FollowAction::Connect]
            }
            _ => Vec::new(),
        }
    }

    /// When the next attempt is due, if idle.
    pub fn next_attempt(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { retry_at } => Some(retry_at),
            _ => None,
        }
    }

    /// True while a stream is open or being opened.
    pub fn is_connected(&self) -> bool {
        !matches!(self.phase, Phase::Idle { .. })
    }

    /// A stream to the active is open: sends `Follow` from the local view.
    pub fn connected(&mut self, local: &StandbyView) -> Vec<FollowAction> {
        if self.phase != Phase::Connecting {
            return Vec::new();
        }
        self.phase = Phase::AwaitAnswer;
        self.archived = local.collision_fork;
        self.pending.clear();
        self.received = local.position.lsn;
        self.applied = local.position.lsn;
        if local.uid.is_some() {
            self.ever_synced = true;
        }
        let skip = local.history.len().saturating_sub(HISTORY_TAIL);
        vec![FollowAction::Send(Message::Follow(Follow {
            domain: self.domain.clone(),
            uid: local.uid,
            position: local.position.clone(),
            epoch: local.epoch.clone(),
            history_tail: local.history[skip..].to_vec(),
            collision_fork: local.collision_fork,
        }))]
    }

    /// The stream ended (or could not be opened): retry after the backoff.
    pub fn disconnected(&mut self, now: Instant) -> Vec<FollowAction> {
        let abort = matches!(
            self.phase,
            Phase::Snapshot { .. } | Phase::AwaitSnapshot { .. }
        );
        self.last_heard = None;
        let delay = self.backoff.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.phase = Phase::Idle {
            retry_at: now + delay,
        };
        if abort {
            vec![FollowAction::AbortSnapshot]
        } else {
            Vec::new()
        }
    }

    /// A message arrived from the active.
    pub fn on_message(&mut self, message: Message, now: Instant) -> Vec<FollowAction> {
        let out = self.dispatch(message, now);
        self.check_invariants();
        out
    }

    /// Debug builds: the follower's bookkeeping is consistent after every input.
    fn check_invariants(&self) {
        debug_assert!(
            self.errors.len() <= ERROR_HISTORY,
            "error history unbounded"
        );
        // Batches handed to the store and not applied yet: in lsn order, all received.
        debug_assert!(
            self.pending
                .iter()
                .zip(self.pending.iter().skip(1))
                .all(|(a, b)| a.0 < b.0)
                && self
                    .pending
                    .back()
                    .is_none_or(|(l, _, _)| *l <= self.received),
            "pending batches out of order or past the received lsn {}",
            self.received
        );
        // Only a streaming follower applies records; it asks for the one after its position.
        debug_assert!(
            self.phase != Phase::Streaming
                || self.pending.is_empty()
                || self.received > self.applied,
            "batches pending while everything received is applied"
        );
        debug_assert!(
            !matches!(self.phase, Phase::Idle { .. }) || self.last_heard.is_none(),
            "a disconnected follower still counts as hearing its active"
        );
    }

    fn dispatch(&mut self, message: Message, now: Instant) -> Vec<FollowAction> {
        self.last_heard = Some(now);
        self.last_contact = Some(now);
        match (&self.phase, message) {
            (Phase::AwaitAnswer, Message::Answer(answer)) => self.on_answer(answer, now),
            (Phase::AwaitSnapshot { archive_after }, Message::SnapshotBegin(header)) => {
                let archive_after = *archive_after;
                self.begin_snapshot(header, archive_after)
            }
            // A standby that fell behind the retained log mid-stream is resynced in place.
            (Phase::Streaming, Message::SnapshotBegin(header)) => self.begin_snapshot(header, None),
            (Phase::Snapshot { rows }, Message::SnapshotRows(items)) => {
                let rows = rows + items.len() as u64;
                self.phase = Phase::Snapshot { rows };
                vec![FollowAction::SnapshotRows(items)]
            }
            (Phase::Snapshot { rows }, Message::SnapshotEnd { rows: sent }) => {
                if *rows != sent {
                    return self.violation(
                        &format!("snapshot ended after {rows} rows but the active counted {sent}"),
                        now,
                    );
                }
                self.phase = Phase::Installing;
                vec![FollowAction::FinishSnapshot { rows: sent }]
            }
            (Phase::Streaming | Phase::Installing, Message::Records(records)) => {
                self.on_records(records, now)
            }
            (
                Phase::Streaming | Phase::Installing | Phase::Snapshot { .. },
                Message::Heartbeat { position, time },
            ) => {
                self.active_lsn = self.active_lsn.max(position.lsn);
                self.active_time = time;
                if self.phase == Phase::Streaming && self.applied >= position.lsn {
                    self.synced(now);
                }
                // Answered, so an idle link carries something both ways and the active can
                // tell a live standby from a silent one.
                if self.phase == Phase::Streaming {
                    vec![FollowAction::Send(Message::Ack(self.ack()))]
                } else {
                    Vec::new()
                }
            }
            (phase, message) => {
                let what = format!(
                    "unexpected {} while {}",
                    message_name(&message),
                    phase_name(phase)
                );
                self.violation(&what, now)
            }
        }
    }

    fn begin_snapshot(
        &mut self,
        header: SnapshotHeader,
        archive_after: Option<Lsn>,
    ) -> Vec<FollowAction> {
        // The snapshot is the active's state now, possibly on another history than the
        // positions heard before (a rewind to a new active): it replaces them, it is not
        // compared with them.
        self.active_lsn = header.position.lsn;
        self.phase = Phase::Snapshot { rows: 0 };
        vec![FollowAction::BeginSnapshot {
            header,
            archive_after,
        }]
    }

    fn on_answer(&mut self, answer: Answer, now: Instant) -> Vec<FollowAction> {
        match answer {
            Answer::Stream { from } => {
                if from != self.applied.next() {
                    let why = format!(
                        "the active offered records from lsn {from}, this replica needs {}",
                        self.applied.next()
                    );
                    return self.violation(&why, now);
                }
                self.attempt = 0;
                self.phase = Phase::Streaming;
                Vec::new()
            }
            Answer::Snapshot { .. } => {
                self.attempt = 0;
                self.phase = Phase::AwaitSnapshot {
                    archive_after: None,
                };
                Vec::new()
            }
            Answer::Rewind { fork } => {
                self.attempt = 0;
                // Records after `fork` go to the archive: a collision until it is resolved.
                self.archived = Some(self.archived.map_or(fork, |a| a.min(fork)));
                self.phase = Phase::AwaitSnapshot {
                    archive_after: Some(fork),
                };
                Vec::new()
            }
            Answer::Reject { reason, active } => {
                if matches!(reason, RejectReason::NotActive | RejectReason::StaleEpoch) {
                    self.redirect.clone_from(&active);
                }
                let why = match active {
                    Some(n) => format!(
                        "the node refused to serve {}: {reason} (it names {n} as active)",
                        self.domain
                    ),
                    None => format!("the node refused to serve {}: {reason}", self.domain),
                };
                // Like every other `Close`: the stream ends and is retried after the backoff.
                self.violation(&why, now)
            }
        }
    }

    fn on_records(&mut self, records: Vec<RecordBytes>, now: Instant) -> Vec<FollowAction> {
        let Some(first) = records.first() else {
            return Vec::new();
        };
        // Only the lsn is looked at here; the store checks CRC, chain and epoch on apply.
        let first_lsn = match decode_record(&first.0) {
            Ok(r) => r.lsn,
            Err(e) => {
                self.refused += 1;
                return self.violation(
                    &format!("corrupt record after lsn {} refused: {e}", self.received),
                    now,
                );
            }
        };
        if first_lsn != self.received.next() {
            return self.violation(
                &format!(
                    "records start at lsn {first_lsn}, expected {}",
                    self.received.next()
                ),
                now,
            );
        }
        self.received = Lsn(self.received.0 + records.len() as u64);
        let bytes = records.iter().map(|r| r.0.len() as u64).sum();
        let time = records
            .last()
            .and_then(|r| record_head(&r.0).ok())
            .map_or(self.newest_time, |h| h.time);
        self.newest_time = self.newest_time.max(time);
        self.pending.push_back((self.received, time, bytes));
        self.active_lsn = self.active_lsn.max(self.received);
        vec![FollowAction::Apply(records)]
    }

    /// The store applied (durably) up to `position`: acknowledges it.
    pub fn applied(&mut self, position: &Position, now: Instant) -> Vec<FollowAction> {
        self.applied = self.applied.max(position.lsn);
        while let Some(&(last, time, _)) = self.pending.front() {
            if last > self.applied {
                break;
            }
            self.applied_time = Some(time);
            self.pending.pop_front();
        }
        self.ever_synced = true;
        if self.applied >= self.active_lsn {
            self.synced(now);
        }
        self.check_invariants();
        vec![FollowAction::Send(Message::Ack(self.ack()))]
    }

    /// The store switched in a snapshot at `position`: streaming goes on from there.
    pub fn snapshot_installed(&mut self, position: &Position, now: Instant) -> Vec<FollowAction> {
        if self.phase != Phase::Installing {
            return Vec::new();
        }
        self.phase = Phase::Streaming;
        self.received = position.lsn;
        self.applied = position.lsn;
        self.pending.clear();
        self.applied_time = None;
        self.ever_synced = true;
        self.synced(now);
        vec![FollowAction::Send(Message::Ack(self.ack()))]
    }

    /// The store refused what it was given (corrupt record, chain or digest mismatch): the
    /// stream is ended and resumed from the local position after the backoff.
    pub fn apply_failed(&mut self, why: &str, now: Instant) -> Vec<FollowAction> {
        self.refused += 1;
        self.violation(why, now)
    }

    /// The replica holds everything the active told of: the link works, so an error from
    /// before is history, not the current state.
    fn synced(&mut self, now: Instant) {
        self.last_sync = Some(now);
        self.last_error = None;
    }

    fn error(&mut self, why: &str, now: Instant) {
        self.last_error = Some(why.to_owned());
        if self.errors.len() == ERROR_HISTORY {
            self.errors.pop_front();
        }
        self.errors.push_back((now, why.to_owned()));
    }

    fn violation(&mut self, why: &str, now: Instant) -> Vec<FollowAction> {
        self.error(why, now);
        let mut out = vec![FollowAction::Close {
            why: why.to_owned(),
        }];
        out.extend(self.disconnected(now));
        out
    }

    /// What this standby acknowledges.
    pub fn ack(&self) -> Ack {
        Ack {
            received: self.received,
            durable: self.applied,
            applied: self.applied,
        }
    }

    /// The sync status as this standby sees it, with the time of its last successful sync.
    pub fn status(&self) -> (SyncStatus, Option<Instant>) {
        let status = if let Some(fork) = self.archived {
            SyncStatus::Collision { fork }
        } else if !self.ever_synced {
            SyncStatus::NeverSynchronized
        } else if self.applied >= self.active_lsn {
            SyncStatus::Synchronized
        } else {
            // Bytes: of the records received and not applied yet (the rest is unknown here).
            // Time: between the newest commit the active told of and the last one applied.
            SyncStatus::Lagging {
                records: self.active_lsn.0 - self.applied.0,
                bytes: self.pending.iter().map(|(_, _, b)| b).sum(),
                behind: self.applied_time.map_or(Duration::ZERO, |t| {
                    Duration::from_micros(self.newest_time.saturating_sub(t))
                }),
            }
        };
        (status, self.last_sync)
    }

    /// The sync status at `now`: as [`Follower::status`], except that a follower that has
    /// not heard its active within `silence` (or has no stream) is never `Synchronized`: it
    /// is `Lagging`, behind by at least the time since it last heard the active.
    pub fn status_at(&self, now: Instant, silence: Duration) -> (SyncStatus, Option<Instant>) {
        let (status, last_sync) = self.status();
        let heard = self
            .last_heard
            .filter(|_| self.is_connected())
            .map(|t| now.saturating_duration_since(t));
        if heard.is_some_and(|age| age <= silence) {
            return (status, last_sync);
        }
        let silent = self
            .last_contact
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let status = match status {
            SyncStatus::Synchronized => SyncStatus::Lagging {
                records: self.active_lsn.0.saturating_sub(self.applied.0),
                bytes: 0,
                behind: silent,
            },
            SyncStatus::Lagging {
                records,
                bytes,
                behind,
            } => SyncStatus::Lagging {
                records,
                bytes,
                behind: behind.max(silent),
            },
            other => other,
        };
        (status, last_sync)
    }

    /// When the active last sent anything on the open stream (`None` while disconnected):
    /// evidence that it is alive, for a peer's split-brain guard.
    pub fn last_heard(&self) -> Option<Instant> {
        if self.is_connected() {
            self.last_heard
        } else {
            None
        }
    }

    /// The local collision archive changed (records archived or discarded): `fork` is the
    /// fork point of what it still holds.
    pub fn set_collision_fork(&mut self, fork: Option<Lsn>) {
        self.archived = fork;
    }

    /// The active named by the last refusal (`NotActive` or `StaleEpoch`), once: the driver
    /// follows that node instead.
    pub fn take_redirect(&mut self) -> Option<NodeId> {
        self.redirect.take()
    }

    /// The current error or refusal, for the operator: `None` once the link holds
    /// everything again.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The latest errors and refusals with when they happened, oldest first (at most
    /// `ERROR_HISTORY`, 8); kept after the link recovered.
    pub fn recent_errors(&self) -> impl Iterator<Item = &(Instant, String)> {
        self.errors.iter()
    }

    /// Records and snapshots refused as corrupt or out of place so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Follow(_) => "Follow",
        Message::Answer(_) => "Answer",
        Message::Records(_) => "Records",
        Message::SnapshotBegin(_) => "SnapshotBegin",
        Message::SnapshotRows(_) => "SnapshotRows",
        Message::SnapshotEnd { .. } => "SnapshotEnd",
        Message::Heartbeat { .. } => "Heartbeat",
        Message::Ack(_) => "Ack",
        Message::Probe { .. } => "Probe",
        Message::ProbeAnswer(_) => "ProbeAnswer",
        Message::TakeOver(_) => "TakeOver",
        Message::TookOver(_) => "TookOver",
    }
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Idle { .. } => "idle",
        Phase::Connecting => "connecting",
        Phase::AwaitAnswer => "waiting for the answer to Follow",
        Phase::AwaitSnapshot { .. } => "waiting for a snapshot",
        Phase::Snapshot { .. } => "receiving a snapshot",
        Phase::Installing => "installing a snapshot",
        Phase::Streaming => "streaming",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeId;

    /// Found while writing the simulation's driver (tests/sim.rs): every `Close` must
    /// leave the follower idle with a retry due, as `Close` documents. A refusal used to leave
    /// it waiting for an answer forever unless the driver also called `disconnected`.
    #[test]
    fn a_refusal_closes_and_retries_after_the_backoff() {
        let now = Instant::now();
        let backoff = Backoff::default();
        let mut f = Follower::new("d".parse().unwrap(), backoff, now);
        assert_eq!(f.on_tick(now), vec![FollowAction::Connect]);
        let view = StandbyView {
            uid: None,
            position: Position::empty(NodeId::new("b").unwrap()),
            epoch: Position::empty(NodeId::new("b").unwrap()).epoch,
            history: Vec::new(),
            collision_fork: None,
        };
        assert_eq!(f.connected(&view).len(), 1);
        let reject = Message::Answer(Answer::Reject {
            reason: RejectReason::NotActive,
            active: Some(NodeId::new("c").unwrap()),
        });
        let actions = f.on_message(reject, now);
        assert!(
            matches!(actions[..], [FollowAction::Close { .. }]),
            "{actions:?}"
        );
        assert!(!f.is_connected());
        assert_eq!(f.next_attempt(), Some(now + backoff.delay(0)));
        assert!(f.last_error().unwrap().contains("names c as active"));
        assert_eq!(
            f.on_tick(now + backoff.delay(0)),
            vec![FollowAction::Connect]
        );
    }

    /// An error is the current state only until the link holds everything again; it stays
    /// in the history with its time (issue: a `Synchronized` standby kept showing a refusal
    /// from its start-up as its last error).
    #[test]
    fn a_recovered_link_clears_its_error_and_keeps_it_in_the_history() {
        let now = Instant::now();
        let backoff = Backoff::default();
        let mut f = Follower::new("d".parse().unwrap(), backoff, now);
        let view = StandbyView {
            uid: None,
            position: Position::empty(NodeId::new("b").unwrap()),
            epoch: Position::empty(NodeId::new("b").unwrap()).epoch,
            history: Vec::new(),
            collision_fork: None,
        };
        assert_eq!(f.on_tick(now), vec![FollowAction::Connect]);
        f.connected(&view);
        f.on_message(
            Message::Answer(Answer::Reject {
                reason: RejectReason::UnknownDomain,
                active: None,
            }),
            now,
        );
        assert!(f.last_error().is_some());
        let later = now + backoff.delay(0);
        assert_eq!(f.on_tick(later), vec![FollowAction::Connect]);
        f.connected(&view);
        f.on_message(Message::Answer(Answer::Stream { from: Lsn(1) }), later);
        f.on_message(
            Message::Heartbeat {
                position: view.position.clone(),
                time: 0,
            },
            later,
        );
        // Synchronized with an empty domain at the same position: the error is history.
        f.handed_over(later);
        assert_eq!(f.status().0, SyncStatus::Synchronized);
        assert_eq!(f.status().1, Some(later));
        assert_eq!(f.last_error(), None);
        let history: Vec<_> = f.recent_errors().collect();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].0, now);
        // The history is bounded.
        for i in 0..(ERROR_HISTORY as u32 + 3) {
            let t = later + Duration::from_secs(u64::from(i) + 1);
            f.apply_failed(&format!("refused {i}"), t);
        }
        assert_eq!(f.recent_errors().count(), ERROR_HISTORY);
        assert!(f.last_error().is_some_and(|e| e.starts_with("refused")));
    }

    fn record(lsn: u64, time: u64) -> RecordBytes {
        let rec = crate::model::Record {
            epoch: crate::model::Epoch {
                term: 1,
                node: NodeId::new("a").unwrap(),
            },
            lsn: Lsn(lsn),
            time,
            prev_chain: 0,
            ops: vec![],
        };
        RecordBytes(crate::codec::encode_record(&rec).unwrap())
    }

    /// The standby reports how far behind it is: records, bytes received and not applied,
    /// and the commit-time distance between the newest record received and the last applied.
    #[test]
    fn lag_on_the_standby_counts_records_bytes_and_time() {
        let now = Instant::now();
        let b = NodeId::new("b").unwrap();
        let mut f = Follower::new("d".parse().unwrap(), Backoff::default(), now);
        f.on_tick(now);
        let view = StandbyView {
            uid: Some(crate::model::DomainUid([1; 16])),
            position: Position::empty(b.clone()),
            epoch: Position::empty(b.clone()).epoch,
            history: Vec::new(),
            collision_fork: None,
        };
        f.connected(&view);
        f.on_message(Message::Answer(Answer::Stream { from: Lsn(1) }), now);
        let first = vec![record(1, 1_000_000), record(2, 2_000_000)];
        let second = vec![record(3, 3_500_000)];
        let second_bytes = second[0].0.len() as u64;
        assert!(matches!(
            f.on_message(Message::Records(first), now)[..],
            [FollowAction::Apply(_)]
        ));
        f.on_message(Message::Records(second), now);
        let mut at_two = Position::empty(b);
        at_two.lsn = Lsn(2);
        f.applied(&at_two, now);
        assert_eq!(
            f.status().0,
            SyncStatus::Lagging {
                records: 1,
                bytes: second_bytes,
                behind: Duration::from_millis(1500),
            }
        );
        let mut at_three = at_two.clone();
        at_three.lsn = Lsn(3);
        f.applied(&at_three, now);
        assert_eq!(f.status().0, SyncStatus::Synchronized);
    }

    /// A standby answers every heartbeat with an acknowledgement (the active can tell a live
    /// link from a dead one), and one that has not heard its active within the silence bound
    /// is never `Synchronized`; its time lag grows with the silence.
    #[test]
    fn a_follower_that_hears_nothing_is_not_synchronized_and_acks_heartbeats() {
        let t0 = Instant::now();
        let b = NodeId::new("b").unwrap();
        let mut f = Follower::new("d".parse().unwrap(), Backoff::default(), t0);
        f.on_tick(t0);
        let view = StandbyView {
            uid: Some(crate::model::DomainUid([1; 16])),
            position: Position::empty(b.clone()),
            epoch: Position::empty(b.clone()).epoch,
            history: Vec::new(),
            collision_fork: None,
        };
        f.connected(&view);
        f.on_message(Message::Answer(Answer::Stream { from: Lsn(1) }), t0);
        let beat = Message::Heartbeat {
            position: Position::empty(b),
            time: 1,
        };
        assert_eq!(
            f.on_message(beat, t0),
            vec![FollowAction::Send(Message::Ack(f.ack()))]
        );
        let silence = Duration::from_secs(5);
        assert_eq!(f.status_at(t0, silence).0, SyncStatus::Synchronized);
        let later = t0 + Duration::from_secs(8);
        let behind = |f: &Follower, at| match f.status_at(at, silence).0 {
            SyncStatus::Lagging { behind, .. } => behind,
            other => panic!("{other:?}"),
        };
        assert_eq!(behind(&f, later), Duration::from_secs(8));
        // Down: the stream is gone, and the lag keeps growing.
        f.disconnected(later);
        assert_eq!(
            behind(&f, later + Duration::from_secs(30)),
            Duration::from_secs(38)
        );
    }

    /// Found by the 10,000-seed soak of tests/sim_roles.rs (seed 2101): a standby that heard
    /// an old active at lsn 17 is rewound by the new active onto its history at lsn 16. Once
    /// that snapshot is in, it holds everything the active has: synchronized, not one record
    /// behind a position of a history it left.
    #[test]
    fn a_snapshot_from_a_new_active_replaces_the_position_heard_from_the_old_one() {
        let now = Instant::now();
        let a = NodeId::new("a").unwrap();
        let mut f = Follower::new("d".parse().unwrap(), Backoff::default(), now);
        f.on_tick(now);
        let mut at_17 = Position::empty(a.clone());
        at_17.lsn = Lsn(17);
        let view = StandbyView {
            uid: Some(crate::model::DomainUid([1; 16])),
            position: at_17.clone(),
            epoch: at_17.epoch.clone(),
            history: Vec::new(),
            collision_fork: None,
        };
        f.connected(&view);
        f.on_message(Message::Answer(Answer::Stream { from: Lsn(18) }), now);
        assert_eq!(f.status().0, SyncStatus::Synchronized);
        f.disconnected(now);
        f.on_tick(now + Duration::from_secs(60));
        f.connected(&view);
        f.on_message(Message::Answer(Answer::Rewind { fork: Lsn(2) }), now);
        let mut at_16 = Position::empty(NodeId::new("b").unwrap());
        at_16.lsn = Lsn(16);
        let header = SnapshotHeader {
            uid: crate::model::DomainUid([1; 16]),
            position: at_16.clone(),
            epoch: at_16.epoch.clone(),
            history: Vec::new(),
            digest: crate::model::StateDigest([0; 32]),
        };
        f.on_message(Message::SnapshotBegin(header), now);
        f.on_message(Message::SnapshotEnd { rows: 0 }, now);
        f.snapshot_installed(&at_16, now);
        // Nothing was archived (the records after the fork were below the local log).
        f.set_collision_fork(None);
        assert_eq!(f.status().0, SyncStatus::Synchronized);
    }
}
