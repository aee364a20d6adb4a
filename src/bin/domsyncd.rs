//! `domsyncd`: the domsync daemon (DESIGN.md §10).
//!
//! Reads its configuration (`/etc/domsync/domsync.toml`, or `--config FILE`), refuses it with
//! every problem listed if it is not clean, then opens every domain, binds its listeners and
//! tells systemd `READY=1`, with a one-line `STATUS=` kept current and `WATCHDOG=1` from the
//! main loop when `WatchdogSec` is set. SIGTERM stops it gracefully; SIGHUP reloads the
//! configuration (a bad one is refused and the running one kept).
//!
//! With no `--config` and no file at the default path it starts a single-node development
//! instance under the temporary directory, with a generated PKI, and says where.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use domsync::daemon::{Config, Daemon, DEFAULT_PATH};
use domsync::net::{pki, PeerRole};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

/// The domsync daemon.
#[derive(Parser)]
#[command(name = "domsyncd", version, about)]
struct Args {
    /// Configuration file.
    #[arg(long, env = "DOMSYNC_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration and exit (0 when it is clean).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("domsyncd: error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (path, config) = match &args.config {
        Some(p) => (p.clone(), Config::load(p)?),
        None if Path::new(DEFAULT_PATH).exists() => {
            let p = PathBuf::from(DEFAULT_PATH);
            let c = Config::load(&p)?;
            (p, c)
        }
        None => dev_instance()?,
    };
    if args.check {
        println!(
            "configuration {} is valid: node {}, {} domains ({} here)",
            path.display(),
            config.node.id,
            config.domains.len(),
            config.local_domains().count()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(path, config))
}

async fn serve(path: PathBuf, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let daemon = Daemon::start(config).await?;
    if let Some(addr) = daemon.config().node.metrics {
        domsync::daemon::metrics::serve(addr, Arc::clone(&daemon))
            .await
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}; change node.metrics"))?;
    }
    let summary = daemon.summary();
    tracing::info!(node = %daemon.node().id(), listen = ?daemon.node().local_addr().ok(), config = %path.display(), "domsyncd ready: {summary}");
    notify(&[NotifyState::Ready, NotifyState::Status(&summary)]);
    let watchdog = sd_notify::watchdog_enabled();
    let beat = watchdog.map_or(Duration::from_secs(5), |w| {
        (w / 2).max(Duration::from_millis(100))
    });
    let mut ticks = tokio::time::interval(beat);
    let mut last = summary;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog]);
                }
                let now = daemon.summary();
                if now != last {
                    notify(&[NotifyState::Status(&now)]);
                    last = now;
                }
            }
            _ = hup.recv() => reload(&daemon, &path).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: closing streams and domain stores");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    tokio::time::timeout(Duration::from_secs(20), daemon.shutdown())
        .await
        .map_err(|_| "streams did not close within 20 s; stopped anyway")?;
    tracing::info!("stopped");
    Ok(())
}

async fn reload(daemon: &Arc<Daemon>, path: &Path) {
    notify(&[NotifyState::Reloading]);
    match Config::load(path) {
        Ok(new) => match daemon.reload(new).await {
            Ok(()) => {
                tracing::info!(config = %path.display(), "configuration reloaded: {}", daemon.summary())
            }
            Err(e) => tracing::error!("{e}"),
        },
        Err(e) => tracing::error!("reload refused, the running configuration is kept: {e}"),
    }
    notify(&[NotifyState::Ready, NotifyState::Status(&daemon.summary())]);
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// A single-node development instance: state, PKI and configuration under the temporary
/// directory, created on first use.
fn dev_instance() -> Result<(PathBuf, Config), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join("domsync-dev");
    let pki_dir = root.join("pki");
    if !pki_dir.join(pki::CA_CERT_FILE).exists() {
        std::fs::create_dir_all(&pki_dir)?;
        pki::init_ca(&pki_dir)?;
        for (role, id) in [
            (PeerRole::Node, "dev"),
            (PeerRole::Gateway, "dev-gateway"),
            (PeerRole::Admin, "dev-admin"),
        ] {
            pki::issue(&pki_dir, role, id, &pki_dir, pki::DEFAULT_LEAF_DAYS)?;
        }
    }
    let path = root.join("domsync.toml");
    if !path.exists() {
        let text = format!(
            r#"# Development instance written by domsyncd (no configuration was found at {DEFAULT_PATH}).
[node]
id = "dev"
state_dir = "{state}"
listen = "127.0.0.1:7400"
admin_socket = "{sock}"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/node-dev.pem"
key = "{pki}/node-dev.key"

[[domains]]
name = "dev"
replicas = ["dev"]
durability = "local"
gateways = ["dev-gateway"]
"#,
            state = root.join("state").display(),
            sock = root.join("admin.sock").display(),
            pki = pki_dir.display(),
        );
        std::fs::write(&path, text)?;
    }
    let config = Config::load(&path)?;
    println!(
        "domsyncd: no configuration at {DEFAULT_PATH}: development instance, config {}, data {}, certificates {} (gateway dev-gateway, admin dev-admin)",
        path.display(),
        config.node.state_dir.display(),
        pki_dir.display()
    );
    Ok((path, config))
}
