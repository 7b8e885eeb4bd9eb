//! [`KeyId`]: the one rule for TURN key ids.
//!
//! Two rules used to disagree: the issuer's key files took exactly 32 lower-case hex characters
//! (what `turnkey keys create` generates), the fleet's keys in Redis took 1-64 characters of
//! `[A-Za-z0-9._-]`. The rule here is the fleet's, which every issuer-generated id satisfies, so
//! every key already on disk or in Redis stays valid. Ids never contain `:` (a userid is
//! `<key id>:<label>`) or `/` (an id names a file `<id>.json`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypeError;

/// The longest key id.
pub const MAX_LEN: usize = 64;

/// A TURN key id: 1-64 characters of `A-Z a-z 0-9 . _ -`; checked when parsed or deserialized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Whether `s` is a key id.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    }

    /// `s` as a key id.
    pub fn new(s: impl Into<String>) -> Result<Self, TypeError> {
        let s = s.into();
        if Self::is_valid(&s) {
            Ok(Self(s))
        } else {
            Err(TypeError::KeyId(s))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for KeyId {
    type Err = TypeError;

    fn from_str(s: &str) -> Result<Self, TypeError> {
        Self::new(s)
    }
}

impl TryFrom<String> for KeyId {
    type Error = TypeError;

    fn try_from(s: String) -> Result<Self, TypeError> {
        Self::new(s)
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_former_rules_ids_stay_valid_and_nothing_else_is() {
        // What the issuer generates (32 lower-case hex) and what fleet keys were allowed to be.
        for ok in ["0123456789abcdef0123456789abcdef", "team-a", "Team_B.v2", &"x".repeat(64)] {
            assert_eq!(ok.parse::<KeyId>().unwrap().as_str(), ok);
        }
        for bad in ["", &"x".repeat(65), "a:b", "../keys", "a/b", "a b", "ключ"] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_enforces_the_rule() {
        let k: KeyId = serde_json::from_str("\"team-a\"").unwrap();
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"team-a\"");
        assert!(serde_json::from_str::<KeyId>("\"a:b\"").is_err());
    }
}
