//! `domsync gateway`: read a domain as a gateway does (for operators and tests), with the
//! client library: nearest node first, failover, monotonic reads, verified packages and the
//! disk cache. One line per result, naming the node, role, epoch and position that served it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use domsync_client::gateway::{Client, ClientConfig, CrlCopy, Error, Origin, Package, Update};
use domsync_net::{Identity, PeerRole, TlsFiles};
use domsync_proto::gateway::Served;
use domsync_proto::model::{DomainId, NodeId};
use sha2::{Digest as _, Sha256};

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Exit code when the package or CRL does not exist.
const EXIT_NOT_FOUND: u8 = 4;

#[derive(Subcommand)]
pub enum GatewayCmd {
    /// Fetch a policy package (newer than the cached copy, else the cached copy confirmed;
    /// the cached copy when no node answers).
    Fetch {
        /// Package name.
        name: String,
        /// Write the content to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Fetch the CRL of an issuer (RFC 4514 text, as `domsync gateway list` shows it).
    Crl {
        /// Issuer distinguished name.
        issuer: String,
        /// Write the DER bytes to this file.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        opts: Opts,
    },
    /// Watch packages and CRLs: one line per new version, as the nodes push them.
    Watch {
        /// A package to watch (repeat for several).
        #[arg(long = "policy", value_name = "NAME")]
        policies: Vec<String>,
        /// A CRL issuer to watch (repeat for several).
        #[arg(long = "crl", value_name = "ISSUER")]
        crls: Vec<String>,
        /// Stop after this many updates (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        opts: Opts,
    },
    /// List the packages and CRLs of the domain.
    List {
        #[command(flatten)]
        opts: Opts,
    },
}

/// Options every gateway command takes.
#[derive(Args)]
pub struct Opts {
    /// A node of the domain, as ID=ADDRESS (for example a=10.0.0.1:7400); repeat for each.
    // The id `node` shadows the global `--node` of local mode inside gateway commands.
    #[arg(long = "node", id = "node", value_name = "ID=ADDR", required = true)]
    nodes: Vec<String>,
    /// Directory with ca.pem and this gateway's gateway-<id>.pem and .key.
    #[arg(long, default_value = "./pki")]
    pki: PathBuf,
    /// This gateway's id (its certificate is domsync://gateway/<id>).
    #[arg(long)]
    id: String,
    /// The domain to read.
    #[arg(long)]
    domain: String,
    /// Cache directory for the last good copies (default: none).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Seconds to wait for a connection to a node.
    #[arg(long, default_value_t = 3.0)]
    connect_timeout: f64,
}

/// Parses `ID=ADDRESS` of `--node`.
fn parse_node(text: &str) -> Result<(NodeId, SocketAddr), Box<dyn std::error::Error>> {
    Ok(domsync_client::gateway::parse_node(text)?)
}

fn client(opts: &Opts) -> Result<Client, Box<dyn std::error::Error>> {
    let nodes = opts
        .nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<Result<Vec<_>, _>>()?;
    let domain: DomainId = opts.domain.parse()?;
    let credentials =
        TlsFiles::in_dir(&opts.pki, &Identity::new(PeerRole::Gateway, &opts.id)?).load()?;
    let mut config = ClientConfig::new(domain, nodes, credentials);
    config.cache_dir = opts.cache.clone();
    if !(opts.connect_timeout > 0.0 && opts.connect_timeout <= 3600.0) {
        return Err("--connect-timeout must be between 0 and 3600 seconds".into());
    }
    config.connect_timeout = Duration::from_secs_f64(opts.connect_timeout);
    Ok(Client::new(config)?)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn served(s: &Served) -> String {
    format!(
        "node={} role={} epoch={} position={}",
        s.node, s.role, s.epoch, s.position.lsn
    )
}

fn origin(o: &Origin) -> &'static str {
    match o {
        Origin::Fetched => "fetched",
        Origin::Confirmed => "confirmed",
        Origin::Held { .. } => "held",
    }
}

fn warn_held(o: &Origin) {
    if let Origin::Held { why } = o {
        eprintln!("domsync: warning: no node answered, this is the cached copy ({why})");
    }
}

fn package_line(p: &Package) -> String {
    format!(
        "package={} version={} size={} sha256={} {} origin={}",
        p.info.name,
        p.info.stamp(),
        p.info.size,
        hex(&p.info.sha256),
        served(&p.served),
        origin(&p.origin)
    )
}

fn crl_line(c: &CrlCopy) -> String {
    format!(
        "crl issuer={:?} number={} next_update={} size={} sha256={} {} origin={}",
        c.crl.issuer,
        c.crl.number,
        c.crl
            .next_update
            .map_or_else(|| "none".to_owned(), |t| t.to_string()),
        c.crl.der.len(),
        hex(&Sha256::digest(&c.crl.der)),
        served(&c.served),
        origin(&c.origin)
    )
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    crate::write_private(path, bytes)
        .map_err(|e| format!("cannot write {}: {e}; check the path", path.display()).into())
}

fn not_found(e: &Error) -> Option<ExitCode> {
    match e {
        Error::PolicyNotFound { .. } | Error::CrlNotFound { .. } => {
            eprintln!("domsync: {e}");
            Some(ExitCode::from(EXIT_NOT_FOUND))
        }
        _ => None,
    }
}

pub fn run(cmd: GatewayCmd) -> Res {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(cmd))
}

async fn run_async(cmd: GatewayCmd) -> Res {
    match cmd {
        GatewayCmd::Fetch { name, out, opts } => {
            let client = client(&opts)?;
            let p = match client.fetch(&name).await {
                Ok(p) => p,
                Err(e) => return not_found(&e).ok_or_else(|| e.into()),
            };
            warn_held(&p.origin);
            if let Some(out) = out {
                write_out(&out, &p.content)?;
            }
            println!("{}", package_line(&p));
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Crl { issuer, out, opts } => {
            let client = client(&opts)?;
            let c = match client.crl(&issuer).await {
                Ok(c) => c,
                Err(e) => return not_found(&e).ok_or_else(|| e.into()),
            };
            warn_held(&c.origin);
            if let Some(out) = out {
                write_out(&out, &c.crl.der)?;
            }
            println!("{}", crl_line(&c));
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::List { opts } => {
            let client = client(&opts)?;
            let policies = client.list_policies().await?;
            for p in &policies.items {
                println!(
                    "package={} version={} size={} sha256={} {}",
                    p.name,
                    p.stamp(),
                    p.size,
                    hex(&p.sha256),
                    served(&policies.served)
                );
            }
            let crls = client.list_crls().await?;
            for c in &crls.items {
                println!(
                    "crl issuer={:?} number={} next_update={} size={} {}",
                    c.issuer,
                    c.number,
                    c.next_update
                        .map_or_else(|| "none".to_owned(), |t| t.to_string()),
                    c.size,
                    served(&crls.served)
                );
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Watch {
            policies,
            crls,
            count,
            opts,
        } => {
            let client = client(&opts)?;
            let p: Vec<&str> = policies.iter().map(String::as_str).collect();
            let c: Vec<&str> = crls.iter().map(String::as_str).collect();
            let mut watch = client.watch(&p, &c)?;
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                match watch.next().await {
                    Ok(Update::Policy(p)) => println!("{}", package_line(&p)),
                    Ok(Update::Crl(c)) => println!("{}", crl_line(&c)),
                    Ok(Update::PolicyRemoved { name, served: s }) => {
                        println!("removed package={name} {}", served(&s));
                    }
                    Ok(Update::CrlRemoved { issuer, served: s }) => {
                        println!("removed crl issuer={issuer:?} {}", served(&s));
                    }
                    Err(e) => {
                        eprintln!("domsync: warning: {e}; retrying");
                        continue;
                    }
                }
                seen += 1;
            }
            client.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}
