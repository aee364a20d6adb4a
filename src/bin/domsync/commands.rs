//! Local-mode commands on a state directory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use domsync_proto::model::{Crl, DomainId, Lsn, NodeId, Op, Position};
use domsync_store::{Domain, Store, StoreOptions};

use crate::Command;

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Exit code when `verify` finds a fault.
pub const EXIT_CORRUPT: u8 = 3;

#[derive(Subcommand)]
pub enum DomainCmd {
    /// Create a domain with this node as its primary (active in epoch 1).
    Create { domain: String },
    /// List the domains of this node with role and position.
    List {
        /// One JSON document (an array of domains) instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum KvCmd {
    /// Set a key.
    Put {
        domain: String,
        key: String,
        value: String,
    },
    /// Read a key.
    Get { domain: String, key: String },
    /// Remove a key.
    Del { domain: String, key: String },
    /// List keys (and values) starting with a prefix.
    List {
        domain: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// One JSON document (keys, values and the position read at) instead of the lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Install a policy package from a file; its version becomes the lsn of the write.
    Install {
        domain: String,
        name: String,
        file: std::path::PathBuf,
    },
    /// Write a policy package to a file (or describe it when --out is not given).
    Get {
        domain: String,
        name: String,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// List policy packages.
    List {
        domain: String,
        /// One JSON document (packages and the position read at) instead of the lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum LogCmd {
    /// Show decoded records with their CRC status.
    Show {
        domain: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn open(data: &Path, node: &str) -> Result<Store, Box<dyn std::error::Error>> {
    let node = NodeId::new(node)?;
    Ok(Store::open(data, StoreOptions::new(node))?)
}

fn domain(store: &Store, name: &str) -> Result<Domain, Box<dyn std::error::Error>> {
    let id: DomainId = name.parse()?;
    Ok(store.domain(&id)?)
}

fn ok_at(what: &str, pos: &Position) -> ExitCode {
    println!("{what} at {pos}");
    ExitCode::SUCCESS
}

pub fn run(data: &Path, node: &str, command: Command) -> Res {
    let store = open(data, node)?;
    match command {
        Command::Domain(DomainCmd::Create { domain }) => {
            let d = store.create_domain(&domain.parse()?)?;
            let s = d.status()?;
            println!(
                "created domain {} (uid {}), active in epoch {}",
                s.domain,
                s.uid.map(|u| u.to_string()).unwrap_or_default(),
                s.epoch
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Domain(DomainCmd::List { json: true }) => {
            let mut list = Vec::new();
            for d in store.open_all()? {
                list.push(match d.and_then(|d| d.status()) {
                    Ok(s) => serde_json::json!({
                        "domain": s.domain.to_string(),
                        "role": s.role.to_string(),
                        "epoch": s.epoch.to_string(),
                        "lsn": s.position.lsn.0,
                        "digest": s.digest.to_string(),
                    }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                });
            }
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Domain(DomainCmd::List { json: false }) => {
            println!(
                "{:<24} {:<8} {:<14} {:>10}  digest",
                "DOMAIN", "ROLE", "EPOCH", "LSN"
            );
            for d in store.open_all()? {
                match d.and_then(|d| d.status()) {
                    Ok(s) => println!(
                        "{:<24} {:<8} {:<14} {:>10}  {}",
                        s.domain,
                        s.role,
                        s.epoch.to_string(),
                        s.position.lsn,
                        s.digest
                    ),
                    Err(e) => println!("error: {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kv(cmd) => kv(&store, cmd),
        Command::Policy(cmd) => policy(&store, cmd),
        Command::Crl(cmd) => crate::trust::crl(&crate::trust::Source::Local(&store), cmd),
        Command::Issuer(cmd) => crate::trust::issuer(&crate::trust::Source::Local(&store), cmd),
        Command::Log(LogCmd::Show {
            domain: name,
            from,
            limit,
        }) => {
            let d = domain(&store, &name)?;
            for (lsn, rec) in d.inspect_log(Lsn(from), limit)? {
                match rec {
                    Ok(r) => println!(
                        "{lsn:>8}  crc ok   epoch {}  time {}  {}",
                        r.epoch,
                        r.time,
                        describe_ops(&r.ops)
                    ),
                    Err(e) => println!("{lsn:>8}  CORRUPT  {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { domain: only } => verify(&store, only.as_deref()),
        Command::Demo { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn kv(store: &Store, cmd: KvCmd) -> Res {
    match cmd {
        KvCmd::Put {
            domain: d,
            key,
            value,
        } => Ok(ok_at("put", &domain(store, &d)?.put(key, value)?)),
        KvCmd::Del { domain: d, key } => Ok(ok_at("deleted", &domain(store, &d)?.delete(key)?)),
        KvCmd::Get { domain: d, key } => {
            let r = domain(store, &d)?.get(key.as_bytes())?;
            match r.value {
                Some(v) => {
                    println!("{}", String::from_utf8_lossy(&v));
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!(
                        "domsync: key {key:?} not found in domain {d} (read at {})",
                        r.position
                    );
                    Ok(ExitCode::from(4))
                }
            }
        }
        KvCmd::List {
            domain: d,
            prefix,
            limit,
            json,
        } => {
            let r = domain(store, &d)?.list(prefix.as_bytes(), limit)?;
            if json {
                let keys: Vec<_> = r
                    .value
                    .iter()
                    .map(|(k, v)| {
                        serde_json::json!({
                            "key": String::from_utf8_lossy(k),
                            "value": String::from_utf8_lossy(v),
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "domain": d,
                    "position": r.position.to_string(),
                    "keys": keys,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            for (k, v) in &r.value {
                println!(
                    "{} = {}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                );
            }
            eprintln!("{} keys, read at {}", r.value.len(), r.position);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn policy(store: &Store, cmd: PolicyCmd) -> Res {
    match cmd {
        PolicyCmd::Install {
            domain: d,
            name,
            file,
        } => {
            let bytes =
                std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let pos = domain(store, &d)?.install_policy(&name, bytes)?;
            println!("installed policy {name} version {} at {pos}", pos.lsn);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Get {
            domain: d,
            name,
            out,
        } => {
            let r = domain(store, &d)?.policy(&name)?;
            let Some(p) = r.value else {
                eprintln!(
                    "domsync: no policy {name} in domain {d} (read at {})",
                    r.position
                );
                return Ok(ExitCode::from(4));
            };
            if let Some(out) = out {
                crate::write_private(&out, &p.content)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            }
            println!(
                "{} version {} size {} sha256 {} (read at {})",
                p.info.name,
                p.info.version,
                p.info.size,
                hex(&p.info.sha256),
                r.position
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::List { domain: d, json } => {
            let r = domain(store, &d)?.policies()?;
            if json {
                let packages: Vec<_> = r
                    .value
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "version": p.version,
                            "size": p.size,
                            "sha256": hex(&p.sha256),
                        })
                    })
                    .collect();
                let doc = serde_json::json!({
                    "domain": d,
                    "position": r.position.to_string(),
                    "packages": packages,
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
                return Ok(ExitCode::SUCCESS);
            }
            for p in &r.value {
                println!(
                    "{:<32} version {:>8} size {:>10} sha256 {}",
                    p.name,
                    p.version,
                    p.size,
                    hex(&p.sha256)
                );
            }
            eprintln!("{} packages, read at {}", r.value.len(), r.position);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn verify(store: &Store, only: Option<&str>) -> Res {
    let ids = match only {
        Some(d) => vec![d.parse::<DomainId>()?],
        None => store.domain_ids()?,
    };
    let mut bad = false;
    for id in ids {
        let report = store.domain(&id)?.verify()?;
        if report.is_clean() {
            println!(
                "domain {id}: ok, {} records checked up to {}, digest {}",
                report.records, report.position, report.digest_stored
            );
        } else {
            bad = true;
            for f in &report.faults {
                match f.lsn {
                    Some(lsn) => println!("domain {id}: FAULT at lsn {lsn}: {}", f.what),
                    None => println!("domain {id}: FAULT: {}", f.what),
                }
            }
        }
    }
    if bad {
        eprintln!(
            "domsync: verification failed; resync the damaged domains from a healthy replica"
        );
        Ok(ExitCode::from(EXIT_CORRUPT))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

pub fn describe_crl(c: &Crl) -> String {
    let next = c
        .next_update
        .map_or_else(|| "none".to_string(), |t| t.to_string());
    format!(
        "{}  number {}  this_update {}  next_update {}  {} bytes",
        c.issuer,
        c.number,
        c.this_update,
        next,
        c.der.len()
    )
}

pub fn describe_ops(ops: &[Op]) -> String {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value } => format!(
                "put {:?} ({} bytes)",
                String::from_utf8_lossy(key),
                value.len()
            ),
            Op::Delete { key } => format!("del {:?}", String::from_utf8_lossy(key)),
            Op::InstallPolicy { name, content } => {
                format!("install policy {name} ({} bytes)", content.len())
            }
            Op::RemovePolicy { name } => format!("remove policy {name}"),
            Op::PutLegacyCrl(c) => format!("legacy crl {} number {}", c.issuer, c.number),
            Op::RemoveLegacyCrl { issuer } => format!("remove legacy crl {issuer}"),
            Op::AddIssuer(c) => format!("add issuer {} ({})", c.subject, c.short_id()),
            Op::RemoveIssuer { subject, sha256 } => {
                format!("remove issuer {subject} ({})", hex(&sha256[..8]))
            }
            Op::PutCrl { crl, allow_stale } => format!(
                "crl {} number {}{}{}",
                crl.issuer,
                crl.number,
                crl.delta_base
                    .as_ref()
                    .map_or_else(String::new, |b| format!(" (delta of {b})")),
                if *allow_stale { " (stale allowed)" } else { "" }
            ),
            Op::RemoveCrl { issuer, number } => format!("remove crl {issuer} number {number}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}
