//! # turnkey-types: the vocabulary every turnkey crate shares
//!
//! A leaf crate (serde and thiserror only): the client [`Transport`], TURN/STUN URLs
//! ([`TurnUrl`], with IPv6 bracketing written once) and the TURN key id rule ([`KeyId`]),
//! fleet member names ([`NodeId`], [`Region`]), each
//! parsed where it is read (`FromStr`, serde) so no caller validates a second time; and the
//! parse-at-deserialize helpers of every crate's settings ([`parse`]: `nonzero_secs`,
//! `in_range`, ...); and the one connection limiter and accept backoff of every TCP listener
//! ([`conn_limit`]: the relay's stream listeners and the issuer's HTTP server).

pub mod conn_limit;
mod error;
mod key_id;
mod name;
pub mod parse;
mod transport;
mod url;

pub use error::TypeError;
pub use key_id::KeyId;
pub use name::{NodeId, Region, MAX_NAME_LEN};
pub use transport::Transport;
pub use url::{bracketed, TurnUrl, UrlKind, DEFAULT_PORT, DEFAULT_TLS_PORT};
