//! The relay's operator settings as they are read from the `[relay]` table of the config file:
//! [`EngineSettings`] (the engine's limits and lifetimes; [`crate::conn::StreamLimits`] holds the
//! TCP/TLS ones). Each default is defined once, in the `Default` impl of the type that owns the
//! setting, and every value is checked while it is parsed (a zero timeout or an out-of-range
//! frame size never reaches a typed config; the helpers are `turnkey_types::parse`), so the
//! binary needs no second validation pass.
//!
//! The types deserialize without `deny_unknown_fields` on purpose: several owners share the flat
//! `[relay]` table, and the binary's loader reports a key that no owner took.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The engine's operator settings (`[relay]` keys); [`crate::engine::EngineConfig::from_settings`]
/// adds the runtime parts (realm, secrets, peer policy, relay families).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// How long a nonce stays fresh before 438 (seconds, at least 1).
    #[serde(with = "nonzero_secs")]
    pub nonce_lifetime: Duration,
    /// Longest allocation lifetime granted (seconds, at least 1).
    #[serde(with = "nonzero_secs")]
    pub max_lifetime: Duration,
    /// Allocations one userid may hold at once (486 past it).
    pub max_allocations_per_user: u32,
    /// Allocations this relay holds at once (508 past it).
    pub max_allocations: u32,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Per-allocation bandwidth cap in bytes per second, both directions together (0: none).
    pub bandwidth_limit: u64,
    /// Unauthenticated replies per second per source IP (0: unlimited).
    pub unauth_replies_per_sec: u32,
    /// Accept channel numbers up to 0x7FFF (RFC 5766 clients such as coturn 4.6's uclient).
    pub rfc5766_channel_numbers: bool,
    /// SOFTWARE attribute on responses (none by default: replies to strangers stay small).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            nonce_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations_per_user: 100,
            max_allocations: 50_000,
            max_permissions: 64,
            max_channels: 64,
            bandwidth_limit: 0,
            unauth_replies_per_sec: 50,
            rfc5766_channel_numbers: false,
            software: None,
        }
    }
}

/// The parse helpers (shared with the issuer, the fleet and the binary: `turnkey_types::parse`).
pub use turnkey_types::parse::{in_range, nonzero_secs, secs};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_table_is_the_default() {
        let s: EngineSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, EngineSettings::default());
    }
}
