//! [`IssuerState`]: what the router's handlers share, built from [`IssuerDeps`] (what the binary
//! or a test hands in: configuration, data directory, secrets, the shared revocation set, the
//! relay's status, the metrics registry and the clock).

use std::path::PathBuf;
use std::sync::Arc;

use turnkey_auth::{RevocationSet, SecretRing, UnixTime};

use crate::clock::Clock;
use crate::config::IssuerConfig;
use crate::error::Error;
use crate::fleet::{FleetState, RelayDirectory};
use crate::ice::Advertised;
use crate::keys::{AdminToken, KeyStore};
use crate::metrics::IssuerMetrics;
use crate::ratelimit::RateLimiter;
use crate::revocations::RevocationStore;
use crate::sessions::SessionSource;
use crate::upstream::UpstreamClient;

/// Whether the local relays can serve new allocations. The binary implements it over its relay;
/// with relays in other processes it reflects their shared health.
pub trait RelayStatus: Send + Sync + 'static {
    /// Relay up, not draining, not at capacity.
    fn ready(&self) -> bool;

    /// Whether key `key_id` has used up its monthly bandwidth cap (then the upstream, if any,
    /// serves it, else the app endpoints answer 429 "Bandwidth limit reached"). Default: never.
    fn bandwidth_exhausted(&self, key_id: &str) -> bool {
        let _ = key_id;
        false
    }

    /// What key `key_id` relayed this period, for `GET /api/bandwidth-status` and the cap check
    /// against the key file's `monthly_bandwidth_bytes`. `None`: no usage accounting here (the
    /// endpoint answers 503). Default: `None`.
    fn bandwidth(&self, key_id: &str) -> Option<BandwidthUsage> {
        let _ = key_id;
        None
    }
}

/// Measured usage of one key in the current period (see [`RelayStatus::bandwidth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthUsage {
    /// Payload bytes relayed this period, both directions.
    pub used_bytes: u64,
    /// When the period ends and the total resets (Unix seconds).
    pub reset_at: u64,
    /// Live allocations of the key's credentials.
    pub active_allocations: u64,
}

/// A [`RelayStatus`] that is always the same (tests, or an issuer with no relay: `false`).
#[derive(Debug, Clone, Copy)]
pub struct FixedRelayStatus(pub bool);

impl RelayStatus for FixedRelayStatus {
    fn ready(&self) -> bool {
        self.0
    }
}

/// What the issuer is built from.
pub struct IssuerDeps {
    /// The `[issuer]` configuration (validated by [`IssuerState::new`]).
    pub config: IssuerConfig,
    /// The data directory (`keys/`, `revocations.json`).
    pub data_dir: PathBuf,
    /// The TURN REST secrets the relay accepts (newest signs).
    pub secrets: SecretRing,
    /// The revocation set shared with the relay.
    pub revocations: RevocationSet,
    /// The relay's readiness.
    pub relay: Arc<dyn RelayStatus>,
    /// Where the issuer's metrics are registered.
    pub registry: prometheus::Registry,
    /// The clock ([`system_clock`] in production).
    pub clock: Clock,
    /// The key the app endpoints issue for when `config.app.key` is unset (the binary passes
    /// the embedded default key's id).
    pub app_key: Option<String>,
    /// Fleet mode: the relay directory, shared state and shared keys (`None`: one process).
    pub fleet: Option<FleetDeps>,
    /// Where `/v1/sessions` reads live sessions (`None`: no relay reports here, 501).
    pub sessions: Option<Arc<dyn SessionSource>>,
}

/// What fleet mode adds (see [`crate::fleet`]).
#[derive(Clone)]
pub struct FleetDeps {
    /// The relays to hand out.
    pub directory: Arc<dyn RelayDirectory>,
    /// The shared rate limit and revocations.
    pub state: Arc<dyn FleetState>,
    /// The fleet's keys ([`KeyStore::shared`], kept current by the binary); used instead of the
    /// data directory's `keys/`.
    pub keys: KeyStore,
}

impl std::fmt::Debug for FleetDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetDeps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for IssuerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerDeps")
            .field("data_dir", &self.data_dir)
            .field("app_key", &self.app_key)
            .finish_non_exhaustive()
    }
}

/// The shared state of the router. Cloning is cheap.
#[derive(Clone)]
pub struct IssuerState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for IssuerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerState").finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub config: IssuerConfig,
    pub advertised: Advertised,
    pub secrets: SecretRing,
    pub keys: KeyStore,
    pub revocations: RevocationStore,
    pub relay: Arc<dyn RelayStatus>,
    pub upstream: Option<UpstreamClient>,
    pub metrics: IssuerMetrics,
    pub limiter: RateLimiter,
    pub clock: Clock,
    pub app_key: Option<String>,
    pub directory: Option<Arc<dyn RelayDirectory>>,
    pub fleet: Option<Arc<dyn FleetState>>,
    pub sessions: Option<Arc<dyn SessionSource>>,
    pub admin_token: Option<AdminToken>,
}

impl Inner {
    /// The key the app endpoints issue for: configured, else the one the binary passed, else
    /// (fleet mode) the fleet's oldest key.
    pub(crate) fn app_key(&self) -> Option<String> {
        self.app_key.clone().or_else(|| self.directory.as_ref().and_then(|_| self.keys.oldest()).map(|k| k.id))
    }
}

impl IssuerState {
    /// Opens the key store, loads persisted revocations into the
    /// shared set, reads the upstream token and registers the metrics.
    pub fn new(deps: IssuerDeps) -> Result<Self, Error> {
        let now = (deps.clock)();
        let keys = match &deps.fleet {
            Some(f) => f.keys.clone(),
            None => KeyStore::open(&deps.data_dir)?,
        };
        let mut revocations =
            RevocationStore::load(&deps.data_dir, deps.revocations, now, deps.config.max_revocations)?;
        if deps.fleet.is_some() {
            // The fleet publishes every revocation to every relay (api.rs), watched file or not.
            revocations = revocations.delivered_elsewhere();
        }
        let metrics = IssuerMetrics::register(&deps.registry)?;
        let upstream = match &deps.config.upstream {
            Some(u) => Some(UpstreamClient::new(u.clone(), metrics.clone(), deps.clock.clone())?),
            None => None,
        };
        let app_key = deps.config.app.key.clone().map(String::from).or(deps.app_key);
        let admin_token = deps.config.admin_token_file.as_deref().map(AdminToken::read).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                advertised: Advertised::new(&deps.config.public_host, &deps.config.advertise),
                limiter: RateLimiter::new(deps.config.app.rate_limit.clone()),
                config: deps.config,
                secrets: deps.secrets,
                keys,
                revocations,
                relay: deps.relay,
                upstream,
                metrics,
                clock: deps.clock,
                app_key,
                directory: deps.fleet.as_ref().map(|f| f.directory.clone()),
                fleet: deps.fleet.map(|f| f.state),
                sessions: deps.sessions,
                admin_token,
            }),
        })
    }

    /// The key store (for `turnkey keys ...` against a running state, or tests).
    pub fn keys(&self) -> &KeyStore {
        &self.inner.keys
    }

    /// The metrics.
    pub fn metrics(&self) -> &IssuerMetrics {
        &self.inner.metrics
    }

    /// The current time per the state's clock.
    pub fn now(&self) -> UnixTime {
        (self.inner.clock)()
    }

    /// Periodic housekeeping: rescans the key directory, drops expired revocations (rewriting the
    /// file) and finished rate-limit windows. [`crate::run_maintenance`] calls it in a loop.
    pub fn maintain(&self) {
        let now = self.now();
        if let Err(e) = self.inner.keys.reload() {
            tracing::warn!(error = %e, "key reload failed");
        }
        if let Err(e) = self.inner.revocations.purge(now) {
            tracing::warn!(error = %e, "revocation purge failed");
        }
        self.inner.limiter.purge(now);
    }
}
