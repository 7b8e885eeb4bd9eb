//! Usage deltas per key, from every relay, added up exactly once in Redis.
//!
//! A relay buffers its deltas ([`Fleet::add_usage`]; merged per period, key and label, bounded:
//! deltas for new entries past the bound are dropped and counted) and flushes them as numbered
//! batches ([`Fleet::flush_usage`]). One script applies a batch only if its sequence number is
//! above the last one applied from this relay process (`<p>usage-seq:<node>:<incarnation>`), in
//! the same atomic step as the counters: a batch retried after a lost answer, a relay that
//! retries after Redis restarted from its append-only file, never counts twice; a batch is kept
//! until Redis acknowledged it, so nothing is lost while Redis is down. What a SIGKILLed relay
//! had not flushed yet is lost (at most one flush interval plus its engine's sweep).
//!
//! An acknowledgement is not yet durability: a primary that acknowledged a batch and died before
//! a replica received it leaves a promoted replica without it (Sentinel failover). So an
//! acknowledged batch stays with the relay, *unconfirmed*, until a replica is known to hold it:
//! right after applying it the relay reads the primary's replication id and offset (`INFO
//! replication`), and a later flush confirms it once a replica of the same replication history
//! reports an offset at least that far (replicas report every second, so a batch is confirmed
//! one or two flushes later).
//! When the connection comes back (a reconnect, a new primary) every unconfirmed batch is sent
//! again, oldest first, before anything new: the sequence check skips those the new primary
//! has, and applies the ones it lost. At most [`MAX_UNCONFIRMED`] batches are kept (a primary
//! without replicas never confirms; the oldest go first).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use redis::Script;

pub use turnkey_usage::Bytes as UsageBytes;

use crate::{Fleet, FleetError};

/// Usage counters live this long after their last change (periods are monthly; two periods of
/// history stay readable).
const USAGE_TTL_SECS: u64 = 100 * 24 * 3600;
/// A relay process's last applied sequence number is remembered this long after its last flush.
const SEQ_TTL_SECS: u64 = 7 * 24 * 3600;
/// Acknowledged batches kept until a replica holds them (about a minute of flushes).
pub const MAX_UNCONFIRMED: usize = 64;

/// What a usage delta is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageEntry {
    /// Start of the monthly period (Unix seconds), as `turnkey-usage` computes it.
    pub period_start: u64,
    /// The TURN key id.
    pub key: String,
    /// The `customIdentifier` label, if any.
    pub label: Option<String>,
}

/// A numbered batch of deltas from one relay process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageBatch {
    /// Sequence number, from 1, per relay process.
    pub seq: u64,
    /// The deltas.
    pub entries: Vec<(UsageEntry, UsageBytes)>,
}

/// One key's totals in one period, from all relays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// The key's total.
    pub bytes: UsageBytes,
    /// Per `customIdentifier` label.
    pub labels: BTreeMap<String, UsageBytes>,
}

/// An acknowledged batch no replica is known to hold yet.
#[derive(Debug)]
struct Unconfirmed {
    /// The reconnect epoch it was (last) applied in.
    epoch: u64,
    /// Where the primary's replication stream stood right after it: (replication id, offset).
    at: Option<(String, u64)>,
    batch: UsageBatch,
}

/// The relay-side buffer: open deltas, and the batch in flight (kept until acknowledged).
#[derive(Debug)]
pub(crate) struct UsageBuffer {
    open: HashMap<UsageEntry, UsageBytes>,
    max_entries: usize,
    pending: Option<UsageBatch>,
    next_seq: u64,
    /// Acknowledged, not yet known to be on a replica.
    unconfirmed: VecDeque<Unconfirmed>,
}

fn add_bytes(a: &mut UsageBytes, d: UsageBytes) {
    a.client_to_peer = a.client_to_peer.saturating_add(d.client_to_peer);
    a.peer_to_client = a.peer_to_client.saturating_add(d.peer_to_client);
}

impl UsageBuffer {
    pub(crate) fn new(max_entries: usize) -> Self {
        Self { open: HashMap::new(), max_entries, pending: None, next_seq: 1, unconfirmed: VecDeque::new() }
    }

    /// Merges a delta; false when it was dropped because the buffer is full.
    pub(crate) fn add(&mut self, entry: UsageEntry, delta: UsageBytes) -> bool {
        if let Some(b) = self.open.get_mut(&entry) {
            add_bytes(b, delta);
            return true;
        }
        if self.open.len() >= self.max_entries {
            return false;
        }
        self.open.insert(entry, delta);
        true
    }

    /// The batch to send: the one in flight if any (same sequence number), else the open
    /// deltas under the next number.
    pub(crate) fn next_batch(&mut self) -> Option<UsageBatch> {
        if self.pending.is_none() && !self.open.is_empty() {
            let mut entries: Vec<_> = self.open.drain().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            self.pending = Some(UsageBatch { seq: self.next_seq, entries });
            self.next_seq += 1;
        }
        self.pending.clone()
    }

    /// Redis applied (or had already applied) batch `seq` in reconnect epoch `epoch`, its
    /// replication stream then at `at`: the batch waits, unconfirmed, until a replica holds it.
    pub(crate) fn acked(&mut self, seq: u64, epoch: u64, at: Option<(String, u64)>) {
        if self.pending.as_ref().is_some_and(|p| p.seq == seq) {
            if let Some(batch) = self.pending.take() {
                self.unconfirmed.push_back(Unconfirmed { epoch, at, batch });
                while self.unconfirmed.len() > MAX_UNCONFIRMED {
                    self.unconfirmed.pop_front();
                }
            }
        }
    }

    /// A replica of replication history `replid` acknowledged up to `offset`: the batches
    /// applied before that are safe.
    pub(crate) fn confirmed(&mut self, replid: &str, offset: u64) {
        self.unconfirmed.retain(|u| !matches!(&u.at, Some((id, at)) if id == replid && *at <= offset));
    }

    /// Unconfirmed batches applied before reconnect epoch `epoch` (the primary may have lost
    /// them), oldest first.
    pub(crate) fn to_resend(&self, epoch: u64) -> Vec<UsageBatch> {
        self.unconfirmed.iter().filter(|u| u.epoch != epoch).map(|u| u.batch.clone()).collect()
    }

    /// Batch `seq` was sent again in epoch `epoch`, the stream then at `at`.
    pub(crate) fn resent(&mut self, seq: u64, epoch: u64, at: Option<(String, u64)>) {
        for u in &mut self.unconfirmed {
            if u.batch.seq == seq {
                u.epoch = epoch;
                u.at.clone_from(&at);
            }
        }
    }
    pub(crate) fn pending(&self) -> Option<&UsageBatch> {
        self.pending.as_ref()
    }

    /// Entries waiting (open plus in flight).
    pub(crate) fn len(&self) -> usize {
        self.open.len() + self.pending.as_ref().map_or(0, |p| p.entries.len())
    }
}

const APPLY_LUA: &str = r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= last then return 0 end
for i = 4, #ARGV, 3 do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('EXPIRE', ARGV[i], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
";

static APPLY: OnceLock<Script> = OnceLock::new();

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Fleet {
    /// Buffers relayed bytes of `key` (and its `label`) in the period starting at
    /// `period_start`. `Ok(false)`: dropped because the buffer is full (counted in
    /// `turnkey_fleet_usage_dropped_total`). Never waits for Redis.
    pub fn add_usage(
        &self,
        period_start: u64,
        key: &str,
        label: Option<&str>,
        delta: UsageBytes,
    ) -> Result<bool, FleetError> {
        if !valid_key(key) {
            return Err(FleetError::InvalidName { what: "usage key", value: key.to_owned() });
        }
        if delta.total() == 0 {
            return Ok(true);
        }
        let entry = UsageEntry { period_start, key: key.to_owned(), label: label.map(str::to_owned) };
        let m = &self.inner.metrics;
        let mut buf = self.inner.usage.lock().unwrap_or_else(|p| p.into_inner());
        let kept = buf.add(entry, delta);
        if !kept {
            m.usage_dropped.inc();
            m.usage_dropped_bytes.inc_by(delta.total());
            tracing::warn!(key, bytes = delta.total(), "fleet: usage buffer full; delta dropped");
        }
        m.usage_buffered.set(i64::try_from(buf.len()).unwrap_or(i64::MAX));
        Ok(kept)
    }

    /// Sends buffered usage to Redis: first, after a reconnect, the acknowledged batches no
    /// replica was known to hold (see the module doc); then the batch in flight if the last
    /// flush failed, else the open deltas. Returns how many entries were applied (0: nothing to
    /// send, or Redis had already applied this batch).
    pub async fn flush_usage(&self) -> Result<usize, FleetError> {
        let _one = self.inner.usage_flush.lock().await;
        let epoch = *self.inner.epoch.borrow();
        let mut applied_entries = 0;
        let resend = self.usage_buf().to_resend(epoch);
        for b in resend {
            if self.apply_usage_batch(&b).await? {
                applied_entries += b.entries.len();
                tracing::warn!(
                    seq = b.seq,
                    "fleet: a usage batch the old primary had not replicated was applied again"
                );
            }
            let at = self.replication().await.map(|r| (r.replid, r.offset));
            self.usage_buf().resent(b.seq, epoch, at);
        }
        let batch = self.usage_buf().next_batch();
        if let Some(batch) = batch {
            let applied = self.apply_usage_batch(&batch).await?;
            let at = self.replication().await.map(|r| (r.replid, r.offset));
            let mut buf = self.usage_buf();
            buf.acked(batch.seq, epoch, at);
            self.inner.metrics.usage_buffered.set(i64::try_from(buf.len()).unwrap_or(i64::MAX));
            if applied {
                applied_entries += batch.entries.len();
            }
        }
        if !self.usage_buf().unconfirmed.is_empty() {
            if let Some(r) = self.replication().await {
                if let Some(acked) = r.replica_offsets.iter().max() {
                    self.usage_buf().confirmed(&r.replid, *acked);
                }
            }
        }
        Ok(applied_entries)
    }

    fn usage_buf(&self) -> std::sync::MutexGuard<'_, UsageBuffer> {
        self.inner.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The primary's replication state (`INFO replication`); `None` when it cannot be read.
    async fn replication(&self) -> Option<Replication> {
        let info: String =
            self.inner
                .call("read replication", |mut c| async move {
                    redis::cmd("INFO").arg("replication").query_async(&mut c).await
                })
                .await
                .ok()?;
        Replication::parse(&info)
    }

    /// Sequence numbers of the acknowledged batches no replica is known to hold yet.
    pub fn unconfirmed_usage_batches(&self) -> Vec<u64> {
        self.usage_buf().unconfirmed.iter().map(|u| u.batch.seq).collect()
    }

    /// The batch in flight (sent, not yet acknowledged), if any.
    pub fn pending_usage_batch(&self) -> Option<UsageBatch> {
        self.inner.usage.lock().unwrap_or_else(|p| p.into_inner()).pending().cloned()
    }

    /// Applies one batch of this relay process in Redis, at most once: `Ok(false)` when a
    /// batch with this or a later sequence number was applied before.
    pub async fn apply_usage_batch(&self, batch: &UsageBatch) -> Result<bool, FleetError> {
        let i = &self.inner;
        let seq_key = i.names.usage_seq(&i.cfg.node_id, &i.incarnation);
        let mut args: Vec<String> = Vec::with_capacity(3 + batch.entries.len() * 12);
        args.push(batch.seq.to_string());
        args.push(USAGE_TTL_SECS.to_string());
        args.push(SEQ_TTL_SECS.to_string());
        for (e, b) in &batch.entries {
            let hash = i.names.usage(e.period_start, &e.key);
            for (dir, n) in [("c2p", b.client_to_peer), ("p2c", b.peer_to_client)] {
                let n = n.min(i64::MAX as u64);
                if n == 0 {
                    continue;
                }
                // The key's total counts labelled traffic too; the label field is its breakdown.
                args.extend([hash.clone(), dir.to_owned(), n.to_string()]);
                if let Some(l) = &e.label {
                    args.extend([hash.clone(), format!("{dir}:{l}"), n.to_string()]);
                }
            }
        }
        let r: i64 = i
            .call("apply usage", |mut c| async move {
                let mut inv = APPLY.get_or_init(|| Script::new(APPLY_LUA)).prepare_invoke();
                inv.key(seq_key);
                for a in args {
                    inv.arg(a);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        if r == 1 {
            i.metrics.usage_batches.inc();
        }
        Ok(r == 1)
    }

    /// One key's totals in one period, from all relays.
    pub async fn usage(&self, period_start: u64, key: &str) -> Result<UsageTotals, FleetError> {
        if !valid_key(key) {
            return Err(FleetError::InvalidName { what: "usage key", value: key.to_owned() });
        }
        let hash = self.inner.names.usage(period_start, key);
        let all: Vec<(String, u64)> = self
            .inner
            .call("read usage", |mut c| async move { redis::cmd("HGETALL").arg(hash).query_async(&mut c).await })
            .await?;
        Ok(totals(all))
    }

    /// Flushes usage every `interval` in the background until the fleet is dropped (outages
    /// are logged once by the health state; the batch waits for the next round).
    pub fn spawn_usage_flusher(&self, interval: Duration) {
        let weak = std::sync::Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let fleet = Fleet { inner };
                if let Err(e) = fleet.flush_usage().await {
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "fleet: usage flush failed");
                    }
                }
            }
        });
        self.inner.spawned(task);
    }
}

/// What `INFO replication` of a primary says about where its replicas are.
#[derive(Debug, PartialEq, Eq)]
struct Replication {
    replid: String,
    offset: u64,
    /// The offset each connected replica acknowledged last.
    replica_offsets: Vec<u64>,
}

impl Replication {
    /// `None` unless the server is a primary (`role:master`) with a replication id and offset.
    fn parse(info: &str) -> Option<Self> {
        let (mut master, mut replid, mut offset, mut replica_offsets) = (false, None, None, Vec::new());
        for line in info.lines().map(str::trim) {
            let Some((k, v)) = line.split_once(':') else { continue };
            match k {
                "role" => master = v == "master",
                "master_replid" => replid = Some(v.to_owned()),
                "master_repl_offset" => offset = v.parse().ok(),
                k if k.starts_with("slave") && k[5..].bytes().all(|b| b.is_ascii_digit()) => {
                    let online = v.split(',').any(|f| f == "state=online");
                    let off = v.split(',').find_map(|f| f.strip_prefix("offset=")).and_then(|o| o.parse().ok());
                    if let (true, Some(o)) = (online, off) {
                        replica_offsets.push(o);
                    }
                }
                _ => {}
            }
        }
        master.then_some(())?;
        Some(Self { replid: replid?, offset: offset?, replica_offsets })
    }
}

fn totals(fields: Vec<(String, u64)>) -> UsageTotals {
    let mut t = UsageTotals::default();
    for (f, n) in fields {
        let (dir, label) = match f.split_once(':') {
            Some((d, l)) => (d, Some(l)),
            None => (f.as_str(), None),
        };
        let slot = match label {
            None => &mut t.bytes,
            Some(l) => t.labels.entry(l.to_owned()).or_default(),
        };
        match dir {
            "c2p" => slot.client_to_peer = slot.client_to_peer.saturating_add(n),
            "p2c" => slot.peer_to_client = slot.peer_to_client.saturating_add(n),
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: &str, label: Option<&str>) -> UsageEntry {
        UsageEntry { period_start: 100, key: key.into(), label: label.map(Into::into) }
    }

    fn b(c: u64, p: u64) -> UsageBytes {
        UsageBytes { client_to_peer: c, peer_to_client: p }
    }

    #[test]
    fn buffer_merges_bounds_and_keeps_the_batch_in_flight() {
        let mut buf = UsageBuffer::new(2);
        assert!(buf.add(e("k1", None), b(1, 2)));
        assert!(buf.add(e("k1", None), b(10, 20)));
        assert!(buf.add(e("k1", Some("x")), b(1, 1)));
        assert!(!buf.add(e("k2", None), b(5, 5)), "a third entry is past the bound");
        assert!(buf.add(e("k1", None), b(1, 0)), "existing entries still merge when full");
        let first = buf.next_batch().unwrap();
        assert_eq!(first.seq, 1);
        assert_eq!(first.entries, vec![(e("k1", None), b(12, 22)), (e("k1", Some("x")), b(1, 1))]);
        assert!(buf.add(e("k2", None), b(5, 5)));
        assert_eq!(buf.len(), 3);
        // Not acknowledged: the same batch again, new deltas wait.
        assert_eq!(buf.next_batch().unwrap(), first);
        buf.acked(1, 7, Some(("r1".into(), 100)));
        let second = buf.next_batch().unwrap();
        assert_eq!(second.seq, 2);
        assert_eq!(second.entries, vec![(e("k2", None), b(5, 5))]);
        buf.acked(2, 7, Some(("r1".into(), 200)));
        assert!(buf.next_batch().is_none());
        assert_eq!(buf.len(), 0);
        // Acknowledged batches wait for a replica: nothing to resend in the same epoch, both
        // (oldest first) after a reconnect, until confirmed.
        assert!(buf.to_resend(7).is_empty());
        assert_eq!(buf.to_resend(8), vec![first.clone(), second.clone()]);
        buf.resent(1, 8, Some(("r2".into(), 50)));
        assert_eq!(buf.to_resend(8), vec![second.clone()]);
        // A replica of another history (the old primary's) confirms nothing applied on r2.
        buf.confirmed("r1", 1000);
        assert_eq!(buf.to_resend(9), vec![first.clone()]);
        buf.confirmed("r2", 49);
        assert_eq!(buf.to_resend(9), vec![first]);
        buf.confirmed("r2", 50);
        assert!(buf.to_resend(9).is_empty());
    }

    #[test]
    fn unconfirmed_batches_are_bounded_oldest_first() {
        let mut buf = UsageBuffer::new(10);
        for i in 0..(MAX_UNCONFIRMED as u64 + 5) {
            buf.add(e("k", None), b(1, 0));
            let batch = buf.next_batch().unwrap();
            buf.acked(batch.seq, 1, None);
            assert_eq!(batch.seq, i + 1);
        }
        let kept = buf.to_resend(2);
        assert_eq!(kept.len(), MAX_UNCONFIRMED);
        assert_eq!(kept[0].seq, 6);
    }

    #[test]
    fn replication_info_is_read_from_a_primary_only() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=420,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n\
            master_failover_state:no-failover\r\nmaster_replid:abc\r\nmaster_replid2:000\r\n\
            master_repl_offset:512\r\n";
        let r = Replication::parse(info).unwrap();
        assert_eq!(r, Replication { replid: "abc".into(), offset: 512, replica_offsets: vec![420] });
        assert!(Replication::parse("role:slave\r\nmaster_replid:abc\r\nmaster_repl_offset:5\r\n").is_none());
    }

    #[test]
    fn totals_split_labels_and_directions() {
        let t = totals(vec![
            ("c2p".into(), 5),
            ("p2c".into(), 7),
            ("c2p:room:1".into(), 2),
            ("p2c:room:1".into(), 3),
            ("junk".into(), 9),
        ]);
        assert_eq!(t.bytes, b(5, 7));
        assert_eq!(t.labels["room:1"], b(2, 3));
        assert_eq!(t.labels.len(), 1);
    }
}
