//! Unit tests of the gateway client's parts that do no I/O: package assembly, position
//! comparisons, the "not found" lookup and the messages it leads to, failure summaries.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::assembly::Assembly;
use super::config::{Error, Origin, Package};
use super::exchange::{summary, Fail};
use super::lookup::{reached, Got, Lookup, Miss};
use domsync_proto::gateway::{Refusal, Served};
use domsync_proto::model::Lsn;
use domsync_proto::model::{Epoch, NodeId, PolicyInfo, Position, MAX_POLICY_BYTES};

fn served(lsn: u64) -> Served {
    let node = NodeId::new("a").unwrap();
    let epoch = Epoch {
        term: 1,
        node: node.clone(),
    };
    Served {
        node,
        role: domsync_proto::model::Role::Standby,
        epoch: epoch.clone(),
        position: Position {
            epoch,
            lsn: Lsn(lsn),
            chain: 0,
        },
    }
}

fn info(content: &[u8]) -> PolicyInfo {
    PolicyInfo {
        name: "p".into(),
        version: 3,
        epoch: served(3).epoch,
        size: content.len() as u64,
        sha256: Sha256::digest(content).into(),
        installed: 0,
    }
}

#[test]
fn assembly_verifies_size_and_digest_and_stops_past_the_size() {
    let content = b"0123456789";
    let mut a = Assembly::begin(served(3), info(content)).unwrap();
    a.chunk(&content[..4]).unwrap();
    a.chunk(&content[4..]).unwrap();
    assert_eq!(&a.end().unwrap().content[..], content);

    let mut a = Assembly::begin(served(3), info(content)).unwrap();
    a.chunk(content).unwrap();
    assert!(matches!(a.chunk(b"x"), Err(Fail::Bad(_))), "past info.size");

    let mut a = Assembly::begin(served(3), info(content)).unwrap();
    a.chunk(&content[..9]).unwrap();
    assert!(a.end().is_err(), "short");

    let mut a = Assembly::begin(served(3), info(content)).unwrap();
    a.chunk(b"0123456780").unwrap();
    assert!(a.end().is_err(), "digest");

    let mut big = info(content);
    big.size = MAX_POLICY_BYTES as u64 + 1;
    assert!(Assembly::begin(served(3), big).is_err());
}

#[test]
fn positions_compare_by_epoch_then_lsn() {
    let mut later_epoch = served(1).position;
    later_epoch.epoch.term = 2;
    assert!(reached(&later_epoch, &served(9).position));
    assert!(reached(&served(9).position, &served(9).position));
    assert!(!reached(&served(8).position, &served(9).position));
}

fn at(node: &str, term: u64, lsn: u64) -> Served {
    let node = NodeId::new(node).unwrap();
    let epoch = Epoch {
        term,
        node: NodeId::new("a").unwrap(),
    };
    Served {
        node,
        role: domsync_proto::model::Role::Standby,
        epoch: epoch.clone(),
        position: Position {
            epoch,
            lsn: Lsn(lsn),
            chain: 0,
        },
    }
}

fn found(node: &str) -> Got {
    let content = b"0123456789";
    Got::Package(Package {
        info: info(content),
        content: Arc::new(content.to_vec()),
        served: at(node, 1, 3),
        origin: Origin::Fetched,
    })
}

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

#[test]
fn a_not_found_is_not_final_while_another_node_may_hold_the_item() {
    // The finding: a standby at lsn 0 said "not found" first; the next node has it.
    let mut lookup = Lookup::default();
    assert!(lookup
        .answer(n("a"), Ok(Got::NotFound(at("a", 1, 0))))
        .is_none());
    assert!(lookup
        .answer(n("b"), Err(Fail::Timeout("the connection")))
        .is_none());
    let got = lookup.answer(n("c"), Ok(found("c")));
    assert!(
        matches!(&got, Some(Got::Package(p)) if p.served.node == n("c")),
        "{got:?}"
    );
}

#[test]
fn when_no_node_has_it_the_not_found_at_the_highest_position_wins() {
    let mut lookup = Lookup::default();
    for (node, answer) in [
        ("a", Ok(Got::NotFound(at("a", 1, 7)))),
        ("b", Err(Fail::Behind("standby at 1@a/9".into()))),
        ("c", Ok(Got::NotFound(at("c", 2, 1)))),
        ("d", Err(Fail::Connect("refused".into()))),
        ("e", Ok(Got::NotFound(at("e", 2, 1)))),
        ("f", Err(Fail::Refused(Refusal::Forbidden))),
    ] {
        assert!(lookup.answer(n(node), answer).is_none());
    }
    let Miss::Absent { served, unreached } = lookup.finish() else {
        panic!("expected not found")
    };
    // Epoch before lsn; the first asked among equals; `Behind` was asked.
    assert_eq!(served.node, n("c"));
    assert_eq!(unreached, vec![n("d"), n("f")]);
    let err = Error::PolicyNotFound {
        domain: "gw".parse().unwrap(),
        name: "fw-rules".into(),
        served: Box::new(served),
        unreached,
    };
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.starts_with(
            "package fw-rules does not exist in domain gw (node c, standby, lsn 1; \
             nodes d, f could not be asked and may hold it); check the name"
        ),
        "{msg}"
    );
}

#[test]
fn with_every_node_behind_or_unreachable_nothing_is_said_not_to_exist() {
    let mut lookup = Lookup::default();
    assert!(lookup
        .answer(n("a"), Err(Fail::Behind("never synchronized".into())))
        .is_none());
    assert!(lookup
        .answer(n("b"), Err(Fail::Timeout("the connection")))
        .is_none());
    let Miss::Failed(failures) = lookup.finish() else {
        panic!("a not-found from nobody")
    };
    let nodes: Vec<_> = failures.iter().map(|(node, _)| node.clone()).collect();
    assert_eq!(nodes, vec![n("a"), n("b")]);
    assert!(matches!(Lookup::default().finish(), Miss::Failed(f) if f.is_empty()));
}

#[test]
fn a_single_node_not_asked_is_named() {
    let mut lookup = Lookup::default();
    lookup.answer(n("a"), Ok(Got::NotFound(at("a", 1, 2))));
    lookup.answer(n("b"), Err(Fail::Stream("reset".into())));
    let Miss::Absent { served, unreached } = lookup.finish() else {
        panic!("expected not found")
    };
    let err = Error::CrlNotFound {
        domain: "gw".parse().unwrap(),
        issuer: "CN=X".into(),
        served: Box::new(served),
        unreached,
    };
    let msg = err.to_string();
    assert!(
        msg.contains("(node a, standby, lsn 2; node b could not be asked and may hold it)"),
        "{msg}"
    );
}

#[test]
fn failures_summarize_on_one_line() {
    let s = summary(&[
        (NodeId::new("a").unwrap(), Fail::Timeout("the connection")),
        (NodeId::new("b").unwrap(), Fail::Refused(Refusal::Forbidden)),
    ]);
    assert!(!s.contains('\n'));
    assert!(s.starts_with("a: timed out waiting for the connection; b: refused: forbidden"));
}
