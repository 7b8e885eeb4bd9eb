//! The issuer's side of fleet mode: the relay directory, the shared rate limit and revocations,
//! the fleet's keys and the fleet-wide usage, built on the [`Fleet`] handle and handed to the
//! issuer crate through its traits ([`RelayDirectory`], [`FleetState`], [`RelayStatus`]).
//!
//! Nothing here touches Redis per request: the relay listing is refreshed every heartbeat
//! interval and patched at once when a relay announces a change on `<p>relay-changes` (kept up to `[issuer] listing_max_stale_secs` while Redis is unreachable, then empty
//! so the issuer falls back), the keys every second, the usage of the keys that need it every
//! second. Only the app endpoints' rate limit and revocations are Redis calls, and both fall
//! back when Redis does not answer (local limit; 503 for a revocation).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnkey_fleet::directory::{self, Aged};
use turnkey_fleet::{handout, Fleet, KeyRecord, KeysSnapshot, RateVerdict, Region, RelayStatus as Relay};
use turnkey_issuer::{
    BandwidthUsage, FleetDeps, FleetFuture, FleetListing, FleetRelay, FleetState, HandoutRelay, KeyInfo, KeyOptions,
    KeyStore, RelayDirectory, RelayStatus, SharedKey, Verdict,
};

use crate::config::Settings;

/// How often the fleet's keys are re-read (a key created anywhere works everywhere within 2 s).
const KEYS_EVERY: Duration = Duration::from_secs(1);
/// How often the usage of the app key and of keys with a cap is re-read.
const USAGE_EVERY: Duration = Duration::from_secs(1);

/// Everything the issuer needs in fleet mode.
pub(crate) struct FleetIssuer {
    /// Handed to `IssuerDeps::fleet`.
    pub(crate) deps: FleetDeps,
    /// The issuer's view of the relays' usage (replaces the local relay's).
    pub(crate) status: Arc<dyn RelayStatus>,
}

/// Starts the background copies and returns the issuer's fleet parts. Waits (bounded) for the
/// first key listing so a fresh issuer does not refuse every token while Redis is up.
pub(crate) async fn start(fleet: &Fleet, s: &Settings) -> FleetIssuer {
    let stale_after = fleet.config().stale_after();
    let max_stale = Duration::from_secs(s.issuer.listing_max_stale_secs);
    let directory = Arc::new(Directory::start(fleet, stale_after, max_stale));
    let keys = KeyStore::shared();
    start_keys(fleet, keys.clone()).await;
    let usage =
        Arc::new(FleetUsage::start(fleet, keys.clone(), s.issuer.app.key.clone().map(String::from), s.usage.reset_day));
    let state = Arc::new(Shared(fleet.clone()));
    FleetIssuer { deps: FleetDeps { directory, state, keys }, status: usage }
}

/// [`RelayDirectory`] over the fleet registry: the listing and handout state
/// ([`directory::Directory`]), fed by a task and told the time here.
struct Directory {
    fleet: Fleet,
    state: Arc<Mutex<directory::Directory>>,
    region: Option<Region>,
    seed: AtomicU64,
}

impl Directory {
    fn start(fleet: &Fleet, stale_after: Duration, max_stale: Duration) -> Self {
        let mut rx = fleet.watch_relays(fleet.config().beat_interval, max_stale);
        let first = rx.borrow().clone();
        let state = Arc::new(Mutex::new(directory::Directory::new(first, Instant::now(), stale_after, max_stale)));
        let cell = state.clone();
        tokio::spawn(async move {
            // Ends when the fleet handle (and so the listing task) is dropped.
            while rx.changed().await.is_ok() {
                let snap = rx.borrow_and_update().clone();
                cell.lock().unwrap_or_else(|p| p.into_inner()).update(snap, Instant::now());
            }
        });
        Self { fleet: fleet.clone(), state, region: fleet.config().region.clone(), seed: AtomicU64::new(rand_seed()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, directory::Directory> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RelayDirectory for Directory {
    fn choose(&self, region: Option<&Region>, count: usize) -> Vec<HandoutRelay> {
        let region = region.or(self.region.as_ref());
        let seed = self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let chosen = self.state().choose(Instant::now(), region, count, seed);
        chosen.iter().map(handout_relay).collect()
    }

    fn listing(&self) -> FleetListing {
        let Aged { relays, stale_after_ms: stale, cached } = self.state().aged(Instant::now());
        let cfg = self.fleet.config();
        FleetListing {
            node_id: cfg.node_id.clone(),
            region: cfg.region.clone(),
            redis_up: self.fleet.is_up(),
            cached,
            relays: relays.iter().map(|r| fleet_relay(r, stale)).collect(),
        }
    }
}

fn handout_relay(r: &Relay) -> HandoutRelay {
    let mut urls: Vec<_> = r.beat.urls.iter().collect();
    urls.sort_by_key(|u| u.transport);
    HandoutRelay { node_id: r.node_id.clone(), urls: urls.into_iter().map(|u| u.url.clone()).collect() }
}

pub(crate) fn fleet_relay(r: &Relay, stale_after_ms: u64) -> FleetRelay {
    let load = r.beat.load();
    FleetRelay {
        node_id: r.node_id.clone(),
        region: r.beat.region.clone(),
        urls: handout_relay(r).urls,
        allocations: r.beat.allocations,
        allocation_capacity: r.beat.allocation_capacity,
        relayed_bps: r.beat.relayed_bps,
        bandwidth_capacity_bps: r.beat.bandwidth_capacity_bps,
        load: load.is_finite().then_some((load * 1000.0).round() / 1000.0),
        draining: r.beat.draining,
        heartbeat_age_ms: r.age_ms,
        healthy: handout::eligible(r, stale_after_ms),
    }
}

/// [`FleetState`] over the fleet handle.
struct Shared(Fleet);

impl FleetState for Shared {
    fn rate_limit<'a>(&'a self, client: &'a str, limit: u32, window_secs: u64) -> FleetFuture<'a, Option<Verdict>> {
        Box::pin(async move {
            match self.0.rate_limit(client, limit, window_secs).await {
                Ok(RateVerdict::Allow) => Some(Verdict::Allow),
                Ok(RateVerdict::Limited { retry_after }) => Some(Verdict::Limited { retry_after }),
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "fleet rate limit failed; counting locally");
                    }
                    None
                }
            }
        })
    }

    fn revoke<'a>(&'a self, username: &'a str, expiry: u64) -> FleetFuture<'a, bool> {
        Box::pin(async move {
            match self.0.revoke(username, expiry).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing a revocation to the fleet failed");
                    false
                }
            }
        })
    }
}

/// Keeps `keys` equal to the fleet's keys. Waits up to 2 s for the first listing.
async fn start_keys(fleet: &Fleet, keys: KeyStore) {
    let mut rx = fleet.watch_keys(KEYS_EVERY);
    let first = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(Option::is_some)).await.map(|r| r.is_ok());
    if first.is_err() {
        tracing::warn!("fleet keys not read yet (redis unreachable?); the issuer knows no key until they are");
    }
    if let Some(snap) = rx.borrow_and_update().clone() {
        keys.replace_all(shared_keys(&snap));
    }
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let snap = rx.borrow_and_update().clone();
            if let Some(snap) = snap {
                keys.replace_all(shared_keys(&snap));
            }
        }
    });
}

fn shared_keys(snap: &KeysSnapshot) -> Vec<SharedKey> {
    snap.keys
        .iter()
        .map(|k| SharedKey {
            info: KeyInfo {
                id: k.id.clone(),
                max_ttl: k.max_ttl,
                monthly_bandwidth_bytes: k.monthly_bandwidth_bytes,
                created: k.created,
                admin: k.admin,
            },
            token_sha256: k.token_sha256.clone(),
        })
        .collect()
}

/// A key for the fleet, as `turnkey keys create --redis` stores it; the token is shown once.
pub(crate) fn new_key_record(opts: KeyOptions, now: u64) -> (turnkey_issuer::NewKey, KeyRecord) {
    let (new, shared) = KeyStore::generate(opts, now);
    let rec = KeyRecord {
        id: shared.info.id,
        token_sha256: shared.token_sha256,
        max_ttl: shared.info.max_ttl,
        monthly_bandwidth_bytes: shared.info.monthly_bandwidth_bytes,
        created: shared.info.created,
        admin: shared.info.admin,
    };
    (new, rec)
}

/// The fleet-wide usage of the keys the issuer must know it for (the app key, keys with a
/// monthly cap), re-read in the background: [`RelayStatus::bandwidth`] and the cap check read
/// this copy. Readiness is the directory's business in fleet mode.
struct FleetUsage {
    cache: Arc<RwLock<HashMap<String, BandwidthUsage>>>,
}

impl FleetUsage {
    fn start(fleet: &Fleet, keys: KeyStore, app_key: Option<String>, reset_day: u32) -> Self {
        let cache: Arc<RwLock<HashMap<String, BandwidthUsage>>> = Arc::default();
        let (fleet, out) = (fleet.clone(), cache.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(USAGE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let wanted: Vec<KeyInfo> = keys
                    .list()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|k| k.monthly_bandwidth_bytes.is_some() || app_key.as_deref() == Some(k.id.as_str()))
                    .chain(app_key.is_none().then(|| keys.oldest()).flatten())
                    .collect();
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let period = turnkey_usage::calendar::period_start(now, reset_day);
                let reset_at = turnkey_usage::calendar::next_period_start(now, reset_day);
                let mut fresh = HashMap::new();
                for k in wanted {
                    let (Ok(t), Ok(live)) = (fleet.usage(period, &k.id).await, fleet.key_allocations(&k.id).await)
                    else {
                        // Redis unreachable: keep the last known figures.
                        continue;
                    };
                    let used_bytes = t.bytes.client_to_peer.saturating_add(t.bytes.peer_to_client);
                    fresh.insert(k.id.clone(), BandwidthUsage { used_bytes, reset_at, active_allocations: live });
                }
                let mut c = out.write().unwrap_or_else(|p| p.into_inner());
                c.extend(fresh);
            }
        });
        Self { cache }
    }
}

impl RelayStatus for FleetUsage {
    fn ready(&self) -> bool {
        true
    }

    fn bandwidth(&self, key_id: &str) -> Option<BandwidthUsage> {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).get(key_id).copied()
    }
}

fn rand_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id())
}

/// The fleet's first key, created by the first issuer that finds the fleet without any key
/// (its token written to `<data_dir>/keys/<id>.token`, 0600, like the single-node default key);
/// else the fleet's oldest key. `None` while Redis is unreachable and no key is known.
pub(crate) async fn ensure_default_key(
    fleet: &Fleet,
    keys: &KeyStore,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<turnkey_issuer::DefaultKey>> {
    let token_path = |id: &str| data_dir.join("keys").join(format!("{id}.token"));
    if let Some(k) = keys.oldest() {
        let p = token_path(&k.id);
        return Ok(Some(turnkey_issuer::DefaultKey { token_path: p.exists().then_some(p), id: k.id, created: false }));
    }
    if !fleet.is_up() {
        return Ok(None);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (new, rec) = new_key_record(KeyOptions::default(), now);
    if !fleet.create_key(&rec).await? {
        return Ok(None);
    }
    let p = token_path(&new.id);
    turnkey_files::create_private_dir(&data_dir.join("keys"))?;
    turnkey_files::write_private(&p, format!("{}\n", new.token).as_bytes())?;
    keys.replace_all(vec![SharedKey {
        info: KeyInfo { id: rec.id.clone(), max_ttl: None, monthly_bandwidth_bytes: None, created: now, admin: false },
        token_sha256: rec.token_sha256,
    }]);
    tracing::info!(key_id = %new.id, "created the fleet's first TURN key");
    Ok(Some(turnkey_issuer::DefaultKey { id: new.id, token_path: Some(p), created: true }))
}

#[cfg(test)]
mod tests {
    use turnkey_fleet::{AdvertisedUrl, NodeId, RelayBeat, Transport};

    use super::*;

    fn relay(id: &str, age_ms: u64) -> Relay {
        Relay {
            node_id: NodeId::new(id).unwrap(),
            beat: RelayBeat {
                region: None,
                urls: vec![
                    AdvertisedUrl { transport: Transport::Tcp, url: format!("turn:{id}:3478?transport=tcp") },
                    AdvertisedUrl { transport: Transport::Udp, url: format!("turn:{id}:3478?transport=udp") },
                ],
                allocations: 0,
                allocation_capacity: 10,
                relayed_bps: 0,
                bandwidth_capacity_bps: None,
                draining: false,
            },
            age_ms,
        }
    }

    #[test]
    fn urls_are_handed_out_udp_first_and_listed_with_health() {
        let r = relay("a", 100);
        assert_eq!(handout_relay(&r).urls, ["turn:a:3478?transport=udp", "turn:a:3478?transport=tcp"]);
        let listed = fleet_relay(&r, 6000);
        assert!(listed.healthy && listed.load == Some(0.0));
        let mut draining = relay("b", 100);
        draining.beat.draining = true;
        assert!(!fleet_relay(&draining, 6000).healthy);
        assert!(!fleet_relay(&relay("c", 7000), 6000).healthy);
    }
}
