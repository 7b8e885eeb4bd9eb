//! Validated names that become part of Redis key names, and the key names themselves.
//!
//! Every key lives under one prefix (default `turnkey:`); `docs/fleet.md` lists them as a
//! contract. Names that end up inside a key (node ids, regions: `turnkey_types`, one rule each)
//! are restricted to `[A-Za-z0-9._-]{1,64}` so no name can forge another key.

pub use turnkey_types::{NodeId, Region};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "turnkey:";

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
