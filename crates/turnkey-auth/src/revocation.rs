//! The set of revoked usernames. The issuer adds to it, the relay consults it; each entry is kept
//! until the credential would have expired anyway, so the set stays bounded by live credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::UnixTime;

/// A shared, thread-safe set of revoked usernames with their natural expiry. Cloning shares it.
///
/// [`RevocationSet::generation`] changes on every revocation, so a relay shard can notice new
/// revocations with one atomic load and only then walk its allocations.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: AtomicU64,
    entries: RwLock<HashMap<String, UnixTime>>,
    /// Deleted TURN keys: every username whose userid is `<key>` or `<key>:...`, until then.
    keys: RwLock<HashMap<String, UnixTime>>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes `username` until `expiry` (after which it could not authenticate anyway).
    /// Returns `true` if it was not revoked before.
    pub fn revoke(&self, username: &str, expiry: UnixTime) -> bool {
        let mut map = self.inner.entries.write().unwrap_or_else(|p| p.into_inner());
        let new = map.insert(username.to_owned(), expiry).is_none();
        self.inner.generation.fetch_add(1, Ordering::Release);
        new
    }

    /// Revokes every username issued under TURN key `key_id` (userid `<key_id>` or
    /// `<key_id>:<label>`) until `until`. Returns `true` if it was not revoked before.
    pub fn revoke_key(&self, key_id: &str, until: UnixTime) -> bool {
        let mut map = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        let new = map.insert(key_id.to_owned(), until).is_none();
        self.inner.generation.fetch_add(1, Ordering::Release);
        new
    }

    /// Whether `username` is revoked (itself, or the key that issued it).
    pub fn is_revoked(&self, username: &str) -> bool {
        if self.inner.entries.read().unwrap_or_else(|p| p.into_inner()).contains_key(username) {
            return true;
        }
        let keys = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            return false;
        }
        let key = username.split_once(':').and_then(|(_, userid)| userid.split(':').next());
        key.is_some_and(|k| keys.contains_key(k))
    }

    /// A counter that changes whenever an entry is added.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Drops entries whose credential has expired by `now`; returns how many were dropped.
    pub fn purge_expired(&self, now: UnixTime) -> usize {
        let mut map = self.inner.entries.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|_, exp| *exp > now);
        let mut keys = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        let before_keys = keys.len();
        keys.retain(|_, until| *until > now);
        before - map.len() + before_keys - keys.len()
    }

    /// A copy of every entry (for persisting).
    pub fn snapshot(&self) -> Vec<(String, UnixTime)> {
        let map = self.inner.entries.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// How many usernames are revoked.
    pub fn len(&self) -> usize {
        self.inner.entries.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_check_purge() {
        let set = RevocationSet::new();
        let g0 = set.generation();
        assert!(set.revoke("100:alice", UnixTime(100)));
        assert!(!set.revoke("100:alice", UnixTime(100)));
        assert!(set.generation() > g0);
        let shared = set.clone();
        assert!(shared.is_revoked("100:alice"));
        assert!(!shared.is_revoked("100:bob"));
        assert_eq!(set.purge_expired(UnixTime(99)), 0);
        assert_eq!(set.purge_expired(UnixTime(100)), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn a_revoked_key_refuses_its_usernames_until_then() {
        let set = RevocationSet::new();
        let g = set.generation();
        assert!(set.revoke_key("k1", UnixTime(100)));
        assert!(set.generation() != g);
        assert!(set.is_revoked("99:k1:alice") && set.is_revoked("99:k1"));
        assert!(!set.is_revoked("99:k10:alice") && !set.is_revoked("k1") && !set.is_revoked("99:other"));
        assert_eq!(set.purge_expired(UnixTime(100)), 1);
        assert!(!set.is_revoked("99:k1:alice"));
    }
}
