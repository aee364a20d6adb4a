//! The split-brain guard of a manual promotion (DESIGN.md §7), sans-IO.
//!
//! Before a standby makes itself active it gathers evidence that the old active is gone: what
//! every other replica answers to a probe (its role, epoch, position, and when it last heard
//! from an active it follows) and what gateways last reported (each gateway request says when
//! it last reached which active). [`check_promotion`] weighs that evidence; the node only collects it.

use std::fmt;
use std::time::Duration;

use super::message::ProbeAnswer;
use crate::model::{Epoch, HistoryEntry, Lsn, NodeId, Position, Role};

/// Who saw an active alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seer {
    /// Another replica of the domain.
    Peer(NodeId),
    /// A gateway (its certificate id).
    Gateway(String),
}

impl fmt::Display for Seer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seer::Peer(n) => write!(f, "node {n}"),
            Seer::Gateway(g) => write!(f, "gateway {g}"),
        }
    }
}

/// A sighting of an active, with its age now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// Who saw it.
    pub seer: Seer,
    /// The active seen.
    pub active: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
    /// How long ago.
    pub age: Duration,
}

/// What one peer said to the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerProbe {
    /// It answered; `None` when it holds no replica of the domain.
    Answered(Option<ProbeAnswer>),
    /// It did not answer (the reason, for the operator).
    Unreachable(String),
}

/// Everything the guard weighs.
#[derive(Debug, Clone)]
pub struct GuardInput<'a> {
    /// The node about to promote itself.
    pub me: &'a NodeId,
    /// The highest epoch it has seen for the domain.
    pub epoch: &'a Epoch,
    /// Its position: its last record's epoch and lsn.
    pub position: &'a Position,
    /// What its follower knows of its lag: the active it followed and how many records behind
    /// that active it is (0 when synchronized).
    pub lag: Option<(NodeId, u64)>,
    /// Every other replica's answer.
    pub probes: &'a [(NodeId, PeerProbe)],
    /// Gateways' latest reports of an active of the domain.
    pub sightings: &'a [Sighting],
    /// A sighting younger than this means "alive".
    pub window: Duration,
    /// Promote even against the evidence.
    pub force: bool,
}

/// Why the guard refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An active in our epoch or above was seen alive recently.
    #[error("{node} was seen active in epoch {epoch} by {seen_by} {} ms ago", age.as_millis())]
    ActiveAlive {
        /// The active.
        node: NodeId,
        /// Its epoch.
        epoch: Epoch,
        /// Who saw it.
        seen_by: Seer,
        /// How long ago.
        age: Duration,
    },
    /// Another replica (or the active we followed) holds records we lack: more of the same
    /// epoch, or any of a newer one.
    #[error("{node} holds {records} records this replica lacks (lsn {here} here, {there} there)")]
    Behind {
        /// Who holds more.
        node: NodeId,
        /// How many more.
        records: u64,
        /// Our lsn.
        here: Lsn,
        /// Theirs.
        there: Lsn,
    },
}

/// What the guard let through (with `force`, what it overrode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// The most advanced replica ahead of us and its lsn, if any.
    pub ahead: Option<(NodeId, Lsn)>,
    /// Records we lack against it (0 when none).
    pub behind_records: u64,
    /// Peers that did not answer.
    pub unreachable: Vec<NodeId>,
    /// Actives seen alive that `force` overrode.
    pub alive: Vec<Sighting>,
}

/// Weighs the evidence for a promotion.
///
/// Refused without `force` when an active other than `me`, in our epoch or above, answered a
/// probe itself, or was heard by a peer or a gateway within `window`; or when a peer (or the
/// active we followed, by our follower's lag) holds records we lack. Positions compare by the
/// epoch of their last record, then lsn: a peer holding fewer records of a newer epoch is
/// ahead of a replica holding more of an older one (promoting the latter would lose the
/// former's writes).
///
/// # Errors
/// [`Refusal`] naming the first reason (a live active before a lag).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use domsync_proto::model::{Epoch, Lsn, NodeId, Position};
/// use domsync_proto::repl::{check_promotion, GuardInput, Refusal, Seer, Sighting};
///
/// let (a, b) = (NodeId::new("a")?, NodeId::new("b")?);
/// let epoch = Epoch { term: 1, node: a.clone() };
/// let seen = [Sighting {
///     seer: Seer::Gateway("gw-7".into()),
///     active: a.clone(),
///     epoch: epoch.clone(),
///     age: Duration::from_secs(1),
/// }];
/// let here = Position { epoch: epoch.clone(), lsn: Lsn(10), chain: 0 };
/// let input = GuardInput {
///     me: &b, epoch: &epoch, position: &here, lag: None, probes: &[], sightings: &seen,
///     window: Duration::from_secs(5), force: false,
/// };
/// assert!(matches!(check_promotion(&input), Err(Refusal::ActiveAlive { .. })));
/// assert_eq!(check_promotion(&GuardInput { force: true, ..input })?.alive.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_promotion(input: &GuardInput<'_>) -> Result<Verdict, Refusal> {
    let mut verdict = Verdict::default();
    let here = (&input.position.epoch, input.position.lsn);
    let mut best = here;
    let relevant = |node: &NodeId, epoch: &Epoch| node != input.me && epoch >= input.epoch;
    for (peer, probe) in input.probes {
        let answer = match probe {
            PeerProbe::Answered(Some(answer)) => answer,
            PeerProbe::Answered(None) => continue,
            PeerProbe::Unreachable(_) => {
                verdict.unreachable.push(peer.clone());
                continue;
            }
        };
        if answer.role == Role::Active && relevant(peer, &answer.epoch) {
            verdict.alive.push(Sighting {
                seer: Seer::Peer(peer.clone()),
                active: peer.clone(),
                epoch: answer.epoch.clone(),
                age: Duration::ZERO,
            });
        }
        if let Some(heard) = &answer.heard_active {
            let age = Duration::from_millis(heard.ago_ms);
            if relevant(&heard.node, &heard.epoch) && age <= input.window {
                verdict.alive.push(Sighting {
                    seer: Seer::Peer(peer.clone()),
                    active: heard.node.clone(),
                    epoch: heard.epoch.clone(),
                    age,
                });
            }
        }
        let there = (&answer.position.epoch, answer.position.lsn);
        if there > best {
            best = there;
            verdict.ahead = Some((peer.clone(), answer.position.lsn));
        }
    }
    for s in input.sightings {
        if relevant(&s.active, &s.epoch) && s.age <= input.window {
            verdict.alive.push(s.clone());
        }
    }
    if let (None, Some((active, records))) = (&verdict.ahead, &input.lag) {
        if *records > 0 {
            let lsn = input.position.lsn.0.saturating_add(*records);
            verdict.ahead = Some((active.clone(), Lsn(lsn)));
        }
    }
    // At least one record when ahead by epoch only (a fork: the count past it is unknown here).
    verdict.behind_records = verdict
        .ahead
        .as_ref()
        .map_or(0, |(_, l)| l.0.saturating_sub(input.position.lsn.0).max(1));
    if input.force {
        return Ok(verdict);
    }
    if let Some(s) = verdict.alive.iter().min_by_key(|s| s.age) {
        return Err(Refusal::ActiveAlive {
            node: s.active.clone(),
            epoch: s.epoch.clone(),
            seen_by: s.seer.clone(),
            age: s.age,
        });
    }
    if let Some((node, there)) = verdict.ahead {
        return Err(Refusal::Behind {
            node,
            records: verdict.behind_records,
            here: input.position.lsn,
            there,
        });
    }
    Ok(verdict)
}

/// One other replica's reply to the fencing round of a promotion: a probe carrying the
/// candidate epoch, which the replica records durably before it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReply {
    /// It answered, after recording the epoch (`None`: it holds no replica of the domain, or
    /// does not count the candidate as one of the domain's replicas).
    Answered(Option<ProbeAnswer>),
    /// No fresh exchange within the probe budget (the reason, for the operator).
    Unreachable(String),
}

/// Everything the fencing round weighs.
#[derive(Debug, Clone)]
pub struct FenceInput<'a> {
    /// The epoch the candidate is about to take.
    pub candidate: &'a Epoch,
    /// The candidate's position.
    pub position: &'a Position,
    /// The candidate's history (which epoch wrote which lsn range).
    pub history: &'a [HistoryEntry],
    /// The active the candidate followed: the one replica that may be unreachable (a failover
    /// is for when it is lost). `None` when every other replica must be reached (a node
    /// taking writes back after a failed switchover).
    pub old_active: Option<&'a NodeId>,
    /// Every other replica's reply.
    pub replies: &'a [(NodeId, FenceReply)],
    /// Promote whatever the replies say.
    pub force: bool,
}

/// Why the fencing round refuses a promotion. Each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceRefusal {
    /// A replica that may hold acknowledged writes was not reached in this attempt.
    #[error("{node} was not reached ({why}); it may hold acknowledged writes: bring it back (or repair the network) and promote again, or use --force and accept that what it holds beyond this replica goes to the collision archive")]
    Unreachable {
        /// The replica.
        node: NodeId,
        /// What failed.
        why: String,
    },
    /// A replica answered that it holds no replica of the domain, or does not count this node
    /// as one of the domain's replicas.
    #[error("{node} answers that it holds no replica of the domain or does not count this node as a replica: compare the [[domains]] replicas in both configuration files, or use --force")]
    NoReplica {
        /// The replica.
        node: NodeId,
    },
    /// A replica did not record the candidate epoch (it holds a newer one: another
    /// promotion happened or is under way).
    #[error("{node} did not record epoch {candidate} (it holds {held}, role {role}): another promotion is under way or done; look at `domsync status` on {node}")]
    NotFenced {
        /// The replica.
        node: NodeId,
        /// The candidate epoch.
        candidate: Epoch,
        /// What it holds.
        held: Epoch,
        /// Its role.
        role: Role,
    },
    /// A fenced replica holds records the candidate lacks.
    #[error("{node} holds records this replica lacks (lsn {there} of epoch {there_epoch} there, lsn {here} here): promote {node} instead, or use --force and lose them to the collision archive")]
    Holds {
        /// The replica.
        node: NodeId,
        /// Its lsn.
        there: Lsn,
        /// The epoch of its last record.
        there_epoch: Epoch,
        /// The candidate's lsn.
        here: Lsn,
    },
}

/// What the fencing round let through (with `force`, what it overrode).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FenceVerdict {
    /// Replicas not reached (with `force`, any of them; otherwise only the old active).
    pub unreachable: Vec<NodeId>,
    /// Replicas holding records the candidate lacks (only with `force`): what they hold past
    /// the fork goes to the collision archive when they follow the new active.
    pub holders: Vec<NodeId>,
}

/// The epoch that wrote `lsn` according to `history` (`None` before the first entry).
pub fn epoch_at(history: &[HistoryEntry], lsn: Lsn) -> Option<&Epoch> {
    history
        .iter()
        .rev()
        .find(|h| h.first_lsn <= lsn)
        .map(|h| &h.epoch)
}

/// Whether a replica at `there` holds a record that a replica at `here` with `history`
/// lacks: more records, or a last record that another epoch wrote (one writer per epoch, so
/// the same lsn in the same epoch is the same record).
pub fn holds_more(there: &Position, here: &Position, history: &[HistoryEntry]) -> bool {
    if there.lsn > here.lsn {
        return true;
    }
    if there.lsn == Lsn::ZERO {
        return false;
    }
    if there.lsn == here.lsn {
        return there.epoch != here.epoch || there.chain != here.chain;
    }
    epoch_at(history, there.lsn) != Some(&there.epoch)
}

/// Weighs the fencing round of a promotion (DESIGN.md §7): every other replica must have
/// been reached in this attempt and have recorded the candidate epoch (from then on it
/// applies and acknowledges nothing of a lower one), and none may be more up to date than
/// the candidate: a last record of a newer epoch, or more records of the same epoch. A
/// replica that holds more records of an older epoch than the candidate's last one holds
/// records that were never acknowledged (the promotion that started the newer epoch fenced
/// every replica that could have acknowledged them): they go to its collision archive.
/// Only the old active may be unreachable.
///
/// # Errors
/// [`FenceRefusal`] naming the first replica in the way (without `force`).
///
/// # Example
/// ```
/// use domsync_proto::model::{Epoch, HistoryEntry, Lsn, NodeId, Position};
/// use domsync_proto::repl::{check_fence, FenceInput, FenceRefusal, FenceReply};
///
/// let (a, b, c) = (NodeId::new("a")?, NodeId::new("b")?, NodeId::new("c")?);
/// let old = Epoch { term: 1, node: a.clone() };
/// let history = [HistoryEntry { epoch: old.clone(), first_lsn: Lsn(1) }];
/// let here = Position { epoch: old.clone(), lsn: Lsn(10), chain: 7 };
/// let candidate = Epoch { term: 2, node: b.clone() };
/// let replies = [
///     (a.clone(), FenceReply::Unreachable("no answer".into())),
///     (c.clone(), FenceReply::Unreachable("no answer".into())),
/// ];
/// let input = FenceInput {
///     candidate: &candidate, position: &here, history: &history, old_active: Some(&a),
///     replies: &replies, force: false,
/// };
/// assert!(matches!(check_fence(&input), Err(FenceRefusal::Unreachable { node, .. }) if node == c));
/// assert_eq!(check_fence(&FenceInput { force: true, ..input })?.unreachable, vec![a, c]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_fence(input: &FenceInput<'_>) -> Result<FenceVerdict, FenceRefusal> {
    let mut verdict = FenceVerdict::default();
    for (node, reply) in input.replies {
        let refusal = match reply {
            FenceReply::Unreachable(why) => {
                verdict.unreachable.push(node.clone());
                if input.old_active == Some(node) {
                    continue;
                }
                FenceRefusal::Unreachable {
                    node: node.clone(),
                    why: why.clone(),
                }
            }
            FenceReply::Answered(None) => {
                verdict.unreachable.push(node.clone());
                FenceRefusal::NoReplica { node: node.clone() }
            }
            FenceReply::Answered(Some(answer)) => {
                if answer.epoch != *input.candidate || answer.role != Role::Standby {
                    verdict.unreachable.push(node.clone());
                    FenceRefusal::NotFenced {
                        node: node.clone(),
                        candidate: input.candidate.clone(),
                        held: answer.epoch.clone(),
                        role: answer.role,
                    }
                } else if (&answer.position.epoch, answer.position.lsn)
                    > (&input.position.epoch, input.position.lsn)
                {
                    verdict.holders.push(node.clone());
                    FenceRefusal::Holds {
                        node: node.clone(),
                        there: answer.position.lsn,
                        there_epoch: answer.position.epoch.clone(),
                        here: input.position.lsn,
                    }
                } else {
                    continue;
                }
            }
        };
        if !input.force {
            return Err(refusal);
        }
    }
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Heard, Position};

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn epoch(term: u64, node: &str) -> Epoch {
        Epoch {
            term,
            node: n(node),
        }
    }

    fn answer(role: Role, e: Epoch, lsn: u64, heard: Option<Heard>) -> PeerProbe {
        answer_at(role, e, at(1, lsn), heard)
    }

    fn answer_at(role: Role, e: Epoch, position: Position, heard: Option<Heard>) -> PeerProbe {
        PeerProbe::Answered(Some(ProbeAnswer {
            role,
            epoch: e,
            position,
            heard_active: heard,
        }))
    }

    fn at(term: u64, lsn: u64) -> Position {
        Position {
            epoch: epoch(term, "a"),
            lsn: Lsn(lsn),
            chain: 0,
        }
    }

    fn input<'a>(
        me: &'a NodeId,
        e: &'a Epoch,
        probes: &'a [(NodeId, PeerProbe)],
        sightings: &'a [Sighting],
    ) -> GuardInput<'a> {
        static TEN: std::sync::OnceLock<Position> = std::sync::OnceLock::new();
        GuardInput {
            me,
            epoch: e,
            position: TEN.get_or_init(|| at(1, 10)),
            lag: None,
            probes,
            sightings,
            window: Duration::from_secs(5),
            force: false,
        }
    }

    #[test]
    fn a_quiet_synchronized_standby_may_promote() {
        let (b, e) = (n("b"), epoch(1, "a"));
        let probes = [
            (n("a"), PeerProbe::Unreachable("timed out".into())),
            (n("c"), answer(Role::Standby, e.clone(), 10, None)),
        ];
        let v = check_promotion(&input(&b, &e, &probes, &[])).unwrap();
        assert_eq!(v.unreachable, vec![n("a")]);
        assert_eq!(v.behind_records, 0);
    }

    #[test]
    fn an_active_answering_or_recently_heard_refuses() {
        let (b, e) = (n("b"), epoch(1, "a"));
        let probes = [(n("a"), answer(Role::Active, e.clone(), 10, None))];
        assert!(matches!(
            check_promotion(&input(&b, &e, &probes, &[])),
            Err(Refusal::ActiveAlive { seen_by: Seer::Peer(p), .. }) if p == n("a")
        ));
        let heard = Heard {
            node: n("a"),
            epoch: e.clone(),
            ago_ms: 300,
        };
        let probes = [(n("c"), answer(Role::Standby, e.clone(), 10, Some(heard)))];
        assert!(matches!(
            check_promotion(&input(&b, &e, &probes, &[])),
            Err(Refusal::ActiveAlive { seen_by: Seer::Peer(p), node, .. }) if p == n("c") && node == n("a")
        ));
    }

    #[test]
    fn old_or_stale_sightings_do_not_refuse() {
        let (b, e) = (n("b"), epoch(2, "a"));
        let stale = [Sighting {
            seer: Seer::Gateway("g".into()),
            active: n("a"),
            epoch: e.clone(),
            age: Duration::from_secs(6),
        }];
        assert!(check_promotion(&input(&b, &e, &[], &stale)).is_ok());
        let older_epoch = [Sighting {
            epoch: epoch(1, "a"),
            age: Duration::from_secs(1),
            ..stale[0].clone()
        }];
        assert!(check_promotion(&input(&b, &e, &[], &older_epoch)).is_ok());
        let myself = [Sighting {
            active: n("b"),
            age: Duration::from_secs(1),
            ..stale[0].clone()
        }];
        assert!(check_promotion(&input(&b, &e, &[], &myself)).is_ok());
    }

    #[test]
    fn behind_a_peer_or_the_followed_active_refuses_and_force_reports_the_gap() {
        let (b, e) = (n("b"), epoch(1, "a"));
        let probes = [(n("c"), answer(Role::Standby, e.clone(), 14, None))];
        let i = input(&b, &e, &probes, &[]);
        assert_eq!(
            check_promotion(&i),
            Err(Refusal::Behind {
                node: n("c"),
                records: 4,
                here: Lsn(10),
                there: Lsn(14)
            })
        );
        let forced = check_promotion(&GuardInput { force: true, ..i }).unwrap();
        assert_eq!(forced.behind_records, 4);
        let lag = GuardInput {
            lag: Some((n("a"), 3)),
            ..input(&b, &e, &[], &[])
        };
        assert!(matches!(
            check_promotion(&lag),
            Err(Refusal::Behind { records: 3, .. })
        ));
    }

    #[test]
    fn fewer_records_of_a_newer_epoch_are_ahead_of_more_of_an_older_one() {
        let (b, e) = (n("b"), epoch(3, "c"));
        // `b` holds lsn 12 of epoch 2; `c` holds lsn 10 of epoch 3.
        let here = at(2, 12);
        let probes = [(n("c"), answer_at(Role::Standby, e.clone(), at(3, 10), None))];
        let i = GuardInput {
            position: &here,
            ..input(&b, &e, &probes, &[])
        };
        assert!(
            matches!(check_promotion(&i), Err(Refusal::Behind { node, records: 1, .. }) if node == n("c"))
        );
        // And the other way round: more records of an older epoch are not ahead.
        let newer = at(3, 10);
        let probes = [(n("c"), answer_at(Role::Standby, e.clone(), at(2, 12), None))];
        let i = GuardInput {
            position: &newer,
            ..input(&b, &e, &probes, &[])
        };
        assert!(check_promotion(&i).is_ok());
    }

    fn fenced(e: Epoch, position: Position) -> FenceReply {
        FenceReply::Answered(Some(ProbeAnswer {
            role: Role::Standby,
            epoch: e,
            position,
            heard_active: None,
        }))
    }

    #[test]
    fn the_fence_round_needs_every_standby_reached_fenced_and_not_ahead() {
        let history = [
            HistoryEntry {
                epoch: epoch(1, "a"),
                first_lsn: Lsn(1),
            },
            HistoryEntry {
                epoch: epoch(2, "a"),
                first_lsn: Lsn(6),
            },
        ];
        let here = Position {
            epoch: epoch(2, "a"),
            lsn: Lsn(10),
            chain: 5,
        };
        let cand = epoch(3, "b");
        let run = |replies: &[(NodeId, FenceReply)], force: bool| {
            check_fence(&FenceInput {
                candidate: &cand,
                position: &here,
                history: &history,
                old_active: Some(&history[1].epoch.node),
                replies,
                force,
            })
        };
        let behind = Position {
            epoch: epoch(1, "a"),
            lsn: Lsn(4),
            chain: 1,
        };
        // The old active unreachable, the other standby fenced and behind: allowed.
        let ok = [
            (n("a"), FenceReply::Unreachable("timed out".into())),
            (n("c"), fenced(cand.clone(), behind.clone())),
        ];
        assert_eq!(run(&ok, false).unwrap().unreachable, vec![n("a")]);
        // Another standby unreachable: refused, named.
        let lost = [(n("c"), FenceReply::Unreachable("timed out".into()))];
        assert!(
            matches!(run(&lost, false), Err(FenceRefusal::Unreachable { node, .. }) if node == n("c"))
        );
        // Not fenced (it holds a newer epoch), or answering "no replica": refused.
        let newer = [(n("c"), fenced(epoch(4, "c"), behind.clone()))];
        assert!(matches!(
            run(&newer, false),
            Err(FenceRefusal::NotFenced { .. })
        ));
        let none = [(n("c"), FenceReply::Answered(None))];
        assert!(matches!(
            run(&none, false),
            Err(FenceRefusal::NoReplica { .. })
        ));
        // Ahead by lsn, or on another history at a lower lsn: refused; force reports it.
        let ahead = Position {
            lsn: Lsn(11),
            ..here.clone()
        };
        let forked = Position {
            epoch: epoch(2, "c"),
            lsn: Lsn(8),
            chain: 9,
        };
        for p in [ahead, forked] {
            let r = [(n("c"), fenced(cand.clone(), p))];
            assert!(matches!(run(&r, false), Err(FenceRefusal::Holds { .. })));
            assert_eq!(run(&r, true).unwrap().holders, vec![n("c")]);
        }
        // The same position is not ahead.
        let same = [(n("c"), fenced(cand.clone(), here.clone()))];
        assert!(run(&same, false).is_ok());
    }
}
