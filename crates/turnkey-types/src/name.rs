//! [`NodeId`] and [`Region`]: the names of fleet members, one rule each.
//!
//! Both end up inside Redis key names (`<prefix>relay:<node id>`) and in URLs (`?region=`), so
//! both are 1-64 characters of `A-Z a-z 0-9 . _ -`: no name can forge another key or need
//! escaping. The rule is checked when a name is parsed or deserialized, nowhere else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypeError;

/// The longest node id or region.
pub const MAX_NAME_LEN: usize = 64;

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// `s` as a name (1-64 characters of `A-Z a-z 0-9 . _ -`).
            pub fn new(s: impl Into<String>) -> Result<Self, TypeError> {
                let s = s.into();
                if valid_name(&s) {
                    Ok(Self(s))
                } else {
                    Err(TypeError::Name { what: $what, value: s })
                }
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = TypeError;
            fn from_str(s: &str) -> Result<Self, TypeError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = TypeError;
            fn try_from(s: String) -> Result<Self, TypeError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
    };
}

name_type!(
    /// A fleet member's node id (`[fleet] node_id`, default the host name).
    NodeId,
    "node id"
);
name_type!(
    /// A region label (`[fleet] region`, `?region=`).
    Region,
    "region"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert_eq!("relay-1.eu_west".parse::<NodeId>().unwrap().as_str(), "relay-1.eu_west");
        assert!(NodeId::new("x".repeat(64)).is_ok());
        for bad in ["", "a:b", "a b", "ü", "x*", "a/b", &"a".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
            assert!(Region::new(bad).is_err(), "{bad:?}");
        }
        let e = Region::new("a b").unwrap_err().to_string();
        assert!(e.contains("region") && e.contains("1-64"), "{e}");
    }

    #[test]
    fn deserializing_enforces_the_rule() {
        let r: Region = serde_json::from_str("\"eu-west-1\"").unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"eu-west-1\"");
        assert!(serde_json::from_str::<NodeId>("\"a:b\"").is_err());
        assert!(serde_json::from_str::<Region>("\"\"").is_err());
    }
}
