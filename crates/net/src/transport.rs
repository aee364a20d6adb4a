//! QUIC transport settings and the protocol names (ALPN) of every domsync service.

use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::BbrConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// ALPN of node-to-node replication. Only [`PeerRole::Node`](crate::PeerRole::Node) may use it.
pub const ALPN_REPL: &[u8] = b"domsync-repl/1";
/// ALPN of the gateway read service. [`PeerRole::Gateway`](crate::PeerRole::Gateway) and [`PeerRole::Node`](crate::PeerRole::Node) may use it.
pub const ALPN_GATEWAY: &[u8] = b"domsync-gw/1";
/// ALPN of remote administration (`domsync --remote`). Only [`PeerRole::Admin`](crate::PeerRole::Admin) may use it:
/// node and gateway certificates cannot administer.
pub const ALPN_ADMIN: &[u8] = b"domsync-admin/1";
/// ALPN of applications (`domsync_proto::app`). Only [`PeerRole::App`](crate::PeerRole::App)
/// may use it; what each application may read or write is its grant in the node's `[apps]`.
pub const ALPN_APP: &[u8] = b"domsync-app/1";

/// Application close code of a connection refused by [`authorize`](crate::authorize) ("forbidden").
pub const CLOSE_REFUSED: VarInt = VarInt::from_u32(0x403);

/// Server name to pass to `quinn::Endpoint::connect`: it must be a syntactically valid name,
/// but it is not checked (the server's URI SAN is).
pub const SERVER_NAME: &str = "domsync.invalid";

/// Most bidirectional streams a peer may have open at once on one connection.
pub const MAX_BIDI_STREAMS: u32 = 1024;
/// Most unidirectional streams a peer may have open at once on one connection.
pub const MAX_UNI_STREAMS: u32 = 100;
/// Bytes a peer may send on one stream beyond what the application has read.
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
/// Bytes a peer may send on all streams of a connection beyond what the application has read.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 << 20;
/// [`STREAM_RECEIVE_WINDOW`] on connections a node accepts (see [`server_transport_config`]).
pub const SERVER_STREAM_RECEIVE_WINDOW: u32 = 1 << 20;
/// [`CONNECTION_RECEIVE_WINDOW`] on connections a node accepts (see
/// [`server_transport_config`]).
pub const SERVER_CONNECTION_RECEIVE_WINDOW: u32 = 4 << 20;
/// Unacknowledged bytes this side keeps in flight on one connection.
pub const SEND_WINDOW: u64 = 32 << 20;
/// Interval of keep-alive packets on an otherwise idle connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A connection that hears nothing from its peer for this long is closed (the smaller of both
/// sides' values applies).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Explicit QUIC transport settings for domsync connections (quinn's defaults are a 1.25 MB
/// stream window, an unbounded connection window, 100 streams and no keep-alive):
///
/// | setting | value |
/// | --- | --- |
/// | concurrent bidirectional streams per peer | [`MAX_BIDI_STREAMS`] (1024) |
/// | concurrent unidirectional streams per peer | [`MAX_UNI_STREAMS`] (100) |
/// | stream receive window | [`STREAM_RECEIVE_WINDOW`] (4 MiB) |
/// | connection receive window | [`CONNECTION_RECEIVE_WINDOW`] (32 MiB): bounds the memory one peer can make us buffer |
/// | send window | [`SEND_WINDOW`] (32 MiB) |
/// | keep-alive | [`KEEP_ALIVE`] (5 s), well below the idle timeout so idle links stay up |
/// | idle timeout | [`IDLE_TIMEOUT`] (30 s): how long a silent peer takes to be declared lost |
/// | congestion controller | BBR (quinn's `BbrConfig`, default initial window) instead of quinn's default CUBIC |
///
/// Why BBR: CUBIC (quinn's default) takes every lost packet as congestion and cuts its window,
/// so on a long path with random loss the sender stays far below the link. Measured with
/// benches/wan.sh (100 ms round trip, 0.5 % loss each way; BENCHMARKS.md, "WAN"): with CUBIC
/// a snapshot moved at 0.35 MB/s, replication lag at 1,000 writes/s was p99 763 ms and a
/// 64 MiB resync never finished (each attempt outlived the standby's 5 s silence bound and
/// started over); with BBR the resync took 6.6 s (10 MB/s) and the lag p99 was 159 ms. BBR
/// paces at the delivery rate it measures and does not read isolated losses as congestion.
/// Bounded as before: its window stays under the receive windows above (4 MiB per stream,
/// 32 MiB per connection). Costs: on the bare veth link bulk transfers were about 2x slower
/// (a 256 MiB resync 3.4 s against 1.4 s; lag unchanged), and quinn marks its BBR
/// experimental. Only the congestion controller changes; the wire protocol does not.
///
/// The same settings suit both ends; [`client_config_for`](crate::client_config_for) applies them, and
/// [`server_config`](crate::server_config) takes them as an argument so a caller can adjust them.
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .congestion_controller_factory(Arc::new(BbrConfig::default()))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(
            // Fits: 30 000 ms.
            IDLE_TIMEOUT.as_millis() as u32,
        ))));
    t
}

/// [`transport_config`] for the connections a node accepts, with smaller receive windows
/// ([`SERVER_STREAM_RECEIVE_WINDOW`], [`SERVER_CONNECTION_RECEIVE_WINDOW`]): on an accepted
/// connection the peer only sends requests (follow, acks, probes, gateway queries, admin
/// requests); bulk data (records, snapshots, packages) flows towards the side that opened the
/// stream. A small window bounds what each connected peer can make the node buffer.
pub fn server_transport_config() -> TransportConfig {
    let mut t = transport_config();
    t.stream_receive_window(VarInt::from_u32(SERVER_STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(SERVER_CONNECTION_RECEIVE_WINDOW));
    t
}
