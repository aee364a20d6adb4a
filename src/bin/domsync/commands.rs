//! Local-mode commands on a state directory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use domsync_proto::model::{Crl, DomainId, Lsn, NodeId, Op};
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

/// `domsync kv ...`. Where each runs: with --app-socket or --app-remote, every kv command goes
/// to a running domsyncd over the application protocol; with --socket or --remote (admin),
/// only `put` and `del` do; otherwise they work locally on --data, except `watch`, which
/// always needs a daemon (default application socket /run/domsync/app.sock).
#[derive(Subcommand)]
pub enum KvCmd {
    /// Set a key. Prints the position of the write (--json: domain, key, position, lsn: the
    /// key's new version).
    Put {
        domain: String,
        key: String,
        value: String,
        /// One JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
    /// Read a key: prints its value (exit 4 when absent). --json prints one object: domain,
    /// key, value (UTF-8 text; "value_hex" instead when the value is not UTF-8; null when
    /// absent), version, and who served it (node, role, position, lsn).
    Get {
        domain: String,
        key: String,
        /// One JSON object instead of the value.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at_least: AtLeastArgs,
    },
    /// Remove a key (removing a missing key is not an error).
    Del {
        domain: String,
        key: String,
        /// One JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
    /// List keys (and values) starting with PREFIX, all read at one position (a daemon's scan
    /// follows its continuations). --json prints one document: domain, position, node, role,
    /// and keys: [{key, value (or value_hex), version}].
    List {
        domain: String,
        /// Key prefix (default: every key).
        #[arg(value_name = "PREFIX")]
        prefix: Option<String>,
        /// Same as PREFIX (kept for scripts).
        #[arg(
            long = "prefix",
            value_name = "PREFIX",
            hide = true,
            conflicts_with = "prefix"
        )]
        prefix_flag: Option<String>,
        /// Most keys printed.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only keys and versions, no values.
        #[arg(long)]
        keys_only: bool,
        /// One JSON document instead of the lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at_least: AtLeastArgs,
    },
    /// (daemon) Print every change of keys starting with PREFIX as it happens, with the
    /// position after each batch: `LSN put KEY = VALUE` / `LSN del KEY` lines, then
    /// `position TERM@NODE:LSN:CHAIN` (also for progress marks, where nothing changed). Give
    /// that position to --from to resume without gap or repeat. --json prints one object per
    /// batch and line: {"position", "lsn", "node", "events": [{key, value (null: deleted;
    /// value_hex when not UTF-8), lsn}]}. Resumes by itself after a dropped connection or a
    /// failover (remote: on the next node); ends with an error when the position is no longer
    /// held (compacted or lost in a failover: list the keys again and watch from there).
    Watch {
        domain: String,
        /// Key prefix (default: every key).
        #[arg(value_name = "PREFIX", default_value = "")]
        prefix: String,
        /// Resume after this position (TERM@NODE:LSN:CHAIN as printed); default: from now.
        #[arg(long, value_name = "POSITION")]
        from: Option<String>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One JSON object per batch and line.
        #[arg(long)]
        json: bool,
    },
    /// A conditional transaction: when every condition holds, all ops are written as one
    /// record; otherwise nothing is written and the command exits 3 (EXIT_CONFLICT) naming
    /// the failed condition, so a script can read again and retry. Conditions and ops come
    /// from the flags (conditions, then puts, then dels) or from --file (- for stdin), one per
    /// line, in order, `#` starting a comment:
    ///   if-absent KEY         the key does not exist
    ///   if-version KEY N      the key exists with version N (`kv get --json`)
    ///   if-value KEY VALUE    the key exists with this value (VALUE: rest of the line)
    ///   put KEY VALUE         set the key (VALUE: rest of the line)
    ///   del KEY               remove the key
    /// Keys in the file cannot hold spaces (use the flags for those).
    #[command(verbatim_doc_comment)]
    Txn {
        domain: String,
        /// Condition: KEY does not exist (repeatable).
        #[arg(long, value_name = "KEY")]
        if_absent: Vec<String>,
        /// Condition: KEY exists with version N (repeatable).
        #[arg(long, value_name = "KEY=N")]
        if_version: Vec<String>,
        /// Condition: KEY exists with VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        if_value: Vec<String>,
        /// Op: set KEY to VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        put: Vec<String>,
        /// Op: remove KEY (repeatable).
        #[arg(long, value_name = "KEY")]
        del: Vec<String>,
        /// Read conditions and ops from this file (- for stdin), after those of the flags.
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
        /// One JSON object instead of the line.
        #[arg(long)]
        json: bool,
    },
}

/// "Read at least here" for reads through a daemon (ignored in local mode).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct AtLeastArgs {
    /// (daemon) The read must reflect this lsn (e.g. the lsn a `kv put` printed): a lagging
    /// standby waits up to --wait for it, then the command fails saying so.
    #[arg(long, value_name = "LSN", default_value_t = 0)]
    pub at_least: u64,
    /// (daemon) Most milliseconds to wait for --at-least (at most 30000).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub wait: u32,
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
        Command::Kv(cmd) => crate::kv::local(&store, node, cmd),
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
        Command::Compact { domain: name } => {
            let (before, after) = domain(&store, &name)?.compact()?;
            println!("{}", compacted(&name, before, after));
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { .. } => Ok(ExitCode::SUCCESS),
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

/// The line `compact` prints.
pub fn compacted(domain: &str, before: u64, after: u64) -> String {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    format!(
        "compacted domain {domain}: database {:.1} MiB -> {:.1} MiB ({:.1} MiB returned)",
        mib(before),
        mib(after),
        mib(before.saturating_sub(after))
    )
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
