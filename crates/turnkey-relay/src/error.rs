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
