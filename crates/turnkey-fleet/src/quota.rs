//! The per-userid allocation quota over all relays.
//!
//! `<p>quota` holds each userid's live allocations on all relays together; `<p>alloc:<node>`
//! holds the part one relay contributes. Reserve and release change both in one script, so the
//! total is always the sum of the parts. The parts make it crash safe: when a relay's heartbeat
//! expires, the next beat of any relay subtracts its part (`registry.rs`), and a relay that
//! finds its record gone (Redis restarted empty, or it was reaped while cut off) re-publishes
//! its part from its own count, [`QuotaMirror`], which is the truth about its allocations.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use redis::Script;

use crate::{Fleet, FleetError};

/// This relay's own allocation counts per userid, and whether Redis may disagree with them.
#[derive(Debug)]
pub(crate) struct QuotaMirror {
    counts: HashMap<String, u64>,
    /// Redis may not hold `counts` (a call failed, or this process has not published yet).
    dirty: bool,
    /// The reconnect epoch `counts` were last published in: after a reconnect (a failover's new
    /// primary may lack reserves the old one acknowledged) they are published again.
    synced_epoch: u64,
}

impl Default for QuotaMirror {
    fn default() -> Self {
        // A new process publishes its (empty) part at its first beat, replacing whatever a
        // previous process with the same node id left behind.
        Self { counts: HashMap::new(), dirty: true, synced_epoch: 0 }
    }
}

impl QuotaMirror {
    fn add(&mut self, userid: &str) {
        *self.counts.entry(userid.to_owned()).or_insert(0) += 1;
    }

    /// Takes one away; false when there was none.
    fn remove(&mut self, userid: &str) -> bool {
        match self.counts.get_mut(userid) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.counts.remove(userid);
                true
            }
            None => false,
        }
    }
}

// KEYS[3] (the relay index) gets this relay with NX: a relay that dies before its first beat
// is still found and reaped, so its counts cannot linger.
// KEYS[4] / KEYS[5]: `quota-full` (userid -> limit) and its version: a userid is marked when
// its count reaches the limit (relays refuse it at once, reading the mark), and unmarked when
// a release or a reap takes it below (UNMARK).
const RESERVE_LUA: &str = r"
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local limit = tonumber(ARGV[2])
local function mark()
  if redis.call('HSETNX', KEYS[4], ARGV[1], limit) == 1 then redis.call('INCR', KEYS[5]) end
end
if limit > 0 and n >= limit then mark() return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], 'NX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[3])
if limit > 0 and n + 1 >= limit then mark() end
return 1
";

/// Lua: `unmark(full, version, userid, count)` drops a userid's full mark once its count is
/// below the limit it reached. Prepended to the scripts that lower counts.
pub(crate) const UNMARK_LUA: &str = r"
local function unmark(full, ver, u, n)
  local lim = redis.call('HGET', full, u)
  if lim and n < tonumber(lim) then
    redis.call('HDEL', full, u)
    redis.call('INCR', ver)
  end
end
";

const RELEASE_LUA: &str = r"
local m = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if m <= 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
unmark(KEYS[3], KEYS[4], ARGV[1], n)
return 1
";

const RESYNC_LUA: &str = r"
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  if redis.call('HINCRBY', KEYS[1], h[i], -tonumber(h[i + 1])) <= 0 then
    redis.call('HDEL', KEYS[1], h[i])
  end
end
redis.call('DEL', KEYS[2])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = 1, #h, 2 do
  unmark(KEYS[3], KEYS[4], h[i], tonumber(redis.call('HGET', KEYS[1], h[i]) or '0'))
end
return 1
";

static RESERVE: OnceLock<Script> = OnceLock::new();
static RELEASE: OnceLock<Script> = OnceLock::new();
static RESYNC: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Counts one more allocation of `userid` on this relay if the fleet-wide count is below
    /// `limit` (0: no limit, still counted). `Ok(false)`: the quota is full anywhere in the fleet
    /// (answer 486). On [`FleetError::Unavailable`] the caller decides under its local limits and
    /// reports an admitted allocation with [`Fleet::admit_local`].
    pub async fn reserve_allocation(&self, userid: &str, limit: u32) -> Result<bool, FleetError> {
        let i = &self.inner;
        let mut mirror = i.quota.lock().await;
        let node = i.cfg.node_id.as_str();
        let keys = (i.names.quota(), i.names.alloc(&i.cfg.node_id), i.names.relays());
        let full = (i.names.quota_full(), i.names.quota_full_version());
        let r: Result<i64, _> = i
            .call("reserve allocation", |mut c| async move {
                let mut inv = RESERVE.get_or_init(|| Script::new(RESERVE_LUA)).prepare_invoke();
                inv.key(keys.0).key(keys.1).key(keys.2).key(full.0).key(full.1).arg(userid).arg(limit).arg(node);
                inv.invoke_async(&mut c).await
            })
            .await;
        match r {
            Ok(granted) => {
                if granted == 1 {
                    mirror.add(userid);
                }
                Ok(granted == 1)
            }
            Err(e) => {
                mirror.dirty = true;
                Err(e)
            }
        }
    }

    /// Records an allocation admitted locally while Redis was unreachable; it is published with
    /// this relay's counts at the first heartbeat after Redis is back.
    pub async fn admit_local(&self, userid: &str) {
        let mut mirror = self.inner.quota.lock().await;
        mirror.add(userid);
        mirror.dirty = true;
    }

    /// Counts one allocation of `userid` on this relay less (it ended). Redis never goes below
    /// what this relay contributed; a release Redis missed is corrected at the next heartbeat
    /// after it is back.
    pub async fn release_allocation(&self, userid: &str) -> Result<(), FleetError> {
        let i = &self.inner;
        let mut mirror = i.quota.lock().await;
        if !mirror.remove(userid) {
            return Ok(());
        }
        let keys = (i.names.quota(), i.names.alloc(&i.cfg.node_id));
        let full = (i.names.quota_full(), i.names.quota_full_version());
        let r: Result<i64, _> = i
            .call("release allocation", |mut c| async move {
                let mut inv =
                    RELEASE.get_or_init(|| Script::new(&format!("{UNMARK_LUA}{RELEASE_LUA}"))).prepare_invoke();
                inv.key(keys.0).key(keys.1).key(full.0).key(full.1).arg(userid);
                inv.invoke_async(&mut c).await
            })
            .await;
        if r.is_err() {
            mirror.dirty = true;
        }
        r.map(|_| ())
    }

    /// The userids at their allocation limit somewhere in the fleet (`<p>quota-full`), when its
    /// version differs from `known`: what relays refuse with 486 without asking Redis per
    /// Allocate. `Ok(None)`: unchanged.
    pub async fn quota_full_if_changed(
        &self,
        known: Option<u64>,
    ) -> Result<Option<(u64, HashSet<String>)>, FleetError> {
        let (full, ver) = (self.inner.names.quota_full(), self.inner.names.quota_full_version());
        let version: Option<u64> = self
            .inner
            .call("read quota marks", |mut c| async move { redis::cmd("GET").arg(ver).query_async(&mut c).await })
            .await?;
        let version = version.unwrap_or(0);
        if known == Some(version) {
            return Ok(None);
        }
        // The version is read first: a change racing this read is seen at the next call.
        let users: Vec<String> = self
            .inner
            .call("read quota marks", |mut c| async move { redis::cmd("HKEYS").arg(full).query_async(&mut c).await })
            .await?;
        Ok(Some((version, users.into_iter().collect())))
    }

    /// `userid`'s live allocations on all relays together.
    pub async fn fleet_allocations(&self, userid: &str) -> Result<u64, FleetError> {
        let key = self.inner.names.quota();
        let n: Option<u64> = self
            .inner
            .call(
                "read quota",
                |mut c| async move { redis::cmd("HGET").arg(key).arg(userid).query_async(&mut c).await },
            )
            .await?;
        Ok(n.unwrap_or(0))
    }

    /// This relay's own count for `userid` (what it has reserved and not released).
    pub async fn local_allocations(&self, userid: &str) -> u64 {
        self.inner.quota.lock().await.counts.get(userid).copied().unwrap_or(0)
    }

    /// Re-publishes this relay's counts when Redis lost them or may disagree.
    pub(crate) async fn sync_quota_if_needed(&self, record_was_missing: bool) -> Result<(), FleetError> {
        let i = &self.inner;
        let mut mirror = i.quota.lock().await;
        let epoch = *i.epoch.borrow();
        if !record_was_missing && !mirror.dirty && mirror.synced_epoch == epoch {
            return Ok(());
        }
        let keys = (i.names.quota(), i.names.alloc(&i.cfg.node_id));
        let full = (i.names.quota_full(), i.names.quota_full_version());
        let pairs: Vec<(String, u64)> = mirror.counts.iter().map(|(u, n)| (u.clone(), *n)).collect();
        let r: Result<i64, _> = i
            .call("publish allocation counts", |mut c| async move {
                let mut inv = RESYNC.get_or_init(|| Script::new(&format!("{UNMARK_LUA}{RESYNC_LUA}"))).prepare_invoke();
                inv.key(keys.0).key(keys.1).key(full.0).key(full.1);
                for (u, n) in pairs {
                    inv.arg(u).arg(n);
                }
                inv.invoke_async(&mut c).await
            })
            .await;
        match r {
            Ok(_) => {
                mirror.dirty = false;
                mirror.synced_epoch = epoch;
                Ok(())
            }
            Err(e) => {
                mirror.dirty = true;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_counts_and_forgets_zeroes() {
        let mut m = QuotaMirror::default();
        assert!(m.dirty, "a new process publishes its part first");
        m.add("u");
        m.add("u");
        assert!(m.remove("u"));
        assert!(m.remove("u"));
        assert!(!m.remove("u"));
        assert!(m.counts.is_empty());
    }
}
