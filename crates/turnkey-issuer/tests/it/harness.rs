//! Starts the real issuer router on 127.0.0.1:0 with a hand-driven clock, a switchable relay
//! status and two keys, and offers small HTTP helpers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use reqwest::header::HeaderMap;
use serde_json::Value;
use tempfile::TempDir;
use turnkey_auth::{RevocationSet, Secret, SecretRing, UnixTime};
use turnkey_issuer::{
    router, serve, BandwidthUsage, FleetDeps, IssuerConfig, IssuerDeps, IssuerState, KeyOptions, KeyStore, NewKey,
    RelayStatus, UpstreamConfig,
};

use crate::cloudflare_double::CloudflareDouble;

/// The time the hand-driven clock starts at.
pub const T0: u64 = 1_700_000_000;

/// A relay status the test flips.
#[derive(Debug, Default)]
pub struct TestRelay {
    pub ready: AtomicBool,
    pub exhausted: AtomicBool,
    pub usage: std::sync::Mutex<Option<BandwidthUsage>>,
}

impl RelayStatus for TestRelay {
    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
    fn bandwidth_exhausted(&self, _key_id: &str) -> bool {
        self.exhausted.load(Ordering::SeqCst)
    }
    fn bandwidth(&self, _key_id: &str) -> Option<BandwidthUsage> {
        *self.usage.lock().unwrap()
    }
}

/// A running issuer.
pub struct Issuer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub state: IssuerState,
    pub dir: TempDir,
    pub clock: Arc<AtomicU64>,
    pub relay: Arc<TestRelay>,
    /// The app key (also usable on the Cloudflare-compatible API).
    pub key: NewKey,
    /// A second key.
    pub other: NewKey,
    pub ring: SecretRing,
    pub revocations: RevocationSet,
    pub registry: prometheus::Registry,
    pub http: reqwest::Client,
}

/// What a response was, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    /// Every header value and the body, for leak checks.
    pub fn everything(&self) -> String {
        let mut s = self.text.clone();
        for (k, v) in &self.headers {
            s.push_str(&format!("\n{k}: {}", v.to_str().unwrap_or("")));
        }
        s
    }
}

/// An issuer whose upstream is a fresh Cloudflare double in `mode`, its section adjusted by
/// `tweak`.
pub async fn with_upstream(
    mode: turnkey_issuer::UpstreamMode,
    tweak: impl FnOnce(&mut UpstreamConfig),
) -> (Issuer, CloudflareDouble) {
    let cf = CloudflareDouble::start().await;
    let cf2 = cf.clone();
    let iss = Issuer::start(move |c, dir| {
        let mut u = upstream_config(&cf2, dir);
        u.mode = mode;
        tweak(&mut u);
        c.upstream = Some(u);
    })
    .await;
    (iss, cf)
}

/// The upstream section pointing at `cf`, with test-sized timings.
pub fn upstream_config(cf: &CloudflareDouble, dir: &std::path::Path) -> UpstreamConfig {
    let token_file = dir.join("cf-token");
    std::fs::write(&token_file, format!("{}\n", cf.token)).unwrap();
    UpstreamConfig {
        base_url: cf.base_url.clone(),
        key_id: cf.key_id.clone(),
        token_file: Some(token_file),
        ttl: 86_400,
        timeout_ms: 300,
        retries: 3,
        backoff_base_ms: 1,
        circuit_failure_threshold: 3,
        circuit_cooldown_secs: 30,
        ..UpstreamConfig::default()
    }
}

impl Issuer {
    /// Starts an issuer; `configure` edits the config (the data directory is given so the
    /// upstream token file can be put there).
    pub async fn start(configure: impl FnOnce(&mut IssuerConfig, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(dir.path()).unwrap();
        let key = keys.create(KeyOptions::default(), T0).unwrap();
        let other = keys.create(KeyOptions::default(), T0).unwrap();
        let mut config = IssuerConfig { public_host: "turn.test.example".into(), ..IssuerConfig::default() };
        config.app.key = Some(turnkey_types::KeyId::new(key.id.clone()).unwrap());
        configure(&mut config, dir.path());
        Self::start_with(dir, key, other, config).await
    }

    /// Starts an issuer on an existing data directory.
    pub async fn start_with(dir: TempDir, key: NewKey, other: NewKey, config: IssuerConfig) -> Self {
        Self::start_full(dir, key, other, config, None).await
    }

    /// Starts an issuer in fleet mode: its keys are `fleet.keys` (the caller put `key` and
    /// `other` there), its relays come from `fleet.directory`.
    pub async fn start_fleet(key: NewKey, other: NewKey, config: IssuerConfig, fleet: FleetDeps) -> Self {
        Self::start_full(tempfile::tempdir().unwrap(), key, other, config, Some(fleet)).await
    }

    async fn start_full(
        dir: TempDir,
        key: NewKey,
        other: NewKey,
        config: IssuerConfig,
        fleet: Option<FleetDeps>,
    ) -> Self {
        let clock = Arc::new(AtomicU64::new(T0));
        let relay = Arc::new(TestRelay::default());
        relay.ready.store(true, Ordering::SeqCst);
        let ring = SecretRing::new(vec![Secret::new("issuer-test-secret")]).unwrap();
        let revocations = RevocationSet::new();
        let registry = prometheus::Registry::new();
        let c = clock.clone();
        let state = IssuerState::new(IssuerDeps {
            sessions: None,
            config,
            data_dir: dir.path().to_owned(),
            secrets: ring.clone(),
            revocations: revocations.clone(),
            relay: relay.clone(),
            registry: registry.clone(),
            clock: Arc::new(move || UnixTime(c.load(Ordering::SeqCst))),
            app_key: None,
            fleet,
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let r = router(state.clone());
        tokio::spawn(async move {
            serve(listener, r, turnkey_issuer::HttpLimits::default(), std::future::pending()).await.unwrap();
        });
        Self { base, state, dir, clock, relay, key, other, ring, revocations, registry, http: reqwest::Client::new() }
    }

    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    pub fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn set_ready(&self, ready: bool) {
        self.relay.ready.store(ready, Ordering::SeqCst);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn generate_path(&self, key_id: &str, what: &str) -> String {
        format!("/v1/turn/keys/{key_id}/credentials/{what}")
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.unwrap();
        Reply { status: resp.status().as_u16(), headers: resp.headers().clone(), text: resp.text().await.unwrap() }
    }

    /// `POST path` with a bearer token and a JSON body (`None`: no body at all).
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = self.http.post(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// The value of a counter/gauge sample, by metric name and label pairs.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for fam in self.registry.gather() {
            if fam.name() != name {
                continue;
            }
            for m in fam.get_metric() {
                let matches =
                    labels.iter().all(|(k, v)| m.get_label().iter().any(|l| l.name() == *k && l.value() == *v));
                if matches {
                    if fam.get_field_type() == prometheus::proto::MetricType::COUNTER {
                        return m.get_counter().get_value();
                    }
                    return m.get_gauge().get_value();
                }
            }
        }
        0.0
    }
}

/// Asserts that `reply` carries no upstream secret: neither the upstream token nor any upstream
/// body text.
pub fn assert_no_leak(reply: &Reply, cf: &CloudflareDouble) {
    let all = reply.everything();
    assert!(!all.contains(&cf.token), "upstream token leaked: {all}");
    assert!(!all.contains(crate::cloudflare_double::UPSTREAM_BODY_MARKER), "upstream body leaked: {all}");
}
