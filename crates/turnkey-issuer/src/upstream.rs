//! The Cloudflare upstream client: `POST {base_url}/keys/{key_id}/credentials/generate-ice-servers`
//! with the upstream bearer token and `{"ttl": N}`.
//!
//! - **Cache:** one upstream credential serves every request whose TTL it outlives, until
//!   `refresh_threshold_secs` before its expiry (`fetch start + asked ttl`). A fetch asks for
//!   `max(ttl, the request's ttl)`. While the upstream fails, a cached credential that has not yet
//!   expired is still served, with the seconds it has left ([`Served::valid_for`]).
//! - **Single flight:** one fetch at a time. It runs as its own task, so it finishes (and its
//!   outcome is recorded) even when every request waiting for it has given up; requests that miss
//!   the cache while it runs wait for it and share its outcome, success or failure.
//! - **Retries:** up to `retries` tries per fetch, each bounded by `timeout_ms` (connect to last
//!   byte), with exponential backoff `backoff_base_ms * 2^(try-1)` between them. 4xx answers other
//!   than 408/429 are not retried (they will not get better).
//! - **Circuit breaker:** after `circuit_failure_threshold` consecutive failed fetches the circuit
//!   opens and requests fail fast (503) for `circuit_cooldown_secs`, counted from the moment the
//!   failure is recorded (the end of the fetch, read from the clock then); then one probe fetch is
//!   let through (half-open): success closes it, failure reopens it.
//! - **Merge mode** ([`UpstreamClient::merge_servers`]) waits for a fetch at most one
//!   `timeout_ms`, and not at all once a fetch has failed since the last success: it then starts
//!   the fetch in the background (so failures still count and open the circuit) and answers
//!   without the upstream.
//! - **No leakage:** the token is only put in the `Authorization` header of upstream requests;
//!   upstream bodies are parsed into [`IceServer`]s and otherwise dropped; logs carry statuses and
//!   failure kinds only. Redirects are not followed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{UpstreamConfig, ABSOLUTE_MAX_TTL};
use crate::error::{Error, UpstreamFailure};
use crate::ice_shape::{IceServer, IceServersArray};
use crate::metrics::IssuerMetrics;

/// Largest upstream body read.
const MAX_UPSTREAM_BODY: usize = 64 * 1024;

/// Upstream servers and how long their credential is still valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The upstream's ICE servers (array shape, as it sent them).
    pub servers: Vec<IceServer>,
    /// Seconds until the upstream credential expires (at least the requested TTL, unless the
    /// upstream is failing and an older cached credential is served).
    pub valid_for: u64,
}

/// The upstream client with its cache, single flight and circuit breaker. Cloning shares them.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: UpstreamConfig,
    url: String,
    token: String,
    http: reqwest::Client,
    state: Mutex<State>,
    metrics: IssuerMetrics,
    clock: Clock,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("url", &self.inner.url)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The outcome of one fetch, as its waiters see it.
type Outcome = Option<Result<Cached, UpstreamFailure>>;

#[derive(Debug, Clone)]
struct Cached {
    servers: Vec<IceServer>,
    expiry: u64,
}

#[derive(Default)]
struct State {
    cache: Option<Cached>,
    failures: u32,
    open_until: Option<u64>,
    flight: Option<watch::Receiver<Outcome>>,
}

enum TryError {
    Timeout,
    Fatal,
    Retryable,
}

/// What a request finds when it looks at the state.
enum Look {
    Hit(Served),
    Open,
    Wait { flight: watch::Receiver<Outcome>, healthy: bool },
}

impl UpstreamClient {
    /// Builds the client, reading the token from `token_file` or else the `token_env` variable.
    /// `clock` is the issuer's clock (cache expiry and the circuit's cooldown are read from it).
    pub fn new(cfg: UpstreamConfig, metrics: IssuerMetrics, clock: Clock) -> Result<Self, Error> {
        let token = if let Some(path) = &cfg.token_file {
            std::fs::read_to_string(path)
                .map_err(|_| Error::UpstreamToken(format!("cannot read {}", path.display())))?
                .trim()
                .to_owned()
        } else if let Some(var) = &cfg.token_env {
            std::env::var(var)
                .map_err(|_| Error::UpstreamToken(format!("environment variable {var} is not set")))?
                .trim()
                .to_owned()
        } else {
            return Err(Error::UpstreamToken("no token_file or token_env".into()));
        };
        if token.is_empty() {
            return Err(Error::UpstreamToken("the token is empty".into()));
        }
        Self::with_token(cfg, token, metrics, clock)
    }

    /// Builds the client with a token already in hand.
    pub fn with_token(cfg: UpstreamConfig, token: String, metrics: IssuerMetrics, clock: Clock) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("turnkey-issuer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        let url =
            format!("{}/keys/{}/credentials/generate-ice-servers", cfg.base_url.trim_end_matches('/'), cfg.key_id);
        let inner = Inner { cfg, url, token, http, state: Mutex::new(State::default()), metrics, clock };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.inner.cfg
    }

    /// Upstream ICE servers valid for `ttl` seconds: from the cache, or from the fetch in flight,
    /// or from a new fetch (waited for through all its tries). While the circuit is open, or when
    /// the fetch fails, a cached credential that has not expired is served (`valid_for` may then
    /// be below `ttl`), else the failure.
    pub async fn ice_servers(&self, ttl: u64) -> Result<Served, UpstreamFailure> {
        let flight = match self.look(ttl) {
            Look::Hit(served) => return Ok(served),
            Look::Open => return self.inner.stale().ok_or(UpstreamFailure::CircuitOpen),
            Look::Wait { flight, .. } => flight,
        };
        match outcome(flight).await {
            Ok(c) => {
                let now = (self.inner.clock)().0;
                Ok(Served { valid_for: c.expiry.saturating_sub(now), servers: c.servers })
            }
            Err(kind) => self.inner.stale().ok_or(kind),
        }
    }

    /// For merge mode: upstream servers valid for at least `ttl` seconds, or `None` without
    /// delaying the answer much. Waits for a fetch at most one `timeout_ms`, and only while the
    /// upstream is healthy (no failed fetch since the last success, circuit closed); otherwise
    /// it starts the fetch in the background and returns at once.
    pub async fn merge_servers(&self, ttl: u64) -> Option<Vec<IceServer>> {
        let (flight, healthy) = match self.look(ttl) {
            Look::Hit(served) => return Some(served.servers),
            Look::Open => return self.inner.stale().filter(|s| s.valid_for >= ttl).map(|s| s.servers),
            Look::Wait { flight, healthy } => (flight, healthy),
        };
        if healthy {
            let limit = Duration::from_millis(self.inner.cfg.timeout_ms);
            if tokio::time::timeout(limit, outcome(flight)).await.is_err() {
                tracing::warn!("upstream slower than timeout_ms in merge mode; answering with local servers only");
            }
        }
        self.inner.stale().filter(|s| s.valid_for >= ttl).map(|s| s.servers)
    }

    /// Whether the breaker is open now (fail fast).
    pub fn circuit_is_open(&self) -> bool {
        let now = (self.inner.clock)().0;
        self.inner.lock().open_until.is_some_and(|until| now < until)
    }

    /// One look at the state under the lock: a cache hit, an open circuit, or the fetch to wait
    /// for (joined, or started here).
    fn look(&self, ttl: u64) -> Look {
        let inner = &self.inner;
        let now = (inner.clock)().0;
        let mut st = inner.lock();
        if let Some(c) = &st.cache {
            let before_refresh = now.saturating_add(inner.cfg.refresh_threshold_secs) < c.expiry;
            if before_refresh && now.saturating_add(ttl) <= c.expiry {
                inner.count("cached");
                return Look::Hit(Served { servers: c.servers.clone(), valid_for: c.expiry - now });
            }
        }
        let healthy = st.failures == 0 && st.open_until.is_none();
        // A flight whose task is gone without an outcome (a panic, the runtime ending) is not
        // waited for: a new one starts.
        if let Some(flight) = st.flight.as_ref().filter(|f| f.has_changed().is_ok()) {
            inner.count("shared");
            return Look::Wait { flight: flight.clone(), healthy };
        }
        if st.open_until.is_some_and(|until| now < until) {
            inner.count("circuit_open");
            return Look::Open;
        }
        let (tx, rx) = watch::channel(None);
        st.flight = Some(rx.clone());
        drop(st);
        let ask = inner.cfg.ttl.max(ttl).min(ABSOLUTE_MAX_TTL);
        let me = self.inner.clone();
        tokio::spawn(async move {
            let result = me.fetch(ask).await;
            let _ = tx.send(Some(me.record(now, ask, result)));
        });
        Look::Wait { flight: rx, healthy }
    }
}

/// Waits for the fetch behind `flight` to finish.
async fn outcome(mut flight: watch::Receiver<Outcome>) -> Result<Cached, UpstreamFailure> {
    match flight.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Err(UpstreamFailure::BadGateway)),
        // The fetch task is gone without an outcome (runtime shutting down).
        Err(_) => Err(UpstreamFailure::BadGateway),
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, result: &str) {
        self.metrics.upstream_requests.with_label_values(&[result]).inc();
    }

    /// The cached servers if they have not expired, with the seconds they have left.
    fn stale(&self) -> Option<Served> {
        let now = (self.clock)().0;
        let st = self.lock();
        let c = st.cache.as_ref()?;
        (now < c.expiry).then(|| Served { servers: c.servers.clone(), valid_for: c.expiry - now })
    }

    /// Records a fetch's outcome: the cache (expiry counted from the fetch's start, `started`,
    /// which is conservative) or a failure (the cooldown counted from now, when it is recorded).
    fn record(
        &self,
        started: u64,
        ttl: u64,
        result: Result<Vec<IceServer>, UpstreamFailure>,
    ) -> Result<Cached, UpstreamFailure> {
        let now = (self.clock)().0;
        let mut st = self.lock();
        st.flight = None;
        match result {
            Ok(servers) => {
                self.count("ok");
                let cached = Cached { servers, expiry: started.saturating_add(ttl) };
                st.cache = Some(cached.clone());
                st.failures = 0;
                st.open_until = None;
                self.metrics.circuit_open.set(0);
                Ok(cached)
            }
            Err(kind) => {
                self.count(if kind == UpstreamFailure::Timeout { "timeout" } else { "error" });
                st.failures = st.failures.saturating_add(1);
                // A failed half-open probe (open_until set) reopens at once.
                if st.failures >= self.cfg.circuit_failure_threshold || st.open_until.is_some() {
                    st.open_until = Some(now.saturating_add(self.cfg.circuit_cooldown_secs));
                    self.metrics.circuit_open.set(1);
                    tracing::warn!(
                        failures = st.failures,
                        cooldown_secs = self.cfg.circuit_cooldown_secs,
                        "upstream circuit opened"
                    );
                }
                Err(kind)
            }
        }
    }

    async fn fetch(&self, ttl: u64) -> Result<Vec<IceServer>, UpstreamFailure> {
        let tries = self.cfg.retries.max(1);
        let mut last = UpstreamFailure::BadGateway;
        for attempt in 1..=tries {
            if attempt > 1 {
                let factor = 1u64 << (attempt - 2).min(16);
                tokio::time::sleep(Duration::from_millis(self.cfg.backoff_base_ms.saturating_mul(factor))).await;
            }
            match self.try_once(ttl).await {
                Ok(v) => return Ok(v),
                Err(TryError::Timeout) => {
                    tracing::warn!(attempt, "upstream request timed out");
                    last = UpstreamFailure::Timeout;
                }
                Err(TryError::Retryable) => last = UpstreamFailure::BadGateway,
                Err(TryError::Fatal) => return Err(UpstreamFailure::BadGateway),
            }
        }
        Err(last)
    }

    async fn try_once(&self, ttl: u64) -> Result<Vec<IceServer>, TryError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                TryError::Timeout
            } else {
                tracing::warn!(kind = if e.is_connect() { "connect" } else { "transport" }, "upstream request failed");
                TryError::Retryable
            }
        };
        let mut resp = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "ttl": ttl }))
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status();
        if !status.is_success() {
            tracing::warn!(status = status.as_u16(), "upstream answered with an error status");
            let retry = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            return Err(if retry { TryError::Retryable } else { TryError::Fatal });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_UPSTREAM_BODY {
                tracing::warn!("upstream body too large");
                return Err(TryError::Retryable);
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body).ok_or_else(|| {
            tracing::warn!("upstream body is not the documented iceServers shape");
            TryError::Retryable
        })
    }
}

/// Parses and validates an upstream answer: `{"iceServers": [...]}` with only `stun:`, `turn:`
/// and `turns:` URLs and at least one entry carrying a username and credential.
fn parse(body: &[u8]) -> Option<Vec<IceServer>> {
    let parsed: IceServersArray = serde_json::from_slice(body).ok()?;
    let servers = parsed.ice_servers;
    let url_ok =
        |u: &String| u.len() <= 512 && (u.starts_with("stun:") || u.starts_with("turn:") || u.starts_with("turns:"));
    let ok = !servers.is_empty()
        && servers.len() <= 16
        && servers.iter().all(|s| !s.urls.is_empty() && s.urls.len() <= 32 && s.urls.iter().all(url_ok))
        && servers.iter().any(|s| s.username.is_some() && s.credential.is_some());
    ok.then_some(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_the_documented_shape_only() {
        let good = br#"{"iceServers":[{"urls":["stun:stun.cloudflare.com:3478"]},{"urls":["turn:turn.cloudflare.com:3478?transport=udp"],"username":"u","credential":"c"}]}"#;
        assert_eq!(parse(good).unwrap().len(), 2);
        for bad in [
            &br#"{"iceServers":[]}"#[..],
            br#"{"iceServers":[{"urls":["stun:a"]}]}"#,
            br#"{"iceServers":[{"urls":["http://evil"],"username":"u","credential":"c"}]}"#,
            br#"{"iceServers":{"urls":"turn:a","username":"u","credential":"c"}}"#,
            b"<html>",
        ] {
            assert!(parse(bad).is_none());
        }
    }
}
