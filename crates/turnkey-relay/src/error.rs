use thiserror::Error;

/// Errors of the relay crate.
#[derive(Debug, Error)]
pub enum RelayError {
    /// A socket could not be bound or configured.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A listening address another socket already owns (usually another turnkey process).
    #[error(
        "cannot listen on {addr}: it is already in use by another process (is another turnkey running on it?); \
         only one process may own a listening address ({source})"
    )]
    InUse {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Other socket I/O failures.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A TLS certificate or key that cannot be used.
    #[error("tls: {0}")]
    Tls(String),
    /// A bad relay configuration value.
    #[error("invalid relay configuration: {0}")]
    Config(String),
}
