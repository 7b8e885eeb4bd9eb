//! The Cloudflare upstream client: `POST {base_url}/keys/{key_id}/credentials/generate-ice-servers`
//! with the upstream bearer token and `{"ttl": N}`.
//!
//! - **Cache:** one upstream credential serves every request until `refresh_threshold_secs` before
//!   its expiry (`fetch time + ttl`); concurrent misses share one fetch (single flight). While the
//!   upstream fails, a cached credential that has not yet expired is still served.
//! - **Retries:** up to `retries` tries per fetch, each bounded by `timeout_ms`, with exponential
//!   backoff `backoff_base_ms * 2^(try-1)` between them. 4xx answers other than 408/429 are not
//!   retried (they will not get better).
//! - **Circuit breaker:** after `circuit_failure_threshold` consecutive failed fetches the circuit
//!   opens and requests fail fast (503) for `circuit_cooldown_secs`; then one probe fetch is let
//!   through (half-open): success closes it, failure reopens it.
//! - **No leakage:** the token is only put in the `Authorization` header of upstream requests;
//!   upstream bodies are parsed into [`IceServer`]s and otherwise dropped; logs carry statuses and
//!   failure kinds only. Redirects are not followed.

use std::sync::Mutex;
use std::time::Duration;

use turnkey_auth::UnixTime;

use crate::config::UpstreamConfig;
use crate::error::{Error, UpstreamFailure};
use crate::ice::{IceServer, IceServersArray};
use crate::metrics::IssuerMetrics;

/// Largest upstream body read.
const MAX_UPSTREAM_BODY: usize = 64 * 1024;

/// The upstream client with its cache and circuit breaker.
pub struct UpstreamClient {
    cfg: UpstreamConfig,
    url: String,
    token: String,
    http: reqwest::Client,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    metrics: IssuerMetrics,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").field("url", &self.url).field("token", &"<redacted>").finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    cache: Option<(Vec<IceServer>, u64)>,
    failures: u32,
    open_until: Option<u64>,
}

enum TryError {
    Timeout,
    Fatal,
    Retryable,
}

impl UpstreamClient {
    /// Builds the client, reading the token from `token_file` or else the `token_env` variable.
    pub fn new(cfg: UpstreamConfig, metrics: IssuerMetrics) -> Result<Self, Error> {
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
        Self::with_token(cfg, token, metrics)
    }

    /// Builds the client with a token already in hand.
    pub fn with_token(cfg: UpstreamConfig, token: String, metrics: IssuerMetrics) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("turnkey-issuer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::HttpClient(e.to_string()))?;
        let url =
            format!("{}/keys/{}/credentials/generate-ice-servers", cfg.base_url.trim_end_matches('/'), cfg.key_id);
        Ok(Self {
            cfg,
            url,
            token,
            http,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Upstream ICE servers (array shape), from the cache or a fresh fetch.
    pub async fn ice_servers(&self, now: UnixTime) -> Result<Vec<IceServer>, UpstreamFailure> {
        if let Some(v) = self.fresh(now) {
            self.count("cached");
            return Ok(v);
        }
        let _flight = self.fetch_lock.lock().await;
        if let Some(v) = self.fresh(now) {
            self.count("cached");
            return Ok(v);
        }
        if self.circuit_is_open(now) {
            self.count("circuit_open");
            return self.stale(now).ok_or(UpstreamFailure::CircuitOpen);
        }
        match self.fetch().await {
            Ok(servers) => {
                self.count("ok");
                let mut st = self.lock();
                st.cache = Some((servers.clone(), now.0.saturating_add(self.cfg.ttl)));
                st.failures = 0;
                st.open_until = None;
                self.metrics.circuit_open.set(0);
                Ok(servers)
            }
            Err(kind) => {
                self.count(if kind == UpstreamFailure::Timeout { "timeout" } else { "error" });
                {
                    let mut st = self.lock();
                    st.failures = st.failures.saturating_add(1);
                    // A failed half-open probe (open_until set) reopens at once.
                    if st.failures >= self.cfg.circuit_failure_threshold || st.open_until.is_some() {
                        st.open_until = Some(now.0.saturating_add(self.cfg.circuit_cooldown_secs));
                        self.metrics.circuit_open.set(1);
                        tracing::warn!(
                            failures = st.failures,
                            cooldown_secs = self.cfg.circuit_cooldown_secs,
                            "upstream circuit opened"
                        );
                    }
                }
                self.stale(now).ok_or(kind)
            }
        }
    }

    /// Whether the breaker is open at `now` (fail fast).
    pub fn circuit_is_open(&self, now: UnixTime) -> bool {
        self.lock().open_until.is_some_and(|until| now.0 < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, result: &str) {
        self.metrics.upstream_requests.with_label_values(&[result]).inc();
    }

    /// The cached servers if they are before the refresh point.
    fn fresh(&self, now: UnixTime) -> Option<Vec<IceServer>> {
        let st = self.lock();
        let (servers, expiry) = st.cache.as_ref()?;
        (now.0.saturating_add(self.cfg.refresh_threshold_secs) < *expiry).then(|| servers.clone())
    }

    /// The cached servers if they have not expired (served while the upstream fails).
    fn stale(&self, now: UnixTime) -> Option<Vec<IceServer>> {
        let st = self.lock();
        let (servers, expiry) = st.cache.as_ref()?;
        (now.0 < *expiry).then(|| servers.clone())
    }

    async fn fetch(&self) -> Result<Vec<IceServer>, UpstreamFailure> {
        let tries = self.cfg.retries.max(1);
        let mut last = UpstreamFailure::BadGateway;
        for attempt in 1..=tries {
            if attempt > 1 {
                let factor = 1u64 << (attempt - 2).min(16);
                tokio::time::sleep(Duration::from_millis(self.cfg.backoff_base_ms.saturating_mul(factor))).await;
            }
            match self.try_once().await {
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

    async fn try_once(&self) -> Result<Vec<IceServer>, TryError> {
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
            .json(&serde_json::json!({ "ttl": self.cfg.ttl }))
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
