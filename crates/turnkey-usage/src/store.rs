//! [`UsageStore`]: the sans-IO usage ledger. It is handed relayed-byte deltas per userid and the
//! time, and keeps per-key and per-`customIdentifier` totals for the current monthly period. It
//! never reads the clock and never touches a file; [`crate::Usage`] wraps it for threads and
//! persistence.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::calendar::{next_period_start, period_start};
use crate::UsageError;

/// The key usage of credentials that carry no TURN key id (e.g. `turnkey creds --user alice`).
pub const UNKEYED: &str = "unkeyed";
/// Labels kept per key; traffic of further labels is added to [`OTHER_LABEL`].
pub const MAX_LABELS_PER_KEY: usize = 10_000;
/// Where labels past [`MAX_LABELS_PER_KEY`] are counted (`~` never appears in a real label).
pub const OTHER_LABEL: &str = "~other";
/// The version of `usage.json`.
pub const FILE_VERSION: u32 = 1;

/// Relayed payload bytes, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// From clients through the relay to peers.
    pub client_to_peer: u64,
    /// From peers through the relay to clients.
    pub peer_to_client: u64,
}

impl Bytes {
    /// Both directions together (what a monthly cap counts).
    pub fn total(&self) -> u64 {
        self.client_to_peer.saturating_add(self.peer_to_client)
    }

    fn add(&mut self, d: Bytes) {
        self.client_to_peer = self.client_to_peer.saturating_add(d.client_to_peer);
        self.peer_to_client = self.peer_to_client.saturating_add(d.peer_to_client);
    }
}

/// One key's usage in the current period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    /// The key's total.
    #[serde(flatten)]
    pub bytes: Bytes,
    /// Per `customIdentifier` (anonymous per-credential labels are not kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, Bytes>,
}

/// `<data_dir>/usage.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageFile {
    /// [`FILE_VERSION`].
    pub version: u32,
    /// Start of the period the totals belong to (Unix seconds).
    pub period_start: u64,
    /// Start of the next period (informative).
    #[serde(default)]
    pub period_end: u64,
    /// Usage by key id.
    pub keys: BTreeMap<String, KeyUsage>,
}

/// Splits a TURN REST userid into the key it bills and the label it reports. Usernames the issuer
/// mints carry `<keyid>:<label>` with a 32-hex key id; a label starting with `~` is an anonymous
/// per-credential id and is not a reporting dimension. Anything else is [`UNKEYED`].
pub fn split_userid(userid: &str) -> (&str, Option<&str>) {
    match userid.split_once(':') {
        Some((key, label)) if is_key_id(key) => {
            let label = (!label.is_empty() && !label.starts_with('~')).then_some(label);
            (key, label)
        }
        _ => (UNKEYED, None),
    }
}

fn is_key_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What one key stands at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyStatus {
    /// Bytes relayed in the current period, both directions.
    pub used: u64,
    /// The key's monthly cap, if any.
    pub cap: Option<u64>,
    /// Start of the current period (Unix seconds).
    pub period_start: u64,
    /// Start of the next period: when the totals reset.
    pub reset_at: u64,
}

/// The usage ledger (see the module doc).
#[derive(Debug, Clone)]
pub struct UsageStore {
    reset_day: u32,
    period_start: u64,
    keys: HashMap<String, KeyUsage>,
    caps: HashMap<String, u64>,
    dirty: bool,
}

impl UsageStore {
    /// An empty ledger for the period containing `now`; `reset_day` is clamped to 1-28.
    pub fn new(reset_day: u32, now: u64) -> Self {
        let reset_day = reset_day.clamp(1, 28);
        Self {
            reset_day,
            period_start: period_start(now, reset_day),
            keys: HashMap::new(),
            caps: HashMap::new(),
            dirty: false,
        }
    }

    /// A ledger restored from `usage.json` bytes. Totals of a period that has ended since (or
    /// that does not match `reset_day`) are dropped: the ledger starts the current period at 0.
    pub fn from_json(bytes: &[u8], reset_day: u32, now: u64) -> Result<Self, UsageError> {
        let file: UsageFile = serde_json::from_slice(bytes).map_err(|e| UsageError::Format(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(UsageError::Format(format!("unsupported version {}", file.version)));
        }
        let mut s = Self::new(reset_day, now);
        if file.period_start == s.period_start {
            s.keys = file.keys.into_iter().collect();
        } else {
            s.dirty = true;
        }
        Ok(s)
    }

    /// The ledger as `usage.json` bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let file = UsageFile {
            version: FILE_VERSION,
            period_start: self.period_start,
            period_end: next_period_start(self.period_start, self.reset_day),
            keys: self.keys.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Adds `delta` relayed for `userid`. Returns the key billed and whether this delta took the
    /// key from below its cap to at or above it.
    pub fn record<'a>(&mut self, userid: &'a str, delta: Bytes) -> (&'a str, bool) {
        let (key, label) = split_userid(userid);
        if delta == Bytes::default() {
            return (key, false);
        }
        self.dirty = true;
        let cap = self.caps.get(key).copied();
        let entry = self.keys.entry(key.to_owned()).or_default();
        let before = entry.bytes.total();
        entry.bytes.add(delta);
        if let Some(label) = label {
            let slot = if entry.labels.contains_key(label) || entry.labels.len() < MAX_LABELS_PER_KEY {
                label
            } else {
                OTHER_LABEL
            };
            entry.labels.entry(slot.to_owned()).or_default().add(delta);
        }
        let crossed = cap.is_some_and(|c| before < c && entry.bytes.total() >= c);
        (key, crossed)
    }

    /// Starts a new period when `now` is past the current one (totals back to 0). Returns whether
    /// it did.
    pub fn roll(&mut self, now: u64) -> bool {
        let start = period_start(now, self.reset_day);
        if start <= self.period_start {
            return false;
        }
        self.period_start = start;
        self.keys.clear();
        self.dirty = true;
        true
    }

    /// Replaces the monthly caps (key id -> bytes). Returns whether they changed.
    pub fn set_caps(&mut self, caps: HashMap<String, u64>) -> bool {
        let changed = caps != self.caps;
        self.caps = caps;
        changed
    }

    /// The caps in force.
    pub fn caps(&self) -> &HashMap<String, u64> {
        &self.caps
    }

    /// Bytes `key` relayed this period.
    pub fn used(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |u| u.bytes.total())
    }

    /// Whether `key` has a cap and reached it.
    pub fn exhausted(&self, key: &str) -> bool {
        self.caps.get(key).is_some_and(|&c| self.used(key) >= c)
    }

    /// One key's standing.
    pub fn status(&self, key: &str) -> KeyStatus {
        KeyStatus {
            used: self.used(key),
            cap: self.caps.get(key).copied(),
            period_start: self.period_start,
            reset_at: next_period_start(self.period_start, self.reset_day),
        }
    }

    /// A key's usage (with labels).
    pub fn key(&self, key: &str) -> Option<&KeyUsage> {
        self.keys.get(key)
    }

    /// Every key's usage.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &KeyUsage)> {
        self.keys.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Start of the current period.
    pub fn period_start(&self) -> u64 {
        self.period_start
    }

    /// When the current period ends.
    pub fn reset_at(&self) -> u64 {
        next_period_start(self.period_start, self.reset_day)
    }

    /// Whether something changed since the last call (then the caller persists).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the ledger as needing persistence (after a failed write).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";
    // 2025-01-15T12:00:00Z
    const NOW: u64 = 1_736_942_400;

    fn b(c2p: u64, p2c: u64) -> Bytes {
        Bytes { client_to_peer: c2p, peer_to_client: p2c }
    }

    #[test]
    fn userids_split_into_key_and_label() {
        assert_eq!(split_userid(&format!("{K}:alice")), (K, Some("alice")));
        assert_eq!(split_userid(&format!("{K}:~0011223344556677")), (K, None));
        assert_eq!(split_userid("alice"), (UNKEYED, None));
        assert_eq!(split_userid("nothex:alice"), (UNKEYED, None));
    }

    #[test]
    fn deltas_add_up_per_key_and_label() {
        let mut s = UsageStore::new(1, NOW);
        s.record(&format!("{K}:alice"), b(100, 50));
        s.record(&format!("{K}:alice"), b(1, 2));
        s.record(&format!("{K}:~00"), b(10, 10));
        s.record("bob", b(7, 0));
        assert_eq!(s.used(K), 173);
        assert_eq!(s.key(K).unwrap().labels["alice"], b(101, 52));
        assert_eq!(s.key(K).unwrap().labels.len(), 1, "anonymous labels are not kept");
        assert_eq!(s.used(UNKEYED), 7);
        assert!(s.take_dirty());
        assert!(!s.take_dirty());
        s.record(K, Bytes::default());
        assert!(!s.take_dirty(), "an empty delta changes nothing");
    }

    #[test]
    fn caps_are_crossed_once() {
        let mut s = UsageStore::new(1, NOW);
        s.set_caps(HashMap::from([(K.to_owned(), 1000)]));
        let u = format!("{K}:x");
        assert_eq!(s.record(&u, b(500, 400)), (K, false));
        assert!(!s.exhausted(K));
        assert_eq!(s.record(&u, b(100, 0)), (K, true));
        assert!(s.exhausted(K));
        assert_eq!(s.record(&u, b(100, 0)), (K, false));
        assert!(!s.exhausted(UNKEYED));
    }

    #[test]
    fn labels_are_bounded() {
        let mut s = UsageStore::new(1, NOW);
        for i in 0..MAX_LABELS_PER_KEY + 5 {
            s.record(&format!("{K}:u{i}"), b(1, 0));
        }
        let k = s.key(K).unwrap();
        assert_eq!(k.labels.len(), MAX_LABELS_PER_KEY + 1);
        assert_eq!(k.labels[OTHER_LABEL], b(5, 0));
    }

    #[test]
    fn persistence_round_trip() {
        let mut s = UsageStore::new(1, NOW);
        s.record(&format!("{K}:alice"), b(100, 50));
        s.record("bob", b(7, 0));
        let json = s.to_json();
        let back = UsageStore::from_json(&json, 1, NOW + 3600).unwrap();
        assert_eq!(back.used(K), 150);
        assert_eq!(back.key(K), s.key(K));
        assert_eq!(back.used(UNKEYED), 7);
        assert!(UsageStore::from_json(b"{", 1, NOW).is_err());
        assert!(UsageStore::from_json(br#"{"version":9,"period_start":0,"keys":{}}"#, 1, NOW).is_err());
    }

    #[test]
    fn a_stale_file_starts_a_new_period() {
        let mut s = UsageStore::new(1, NOW);
        s.record(&format!("{K}:alice"), b(100, 50));
        let json = s.to_json();
        // 2025-02-03: the January totals are gone.
        let back = UsageStore::from_json(&json, 1, NOW + 19 * 86_400).unwrap();
        assert_eq!(back.used(K), 0);
        assert_eq!(crate::calendar::iso8601(back.period_start()), "2025-02-01T00:00:00.000Z");
    }

    #[test]
    fn monthly_reset_on_the_configured_day() {
        let mut s = UsageStore::new(20, NOW);
        s.set_caps(HashMap::from([(K.to_owned(), 10)]));
        s.record(&format!("{K}:a"), b(10, 0));
        assert!(s.exhausted(K));
        assert_eq!(crate::calendar::iso8601(s.reset_at()), "2025-01-20T00:00:00.000Z");
        // 2025-01-19T23:59:59Z: same period.
        assert!(!s.roll(1_737_331_199));
        assert_eq!(s.used(K), 10);
        // 2025-01-20T00:00:00Z: new period.
        assert!(s.roll(1_737_331_200));
        assert_eq!(s.used(K), 0);
        assert!(!s.exhausted(K));
        assert_eq!(crate::calendar::iso8601(s.reset_at()), "2025-02-20T00:00:00.000Z");
        // Time going backwards never resets.
        assert!(!s.roll(NOW));
    }
}
