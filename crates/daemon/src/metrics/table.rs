//! The metrics as a table of definitions, [`METRICS`] (name, type, help, and how the samples
//! are read from a [`Snapshot`]), and the one renderer of the text format.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::time::Duration;

use super::state::{DomainMetrics, Snapshot};
use crate::Placement;
use domsync_proto::model::Role;
use domsync_proto::repl::SyncStatus;

/// How Prometheus treats a metric (its `# TYPE`).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value, printed as its type prints it.
#[derive(Debug, Clone, Copy)]
enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unsigned(v) => v.fmt(f),
            Value::Signed(v) => v.fmt(f),
            Value::Float(v) => v.fmt(f),
        }
    }
}

/// A label: its name and value (escaped when rendered).
type Label<'a> = (&'static str, Cow<'a, str>);

/// One line of a metric: `<name><suffix>{<labels>} <value>`, without braces when there are
/// no labels.
struct Sample<'a> {
    /// Appended to the metric's name: `_bucket`, `_sum` or `_count` for a histogram.
    suffix: &'static str,
    labels: Vec<Label<'a>>,
    value: Value,
}

impl<'a> Sample<'a> {
    fn new(labels: Vec<Label<'a>>, value: Value) -> Sample<'a> {
        Sample {
            suffix: "",
            labels,
            value,
        }
    }

    fn with_suffix(self, suffix: &'static str) -> Sample<'a> {
        Sample { suffix, ..self }
    }
}

/// One metric of the page: its head, and how its samples are read from a snapshot.
struct Metric {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: for<'a> fn(&'a Snapshot) -> Vec<Sample<'a>>,
}

/// States of `domsync_domain_state`, in the order they are listed.
const STATES: [&str; 4] = ["active", "standby", "waiting", "failed"];

/// Sync statuses of `domsync_standby_status` and `domsync_follower_status`, in the order
/// they are listed.
const STATUSES: [&str; 5] = [
    "never_synchronized",
    "synchronized",
    "lagging",
    "advanced",
    "collision",
];

/// The state shown for a domain: active or standby as its replica's live role says (a
/// domain can step down on its own), waiting or failed.
fn state(d: &DomainMetrics) -> &'static str {
    let live = d
        .replica
        .as_ref()
        .and_then(|r| r.status.as_ref())
        .map(|s| s.role);
    match (&d.placement, live) {
        (Placement::Serving(_), Some(Role::Active)) => "active",
        (Placement::Serving(_), _) => "standby",
        (Placement::Waiting(_), _) => "waiting",
        (Placement::Failed(_), _) => "failed",
    }
}

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

/// A standby's lag: records, bytes, seconds (zero unless lagging).
fn lag(s: &SyncStatus) -> (u64, u64, f64) {
    match s {
        SyncStatus::Lagging {
            records,
            bytes,
            behind,
        } => (*records, *bytes, behind.as_secs_f64()),
        _ => (0, 0, 0.0),
    }
}

/// The `domain` label.
fn domain(d: &DomainMetrics) -> Label<'_> {
    ("domain", Cow::Borrowed(d.name.as_str()))
}

/// 1 for `now`, 0 for every other of `all`: one sample each, labelled `labels` then `key`.
fn one_hot<'a>(
    labels: Vec<Label<'a>>,
    key: &'static str,
    all: &'static [&'static str],
    now: &'static str,
) -> impl Iterator<Item = Sample<'a>> {
    all.iter().map(move |s| {
        let mut labels = labels.clone();
        labels.push((key, Cow::Borrowed(*s)));
        Sample::new(labels, Value::Unsigned(u64::from(*s == now)))
    })
}

/// One sample per standby, labelled `domain` and `standby`, valued `value` of its status.
fn standby_lag(snap: &Snapshot, value: fn(&SyncStatus) -> Value) -> Vec<Sample<'_>> {
    snap.standbys()
        .map(|(d, n, s)| {
            Sample::new(
                vec![domain(d), ("standby", Cow::Borrowed(n.as_str()))],
                value(s),
            )
        })
        .collect()
}

/// Seconds of a duration counted in microseconds.
fn secs(micros: u64) -> f64 {
    Duration::from_micros(micros).as_secs_f64()
}

/// Every metric, in the order of the page.
static METRICS: &[Metric] = &[
    Metric {
        name: "domsync_domain_state",
        kind: Kind::Gauge,
        help: "1 for the state each domain is in here: active, standby, waiting or failed.",
        samples: |snap| {
            snap.domains
                .iter()
                .flat_map(|d| one_hot(vec![domain(d)], "state", &STATES, state(d)))
                .collect()
        },
    },
    Metric {
        name: "domsync_domain_epoch_term",
        kind: Kind::Gauge,
        help: "Term of the highest epoch seen.",
        samples: |snap| {
            snap.statuses()
                .map(|(d, s)| {
                    Sample::new(
                        vec![domain(d), ("node", Cow::Borrowed(s.epoch.node.as_str()))],
                        Value::Unsigned(s.epoch.term),
                    )
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_domain_lsn",
        kind: Kind::Gauge,
        help: "Lsn of the last record held.",
        samples: |snap| {
            snap.statuses()
                .map(|(d, s)| Sample::new(vec![domain(d)], Value::Unsigned(s.lsn.0)))
                .collect()
        },
    },
    Metric {
        name: "domsync_domain_log_bytes",
        kind: Kind::Gauge,
        help: "Bytes of change log retained.",
        samples: |snap| {
            snap.statuses()
                .map(|(d, s)| Sample::new(vec![domain(d)], Value::Unsigned(s.log_bytes)))
                .collect()
        },
    },
    Metric {
        name: "domsync_commit_seconds",
        kind: Kind::Histogram,
        help: "Durable commit latency (writes and applies).",
        samples: |snap| {
            let mut out = Vec::new();
            for (d, r) in snap.replicas() {
                for (bound, count) in &r.stats.commit_latency {
                    let le = if *bound == u64::MAX {
                        "+Inf".to_owned()
                    } else {
                        secs(*bound).to_string()
                    };
                    let labels = vec![domain(d), ("le", Cow::Owned(le))];
                    out.push(Sample::new(labels, Value::Unsigned(*count)).with_suffix("_bucket"));
                }
                let sum = Value::Float(secs(r.stats.commit_micros));
                out.push(Sample::new(vec![domain(d)], sum).with_suffix("_sum"));
                let count = Value::Unsigned(r.stats.commits);
                out.push(Sample::new(vec![domain(d)], count).with_suffix("_count"));
            }
            out
        },
    },
    Metric {
        name: "domsync_shipped_records_total",
        kind: Kind::Counter,
        help: "Records shipped to standbys since the domain became active here.",
        samples: |snap| {
            snap.domains
                .iter()
                .filter_map(|d| {
                    let (records, _) = d.shipped?;
                    Some(Sample::new(vec![domain(d)], Value::Unsigned(records)))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_shipped_bytes_total",
        kind: Kind::Counter,
        help: "Record bytes shipped to standbys since the domain became active here.",
        samples: |snap| {
            snap.domains
                .iter()
                .filter_map(|d| {
                    let (_, bytes) = d.shipped?;
                    Some(Sample::new(vec![domain(d)], Value::Unsigned(bytes)))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_unreplicated_trimmed_records_total",
        kind: Kind::Counter,
        help: "Records the log's size cap dropped on the active while no standby held them (a forced promotion would leave no copy to archive).",
        samples: |snap| {
            snap.domains
                .iter()
                .filter_map(|d| {
                    let n = d.unreplicated_trimmed?;
                    Some(Sample::new(vec![domain(d)], Value::Unsigned(n)))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_standby_status",
        kind: Kind::Gauge,
        help: "1 for the sync status of each standby, as its active sees it.",
        samples: |snap| {
            snap.standbys()
                .flat_map(|(d, n, s)| {
                    let labels = vec![domain(d), ("standby", Cow::Borrowed(n.as_str()))];
                    one_hot(labels, "status", &STATUSES, status_name(s))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_standby_lag_records",
        kind: Kind::Gauge,
        help: "Records the standby lacks.",
        samples: |snap| standby_lag(snap, |s| Value::Unsigned(lag(s).0)),
    },
    Metric {
        name: "domsync_standby_lag_bytes",
        kind: Kind::Gauge,
        help: "Bytes of records sent and not yet applied.",
        samples: |snap| standby_lag(snap, |s| Value::Unsigned(lag(s).1)),
    },
    Metric {
        name: "domsync_standby_lag_seconds",
        kind: Kind::Gauge,
        help: "Commit time the standby is behind.",
        samples: |snap| standby_lag(snap, |s| Value::Float(lag(s).2)),
    },
    Metric {
        name: "domsync_follower_status",
        kind: Kind::Gauge,
        help: "1 for the sync status of each standby replica here, as it sees itself.",
        samples: |snap| {
            snap.domains
                .iter()
                .filter_map(|d| d.follower.as_ref().map(|f| (d, f)))
                .flat_map(|(d, (active, s))| {
                    let labels = vec![domain(d), ("active", Cow::Borrowed(active.as_str()))];
                    one_hot(labels, "status", &STATUSES, status_name(s))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_crl_next_update_timestamp_seconds",
        kind: Kind::Gauge,
        help: "Each held CRL's nextUpdate, in seconds since the Unix epoch (alert on `- time() < 86400`).",
        samples: |snap| {
            snap.replicas()
                .flat_map(|(d, r)| {
                    r.crls.iter().filter_map(move |(issuer, kind, next)| {
                        Some(Sample::new(
                            vec![
                                domain(d),
                                ("issuer", Cow::Borrowed(issuer.as_str())),
                                ("kind", Cow::Borrowed(*kind)),
                            ],
                            Value::Signed((*next)?),
                        ))
                    })
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_certificate_expiry_timestamp_seconds",
        kind: Kind::Gauge,
        help: "End of validity (notAfter, Unix seconds) of this node's certificate (whose=own) and of each configured peer's as seen on its latest handshake (whose=peer).",
        samples: |snap| {
            snap.certificates
                .iter()
                .map(|(identity, whose, not_after)| {
                    Sample::new(
                        vec![
                            ("identity", Cow::Borrowed(identity.as_str())),
                            ("whose", Cow::Borrowed(*whose)),
                        ],
                        Value::Signed(*not_after),
                    )
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_gateway_requests_total",
        kind: Kind::Counter,
        help: "Gateway answers by result.",
        samples: |snap| {
            snap.gateway_requests
                .iter()
                .map(|(result, n)| {
                    Sample::new(vec![("result", Cow::Borrowed(*result))], Value::Unsigned(*n))
                })
                .collect()
        },
    },
    Metric {
        name: "domsync_gateway_connections",
        kind: Kind::Gauge,
        help: "Gateway connections open.",
        samples: |snap| {
            let open = u64::try_from(snap.gateway_connections).unwrap_or(u64::MAX);
            vec![Sample::new(Vec::new(), Value::Unsigned(open))]
        },
    },
    Metric {
        name: "domsync_descriptors_needed",
        kind: Kind::Gauge,
        help: "File descriptors the configuration needs: 2 per domain, the sockets, their connection limits and a margin.",
        samples: |snap| vec![Sample::new(Vec::new(), Value::Unsigned(snap.descriptors.0))],
    },
    Metric {
        name: "domsync_descriptors_limit",
        kind: Kind::Gauge,
        help: "The open-file limit of the process (the soft limit, raised to the hard one at start).",
        samples: |snap| vec![Sample::new(Vec::new(), Value::Unsigned(snap.descriptors.1))],
    },
    Metric {
        name: "domsync_descriptors_open",
        kind: Kind::Gauge,
        help: "File descriptors open now.",
        samples: |snap| {
            snap.descriptors
                .2
                .map(|n| Sample::new(Vec::new(), Value::Unsigned(n)))
                .into_iter()
                .collect()
        },
    },
];

/// Label values are quoted; names are restricted, but escape anyway.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The page: every metric of [`METRICS`] in order, its head then its samples.
pub(super) fn render(snap: &Snapshot) -> String {
    let mut text = String::new();
    for m in METRICS {
        let _ = writeln!(text, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(text, "# TYPE {} {}", m.name, m.kind.as_str());
        for s in (m.samples)(snap) {
            let _ = write!(text, "{}{}", m.name, s.suffix);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
                    .collect();
                let _ = write!(text, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(text, " {}", s.value);
        }
    }
    text
}
