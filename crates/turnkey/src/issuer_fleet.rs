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

use turnkey_fleet::{
    handout, Fleet, KeyRecord, KeysSnapshot, NodeId, RateVerdict, Region, RelaySnapshot, RelayStatus as Relay,
};
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

/// The relay listing, as last read, and when.
struct Listing {
    at: Instant,
    snap: Arc<RelaySnapshot>,
}

/// [`RelayDirectory`] over the fleet registry.
struct Directory {
    fleet: Fleet,
    listing: Arc<RwLock<Listing>>,
    region: Option<Region>,
    stale_after_ms: u64,
    max_stale_ms: u64,
    seed: AtomicU64,
    handed: Mutex<Handed>,
}

/// What this issuer handed out since each relay's last heartbeat: relays named in answers whose
/// allocations the relay's beat cannot show yet. A relay's count starts again at 0 when a newer
/// beat of it is seen (its `allocations` then include what the count stood for).
#[derive(Debug, Default)]
struct Handed {
    /// Node id -> (Redis time of the beat the count is relative to, handouts since).
    since_beat: HashMap<NodeId, (u64, u64)>,
    /// The listing the counts were last lined up with (they are again only when it changes, not
    /// per request).
    seen: Option<Arc<RelaySnapshot>>,
}

impl Handed {
    /// Lines the counts up with `snap`: a relay whose beat is newer than the one its count is
    /// relative to starts again at 0; relays no longer listed are forgotten.
    fn sync(&mut self, snap: &Arc<RelaySnapshot>) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            return;
        }
        self.since_beat.retain(|node, _| snap.relays.iter().any(|r| &r.node_id == node));
        for r in &snap.relays {
            let beat_at = snap.server_time_ms.saturating_sub(r.age_ms);
            let e = self.since_beat.entry(r.node_id.clone()).or_insert((beat_at, 0));
            if e.0 != beat_at {
                *e = (beat_at, 0);
            }
        }
        self.seen = Some(snap.clone());
    }

    /// Handouts of `node` since its last beat.
    fn pending(&self, node: &NodeId) -> u64 {
        self.since_beat.get(node).map_or(0, |e| e.1)
    }

    /// Counts one handout of `node`.
    fn handed_out(&mut self, node: &NodeId) {
        if let Some(e) = self.since_beat.get_mut(node) {
            e.1 += 1;
        }
    }
}

impl Directory {
    fn start(fleet: &Fleet, stale_after: Duration, max_stale: Duration) -> Self {
        let mut rx = fleet.watch_relays(fleet.config().beat_interval, max_stale);
        let listing = Arc::new(RwLock::new(Listing { at: Instant::now(), snap: rx.borrow().clone() }));
        let cell = listing.clone();
        tokio::spawn(async move {
            // Ends when the fleet handle (and so the listing task) is dropped.
            while rx.changed().await.is_ok() {
                let snap = rx.borrow_and_update().clone();
                *cell.write().unwrap_or_else(|p| p.into_inner()) = Listing { at: Instant::now(), snap };
            }
        });
        Self {
            fleet: fleet.clone(),
            listing,
            region: fleet.config().region.clone(),
            stale_after_ms: millis(stale_after),
            max_stale_ms: millis(max_stale),
            seed: AtomicU64::new(rand_seed()),
            handed: Mutex::default(),
        }
    }

    /// The relays with their heartbeat ages advanced to now (so a relay drops out of answers
    /// exactly 3 beats after its last one, whenever the listing was read), and the age past
    /// which one is not handed out (longer for a listing kept while Redis is unreachable).
    fn relays_now(&self) -> (Vec<Relay>, u64, bool) {
        self.relays_and_snapshot().0
    }

    /// [`Directory::relays_now`], and the listing it comes from.
    fn relays_and_snapshot(&self) -> ((Vec<Relay>, u64, bool), Arc<RelaySnapshot>) {
        let l = self.listing.read().unwrap_or_else(|p| p.into_inner());
        let (relays, stale) = aged(&l.snap, l.at.elapsed(), self.stale_after_ms, self.max_stale_ms);
        ((relays, stale, l.snap.cached), l.snap.clone())
    }
}

/// The listing's relays with their ages advanced by `elapsed` (the copy's age), and the age past
/// which a relay is not handed out: 3 beats, plus `max_stale_ms` for a listing kept while Redis
/// is unreachable (no relay can beat then).
fn aged(snap: &RelaySnapshot, elapsed: Duration, stale_after_ms: u64, max_stale_ms: u64) -> (Vec<Relay>, u64) {
    let extra = millis(elapsed);
    let mut relays = snap.relays.clone();
    for r in &mut relays {
        r.age_ms = r.age_ms.saturating_add(extra);
    }
    (relays, if snap.cached { stale_after_ms.saturating_add(max_stale_ms) } else { stale_after_ms })
}

impl RelayDirectory for Directory {
    fn choose(&self, region: Option<&Region>, count: usize) -> Vec<HandoutRelay> {
        let ((relays, stale, _), snap) = self.relays_and_snapshot();
        let region = region.or(self.region.as_ref());
        let seed = self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        // Every relay named counts as one allocation to come (browsers allocate on each TURN
        // server of an answer) until its next heartbeat shows what really happened.
        let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        handed.sync(&snap);
        let chosen = handout::choose_pending(&relays, region, count, stale, seed, |n| handed.pending(n));
        for r in &chosen {
            handed.handed_out(&r.node_id);
        }
        drop(handed);
        chosen.into_iter().map(handout_relay).collect()
    }

    fn listing(&self) -> FleetListing {
        let (relays, stale, cached) = self.relays_now();
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    fn a_relay_leaves_three_beats_after_its_last_beat_whenever_the_copy_was_read() {
        let snap = RelaySnapshot { server_time_ms: 0, relays: vec![relay("a", 1000), relay("b", 5000)], cached: false };
        let (now, stale) = aged(&snap, Duration::from_millis(1500), 6000, 30_000);
        assert_eq!(stale, 6000);
        let ok: Vec<_> = handout::choose(&now, None, 5, stale, 1).iter().map(|r| r.node_id.to_string()).collect();
        assert_eq!(ok, ["a"], "b's beat is 6.5 s old by now");
        // A copy kept while Redis is down: its relays stay eligible up to max_stale longer.
        let cached = RelaySnapshot { cached: true, ..snap };
        let (now, stale) = aged(&cached, Duration::from_millis(1500), 6000, 30_000);
        assert_eq!(handout::choose(&now, None, 5, stale, 1).len(), 2);
        let (now, stale) = aged(&cached, Duration::from_secs(40), 6000, 30_000);
        assert!(handout::choose(&now, None, 5, stale, 1).is_empty());
    }

    #[test]
    fn handouts_count_until_the_relays_next_beat() {
        let mut h = Handed::default();
        let snap = Arc::new(RelaySnapshot {
            server_time_ms: 10_000,
            relays: vec![relay("a", 1000), relay("b", 500)],
            cached: false,
        });
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        h.sync(&snap);
        assert_eq!(h.pending(&a), 0);
        h.handed_out(&a);
        h.handed_out(&a);
        h.handed_out(&b);
        h.sync(&snap);
        assert_eq!((h.pending(&a), h.pending(&b)), (2, 1));
        // A listing read later, same beats: the counts stay. A new beat of a: a's count restarts.
        let later =
            RelaySnapshot { server_time_ms: 11_000, relays: vec![relay("a", 2000), relay("b", 1500)], cached: false };
        h.sync(&Arc::new(later));
        assert_eq!((h.pending(&a), h.pending(&b)), (2, 1));
        let beat =
            RelaySnapshot { server_time_ms: 12_000, relays: vec![relay("a", 100), relay("b", 2500)], cached: false };
        h.sync(&Arc::new(beat));
        assert_eq!((h.pending(&a), h.pending(&b)), (0, 1));
        // A relay gone from the listing is forgotten.
        let gone = RelaySnapshot { server_time_ms: 12_000, relays: vec![relay("a", 100)], cached: false };
        h.sync(&Arc::new(gone));
        assert_eq!((h.pending(&b), h.since_beat.len()), (0, 1));
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
