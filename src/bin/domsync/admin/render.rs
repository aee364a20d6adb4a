//! How the daemon's answers read: the status table and JSON document, the placement plan.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use domsync_proto::admin::{
    CertificateExpiry, DomainReport, Lag, NodeStatus, PlacementState, PlanReport,
};
use domsync_proto::model::NodeId;
use domsync_proto::repl::SyncStatus;
use serde_json::{json, Value};

/// `micros` since the Unix epoch as an RFC 3339 UTC time with microseconds
/// (`2026-12-03T09:06:42.371061Z`), for the operator's eyes.
pub(super) fn rfc3339_micros(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Days to a civil date (proleptic Gregorian), after H. Hinnant's `civil_from_days`.
    let z = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{frac:06}Z")
}

fn opt_node(n: Option<&NodeId>) -> String {
    n.map_or_else(|| "?".to_owned(), ToString::to_string)
}

pub(super) fn join(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time (milliseconds since the Unix epoch) as the operator reads it: RFC 3339 UTC, and
/// how long ago.
fn ago(now: SystemTime, ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "never".into();
    };
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let secs = now_ms.saturating_sub(ms) as f64 / 1000.0;
    let at = rfc3339_micros(ms.saturating_mul(1000));
    // Milliseconds are enough here: drop the last three digits of the microseconds.
    let at = format!("{}Z", &at[..at.len().saturating_sub(4)]);
    format!("{at} ({secs:.1} s ago)")
}

fn lag_text(lag: &Lag) -> String {
    format!(
        "{} rec / {} B / {:.3} s",
        lag.records,
        lag.bytes,
        lag.ms as f64 / 1000.0
    )
}

/// The status as a table: one line per domain, one indented line per standby (or, on a
/// standby, for the active it follows).
pub fn status_table(s: &NodeStatus, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node {}", s.node);
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<14} {:>10}  STATE",
        "DOMAIN", "ROLE", "EPOCH", "POSITION"
    );
    for d in &s.domains {
        domain_lines(&mut out, d, now);
    }
    for d in &s.domains {
        for line in crl_warnings(d, now) {
            let _ = writeln!(out, "{line}");
        }
    }
    for c in &s.certificates {
        if let Some(warning) = expiry_warning(c, now) {
            let _ = writeln!(out, "{warning}");
        }
    }
    out
}

/// A CRL this close to its nextUpdate is warned about.
const CRL_WARNING_SECS: i64 = 24 * 3600;

/// Warning lines about a domain's CRLs: past or near their nextUpdate, unverified, stored by
/// an earlier release; and the domain's accept_unverified_crls setting.
fn crl_warnings(d: &DomainReport, now: SystemTime) -> Vec<String> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let name = &d.domain;
    let mut out = Vec::new();
    if d.accept_unverified_crls {
        out.push(format!("NOTE: domain {name} accepts unverified CRLs (accept_unverified_crls = true in its configuration)"));
    }
    for c in &d.crls {
        let what = format!(
            "{} CRL number {} of {} in domain {name}",
            c.kind, c.number, c.issuer
        );
        match c.next_update {
            Some(t) if t <= now_s => out.push(format!(
                "WARNING: {what} is past its nextUpdate {}: upload the issuer's current CRL (`domsync crl put {name} FILE`)",
                domsync_proto::model::utc(t)
            )),
            Some(t) if t - now_s <= CRL_WARNING_SECS => out.push(format!(
                "WARNING: {what} reaches its nextUpdate {} within a day: upload the issuer's next CRL",
                domsync_proto::model::utc(t)
            )),
            _ => {}
        }
        if c.kind == "legacy" {
            out.push(format!("WARNING: {what} was stored unverified by an earlier release: `domsync issuer add {name} CA.pem`, upload the CRL again, then `domsync crl remove {name} '{}' {} --legacy`", c.issuer, c.number));
        } else if !c.verified {
            out.push(format!(
                "NOTE: {what} is stored unverified (no issuer certificate held)"
            ));
        }
    }
    out
}

/// A certificate this close to its end of validity is warned about.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// The warning line of a certificate expired or expiring within [`EXPIRY_WARNING_DAYS`].
fn expiry_warning(c: &CertificateExpiry, now: SystemTime) -> Option<String> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let left = c.not_after_s.saturating_sub(now_s);
    if left > EXPIRY_WARNING_DAYS * 86_400 {
        return None;
    }
    let whose = if c.own { "this node's" } else { "peer" };
    let at = rfc3339_micros(
        u64::try_from(c.not_after_s)
            .unwrap_or(0)
            .saturating_mul(1_000_000),
    );
    let at = format!("{}Z", &at[..at.len().saturating_sub(8)]);
    Some(if left <= 0 {
        format!(
            "WARNING: {whose} certificate {} (serial {}) expired at {at}: issue a new one (`domsync pki issue`) and send SIGHUP",
            c.identity, c.serial
        )
    } else {
        format!(
            "WARNING: {whose} certificate {} (serial {}) expires at {at}, in {:.1} days: issue a new one (`domsync pki issue`) and send SIGHUP",
            c.identity,
            c.serial,
            left as f64 / 86_400.0
        )
    })
}

fn domain_lines(out: &mut String, d: &DomainReport, now: SystemTime) {
    let (role, epoch, lsn) = match &d.replica {
        Some(r) => (
            r.role.to_string(),
            r.epoch.to_string(),
            r.position.lsn.to_string(),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let mut state = match &d.placement {
        PlacementState::Serving => "serving".to_owned(),
        PlacementState::Waiting(w) => format!("waiting: {w}"),
        PlacementState::Failed(f) => format!("FAILED: {f}"),
    };
    if d.collisions > 0 {
        let _ = write!(
            state,
            ", {} archived collisions (domsync collisions list {})",
            d.collisions, d.domain
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:<8} {:<14} {:>10}  {state}",
        d.domain.as_str(),
        role,
        epoch,
        lsn
    );
    for sb in &d.standbys {
        let _ = writeln!(
            out,
            "  standby {:<14} {:<18} lag {:<28} last sync {}{}",
            sb.node.as_str(),
            sb.status.name(),
            lag_text(&sb.lag),
            ago(now, sb.last_sync_ms),
            if sb.connected { "" } else { ", disconnected" }
        );
    }
    if let Some(f) = &d.follower {
        let _ = writeln!(
            out,
            "  follows {:<14} {:<18} lag {:<28} last sync {}{}{}",
            f.active.as_str(),
            f.status.name(),
            lag_text(&f.lag),
            ago(now, f.last_sync_ms),
            if f.connected { "" } else { ", disconnected" },
            f.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
}

fn lag_json(lag: &Lag) -> Value {
    json!({"records": lag.records, "bytes": lag.bytes, "ms": lag.ms})
}

fn sync_json(s: &SyncStatus) -> Value {
    match s {
        SyncStatus::Advanced { records } => json!({"name": s.name(), "records_ahead": records}),
        SyncStatus::Collision { fork } => json!({"name": s.name(), "fork_lsn": fork.0}),
        _ => json!({"name": s.name()}),
    }
}

/// The status as one JSON document (for scripts).
pub fn status_json(s: &NodeStatus) -> String {
    let domains: Vec<Value> = s
        .domains
        .iter()
        .map(|d| {
            let (placement, detail) = match &d.placement {
                PlacementState::Serving => ("serving", None),
                PlacementState::Waiting(w) => ("waiting", Some(w)),
                PlacementState::Failed(f) => ("failed", Some(f)),
            };
            let standbys: Vec<Value> = d
                .standbys
                .iter()
                .map(|sb| {
                    json!({
                        "node": sb.node.to_string(),
                        "sync_status": sync_json(&sb.status),
                        "lag": lag_json(&sb.lag),
                        "durable_lsn": sb.durable.0,
                        "last_sync_ms": sb.last_sync_ms,
                        "connected": sb.connected,
                    })
                })
                .collect();
            let follower = d.follower.as_ref().map(|f| {
                let recent: Vec<Value> = f
                    .recent_errors
                    .iter()
                    .map(|(at, why)| json!({"at_unix_ms": at, "error": why}))
                    .collect();
                json!({
                    "active": f.active.to_string(),
                    "sync_status": sync_json(&f.status),
                    "lag": lag_json(&f.lag),
                    "last_sync_ms": f.last_sync_ms,
                    "last_error": f.last_error,
                    "recent_errors": recent,
                    "connected": f.connected,
                    "clock_skew_ms": f.clock_skew_ms,
                })
            });
            let r = d.replica.as_ref();
            json!({
                "domain": d.domain.to_string(),
                "placement": placement,
                "placement_detail": detail,
                "role": r.map(|r| r.role.to_string()),
                "epoch": r.map(|r| json!({"term": r.epoch.term, "node": r.epoch.node.to_string()})),
                "lsn": r.map(|r| r.position.lsn.0),
                "chain": r.map(|r| r.position.chain),
                "digest": r.map(|r| r.digest.to_string()),
                "collisions": d.collisions,
                "accept_unverified_crls": d.accept_unverified_crls,
                "crls": d.crls.iter().map(|c| json!({
                    "issuer": c.issuer,
                    "kind": c.kind,
                    "number": c.number.to_string(),
                    "next_update_unix_s": c.next_update,
                    "verified": c.verified,
                })).collect::<Vec<Value>>(),
                "standbys": standbys,
                "follower": follower,
            })
        })
        .collect();
    let certificates: Vec<Value> = s
        .certificates
        .iter()
        .map(|c| {
            json!({
                "identity": c.identity,
                "whose": if c.own { "own" } else { "peer" },
                "serial": c.serial,
                "not_after_unix_s": c.not_after_s,
            })
        })
        .collect();
    json!({"node": s.node.to_string(), "domains": domains, "certificates": certificates})
        .to_string()
}

/// The plan as text: load per node, every domain, the moves.
pub fn plan_text(p: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "plan by node {}", p.node);
    let _ = writeln!(
        out,
        "{:<14} {:<12} {:<22} {:>9} {:>9}",
        "NODE", "REGION", "ADDRESS", "LOAD NOW", "PLANNED"
    );
    for n in &p.nodes {
        let _ = writeln!(
            out,
            "{:<14} {:<12} {:<22} {:>9} {:>9}",
            n.id.as_str(),
            n.region.as_deref().unwrap_or("-"),
            n.address.to_string(),
            n.load_now,
            n.load
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:<12} {:<14} {:<14}",
        "DOMAIN", "WEIGHT", "REGION", "ACTIVE", "PLANNED"
    );
    for d in &p.domains {
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:<12} {:<14} {:<14}",
            d.domain.as_str(),
            d.weight,
            d.region.as_deref().unwrap_or("-"),
            opt_node(d.active.as_ref()),
            opt_node(d.planned.as_ref())
        );
    }
    if p.moves.is_empty() {
        let _ = writeln!(out, "moves: none (balanced)");
    } else {
        let _ = writeln!(out, "moves ({}):", p.moves.len());
        for m in &p.moves {
            let _ = writeln!(
                out,
                "  {}: {} -> {}",
                m.domain,
                opt_node(m.from.as_ref()),
                m.to
            );
        }
    }
    out
}

/// The plan as one JSON document.
pub fn plan_json(p: &PlanReport) -> String {
    let nodes: Vec<Value> = p
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id.to_string(),
                "region": n.region,
                "address": n.address.to_string(),
                "load_now": n.load_now,
                "load": n.load,
            })
        })
        .collect();
    let domains: Vec<Value> = p
        .domains
        .iter()
        .map(|d| {
            json!({
                "domain": d.domain.to_string(),
                "weight": d.weight,
                "region": d.region,
                "active": d.active.as_ref().map(ToString::to_string),
                "planned": d.planned.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    let moves: Vec<Value> = p
        .moves
        .iter()
        .map(|m| {
            json!({
                "domain": m.domain.to_string(),
                "from": m.from.as_ref().map(ToString::to_string),
                "to": m.to.to_string(),
            })
        })
        .collect();
    json!({"node": p.node.to_string(), "nodes": nodes, "domains": domains, "moves": moves})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::rfc3339_micros;

    #[test]
    fn archive_times_read_as_rfc3339() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_796_288_802_371_061),
            "2026-12-03T09:06:42.371061Z"
        );
        assert_eq!(
            rfc3339_micros(951_782_400_500_000),
            "2000-02-29T00:00:00.500000Z"
        );
        assert_eq!(
            rfc3339_micros(1_709_251_199_000_000),
            "2024-02-29T23:59:59.000000Z"
        );
    }

    #[test]
    fn certificates_near_their_end_are_warned_about() {
        use domsync_proto::admin::CertificateExpiry;
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_288_802);
        let cert = |own, not_after_s| CertificateExpiry {
            identity: "domsync://node/a".into(),
            own,
            serial: "01:02".into(),
            not_after_s,
        };
        assert_eq!(
            super::expiry_warning(&cert(true, 1_796_288_802 + 31 * 86_400), now),
            None
        );
        let soon = super::expiry_warning(&cert(false, 1_796_288_802 + 2 * 86_400), now).unwrap();
        assert!(soon.contains("peer certificate domsync://node/a (serial 01:02) expires at 2026-12-05T09:06:42Z, in 2.0 days"), "{soon}");
        let gone = super::expiry_warning(&cert(true, 1_796_288_802 - 10), now).unwrap();
        assert!(
            gone.contains("this node's certificate") && gone.contains("expired at"),
            "{gone}"
        );
    }

    #[test]
    fn last_sync_reads_as_a_time_and_an_age() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_288_832_371);
        assert_eq!(
            super::ago(now, Some(1_796_288_802_371)),
            "2026-12-03T09:06:42.371Z (30.0 s ago)"
        );
        assert_eq!(super::ago(now, None), "never");
    }
}
