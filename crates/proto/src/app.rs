//! The messages of applications on the appliance (ALPN `domsync-app/1`, and the local
//! application socket): reads of user keys with their version and the position served,
//! consistent range scans with continuation, conditional transactions, and key watches.
//!
//! The shape follows etcd's KV API (Range at a revision, Txn with compares, Watch from a
//! revision), with positions in place of revisions: every answer that reads says which node
//! served it, in which role and epoch, at which [`Position`]; a read may ask for "at least
//! lsn P" on either role; a watch resumes from the position of the last event it delivered,
//! on any replica, and the node checks that position is in its own history (same lsn, same
//! chain) before it continues, so a resumption after a failover has no gap and no repeat, or
//! is refused with [`AppError::Diverged`] / [`AppError::Compacted`].
//!
//! # Exchanges
//!
//! * **One request, one answer.** The client sends a [`Request`] frame and reads one
//!   [`Answer`] frame. On the Unix socket a connection carries any number of such pairs in
//!   turn; on QUIC each request has its own bidirectional stream (the client finishes its
//!   side after the request).
//! * **A watch** ([`Request::Watch`]) takes the whole connection (Unix socket) or stream
//!   (QUIC): the node answers [`Answer::Watching`] and then sends [`Answer::Events`] frames,
//!   each with the position after it, until the client goes away or the node ends it with an
//!   [`Answer::Error`]. A batch with no events is a progress mark: nothing under the prefix
//!   changed up to its position, and a resumption from there skips what it covers.
//!
//! Every frame is a checked frame (see [`crate::codec`]): version, `u32` length, postcard
//! payload, CRC32; requests are capped at [`MAX_REQUEST_BYTES`] and answers at
//! [`MAX_ANSWER_BYTES`], checked before anything is allocated. Only append enum variants,
//! never reorder or remove them.
//!
//! # Versions
//!
//! A key's version is the lsn of the record that last changed it ([`Entry::version`]). Keys
//! written by releases before versions were kept report version 0 until they are written
//! again.
//!
//! ```
//! use domsync_proto::app::{self, Condition, Request, Txn};
//! use domsync_proto::model::{DomainId, Lsn, Op};
//!
//! let domain = DomainId::new("fw-east")?;
//! // Change "rule/7" only if nobody changed it since version 41 was read.
//! let req = Request::Txn(Txn {
//!     domain,
//!     conditions: vec![Condition::Version { key: b"rule/7".to_vec(), version: Lsn(41) }],
//!     ops: vec![Op::Put { key: b"rule/7".to_vec(), value: b"deny all".to_vec() }],
//! });
//! let frame = app::encode(&req, app::MAX_REQUEST_BYTES)?;
//! assert_eq!(app::decode::<Request>(&frame, app::MAX_REQUEST_BYTES)?, req);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::gateway::Served;
use crate::model::{
    Crl, DomainId, Epoch, HeldCrl, IssuerKey, Lsn, NodeId, Op, PolicyInfo, Position, Role,
};
use crate::repl::SyncStatus;

/// Largest encoded request: a transaction carrying a full-size policy package.
pub const MAX_REQUEST_BYTES: usize = codec::MAX_RECORD_BYTES + 64 * 1024;

/// Largest encoded answer: a full-size policy package with its envelope, or a page of
/// [`MAX_PAGE_BYTES`].
pub const MAX_ANSWER_BYTES: usize = crate::model::MAX_POLICY_BYTES + 1024 * 1024;

/// Most entries a range page holds, whatever the limit asked.
pub const MAX_PAGE_ENTRIES: u32 = 10_000;

/// Most key and value bytes a range page or an event batch holds; a page stops before the
/// entry that would pass it (a single larger entry is still sent alone).
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Longest a read may ask a lagging node to wait for its `at_least` position.
pub const MAX_WAIT_MS: u32 = 30_000;

/// Most conditions a transaction may carry.
pub const MAX_CONDITIONS: usize = 1_024;

/// Most watches one node serves at once for applications (all connections together).
pub const MAX_WATCHES: usize = 1_024;

/// Protocol version carried in [`Answer::Hello`]; raised only by an incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// "Read at least here": a lagging node waits up to `wait_ms` for its applied position to
/// reach `lsn`, then answers [`AppError::Behind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AtLeast {
    /// The lsn the read must reflect (0: any).
    pub lsn: Lsn,
    /// How long to wait for it, capped at [`MAX_WAIT_MS`].
    pub wait_ms: u32,
}

/// A user key with its value and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The lsn of the record that last changed the key (0: written before versions were
    /// kept).
    pub version: Lsn,
}

/// Which keys a scan covers: `[start, end)` in byte order, `end` `None` for no upper bound.
/// A prefix `p` is the range from `p` to the first key after every key starting with `p`
/// ([`KeyRange::prefix`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// First key (inclusive).
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// End key (exclusive); `None`: to the last key.
    pub end: Option<serde_bytes::ByteBuf>,
}

impl KeyRange {
    /// Every key starting with `prefix` (every key for an empty prefix).
    ///
    /// ```
    /// use domsync_proto::app::KeyRange;
    /// let r = KeyRange::prefix(b"a\xff");
    /// assert!(r.contains(b"a\xff\x00") && !r.contains(b"b"));
    /// assert_eq!(r.end.as_deref().map(|e| e.as_ref()), Some(&b"b"[..]));
    /// ```
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        let mut end = prefix.to_vec();
        // The first key after every key starting with `prefix`: drop trailing 0xff bytes,
        // then add one to the last byte; none left means no upper bound.
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let end = match end.last_mut() {
            Some(last) => {
                *last += 1;
                Some(serde_bytes::ByteBuf::from(end))
            }
            None => None,
        };
        KeyRange {
            start: prefix.to_vec(),
            end,
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice()
            && match &self.end {
                Some(end) => key < end.as_ref(),
                None => true,
            }
    }
}

/// Where the next page of a scan starts, and the position the scan reads at. Returned in
/// [`Page::more`]; sent back unchanged in [`Scan::continuation`]. The node continues at the
/// same position when nothing in the rest of the range changed since (it checks its log), or
/// answers [`AppError::ContinuationGone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// The last key sent; the next page starts after it.
    #[serde(with = "serde_bytes")]
    pub after: Vec<u8>,
    /// The position the scan reads at.
    pub position: Position,
}

/// A range scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// The domain.
    pub domain: DomainId,
    /// The keys.
    pub range: KeyRange,
    /// Most entries in this page (0 or above [`MAX_PAGE_ENTRIES`]: [`MAX_PAGE_ENTRIES`]).
    pub limit: u32,
    /// Only keys and versions, no values.
    pub keys_only: bool,
    /// Read at least here.
    pub at_least: AtLeast,
    /// Continue a scan from the [`Page::more`] of its previous page.
    pub continuation: Option<Continuation>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Who served it and the position of the whole scan.
    pub served: Served,
    /// The entries, in key order (values empty for `keys_only`).
    pub entries: Vec<Entry>,
    /// Where the next page starts; `None` when the range is done.
    pub more: Option<Continuation>,
}

/// A condition of a transaction, checked in the transaction that applies its ops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// The key does not exist.
    Absent {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// The key exists with this version.
    Version {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its version ([`Entry::version`]).
        version: Lsn,
    },
    /// The key exists with this value.
    Value {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
}

impl Condition {
    /// The key the condition is about.
    pub fn key(&self) -> &[u8] {
        match self {
            Condition::Absent { key }
            | Condition::Version { key, .. }
            | Condition::Value { key, .. } => key,
        }
    }
}

/// A transaction: when every condition holds, the ops are applied atomically as one record;
/// otherwise nothing is written and the answer is [`AppError::Conflict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The domain.
    pub domain: DomainId,
    /// What must hold, at most [`MAX_CONDITIONS`].
    pub conditions: Vec<Condition>,
    /// The changes: user keys, policy packages, CRLs, issuer certificates.
    pub ops: Vec<Op>,
}

/// What an application asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Which domains this client may use here, and how each stands: [`Answer::Hello`].
    Hello,
    /// One key: [`Answer::Value`].
    Get {
        /// The domain.
        domain: DomainId,
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Read at least here.
        at_least: AtLeast,
    },
    /// A page of a range scan: [`Answer::Page`].
    Scan(Scan),
    /// A transaction on the domain's active: [`Answer::Committed`].
    Txn(Txn),
    /// Every change of keys in `range`, after `from` (or from now): [`Answer::Watching`], then
    /// [`Answer::Events`] frames.
    Watch {
        /// The domain.
        domain: DomainId,
        /// The keys watched.
        range: KeyRange,
        /// Resume after this position (the `position` of the last batch received); `None`:
        /// from the node's current position.
        from: Option<Position>,
    },
    /// A policy package: [`Answer::Policy`].
    GetPolicy {
        /// The domain.
        domain: DomainId,
        /// Package name.
        name: String,
        /// Read at least here.
        at_least: AtLeast,
    },
    /// A CRL: [`Answer::Crl`].
    GetCrl {
        /// The domain.
        domain: DomainId,
        /// Its issuer.
        issuer: IssuerKey,
        /// The delta CRL held beside the base instead of the base.
        delta: bool,
        /// Read at least here.
        at_least: AtLeast,
    },
}

/// How one domain stands on the node answering, as an application sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainState {
    /// The domain.
    pub domain: DomainId,
    /// This node's role for it.
    pub role: Role,
    /// The highest epoch seen.
    pub epoch: Epoch,
    /// The applied position.
    pub position: Position,
    /// The active this node knows of (itself when active).
    pub active: Option<NodeId>,
    /// Whether this client may write it (through a transaction on its active).
    pub writable: bool,
    /// On a standby: how it follows its active.
    pub sync: Option<SyncStatus>,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The new value; `None`: the key was deleted.
    pub value: Option<serde_bytes::ByteBuf>,
    /// The lsn of the record that made the change (the key's new version).
    pub lsn: Lsn,
}

/// One answer frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// The node and the domains this client may use on it.
    Hello {
        /// [`PROTOCOL_VERSION`] of the node.
        protocol: u32,
        /// The node answering.
        node: NodeId,
        /// The domains this client may read here.
        domains: Vec<DomainState>,
    },
    /// One key.
    Value {
        /// Who served it, at which position.
        served: Served,
        /// The key with its value and version; `None`: no such key at that position.
        entry: Option<Entry>,
    },
    /// A page of a scan.
    Page(Page),
    /// The transaction committed (and met the domain's durability).
    Committed {
        /// The position of its record; its lsn is the version of every key it changed.
        position: Position,
    },
    /// The watch is running from `position` (the `from` asked, or the node's position).
    Watching {
        /// Who serves it.
        served: Served,
        /// Events follow after this position.
        position: Position,
    },
    /// Changes of watched keys, in lsn order, each once; then `position`, the position after
    /// this batch (resume from it).
    Events {
        /// The changes (empty: a progress mark).
        events: Vec<Event>,
        /// The position after these events.
        position: Position,
    },
    /// A policy package.
    Policy {
        /// Who served it.
        served: Served,
        /// Its name, version, size and SHA-256.
        info: PolicyInfo,
        /// Its content (checked against `info.sha256` by the node).
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    /// A CRL (`None`: none held for that issuer).
    Crl {
        /// Who served it.
        served: Served,
        /// The CRL as held.
        crl: Option<Crl>,
    },
    /// The request was refused or failed; a watch ends after it.
    Error(AppError),
}

/// Why a request was refused or failed. Each message says what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AppError {
    /// The client may not use this domain here (or the domain is not held here: the two are
    /// not told apart to someone not granted it).
    #[error("domain {domain} is not granted to this client on node {node}: ask the operator to grant it ([apps] in domsync.toml)")]
    Forbidden {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
    },
    /// The client may read the domain but not write it.
    #[error("this client may read but not write domain {domain} on node {node}: ask the operator for write access ([apps] in domsync.toml)")]
    ReadOnly {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
    },
    /// A transaction reached a node that is not the domain's active; nothing was written.
    #[error("domain {domain} is not active on node {node}: {}", match active { Some(a) => format!("its active is {a}; send the transaction there"), None => "this node does not know which node is active; ask another replica".to_owned() })]
    NotActive {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
        /// The active this node knows of.
        active: Option<NodeId>,
    },
    /// The node had not applied the asked lsn after waiting.
    #[error("node {} has applied domain {domain} up to lsn {}, not {want}: read from the active or retry later", served.node, served.position.lsn)]
    Behind {
        /// The domain.
        domain: DomainId,
        /// Who answered, and where it stands.
        served: Served,
        /// The lsn asked for.
        want: Lsn,
    },
    /// A condition of the transaction failed; nothing was written.
    #[error("condition {index} failed on key {}: {}; read it again and retry", crate::app::show_key(key), match current { Some(v) => format!("its version is now {v}"), None => "it does not exist".to_owned() })]
    Conflict {
        /// Index of the first failed condition.
        index: u32,
        /// Its key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The key's current version (`None`: absent).
        current: Option<Lsn>,
    },
    /// A scan continuation cannot be served at its position any more: keys in the rest of the
    /// range changed since, or the log that would prove they did not is gone.
    #[error("the scan of domain {domain} cannot continue at lsn {}: the rest of the range changed since (now at lsn {}); start the scan again", at.lsn, now.lsn)]
    ContinuationGone {
        /// The domain.
        domain: DomainId,
        /// The position of the scan.
        at: Position,
        /// The node's position now.
        now: Position,
    },
    /// A watch cannot resume from its position: this node's retained log starts after it.
    #[error("the log of domain {domain} on node {node} starts at lsn {oldest}, after the watch's lsn {}: read the keys again (scan) and watch from that position", from.lsn)]
    Compacted {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
        /// The position asked.
        from: Position,
        /// The oldest lsn still held.
        oldest: Lsn,
    },
    /// A watch cannot resume from its position: this node's history does not hold it (the
    /// record at that lsn differs: it was lost in a failover, never acknowledged).
    #[error("domain {domain} on node {node} does not hold the watch's position {from} (it was not kept through a failover): read the keys again (scan) and watch from that position")]
    Diverged {
        /// The domain.
        domain: DomainId,
        /// This node.
        node: NodeId,
        /// The position asked.
        from: Position,
    },
    /// The write was refused by a check of the store (sizes, names, a CRL that does not
    /// verify); the message says which and what to do. Nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The write committed on the active but its durability (`standby` / `all`) was not
    /// confirmed in time.
    #[error("the transaction committed on domain {domain} at {position} but was not confirmed by its standbys: {why}")]
    Unconfirmed {
        /// The domain.
        domain: DomainId,
        /// The position of its record.
        position: Position,
        /// Why not.
        why: String,
    },
    /// No such policy package.
    #[error("no policy package {name} in domain {domain} at lsn {}: `domsync policy list {domain}` shows the packages", served.position.lsn)]
    NoSuchPolicy {
        /// The domain.
        domain: DomainId,
        /// The name asked.
        name: String,
        /// Who answered.
        served: Served,
    },
    /// The request was malformed or out of bounds.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A limit was reached (connections, watches).
    #[error("busy: {0}; retry later")]
    Busy(String),
    /// The node failed to read or write its store.
    #[error("{0}")]
    Unavailable(String),
}

/// A key for messages: text when printable, otherwise `0x` and hex.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => {
            let mut out = String::from("0x");
            for b in key {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
    }
}

/// Builds the op storing a CRL given as DER (parsed here; the active verifies it against the
/// domain's issuer certificates when it writes).
///
/// # Errors
/// The parser's one-line reason when the DER is not a CRL.
pub fn put_crl_op(der: &[u8], allow_stale: bool) -> Result<Op, String> {
    let crl = HeldCrl::from_der(der).map_err(|e| e.to_string())?;
    Ok(Op::PutCrl { crl, allow_stale })
}

/// Encodes a message as one checked frame.
///
/// # Errors
/// [`CodecError`] when the message is larger than `cap` or cannot be serialized.
pub fn encode<T: Serialize>(message: &T, cap: usize) -> Result<Vec<u8>, CodecError> {
    codec::seal(message, cap)
}

/// Decodes one checked frame.
///
/// # Errors
/// [`CodecError`] for a bad frame or payload.
pub fn decode<T: serde::de::DeserializeOwned>(frame: &[u8], cap: usize) -> Result<T, CodecError> {
    codec::open(frame, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        let all = KeyRange::prefix(b"");
        assert!(all.contains(b"") && all.contains(b"\xff\xff") && all.end.is_none());
        let r = KeyRange::prefix(b"ab");
        assert!(r.contains(b"ab") && r.contains(b"ab\xff") && !r.contains(b"ac"));
        assert!(!r.contains(b"aa\xff"));
        let ff = KeyRange::prefix(b"\xff\xff");
        assert!(ff.end.is_none() && ff.contains(b"\xff\xff\x01") && !ff.contains(b"\xfe"));
    }

    #[test]
    fn keys_show_as_text_or_hex() {
        assert_eq!(show_key(b"rule/7"), "\"rule/7\"");
        assert_eq!(show_key(b"\x00\x01"), "0x0001");
    }
}
