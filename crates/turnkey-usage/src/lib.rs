//! # turnkey-usage: measured bandwidth accounting
//!
//! The relay's shards report the payload bytes they relayed, per userid, at every engine sweep
//! (500 ms). This crate turns those deltas into per-key and per-`customIdentifier` totals for the
//! current monthly period ([`UsageStore`], sans-IO: time is passed in), exports them as
//! Prometheus metrics ([`UsageMetrics`]), answers whether a key reached its monthly cap, and
//! persists the ledger to `<data_dir>/usage.json` (atomic 0600 write through `turnkey-files`).
//!
//! It imports neither the relay nor the issuer: the binary wires [`Usage`] into the relay (as its
//! usage sink) and into the issuer (as the source of `bandwidth_exhausted` and
//! `/api/bandwidth-status`).

pub mod calendar;
mod config;
mod metrics;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use config::UsageConfig;
pub use metrics::UsageMetrics;
pub use store::{
    split_userid, Bytes, KeyStatus, KeyUsage, UsageFile, UsageStore, FILE_VERSION, MAX_LABELS_PER_KEY, OTHER_LABEL,
    UNKEYED,
};

/// The file name of the ledger in the data directory.
pub const USAGE_FILE: &str = "usage.json";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// `usage.json` is not a ledger this version reads.
    #[error("invalid usage file: {0}")]
    Format(String),
    /// Reading or writing the ledger failed.
    #[error("usage file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Loads `<data_dir>/usage.json` (an empty ledger when the file does not exist).
pub fn load(data_dir: &Path, reset_day: u32, now: u64) -> Result<UsageStore, UsageError> {
    let path = data_dir.join(USAGE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => UsageStore::from_json(&bytes, reset_day, now),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsageStore::new(reset_day, now)),
        Err(source) => Err(UsageError::Io { path, source }),
    }
}

/// The shared, thread-safe ledger: one per process, cloned into the relay and the issuer.
#[derive(Debug, Clone)]
pub struct Usage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Mutex<UsageStore>,
    metrics: UsageMetrics,
    enforce_on_relay: bool,
    /// Bumped whenever the set of exhausted keys may have changed.
    generation: AtomicU64,
}

impl Usage {
    /// Wraps `store`; `enforce_on_relay` makes [`Usage::relay_blocked`] report capped keys.
    pub fn new(store: UsageStore, metrics: UsageMetrics, enforce_on_relay: bool) -> Self {
        let u = Self {
            inner: Arc::new(Inner {
                store: Mutex::new(store),
                metrics,
                enforce_on_relay,
                generation: AtomicU64::new(1),
            }),
        };
        {
            let s = u.lock();
            u.inner.metrics.reset_at.set(s.reset_at() as i64);
            for (key, usage) in s.keys() {
                u.inner.metrics.period_bytes.with_label_values(&[key]).set(usage.bytes.total() as i64);
            }
        }
        u
    }

    fn lock(&self) -> MutexGuard<'_, UsageStore> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records deltas relayed per userid (the relay's sweep calls this).
    pub fn record<'a>(&self, batch: impl IntoIterator<Item = (&'a str, Bytes)>) {
        let m = &self.inner.metrics;
        let mut crossed = false;
        let mut s = self.lock();
        for (userid, delta) in batch {
            let (key, c) = s.record(userid, delta);
            crossed |= c;
            if delta.client_to_peer > 0 {
                m.relayed_bytes.with_label_values(&[key, "client_to_peer"]).inc_by(delta.client_to_peer);
            }
            if delta.peer_to_client > 0 {
                m.relayed_bytes.with_label_values(&[key, "peer_to_client"]).inc_by(delta.peer_to_client);
            }
            m.period_bytes.with_label_values(&[key]).set(s.used(key) as i64);
            if c {
                tracing::warn!(key, used = s.used(key), cap = ?s.caps().get(key), "monthly bandwidth cap reached");
            }
        }
        drop(s);
        if crossed {
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Starts a new period when `now` passed the reset date.
    pub fn roll(&self, now: u64) {
        let mut s = self.lock();
        if s.roll(now) {
            tracing::info!(period_start = %calendar::iso8601(s.period_start()), "usage period reset");
            self.inner.metrics.period_bytes.reset();
            self.inner.metrics.reset_at.set(s.reset_at() as i64);
            drop(s);
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Replaces the monthly caps (key id -> bytes), e.g. after rescanning the key files.
    pub fn set_caps(&self, caps: HashMap<String, u64>) {
        let mut s = self.lock();
        let m = &self.inner.metrics;
        for old in s.caps().keys() {
            if !caps.contains_key(old) {
                let _ = m.cap_bytes.remove_label_values(&[old]);
            }
        }
        for (k, v) in &caps {
            m.cap_bytes.with_label_values(&[k]).set(i64::try_from(*v).unwrap_or(i64::MAX));
            m.period_bytes.with_label_values(&[k]).set(s.used(k) as i64);
        }
        if s.set_caps(caps) {
            drop(s);
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Whether key `key_id` reached its cap this period.
    pub fn exhausted(&self, key_id: &str) -> bool {
        self.lock().exhausted(key_id)
    }

    /// Whether the relay must stop relaying for `userid` (its key is capped and relay
    /// enforcement is on).
    pub fn relay_blocked(&self, userid: &str) -> bool {
        self.inner.enforce_on_relay && self.exhausted(split_userid(userid).0)
    }

    /// Changes whenever [`Usage::relay_blocked`] may answer differently.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// One key's standing.
    pub fn status(&self, key_id: &str) -> KeyStatus {
        self.lock().status(key_id)
    }

    /// A copy of one key's usage (totals and labels).
    pub fn key_usage(&self, key_id: &str) -> KeyUsage {
        self.lock().key(key_id).cloned().unwrap_or_default()
    }

    /// Writes the ledger to `<data_dir>/usage.json` if it changed since the last write; `now`
    /// (Unix seconds) stamps `turnkey_usage_persisted_timestamp_seconds`.
    pub fn persist(&self, data_dir: &Path, now: u64) -> Result<bool, UsageError> {
        let bytes = {
            let mut s = self.lock();
            if !s.take_dirty() {
                return Ok(false);
            }
            s.to_json()
        };
        let path = data_dir.join(USAGE_FILE);
        let res = turnkey_files::write_private(&path, &bytes).map_err(|source| UsageError::Io { path, source });
        match res {
            Ok(()) => {
                self.inner.metrics.persisted_at.set(now as i64);
                Ok(true)
            }
            Err(e) => {
                self.lock().mark_dirty();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_736_942_400;

    #[test]
    fn persist_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let u = Usage::new(UsageStore::new(1, NOW), UsageMetrics::unregistered(), true);
        u.set_caps(HashMap::from([(K.to_owned(), 100)]));
        let gen = u.generation();
        let uid = format!("{K}:alice");
        u.record([(uid.as_str(), Bytes { client_to_peer: 60, peer_to_client: 50 })]);
        assert!(u.generation() > gen, "crossing a cap bumps the generation");
        assert!(u.relay_blocked(&uid));
        assert!(u.exhausted(K));
        assert!(u.persist(dir.path(), NOW).unwrap());
        assert!(!u.persist(dir.path(), NOW).unwrap(), "nothing new to write");
        let back = load(dir.path(), 1, NOW + 10).unwrap();
        assert_eq!(back.used(K), 110);
        assert_eq!(back.key(K).unwrap().labels["alice"].client_to_peer, 60);
        assert!(load(&dir.path().join("missing"), 1, NOW).unwrap().keys().next().is_none());
    }

    #[test]
    fn relay_enforcement_is_optional() {
        let u = Usage::new(UsageStore::new(1, NOW), UsageMetrics::unregistered(), false);
        u.set_caps(HashMap::from([(K.to_owned(), 1)]));
        let uid = format!("{K}:~01");
        u.record([(uid.as_str(), Bytes { client_to_peer: 5, peer_to_client: 0 })]);
        assert!(u.exhausted(K));
        assert!(!u.relay_blocked(&uid));
    }

    #[test]
    fn metrics_follow_usage() {
        let r = prometheus::Registry::new();
        let u = Usage::new(UsageStore::new(1, NOW), UsageMetrics::new(&r).unwrap(), false);
        u.set_caps(HashMap::from([(K.to_owned(), 1000)]));
        let uid = format!("{K}:bob");
        u.record([(uid.as_str(), Bytes { client_to_peer: 5, peer_to_client: 7 })]);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains(&format!("turnkey_usage_relayed_bytes_total{{direction=\"peer_to_client\",key=\"{K}\"}} 7")),
            "{text}"
        );
        assert!(text.contains(&format!("turnkey_usage_period_bytes{{key=\"{K}\"}} 12")), "{text}");
        assert!(text.contains(&format!("turnkey_usage_monthly_cap_bytes{{key=\"{K}\"}} 1000")), "{text}");
        // Next period.
        u.roll(NOW + 40 * 86_400);
        assert_eq!(u.status(K).used, 0);
    }
}
