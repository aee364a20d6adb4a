//! Golden vectors for every wire message: replication ([`repl::Message`], ALPN
//! `domsync-repl/1`), gateway ([`gateway::Request`] and [`gateway::Response`], `domsync-gw/1`)
//! and administration ([`admin::Request`] and [`admin::Answer`], Unix socket and
//! `domsync-admin/1`).
//!
//! Each message shape has a named sample with a non-default value in every field (a few more
//! pin the `None` and empty shapes). The tests
//!
//! 1. encode each sample with the function and cap production uses and compare the frame byte
//!    for byte with `fixtures/wire/<protocol>/<name>.bin` at the repository root;
//! 2. decode that file with the protocol's decoder and require the sample back;
//! 3. require every fixture file to have a sample, so removing a sample is noticed;
//! 4. require the samples to cover every variant of every enum a message carries. The variant
//!    names come from exhaustive matches (the `variants!` declarations, no wildcard arm), so a
//!    new variant does not compile until it is named here, and then fails the coverage test
//!    until a sample carries it.
//!
//! With `DOMSYNC_BLESS=1` the golden tests write the fixtures from the samples instead of
//! failing on a difference (then check them as usual). A difference is a wire format change:
//! peers on the previous build could no longer talk to this one. See `fixtures/wire/README.md`.
//!
//! ```text
//! DOMSYNC_BLESS=1 cargo test -p domsync-proto --test golden_wire
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::time::Duration;

use domsync_proto::admin::{self, AdminError, PlacementState};
use domsync_proto::app::{self, AppError, AtLeast, Condition, KeyRange};
use domsync_proto::codec::{self, CodecError};
use domsync_proto::gateway::{self, Query, Refusal};
use domsync_proto::model::Heard;
use domsync_proto::model::{
    Crl, CrlNumber, DistinguishedName, DomainId, DomainUid, Epoch, HeldCrl, HistoryEntry,
    IssuerCert, IssuerKey, Lsn, NodeId, Op, Policy, PolicyInfo, Position, Role, SnapshotItem,
    StateDigest, Version,
};
use domsync_proto::repl::{decode_message, encode_message, SnapshotWhy};
use domsync_proto::repl::{
    Ack, Answer, Durability, Follow, Message, ProbeAnswer, RecordBytes, RejectReason,
    SnapshotHeader, SyncStatus, TakeOver,
};

/// The root of the wire fixtures: one sub-directory per protocol, and the README.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/wire");

/// A sample message and its name: the fixture is `<name>.bin`.
type Samples<T> = Vec<(&'static str, T)>;

// ---- variant names ----

/// Declares `fn $name(&$ty) -> &'static str`, an exhaustive `match` naming the variant of a
/// value, and `const $all`, every name its arms return. Both come from the same arms, so a
/// variant can neither be left out of the match (it would not compile) nor out of the list.
macro_rules! variants {
    ($(#[$doc:meta])* fn $name:ident($ty:ty) -> $all:ident { $($pat:pat => $label:literal,)+ }) => {
        $(#[$doc])*
        fn $name(value: &$ty) -> &'static str {
            match value {
                $($pat => $label,)+
            }
        }

        #[doc = concat!("Every name [`", stringify!($name), "`] returns.")]
        const $all: &[&str] = &[$($label),+];
    };
}

variants! {
    /// A replication message; the probe answer and the switchover answer are named per shape.
    fn message_variant(Message) -> MESSAGE {
        Message::Follow(_) => "Message::Follow",
        Message::Answer(_) => "Message::Answer",
        Message::Records(_) => "Message::Records",
        Message::SnapshotBegin(_) => "Message::SnapshotBegin",
        Message::SnapshotRows(_) => "Message::SnapshotRows",
        Message::SnapshotEnd { .. } => "Message::SnapshotEnd",
        Message::Heartbeat { .. } => "Message::Heartbeat",
        Message::Ack(_) => "Message::Ack",
        Message::Probe { .. } => "Message::Probe",
        Message::ProbeAnswer(Some(_)) => "Message::ProbeAnswer(Some)",
        Message::ProbeAnswer(None) => "Message::ProbeAnswer(None)",
        Message::TakeOver(_) => "Message::TakeOver",
        Message::TookOver(Ok(_)) => "Message::TookOver(Ok)",
        Message::TookOver(Err(_)) => "Message::TookOver(Err)",
    }
}

variants! {
    /// The active's answer to `Follow`.
    fn answer_variant(Answer) -> ANSWER {
        Answer::Stream { .. } => "Answer::Stream",
        Answer::Snapshot { .. } => "Answer::Snapshot",
        Answer::Rewind { .. } => "Answer::Rewind",
        Answer::Reject { .. } => "Answer::Reject",
    }
}

variants! {
    /// Why a snapshot is sent.
    fn snapshot_why_variant(SnapshotWhy) -> SNAPSHOT_WHY {
        SnapshotWhy::NeverSynchronized => "SnapshotWhy::NeverSynchronized",
        SnapshotWhy::BehindRetention => "SnapshotWhy::BehindRetention",
    }
}

variants! {
    /// Why an active refuses a standby.
    fn reject_reason_variant(RejectReason) -> REJECT_REASON {
        RejectReason::NotActive => "RejectReason::NotActive",
        RejectReason::UnknownDomain => "RejectReason::UnknownDomain",
        RejectReason::OtherIncarnation => "RejectReason::OtherIncarnation",
        RejectReason::StaleEpoch => "RejectReason::StaleEpoch",
        RejectReason::NotReplica => "RejectReason::NotReplica",
    }
}

variants! {
    /// A snapshot row.
    fn snapshot_item_variant(SnapshotItem) -> SNAPSHOT_ITEM {
        SnapshotItem::Kv { .. } => "SnapshotItem::Kv",
        SnapshotItem::Policy(_) => "SnapshotItem::Policy",
        SnapshotItem::LegacyCrl(_) => "SnapshotItem::LegacyCrl",
        SnapshotItem::Issuer(_) => "SnapshotItem::Issuer",
        SnapshotItem::Crl(_) => "SnapshotItem::Crl",
        SnapshotItem::KvAt { .. } => "SnapshotItem::KvAt",
    }
}

variants! {
    /// A replica's role (in probe answers, gateway answers and the admin status).
    fn role_variant(Role) -> ROLE {
        Role::Active => "Role::Active",
        Role::Standby => "Role::Standby",
    }
}

variants! {
    /// The durability a switchover hands over.
    fn durability_variant(Durability) -> DURABILITY {
        Durability::Local => "Durability::Local",
        Durability::Standby => "Durability::Standby",
        Durability::All => "Durability::All",
    }
}

variants! {
    /// What a gateway asks.
    fn query_variant(Query) -> QUERY {
        Query::ListPolicies => "Query::ListPolicies",
        Query::GetPolicy { .. } => "Query::GetPolicy",
        Query::ListCrls => "Query::ListCrls",
        Query::GetCrl { .. } => "Query::GetCrl",
        Query::Watch { .. } => "Query::Watch",
        Query::GetCrlOf { .. } => "Query::GetCrlOf",
        Query::ListIssuers => "Query::ListIssuers",
    }
}

variants! {
    /// A gateway answer frame.
    fn response_variant(gateway::Response) -> RESPONSE {
        gateway::Response::Policies { .. } => "Response::Policies",
        gateway::Response::PolicyBegin { .. } => "Response::PolicyBegin",
        gateway::Response::Chunk(_) => "Response::Chunk",
        gateway::Response::PolicyEnd => "Response::PolicyEnd",
        gateway::Response::NotModified { .. } => "Response::NotModified",
        gateway::Response::NotFound { .. } => "Response::NotFound",
        gateway::Response::Behind { .. } => "Response::Behind",
        gateway::Response::Crls { .. } => "Response::Crls",
        gateway::Response::Crl { .. } => "Response::Crl",
        gateway::Response::Removed { .. } => "Response::Removed",
        gateway::Response::Refused(_) => "Response::Refused",
        gateway::Response::Issuers { .. } => "Response::Issuers",
    }
}

variants! {
    /// Why a gateway request was refused.
    fn refusal_variant(Refusal) -> REFUSAL {
        Refusal::Forbidden => "Refusal::Forbidden",
        Refusal::BadRequest(_) => "Refusal::BadRequest",
        Refusal::Busy(_) => "Refusal::Busy",
        Refusal::Unavailable(_) => "Refusal::Unavailable",
    }
}

variants! {
    /// An administrator's request.
    fn admin_request_variant(admin::Request) -> ADMIN_REQUEST {
        admin::Request::Status => "Request::Status",
        admin::Request::Promote { .. } => "Request::Promote",
        admin::Request::Switchover { .. } => "Request::Switchover",
        admin::Request::Write { .. } => "Request::Write",
        admin::Request::Collisions { .. } => "Request::Collisions",
        admin::Request::CollisionShow { .. } => "Request::CollisionShow",
        admin::Request::Reapply { .. } => "Request::Reapply",
        admin::Request::Discard { .. } => "Request::Discard",
        admin::Request::DomainAdd(_) => "Request::DomainAdd",
        admin::Request::DomainRemove { .. } => "Request::DomainRemove",
        admin::Request::Plan => "Request::Plan",
        admin::Request::Trust { .. } => "Request::Trust",
        admin::Request::Compact { .. } => "Request::Compact",
    }
}

variants! {
    /// An answer to an administrator.
    fn admin_answer_variant(admin::Answer) -> ADMIN_ANSWER {
        admin::Answer::Status(_) => "Answer::Status",
        admin::Answer::Promoted { .. } => "Answer::Promoted",
        admin::Answer::SwitchedOver { .. } => "Answer::SwitchedOver",
        admin::Answer::Written { .. } => "Answer::Written",
        admin::Answer::Collisions { .. } => "Answer::Collisions",
        admin::Answer::Collision { .. } => "Answer::Collision",
        admin::Answer::Reapplied { .. } => "Answer::Reapplied",
        admin::Answer::Discarded { .. } => "Answer::Discarded",
        admin::Answer::Error(_) => "Answer::Error",
        admin::Answer::DomainAdded { .. } => "Answer::DomainAdded",
        admin::Answer::DomainRemoved { .. } => "Answer::DomainRemoved",
        admin::Answer::Plan(_) => "Answer::Plan",
        admin::Answer::Trust(_) => "Answer::Trust",
        admin::Answer::Compacted { .. } => "Answer::Compacted",
    }
}

variants! {
    /// Why an administrator's request failed.
    fn admin_error_variant(AdminError) -> ADMIN_ERROR {
        AdminError::Refused(_) => "AdminError::Refused",
        AdminError::UnknownDomain { .. } => "AdminError::UnknownDomain",
        AdminError::NotActive { .. } => "AdminError::NotActive",
        AdminError::NoSuchCollision { .. } => "AdminError::NoSuchCollision",
        AdminError::BadRequest(_) => "AdminError::BadRequest",
        AdminError::Failed(_) => "AdminError::Failed",
    }
}

variants! {
    /// An application's request.
    fn app_request_variant(app::Request) -> APP_REQUEST {
        app::Request::Hello => "app::Request::Hello",
        app::Request::Get { .. } => "app::Request::Get",
        app::Request::Scan(_) => "app::Request::Scan",
        app::Request::Txn(_) => "app::Request::Txn",
        app::Request::Watch { .. } => "app::Request::Watch",
        app::Request::GetPolicy { .. } => "app::Request::GetPolicy",
        app::Request::GetCrl { .. } => "app::Request::GetCrl",
    }
}

variants! {
    /// An answer to an application.
    fn app_answer_variant(app::Answer) -> APP_ANSWER {
        app::Answer::Hello { .. } => "app::Answer::Hello",
        app::Answer::Value { .. } => "app::Answer::Value",
        app::Answer::Page(_) => "app::Answer::Page",
        app::Answer::Committed { .. } => "app::Answer::Committed",
        app::Answer::Watching { .. } => "app::Answer::Watching",
        app::Answer::Events { .. } => "app::Answer::Events",
        app::Answer::Policy { .. } => "app::Answer::Policy",
        app::Answer::Crl { .. } => "app::Answer::Crl",
        app::Answer::Error(_) => "app::Answer::Error",
    }
}

variants! {
    /// Why an application's request failed.
    fn app_error_variant(AppError) -> APP_ERROR {
        AppError::Forbidden { .. } => "AppError::Forbidden",
        AppError::ReadOnly { .. } => "AppError::ReadOnly",
        AppError::NotActive { .. } => "AppError::NotActive",
        AppError::Behind { .. } => "AppError::Behind",
        AppError::Conflict { .. } => "AppError::Conflict",
        AppError::ContinuationGone { .. } => "AppError::ContinuationGone",
        AppError::Compacted { .. } => "AppError::Compacted",
        AppError::Diverged { .. } => "AppError::Diverged",
        AppError::Refused(_) => "AppError::Refused",
        AppError::Unconfirmed { .. } => "AppError::Unconfirmed",
        AppError::NoSuchPolicy { .. } => "AppError::NoSuchPolicy",
        AppError::BadRequest(_) => "AppError::BadRequest",
        AppError::Busy(_) => "AppError::Busy",
        AppError::Unavailable(_) => "AppError::Unavailable",
    }
}

variants! {
    /// A condition of an application's transaction.
    fn condition_variant(Condition) -> CONDITION {
        Condition::Absent { .. } => "Condition::Absent",
        Condition::Version { .. } => "Condition::Version",
        Condition::Value { .. } => "Condition::Value",
    }
}

variants! {
    /// How a domain is placed on a node.
    fn placement_variant(PlacementState) -> PLACEMENT {
        PlacementState::Serving => "PlacementState::Serving",
        PlacementState::Waiting(_) => "PlacementState::Waiting",
        PlacementState::Failed(_) => "PlacementState::Failed",
    }
}

variants! {
    /// How a standby stands against its active.
    fn sync_status_variant(SyncStatus) -> SYNC_STATUS {
        SyncStatus::NeverSynchronized => "SyncStatus::NeverSynchronized",
        SyncStatus::Synchronized => "SyncStatus::Synchronized",
        SyncStatus::Lagging { .. } => "SyncStatus::Lagging",
        SyncStatus::Advanced { .. } => "SyncStatus::Advanced",
        SyncStatus::Collision { .. } => "SyncStatus::Collision",
    }
}

variants! {
    /// A change of a write or an archived record.
    fn op_variant(Op) -> OP {
        Op::Put { .. } => "Op::Put",
        Op::Delete { .. } => "Op::Delete",
        Op::InstallPolicy { .. } => "Op::InstallPolicy",
        Op::RemovePolicy { .. } => "Op::RemovePolicy",
        Op::PutLegacyCrl(_) => "Op::PutLegacyCrl",
        Op::RemoveLegacyCrl { .. } => "Op::RemoveLegacyCrl",
        Op::AddIssuer(_) => "Op::AddIssuer",
        Op::RemoveIssuer { .. } => "Op::RemoveIssuer",
        Op::PutCrl { .. } => "Op::PutCrl",
        Op::RemoveCrl { .. } => "Op::RemoveCrl",
    }
}

variants! {
    /// A node address of a placement plan (serde encodes the two shapes differently).
    fn socket_addr_variant(SocketAddr) -> SOCKET_ADDR {
        SocketAddr::V4(_) => "SocketAddr::V4",
        SocketAddr::V6(_) => "SocketAddr::V6",
    }
}

// ---- what each sample covers ----
//
// These walks name the variant of every enum a message carries. They match exhaustively too,
// so a new message variant makes its author decide what it carries.

/// The variant names in a replication message.
fn repl_coverage(m: &Message) -> Vec<&'static str> {
    let mut out = vec![message_variant(m)];
    match m {
        Message::Answer(a) => {
            out.push(answer_variant(a));
            match a {
                Answer::Snapshot { why } => out.push(snapshot_why_variant(why)),
                Answer::Reject { reason, .. } => out.push(reject_reason_variant(reason)),
                Answer::Stream { .. } | Answer::Rewind { .. } => {}
            }
        }
        Message::SnapshotRows(rows) => out.extend(rows.iter().map(snapshot_item_variant)),
        Message::ProbeAnswer(Some(p)) => out.push(role_variant(&p.role)),
        Message::TakeOver(t) => out.push(durability_variant(&t.durability)),
        Message::Follow(_)
        | Message::Records(_)
        | Message::SnapshotBegin(_)
        | Message::SnapshotEnd { .. }
        | Message::Heartbeat { .. }
        | Message::Ack(_)
        | Message::Probe { .. }
        | Message::ProbeAnswer(None)
        | Message::TookOver(_) => {}
    }
    out
}

/// The variant names in a gateway request.
fn gateway_request_coverage(r: &gateway::Request) -> Vec<&'static str> {
    vec![query_variant(&r.query)]
}

/// The variant names in a gateway answer frame.
fn gateway_response_coverage(r: &gateway::Response) -> Vec<&'static str> {
    use gateway::Response as R;
    let mut out = vec![response_variant(r)];
    match r {
        R::Policies { served, .. }
        | R::PolicyBegin { served, .. }
        | R::NotModified { served }
        | R::NotFound { served }
        | R::Behind { served }
        | R::Crls { served, .. }
        | R::Crl { served, .. }
        | R::Issuers { served, .. }
        | R::Removed { served, .. } => out.push(role_variant(&served.role)),
        R::Refused(refusal) => out.push(refusal_variant(refusal)),
        R::Chunk(_) | R::PolicyEnd => {}
    }
    out
}

/// The variant names in an administrator's request.
fn admin_request_coverage(r: &admin::Request) -> Vec<&'static str> {
    let mut out = vec![admin_request_variant(r)];
    match r {
        admin::Request::Write { ops, .. } => out.extend(ops.iter().map(op_variant)),
        admin::Request::Status
        | admin::Request::Promote { .. }
        | admin::Request::Switchover { .. }
        | admin::Request::Collisions { .. }
        | admin::Request::CollisionShow { .. }
        | admin::Request::Reapply { .. }
        | admin::Request::Discard { .. }
        | admin::Request::DomainAdd(_)
        | admin::Request::DomainRemove { .. }
        | admin::Request::Plan
        | admin::Request::Trust { .. }
        | admin::Request::Compact { .. } => {}
    }
    out
}

/// The variant names in an answer to an administrator.
fn admin_answer_coverage(a: &admin::Answer) -> Vec<&'static str> {
    let mut out = vec![admin_answer_variant(a)];
    match a {
        admin::Answer::Status(status) => {
            for d in &status.domains {
                out.push(placement_variant(&d.placement));
                out.extend(d.replica.iter().map(|r| role_variant(&r.role)));
                out.extend(d.standbys.iter().map(|s| sync_status_variant(&s.status)));
                out.extend(d.follower.iter().map(|f| sync_status_variant(&f.status)));
            }
        }
        admin::Answer::Collision { ops, .. } => out.extend(ops.iter().map(op_variant)),
        admin::Answer::Error(e) => out.push(admin_error_variant(e)),
        admin::Answer::Plan(plan) => {
            out.extend(plan.nodes.iter().map(|n| socket_addr_variant(&n.address)));
        }
        admin::Answer::Promoted { .. }
        | admin::Answer::SwitchedOver { .. }
        | admin::Answer::Written { .. }
        | admin::Answer::Collisions { .. }
        | admin::Answer::Reapplied { .. }
        | admin::Answer::Discarded { .. }
        | admin::Answer::DomainAdded { .. }
        | admin::Answer::DomainRemoved { .. }
        | admin::Answer::Trust(_)
        | admin::Answer::Compacted { .. } => {}
    }
    out
}

/// The variant names in an application's request.
fn app_request_coverage(r: &app::Request) -> Vec<&'static str> {
    let mut out = vec![app_request_variant(r)];
    match r {
        app::Request::Txn(txn) => {
            out.extend(txn.conditions.iter().map(condition_variant));
            out.extend(txn.ops.iter().map(op_variant));
        }
        app::Request::Hello
        | app::Request::Get { .. }
        | app::Request::Scan(_)
        | app::Request::Watch { .. }
        | app::Request::GetPolicy { .. }
        | app::Request::GetCrl { .. } => {}
    }
    out
}

/// The variant names in an answer to an application.
fn app_answer_coverage(a: &app::Answer) -> Vec<&'static str> {
    let mut out = vec![app_answer_variant(a)];
    match a {
        app::Answer::Hello { domains, .. } => {
            for d in domains {
                out.push(role_variant(&d.role));
            }
        }
        app::Answer::Error(e) => out.push(app_error_variant(e)),
        app::Answer::Value { served, .. }
        | app::Answer::Watching { served, .. }
        | app::Answer::Policy { served, .. }
        | app::Answer::Crl { served, .. } => out.push(role_variant(&served.role)),
        app::Answer::Page(page) => out.push(role_variant(&page.served.role)),
        app::Answer::Committed { .. } | app::Answer::Events { .. } => {}
    }
    out
}

// ---- sample values ----

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap_or_else(|e| panic!("sample node name {name:?}: {e}"))
}

fn domain(name: &str) -> DomainId {
    DomainId::new(name).unwrap_or_else(|e| panic!("sample domain name {name:?}: {e}"))
}

fn epoch(term: u64, node_name: &str) -> Epoch {
    let node = node(node_name);
    Epoch { term, node }
}

fn position(term: u64, node_name: &str, lsn: u64, chain: u32) -> Position {
    Position {
        epoch: epoch(term, node_name),
        lsn: Lsn(lsn),
        chain,
    }
}

fn uid() -> DomainUid {
    DomainUid(std::array::from_fn(|i| 0xa0 + i as u8))
}

fn history() -> Vec<HistoryEntry> {
    vec![
        HistoryEntry {
            epoch: epoch(1, "node-a"),
            first_lsn: Lsn(1),
        },
        HistoryEntry {
            epoch: epoch(3, "node-b"),
            first_lsn: Lsn(129),
        },
    ]
}

fn heard(node_name: &str, term: u64, ago_ms: u64) -> Heard {
    Heard {
        node: node(node_name),
        epoch: epoch(term, node_name),
        ago_ms,
    }
}

fn policy_info(name: &str, version: u64, size: u64) -> PolicyInfo {
    PolicyInfo {
        name: name.into(),
        version,
        epoch: epoch(3, "node-b"),
        size,
        sha256: std::array::from_fn(|i| 0xff - i as u8),
        installed: 1_700_000_123_456_789,
    }
}

/// A CRL with every field set. The DER bytes are a stand-in: the wire carries them opaque, and
/// the store parses real ones (whose `Op` encoding `fixtures/records/` pins).
fn crl() -> Crl {
    Crl {
        issuer: "CN=Fixture CA 1,O=domsync".into(),
        number: CrlNumber(vec![0x01, 0x2c]),
        this_update: 1_700_000_000,
        next_update: Some(1_700_604_800),
        der: vec![0x30, 0x82, 0x01, 0x0a, 0xde, 0xad, 0xbe, 0xef],
    }
}

fn served(role: Role) -> gateway::Served {
    gateway::Served {
        node: node("node-b"),
        role,
        epoch: epoch(4, "node-a"),
        position: position(3, "node-b", 300, 0xdead_beef),
    }
}

/// One op of each kind, in variant order.
fn every_op() -> Vec<Op> {
    vec![
        Op::Put {
            key: b"ntp/server".to_vec(),
            value: b"10.0.0.1".to_vec(),
        },
        Op::Delete {
            key: b"ntp/backup".to_vec(),
        },
        Op::InstallPolicy {
            name: "fw-rules.v1".into(),
            content: (0u8..=255).collect(),
        },
        Op::RemovePolicy {
            name: "fw-rules.v0".into(),
        },
        Op::PutLegacyCrl(crl()),
        Op::RemoveLegacyCrl {
            issuer: "CN=Old CA,O=domsync".into(),
        },
    ]
}

/// The DER of `CN=<cn>` (one RDN, UTF8String).
fn dn(cn: &str) -> DistinguishedName {
    let cn = cn.as_bytes();
    let atv_len = 5 + 2 + cn.len();
    let mut der = vec![0x30, (atv_len + 4) as u8, 0x31, (atv_len + 2) as u8];
    der.extend([
        0x30,
        atv_len as u8,
        0x06,
        0x03,
        0x55,
        0x04,
        0x03,
        0x0c,
        cn.len() as u8,
    ]);
    der.extend_from_slice(cn);
    DistinguishedName::from_der(&der).unwrap()
}

fn issuer_cert() -> IssuerCert {
    IssuerCert {
        subject: dn("Fixture CA 1"),
        sha256: std::array::from_fn(|i| i as u8),
        not_after: 4_102_444_800,
        der: vec![0x30, 0x82, 0x02, 0x00, 0xca, 0xfe],
    }
}

fn held_crl(delta: bool) -> HeldCrl {
    HeldCrl {
        issuer: dn("Fixture CA 1"),
        number: CrlNumber(vec![0x01, 0x2d]),
        delta_base: delta.then(|| CrlNumber(vec![0x01, 0x2c])),
        this_update: 1_700_000_000,
        next_update: Some(1_700_604_800),
        verified_by: Some(std::array::from_fn(|i| i as u8)),
        der: vec![0x30, 0x82, 0x01, 0x0a, 0xde, 0xad, 0xbe, 0xef],
    }
}

/// The ops of issuer certificates and verified CRLs, in variant order.
fn trust_ops() -> Vec<Op> {
    vec![
        Op::AddIssuer(issuer_cert()),
        Op::RemoveIssuer {
            subject: dn("Old CA"),
            sha256: [0xab; 32],
        },
        Op::PutCrl {
            crl: held_crl(true),
            allow_stale: false,
        },
        Op::RemoveCrl {
            issuer: dn("Fixture CA 1"),
            number: CrlNumber(vec![0x07]),
        },
    ]
}

fn archived(id: u64, lsn: u64) -> admin::ArchivedInfo {
    admin::ArchivedInfo {
        id,
        epoch: epoch(2, "node-c"),
        lsn: Lsn(lsn),
        time: 1_700_000_222_333_444,
        ops: 3,
        bytes: 4_242,
    }
}

// ---- samples: replication ----

fn follow() -> Follow {
    Follow {
        domain: domain("tenant-7"),
        uid: Some(uid()),
        position: position(3, "node-b", 300, 0xdead_beef),
        epoch: epoch(4, "node-a"),
        history_tail: history(),
        collision_fork: Some(Lsn(200)),
    }
}

fn reject(reason: RejectReason, active: Option<&str>) -> Message {
    let active = active.map(node);
    Message::Answer(Answer::Reject { reason, active })
}

fn take_over(durability: Durability) -> Message {
    Message::TakeOver(TakeOver {
        domain: domain("tenant-7"),
        epoch: epoch(5, "node-b"),
        last: position(4, "node-a", 310, 0x0bad_f00d),
        durability,
        standbys: vec![node("node-a"), node("node-c")],
    })
}

/// The replication samples, written to `fixtures/wire/repl/`.
fn repl_samples() -> Samples<Message> {
    let fresh = Follow {
        uid: None,
        position: Position::empty(node("node-c")),
        epoch: epoch(0, "node-c"),
        history_tail: vec![],
        collision_fork: None,
        ..follow()
    };
    let rows = vec![
        SnapshotItem::Kv {
            key: b"ntp/server".to_vec(),
            value: b"10.0.0.1".to_vec(),
        },
        SnapshotItem::Policy(Policy {
            info: policy_info("fw-rules.v1", 290, 4),
            content: vec![1, 2, 3, 4],
        }),
        SnapshotItem::LegacyCrl(crl()),
    ];
    vec![
        ("follow", Message::Follow(follow())),
        ("follow-never-synchronized", Message::Follow(fresh)),
        (
            "answer-stream",
            Message::Answer(Answer::Stream { from: Lsn(301) }),
        ),
        (
            "answer-snapshot-never-synchronized",
            Message::Answer(Answer::Snapshot {
                why: SnapshotWhy::NeverSynchronized,
            }),
        ),
        (
            "answer-snapshot-behind-retention",
            Message::Answer(Answer::Snapshot {
                why: SnapshotWhy::BehindRetention,
            }),
        ),
        (
            "answer-rewind",
            Message::Answer(Answer::Rewind { fork: Lsn(250) }),
        ),
        (
            "answer-reject-not-active",
            reject(RejectReason::NotActive, Some("node-a")),
        ),
        (
            "answer-reject-unknown-domain",
            reject(RejectReason::UnknownDomain, None),
        ),
        (
            "answer-reject-other-incarnation",
            reject(RejectReason::OtherIncarnation, Some("node-b")),
        ),
        (
            "answer-reject-stale-epoch",
            reject(RejectReason::StaleEpoch, Some("node-c")),
        ),
        (
            "answer-reject-not-replica",
            reject(RejectReason::NotReplica, Some("node-a")),
        ),
        (
            // Opaque record frames (their own encoding is pinned by `fixtures/records/`); the
            // second is 256 bytes long, so its length takes two bytes.
            "records",
            Message::Records(vec![
                RecordBytes(vec![0x01, 0x02, 0x03]),
                RecordBytes((0u8..=255).collect()),
            ]),
        ),
        (
            "snapshot-begin",
            Message::SnapshotBegin(SnapshotHeader {
                uid: uid(),
                position: position(3, "node-b", 300, 0xdead_beef),
                epoch: epoch(4, "node-a"),
                history: history(),
                digest: StateDigest(std::array::from_fn(|i| (i as u8).wrapping_mul(7))),
            }),
        ),
        ("snapshot-rows", Message::SnapshotRows(rows)),
        (
            "snapshot-rows-trust",
            Message::SnapshotRows(vec![
                SnapshotItem::Issuer(issuer_cert()),
                SnapshotItem::Crl(held_crl(false)),
            ]),
        ),
        (
            "snapshot-rows-versioned",
            Message::SnapshotRows(vec![SnapshotItem::KvAt {
                key: b"rule/7".to_vec(),
                value: b"allow 443".to_vec(),
                version: Lsn(299),
            }]),
        ),
        ("snapshot-end", Message::SnapshotEnd { rows: 1_000_003 }),
        (
            "heartbeat",
            Message::Heartbeat {
                position: position(4, "node-a", 310, 0x0bad_f00d),
                time: 1_700_000_555_666_777,
            },
        ),
        (
            "ack",
            Message::Ack(Ack {
                received: Lsn(312),
                durable: Lsn(311),
                applied: Lsn(310),
            }),
        ),
        (
            "probe",
            Message::Probe {
                domain: domain("tenant-7"),
                epoch: Some(epoch(4, "node-a")),
            },
        ),
        (
            "probe-from-standby",
            Message::Probe {
                domain: domain("tenant-8"),
                epoch: None,
            },
        ),
        (
            "probe-answer-standby",
            Message::ProbeAnswer(Some(ProbeAnswer {
                role: Role::Standby,
                epoch: epoch(4, "node-a"),
                position: position(4, "node-a", 305, 0x1234_5678),
                heard_active: Some(heard("node-a", 4, 1_500)),
            })),
        ),
        (
            "probe-answer-active",
            Message::ProbeAnswer(Some(ProbeAnswer {
                role: Role::Active,
                epoch: epoch(4, "node-a"),
                position: position(4, "node-a", 310, 0x0bad_f00d),
                heard_active: None,
            })),
        ),
        ("probe-answer-no-replica", Message::ProbeAnswer(None)),
        ("take-over-local", take_over(Durability::Local)),
        ("take-over-standby", take_over(Durability::Standby)),
        ("take-over-all", take_over(Durability::All)),
        (
            "took-over",
            Message::TookOver(Ok(position(4, "node-a", 310, 0x0bad_f00d))),
        ),
        (
            "took-over-refused",
            Message::TookOver(Err("node-c holds lsn 309, not 310".into())),
        ),
    ]
}

// ---- samples: gateway ----

fn gateway_request(query: Query) -> gateway::Request {
    gateway::Request {
        domain: domain("tenant-7"),
        seen: vec![
            (domain("tenant-7"), heard("node-a", 4, 250)),
            (domain("tenant-8"), heard("node-b", 2, 60_000)),
        ],
        query,
    }
}

fn version() -> Version {
    Version {
        epoch: epoch(3, "node-b"),
        lsn: Lsn(290),
    }
}

/// The gateway requests, written to `fixtures/wire/gateway/request-*.bin`.
fn gateway_requests() -> Samples<gateway::Request> {
    let unconditional = Query::GetPolicy {
        name: "fw-rules.v1".into(),
        if_newer_than: None,
        at_least: None,
        wait_ms: 0,
    };
    vec![
        (
            "request-list-policies",
            gateway_request(Query::ListPolicies),
        ),
        (
            "request-get-policy",
            gateway_request(Query::GetPolicy {
                name: "fw-rules.v1".into(),
                if_newer_than: Some(version()),
                at_least: Some(position(4, "node-a", 310, 0x0bad_f00d)),
                wait_ms: 2_500,
            }),
        ),
        (
            "request-get-policy-unconditional",
            gateway::Request {
                seen: vec![],
                ..gateway_request(unconditional)
            },
        ),
        ("request-list-crls", gateway_request(Query::ListCrls)),
        (
            "request-get-crl-of-der-delta",
            gateway_request(Query::GetCrlOf {
                issuer: IssuerKey::Der(dn("Fixture CA 1").der().to_vec()),
                delta: true,
                if_newer_than: Some(CrlNumber(vec![0x01, 0x2c])),
            }),
        ),
        (
            "request-get-crl-of-text",
            gateway_request(Query::GetCrlOf {
                issuer: IssuerKey::Text("CN=Fixture CA 1".into()),
                delta: false,
                if_newer_than: None,
            }),
        ),
        ("request-list-issuers", gateway_request(Query::ListIssuers)),
        (
            "request-get-crl",
            gateway_request(Query::GetCrl {
                issuer: "CN=Fixture CA 1,O=domsync".into(),
                if_newer_than: Some(CrlNumber(vec![0x01, 0x2b])),
            }),
        ),
        (
            "request-watch",
            gateway_request(Query::Watch {
                policies: vec![
                    ("fw-rules.v1".into(), Some(version())),
                    ("ids-rules".into(), None),
                ],
                crls: vec![
                    (
                        "CN=Fixture CA 1,O=domsync".into(),
                        Some(CrlNumber(vec![0x01, 0x2c])),
                    ),
                    ("CN=Fixture CA 2,O=domsync".into(), None),
                ],
            }),
        ),
    ]
}

/// The gateway answer frames, written to `fixtures/wire/gateway/response-*.bin`.
fn gateway_responses() -> Samples<gateway::Response> {
    use gateway::Response as R;
    let crl_infos = vec![
        gateway::CrlInfo::from(&crl()),
        gateway::CrlInfo {
            issuer: "CN=Fixture CA 2,O=domsync".into(),
            number: CrlNumber(vec![0x07]),
            this_update: 1_690_000_000,
            next_update: None,
            size: 70_000,
        },
    ];
    vec![
        (
            "response-policies",
            R::Policies {
                served: served(Role::Active),
                list: vec![
                    policy_info("fw-rules.v1", 290, 1_048_576),
                    policy_info("ids-rules", 17, 300),
                ],
            },
        ),
        (
            "response-policy-begin",
            R::PolicyBegin {
                served: served(Role::Standby),
                info: policy_info("fw-rules.v1", 290, 256),
            },
        ),
        ("response-chunk", R::Chunk((0u8..=255).collect())),
        ("response-policy-end", R::PolicyEnd),
        (
            "response-not-modified",
            R::NotModified {
                served: served(Role::Active),
            },
        ),
        (
            "response-not-found",
            R::NotFound {
                served: served(Role::Standby),
            },
        ),
        (
            "response-behind",
            R::Behind {
                served: served(Role::Standby),
            },
        ),
        (
            "response-crls",
            R::Crls {
                served: served(Role::Active),
                list: crl_infos,
            },
        ),
        (
            "response-crl",
            R::Crl {
                served: served(Role::Active),
                crl: crl(),
            },
        ),
        (
            "response-issuers",
            R::Issuers {
                served: served(Role::Standby),
                list: vec![issuer_cert()],
            },
        ),
        (
            "response-removed",
            R::Removed {
                served: served(Role::Standby),
                name: "fw-rules.v1".into(),
            },
        ),
        ("response-refused-forbidden", R::Refused(Refusal::Forbidden)),
        (
            "response-refused-bad-request",
            R::Refused(Refusal::BadRequest("more than 256 names".into())),
        ),
        (
            "response-refused-busy",
            R::Refused(Refusal::Busy("too many watches".into())),
        ),
        (
            "response-refused-unavailable",
            R::Refused(Refusal::Unavailable("store read failed".into())),
        ),
    ]
}

// ---- samples: administration ----

/// The administrator's requests, written to `fixtures/wire/admin/request-*.bin`.
fn admin_requests() -> Samples<admin::Request> {
    use admin::Request as R;
    let d = || domain("tenant-7");
    let spec = admin::DomainSpec {
        name: "tenant-9".into(),
        replicas: vec!["node-a".into(), "node-b".into(), "node-c".into()],
        durability: Some("all".into()),
        gateways: vec!["gw-1".into(), "gw-2".into()],
        retention_bytes: Some(64 * 1024 * 1024),
        weight: Some(300),
        region: Some("eu-west".into()),
    };
    let minimal = admin::DomainSpec {
        name: "tenant-10".into(),
        replicas: vec!["node-a".into()],
        ..admin::DomainSpec::default()
    };
    vec![
        ("request-status", R::Status),
        (
            "request-promote",
            R::Promote {
                domain: d(),
                force: true,
            },
        ),
        (
            "request-switchover",
            R::Switchover {
                domain: d(),
                to: node("node-b"),
            },
        ),
        (
            "request-write",
            R::Write {
                domain: d(),
                ops: every_op(),
            },
        ),
        (
            "request-write-trust",
            R::Write {
                domain: d(),
                ops: trust_ops(),
            },
        ),
        ("request-trust", R::Trust { domain: d() }),
        ("request-compact", R::Compact { domain: d() }),
        ("request-collisions", R::Collisions { domain: d() }),
        (
            "request-collision-show",
            R::CollisionShow {
                domain: d(),
                id: 300,
            },
        ),
        (
            "request-reapply",
            R::Reapply {
                domain: d(),
                id: 301,
            },
        ),
        (
            "request-discard",
            R::Discard {
                domain: d(),
                id: 302,
            },
        ),
        ("request-domain-add", R::DomainAdd(spec)),
        ("request-domain-add-defaults", R::DomainAdd(minimal)),
        ("request-domain-remove", R::DomainRemove { domain: d() }),
        ("request-plan", R::Plan),
    ]
}

/// A node status showing every placement state and every sync status.
fn node_status() -> admin::NodeStatus {
    use admin::{DomainReport, FollowerState, Lag, ReplicaState, StandbyState};
    let lag = Lag {
        records: 12,
        bytes: 4_096,
        ms: 1_500,
    };
    let standby = |name: &str, status: SyncStatus, lag: Lag, connected: bool| StandbyState {
        node: node(name),
        status,
        lag,
        durable: Lsn(298),
        last_sync_ms: connected.then_some(1_700_000_111_222),
        connected,
    };
    let active = DomainReport {
        domain: domain("tenant-7"),
        placement: PlacementState::Serving,
        replica: Some(ReplicaState {
            role: Role::Active,
            epoch: epoch(4, "node-a"),
            position: position(4, "node-a", 310, 0x0bad_f00d),
            digest: "00ff".repeat(16),
        }),
        standbys: vec![
            standby("node-b", SyncStatus::Synchronized, Lag::default(), true),
            standby(
                "node-c",
                SyncStatus::Lagging {
                    records: 12,
                    bytes: 4_096,
                    behind: Duration::new(1, 500_000_007),
                },
                lag,
                true,
            ),
            standby("node-d", SyncStatus::NeverSynchronized, lag, false),
        ],
        follower: None,
        collisions: 0,
        accept_unverified_crls: false,
        crls: vec![
            admin::CrlState {
                issuer: "CN=Fixture CA 1".into(),
                number: CrlNumber(vec![0x01, 0x2d]),
                kind: "base".into(),
                next_update: Some(1_700_604_800),
                verified: true,
            },
            admin::CrlState {
                issuer: "CN=Old CA,O=domsync".into(),
                number: CrlNumber(vec![0x03]),
                kind: "legacy".into(),
                next_update: None,
                verified: false,
            },
        ],
    };
    let follower = |status| FollowerState {
        active: node("node-a"),
        status,
        lag,
        last_sync_ms: Some(1_700_000_111_333),
        last_error: Some("stream reset by node-a".into()),
        recent_errors: vec![
            (1_700_000_100_000, "connection timed out".into()),
            (1_700_000_110_000, "stream reset by node-a".into()),
        ],
        connected: false,
        clock_skew_ms: Some(-12),
    };
    let standby_here = |name: &str, status, collisions| DomainReport {
        domain: domain(name),
        placement: PlacementState::Serving,
        replica: Some(ReplicaState {
            role: Role::Standby,
            epoch: epoch(4, "node-a"),
            position: position(3, "node-b", 300, 0xdead_beef),
            digest: "a5".repeat(32),
        }),
        standbys: vec![],
        follower: Some(follower(status)),
        collisions,
        accept_unverified_crls: true,
        crls: vec![],
    };
    let unplaced = |name: &str, placement| DomainReport {
        domain: domain(name),
        placement,
        replica: None,
        standbys: vec![],
        follower: None,
        collisions: 0,
        accept_unverified_crls: false,
        crls: vec![],
    };
    admin::NodeStatus {
        node: node("node-a"),
        domains: vec![
            active,
            standby_here("tenant-8", SyncStatus::Advanced { records: 3 }, 0),
            standby_here("tenant-9", SyncStatus::Collision { fork: Lsn(250) }, 2),
            unplaced(
                "tenant-10",
                PlacementState::Waiting("waiting for node-c".into()),
            ),
            unplaced(
                "tenant-11",
                PlacementState::Failed("store is damaged".into()),
            ),
        ],
        certificates: vec![
            admin::CertificateExpiry {
                identity: "domsync://node/node-a".into(),
                own: true,
                serial: "3f:a2:09".into(),
                not_after_s: 1_790_000_000,
            },
            admin::CertificateExpiry {
                identity: "domsync://node/node-b".into(),
                own: false,
                serial: "01:02".into(),
                not_after_s: 1_700_000_000,
            },
        ],
    }
}

/// A placement plan with a node of each address family and every optional field both ways.
fn plan() -> admin::PlanReport {
    // Flow info and scope id stay 0: serde encodes only the address and the port.
    let v6 = SocketAddrV6::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10),
        4433,
        0,
        0,
    );
    admin::PlanReport {
        node: node("node-a"),
        nodes: vec![
            admin::PlanNode {
                id: node("node-a"),
                region: Some("eu-west".into()),
                address: SocketAddr::from(([192, 0, 2, 10], 4433)),
                load_now: 300,
                load: 200,
            },
            admin::PlanNode {
                id: node("node-b"),
                region: None,
                address: SocketAddr::V6(v6),
                load_now: 0,
                load: 100,
            },
        ],
        domains: vec![
            admin::PlanDomain {
                domain: domain("tenant-7"),
                weight: 200,
                region: Some("eu-west".into()),
                active: Some(node("node-a")),
                planned: Some(node("node-a")),
            },
            admin::PlanDomain {
                domain: domain("tenant-8"),
                weight: 100,
                region: None,
                active: None,
                planned: Some(node("node-b")),
            },
        ],
        moves: vec![
            admin::PlanMove {
                domain: domain("tenant-8"),
                from: Some(node("node-a")),
                to: node("node-b"),
            },
            admin::PlanMove {
                domain: domain("tenant-9"),
                from: None,
                to: node("node-b"),
            },
        ],
    }
}

/// The answers to an administrator, written to `fixtures/wire/admin/answer-*.bin`.
fn admin_answers() -> Samples<admin::Answer> {
    use admin::Answer as A;
    let d = || domain("tenant-7");
    vec![
        ("answer-status", A::Status(node_status())),
        (
            "answer-promoted",
            A::Promoted {
                domain: d(),
                epoch: epoch(5, "node-b"),
                position: position(4, "node-a", 305, 0x1234_5678),
                behind_records: 5,
                unreachable: vec![node("node-a"), node("node-c")],
            },
        ),
        (
            "answer-switched-over",
            A::SwitchedOver {
                domain: d(),
                to: node("node-b"),
                epoch: epoch(5, "node-b"),
                position: position(4, "node-a", 310, 0x0bad_f00d),
                pause_ms: 180,
            },
        ),
        (
            "answer-written",
            A::Written {
                domain: d(),
                position: position(4, "node-a", 311, 0x0102_0304),
            },
        ),
        (
            "answer-collisions",
            A::Collisions {
                domain: d(),
                list: vec![archived(300, 251), archived(301, 252)],
            },
        ),
        (
            "answer-collision",
            A::Collision {
                domain: d(),
                info: archived(300, 251),
                ops: every_op()[..2].to_vec(),
            },
        ),
        (
            "answer-reapplied",
            A::Reapplied {
                domain: d(),
                id: 301,
                position: position(4, "node-a", 312, 0x0506_0708),
            },
        ),
        (
            "answer-discarded",
            A::Discarded {
                domain: d(),
                id: 302,
            },
        ),
        (
            "answer-error-refused",
            A::Error(AdminError::Refused("client is not an operator".into())),
        ),
        (
            "answer-error-unknown-domain",
            A::Error(AdminError::UnknownDomain {
                domain: domain("tenant-99"),
                node: node("node-a"),
            }),
        ),
        (
            "answer-error-not-active",
            A::Error(AdminError::NotActive {
                domain: d(),
                node: node("node-b"),
                active: Some(node("node-a")),
            }),
        ),
        (
            "answer-error-not-active-unknown",
            A::Error(AdminError::NotActive {
                domain: d(),
                node: node("node-b"),
                active: None,
            }),
        ),
        (
            "answer-error-no-such-collision",
            A::Error(AdminError::NoSuchCollision {
                domain: d(),
                node: node("node-a"),
                id: 999,
            }),
        ),
        (
            "answer-error-bad-request",
            A::Error(AdminError::BadRequest("empty write".into())),
        ),
        (
            "answer-error-failed",
            A::Error(AdminError::Failed(
                "the store is read-only: free disk space".into(),
            )),
        ),
        (
            "answer-domain-added",
            A::DomainAdded {
                domain: domain("tenant-9"),
                replica_here: true,
            },
        ),
        ("answer-domain-removed", A::DomainRemoved { domain: d() }),
        ("answer-plan", A::Plan(plan())),
        (
            "answer-compacted",
            A::Compacted {
                domain: d(),
                before: 3 << 30,
                after: 1 << 20,
            },
        ),
        (
            "answer-trust",
            A::Trust(admin::TrustReport {
                domain: d(),
                accept_unverified_crls: false,
                issuers: vec![issuer_cert()],
                crls: vec![
                    HeldCrl {
                        der: vec![],
                        ..held_crl(false)
                    },
                    HeldCrl {
                        der: vec![],
                        verified_by: None,
                        ..held_crl(true)
                    },
                ],
                legacy: vec![Crl {
                    der: vec![],
                    ..crl()
                }],
                position: position(4, "node-a", 310, 0x0bad_f00d),
            }),
        ),
    ]
}

// ---- checking ----

fn blessing() -> bool {
    std::env::var("DOMSYNC_BLESS").as_deref() == Ok("1")
}

fn fixture_dir(protocol: &str) -> PathBuf {
    Path::new(FIXTURES).join(protocol)
}

/// The fixture file names of a protocol's samples, checking that names are unique and plain.
fn file_names(protocol: &str, names: impl IntoIterator<Item = &'static str>) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for name in names {
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        assert!(
            plain && !name.is_empty(),
            "{protocol}/{name:?}: use a-z, 0-9 and - in sample names"
        );
        assert!(
            files.insert(format!("{name}.bin")),
            "{protocol}/{name}: two samples share the name"
        );
    }
    files
}

/// The names of samples.
fn names<'a, T>(samples: &'a [(&'static str, T)]) -> impl Iterator<Item = &'static str> + 'a {
    samples.iter().map(|(name, _)| *name)
}

/// Encodes each sample with `encode`, compares the frame with its fixture (or writes the
/// fixture when blessing) and decodes the fixture with `decode`; panics listing every sample
/// that does not match.
fn check_golden<T: PartialEq + Debug>(
    protocol: &str,
    samples: &[(&'static str, T)],
    encode: fn(&T) -> Result<Vec<u8>, CodecError>,
    decode: fn(&[u8]) -> Result<T, CodecError>,
) {
    let dir = fixture_dir(protocol);
    if blessing() {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let mut failures = Vec::new();
    for (name, sample) in samples {
        let bytes = encode(sample).unwrap_or_else(|e| panic!("{protocol}/{name}: encoding: {e}"));
        let path = dir.join(format!("{name}.bin"));
        if blessing() && fs::read(&path).ok().as_ref() != Some(&bytes) {
            fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        let stored = match fs::read(&path) {
            Ok(stored) => stored,
            Err(e) => {
                failures.push(format!("{protocol}/{name}.bin: {e}"));
                continue;
            }
        };
        if stored != bytes {
            let at = stored
                .iter()
                .zip(&bytes)
                .take_while(|(a, b)| a == b)
                .count();
            failures.push(format!(
                "{protocol}/{name}.bin: today's encoding ({} bytes) differs from the fixture \
                 ({} bytes) from byte {at} on",
                bytes.len(),
                stored.len(),
            ));
            continue;
        }
        match decode(&stored) {
            Ok(decoded) if decoded == *sample => {}
            Ok(decoded) => failures.push(format!(
                "{protocol}/{name}.bin decodes to {decoded:?}, not the sample {sample:?}"
            )),
            Err(e) => failures.push(format!("{protocol}/{name}.bin does not decode: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "the wire format changed or a fixture is missing (see fixtures/wire/README.md; \
         `DOMSYNC_BLESS=1 cargo test -p domsync-proto --test golden_wire` rewrites the files):\n{}",
        failures.join("\n")
    );
}

/// Asserts that the samples name exactly the variants of the enums listed in `all`.
fn assert_covers(protocol: &str, covered: impl IntoIterator<Item = &'static str>, all: &[&[&str]]) {
    let covered: BTreeSet<&str> = covered.into_iter().collect();
    let expected: BTreeSet<&str> = all.iter().flat_map(|names| names.iter().copied()).collect();
    let missing: Vec<_> = expected.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "{protocol}: no golden sample carries {missing:?}; add one"
    );
    let unlisted: Vec<_> = covered.difference(&expected).collect();
    assert!(
        unlisted.is_empty(),
        "{protocol}: {unlisted:?} covered but their enum is missing from the expected list"
    );
}

// ---- tests ----

#[test]
fn repl_messages_match_their_golden_vectors() {
    check_golden("repl", &repl_samples(), encode_message, decode_message);
}

#[test]
fn gateway_messages_match_their_golden_vectors() {
    check_golden(
        "gateway",
        &gateway_requests(),
        |m| gateway::encode(m, gateway::MAX_REQUEST_BYTES),
        |b| gateway::decode(b, gateway::MAX_REQUEST_BYTES),
    );
    check_golden(
        "gateway",
        &gateway_responses(),
        |m| gateway::encode(m, gateway::MAX_RESPONSE_BYTES),
        |b| gateway::decode(b, gateway::MAX_RESPONSE_BYTES),
    );
}

#[test]
fn admin_messages_match_their_golden_vectors() {
    // Both sides frame admin messages with `codec::seal` / `codec::open` (through
    // `domsync_net::{write_message, read_message}`) at these caps.
    check_golden(
        "admin",
        &admin_requests(),
        |m| codec::seal(m, admin::MAX_REQUEST_BYTES),
        |b| codec::open(b, admin::MAX_REQUEST_BYTES),
    );
    check_golden(
        "admin",
        &admin_answers(),
        |m| codec::seal(m, admin::MAX_ANSWER_BYTES),
        |b| codec::open(b, admin::MAX_ANSWER_BYTES),
    );
}

/// Requests of the application protocol (`domsync-app/1` and the application socket).
fn app_requests() -> Samples<app::Request> {
    use app::Request as R;
    let d = || domain("tenant-7");
    let at = AtLeast {
        lsn: Lsn(300),
        wait_ms: 1_500,
    };
    vec![
        ("request-hello", R::Hello),
        (
            "request-get",
            R::Get {
                domain: d(),
                key: b"rule/7".to_vec(),
                at_least: at,
            },
        ),
        (
            "request-scan",
            R::Scan(app::Scan {
                domain: d(),
                range: KeyRange::prefix(b"rule/"),
                limit: 500,
                keys_only: true,
                at_least: at,
                continuation: Some(app::Continuation {
                    after: b"rule/41".to_vec(),
                    position: position(3, "node-b", 300, 0xdead_beef),
                }),
            }),
        ),
        (
            "request-scan-everything",
            R::Scan(app::Scan {
                domain: d(),
                range: KeyRange::prefix(b""),
                limit: 0,
                keys_only: false,
                at_least: AtLeast::default(),
                continuation: None,
            }),
        ),
        (
            "request-txn",
            R::Txn(app::Txn {
                domain: d(),
                conditions: vec![
                    Condition::Absent {
                        key: b"rule/8".to_vec(),
                    },
                    Condition::Version {
                        key: b"rule/7".to_vec(),
                        version: Lsn(299),
                    },
                    Condition::Value {
                        key: b"mode".to_vec(),
                        value: b"strict".to_vec(),
                    },
                ],
                ops: every_op().into_iter().chain(trust_ops()).collect(),
            }),
        ),
        (
            "request-watch",
            R::Watch {
                domain: d(),
                range: KeyRange::prefix(b"rule/"),
                from: Some(position(3, "node-b", 300, 0xdead_beef)),
            },
        ),
        (
            "request-watch-from-now",
            R::Watch {
                domain: d(),
                range: KeyRange {
                    start: b"a".to_vec(),
                    end: None,
                },
                from: None,
            },
        ),
        (
            "request-get-policy",
            R::GetPolicy {
                domain: d(),
                name: "fw-rules.v1".into(),
                at_least: at,
            },
        ),
        (
            "request-get-crl",
            R::GetCrl {
                domain: d(),
                issuer: IssuerKey::Text("CN=Fixture CA 1,O=domsync".into()),
                delta: true,
                at_least: at,
            },
        ),
    ]
}

/// Answers of the application protocol.
fn app_answers() -> Samples<app::Answer> {
    use app::Answer as A;
    let d = || domain("tenant-7");
    let entry = |k: &[u8], v: &[u8], version: u64| app::Entry {
        key: k.to_vec(),
        value: v.to_vec(),
        version: Lsn(version),
    };
    let error = |e: AppError| A::Error(e);
    vec![
        (
            "answer-hello",
            A::Hello {
                protocol: app::PROTOCOL_VERSION,
                node: node("node-b"),
                domains: vec![
                    app::DomainState {
                        domain: d(),
                        role: Role::Standby,
                        epoch: epoch(4, "node-a"),
                        position: position(3, "node-b", 300, 0xdead_beef),
                        active: Some(node("node-a")),
                        writable: true,
                        sync: Some(SyncStatus::Synchronized),
                    },
                    app::DomainState {
                        domain: domain("tenant-8"),
                        role: Role::Active,
                        epoch: epoch(2, "node-b"),
                        position: position(2, "node-b", 17, 0x0bad_f00d),
                        active: None,
                        writable: false,
                        sync: None,
                    },
                ],
            },
        ),
        (
            "answer-value",
            A::Value {
                served: served(Role::Standby),
                entry: Some(entry(b"rule/7", b"allow 443", 299)),
            },
        ),
        (
            "answer-value-absent",
            A::Value {
                served: served(Role::Active),
                entry: None,
            },
        ),
        (
            "answer-page",
            A::Page(app::Page {
                served: served(Role::Standby),
                entries: vec![entry(b"rule/1", b"", 12), entry(b"rule/2", b"deny", 0)],
                more: Some(app::Continuation {
                    after: b"rule/2".to_vec(),
                    position: position(3, "node-b", 300, 0xdead_beef),
                }),
            }),
        ),
        (
            "answer-committed",
            A::Committed {
                position: position(4, "node-a", 301, 0x1234_5678),
            },
        ),
        (
            "answer-watching",
            A::Watching {
                served: served(Role::Active),
                position: position(3, "node-b", 300, 0xdead_beef),
            },
        ),
        (
            "answer-events",
            A::Events {
                events: vec![
                    app::Event {
                        key: b"rule/7".to_vec(),
                        value: Some(serde_bytes::ByteBuf::from(b"allow 443".to_vec())),
                        lsn: Lsn(301),
                    },
                    app::Event {
                        key: b"rule/8".to_vec(),
                        value: None,
                        lsn: Lsn(302),
                    },
                ],
                position: position(4, "node-a", 302, 0x8765_4321),
            },
        ),
        (
            "answer-policy",
            A::Policy {
                served: served(Role::Active),
                info: policy_info("fw-rules.v1", 290, 4),
                content: vec![1, 2, 3, 4],
            },
        ),
        (
            "answer-crl",
            A::Crl {
                served: served(Role::Standby),
                crl: Some(crl()),
            },
        ),
        (
            "answer-error-forbidden",
            error(AppError::Forbidden {
                domain: d(),
                node: node("node-b"),
            }),
        ),
        (
            "answer-error-read-only",
            error(AppError::ReadOnly {
                domain: d(),
                node: node("node-b"),
            }),
        ),
        (
            "answer-error-not-active",
            error(AppError::NotActive {
                domain: d(),
                node: node("node-b"),
                active: Some(node("node-a")),
            }),
        ),
        (
            "answer-error-behind",
            error(AppError::Behind {
                domain: d(),
                served: served(Role::Standby),
                want: Lsn(310),
            }),
        ),
        (
            "answer-error-conflict",
            error(AppError::Conflict {
                index: 1,
                key: b"rule/7".to_vec(),
                current: Some(Lsn(305)),
            }),
        ),
        (
            "answer-error-continuation-gone",
            error(AppError::ContinuationGone {
                domain: d(),
                at: position(3, "node-b", 300, 0xdead_beef),
                now: position(4, "node-a", 320, 0x1111_2222),
            }),
        ),
        (
            "answer-error-compacted",
            error(AppError::Compacted {
                domain: d(),
                node: node("node-b"),
                from: position(3, "node-b", 300, 0xdead_beef),
                oldest: Lsn(1_000),
            }),
        ),
        (
            "answer-error-diverged",
            error(AppError::Diverged {
                domain: d(),
                node: node("node-b"),
                from: position(3, "node-b", 300, 0xdead_beef),
            }),
        ),
        (
            "answer-error-refused",
            error(AppError::Refused(
                "domain tenant-7: the CRL does not verify".into(),
            )),
        ),
        (
            "answer-error-unconfirmed",
            error(AppError::Unconfirmed {
                domain: d(),
                position: position(4, "node-a", 301, 0x1234_5678),
                why: "standby node-c did not confirm within 5 s".into(),
            }),
        ),
        (
            "answer-error-no-such-policy",
            error(AppError::NoSuchPolicy {
                domain: d(),
                name: "fw-rules.v9".into(),
                served: served(Role::Active),
            }),
        ),
        (
            "answer-error-bad-request",
            error(AppError::BadRequest(
                "a scan's limit is at most 10000".into(),
            )),
        ),
        (
            "answer-error-busy",
            error(AppError::Busy("1024 watches are running".into())),
        ),
        (
            "answer-error-unavailable",
            error(AppError::Unavailable("the store of tenant-7 failed".into())),
        ),
    ]
}

#[test]
fn app_messages_match_their_golden_vectors() {
    check_golden(
        "app",
        &app_requests(),
        |m| app::encode(m, app::MAX_REQUEST_BYTES),
        |b| app::decode(b, app::MAX_REQUEST_BYTES),
    );
    check_golden(
        "app",
        &app_answers(),
        |m| app::encode(m, app::MAX_ANSWER_BYTES),
        |b| app::decode(b, app::MAX_ANSWER_BYTES),
    );
}

#[test]
fn app_samples_cover_every_variant() {
    let (requests, answers) = (app_requests(), app_answers());
    let covered = (requests.iter().flat_map(|(_, r)| app_request_coverage(r)))
        .chain(answers.iter().flat_map(|(_, a)| app_answer_coverage(a)));
    let all = [APP_REQUEST, APP_ANSWER, APP_ERROR, CONDITION, ROLE, OP];
    assert_covers("app", covered, &all);
}

#[test]
fn repl_samples_cover_every_variant() {
    let samples = repl_samples();
    let covered = samples.iter().flat_map(|(_, m)| repl_coverage(m));
    let all = [
        MESSAGE,
        ANSWER,
        SNAPSHOT_WHY,
        REJECT_REASON,
        SNAPSHOT_ITEM,
        ROLE,
        DURABILITY,
    ];
    assert_covers("repl", covered, &all);
}

#[test]
fn gateway_samples_cover_every_variant() {
    let (requests, responses) = (gateway_requests(), gateway_responses());
    let covered = (requests
        .iter()
        .flat_map(|(_, r)| gateway_request_coverage(r)))
    .chain(
        responses
            .iter()
            .flat_map(|(_, r)| gateway_response_coverage(r)),
    );
    assert_covers("gateway", covered, &[QUERY, RESPONSE, REFUSAL, ROLE]);
}

#[test]
fn admin_samples_cover_every_variant() {
    let (requests, answers) = (admin_requests(), admin_answers());
    let covered = (requests.iter().flat_map(|(_, r)| admin_request_coverage(r)))
        .chain(answers.iter().flat_map(|(_, a)| admin_answer_coverage(a)));
    let all = [
        ADMIN_REQUEST,
        ADMIN_ANSWER,
        ADMIN_ERROR,
        PLACEMENT,
        SYNC_STATUS,
        ROLE,
        OP,
        SOCKET_ADDR,
    ];
    assert_covers("admin", covered, &all);
}

/// Every file under `fixtures/wire/` belongs to a sample: a removed sample (or message) must
/// be a deliberate protocol change, with its fixture deleted by hand.
#[test]
fn every_fixture_has_a_sample() {
    let (repl, gw_requests, gw_responses) =
        (repl_samples(), gateway_requests(), gateway_responses());
    let (admin_requests, admin_answers) = (admin_requests(), admin_answers());
    let (app_requests, app_answers) = (app_requests(), app_answers());
    let expected: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("repl", file_names("repl", names(&repl))),
        (
            "gateway",
            file_names("gateway", names(&gw_requests).chain(names(&gw_responses))),
        ),
        (
            "admin",
            file_names("admin", names(&admin_requests).chain(names(&admin_answers))),
        ),
        (
            "app",
            file_names("app", names(&app_requests).chain(names(&app_answers))),
        ),
    ]);
    // A missing directory holds no stray file; the golden tests report its missing fixtures.
    let list = |dir: &Path| -> Vec<String> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|entry| {
                    let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                    entry.file_name().to_string_lossy().into_owned()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => panic!("{}: {e}", dir.display()),
        }
    };
    let mut strays = BTreeSet::new();
    for name in list(Path::new(FIXTURES)) {
        if name != "README.md" && !expected.contains_key(name.as_str()) {
            strays.insert(name);
        }
    }
    for (protocol, files) in &expected {
        for name in list(&fixture_dir(protocol)) {
            if !files.contains(&name) {
                strays.insert(format!("{protocol}/{name}"));
            }
        }
    }
    assert!(
        strays.is_empty(),
        "fixtures/wire/ holds {strays:?} without a sample in crates/proto/tests/golden_wire.rs: \
         restore the sample, or delete the file if its message left the protocol (a protocol \
         version change; see fixtures/wire/README.md)"
    );
}
