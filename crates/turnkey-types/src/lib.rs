//! # turnkey-types: the vocabulary every turnkey crate shares
//!
//! A leaf crate (serde and thiserror only): the client [`Transport`], TURN/STUN URLs
//! ([`TurnUrl`], with IPv6 bracketing written once) and the TURN key id rule ([`KeyId`]), each
//! parsed where it is read (`FromStr`, serde) so no caller validates a second time.

mod error;
mod key_id;
mod transport;
mod url;

pub use error::TypeError;
pub use key_id::KeyId;
pub use transport::Transport;
pub use url::{bracketed, TurnUrl, UrlKind};
