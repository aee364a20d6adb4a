//! `domsyncd`: the domsync daemon (DESIGN.md §10).
//!
//! Reads its configuration (`/etc/domsync/domsync.toml`, or `--config FILE`), refuses it with
//! every problem listed if it is not clean, then opens every domain, binds its listeners and
//! tells systemd `READY=1`, with a one-line `STATUS=` kept current and `WATCHDOG=1` when
//! `WatchdogSec` is set: both from a status gathering off the main loop, so a wedged node
//! stops pinging (systemd restarts it) while signals are still handled. Notifications never
//! block: one the service manager's queue has no room for is dropped. SIGTERM stops it gracefully; SIGHUP reloads the
//! configuration and the TLS files (certificate, key, CA, CRL; a bad set is refused and the
//! running one kept).
//!
//! With no `--config` and no file at the default path it starts a single-node development
//! instance under the temporary directory, with a generated PKI, and says where.

use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use domsync_daemon::{Config, Daemon, DEFAULT_PATH};
use domsync_net::{pki, PeerRole};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};

#[path = "domsyncd/generate.rs"]
mod generate;

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
    /// Log line format on stderr: `text`, or `json` (one object a line, for journald and log
    /// shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "DOMSYNC_LOG_FORMAT")]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields`, `target`).
    Json,
}

/// Logs to stderr in `format`, at the level `RUST_LOG` says (`info` by default).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    if let Some(code) = generate::intercept::<Args>() {
        return code;
    }
    let args = Args::parse();
    init_logging(args.log_format);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (the journal keeps it): not also through the log.
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
        config.check_files(&path)?;
        let crl = config.check_crl(&path)?;
        println!(
            "configuration {} is valid: node {}, {} domains ({} here)",
            path.display(),
            config.node.id,
            config.domains.len(),
            config.local_domains().count()
        );
        if let Some(crl) = crl {
            println!(
                "CRL {} is signed by the CA: {} certificates revoked (CRL number {})",
                crl.path.display(),
                crl.revoked.len(),
                crl.number.as_deref().unwrap_or("none")
            );
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let served = rt.block_on(serve(path, config));
    // A status gathering stuck on a wedged node must not hold the exit (dropping the runtime
    // would wait for its blocking thread).
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn serve(path: PathBuf, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let daemon = Daemon::start(config).await?;
    if let Some(addr) = daemon.config().node.metrics {
        domsync_daemon::serve_metrics(addr, Arc::clone(&daemon))
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
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = summary;
    // Status is gathered on a blocking thread, one gathering at a time: this loop never waits
    // on the node's locks, so signals are always handled. A gathering that does not finish
    // means the node is wedged: no watchdog ping is sent then, and systemd restarts it.
    let mut gathering: Option<(tokio::time::Instant, tokio::task::JoinHandle<String>)> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => match &gathering {
                None => {
                    let d = Arc::clone(&daemon);
                    let job = tokio::task::spawn_blocking(move || d.summary());
                    gathering = Some((tokio::time::Instant::now(), job));
                }
                Some((since, _)) => tracing::warn!(
                    "status gathering has not finished for {:?}: the node may be wedged; no watchdog ping",
                    since.elapsed()
                ),
            },
            done = async {
                match gathering.as_mut() {
                    Some((_, job)) => job.await,
                    None => std::future::pending().await,
                }
            }, if gathering.is_some() => {
                gathering = None;
                if let Ok(now) = done {
                    if watchdog.is_some() {
                        notify(&[NotifyState::Watchdog]);
                    }
                    if now != last {
                        notify(&[NotifyState::Status(&now)]);
                        last = now;
                    }
                }
            }
            _ = hup.recv() => {
                reload(&daemon, &path).await;
                // The next gathering tells the status again.
                last.clear();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping: closing streams and domain stores");
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    // On a task of its own: a wedged worker cannot hold this thread past the timeout.
    let stopping = tokio::spawn({
        let daemon = Arc::clone(&daemon);
        async move { daemon.shutdown().await }
    });
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .map_err(|_| "streams did not close within 20 s; stopped anyway")?
        .map_err(|e| format!("shutdown failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn reload(daemon: &Arc<Daemon>, path: &Path) {
    notify(&[NotifyState::Reloading]);
    match Config::load(path) {
        Ok(new) => match daemon.reload(new).await {
            Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
            Err(e) => tracing::error!("{e}"),
        },
        Err(e) => tracing::error!("reload refused, the running configuration is kept: {e}"),
    }
    // Bounded: a wedged node leaves the status out rather than the signals unhandled.
    let d = Arc::clone(daemon);
    let gathered = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || d.summary()),
    )
    .await;
    match gathered {
        Ok(Ok(status)) => notify(&[NotifyState::Ready, NotifyState::Status(&status)]),
        _ => notify(&[NotifyState::Ready]),
    }
}

/// Tells the service manager `states`, when it listens (`NOTIFY_SOCKET`).
fn notify(states: &[NotifyState<'_>]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(Path::new(&socket), states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Sends one notification to `socket` without ever waiting: when the listener's queue is
/// full the notification is dropped (`WouldBlock`). A blocking send (as `sd_notify::notify`
/// does) waits as long as nobody reads, and the main loop, signals included, with it.
fn notify_to(socket: &Path, states: &[NotifyState<'_>]) -> std::io::Result<()> {
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    sock.connect(socket)?;
    let sent = sock.send(message.as_bytes())?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "incomplete notification",
        ));
    }
    Ok(())
}

/// A single-node development instance: state, PKI and configuration under the temporary
/// directory, created on first use.
fn dev_instance() -> Result<(PathBuf, Config), Box<dyn std::error::Error>> {
    let root = std::env::temp_dir().join("domsync-dev");
    let pki_dir = root.join("pki");
    if !pki_dir.join(domsync_net::CA_CERT_FILE).exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&pki_dir)?;
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
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that never reads fills its queue (`net.unix.max_dgram_qlen`, often 10):
    /// every later notification must be dropped at once, never waited on (the daemon once
    /// ignored SIGTERM, its main loop blocked in a notification nobody read).
    #[test]
    fn notifications_never_block_on_a_full_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut dropped = 0;
            for _ in 0..5000 {
                if let Err(e) = notify_to(&path, &[NotifyState::Status("2 domains")]) {
                    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                    dropped += 1;
                }
            }
            done.send(dropped).unwrap();
        });
        // Hang guard only: 5000 non-blocking sends take milliseconds.
        let dropped = finished
            .recv_timeout(Duration::from_secs(60))
            .expect("a notification blocked on a listener that does not read");
        assert!(dropped > 0, "the listener's queue never filled");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=2 domains\n");
    }
}
