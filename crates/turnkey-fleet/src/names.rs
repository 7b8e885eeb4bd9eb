//! Validated names that become part of Redis key names, and the key names themselves.
//!
//! Every key lives under one prefix (default `turnkey:`); `docs/fleet.md` lists them as a
//! contract. Names that end up inside a key (node ids, regions) are restricted to
//! `[A-Za-z0-9._-]{1,64}` so no name can forge another key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FleetError;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "turnkey:";

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` (1-64 characters of `A-Z a-z 0-9 . _ -`).
            pub fn new(s: impl Into<String>) -> Result<Self, FleetError> {
                let s = s.into();
                if valid_name(&s) {
                    Ok(Self(s))
                } else {
                    Err(FleetError::InvalidName { what: $what, value: s })
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

        impl TryFrom<String> for $name {
            type Error = FleetError;
            fn try_from(s: String) -> Result<Self, FleetError> {
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
    /// A relay's node id (`--node-id`, default the host name).
    NodeId,
    "node id"
);
name_type!(
    /// A region label (`--region`).
    Region,
    "region"
);

/// Builds the key and channel names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<p>relay:<node>`: the relay's last heartbeat (JSON), expiring after 3 missed beats.
    pub(crate) fn relay(&self, node: &NodeId) -> String {
        format!("{}relay:{}", self.prefix, node)
    }

    /// `<p>relays`: sorted set node id -> Redis time (ms) of its last beat.
    pub(crate) fn relays(&self) -> String {
        format!("{}relays", self.prefix)
    }

    /// `<p>alloc:<node>`: hash userid -> live allocations on that relay.
    pub(crate) fn alloc(&self, node: &NodeId) -> String {
        format!("{}alloc:{}", self.prefix, node)
    }

    /// `<p>session-index:<node>`: hash of that relay's live sessions (compact fields,
    /// `session_codec.rs`), expiring with its record.
    pub(crate) fn session_index(&self, node: &NodeId) -> String {
        format!("{}session-index:{}", self.prefix, node)
    }

    /// `<p>session-ends:<node>`: list of session ids operators asked that relay to end.
    pub(crate) fn session_ends(&self, node: &NodeId) -> String {
        format!("{}session-ends:{}", self.prefix, node)
    }

    /// `<p>quota`: hash userid -> live allocations on all relays.
    pub(crate) fn quota(&self) -> String {
        format!("{}quota", self.prefix)
    }

    /// `<p>quota-full`: hash userid -> the limit it reached (users at their limit anywhere).
    pub(crate) fn quota_full(&self) -> String {
        format!("{}quota-full", self.prefix)
    }

    /// `<p>quota-full:version`: incremented whenever `<p>quota-full` changes.
    pub(crate) fn quota_full_version(&self) -> String {
        format!("{}quota-full:version", self.prefix)
    }

    /// `<p>revoked`: sorted set username -> natural expiry (Unix seconds).
    pub(crate) fn revoked(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    /// `<p>revoked-keys`: sorted set key id -> until when its usernames stay refused.
    pub(crate) fn revoked_keys(&self) -> String {
        format!("{}revoked-keys", self.prefix)
    }

    /// `<p>revocations`: the pub/sub channel of revocation events.
    pub(crate) fn revocations_channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// `<p>relay-changes`: the pub/sub channel on which relays announce that they joined,
    /// started or stopped draining, or left (issuers re-read the listing at once).
    pub(crate) fn relay_changes_channel(&self) -> String {
        format!("{}relay-changes", self.prefix)
    }

    /// `<p>keys`: hash key id -> key record (JSON).
    pub(crate) fn keys(&self) -> String {
        format!("{}keys", self.prefix)
    }

    /// `<p>keys:version`: incremented on every key change.
    pub(crate) fn keys_version(&self) -> String {
        format!("{}keys:version", self.prefix)
    }

    /// `<p>usage:<period_start>:<key>`: hash of byte counters of one key in one period.
    pub(crate) fn usage(&self, period_start: u64, key: &str) -> String {
        format!("{}usage:{}:{}", self.prefix, period_start, key)
    }

    /// `<p>usage-seq:<node>:<incarnation>`: the last usage batch applied from one relay process.
    pub(crate) fn usage_seq(&self, node: &NodeId, incarnation: &str) -> String {
        format!("{}usage-seq:{}:{}", self.prefix, node, incarnation)
    }

    /// `<p>rl:<window_secs>:<client>`: the base of rate-limit window counters
    /// (`:<window index>` is appended by the script).
    pub(crate) fn rate(&self, window_secs: u64, client: &str) -> String {
        format!("{}rl:{}:{}", self.prefix, window_secs, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(NodeId::new("relay-1.eu_west").is_ok());
        for bad in ["", "a:b", "a b", "ü", "x*", &"a".repeat(65)] {
            assert!(NodeId::new(bad).is_err(), "{bad:?}");
        }
        assert!(Region::new("eu-west-1").is_ok());
        let n: Result<NodeId, _> = serde_json::from_str("\"a:b\"");
        assert!(n.is_err());
    }

    #[test]
    fn key_names_use_the_prefix() {
        let n = Names::new("tk:");
        let node = NodeId::new("r1").unwrap();
        assert_eq!(n.relay(&node), "tk:relay:r1");
        assert_eq!(n.alloc(&node), "tk:alloc:r1");
        assert_eq!(n.usage(1_700_000_000, "ab"), "tk:usage:1700000000:ab");
        assert_eq!(n.rate(300, "1.2.3.4"), "tk:rl:300:1.2.3.4");
        assert_eq!(n.revocations_channel(), "tk:revocations");
        assert_eq!(n.relay_changes_channel(), "tk:relay-changes");
    }
}
