//! The messages of the gateway service (ALPN `domsync-gw/1`).
//!
//! A gateway opens one QUIC connection per node and one bidirectional stream per request. It
//! sends one [`Request`] frame and finishes its side; the node answers with [`Response`]
//! frames and finishes. A [`Query::Watch`] stream stays open: the node pushes each new
//! version as it commits (active) or is applied (standby). Every frame is a checked frame
//! (see [`crate::codec`]): version, `u32` length, postcard payload, CRC32; requests are capped
//! at [`MAX_REQUEST_BYTES`], answers at [`MAX_RESPONSE_BYTES`] (package content travels in
//! [`CHUNK_BYTES`] pieces). Only append enum variants, never reorder or remove them.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::model::{
    Crl, CrlNumber, DomainId, Epoch, Heard, IssuerCert, IssuerKey, NodeId, PolicyInfo, Position,
    Role, Version,
};

/// Largest encoded request.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Bytes of package content per [`Response::Chunk`].
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Largest encoded answer frame: a whole CRL (the largest single item) plus its envelope.
pub const MAX_RESPONSE_BYTES: usize = crate::model::MAX_CRL_BYTES + 64 * 1024;

/// Most names a request may carry (watch lists, sightings).
pub const MAX_NAMES: usize = 256;

/// Longest a request may ask a lagging node to wait for a position.
pub const MAX_WAIT_MS: u32 = 30_000;

/// One request of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The domain asked about.
    pub domain: DomainId,
    /// The gateway's last-seen active per domain, and how long ago it saw it (split-brain
    /// guard of a promotion, DESIGN.md §7). At most [`MAX_NAMES`] entries.
    pub seen: Vec<(DomainId, Heard)>,
    /// What is asked.
    pub query: Query,
}

/// What a gateway asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// The policy packages of the domain: [`Response::Policies`], or [`Response::Behind`]
    /// from a standby that knows it is behind.
    ListPolicies,
    /// One package: [`Response::PolicyBegin`], [`Response::Chunk`]s, [`Response::PolicyEnd`];
    /// or [`Response::NotModified`], [`Response::NotFound`], [`Response::Behind`].
    GetPolicy {
        /// Package name.
        name: String,
        /// Answer `NotModified` unless the package is newer than this.
        if_newer_than: Option<Version>,
        /// Read at this position or later: a lagging node waits up to `wait_ms` for it, then
        /// answers `Behind`.
        at_least: Option<Position>,
        /// How long to wait for `at_least` (capped at [`MAX_WAIT_MS`]).
        wait_ms: u32,
    },
    /// The CRLs held (without their bytes): [`Response::Crls`], or [`Response::Behind`] from
    /// a standby that knows it is behind.
    ListCrls,
    /// The CRL of an issuer: [`Response::Crl`], or `NotModified` / `NotFound` / `Behind`.
    GetCrl {
        /// Issuer distinguished name (RFC 4514 text).
        issuer: String,
        /// Answer `NotModified` unless the CRL number is above this.
        if_newer_than: Option<CrlNumber>,
    },
    /// Push every new version of these packages and CRLs. For each, the node first sends the
    /// current version if it is newer than the one given (resumption after a reconnect),
    /// then each new one as it is committed or applied. At most [`MAX_NAMES`] each.
    Watch {
        /// Packages and the version the gateway holds.
        policies: Vec<(String, Option<Version>)>,
        /// CRL issuers and the CRL number the gateway holds.
        crls: Vec<(String, Option<CrlNumber>)>,
    },
    /// The CRL of an issuer named by its RFC 4514 text or by the DER of its name; with
    /// `delta`, the newest delta CRL held beside its base. [`Response::Crl`], or
    /// `NotModified` / `NotFound` / `Behind`; [`Refusal::BadRequest`] when two held names
    /// render as the text asked (ask by DER then).
    GetCrlOf {
        /// The issuer.
        issuer: IssuerKey,
        /// The delta CRL instead of the base.
        delta: bool,
        /// Answer `NotModified` unless the CRL number is above this.
        if_newer_than: Option<CrlNumber>,
    },
    /// The issuer certificates the domain holds (the CAs whose CRLs it verifies and
    /// distributes): [`Response::Issuers`], or [`Response::Behind`].
    ListIssuers,
}

/// Which node answered, in which role and epoch, and the position it read at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The node.
    pub node: NodeId,
    /// Its role for the domain.
    pub role: Role,
    /// The highest epoch it has seen for the domain.
    pub epoch: Epoch,
    /// The position of the read.
    pub position: Position,
}

/// A CRL without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlInfo {
    /// Issuer distinguished name.
    pub issuer: String,
    /// CRL number.
    pub number: CrlNumber,
    /// `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
    /// `nextUpdate`, seconds since the Unix epoch.
    pub next_update: Option<i64>,
    /// Size of the DER bytes.
    pub size: u64,
}

impl From<&Crl> for CrlInfo {
    fn from(c: &Crl) -> CrlInfo {
        CrlInfo {
            issuer: c.issuer.clone(),
            number: c.number.clone(),
            this_update: c.this_update,
            next_update: c.next_update,
            size: c.der.len() as u64,
        }
    }
}

/// One answer frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The packages of the domain.
    Policies {
        /// Who served it.
        served: Served,
        /// The packages.
        list: Vec<PolicyInfo>,
    },
    /// A package follows: its content in [`Response::Chunk`]s (`info.size` bytes in all,
    /// SHA-256 `info.sha256`), then [`Response::PolicyEnd`].
    PolicyBegin {
        /// Who served it.
        served: Served,
        /// The package.
        info: PolicyInfo,
    },
    /// A piece of the package's content.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The package is complete.
    PolicyEnd,
    /// The held version is current.
    NotModified {
        /// Who served it.
        served: Served,
    },
    /// No such package or CRL in the domain, as of the position in `served`. Only a node that
    /// can vouch for its position says so: an active, or a standby synchronized with it.
    NotFound {
        /// Who served it, and the position it read at.
        served: Served,
    },
    /// This node had not reached the asked position after waiting; or it is a standby that
    /// knows it is behind the domain (never synchronized, lagging, or not heard from its
    /// active within its silence bound) and does not hold the item asked for, or was asked
    /// for a list. Ask another node.
    Behind {
        /// Who served it, and where it stands.
        served: Served,
    },
    /// The CRLs of the domain.
    Crls {
        /// Who served it.
        served: Served,
        /// The CRLs.
        list: Vec<CrlInfo>,
    },
    /// A CRL.
    Crl {
        /// Who served it.
        served: Served,
        /// The CRL.
        crl: Crl,
    },
    /// A watched package or CRL was removed.
    Removed {
        /// Who served it.
        served: Served,
        /// The package name, or the CRL issuer.
        name: String,
    },
    /// The request was refused; the stream ends.
    Refused(Refusal),
    /// The issuer certificates of the domain.
    Issuers {
        /// Who served it.
        served: Served,
        /// The certificates, in subject order.
        list: Vec<IssuerCert>,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// This gateway may not read the domain (or the domain is not held here: the two are not
    /// told apart).
    #[error("forbidden: this gateway is not granted the domain on this node; ask the operator to grant it")]
    Forbidden,
    /// The request was malformed or out of bounds.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A limit was reached (streams, connections, watches).
    #[error("busy: {0}; retry later or use another node")]
    Busy(String),
    /// The node failed to read its store.
    #[error("the node could not read the domain: {0}; try another node")]
    Unavailable(String),
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
