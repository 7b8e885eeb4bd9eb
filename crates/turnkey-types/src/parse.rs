//! Parse-at-deserialize helpers for settings (`#[serde(with = ...)]`,
//! `#[serde(deserialize_with = ...)]`): a value that deserialized is valid, so no owner of a
//! setting validates it a second time. Each refusal is a serde error naming the rule, which the
//! binary's config loader reports with the key's path, together with every other bad value.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// A [`std::time::Duration`] written as whole seconds (`drain_grace = 30`).
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

/// A [`std::time::Duration`] written as whole seconds, at least 1 (timeouts and lifetimes: 0
/// would close or expire everything at once).
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
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let v = u64::deserialize(d)?;
    if !(LO..=HI).contains(&v) {
        return Err(D::Error::custom(format!("must be {LO} to {HI}, not {v}")));
    }
    T::try_from(v).map_err(|_| D::Error::custom(format!("{v} is out of range")))
}

/// A text setting that must not be blank (empty or only whitespace).
pub fn nonblank<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Err(D::Error::custom("must not be empty"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(with = "nonzero_secs")]
        t: Duration,
        #[serde(deserialize_with = "in_range::<_, _, 1, 10>")]
        r: u32,
        #[serde(default, deserialize_with = "nonblank")]
        s: String,
    }

    #[test]
    fn values_are_checked_while_parsing() {
        let ok: T = serde_json::from_str(r#"{"t": 5, "r": 10, "s": "x"}"#).unwrap();
        assert_eq!((ok.t, ok.r, ok.s.as_str()), (Duration::from_secs(5), 10, "x"));
        let e = serde_json::from_str::<T>(r#"{"t": 0, "r": 1}"#).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = serde_json::from_str::<T>(r#"{"t": 1, "r": 11}"#).unwrap_err().to_string();
        assert!(e.contains("must be 1 to 10"), "{e}");
        let e = serde_json::from_str::<T>(r#"{"t": 1, "r": 1, "s": " "}"#).unwrap_err().to_string();
        assert!(e.contains("must not be empty"), "{e}");
    }
}
