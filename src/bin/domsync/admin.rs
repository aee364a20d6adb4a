//! Daemon mode: `domsync` talking to a running `domsyncd` over its admin socket (local) or
//! `domsync-admin/1` (remote, with an admin certificate).
//!
//! `status`, `promote`, `switchover` and `collisions` always talk to a daemon: `--remote ADDR`
//! when given, else the Unix socket (`--socket`, `DOMSYNC_SOCKET`, default
//! `/run/domsync/admin.sock`). The writes `kv put|del`, `policy install` and `crl put` go to a
//! daemon only when `--socket` or `--remote` is given (else they work locally on `--data`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
pub use domsync_client::admin::{Session, Target};
use domsync_proto::admin::{
    AdminError, Answer, ArchivedInfo, DomainReport, DomainSpec, Lag, NodeStatus, PlacementState,
    PlanReport, Request,
};
use domsync_proto::model::{Crl, DomainId, NodeId, Op, Position};
use domsync_proto::repl::SyncStatus;

use crate::commands::describe_ops;

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Default admin socket of `domsyncd`.
pub const DEFAULT_SOCKET: &str = "/run/domsync/admin.sock";

/// Exit code when the domain or archived record does not exist.
const EXIT_NOT_FOUND: u8 = 4;

/// How long one request may take (a switchover waits for its target).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// `domsync collisions ...`.
#[derive(Subcommand)]
pub enum CollisionsCmd {
    /// List the records of a domain's collision archive on the daemon's node.
    List { domain: String },
    /// Show one archived record and its ops.
    Show { domain: String, id: u64 },
    /// Write an archived record's ops again on the domain's active, then remove it from the
    /// archive. When the archive is on a standby, name the active's daemon with --on-socket
    /// or --on-remote.
    Reapply {
        domain: String,
        id: u64,
        /// Admin socket of the active's daemon (when it is not the daemon holding the archive).
        #[arg(long, value_name = "PATH", conflicts_with = "on_remote")]
        on_socket: Option<PathBuf>,
        /// Address of the active's node for remote admin (with --admin-pki and --admin-id).
        #[arg(long, value_name = "ADDR")]
        on_remote: Option<SocketAddr>,
    },
    /// Remove an archived record without writing it again.
    Discard { domain: String, id: u64 },
}

fn runtime() -> Result<tokio::runtime::Runtime, Box<dyn std::error::Error>> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Sends one request and returns the answer (`Answer::Error` included).
fn call_one(target: &Target, req: &Request) -> Result<Answer, Box<dyn std::error::Error>> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::open(target).await?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, s.call(req))
            .await
            .map_err(|_| format!("{target}: no answer within {REQUEST_TIMEOUT:?}"))??;
        s.close().await;
        Ok::<_, Box<dyn std::error::Error>>(answer)
    })
}

/// Prints an admin error on one line and picks the exit code.
fn failed(e: &AdminError) -> ExitCode {
    eprintln!("domsync: error: {e}");
    match e {
        AdminError::UnknownDomain { .. } | AdminError::NoSuchCollision { .. } => {
            ExitCode::from(EXIT_NOT_FOUND)
        }
        _ => ExitCode::from(1),
    }
}

fn unexpected(a: &Answer) -> Box<dyn std::error::Error> {
    format!("unexpected answer from the daemon: {a:?}").into()
}

fn domain(name: &str) -> Result<DomainId, Box<dyn std::error::Error>> {
    Ok(name.parse()?)
}

/// `domsync status [--json]`.
pub fn status(target: &Target, json: bool) -> Res {
    match call_one(target, &Request::Status)? {
        Answer::Status(s) => {
            if json {
                println!("{}", status_json(&s));
            } else {
                print!("{}", status_table(&s, SystemTime::now()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}

/// `domsync promote DOMAIN [--force]`.
pub fn promote(target: &Target, name: &str, force: bool) -> Res {
    let req = Request::Promote {
        domain: domain(name)?,
        force,
    };
    match call_one(target, &req)? {
        Answer::Promoted {
            domain,
            epoch,
            position,
            behind_records,
            unreachable,
        } => {
            println!(
                "promoted {domain}: active in epoch {epoch} from lsn {}",
                position.lsn
            );
            if behind_records > 0 {
                println!(
                    "warning: forced while {behind_records} records behind; they go to the collision archive of the replica that holds them"
                );
            }
            if !unreachable.is_empty() {
                if force {
                    println!(
                        "warning: forced without reaching {}: what they hold beyond lsn {} of this replica goes to their collision archive when they follow again",
                        join(&unreachable),
                        position.lsn
                    );
                } else {
                    println!(
                        "not reached (the old active, fenced by every other replica): {}",
                        join(&unreachable)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}

/// `domsync switchover DOMAIN --to NODE`.
pub fn switchover(target: &Target, name: &str, to: &str) -> Res {
    let req = Request::Switchover {
        domain: domain(name)?,
        to: NodeId::new(to)?,
    };
    match call_one(target, &req)? {
        Answer::SwitchedOver {
            domain,
            to,
            epoch,
            position,
            pause_ms,
        } => {
            println!(
                "switched {domain} over to {to}: active in epoch {epoch} at lsn {}, writes paused {pause_ms} ms",
                position.lsn
            );
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}

/// A write for the daemon: the ops and how to report it.
pub enum WriteKind {
    /// `kv put`.
    Put,
    /// `kv del`.
    Delete,
    /// `policy install NAME`.
    Policy(String),
    /// `crl put`.
    Crl,
}

/// Builds the ops of `kv put`.
pub fn put_ops(key: String, value: String) -> Vec<Op> {
    vec![Op::Put {
        key: key.into_bytes(),
        value: value.into_bytes(),
    }]
}

/// Builds the ops of `crl put` from a DER file.
///
/// # Errors
/// When the file cannot be read or is not a CRL.
pub fn crl_ops(file: &std::path::Path) -> Result<Vec<Op>, Box<dyn std::error::Error>> {
    let der = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(vec![Op::PutCrl(Crl::from_der(&der)?)])
}

/// Sends a write to the daemon's active.
pub fn write(target: &Target, name: &str, ops: Vec<Op>, kind: &WriteKind) -> Res {
    let req = Request::Write {
        domain: domain(name)?,
        ops,
    };
    match call_one(target, &req)? {
        Answer::Written { position, .. } => {
            match kind {
                WriteKind::Put => println!("put at {position}"),
                WriteKind::Delete => println!("deleted at {position}"),
                WriteKind::Policy(n) => {
                    println!(
                        "installed policy {n} version {} at {position}",
                        position.lsn
                    )
                }
                WriteKind::Crl => println!("CRL stored at {position}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}

/// `domsync collisions ...`.
pub fn collisions(target: &Target, cmd: CollisionsCmd) -> Res {
    match cmd {
        CollisionsCmd::List { domain: d } => {
            match call_one(
                target,
                &Request::Collisions {
                    domain: domain(&d)?,
                },
            )? {
                Answer::Collisions { domain, list } => {
                    println!(
                        "{:>6}  {:<14} {:>8}  {:<27} {:>5} {:>9}",
                        "ID", "EPOCH", "LSN", "WRITTEN", "OPS", "BYTES"
                    );
                    for a in &list {
                        println!("{}", archived_line(a));
                    }
                    eprintln!("{} archived records in {domain}", list.len());
                    Ok(ExitCode::SUCCESS)
                }
                Answer::Error(e) => Ok(failed(&e)),
                other => Err(unexpected(&other)),
            }
        }
        CollisionsCmd::Show { domain: d, id } => {
            let req = Request::CollisionShow {
                domain: domain(&d)?,
                id,
            };
            match call_one(target, &req)? {
                Answer::Collision { info, ops, .. } => {
                    println!("{}", archived_line(&info));
                    for op in &ops {
                        println!("  {}", describe_ops(std::slice::from_ref(op)));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Answer::Error(e) => Ok(failed(&e)),
                other => Err(unexpected(&other)),
            }
        }
        CollisionsCmd::Discard { domain: d, id } => {
            let req = Request::Discard {
                domain: domain(&d)?,
                id,
            };
            match call_one(target, &req)? {
                Answer::Discarded { domain, id } => {
                    println!("discarded record {id} from the collision archive of {domain}");
                    Ok(ExitCode::SUCCESS)
                }
                Answer::Error(e) => Ok(failed(&e)),
                other => Err(unexpected(&other)),
            }
        }
        CollisionsCmd::Reapply {
            domain: d,
            id,
            on_socket,
            on_remote,
        } => {
            let active = match (on_socket, on_remote, target) {
                (Some(p), _, _) => Some(Target::Socket(p)),
                (None, Some(addr), Target::Remote { pki, id, .. }) => Some(Target::Remote {
                    addr,
                    pki: pki.clone(),
                    id: id.clone(),
                }),
                (None, Some(_), Target::Socket(_)) => {
                    return Err("--on-remote needs --remote, --admin-pki and --admin-id for the admin certificate".into())
                }
                (None, None, _) => None,
            };
            reapply(target, active.as_ref(), &domain(&d)?, id)
        }
    }
}

/// Re-applies an archived record: on the archive's own node when it is the active, else the
/// ops are written on `active` and then discarded from the archive.
fn reapply(target: &Target, active: Option<&Target>, d: &DomainId, id: u64) -> Res {
    let rt = runtime()?;
    rt.block_on(async {
        let mut archive = Session::open(target).await?;
        let here = archive
            .call(&Request::Reapply {
                domain: d.clone(),
                id,
            })
            .await?;
        let ops = match (here, active) {
            (Answer::Reapplied { position, .. }, _) => {
                println!("re-applied record {id} of {d} at {position} and removed it from the archive");
                archive.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            (Answer::Error(AdminError::NotActive { active: who, .. }), Some(_)) => {
                match archive
                    .call(&Request::CollisionShow {
                        domain: d.clone(),
                        id,
                    })
                    .await?
                {
                    Answer::Collision { ops, .. } => {
                        if let Some(who) = who {
                            eprintln!("domsync: the archive's node is not active; writing record {id} on the active ({who})");
                        }
                        ops
                    }
                    Answer::Error(e) => return Ok(failed(&e)),
                    other => return Err(unexpected(&other)),
                }
            }
            (Answer::Error(e @ AdminError::NotActive { .. }), None) => {
                eprintln!("domsync: error: {e}; to re-apply there, add --on-socket PATH or --on-remote ADDR of the active's daemon");
                return Ok(ExitCode::from(1));
            }
            (Answer::Error(e), _) => return Ok(failed(&e)),
            (other, _) => return Err(unexpected(&other)),
        };
        let Some(active) = active else {
            return Err("no active daemon given".into());
        };
        let mut writer = Session::open(active).await?;
        let position: Position = match writer
            .call(&Request::Write {
                domain: d.clone(),
                ops,
            })
            .await?
        {
            Answer::Written { position, .. } => position,
            Answer::Error(e) => return Ok(failed(&e)),
            other => return Err(unexpected(&other)),
        };
        writer.close().await;
        match archive
            .call(&Request::Discard {
                domain: d.clone(),
                id,
            })
            .await?
        {
            Answer::Discarded { .. } => {
                println!("re-applied record {id} of {d} at {position} on {active} and removed it from the archive");
                archive.close().await;
                Ok(ExitCode::SUCCESS)
            }
            Answer::Error(e) => {
                eprintln!("domsync: error: record {id} was written again at {position} but not removed from the archive: {e}; run `domsync collisions discard {d} {id}`");
                Ok(ExitCode::from(1))
            }
            other => Err(unexpected(&other)),
        }
    })
}

fn archived_line(a: &ArchivedInfo) -> String {
    format!(
        "{:>6}  {:<14} {:>8}  {:<27} {:>5} {:>9}",
        a.id,
        a.epoch.to_string(),
        a.lsn,
        rfc3339_micros(a.time),
        a.ops,
        a.bytes
    )
}

/// `micros` since the Unix epoch as an RFC 3339 UTC time with microseconds
/// (`2026-12-03T09:06:42.371061Z`), for the operator's eyes.
fn rfc3339_micros(micros: u64) -> String {
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
    fn last_sync_reads_as_a_time_and_an_age() {
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_288_832_371);
        assert_eq!(
            super::ago(now, Some(1_796_288_802_371)),
            "2026-12-03T09:06:42.371Z (30.0 s ago)"
        );
        assert_eq!(super::ago(now, None), "never");
    }
}

fn join(nodes: &[NodeId]) -> String {
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
    out
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

/// A JSON value as the status document is built; serde_json renders it.
enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    fn s(v: impl ToString) -> Json {
        Json::Str(v.to_string())
    }

    fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> Json) -> Json {
        v.map_or(Json::Null, f)
    }

    /// The document as serde_json renders it (escaping and all).
    fn render(self) -> String {
        self.into_value().to_string()
    }

    fn into_value(self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(b),
            Json::Num(n) => Value::from(n),
            Json::Str(s) => Value::String(s),
            Json::Arr(items) => Value::Array(items.into_iter().map(Json::into_value).collect()),
            Json::Obj(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.into_value()))
                    .collect(),
            ),
        }
    }
}

fn lag_json(lag: &Lag) -> Json {
    Json::Obj(vec![
        ("records", Json::Num(lag.records)),
        ("bytes", Json::Num(lag.bytes)),
        ("ms", Json::Num(lag.ms)),
    ])
}

fn sync_json(s: &SyncStatus) -> Json {
    let mut fields = vec![("name", Json::s(s.name()))];
    match s {
        SyncStatus::Advanced { records } => fields.push(("records_ahead", Json::Num(*records))),
        SyncStatus::Collision { fork } => fields.push(("fork_lsn", Json::Num(fork.0))),
        _ => {}
    }
    Json::Obj(fields)
}

/// The status as one JSON document (for scripts).
pub fn status_json(s: &NodeStatus) -> String {
    let domains = s
        .domains
        .iter()
        .map(|d| {
            let (placement, detail) = match &d.placement {
                PlacementState::Serving => ("serving", None),
                PlacementState::Waiting(w) => ("waiting", Some(w)),
                PlacementState::Failed(f) => ("failed", Some(f)),
            };
            let standbys = d
                .standbys
                .iter()
                .map(|sb| {
                    Json::Obj(vec![
                        ("node", Json::s(&sb.node)),
                        ("sync_status", sync_json(&sb.status)),
                        ("lag", lag_json(&sb.lag)),
                        ("durable_lsn", Json::Num(sb.durable.0)),
                        ("last_sync_ms", Json::opt(sb.last_sync_ms, Json::Num)),
                        ("connected", Json::Bool(sb.connected)),
                    ])
                })
                .collect();
            let follower = Json::opt(d.follower.as_ref(), |f| {
                Json::Obj(vec![
                    ("active", Json::s(&f.active)),
                    ("sync_status", sync_json(&f.status)),
                    ("lag", lag_json(&f.lag)),
                    ("last_sync_ms", Json::opt(f.last_sync_ms, Json::Num)),
                    ("last_error", Json::opt(f.last_error.as_ref(), Json::s)),
                    (
                        "recent_errors",
                        Json::Arr(
                            f.recent_errors
                                .iter()
                                .map(|(at, why)| {
                                    Json::Obj(vec![
                                        ("at_unix_ms", Json::Num(*at)),
                                        ("error", Json::s(why)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                    ("connected", Json::Bool(f.connected)),
                ])
            });
            let r = d.replica.as_ref();
            Json::Obj(vec![
                ("domain", Json::s(&d.domain)),
                ("placement", Json::s(placement)),
                ("placement_detail", Json::opt(detail, Json::s)),
                ("role", Json::opt(r, |r| Json::s(r.role))),
                (
                    "epoch",
                    Json::opt(r, |r| {
                        Json::Obj(vec![
                            ("term", Json::Num(r.epoch.term)),
                            ("node", Json::s(&r.epoch.node)),
                        ])
                    }),
                ),
                ("lsn", Json::opt(r, |r| Json::Num(r.position.lsn.0))),
                (
                    "chain",
                    Json::opt(r, |r| Json::Num(u64::from(r.position.chain))),
                ),
                ("digest", Json::opt(r, |r| Json::s(&r.digest))),
                ("collisions", Json::Num(d.collisions)),
                ("standbys", Json::Arr(standbys)),
                ("follower", follower),
            ])
        })
        .collect();
    let doc = Json::Obj(vec![
        ("node", Json::s(&s.node)),
        ("domains", Json::Arr(domains)),
    ]);
    doc.render()
}

// ---- Domains added at runtime, placement plan and rebalance ----

/// `domsync domain add NAME --replicas a,b,c ...`.
#[derive(clap::Args)]
pub struct DomainAddArgs {
    /// The domain.
    pub name: String,
    /// Replica nodes in order, the primary (creates the domain, first active) first.
    #[arg(long, value_delimiter = ',', required = true, value_name = "NODE,...")]
    pub replicas: Vec<String>,
    /// Durability of acknowledged writes: local, standby (default) or all.
    #[arg(long)]
    pub durability: Option<String>,
    /// A gateway granted the domain (repeat for several).
    #[arg(long = "gateway", value_name = "G")]
    pub gateways: Vec<String>,
    /// Relative load of the domain (placement; default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Region whose node should hold the active (placement).
    #[arg(long)]
    pub region: Option<String>,
    /// Most bytes of change log kept for lagging standbys (default 256 MiB).
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Also send it to every other replica's daemon over remote admin (their addresses come
    /// from the daemon's configuration; needs --admin-pki DIR and --admin-id ID).
    #[arg(long)]
    pub all: bool,
}

/// The admin certificate for reaching other daemons (`--admin-pki`, `--admin-id`).
#[derive(Debug, Clone)]
pub struct AdminCert {
    /// Directory with ca.pem and admin-<id>.pem/.key.
    pub pki: PathBuf,
    /// The admin id, when given.
    pub id: Option<String>,
}

impl AdminCert {
    /// The remote target of the node at `addr`.
    fn remote(&self, node: &NodeId, addr: SocketAddr, why: &str) -> Result<Target, String> {
        let id = self.id.clone().ok_or_else(|| {
            format!("{why} needs --admin-id ID (and --admin-pki DIR) to reach node {node} at {addr} over remote admin")
        })?;
        Ok(Target::Remote {
            addr,
            pki: self.pki.clone(),
            id,
        })
    }
}

/// The plan as the daemon at `target` sees it.
fn get_plan(target: &Target) -> Result<Result<PlanReport, AdminError>, Box<dyn std::error::Error>> {
    match call_one(target, &Request::Plan)? {
        Answer::Plan(p) => Ok(Ok(p)),
        Answer::Error(e) => Ok(Err(e)),
        other => Err(unexpected(&other)),
    }
}

/// The daemons to send a domain add/remove to: `target`, and with `all` every other replica
/// (through remote admin, at the address the daemon's configuration gives it).
fn replica_targets(
    target: &Target,
    cert: &AdminCert,
    all: bool,
    replicas: &[NodeId],
    what: &str,
) -> Result<Vec<(String, Target)>, Box<dyn std::error::Error>> {
    let mut out = vec![(target.to_string(), target.clone())];
    if !all {
        return Ok(out);
    }
    let plan = match get_plan(target)? {
        Ok(p) => p,
        Err(e) => return Err(format!("{target}: {e}").into()),
    };
    for r in replicas.iter().filter(|r| **r != plan.node) {
        let node = plan.nodes.iter().find(|n| n.id == *r).ok_or_else(|| {
            format!(
                "replica {r} is not a peer of node {}: add it to [[peers]] first",
                plan.node
            )
        })?;
        out.push((format!("node {r}"), cert.remote(r, node.address, what)?));
    }
    Ok(out)
}

/// `domsync domain add NAME --replicas ...`: on the daemon, and with `--all` on every replica.
pub fn domain_add(target: &Target, cert: &AdminCert, args: DomainAddArgs) -> Res {
    let spec = DomainSpec {
        name: args.name,
        replicas: args.replicas,
        durability: args.durability,
        gateways: args.gateways,
        retention_bytes: args.retention_bytes,
        weight: args.weight,
        region: args.region,
    };
    let replicas = spec
        .replicas
        .iter()
        .map(NodeId::new)
        .collect::<Result<Vec<_>, _>>()?;
    let targets = replica_targets(target, cert, args.all, &replicas, "domain add --all")?;
    let count = targets.len();
    for (name, t) in targets {
        match call_one(&t, &Request::DomainAdd(spec.clone()))? {
            Answer::DomainAdded {
                domain,
                replica_here: true,
            } => println!("{name}: added domain {domain}; it is being placed there"),
            Answer::DomainAdded {
                domain,
                replica_here: false,
            } => println!(
                "{name}: added domain {domain}; that node is not one of its replicas (recorded for placement only)"
            ),
            Answer::Error(e) => {
                eprintln!("domsync: error: {name}: {e}");
                return Ok(ExitCode::from(1));
            }
            other => return Err(unexpected(&other)),
        }
    }
    if !args.all && count == 1 {
        eprintln!(
            "domsync: run the same `domain add` on every replica's daemon ({}), or add --all",
            spec.replicas.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `domsync domain remove NAME [--all]`.
pub fn domain_remove(target: &Target, cert: &AdminCert, name: &str, all: bool) -> Res {
    let d = domain(name)?;
    let replicas = if all {
        match get_plan(target)? {
            Ok(p) => p.nodes.into_iter().map(|n| n.id).collect(),
            Err(e) => return Ok(failed(&e)),
        }
    } else {
        Vec::new()
    };
    for (label, t) in replica_targets(target, cert, all, &replicas, "domain remove --all")? {
        match call_one(&t, &Request::DomainRemove { domain: d.clone() })? {
            Answer::DomainRemoved { domain } => println!(
                "{label}: domain {domain} is no longer served there (its store files stay in the state directory)"
            ),
            Answer::Error(AdminError::UnknownDomain { .. }) if all && label != target.to_string() => {
                println!("{label}: domain {d} was not added there");
            }
            Answer::Error(e) => {
                eprintln!("domsync: error: {label}: {e}");
                return Ok(match e {
                    AdminError::UnknownDomain { .. } => ExitCode::from(EXIT_NOT_FOUND),
                    _ => ExitCode::from(1),
                });
            }
            other => return Err(unexpected(&other)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn opt_node(n: Option<&NodeId>) -> String {
    n.map_or_else(|| "?".to_owned(), ToString::to_string)
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
    let opt_s = |v: Option<&String>| Json::opt(v, Json::s);
    let doc = Json::Obj(vec![
        ("node", Json::s(&p.node)),
        (
            "nodes",
            Json::Arr(
                p.nodes
                    .iter()
                    .map(|n| {
                        Json::Obj(vec![
                            ("id", Json::s(&n.id)),
                            ("region", opt_s(n.region.as_ref())),
                            ("address", Json::s(n.address)),
                            ("load_now", Json::Num(n.load_now)),
                            ("load", Json::Num(n.load)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "domains",
            Json::Arr(
                p.domains
                    .iter()
                    .map(|d| {
                        Json::Obj(vec![
                            ("domain", Json::s(&d.domain)),
                            ("weight", Json::Num(u64::from(d.weight))),
                            ("region", opt_s(d.region.as_ref())),
                            ("active", Json::opt(d.active.as_ref(), Json::s)),
                            ("planned", Json::opt(d.planned.as_ref(), Json::s)),
                        ])
                    })
                    .collect(),
            ),
        ),
        (
            "moves",
            Json::Arr(
                p.moves
                    .iter()
                    .map(|m| {
                        Json::Obj(vec![
                            ("domain", Json::s(&m.domain)),
                            ("from", Json::opt(m.from.as_ref(), Json::s)),
                            ("to", Json::s(&m.to)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ]);
    doc.render()
}

/// `domsync plan [--json]`.
pub fn plan(target: &Target, json: bool) -> Res {
    match get_plan(target)? {
        Ok(p) => {
            if json {
                println!("{}", plan_json(&p));
            } else {
                print!("{}", plan_text(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e)),
    }
}

/// `domsync rebalance [--dry-run]`: the plan of the daemon at `target`, carried out one
/// switchover at a time, each sent to the daemon active for its domain (this one through
/// `target`, the others through remote admin); stops at the first failure.
pub fn rebalance(target: &Target, cert: &AdminCert, dry_run: bool) -> Res {
    let p = match get_plan(target)? {
        Ok(p) => p,
        Err(e) => return Ok(failed(&e)),
    };
    if p.moves.is_empty() {
        println!("balanced: nothing to move");
        return Ok(ExitCode::SUCCESS);
    }
    // Every step's daemon, worked out before anything moves.
    let mut steps = Vec::new();
    for m in &p.moves {
        let Some(from) = &m.from else {
            eprintln!(
                "domsync: error: rebalance refused: no replica of {} answered as its active; promote one (`domsync promote {}`) and run rebalance again (nothing was moved)",
                m.domain, m.domain
            );
            return Ok(ExitCode::from(1));
        };
        let t = if *from == p.node {
            target.clone()
        } else {
            let node = p.nodes.iter().find(|n| n.id == *from).ok_or_else(|| {
                format!(
                    "node {from} has no address in node {}'s configuration; add it to [[peers]]",
                    p.node
                )
            })?;
            cert.remote(from, node.address, "rebalance")?
        };
        steps.push((m, from, t));
    }
    let total = steps.len();
    for (i, (m, from, t)) in steps.into_iter().enumerate() {
        println!(
            "step {}/{total}: switchover {} from {from} to {}{}",
            i + 1,
            m.domain,
            m.to,
            if dry_run { " (dry run)" } else { "" }
        );
        if dry_run {
            continue;
        }
        let req = Request::Switchover {
            domain: m.domain.clone(),
            to: m.to.clone(),
        };
        let fail = |why: String| {
            eprintln!(
                "domsync: error: rebalance stopped at domain {} (switchover {from} -> {}): {why}; the earlier steps stay done: fix this and run `domsync rebalance` again",
                m.domain, m.to
            );
            Ok(ExitCode::from(1))
        };
        match call_one(&t, &req) {
            Ok(Answer::SwitchedOver {
                epoch,
                position,
                pause_ms,
                ..
            }) => println!(
                "  done: {} active on {} in epoch {epoch} at lsn {}, writes paused {pause_ms} ms",
                m.domain, m.to, position.lsn
            ),
            Ok(Answer::Error(e)) => return fail(e.to_string()),
            Ok(other) => return fail(format!("unexpected answer {other:?}")),
            Err(e) => return fail(e.to_string()),
        }
    }
    if !dry_run {
        println!("rebalanced: {total} domains moved");
    }
    Ok(ExitCode::SUCCESS)
}
