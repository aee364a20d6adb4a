//! The service put together: the daemon's runtime, then its admin and application servers on
//! top. The runtime ([`crate::run`]) does not know the servers; each serves a [`Daemon`];
//! only this module names them all.

use std::sync::Arc;

use crate::{AdminServer, AppServer, Config, Daemon, DaemonError};

impl Daemon {
    /// Opens the store, starts the node and places every domain of `config` that has a replica
    /// here, then starts the admin server (the local socket and the remote ALPN), so that it
    /// answers before the service reports ready. [`Daemon::shutdown`] stops both
    /// servers first. Must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`DaemonError`] when the node as a whole or the admin server cannot start (the daemon
    /// is then shut down).
    pub async fn start(config: Config) -> Result<Arc<Daemon>, DaemonError> {
        let daemon = Daemon::open(config).await?;
        let admin = match AdminServer::start(&daemon) {
            Ok(admin) => admin,
            Err(e) => {
                daemon.shutdown().await;
                return Err(e.into());
            }
        };
        let app = match AppServer::start(&daemon) {
            Ok(app) => app,
            Err(e) => {
                admin.stop(&daemon);
                daemon.shutdown().await;
                return Err(e.into());
            }
        };
        // One hook (a later one replaces it): the application server stops first.
        daemon.on_shutdown(Box::new(move |daemon| {
            app.stop(daemon);
            admin.stop(daemon);
        }));
        crate::crl_watch::start(&daemon);
        Ok(daemon)
    }
}
