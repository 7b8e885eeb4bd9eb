//! The crate's one error type.

use std::io;

/// Why a load run, or one of its allocations, failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The arguments are inconsistent or out of range.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// `--server` or `--peer-addr` did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// TLS configuration or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server answered a request with an error response.
    #[error("{method} failed: {code} {reason}")]
    Stun {
        /// The request's method.
        method: &'static str,
        /// The STUN error code (401, 438, 486, ...).
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// No answer within `--timeout`.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// The server's answer made no sense.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The credential issuer could not be used.
    #[error("credential issuer: {0}")]
    Issuer(String),
    /// Credentials could not be minted.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The JSON report could not be written, read or merged.
    #[error("report: {0}")]
    Report(String),
    /// Worker mode: Redis unreachable, or the run aborted (a worker missing at the barrier).
    #[error("coordination: {0}")]
    Coordinate(String),
    /// `--server-metrics` could not be scraped.
    #[error("server metrics: {0}")]
    Metrics(String),
}

impl LoadError {
    /// The key under which the report counts this failure: the STUN error code (`"401"`), or
    /// the kind (`"timeout"`, `"io"`, `"tls"`, `"protocol"`, ...).
    pub fn label(&self) -> String {
        match self {
            LoadError::Stun { code, .. } => code.to_string(),
            LoadError::Timeout(_) => "timeout".into(),
            LoadError::Io { .. } => "io".into(),
            LoadError::Tls(_) => "tls".into(),
            LoadError::Protocol(_) => "protocol".into(),
            LoadError::Args(_) => "args".into(),
            LoadError::Resolve(_) => "resolve".into(),
            LoadError::Issuer(_) => "issuer".into(),
            LoadError::Credentials(_) => "credentials".into(),
            LoadError::Report(_) => "report".into(),
            LoadError::Coordinate(_) => "coordinate".into(),
            LoadError::Metrics(_) => "metrics".into(),
        }
    }
}
