//! `domsync pki`: create a deployment CA and issue node, gateway and admin certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use domsync_net::{pki, PeerRole};

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Subcommand)]
pub enum PkiCmd {
    /// Create a new CA: writes ca.pem and ca.key (mode 0600) into --dir; never overwrites.
    Init {
        /// Directory of the CA (created if missing).
        #[arg(long, visible_alias = "out", default_value = "./pki")]
        dir: PathBuf,
    },
    /// Issue a certificate with the identity domsync://<role>/<id>, signed by the CA in --dir:
    /// writes <role>-<id>.pem and <role>-<id>.key (mode 0600); never overwrites.
    Issue {
        /// What the certificate allows: node (replicates), gateway (reads), admin.
        #[arg(long, value_enum)]
        role: Role,
        /// Name of the node, gateway or admin: 1 to 64 characters from A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        /// Directory holding ca.pem and ca.key.
        #[arg(long, visible_alias = "ca", default_value = "./pki")]
        dir: PathBuf,
        /// Where to write the certificate and key (default: --dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = pki::DEFAULT_LEAF_DAYS)]
        days: u32,
    },
}

/// Role of a certificate, as given on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    /// A node running domsyncd.
    Node,
    /// A gateway reading configuration.
    Gateway,
    /// An administrator.
    Admin,
}

impl From<Role> for PeerRole {
    fn from(role: Role) -> PeerRole {
        match role {
            Role::Node => PeerRole::Node,
            Role::Gateway => PeerRole::Gateway,
            Role::Admin => PeerRole::Admin,
        }
    }
}

pub fn run(cmd: PkiCmd) -> Res {
    match cmd {
        PkiCmd::Init { dir } => {
            let files = pki::init_ca(&dir)?;
            println!(
                "created CA {} and its key {} (keep the key offline; give {} to every node, gateway and admin)",
                show(&files.cert),
                show(&files.key),
                show(&files.cert)
            );
        }
        PkiCmd::Issue {
            role,
            id,
            dir,
            out,
            days,
        } => {
            let out = out.as_deref().unwrap_or(&dir);
            let role = PeerRole::from(role);
            let files = pki::issue(&dir, role, &id, out, days)?;
            println!(
                "issued domsync://{role}/{id}: {} and {} (valid {days} days)",
                show(&files.cert),
                show(&files.key)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(path: &Path) -> String {
    path.display().to_string()
}
