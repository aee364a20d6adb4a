//! The service put together: the daemon's runtime, then its admin server on top. The runtime
//! ([`crate::run`]) does not know the admin server; the admin server serves a [`Daemon`]; only
//! this module names both.

use std::sync::Arc;

use crate::{AdminServer, Config, Daemon, DaemonError};

impl Daemon {
    /// Opens the store, starts the node and places every domain of `config` that has a replica
    /// here, then starts the admin server (the local socket and the remote ALPN), so that it
    /// answers before the service reports ready. [`Daemon::shutdown`] stops the admin server
    /// first. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`DaemonError`] when the node as a whole or the admin server cannot start (the daemon
    /// is then shut down).
    pub async fn start(config: Config) -> Result<Arc<Daemon>, DaemonError> {
        let daemon = Daemon::open(config).await?;
        match AdminServer::start(&daemon) {
            Ok(admin) => daemon.on_shutdown(Box::new(move |daemon| admin.stop(daemon))),
            Err(e) => {
                daemon.shutdown().await;
                return Err(e.into());
            }
        }
        crate::crl_watch::start(&daemon);
        Ok(daemon)
    }
}
