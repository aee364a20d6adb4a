//! `domsync collisions list|show|reapply|discard`: the archive of records a fenced active
//! wrote past its successor's fork.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
pub use domsync_client::admin::{Session, Target};
use domsync_proto::admin::{AdminError, Answer, ArchivedInfo, Request};
use domsync_proto::model::{DomainId, NodeId, Position};

use crate::commands::describe_ops;

use super::render::rfc3339_micros;
use super::*;

/// `domsync collisions ...`.
#[derive(Subcommand)]
pub enum CollisionsCmd {
    /// List the records of a domain's collision archive on the daemon's node.
    List {
        domain: String,
        /// One JSON document (an array of archived records) instead of the table.
        #[arg(long)]
        json: bool,
    },
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
        /// The active's node for remote admin, ID=ADDR (with --admin-pki and --admin-id).
        #[arg(long, value_name = "ID=ADDR", value_parser = parse_on_remote)]
        on_remote: Option<(NodeId, SocketAddr)>,
    },
    /// Remove an archived record without writing it again.
    Discard { domain: String, id: u64 },
}

/// `domsync collisions ...`.
pub fn collisions(target: &Target, cmd: CollisionsCmd) -> Res {
    match cmd {
        CollisionsCmd::List { domain: d, json } => {
            match call_one(
                target,
                &Request::Collisions {
                    domain: domain(&d)?,
                },
            )? {
                Answer::Collisions { list, .. } if json => {
                    let doc: Vec<_> = list
                        .iter()
                        .map(|a| {
                            serde_json::json!({
                                "id": a.id,
                                "epoch": a.epoch.to_string(),
                                "lsn": a.lsn,
                                "written": rfc3339_micros(a.time),
                                "ops": a.ops,
                                "bytes": a.bytes,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                    Ok(ExitCode::SUCCESS)
                }
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
                (None, Some((node, addr)), Target::Remote { pki, id, .. }) => Some(Target::Remote {
                    node,
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

/// `--on-remote ID=ADDR`.
fn parse_on_remote(text: &str) -> Result<(NodeId, SocketAddr), String> {
    domsync_client::admin::parse_remote("--on-remote", text)
}

/// `domsync compact DOMAIN` through a daemon.
pub fn compact(target: &Target, d: &str) -> Res {
    match call_one(target, &Request::Compact { domain: domain(d)? })? {
        Answer::Compacted {
            domain,
            before,
            after,
        } => {
            println!(
                "{}",
                crate::commands::compacted(domain.as_str(), before, after)
            );
            Ok(ExitCode::SUCCESS)
        }
        Answer::Error(e) => Ok(failed(&e)),
        other => Err(unexpected(&other)),
    }
}
