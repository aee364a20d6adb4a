//! Why the service could not start or change: the daemon's runtime ([`DaemonError`]) and its
//! admin server ([`AdminServerError`]). A leaf: the runtime and the admin server both name
//! these without naming each other.

use std::path::PathBuf;

use crate::ConfigError;
use domsync_node::NodeError;
use domsync_proto::model::NodeId;
use domsync_store::StoreError;

/// The daemon could not start (a single domain's failure does not stop it).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The node's TLS files could not be used.
    #[error("{0}")]
    Tls(#[from] domsync_net::TlsError),
    /// The certificate does not belong to the configured node.
    #[error("the certificate {cert} is for {found}, but node.id is {expected}: point tls.cert at this node's certificate")]
    WrongCertificate {
        /// The certificate file.
        cert: String,
        /// Its identity.
        found: String,
        /// The configured node.
        expected: NodeId,
    },
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The node could not start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The admin server could not start.
    #[error("{0}")]
    Admin(#[from] AdminServerError),
    /// The application server could not start.
    #[error("{0}")]
    App(#[from] AppServerError),
    /// The configuration does not fit this machine (e.g. `node.state_dir` is a file).
    #[error("{0}")]
    Config(ConfigError),
    /// The domains added at runtime (`<state_dir>/admin-domains.toml`) do not fit the
    /// configuration.
    #[error("{0} (domains added with `domsync domain add`): fix the file or the configuration")]
    AddedDomains(ConfigError),
    /// A reload found the TLS files (certificate, key, CA, CRL) unusable.
    #[error("reload refused, the running configuration and TLS files are kept: {0}")]
    TlsReload(Box<DaemonError>),
    /// The open-file limit cannot hold the descriptors the domains, listeners and connections
    /// need (the start is refused).
    #[error("{0}")]
    Descriptors(crate::DescriptorShortage),
    /// A reload would hold more domains than the open-file limit allows.
    #[error("reload refused, the running configuration is kept: {0}")]
    ReloadDescriptors(crate::DescriptorShortage),
    /// A reload changed something only a restart can change.
    #[error("reload refused: {0} changed; restart the service to change it (the running configuration is kept)")]
    NeedsRestart(&'static str),
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminServerError {
    /// The socket path is taken by something else than a stale socket.
    #[error("admin socket {path}: {what}")]
    Path {
        /// The socket path.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// The socket could not be created.
    #[error("cannot create the admin socket {path}: {source}; {}", crate::descriptors::advice(.source, "check node.admin_socket and its directory's permissions"))]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Why the application server (`[apps]`) could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppServerError {
    /// The socket path is taken by something else than a stale socket.
    #[error("application socket {path}: {what}")]
    Path {
        /// The socket path.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// The socket could not be created.
    #[error("cannot create the application socket {path}: {source}; {}", crate::descriptors::advice(.source, "check apps.socket and its directory's permissions"))]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The socket could not be given to `[apps].group`.
    #[error("cannot give the application socket {path} to group {group}: {detail}; create the group (groupadd {group}) and add the service user to it, or unset apps.group")]
    Group {
        /// The socket path.
        path: PathBuf,
        /// The group of `[apps].group`.
        group: String,
        /// What went wrong.
        detail: String,
    },
}
