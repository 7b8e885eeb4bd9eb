//! [`FleetError`]: the one error type of this crate.

/// Errors of the fleet state.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid fleet configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    /// A key id, usage key or other name is not usable in a Redis key name (node ids and regions
    /// are `turnkey_types` names, refused when parsed).
    #[error("invalid {what}: {value:?} (1-64 characters of A-Z a-z 0-9 . _ -)")]
    InvalidName {
        /// What the name is (node id, region, ...).
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// Redis cannot be reached right now (connection refused or lost, or no answer within the
    /// operation timeout). The caller keeps its local state; the connection is retried in the
    /// background and [`crate::Fleet::is_up`] turns true again when it answers.
    #[error("redis unavailable during {op}: {reason}")]
    Unavailable {
        /// The operation that failed.
        op: &'static str,
        /// Why (the client's error, or "down" when failing fast while a reconnect is pending).
        reason: String,
    },
    /// Redis answered with an error (a script error, a wrong type): a bug or foreign data under
    /// our prefix, not an outage.
    #[error("redis error during {op}: {source}")]
    Redis {
        /// The operation that failed.
        op: &'static str,
        /// The client's error.
        source: redis::RedisError,
    },
    /// Redis returned data this version cannot read (foreign data under our prefix).
    #[error("unexpected data in redis during {op}: {detail}")]
    Data {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Reading the CA file for `rediss://` failed.
    #[error("redis CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Registering the metrics failed (a name registered twice).
    #[error("fleet metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl FleetError {
    /// Whether this is an outage (the caller should fall back to local state) rather than a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, FleetError::Unavailable { .. })
    }
}
