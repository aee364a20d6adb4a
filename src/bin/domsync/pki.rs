//! `domsync pki`: create a deployment CA, issue node, gateway, admin and app certificates, and
//! revoke them (the CA's `ca.crl`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use domsync_net::{pki, Identity, PeerRole};

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
        /// What the certificate allows: node (replicates), gateway (reads), admin, app (an
        /// application, as its grant in [apps] allows).
        #[arg(long, value_enum)]
        role: Role,
        /// Name of the node, gateway, admin or app: 1 to 64 characters from A-Z a-z 0-9 . _ -
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
    /// Revoke a certificate issued by the CA in --dir: adds its serial to ca.crl (written anew,
    /// signed by the CA, CRL number raised). Name it by --role and --id (its file
    /// <role>-<id>.pem in --dir), by --cert FILE, or by --serial HEX. Nodes enforce ca.crl
    /// once it is their [tls] crl and they got SIGHUP.
    Revoke {
        /// Role of the certificate to revoke (with --id).
        #[arg(long, value_enum, requires = "id", conflicts_with_all = ["cert", "serial"])]
        role: Option<Role>,
        /// Name of the node, gateway, admin or app (with --role).
        #[arg(long, requires = "role")]
        id: Option<String>,
        /// The certificate file to revoke.
        #[arg(long, conflicts_with = "serial")]
        cert: Option<PathBuf>,
        /// The serial to revoke, hex (colons allowed), for a certificate whose file is gone.
        #[arg(long)]
        serial: Option<String>,
        /// Directory holding ca.pem and ca.key; ca.crl is written there.
        #[arg(long, visible_alias = "ca", default_value = "./pki")]
        dir: PathBuf,
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
    /// An application (reads and writes the domains its grant in `[apps]` names).
    App,
}

impl From<Role> for PeerRole {
    fn from(role: Role) -> PeerRole {
        match role {
            Role::Node => PeerRole::Node,
            Role::Gateway => PeerRole::Gateway,
            Role::Admin => PeerRole::Admin,
            Role::App => PeerRole::App,
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
        PkiCmd::Revoke {
            role,
            id,
            cert,
            serial,
            dir,
        } => {
            let done = match (role, id, cert, serial) {
                (Some(role), Some(id), None, None) => {
                    let identity = Identity::new(role.into(), id)?;
                    pki::revoke(&dir, &domsync_net::leaf_files(&dir, &identity).cert)?
                }
                (None, None, Some(cert), None) => pki::revoke(&dir, &cert)?,
                (None, None, None, Some(serial)) => pki::revoke_serial(&dir, &serial)?,
                _ => {
                    eprintln!("domsync pki revoke: name the certificate by --role and --id, by --cert FILE or by --serial HEX");
                    return Ok(ExitCode::from(2));
                }
            };
            let what = match &done.identity {
                Some(identity) => format!("{identity} (serial {})", done.serial),
                None => format!("serial {}", done.serial),
            };
            println!(
                "{} {what}: {} now lists {} certificates (CRL number {}); copy it to every node's [tls] crl and send SIGHUP to domsyncd (systemctl reload domsyncd)",
                if done.newly { "revoked" } else { "already revoked:" },
                show(&done.crl),
                done.revoked,
                done.number
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(path: &Path) -> String {
    path.display().to_string()
}
