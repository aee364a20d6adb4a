//! The active's answer to `Follow` (DESIGN.md §6 step 2), over the sans-IO `decide`.

use domsync_proto::model::{DomainUid, Epoch, HistoryEntry, Lsn, NodeId, Position, Role};
use domsync_proto::repl::SnapshotWhy;
use domsync_proto::repl::{decide, Answer, Follow, LocalView, RejectReason};

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn ep(term: u64, node: &str) -> Epoch {
    Epoch {
        term,
        node: n(node),
    }
}

const UID: DomainUid = DomainUid([7; 16]);

/// The active `a`: epoch 1 from lsn 1, epoch (2, b) from lsn 51, at lsn 100, log from 41.
fn local() -> LocalView {
    LocalView {
        node: n("b"),
        role: Role::Active,
        uid: Some(UID),
        epoch: ep(2, "b"),
        history: vec![
            HistoryEntry {
                epoch: ep(1, "a"),
                first_lsn: Lsn(1),
            },
            HistoryEntry {
                epoch: ep(2, "b"),
                first_lsn: Lsn(51),
            },
        ],
        position: Position {
            epoch: ep(2, "b"),
            lsn: Lsn(100),
            chain: 100,
        },
        log_start: Lsn(41),
        log_base_chain: 40,
    }
}

/// The chain after each lsn on the active's history, as its log tells it.
fn chain(lsn: Lsn) -> Option<u32> {
    (lsn >= Lsn(40) && lsn <= Lsn(100)).then_some(lsn.0 as u32)
}

fn follow(lsn: u64, chain: u32, epoch: Epoch, history: Vec<HistoryEntry>) -> Follow {
    Follow {
        domain: "t".parse().unwrap(),
        uid: Some(UID),
        position: Position {
            epoch: epoch.clone(),
            lsn: Lsn(lsn),
            chain,
        },
        epoch,
        history_tail: history,
        collision_fork: None,
    }
}

fn epoch1_only() -> Vec<HistoryEntry> {
    vec![HistoryEntry {
        epoch: ep(1, "a"),
        first_lsn: Lsn(1),
    }]
}

#[test]
fn a_standby_on_the_same_history_streams_from_its_next_lsn() {
    let f = follow(45, 45, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Stream { from: Lsn(46) }
    );
    // Exactly at the edge of the retained log (base chain), and already complete.
    let f = follow(40, 40, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Stream { from: Lsn(41) }
    );
    let f = follow(100, 100, ep(2, "b"), local().history);
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Stream { from: Lsn(101) }
    );
}

#[test]
fn behind_the_retained_log_or_never_synchronized_gets_a_snapshot() {
    let f = follow(10, 999, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Snapshot {
            why: SnapshotWhy::BehindRetention
        }
    );
    let mut f = follow(0, 0, ep(0, "c"), vec![]);
    f.uid = None;
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Snapshot {
            why: SnapshotWhy::NeverSynchronized
        }
    );
}

#[test]
fn a_standby_that_diverged_rewinds_to_the_fork_point() {
    // Old active `a` kept writing in epoch 1 up to lsn 60 after `b` took over at 51.
    let f = follow(60, 12345, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Rewind { fork: Lsn(50) }
    );
    // Same lsn range, different chain, below our position.
    let f = follow(55, 12345, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Rewind { fork: Lsn(50) }
    );
    // A standby ahead of the active on the active's own history.
    let f = follow(120, 1, ep(2, "b"), local().history);
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Rewind { fork: Lsn(100) }
    );
}

#[test]
fn refusals_name_the_reason() {
    let mut standby_here = local();
    standby_here.role = Role::Standby;
    standby_here.epoch = ep(3, "c");
    let f = follow(45, 45, ep(1, "a"), epoch1_only());
    assert_eq!(
        decide(&f, &standby_here, chain),
        Answer::Reject {
            reason: RejectReason::NotActive,
            active: Some(n("c"))
        }
    );
    let f = follow(45, 45, ep(3, "c"), epoch1_only());
    assert_eq!(
        decide(&f, &local(), chain),
        Answer::Reject {
            reason: RejectReason::StaleEpoch,
            active: Some(n("c"))
        }
    );
    let mut f = follow(45, 45, ep(1, "a"), epoch1_only());
    f.uid = Some(DomainUid([9; 16]));
    assert!(matches!(
        decide(&f, &local(), chain),
        Answer::Reject {
            reason: RejectReason::OtherIncarnation,
            ..
        }
    ));
}
