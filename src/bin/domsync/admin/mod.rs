//! Daemon mode: `domsync` talking to a running `domsyncd` over its admin socket (local) or
//! `domsync-admin/1` (remote, with an admin certificate).
//!
//! `status`, `promote`, `switchover` and `collisions` always talk to a daemon: `--remote
//! ID=ADDR` (node ID at ADDR, its certificate checked) when given, else the Unix socket (`--socket`, `DOMSYNC_SOCKET`, default
//! `/run/domsync/admin.sock`). The writes `kv put|del`, `policy install` and `crl put` go to a
//! daemon only when `--socket` or `--remote` is given (else they work locally on `--data`).

mod collisions;
mod domains;
mod render;

pub use collisions::{collisions, compact, CollisionsCmd};
pub use domains::{domain_add, domain_remove, plan, rebalance, AdminCert, DomainAddArgs};
use render::join;
pub use render::{plan_json, plan_text, status_json, status_table};

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

pub use domsync_client::admin::{Session, Target};
use domsync_proto::admin::{AdminError, Answer, Request};
use domsync_proto::model::{DomainId, NodeId, Op};

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Default admin socket of `domsyncd`.
pub const DEFAULT_SOCKET: &str = "/run/domsync/admin.sock";

/// Exit code when the domain or archived record does not exist.
const EXIT_NOT_FOUND: u8 = 4;

/// How long one request may take (a switchover waits for its target).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Sends one request and returns the answer (for the other command modules).
pub fn call(target: &Target, req: &Request) -> Result<Answer, Box<dyn std::error::Error>> {
    call_one(target, req)
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
                let table = status_table(&s, SystemTime::now());
                if crate::colour::stdout_wants_colour() {
                    print!("{}", crate::colour::paint_status(&table));
                } else {
                    print!("{table}");
                }
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
}

/// Builds the ops of `kv put`.
pub fn put_ops(key: String, value: String) -> Vec<Op> {
    vec![Op::Put {
        key: key.into_bytes(),
        value: value.into_bytes(),
    }]
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
            }
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}
