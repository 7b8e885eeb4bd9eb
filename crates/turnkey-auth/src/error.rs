use thiserror::Error;

/// Every way a credential, a secret or a nonce can be refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The username is not `<expiry>:<userid>` with a decimal expiry.
    #[error("username is not of the form <expiry>:<userid>")]
    MalformedUsername,
    /// The username's expiry time has passed.
    #[error("credential expired")]
    Expired,
    /// The username was revoked.
    #[error("credential revoked")]
    Revoked,
    /// No configured secret produces this password / integrity.
    #[error("credential does not match any configured secret")]
    BadCredential,
    /// A secret ring must hold at least one non-empty secret.
    #[error("no secret configured (a secret ring needs at least one non-empty secret)")]
    NoSecret,
    /// A TTL of zero or one that overflows the expiry.
    #[error("invalid ttl {0}")]
    InvalidTtl(u64),
}
