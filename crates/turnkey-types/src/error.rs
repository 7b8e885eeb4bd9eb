//! [`TypeError`]: why a value is not one of these types.

/// A value that does not parse into one of this crate's types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// Not a transport name (`udp`, `tcp`, `tls`).
    #[error("unknown transport {0:?} (udp, tcp or tls)")]
    Transport(String),
    /// Not a `stun:` / `turn:` / `turns:` URL this relay can use.
    #[error("not a STUN/TURN URL: {0:?}")]
    Url(String),
    /// Not a key id.
    #[error("invalid key id {0:?}: 1-64 characters of A-Z a-z 0-9 . _ -")]
    KeyId(String),
    /// Not a node id or region.
    #[error("invalid {what} {value:?}: 1-64 characters of A-Z a-z 0-9 . _ -")]
    Name {
        /// `node id` or `region`.
        what: &'static str,
        /// The refused text.
        value: String,
    },
}
