//! Fleet mode in the issuer: relays run in other processes and the issuer hands out healthy ones
//! from a shared registry. This crate knows nothing of Redis nor of the relay: the binary
//! implements [`RelayDirectory`] (the handout and `GET /v1/fleet`, from a listing it refreshes
//! in the background, never per request) and [`FleetState`] (the app endpoints' shared rate limit
//! and fleet-wide revocations) over its fleet handle, and hands them in through
//! [`crate::IssuerDeps::fleet`] together with a shared [`crate::KeyStore`].
//!
//! With a directory, an answer carries the URLs of up to `relays_per_answer` relays
//! ([`RelayDirectory::choose`]: the request's `region` or the issuer's own first, then the least
//! loaded; never draining or stale ones), one TURN entry holding every chosen relay's URLs with
//! one credential (every relay shares the secret) and a STUN entry derived from their UDP URLs.
//! No healthy relay: the upstream when configured, else 503 (the app endpoints' fallback shape).

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::error::ApiError;
use crate::ratelimit::Verdict;
use turnkey_types::{NodeId, Region, Transport, TurnUrl, UrlKind};

/// A boxed future, so the traits below stay object safe.
pub type FleetFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One relay chosen for an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoutRelay {
    /// Its node id.
    pub node_id: NodeId,
    /// Its advertised `turn:`/`turns:` URLs (UDP first, then TCP, then TLS).
    pub urls: Vec<String>,
}

/// One relay as `GET /v1/fleet` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRelay {
    /// Its node id.
    pub node_id: NodeId,
    /// Its region, if any.
    pub region: Option<Region>,
    /// Its advertised URLs.
    pub urls: Vec<String>,
    /// Live allocations.
    pub allocations: u64,
    /// Allocations it accepts in total.
    pub allocation_capacity: u64,
    /// Relayed bits per second.
    pub relayed_bps: u64,
    /// Bandwidth it is meant to carry, if configured.
    pub bandwidth_capacity_bps: Option<u64>,
    /// Load relative to capacity (0.0 idle, 1.0 full; `null` when it has no capacity).
    pub load: Option<f64>,
    /// Whether it is draining.
    pub draining: bool,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Whether the issuer hands it out now (fresh heartbeat, not draining, below capacity).
    pub healthy: bool,
}

/// The body of `GET /v1/fleet`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetListing {
    /// This issuer's node id.
    pub node_id: NodeId,
    /// This issuer's region, if any.
    pub region: Option<Region>,
    /// Whether the shared store answered the last call.
    pub redis_up: bool,
    /// Whether the listing is the last one read before the shared store became unreachable.
    pub cached: bool,
    /// Every relay with a live heartbeat, by node id.
    pub relays: Vec<FleetRelay>,
}

/// The relays the issuer hands out (implemented by the binary over the fleet registry).
/// Both methods read a local copy: no I/O.
pub trait RelayDirectory: Send + Sync + 'static {
    /// Up to `count` relays for one answer, best first; `region` is the request's, `None` for
    /// the issuer's own. Empty when no relay is healthy (or the copy is too old).
    fn choose(&self, region: Option<&Region>, count: usize) -> Vec<HandoutRelay>;

    /// Every relay the registry lists, with health and load.
    fn listing(&self) -> FleetListing;
}

/// Shared state the issuer writes or counts in the fleet (implemented by the binary).
pub trait FleetState: Send + Sync + 'static {
    /// Counts one app request from `client` against `limit` per `window_secs` across every
    /// issuer. `None`: the shared store is unreachable (the issuer counts locally instead).
    fn rate_limit<'a>(&'a self, client: &'a str, limit: u32, window_secs: u64) -> FleetFuture<'a, Option<Verdict>>;

    /// Revokes `username` (valid until `expiry`, Unix seconds) on every relay. `false`: it could
    /// not be published (the revocation holds locally only; the request answers 503).
    fn revoke<'a>(&'a self, username: &'a str, expiry: u64) -> FleetFuture<'a, bool>;
}

/// `?region=` of a credential request: absent, or 1-64 characters of `A-Z a-z 0-9 . _ -`
/// (given more than once, every value must agree); anything else is a 400.
pub(crate) fn requested_region(query: Option<&str>) -> Result<Option<Region>, ApiError> {
    const MSG: &str = "region must be 1-64 characters of A-Z a-z 0-9 . _ -";
    let mut region: Option<Region> = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "region" {
            continue;
        }
        let value = Region::new(value).map_err(|_| ApiError::BadRequest(MSG))?;
        if region.as_ref().is_some_and(|r| *r != value) {
            return Err(ApiError::BadRequest(MSG));
        }
        region = Some(value);
    }
    Ok(region)
}

/// The `stun:host:port` of a `turn:host:port?transport=udp` URL (STUN runs on a relay's UDP
/// TURN port).
pub(crate) fn stun_of(turn_url: &str) -> Option<String> {
    let u: TurnUrl = turn_url.parse().ok()?;
    (u.kind == UrlKind::Turn(Transport::Udp)).then(|| TurnUrl::new(UrlKind::Stun, &u.host, u.port).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_parameter() {
        assert_eq!(requested_region(None).unwrap(), None);
        assert_eq!(requested_region(Some("shape=array")).unwrap(), None);
        assert_eq!(requested_region(Some("region=eu-west.1")).unwrap().as_ref().map(Region::as_str), Some("eu-west.1"));
        assert_eq!(requested_region(Some("region=eu&region=eu")).unwrap().as_ref().map(Region::as_str), Some("eu"));
        for bad in ["region=", "region", "region=e%20u", "region=eu&region=us", "region=a:b"] {
            assert!(requested_region(Some(bad)).is_err(), "{bad}");
        }
        assert!(requested_region(Some(&format!("region={}", "a".repeat(65)))).is_err());
    }

    #[test]
    fn stun_urls_come_from_udp_turn_urls() {
        assert_eq!(stun_of("turn:10.0.0.1:3478?transport=udp").as_deref(), Some("stun:10.0.0.1:3478"));
        assert_eq!(stun_of("turn:[::1]:3478?transport=udp").as_deref(), Some("stun:[::1]:3478"));
        assert_eq!(stun_of("turn:h:3478?transport=tcp"), None);
        assert_eq!(stun_of("turns:h:5349?transport=tcp"), None);
    }
}
