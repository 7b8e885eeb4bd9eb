//! The relay's side of fleet mode: its heartbeat (what it advertises, its load, draining), the
//! revocations it subscribes to, the usage it adds to the fleet's totals, and a graceful leave.
//! Nothing here is on the data path: the engine reads [`Shared`] and the revocation set, which
//! the tasks below keep current.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnkey_auth::{RevocationSet, UnixTime};
use turnkey_fleet::beat::{near_capacity, RelayedRate};
use turnkey_fleet::{handout, AdvertisedUrl, Fleet, RelayBeat, Revocation, Transport, UsageBytes};
use turnkey_relay::engine::Shared;
use turnkey_relay::fleet::{AllocationObserver, FleetView};
use turnkey_relay::udp::RelayAddrs;
use turnkey_relay::usage::{UsageDelta, UsageSink};
use turnkey_types::TurnUrl;

use crate::addrs::Listening;
use crate::advertise::Reach;
use crate::config::Settings;

/// The engine's view of the fleet, fed by two tasks: the quota marks (users at their limit
/// anywhere, refused with 486 here too, re-read within 250 ms of a change) and the counts
/// reconciliation (each allocation that starts or ends here is reserved / released in Redis;
/// one refused by a race, or made while Redis is unreachable, is counted locally and published
/// at the next heartbeat).
pub(crate) fn view(fleet: &Fleet, limit: u32) -> Arc<FleetView> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let view = Arc::new(FleetView::new(Arc::new(Observer(tx))));
    tokio::spawn(reconcile(fleet.clone(), rx, limit));
    let mut marks = fleet.watch_quota_full(Duration::from_millis(250));
    let v = view.clone();
    tokio::spawn(async move {
        while marks.changed().await.is_ok() {
            let users = marks.borrow_and_update().clone();
            v.set_full(users);
        }
    });
    view
}

#[derive(Debug)]
enum Counted {
    Started(String),
    Ended(String),
}

#[derive(Debug)]
struct Observer(tokio::sync::mpsc::UnboundedSender<Counted>);

impl AllocationObserver for Observer {
    fn started(&self, userid: &str) {
        let _ = self.0.send(Counted::Started(userid.to_owned()));
    }

    fn ended(&self, userid: &str) {
        let _ = self.0.send(Counted::Ended(userid.to_owned()));
    }
}

async fn reconcile(fleet: Fleet, mut rx: tokio::sync::mpsc::UnboundedReceiver<Counted>, limit: u32) {
    while let Some(ev) = rx.recv().await {
        match ev {
            Counted::Started(u) => match fleet.reserve_allocation(&u, limit).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(userid = %u, "fleet: admitted here while at the limit elsewhere (a race); counted");
                    fleet.admit_local(&u).await;
                }
                Err(_) => fleet.admit_local(&u).await,
            },
            Counted::Ended(u) => {
                let _ = fleet.release_allocation(&u).await;
            }
        }
    }
}

/// Refuses to join when another live process already holds this node id: two relays under one
/// id overwrite each other's record, and one of them is never listed or handed out. A record of
/// this id that keeps beating for one more heartbeat interval belongs to a live process; one that
/// does not is a crashed predecessor's, and this relay takes it over. Checked before the first
/// heartbeat. A Redis that cannot answer is no reason to refuse (logged; the start goes on).
pub(crate) async fn ensure_node_id_free(fleet: &Fleet) -> anyhow::Result<()> {
    let cfg = fleet.config();
    let node = cfg.node_id.clone();
    let age = |snap: &turnkey_fleet::RelaySnapshot| snap.relays.iter().find(|r| r.node_id == node).map(|r| r.age_ms);
    let first = match fleet.healthy_relays().await {
        Ok(snap) => age(&snap),
        Err(e) => {
            tracing::warn!(error = %e, node_id = %node, "fleet: cannot check that no live process holds this node id");
            return Ok(());
        }
    };
    let Some(first_age) = first else { return Ok(()) };
    let waited = cfg.beat_interval + cfg.beat_interval / 2;
    tracing::info!(node_id = %node, age_ms = first_age, "fleet: a record of this node id exists; checking whether its process is alive");
    tokio::time::sleep(waited).await;
    let again = match fleet.healthy_relays().await {
        Ok(snap) => age(&snap),
        Err(_) => None,
    };
    let waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
    match again {
        Some(a) if a < first_age + waited_ms => anyhow::bail!(
            "node id \"{node}\" is held by another live relay (it beat {a} ms ago): two relays under one id overwrite each \
             other's record and one is never handed out; give each process its own --node-id (TURNKEY_NODE_ID; the \
             default is the host name)"
        ),
        _ => {
            tracing::info!(node_id = %node, "fleet: the previous holder of this node id stopped beating; taking it over");
            Ok(())
        }
    }
}

/// A relay that joined a fleet.
#[derive(Debug)]
pub(crate) struct FleetRelay {
    fleet: Fleet,
    beat: Arc<BeatSource>,
}

impl FleetRelay {
    /// Starts the heartbeat, the revocation subscription and the usage flusher.
    pub(crate) fn start(
        fleet: Fleet,
        s: &Settings,
        listening: &Listening,
        relay: &RelayAddrs,
        shared: Arc<Shared>,
        relayed: Arc<AtomicU64>,
    ) -> Self {
        let urls = advertised_urls(s, listening, relay);
        if urls.is_empty() {
            tracing::warn!("fleet: no address to advertise (set public_host); this relay is never handed out");
        }
        let beat = Arc::new(BeatSource {
            region: s.fleet.region.clone(),
            urls,
            capacity: u64::from(s.engine.max_allocations),
            shared: shared.clone(),
            relayed,
            rate: Mutex::new(RelayedRate::new(Instant::now(), 0)),
        });
        let source = beat.clone();
        fleet.spawn_heartbeat(move || source.beat());
        fleet.spawn_usage_flusher(s.usage.flush_interval.min(Duration::from_secs(1)));
        tokio::spawn(apply_revocations(fleet.clone(), shared.revocations.clone()));
        tokio::spawn(find_alternates(fleet.clone(), beat.clone()));
        Self { fleet, beat }
    }

    /// SIGTERM: the relay stops taking allocations; the fleet learns it at once (a draining
    /// relay is never handed out), and new allocations are redirected (300) from then on.
    pub(crate) async fn announce_draining(&self) {
        set_alternates(&self.fleet, &self.beat).await;
        self.beat.shared.start_draining();
        if let Err(e) = self.fleet.heartbeat(&self.beat.beat()).await {
            tracing::warn!(error = %e, "fleet: cannot announce draining");
        }
    }

    /// After the relay stopped: flush the last usage and leave the registry.
    pub(crate) async fn leave(self) {
        match self.fleet.leave().await {
            Ok(()) => tracing::info!("fleet: left (usage flushed, deregistered)"),
            Err(e) => tracing::warn!(error = %e, "fleet: leaving incompletely; the record expires on its own"),
        }
    }
}

/// What each heartbeat says.
#[derive(Debug)]
struct BeatSource {
    region: Option<turnkey_fleet::Region>,
    urls: Vec<AdvertisedUrl>,
    capacity: u64,
    shared: Arc<Shared>,
    /// Payload bytes relayed so far (both directions), from the usage sink.
    relayed: Arc<AtomicU64>,
    /// The relayed bit rate since the last beat.
    rate: Mutex<RelayedRate>,
}

impl BeatSource {
    fn beat(&self) -> RelayBeat {
        let total = self.relayed.load(Ordering::Relaxed);
        let bps = self.rate.lock().unwrap_or_else(|p| p.into_inner()).bps(Instant::now(), total);
        RelayBeat {
            region: self.region.clone(),
            urls: self.urls.clone(),
            allocations: u64::from(self.shared.allocations()),
            allocation_capacity: self.capacity,
            relayed_bps: bps,
            bandwidth_capacity_bps: None,
            draining: self.shared.is_draining(),
        }
    }
}

/// While this relay is draining or at 90 % of its capacity (the only times it redirects),
/// keeps the engine's ALTERNATE-SERVER per transport current, every heartbeat interval. A
/// listing is the fleet's most expensive read, so a relay with room does not poll it.
async fn find_alternates(fleet: Fleet, beat: Arc<BeatSource>) {
    let every = fleet.config().beat_interval;
    let weak = Arc::downgrade(&beat);
    drop(beat);
    loop {
        tokio::time::sleep(every).await;
        let Some(beat) = weak.upgrade() else { return };
        let allocations = u64::from(beat.shared.allocations());
        if beat.shared.is_draining() || near_capacity(allocations, beat.capacity) {
            set_alternates(&fleet, &beat).await;
        }
    }
}

/// Looks up the least-loaded healthy relay per transport and hands it to the engine.
async fn set_alternates(fleet: &Fleet, beat: &BeatSource) {
    let Some(view) = beat.shared.fleet.as_ref() else { return };
    let snap = match fleet.healthy_relays().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "fleet: no listing for ALTERNATE-SERVER");
            return;
        }
    };
    let cfg = fleet.config();
    let stale_ms = u64::try_from(cfg.stale_after().as_millis()).unwrap_or(u64::MAX);
    for transport in Transport::ALL {
        let alt = handout::alternate(&snap.relays, &cfg.node_id, transport, cfg.region.as_ref(), stale_ms);
        let url = alt.and_then(|r| r.beat.urls_for(transport).next().map(str::to_owned));
        let addr = match url {
            Some(u) => resolve(&u).await,
            None => None,
        };
        view.set_alternate(transport, addr);
    }
}

/// A fleet relay's advertised `turn:`/`turns:` URL to a socket address (the first one its host
/// resolves to); `None` for a URL that does not parse or a host that does not resolve.
async fn resolve(url: &str) -> Option<SocketAddr> {
    let url: TurnUrl = url.parse().ok()?;
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, url.port));
    }
    let found = tokio::net::lookup_host((url.host.as_str(), url.port)).await.ok()?.next();
    found
}

/// Feeds the fleet's revocations (live, and replayed at every (re)connect) into the set the
/// engine consults; its shards end the revoked allocations at their next sweep.
async fn apply_revocations(fleet: Fleet, set: RevocationSet) {
    let mut sub = fleet.subscribe_revocations();
    drop(fleet);
    while let Some(ev) = sub.recv().await {
        match ev {
            Revocation::Username { username, expiry } => {
                if set.revoke(&username, UnixTime(expiry)) {
                    tracing::info!(%username, "fleet: username revoked");
                }
            }
            Revocation::Key { id, until } => {
                if set.revoke_key(&id, UnixTime(until)) {
                    tracing::info!(key_id = %id, "fleet: key revoked");
                }
            }
        }
    }
}

/// The usage sink in fleet mode: the local ledger as before, plus every delta buffered for the
/// fleet's per-key totals in Redis (flushed in numbered batches, applied once), plus the byte
/// count the heartbeat turns into bits per second.
#[derive(Debug)]
pub(crate) struct FleetUsage {
    pub(crate) local: Arc<dyn UsageSink>,
    pub(crate) fleet: Fleet,
    pub(crate) reset_day: u32,
    pub(crate) relayed: Arc<AtomicU64>,
}

impl UsageSink for FleetUsage {
    fn record(&self, batch: &[(Arc<str>, UsageDelta)]) {
        self.local.record(batch);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let period = turnkey_usage::calendar::period_start(now, self.reset_day);
        for (userid, d) in batch {
            let bytes = UsageBytes { client_to_peer: d.client_to_peer, peer_to_client: d.peer_to_client };
            self.relayed.fetch_add(bytes.total(), Ordering::Relaxed);
            let (key, label) = turnkey_usage::split_userid(userid);
            if let Err(e) = self.fleet.add_usage(period, key, label, bytes) {
                tracing::debug!(error = %e, "fleet: usage of this userid is not counted in the fleet");
            }
        }
    }

    fn blocked(&self, userid: &str) -> bool {
        self.local.blocked(userid)
    }

    fn generation(&self) -> u64 {
        self.local.generation()
    }
}

/// The TURN URLs this relay advertises, one per listener, on the hosts the banner prints (the
/// one rule: `advertise.rs`).
pub(crate) fn advertised_urls(s: &Settings, listening: &Listening, relay: &RelayAddrs) -> Vec<AdvertisedUrl> {
    Reach::new(&s.issuer.public_host, relay).urls(&listening.udp, &listening.tcp, &listening.tls)
}

#[cfg(test)]
mod tests {
    use super::resolve;
    use std::net::SocketAddr;

    #[tokio::test]
    async fn an_advertised_url_resolves_to_its_address() {
        let v6: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
        assert_eq!(resolve("turn:[2001:db8::7]:3478?transport=udp").await, Some(v6));
        let tls: SocketAddr = "192.0.2.9:5349".parse().unwrap();
        assert_eq!(resolve("turns:192.0.2.9:5349?transport=tcp").await, Some(tls));
        // The port a URL leaves out is its scheme's default, as clients read it.
        assert_eq!(resolve("turns:192.0.2.9?transport=tcp").await, Some(tls));
        let named = resolve("turn:localhost:3479?transport=tcp").await.expect("localhost resolves");
        assert!(named.ip().is_loopback() && named.port() == 3479, "{named}");
    }

    #[tokio::test]
    async fn a_url_that_does_not_parse_resolves_to_nothing() {
        for bad in
            ["", "3478", "http://192.0.2.9:3478", "turn:192.0.2.9:0", "turn:[::1:3478", "turns:h:1?transport=udp"]
        {
            assert_eq!(resolve(bad).await, None, "{bad}");
        }
    }
}
