//! `domsync`: the operator command. Local mode works directly on a state directory (`--data`);
//! daemon mode talks to a running `domsyncd` (see [`admin`]).

mod admin;
mod colour;
mod commands;
mod demo;
mod demo_cluster;
mod doctor;
mod gateway;
mod generate;
mod kv;
mod options;
mod pki;
mod trust;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operator command of domsync: domains, keys, policy packages, CRLs, the change log.
///
/// Local mode (the default for domain, kv, policy, crl, log, verify) works on a state
/// directory (--data) that no domsyncd has open. Daemon mode talks to a running domsyncd:
/// `status`, `promote`, `switchover`, `collisions`, `domain add|remove`, `plan` and
/// `rebalance` always do, through the admin socket
/// (--socket, default /run/domsync/admin.sock; only the service user and root may use it) or,
/// with --remote ID=ADDR, over QUIC with an admin certificate (--admin-pki, --admin-id), to
/// node ID only (a server there with another node certificate is refused). Giving
/// --socket or --remote also sends the writes `kv put|del`, `policy install` and `crl put` to
/// that daemon, which must be the domain's active (a standby refuses, naming the active).
/// The application protocol (--app-socket PATH, or --app-remote ID=ADDR with --app-pki and
/// --app-id) sends every kv command (get, put, del, list, txn, watch) to a running domsyncd,
/// reads served by any replica; `kv watch` always uses it (default socket
/// /run/domsync/app.sock).
#[derive(Parser)]
#[command(name = "domsync", version, about, long_about)]
struct Cli {
    /// State directory of this node (local mode; the store must not be open in domsyncd).
    #[arg(
        long,
        global = true,
        help_heading = options::STORE,
        env = "DOMSYNC_DATA",
        default_value = "/var/lib/domsync"
    )]
    data: PathBuf,
    /// This node's id, used as the primary of domains created here.
    #[arg(
        long,
        global = true,
        help_heading = options::STORE,
        env = "DOMSYNC_NODE",
        default_value = "local"
    )]
    node: String,
    /// Daemon mode: admin socket of a running domsyncd [default for status, promote,
    /// switchover, collisions: /run/domsync/admin.sock]; given, writes go to the daemon too.
    #[arg(
        long,
        global = true,
        help_heading = options::DAEMON,
        env = "DOMSYNC_SOCKET",
        value_name = "PATH"
    )]
    socket: Option<PathBuf>,
    /// Daemon mode over QUIC (ALPN domsync-admin/1): the node's id and address, ID=ADDR
    /// (e.g. a=10.0.0.1:7400; the server must hold the certificate domsync://node/<ID>), with
    /// an admin certificate (--admin-pki, --admin-id); writes go to the daemon too.
    #[arg(
        long,
        global = true,
        help_heading = options::DAEMON,
        env = "DOMSYNC_REMOTE",
        value_name = "ID=ADDR",
        value_parser = parse_remote,
        conflicts_with = "socket"
    )]
    remote: Option<(domsync_proto::model::NodeId, SocketAddr)>,
    /// Directory with ca.pem and admin-<id>.pem/.key, for --remote.
    #[arg(
        long,
        global = true,
        help_heading = options::DAEMON,
        env = "DOMSYNC_ADMIN_PKI",
        default_value = "./pki"
    )]
    admin_pki: PathBuf,
    /// The admin's id (certificate domsync://admin/<id>), for --remote.
    #[arg(
        long,
        global = true,
        help_heading = options::DAEMON,
        env = "DOMSYNC_ADMIN_ID",
        value_name = "ID"
    )]
    admin_id: Option<String>,
    /// Application protocol: the application socket of a running domsyncd (`[apps] socket`;
    /// default for `kv watch`: /run/domsync/app.sock). Given (or --app-remote), every kv
    /// command goes to the daemon.
    #[arg(
        long,
        global = true,
        help_heading = options::APP,
        env = "DOMSYNC_APP_SOCKET",
        value_name = "PATH"
    )]
    app_socket: Option<PathBuf>,
    /// Application protocol over QUIC (ALPN domsync-app/1): a node's id and address, ID=ADDR,
    /// repeatable (reads go to the first that answers, transactions to the domain's active),
    /// with an application certificate (--app-pki, --app-id).
    #[arg(
        long,
        global = true,
        help_heading = options::APP,
        value_name = "ID=ADDR",
        value_parser = parse_app_remote,
        conflicts_with = "app_socket"
    )]
    app_remote: Vec<(domsync_proto::model::NodeId, SocketAddr)>,
    /// Directory with ca.pem and app-<id>.pem/.key, for --app-remote.
    #[arg(
        long,
        global = true,
        help_heading = options::APP,
        env = "DOMSYNC_APP_PKI",
        default_value = "./pki"
    )]
    app_pki: PathBuf,
    /// The application's id (certificate domsync://app/<id>), for --app-remote.
    #[arg(
        long,
        global = true,
        help_heading = options::APP,
        env = "DOMSYNC_APP_ID",
        value_name = "ID"
    )]
    app_id: Option<String>,
    #[command(subcommand)]
    command: TopCommand,
}

/// Every subcommand: those working on the store ([`Command`]) and the rest.
#[derive(Subcommand)]
enum TopCommand {
    #[command(flatten)]
    Store(Command),
    /// Deployment CA and certificates: `pki init`, `pki issue --role node --id NAME`.
    #[command(subcommand)]
    Pki(pki::PkiCmd),
    /// Read a domain as a gateway: `gateway fetch|crl|watch|list --node ID=ADDR --id GW --domain D`.
    #[command(subcommand)]
    Gateway(gateway::GatewayCmd),
    /// (daemon) Every domain of the running domsyncd: role, epoch, position, placement, and
    /// per standby its sync status, lag and last successful sync.
    Status {
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Check this node's setup from its configuration file: configuration, certificate
    /// expiry, peers reachable, clock skew, disk space, descriptor limit, state permissions;
    /// one line per check with what to do (exit 1 when one fails).
    Doctor(doctor::DoctorArgs),
    /// (daemon) Make this daemon's standby replica of DOMAIN active (manual failover);
    /// refused while the old active is seen alive or a peer holds more, unless --force.
    Promote {
        domain: String,
        /// Promote anyway (split brain possible; records only the old active holds go to
        /// its collision archive).
        #[arg(long)]
        force: bool,
    },
    /// (daemon) Move the active role of DOMAIN from this daemon's node to a standby.
    Switchover {
        domain: String,
        /// The standby node that becomes active.
        #[arg(long, value_name = "NODE")]
        to: String,
    },
    /// (daemon) The collision archive: list|show|reapply|discard DOMAIN [ID].
    #[command(subcommand)]
    Collisions(admin::CollisionsCmd),
    /// Domains: `create|list` work locally on --data; `add|remove` change a running domsyncd.
    #[command(subcommand)]
    Domain(DomainTop),
    /// (daemon) Which node should be active for each domain so actives are balanced by
    /// weight (and kept in their region): load per node now and once done, and the moves.
    Plan {
        /// One JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// (daemon) Carry the plan out: one switchover at a time, each sent to the daemon active
    /// for its domain (others than the one asked are reached over remote admin: give
    /// --admin-pki DIR and --admin-id ID); stops at the first failure.
    Rebalance {
        /// Print the steps without moving anything.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `domsync domain ...`.
#[derive(Subcommand)]
enum DomainTop {
    #[command(flatten)]
    Local(commands::DomainCmd),
    /// (daemon) Add a domain to the running domsyncd without editing its configuration file:
    /// checked like a [[domains]] entry, kept in <state_dir>/admin-domains.toml (merged with
    /// the configuration file at start and on SIGHUP; the file wins on a name clash), placed
    /// at once. Run the same command on every replica's daemon, or add --all.
    Add(admin::DomainAddArgs),
    /// (daemon) Stop serving a domain added with `domain add` and forget it (its store files
    /// stay in the state directory). A domain of the configuration file is refused: remove
    /// it from the file and send SIGHUP. Run it on every replica's daemon, or add --all.
    Remove {
        domain: String,
        /// Also on every other node of the daemon's configuration, over remote admin (needs
        /// --admin-pki DIR and --admin-id ID).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Create or list domains (parsed as `TopCommand::Domain`, handled here).
    #[command(skip)]
    Domain(commands::DomainCmd),
    /// User keys and values of a domain.
    #[command(subcommand)]
    Kv(commands::KvCmd),
    /// Policy packages of a domain.
    #[command(subcommand)]
    Policy(commands::PolicyCmd),
    /// Certificate revocation lists of a domain (put|remove|list also through a daemon).
    #[command(subcommand)]
    Crl(trust::CrlCmd),
    /// Issuer certificates that verify a domain's CRLs (add|remove|list also through a
    /// daemon).
    #[command(subcommand)]
    Issuer(trust::IssuerCmd),
    /// The change log of a domain.
    #[command(subcommand)]
    Log(commands::LogCmd),
    /// Return the space freed by deletes and overwrites in a domain's database to the file
    /// system (locally on --data with the daemon stopped, or through a running daemon with
    /// --socket/--remote); prints the file's size before and after.
    Compact {
        /// The domain.
        domain: String,
    },
    /// Check every record's CRC and chain, the state digest and policy contents.
    Verify {
        /// Only this domain (default: all).
        domain: Option<String>,
    },
    /// A walkthrough with built-in defaults: creates a domain, writes, installs a policy,
    /// uploads a CRL, shows the log and verifies; then replicates it to two standbys over QUIC
    /// on loopback, cuts a connection and shows every replica converge.
    Demo {
        /// Where to keep the demo store (default: a fresh temporary directory).
        #[arg(long = "dir")]
        dir: Option<PathBuf>,
    },
}

impl Cli {
    /// The daemon to talk to: `--remote`, else `--socket`, else (when `always`) the default
    /// socket; `None` selects local mode.
    fn target(&self, always: bool) -> Result<Option<admin::Target>, String> {
        if let Some((node, addr)) = self.remote.clone() {
            let id = self.admin_id.clone().ok_or(
                "--remote needs --admin-id ID (the admin certificate domsync://admin/<ID> in --admin-pki)",
            )?;
            return Ok(Some(admin::Target::Remote {
                node,
                addr,
                pki: self.admin_pki.clone(),
                id,
            }));
        }
        Ok(match &self.socket {
            Some(p) => Some(admin::Target::Socket(p.clone())),
            None if always => Some(admin::Target::Socket(admin::DEFAULT_SOCKET.into())),
            None => None,
        })
    }
}

impl Cli {
    /// The daemon's application protocol: `--app-remote`, else `--app-socket`, else (when
    /// `always`) the default application socket; `None` selects local mode.
    fn app_target(&self, always: bool) -> Result<Option<domsync_client::app::AppTarget>, String> {
        use domsync_client::app::AppTarget;
        if !self.app_remote.is_empty() {
            let id = self.app_id.clone().ok_or(
                "--app-remote needs --app-id ID (the application certificate domsync://app/<ID> in --app-pki)",
            )?;
            return Ok(Some(AppTarget::Remote {
                nodes: self.app_remote.clone(),
                pki: self.app_pki.clone(),
                id,
            }));
        }
        Ok(match &self.app_socket {
            Some(p) => Some(AppTarget::Socket(p.clone())),
            None if always => Some(AppTarget::Socket(kv::DEFAULT_APP_SOCKET.into())),
            None => None,
        })
    }
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let daemon = cli.target(false)?;
    let app = cli.app_target(false)?;
    let app_watch = cli.app_target(true)?;
    let target = cli
        .target(true)?
        .unwrap_or_else(|| admin::Target::Socket(admin::DEFAULT_SOCKET.into()));
    let cert = admin::AdminCert {
        pki: cli.admin_pki.clone(),
        id: cli.admin_id.clone(),
    };
    match cli.command {
        TopCommand::Pki(cmd) => pki::run(cmd),
        TopCommand::Gateway(cmd) => gateway::run(cmd),
        TopCommand::Status { json } => admin::status(&target, json),
        TopCommand::Doctor(args) => doctor::run(&args),
        TopCommand::Promote { domain, force } => admin::promote(&target, &domain, force),
        TopCommand::Switchover { domain, to } => admin::switchover(&target, &domain, &to),
        TopCommand::Collisions(cmd) => admin::collisions(&target, cmd),
        TopCommand::Domain(DomainTop::Add(args)) => admin::domain_add(&target, &cert, args),
        TopCommand::Domain(DomainTop::Remove { domain, all }) => {
            admin::domain_remove(&target, &cert, &domain, all)
        }
        TopCommand::Plan { json } => admin::plan(&target, json),
        TopCommand::Rebalance { dry_run } => admin::rebalance(&target, &cert, dry_run),
        TopCommand::Domain(DomainTop::Local(cmd)) => match daemon {
            Some(_) => Err(
                "domain create|list work locally on --data; drop --socket/--remote (a daemon takes domains with `domain add`)".into(),
            ),
            None => commands::run(&cli.data, &cli.node, Command::Domain(cmd)),
        },
        TopCommand::Store(Command::Demo { dir }) => demo::run(dir),
        TopCommand::Store(Command::Kv(cmd @ commands::KvCmd::Watch { .. })) => match app_watch {
            Some(t) => kv::daemon(t, cmd),
            None => Err("kv watch needs a running domsyncd: give --app-socket PATH".into()),
        },
        TopCommand::Store(Command::Kv(cmd)) if app.is_some() => match app {
            Some(t) => kv::daemon(t, cmd),
            None => Err("no application target".into()),
        },
        TopCommand::Store(command) => match (daemon, command) {
            (Some(t), Command::Kv(commands::KvCmd::Put { domain, key, value, json: false })) => admin::write(
                &t,
                &domain,
                admin::put_ops(key, value),
                &admin::WriteKind::Put,
            ),
            (Some(t), Command::Kv(commands::KvCmd::Del { domain, key, json: false })) => admin::write(
                &t,
                &domain,
                vec![domsync_proto::model::Op::Delete {
                    key: key.into_bytes(),
                }],
                &admin::WriteKind::Delete,
            ),
            (Some(t), Command::Policy(commands::PolicyCmd::Install { domain, name, file })) => {
                let content = std::fs::read(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let ops = vec![domsync_proto::model::Op::InstallPolicy {
                    name: name.clone(),
                    content,
                }];
                admin::write(&t, &domain, ops, &admin::WriteKind::Policy(name))
            }
            (Some(t), Command::Compact { domain }) => admin::compact(&t, &domain),
            (Some(t), Command::Crl(cmd)) => trust::crl(&trust::Source::Daemon(&t), cmd),
            (Some(t), Command::Issuer(cmd)) => trust::issuer(&trust::Source::Daemon(&t), cmd),
            (Some(_), Command::Kv(_)) => Err(
                "through --socket/--remote (admin) only kv put|del without --json go to a daemon; kv get|list|txn|watch use the application protocol: give --app-socket PATH or --app-remote ID=ADDR instead".into(),
            ),
            (Some(_), _) => Err(
                "only kv put|del, policy install, crl, issuer and compact commands are sent to a daemon; drop --socket/--remote to work locally on --data".into(),
            ),
            (None, command) => commands::run(&cli.data, &cli.node, command),
        },
    }
}

fn main() -> ExitCode {
    if let Some(code) = generate::intercept_with(options::command) {
        return code;
    }
    let result = run(options::parse());
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("domsync: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--app-remote ID=ADDR`.
fn parse_app_remote(text: &str) -> Result<(domsync_proto::model::NodeId, SocketAddr), String> {
    domsync_client::admin::parse_remote("--app-remote", text)
}

/// `--remote ID=ADDR` (a bare address is refused at parse time, showing the form).
fn parse_remote(text: &str) -> Result<(domsync_proto::model::NodeId, SocketAddr), String> {
    domsync_client::admin::parse_remote("--remote", text)
}

/// Writes `bytes` to `path` (created 0600 whatever the umask, or truncated): what `domsync`
/// writes holds a tenant's configuration, readable by its owner only.
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// Creates `dir` and its missing parents, each created one 0700 whatever the umask.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
