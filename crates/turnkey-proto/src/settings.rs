//! The relay's operator settings as they are read from the `[relay]` table of the config file:
//! [`EngineSettings`] (the engine's limits and lifetimes; [`crate::conn::StreamLimits`] holds the
//! TCP/TLS ones). Each default is defined once, in the `Default` impl of the type that owns the
//! setting, and every value is checked while it is parsed (a zero timeout or an out-of-range
//! frame size never reaches a typed config), so the binary needs no second validation pass.
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

/// A [`Duration`] written as whole seconds (`drain_grace = 30`).
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes whole seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    /// Deserializes whole seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A [`Duration`] written as whole seconds, at least 1 (timeouts and lifetimes: 0 would close or
/// expire everything at once).
pub mod nonzero_secs {
    use std::time::Duration;

    use serde::{de::Error as _, Deserialize as _, Deserializer, Serializer};

    /// Serializes whole seconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::secs::serialize(d, s)
    }

    /// Deserializes whole seconds, refusing 0.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(D::Error::custom("must be at least 1 second")),
            n => Ok(Duration::from_secs(n)),
        }
    }
}

/// An integer setting within `LO..=HI`, refused otherwise while parsing.
pub fn in_range<'de, D, T, const LO: u64, const HI: u64>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::de::Error as _;
    let v = u64::deserialize(d)?;
    if !(LO..=HI).contains(&v) {
        return Err(D::Error::custom(format!("must be {LO} to {HI}, not {v}")));
    }
    T::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(with = "nonzero_secs")]
        t: Duration,
        #[serde(deserialize_with = "in_range::<_, _, 1, 10>")]
        r: u32,
    }

    #[test]
    fn values_are_checked_while_parsing() {
        let ok: T = serde_json::from_str(r#"{"t": 5, "r": 10}"#).unwrap();
        assert_eq!((ok.t, ok.r), (Duration::from_secs(5), 10));
        let e = serde_json::from_str::<T>(r#"{"t": 0, "r": 1}"#).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = serde_json::from_str::<T>(r#"{"t": 1, "r": 11}"#).unwrap_err().to_string();
        assert!(e.contains("must be 1 to 10"), "{e}");
    }

    #[test]
    fn an_empty_table_is_the_default() {
        let s: EngineSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, EngineSettings::default());
    }
}
