//! The relay's side of fleet mode: its heartbeat (what it advertises, its load, draining), the
//! revocations it subscribes to, the usage it adds to the fleet's totals, and a graceful leave.
//! Nothing here is on the data path: the engine reads [`Shared`] and the revocation set, which
//! the tasks below keep current.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use turnkey_auth::{RevocationSet, UnixTime};
use turnkey_fleet::{AdvertisedUrl, Fleet, RelayBeat, Revocation, Transport, UsageBytes};
use turnkey_relay::engine::Shared;
use turnkey_relay::udp::RelayAddrs;
use turnkey_relay::usage::{UsageDelta, UsageSink};

use crate::config::Settings;
use crate::serve::Listening;

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
            last: Mutex::new((Instant::now(), 0)),
        });
        let source = beat.clone();
        fleet.spawn_heartbeat(move || source.beat());
        fleet.spawn_usage_flusher(s.usage.flush_interval.min(std::time::Duration::from_secs(1)));
        tokio::spawn(apply_revocations(fleet.clone(), shared.revocations.clone()));
        Self { fleet, beat }
    }

    /// SIGTERM: the relay stops taking allocations; the fleet learns it at once (a draining
    /// relay is never handed out).
    pub(crate) async fn announce_draining(&self) {
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
    /// When the last beat was taken and `relayed` then.
    last: Mutex<(Instant, u64)>,
}

impl BeatSource {
    fn beat(&self) -> RelayBeat {
        let now = Instant::now();
        let total = self.relayed.load(Ordering::Relaxed);
        let bps = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let secs = now.duration_since(last.0).as_secs_f64();
            let bits = total.saturating_sub(last.1).saturating_mul(8);
            *last = (now, total);
            if secs > 0.0 {
                (bits as f64 / secs) as u64
            } else {
                0
            }
        };
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

/// The TURN URLs this relay advertises, one per listener: on `public_host` when it is set, else
/// the external IP, else the listener's own IP, else the relay IP (never an unspecified address).
pub(crate) fn advertised_urls(s: &Settings, listening: &Listening, relay: &RelayAddrs) -> Vec<AdvertisedUrl> {
    let public = s.issuer.public_host.trim();
    let named = (!public.is_empty() && public != turnkey_issuer::IssuerConfig::default().public_host).then_some(public);
    let host = |a: &SocketAddr| -> Option<String> {
        if let Some(h) = named {
            return Some(bracket(h));
        }
        let (external, bound) = if a.is_ipv4() { (relay.external_v4, relay.v4) } else { (relay.external_v6, relay.v6) };
        let ip = external.or((!a.ip().is_unspecified()).then_some(a.ip())).or(bound.filter(|ip| !ip.is_unspecified()));
        ip.map(|ip: IpAddr| bracket(&ip.to_string()))
    };
    let mut out: Vec<AdvertisedUrl> = Vec::new();
    let groups = [
        (Transport::Udp, &listening.udp, "turn", "udp"),
        (Transport::Tcp, &listening.tcp, "turn", "tcp"),
        (Transport::Tls, &listening.tls, "turns", "tcp"),
    ];
    for (transport, addrs, scheme, tp) in groups {
        for a in addrs {
            let Some(h) = host(a) else { continue };
            let url = format!("{scheme}:{h}:{}?transport={tp}", a.port());
            if !out.iter().any(|u| u.url == url) {
                out.push(AdvertisedUrl { transport, url });
            }
        }
    }
    out
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}
