//! # turnkey-auth: the credential scheme, and nothing else
//!
//! This crate owns:
//! - the TURN REST credential scheme ([`rest`]): usernames `<expiry>:<userid>` and passwords
//!   `base64(HMAC-SHA1(secret, username))`, the form coturn (`use-auth-secret`) and eturnal accept;
//! - the long-term key of RFC 8489 §9.2.2, `MD5(username ":" realm ":" password)` ([`long_term_key`]);
//! - the secret ring ([`SecretRing`]): sign with the newest secret, accept every configured one;
//! - stateless nonces ([`NonceKey`]): an HMAC over the issue time and the client address, so an
//!   unauthenticated flood cannot grow server memory;
//! - HMAC-SHA1 ([`hmac_sha1`]), shared by the scheme, the nonces and STUN's MESSAGE-INTEGRITY
//!   (the relay and `turnkey-load` use this one copy);
//! - the revocation set type ([`RevocationSet`]) that the issuer fills and the relay consults.
//!
//! It must not import tokio, axum, sockets or read the clock: every function that depends on the
//! time takes `now` ([`UnixTime`]) as an argument, so tests drive time by hand.

mod error;
mod mac;
mod nonce;
mod rest;
mod revocation;
mod ring;
mod secret;

pub use error::AuthError;
pub use mac::{hmac_sha1, hmac_sha1_verify, HMAC_SHA1_LEN};
pub use nonce::{NonceKey, NonceStatus};
pub use rest::{long_term_key, Credential, RestUsername};
pub use revocation::RevocationSet;
pub use ring::SecretRing;
pub use secret::Secret;

/// Seconds since the Unix epoch, as told by the caller. The crate never reads the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The time `secs` seconds later (saturating).
    #[must_use]
    pub fn plus_secs(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs))
    }
}
