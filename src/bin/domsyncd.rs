//! `domsyncd`: the domsync daemon. For now it opens every domain store of the node and waits
//! for SIGTERM or SIGINT; replication and serving come with later layers.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use domsync::model::NodeId;
use domsync::store::{Store, StoreOptions};

/// The domsync daemon.
#[derive(Parser)]
#[command(name = "domsyncd", version, about)]
struct Args {
    /// State directory holding the domain stores.
    #[arg(long, env = "DOMSYNC_DATA", default_value = "/var/lib/domsync")]
    data: PathBuf,
    /// This node's id.
    #[arg(long, env = "DOMSYNC_NODE", default_value = "local")]
    node: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
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
    let node = NodeId::new(args.node.clone())?;
    let store = Store::open(&args.data, StoreOptions::new(node.clone()))?;
    let (mut open, mut failed) = (0, 0);
    for d in store.open_all()? {
        match d.and_then(|d| d.status()) {
            Ok(s) => {
                open += 1;
                tracing::info!(domain = %s.domain, role = %s.role, epoch = %s.epoch, lsn = %s.position.lsn, "domain open");
            }
            Err(e) => {
                failed += 1;
                tracing::error!(error = %e, "domain not opened; the others keep serving");
            }
        }
    }
    tracing::info!(%node, open, failed, dir = %args.data.display(), "domsyncd ready");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        Ok::<(), std::io::Error>(())
    })?;
    tracing::info!("stopping: closing domain stores");
    store.close();
    Ok(())
}
