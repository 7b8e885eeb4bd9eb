//! The relay registry: heartbeats, deregistration and the list of healthy relays.
//!
//! A relay's record `<p>relay:<node>` holds its last [`RelayBeat`] (JSON) and expires after 3
//! missed beats; `<p>relays` indexes node ids by the Redis time of their last beat. Every beat
//! also reaps relays whose record expired (at most 16 per beat): their allocation counts leave
//! the fleet-wide quota (see `quota.rs`), so a SIGKILLed relay frees its users' quota within
//! 3 beats plus one beat of any live relay.
//!
//! A relay that joins (its record was missing), starts or stops draining, or leaves publishes
//! `{"node_id", "change": "joined"|"draining"|"resumed"|"left"}` on `<p>relay-changes` in the
//! same script; issuers subscribed to it ([`Fleet::relay_changes`]) re-read that relay's record
//! ([`Fleet::relay`]) at once instead of waiting for their next periodic listing.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::names::{NodeId, Region};
use crate::{Fleet, FleetError};

/// A TURN transport a relay advertises (the workspace's one `Transport`, `"udp"` in JSON).
pub use turnkey_types::Transport;

/// One URL a relay advertises, e.g. `turn:relay1.example.com:3478?transport=udp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedUrl {
    /// The transport the URL is for.
    pub transport: Transport,
    /// The ICE server URL handed out.
    pub url: String,
}

/// What a relay publishes at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayBeat {
    /// The relay's region, if any.
    #[serde(default)]
    pub region: Option<Region>,
    /// Its advertised TURN URLs, per transport.
    pub urls: Vec<AdvertisedUrl>,
    /// Live allocations.
    pub allocations: u64,
    /// How many allocations it accepts in total (0: none; such a relay is never handed out).
    pub allocation_capacity: u64,
    /// Relayed bits per second (both directions, recent average).
    pub relayed_bps: u64,
    /// The bandwidth it is meant to carry, if configured; load counts it when present.
    #[serde(default)]
    pub bandwidth_capacity_bps: Option<u64>,
    /// Whether it is draining (finishing live allocations, accepting no new ones).
    pub draining: bool,
}

impl RelayBeat {
    /// The URLs for one transport.
    pub fn urls_for(&self, transport: Transport) -> impl Iterator<Item = &str> + '_ {
        self.urls.iter().filter(move |u| u.transport == transport).map(|u| u.url.as_str())
    }

    /// Load relative to capacity, 0.0 (idle) to 1.0 (full) or more: the larger of allocations
    /// over allocation capacity and bits/s over bandwidth capacity (when configured).
    pub fn load(&self) -> f64 {
        if self.allocation_capacity == 0 {
            return f64::INFINITY;
        }
        let alloc = self.allocations as f64 / self.allocation_capacity as f64;
        match self.bandwidth_capacity_bps {
            Some(0) => f64::INFINITY,
            Some(cap) => alloc.max(self.relayed_bps as f64 / cap as f64),
            None => alloc,
        }
    }
}

/// A relay as the registry lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Its node id.
    pub node_id: NodeId,
    /// Its last heartbeat.
    #[serde(flatten)]
    pub beat: RelayBeat,
    /// Milliseconds since that heartbeat (Redis's clock).
    pub age_ms: u64,
}

/// The healthy relays at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelaySnapshot {
    /// Redis's time of the listing, Unix milliseconds.
    pub server_time_ms: u64,
    /// Relays whose record has not expired, by node id.
    pub relays: Vec<RelayStatus>,
    /// Whether this is the last successful listing, served because Redis is unreachable.
    #[serde(default)]
    pub cached: bool,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    node_id: NodeId,
    #[serde(flatten)]
    beat: RelayBeat,
}

const BEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl, 'LIMIT', 0, 16)
for _, id in ipairs(stale) do
  if id ~= ARGV[1] and redis.call('EXISTS', ARGV[4] .. 'relay:' .. id) == 0 then
    drop_allocs(KEYS[3], KEYS[4], KEYS[5], ARGV[4] .. 'alloc:' .. id)
    redis.call('ZREM', KEYS[2], id)
  end
end
local was = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[1])
local draining = ARGV[5] == '1'
if not was then
  redis.call('PUBLISH', ARGV[6], '{"node_id":"' .. ARGV[1] .. '","change":"joined"}')
elseif (string.find(was, '"draining":true', 1, true) ~= nil) ~= draining then
  local change = draining and 'draining' or 'resumed'
  redis.call('PUBLISH', ARGV[6], '{"node_id":"' .. ARGV[1] .. '","change":"' .. change .. '"}')
end
if was then
  return 1
end
return 0
"#;

const LIST_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf', 'WITHSCORES')
local out = {tostring(now)}
for i = 1, #ids, 2 do
  local v = redis.call('GET', ARGV[2] .. 'relay:' .. ids[i])
  if v then
    out[#out + 1] = ids[i]
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = v
  end
end
return out
";

const LEAVE_LUA: &str = r#"
drop_allocs(KEYS[3], KEYS[5], KEYS[6], KEYS[4])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], '{"node_id":"' .. ARGV[1] .. '","change":"left"}')
return 1
"#;

/// Lua: `drop_allocs(quota, full, version, akey)` takes a relay's per-user allocation counts
/// (hash `akey`) off the fleet-wide counts, unmarking users that fall below their limit, and
/// deletes `akey`: what a leaving relay does for itself and a heartbeat does for a dead one.
const DROP_ALLOCS_LUA: &str = r"
local function drop_allocs(quota, full, ver, akey)
  local h = redis.call('HGETALL', akey)
  for i = 1, #h, 2 do
    local n = redis.call('HINCRBY', quota, h[i], -tonumber(h[i + 1]))
    if n <= 0 then
      redis.call('HDEL', quota, h[i])
    end
    unmark(full, ver, h[i], n)
  end
  redis.call('DEL', akey)
end
";

/// The script `src`, with the quota-mark helpers (`unmark`, `drop_allocs`) defined before it.
fn script(cell: &'static OnceLock<Script>, src: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(&format!("{}{DROP_ALLOCS_LUA}{src}", crate::quota::UNMARK_LUA)))
}

static BEAT: OnceLock<Script> = OnceLock::new();
static LIST: OnceLock<Script> = OnceLock::new();
static LEAVE: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Publishes this relay's heartbeat (call it every [`crate::FleetConfig::beat_interval`]).
    ///
    /// Also reaps relays whose record expired, and re-publishes this relay's allocation counts
    /// when Redis lost them (first beat of this process, Redis restarted empty, or the relay was
    /// cut off long enough to be reaped) or when quota calls failed while Redis was down.
    /// After [`Fleet::deregister`] it does nothing: a relay that left stays gone.
    pub async fn heartbeat(&self, beat: &RelayBeat) -> Result<(), FleetError> {
        let i = &self.inner;
        let deregistered = i.registration.lock().await;
        if *deregistered {
            return Ok(());
        }
        let node = &i.cfg.node_id;
        let json = serde_json::to_string(&Stored { node_id: node.clone(), beat: beat.clone() })
            .map_err(|e| FleetError::Data { op: "heartbeat", detail: e.to_string() })?;
        let ttl_ms = millis(i.cfg.stale_after());
        let (relay, relays, quota, prefix) = (i.names.relay(node), i.names.relays(), i.names.quota(), i.names.prefix());
        let full = (i.names.quota_full(), i.names.quota_full_version());
        let (draining, channel) = (beat.draining, i.names.relay_changes_channel());
        let existed: i64 = i
            .call("heartbeat", |mut c| async move {
                let mut inv = script(&BEAT, BEAT_LUA).prepare_invoke();
                inv.key(relay)
                    .key(relays)
                    .key(quota)
                    .key(full.0)
                    .key(full.1)
                    .arg(node.as_str())
                    .arg(json)
                    .arg(ttl_ms)
                    .arg(prefix)
                    .arg(if draining { "1" } else { "0" })
                    .arg(channel);
                inv.invoke_async(&mut c).await
            })
            .await?;
        self.sync_quota_if_needed(existed == 0).await
    }

    /// Removes this relay from the registry at once (graceful stop) and its allocation counts
    /// from the fleet-wide quota.
    pub async fn deregister(&self) -> Result<(), FleetError> {
        let i = &self.inner;
        let mut deregistered = i.registration.lock().await;
        *deregistered = true;
        let node = &i.cfg.node_id;
        let keys = [
            i.names.relay(node),
            i.names.relays(),
            i.names.quota(),
            i.names.alloc(node),
            i.names.quota_full(),
            i.names.quota_full_version(),
        ];
        let channel = i.names.relay_changes_channel();
        let _: i64 = i
            .call("deregister", |mut c| async move {
                let mut inv = script(&LEAVE, LEAVE_LUA).prepare_invoke();
                for k in keys {
                    inv.key(k);
                }
                inv.arg(node.as_str()).arg(channel);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    /// A graceful stop: flushes buffered usage, then [`Fleet::deregister`]. Both are attempted;
    /// the first error is returned.
    pub async fn leave(&self) -> Result<(), FleetError> {
        let mut first = None;
        // Up to two batches: the one in flight and what came after it.
        for _ in 0..2 {
            if let Err(e) = self.flush_usage().await {
                first.get_or_insert(e);
                break;
            }
        }
        if let Err(e) = self.deregister().await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Every relay whose heartbeat has not expired (draining ones included: the handout skips
    /// them, `/v1/fleet` shows them). Updates the heartbeat-age metrics and the cached listing.
    pub async fn healthy_relays(&self) -> Result<RelaySnapshot, FleetError> {
        let i = &self.inner;
        let ttl_ms = millis(i.cfg.stale_after());
        let (relays, prefix) = (i.names.relays(), i.names.prefix().to_owned());
        let raw: Vec<String> = i
            .call("list relays", |mut c| async move {
                let mut inv = script(&LIST, LIST_LUA).prepare_invoke();
                inv.key(relays).arg(ttl_ms).arg(prefix);
                inv.invoke_async(&mut c).await
            })
            .await?;
        let snap = parse_listing(&raw)?;
        let ages: Vec<(&str, f64)> =
            snap.relays.iter().map(|r| (r.node_id.as_str(), r.age_ms as f64 / 1000.0)).collect();
        i.metrics.set_ages(&ages);
        self.remember_listing(&snap);
        Ok(snap)
    }

    /// Makes `snap` (read or patched just now) the listing that
    /// [`Fleet::healthy_relays_or_cached`] falls back to.
    pub(crate) fn remember_listing(&self, snap: &RelaySnapshot) {
        *self.inner.relays_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), snap.clone()));
    }

    /// One relay's current record (heartbeat age 0: it is read now), `None` when it has none
    /// (it left, or its record expired). What an issuer reads when a relay announces a change.
    pub async fn relay(&self, node: &NodeId) -> Result<Option<RelayStatus>, FleetError> {
        let key = self.inner.names.relay(node);
        let raw: Option<String> = self
            .inner
            .call("read relay", |mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await?;
        let Some(json) = raw else { return Ok(None) };
        let stored: Stored =
            serde_json::from_str(&json).map_err(|e| FleetError::Data { op: "read relay", detail: e.to_string() })?;
        Ok(Some(RelayStatus { node_id: stored.node_id, beat: stored.beat, age_ms: 0 }))
    }

    /// [`Fleet::healthy_relays`], or while Redis is unreachable the last successful listing if
    /// it is at most `max_stale` old (with ages advanced by the time since, and `cached` set).
    pub async fn healthy_relays_or_cached(&self, max_stale: Duration) -> Result<RelaySnapshot, FleetError> {
        match self.healthy_relays().await {
            Err(e) if e.is_unavailable() => {
                let cache = self.inner.relays_cache.lock().unwrap_or_else(|p| p.into_inner());
                match &*cache {
                    Some((at, snap)) if at.elapsed() <= max_stale => {
                        let extra = millis(at.elapsed());
                        let mut snap = snap.clone();
                        snap.cached = true;
                        snap.server_time_ms += extra;
                        for r in &mut snap.relays {
                            r.age_ms += extra;
                        }
                        Ok(snap)
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_listing(raw: &[String]) -> Result<RelaySnapshot, FleetError> {
    let bad = |detail: String| FleetError::Data { op: "list relays", detail };
    let (now, rest) = raw.split_first().ok_or_else(|| bad("empty answer".to_owned()))?;
    let now: u64 = now.parse().map_err(|_| bad(format!("time {now:?}")))?;
    let mut relays = Vec::with_capacity(rest.len() / 3);
    for chunk in rest.chunks(3) {
        let [id, score, json] = chunk else { return Err(bad("truncated listing".to_owned())) };
        let stored: Stored = match serde_json::from_str(json) {
            Ok(s) => s,
            Err(e) => {
                // One foreign or newer record must not hide every other relay.
                tracing::warn!(node = %id, error = %e, "fleet: skipping unreadable relay record");
                continue;
            }
        };
        let beat_ms: f64 = score.parse().map_err(|_| bad(format!("score {score:?}")))?;
        let age_ms = now.saturating_sub(beat_ms as u64);
        relays.push(RelayStatus { node_id: stored.node_id, beat: stored.beat, age_ms });
    }
    relays.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(RelaySnapshot { server_time_ms: now, relays, cached: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat() -> RelayBeat {
        RelayBeat {
            region: Some(Region::new("eu").unwrap()),
            urls: vec![
                AdvertisedUrl { transport: Transport::Udp, url: "turn:r1:3478?transport=udp".into() },
                AdvertisedUrl { transport: Transport::Tls, url: "turns:r1:5349?transport=tcp".into() },
            ],
            allocations: 50,
            allocation_capacity: 100,
            relayed_bps: 900,
            bandwidth_capacity_bps: Some(1000),
            draining: false,
        }
    }

    #[test]
    fn load_is_the_larger_ratio() {
        let mut b = beat();
        assert!((b.load() - 0.9).abs() < 1e-9);
        b.bandwidth_capacity_bps = None;
        assert!((b.load() - 0.5).abs() < 1e-9);
        b.allocation_capacity = 0;
        assert!(b.load().is_infinite());
        assert_eq!(beat().urls_for(Transport::Tls).collect::<Vec<_>>(), ["turns:r1:5349?transport=tcp"]);
    }

    #[test]
    fn listing_parses_and_skips_foreign_records() {
        let stored = serde_json::to_string(&Stored { node_id: NodeId::new("r1").unwrap(), beat: beat() }).unwrap();
        let raw: Vec<String> =
            ["10000", "r1", "9500", &stored, "r2", "9000", "{not json"].iter().map(|s| s.to_string()).collect();
        let snap = parse_listing(&raw).unwrap();
        assert_eq!(snap.server_time_ms, 10_000);
        assert_eq!(snap.relays.len(), 1);
        assert_eq!(snap.relays[0].age_ms, 500);
        assert_eq!(snap.relays[0].beat, beat());
        assert!(parse_listing(&[]).is_err());
        assert!(parse_listing(&["1".into(), "r1".into()]).is_err());
    }
}
