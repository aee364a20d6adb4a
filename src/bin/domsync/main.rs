//! `domsync`: the operator command. Local mode works directly on a state directory (`--data`).

mod commands;
mod demo;
mod demo_cluster;
mod gateway;
mod pki;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operator command of domsync: domains, keys, policy packages, CRLs, the change log.
#[derive(Parser)]
#[command(name = "domsync", version, about)]
struct Cli {
    /// State directory of this node (local mode; the store must not be open in domsyncd).
    #[arg(
        long,
        global = true,
        env = "DOMSYNC_DATA",
        default_value = "/var/lib/domsync"
    )]
    data: PathBuf,
    /// This node's id, used as the primary of domains created here.
    #[arg(long, global = true, env = "DOMSYNC_NODE", default_value = "local")]
    node: String,
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
}

#[derive(Subcommand)]
enum Command {
    /// Create or list domains.
    #[command(subcommand)]
    Domain(commands::DomainCmd),
    /// User keys and values of a domain.
    #[command(subcommand)]
    Kv(commands::KvCmd),
    /// Policy packages of a domain.
    #[command(subcommand)]
    Policy(commands::PolicyCmd),
    /// Certificate revocation lists of a domain.
    #[command(subcommand)]
    Crl(commands::CrlCmd),
    /// The change log of a domain.
    #[command(subcommand)]
    Log(commands::LogCmd),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        TopCommand::Pki(cmd) => pki::run(cmd),
        TopCommand::Gateway(cmd) => gateway::run(cmd),
        TopCommand::Store(Command::Demo { dir }) => demo::run(dir),
        TopCommand::Store(command) => commands::run(&cli.data, &cli.node, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("domsync: error: {e}");
            ExitCode::from(1)
        }
    }
}
