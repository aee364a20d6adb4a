//! Errors of the application client.

use domsync_proto::app::AppError;

/// Why an application request failed. Each message is one line saying what happened and what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The node answered with a refusal or failure.
    #[error(transparent)]
    App(#[from] AppError),
    /// No node could be reached.
    #[error("{0}")]
    Connect(String),
    /// The node answered something this client cannot read (a bad frame, an unexpected
    /// answer, a package whose SHA-256 does not match).
    #[error("{0}")]
    Protocol(String),
    /// The request itself is wrong (a bad name, a value too large).
    #[error("{0}")]
    Usage(String),
}
