//! The credential issuer as a client sees it: `POST {url}/keys/{id}/credentials/generate-ice-servers`
//! (Cloudflare's API shape) over one HTTP client with keep-alive, every fetch counted and timed
//! for the report.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::report::{new_histogram, IssuerReport};
use crate::LoadError;

/// The issuer of a run: where to ask, with which token, and what the asking cost.
#[derive(Debug)]
pub struct IssuerClient {
    http: reqwest::Client,
    url: String,
    endpoint: String,
    token: String,
    ttl: u64,
    stats: Mutex<FetchStats>,
}

#[derive(Debug)]
struct FetchStats {
    fetches: u64,
    failed: u64,
    times_us: Histogram<u64>,
}

impl IssuerClient {
    /// A client for the issuer at `url` (base URL, e.g. `https://rtc.live.cloudflare.com/v1/turn`),
    /// key `key_id`, bearer `token`, asking for credentials valid `ttl` seconds; each fetch may
    /// take `timeout`; up to `connections` idle connections are kept for reuse.
    pub fn new(
        url: &str,
        key_id: &str,
        token: &str,
        ttl: u64,
        timeout: Duration,
        connections: usize,
    ) -> Result<Self, LoadError> {
        let base = url.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| LoadError::Issuer(e.to_string()))?;
        Ok(Self {
            http,
            url: base.to_owned(),
            endpoint: format!("{base}/keys/{key_id}/credentials/generate-ice-servers"),
            token: token.to_owned(),
            ttl,
            stats: Mutex::new(FetchStats { fetches: 0, failed: 0, times_us: new_histogram()? }),
        })
    }

    /// POSTs `{"ttl": ttl}` and returns the answer's body (a 2xx answer). Counted and timed; an
    /// HTTP error or an unreachable issuer is a [`LoadError::Issuer`].
    pub async fn fetch(&self) -> Result<Vec<u8>, LoadError> {
        let t0 = Instant::now();
        let r = self.fetch_inner().await;
        if let Ok(mut s) = self.stats.lock() {
            s.fetches += 1;
            match &r {
                Ok(_) => s.times_us.saturating_record((t0.elapsed().as_micros() as u64).max(1)),
                Err(_) => s.failed += 1,
            }
        }
        r
    }

    async fn fetch_inner(&self) -> Result<Vec<u8>, LoadError> {
        let endpoint = &self.endpoint;
        let resp = self
            .http
            .post(endpoint)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "ttl": self.ttl }))
            .send()
            .await
            .map_err(|e| LoadError::Issuer(format!("POST {endpoint}: {}", e.without_url())))?;
        let status = resp.status();
        if !status.is_success() {
            // The body is not echoed: an issuer's error bodies are not ours to print.
            return Err(LoadError::Issuer(format!("POST {endpoint}: HTTP {status}")));
        }
        let body = resp.bytes().await.map_err(|e| LoadError::Issuer(format!("reading answer: {}", e.without_url())))?;
        Ok(body.to_vec())
    }

    /// The fetches so far, for the report.
    pub fn report(&self) -> IssuerReport {
        let mut r = IssuerReport { url: self.url.clone(), ..IssuerReport::default() };
        if let Ok(s) = self.stats.lock() {
            r.fetches = s.fetches;
            r.failed = s.failed;
            r.set_times(&s.times_us);
        }
        r
    }
}
