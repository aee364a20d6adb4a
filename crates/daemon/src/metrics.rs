//! Metrics in the Prometheus text format (version 0.0.4), served over plain HTTP on a local
//! address (`node.metrics`): `GET /metrics`.
//!
//! Per domain: role, epoch term, lsn, log bytes, durable commit latency histogram, records and
//! bytes shipped (active), per standby its lag (records, bytes, seconds) and sync status (on
//! the active), the follower's own status (on a standby), CRL time to next update; per node:
//! gateway answers by result and gateway connections.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::run::{Daemon, Placement};
use domsync_proto::model::Role;
use domsync_proto::repl::SyncStatus;

/// The name Prometheus sees for a sync status.
fn status_name(s: &SyncStatus) -> &'static str {
    match s {
        SyncStatus::NeverSynchronized => "never_synchronized",
        SyncStatus::Synchronized => "synchronized",
        SyncStatus::Lagging { .. } => "lagging",
        SyncStatus::Advanced { .. } => "advanced",
        SyncStatus::Collision { .. } => "collision",
    }
}

const STATUSES: [&str; 5] = [
    "never_synchronized",
    "synchronized",
    "lagging",
    "advanced",
    "collision",
];

/// Label values are quoted; names are restricted, but escape anyway.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
}

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// Renders every metric of the daemon now.
pub fn render(daemon: &Daemon) -> String {
    let node = daemon.node();
    let mut o = Out {
        text: String::new(),
    };
    let placements = daemon.placements();
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));

    o.head(
        "domsync_domain_state",
        "gauge",
        "1 for the state each domain is in here: active, standby, waiting or failed.",
    );
    for (name, p) in &placements {
        // The role is read live: a domain can step down on its own.
        let live = node
            .replica(name)
            .and_then(|r| r.status().ok())
            .map(|s| s.role);
        let state = match (p, live) {
            (Placement::Serving(_), Some(Role::Active)) => "active",
            (Placement::Serving(_), _) => "standby",
            (Placement::Waiting(_), _) => "waiting",
            (Placement::Failed(_), _) => "failed",
        };
        for s in ["active", "standby", "waiting", "failed"] {
            o.line(
                "domsync_domain_state",
                &[("domain", name.as_str()), ("state", s)],
                u8::from(s == state),
            );
        }
    }
    let replicas: Vec<_> = placements
        .keys()
        .filter_map(|d| node.replica(d).map(|r| (d.clone(), r)))
        .collect();
    let statuses: Vec<_> = replicas
        .iter()
        .filter_map(|(d, r)| r.status().ok().map(|s| (d.clone(), s)))
        .collect();
    o.head(
        "domsync_domain_epoch_term",
        "gauge",
        "Term of the highest epoch seen.",
    );
    for (d, s) in &statuses {
        o.line(
            "domsync_domain_epoch_term",
            &[("domain", d.as_str()), ("node", s.epoch.node.as_str())],
            s.epoch.term,
        );
    }
    o.head(
        "domsync_domain_lsn",
        "gauge",
        "Lsn of the last record held.",
    );
    for (d, s) in &statuses {
        o.line(
            "domsync_domain_lsn",
            &[("domain", d.as_str())],
            s.position.lsn,
        );
    }
    o.head(
        "domsync_domain_log_bytes",
        "gauge",
        "Bytes of change log retained.",
    );
    for (d, s) in &statuses {
        o.line(
            "domsync_domain_log_bytes",
            &[("domain", d.as_str())],
            s.log_bytes,
        );
    }

    o.head(
        "domsync_commit_seconds",
        "histogram",
        "Durable commit latency (writes and applies).",
    );
    for (d, r) in &replicas {
        let stats = r.stats();
        for (bound, count) in &stats.commit_latency {
            let le = if *bound == u64::MAX {
                "+Inf".to_owned()
            } else {
                format!("{}", Duration::from_micros(*bound).as_secs_f64())
            };
            o.line(
                "domsync_commit_seconds_bucket",
                &[("domain", d.as_str()), ("le", &le)],
                count,
            );
        }
        o.line(
            "domsync_commit_seconds_sum",
            &[("domain", d.as_str())],
            Duration::from_micros(stats.commit_micros).as_secs_f64(),
        );
        o.line(
            "domsync_commit_seconds_count",
            &[("domain", d.as_str())],
            stats.commits,
        );
    }

    o.head(
        "domsync_shipped_records_total",
        "counter",
        "Records shipped to standbys since the domain became active here.",
    );
    let shipped: Vec<_> = placements
        .keys()
        .filter_map(|d| node.shipped(d).map(|s| (d.clone(), s)))
        .collect();
    for (d, (records, _)) in &shipped {
        o.line(
            "domsync_shipped_records_total",
            &[("domain", d.as_str())],
            records,
        );
    }
    o.head(
        "domsync_shipped_bytes_total",
        "counter",
        "Record bytes shipped to standbys since the domain became active here.",
    );
    for (d, (_, bytes)) in &shipped {
        o.line(
            "domsync_shipped_bytes_total",
            &[("domain", d.as_str())],
            bytes,
        );
    }

    o.head(
        "domsync_unreplicated_trimmed_records_total",
        "counter",
        "Records the log's size cap dropped on the active while no standby held them (a forced promotion would leave no copy to archive).",
    );
    for d in placements.keys() {
        if let Some(n) = node.unreplicated_trimmed(d) {
            o.line(
                "domsync_unreplicated_trimmed_records_total",
                &[("domain", d.as_str())],
                n,
            );
        }
    }

    let reports: Vec<_> = placements
        .keys()
        .flat_map(|d| node.sync_status(d).into_iter().map(move |r| (d.clone(), r)))
        .collect();
    o.head(
        "domsync_standby_status",
        "gauge",
        "1 for the sync status of each standby, as its active sees it.",
    );
    for (d, r) in &reports {
        let now = status_name(&r.status);
        for s in STATUSES {
            o.line(
                "domsync_standby_status",
                &[
                    ("domain", d.as_str()),
                    ("standby", r.node.as_str()),
                    ("status", s),
                ],
                u8::from(s == now),
            );
        }
    }
    for (metric, help) in [
        ("domsync_standby_lag_records", "Records the standby lacks."),
        (
            "domsync_standby_lag_bytes",
            "Bytes of records sent and not yet applied.",
        ),
        (
            "domsync_standby_lag_seconds",
            "Commit time the standby is behind.",
        ),
    ] {
        o.head(metric, "gauge", help);
        for (d, r) in &reports {
            let (records, bytes, behind) = match &r.status {
                SyncStatus::Lagging {
                    records,
                    bytes,
                    behind,
                } => (*records, *bytes, behind.as_secs_f64()),
                _ => (0, 0, 0.0),
            };
            let labels = [("domain", d.as_str()), ("standby", r.node.as_str())];
            match metric {
                "domsync_standby_lag_records" => o.line(metric, &labels, records),
                "domsync_standby_lag_bytes" => o.line(metric, &labels, bytes),
                _ => o.line(metric, &labels, behind),
            }
        }
    }
    o.head(
        "domsync_follower_status",
        "gauge",
        "1 for the sync status of each standby replica here, as it sees itself.",
    );
    for d in placements.keys() {
        if let Some(f) = node.follower_status(d) {
            let now = status_name(&f.status);
            for s in STATUSES {
                o.line(
                    "domsync_follower_status",
                    &[
                        ("domain", d.as_str()),
                        ("active", f.active.as_str()),
                        ("status", s),
                    ],
                    u8::from(s == now),
                );
            }
        }
    }

    o.head(
        "domsync_crl_next_update_seconds",
        "gauge",
        "Seconds until each CRL's next update (negative when overdue).",
    );
    for (d, r) in &replicas {
        if let Ok(read) = r.crls() {
            for crl in read.value {
                if let Some(next) = crl.next_update {
                    o.line(
                        "domsync_crl_next_update_seconds",
                        &[("domain", d.as_str()), ("issuer", &crl.issuer)],
                        next.saturating_sub(now_secs),
                    );
                }
            }
        }
    }

    o.head(
        "domsync_gateway_requests_total",
        "counter",
        "Gateway answers by result.",
    );
    for (result, n) in node.gateway_requests() {
        o.line("domsync_gateway_requests_total", &[("result", result)], n);
    }
    o.head(
        "domsync_gateway_connections",
        "gauge",
        "Gateway connections open.",
    );
    let _ = writeln!(
        o.text,
        "domsync_gateway_connections {}",
        node.gateway_connections()
    );
    o.text
}

/// Serves `GET /metrics` on `addr` until the task is dropped. Each connection gets one answer
/// and is closed; a request head is read for at most 5 s and 8 KiB.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(addr: SocketAddr, daemon: Arc<Daemon>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics connection not accepted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let daemon = Arc::clone(&daemon);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let (status, body) = if head.starts_with(b"GET /metrics ") {
                    ("200 OK", render(&daemon))
                } else {
                    ("404 Not Found", "only GET /metrics is served\n".to_owned())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}
