//! The page pinned byte for byte: a representative state as the hand-written renderer the
//! table of definitions replaced rendered it.

use std::time::Duration;

use super::state::{DomainMetrics, ReplicaMetrics, ReplicaStatus, Snapshot};
use super::table::render;
use crate::Placement;
use domsync_proto::model::{Epoch, Lsn, NodeId, Role};
use domsync_proto::repl::SyncStatus;
use domsync_store::WriterStats;

fn n(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn status(role: Role, term: u64, node: &str, lsn: u64, log_bytes: u64) -> ReplicaStatus {
    ReplicaStatus {
        role,
        epoch: Epoch {
            term,
            node: n(node),
        },
        lsn: Lsn(lsn),
        log_bytes,
    }
}

/// Every kind of line: each placement, a domain stepped down on its own, an unreadable
/// status, every sync status, histogram bounds, CRLs due, overdue and without next
/// update, label values to escape.
fn representative() -> Snapshot {
    let stats = WriterStats {
        commits: 7,
        records: 9,
        commit_latency: vec![(500, 1), (1_000, 3), (250_000, 6), (u64::MAX, 7)],
        commit_micros: 1_234_567,
    };
    let domain = |name: &str, placement: Placement| DomainMetrics {
        name: name.parse().unwrap(),
        placement,
        replica: None,
        shipped: None,
        unreplicated_trimmed: None,
        standbys: Vec::new(),
        follower: None,
    };
    Snapshot {
        domains: vec![
            DomainMetrics {
                replica: Some(ReplicaMetrics {
                    status: Some(status(Role::Active, 3, "a", 42, 4096)),
                    stats: stats.clone(),
                    crls: vec![
                        ("CN=Root \"CA\"\\1\nx".into(), "base", Some(1_700_000_090)),
                        ("CN=Old".into(), "legacy", Some(1_699_999_000)),
                        ("CN=Forever".into(), "base", None),
                    ],
                }),
                shipped: Some((40, 81_920)),
                unreplicated_trimmed: Some(2),
                standbys: vec![
                    (
                        n("b"),
                        SyncStatus::Lagging {
                            records: 5,
                            bytes: 1_000,
                            behind: Duration::from_millis(1_500),
                        },
                    ),
                    (n("c"), SyncStatus::Synchronized),
                    (n("d"), SyncStatus::NeverSynchronized),
                ],
                ..domain("t1", Placement::Serving(Role::Active))
            },
            DomainMetrics {
                replica: Some(ReplicaMetrics {
                    status: Some(status(Role::Standby, 4, "b", 17, 0)),
                    stats: WriterStats::default(),
                    crls: Vec::new(),
                }),
                follower: Some((
                    n("b"),
                    SyncStatus::Lagging {
                        records: 1,
                        bytes: 2,
                        behind: Duration::from_micros(250),
                    },
                )),
                // Placed active, stepped down since.
                ..domain("t2", Placement::Serving(Role::Active))
            },
            DomainMetrics {
                replica: Some(ReplicaMetrics {
                    status: None,
                    stats,
                    crls: Vec::new(),
                }),
                follower: Some((n("a"), SyncStatus::Collision { fork: Lsn(9) })),
                ..domain("t3", Placement::Serving(Role::Standby))
            },
            DomainMetrics {
                follower: Some((n("c"), SyncStatus::Advanced { records: 3 })),
                ..domain("t4", Placement::Waiting("asking".into()))
            },
            domain("t5", Placement::Failed("disk".into())),
        ],
        gateway_requests: vec![("ok", 10), ("forbidden", 0), ("not_found", 3)],
        gateway_connections: 2,
        certificates: vec![
            ("domsync://node/a".into(), "own", 1_790_000_000),
            ("domsync://node/b".into(), "peer", 1_699_999_999),
        ],
        descriptors: (2_467, 65_536, Some(1_012)),
    }
}

#[test]
fn a_representative_state_renders_exactly() {
    assert_eq!(render(&representative()), EXPECTED);
}

#[test]
fn nothing_placed_renders_every_head_and_the_node_metrics() {
    // Every head; the node's own metrics, valued zero, each under its head; no domain's.
    let node_metrics = [
        "domsync_gateway_connections",
        "domsync_descriptors_needed",
        "domsync_descriptors_limit",
    ];
    let expected: String = EXPECTED
        .lines()
        .filter_map(|l| {
            if l.starts_with("# ") {
                return Some(format!("{l}\n"));
            }
            let name = l.split(' ').next()?;
            node_metrics.contains(&name).then(|| format!("{name} 0\n"))
        })
        .collect();
    assert_eq!(render(&Snapshot::default()), expected);
}

/// The page rendered from [`representative`], pinned before the table of definitions
/// replaced the hand-written renderer.
const EXPECTED: &str = r##"# HELP domsync_domain_state 1 for the state each domain is in here: active, standby, waiting or failed.
# TYPE domsync_domain_state gauge
domsync_domain_state{domain="t1",state="active"} 1
domsync_domain_state{domain="t1",state="standby"} 0
domsync_domain_state{domain="t1",state="waiting"} 0
domsync_domain_state{domain="t1",state="failed"} 0
domsync_domain_state{domain="t2",state="active"} 0
domsync_domain_state{domain="t2",state="standby"} 1
domsync_domain_state{domain="t2",state="waiting"} 0
domsync_domain_state{domain="t2",state="failed"} 0
domsync_domain_state{domain="t3",state="active"} 0
domsync_domain_state{domain="t3",state="standby"} 1
domsync_domain_state{domain="t3",state="waiting"} 0
domsync_domain_state{domain="t3",state="failed"} 0
domsync_domain_state{domain="t4",state="active"} 0
domsync_domain_state{domain="t4",state="standby"} 0
domsync_domain_state{domain="t4",state="waiting"} 1
domsync_domain_state{domain="t4",state="failed"} 0
domsync_domain_state{domain="t5",state="active"} 0
domsync_domain_state{domain="t5",state="standby"} 0
domsync_domain_state{domain="t5",state="waiting"} 0
domsync_domain_state{domain="t5",state="failed"} 1
# HELP domsync_domain_epoch_term Term of the highest epoch seen.
# TYPE domsync_domain_epoch_term gauge
domsync_domain_epoch_term{domain="t1",node="a"} 3
domsync_domain_epoch_term{domain="t2",node="b"} 4
# HELP domsync_domain_lsn Lsn of the last record held.
# TYPE domsync_domain_lsn gauge
domsync_domain_lsn{domain="t1"} 42
domsync_domain_lsn{domain="t2"} 17
# HELP domsync_domain_log_bytes Bytes of change log retained.
# TYPE domsync_domain_log_bytes gauge
domsync_domain_log_bytes{domain="t1"} 4096
domsync_domain_log_bytes{domain="t2"} 0
# HELP domsync_commit_seconds Durable commit latency (writes and applies).
# TYPE domsync_commit_seconds histogram
domsync_commit_seconds_bucket{domain="t1",le="0.0005"} 1
domsync_commit_seconds_bucket{domain="t1",le="0.001"} 3
domsync_commit_seconds_bucket{domain="t1",le="0.25"} 6
domsync_commit_seconds_bucket{domain="t1",le="+Inf"} 7
domsync_commit_seconds_sum{domain="t1"} 1.234567
domsync_commit_seconds_count{domain="t1"} 7
domsync_commit_seconds_sum{domain="t2"} 0
domsync_commit_seconds_count{domain="t2"} 0
domsync_commit_seconds_bucket{domain="t3",le="0.0005"} 1
domsync_commit_seconds_bucket{domain="t3",le="0.001"} 3
domsync_commit_seconds_bucket{domain="t3",le="0.25"} 6
domsync_commit_seconds_bucket{domain="t3",le="+Inf"} 7
domsync_commit_seconds_sum{domain="t3"} 1.234567
domsync_commit_seconds_count{domain="t3"} 7
# HELP domsync_shipped_records_total Records shipped to standbys since the domain became active here.
# TYPE domsync_shipped_records_total counter
domsync_shipped_records_total{domain="t1"} 40
# HELP domsync_shipped_bytes_total Record bytes shipped to standbys since the domain became active here.
# TYPE domsync_shipped_bytes_total counter
domsync_shipped_bytes_total{domain="t1"} 81920
# HELP domsync_unreplicated_trimmed_records_total Records the log's size cap dropped on the active while no standby held them (a forced promotion would leave no copy to archive).
# TYPE domsync_unreplicated_trimmed_records_total counter
domsync_unreplicated_trimmed_records_total{domain="t1"} 2
# HELP domsync_standby_status 1 for the sync status of each standby, as its active sees it.
# TYPE domsync_standby_status gauge
domsync_standby_status{domain="t1",standby="b",status="never_synchronized"} 0
domsync_standby_status{domain="t1",standby="b",status="synchronized"} 0
domsync_standby_status{domain="t1",standby="b",status="lagging"} 1
domsync_standby_status{domain="t1",standby="b",status="advanced"} 0
domsync_standby_status{domain="t1",standby="b",status="collision"} 0
domsync_standby_status{domain="t1",standby="c",status="never_synchronized"} 0
domsync_standby_status{domain="t1",standby="c",status="synchronized"} 1
domsync_standby_status{domain="t1",standby="c",status="lagging"} 0
domsync_standby_status{domain="t1",standby="c",status="advanced"} 0
domsync_standby_status{domain="t1",standby="c",status="collision"} 0
domsync_standby_status{domain="t1",standby="d",status="never_synchronized"} 1
domsync_standby_status{domain="t1",standby="d",status="synchronized"} 0
domsync_standby_status{domain="t1",standby="d",status="lagging"} 0
domsync_standby_status{domain="t1",standby="d",status="advanced"} 0
domsync_standby_status{domain="t1",standby="d",status="collision"} 0
# HELP domsync_standby_lag_records Records the standby lacks.
# TYPE domsync_standby_lag_records gauge
domsync_standby_lag_records{domain="t1",standby="b"} 5
domsync_standby_lag_records{domain="t1",standby="c"} 0
domsync_standby_lag_records{domain="t1",standby="d"} 0
# HELP domsync_standby_lag_bytes Bytes of records sent and not yet applied.
# TYPE domsync_standby_lag_bytes gauge
domsync_standby_lag_bytes{domain="t1",standby="b"} 1000
domsync_standby_lag_bytes{domain="t1",standby="c"} 0
domsync_standby_lag_bytes{domain="t1",standby="d"} 0
# HELP domsync_standby_lag_seconds Commit time the standby is behind.
# TYPE domsync_standby_lag_seconds gauge
domsync_standby_lag_seconds{domain="t1",standby="b"} 1.5
domsync_standby_lag_seconds{domain="t1",standby="c"} 0
domsync_standby_lag_seconds{domain="t1",standby="d"} 0
# HELP domsync_follower_status 1 for the sync status of each standby replica here, as it sees itself.
# TYPE domsync_follower_status gauge
domsync_follower_status{domain="t2",active="b",status="never_synchronized"} 0
domsync_follower_status{domain="t2",active="b",status="synchronized"} 0
domsync_follower_status{domain="t2",active="b",status="lagging"} 1
domsync_follower_status{domain="t2",active="b",status="advanced"} 0
domsync_follower_status{domain="t2",active="b",status="collision"} 0
domsync_follower_status{domain="t3",active="a",status="never_synchronized"} 0
domsync_follower_status{domain="t3",active="a",status="synchronized"} 0
domsync_follower_status{domain="t3",active="a",status="lagging"} 0
domsync_follower_status{domain="t3",active="a",status="advanced"} 0
domsync_follower_status{domain="t3",active="a",status="collision"} 1
domsync_follower_status{domain="t4",active="c",status="never_synchronized"} 0
domsync_follower_status{domain="t4",active="c",status="synchronized"} 0
domsync_follower_status{domain="t4",active="c",status="lagging"} 0
domsync_follower_status{domain="t4",active="c",status="advanced"} 1
domsync_follower_status{domain="t4",active="c",status="collision"} 0
# HELP domsync_crl_next_update_timestamp_seconds Each held CRL's nextUpdate, in seconds since the Unix epoch (alert on `- time() < 86400`).
# TYPE domsync_crl_next_update_timestamp_seconds gauge
domsync_crl_next_update_timestamp_seconds{domain="t1",issuer="CN=Root \"CA\"\\1\nx",kind="base"} 1700000090
domsync_crl_next_update_timestamp_seconds{domain="t1",issuer="CN=Old",kind="legacy"} 1699999000
# HELP domsync_certificate_expiry_timestamp_seconds End of validity (notAfter, Unix seconds) of this node's certificate (whose=own) and of each configured peer's as seen on its latest handshake (whose=peer).
# TYPE domsync_certificate_expiry_timestamp_seconds gauge
domsync_certificate_expiry_timestamp_seconds{identity="domsync://node/a",whose="own"} 1790000000
domsync_certificate_expiry_timestamp_seconds{identity="domsync://node/b",whose="peer"} 1699999999
# HELP domsync_gateway_requests_total Gateway answers by result.
# TYPE domsync_gateway_requests_total counter
domsync_gateway_requests_total{result="ok"} 10
domsync_gateway_requests_total{result="forbidden"} 0
domsync_gateway_requests_total{result="not_found"} 3
# HELP domsync_gateway_connections Gateway connections open.
# TYPE domsync_gateway_connections gauge
domsync_gateway_connections 2
# HELP domsync_descriptors_needed File descriptors the configuration needs: 2 per domain, the sockets, their connection limits and a margin.
# TYPE domsync_descriptors_needed gauge
domsync_descriptors_needed 2467
# HELP domsync_descriptors_limit The open-file limit of the process (the soft limit, raised to the hard one at start).
# TYPE domsync_descriptors_limit gauge
domsync_descriptors_limit 65536
# HELP domsync_descriptors_open File descriptors open now.
# TYPE domsync_descriptors_open gauge
domsync_descriptors_open 1012
"##;

#[test]
fn query_strings_are_ignored_other_paths_are_not() {
    use super::is_metrics_request;
    assert!(is_metrics_request(b"GET /metrics HTTP/1.1\r\n\r\n"));
    assert!(is_metrics_request(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"));
    assert!(is_metrics_request(b"GET /metrics? HTTP/1.1\r\n\r\n"));
    assert!(!is_metrics_request(b"GET /metricsx HTTP/1.1\r\n\r\n"));
    assert!(!is_metrics_request(b"GET /metrics/x HTTP/1.1\r\n\r\n"));
    assert!(!is_metrics_request(b"POST /metrics HTTP/1.1\r\n\r\n"));
}
