//! Fleet mode through the real router, with in-memory doubles of the binary's fleet wiring: the
//! answers carry the chosen relays' URLs, the region parameter reaches the directory, no
//! healthy relay falls back (503 / app fallback shape), `GET /v1/fleet` needs a key's token, the
//! app rate limit and revocations go through the shared state, and the keys are the fleet's.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use turnkey_issuer::{
    FleetDeps, FleetFuture, FleetListing, FleetRelay, FleetState, HandoutRelay, IssuerConfig, KeyOptions, KeyStore,
    RelayDirectory, Verdict,
};

use turnkey_types::{NodeId, Region};

use crate::harness::{Issuer, T0};

/// A directory whose relays the test sets; records what it was asked.
#[derive(Default)]
struct Directory {
    relays: Mutex<Vec<HandoutRelay>>,
    asked: Mutex<Vec<(Option<String>, usize)>>,
}

impl RelayDirectory for Directory {
    fn choose(&self, region: Option<&Region>, count: usize) -> Vec<HandoutRelay> {
        self.asked.lock().unwrap().push((region.map(ToString::to_string), count));
        self.relays.lock().unwrap().iter().take(count).cloned().collect()
    }

    fn listing(&self) -> FleetListing {
        let relays = self
            .relays
            .lock()
            .unwrap()
            .iter()
            .map(|r| FleetRelay {
                node_id: r.node_id.clone(),
                region: None,
                urls: r.urls.clone(),
                allocations: 1,
                allocation_capacity: 10,
                relayed_bps: 0,
                bandwidth_capacity_bps: None,
                load: Some(0.1),
                draining: false,
                heartbeat_age_ms: 5,
                healthy: true,
            })
            .collect();
        let (node_id, region) = (NodeId::new("issuer-a").unwrap(), Some(Region::new("eu").unwrap()));
        FleetListing { node_id, region, redis_up: true, cached: false, relays }
    }
}

/// Shared state: a global counter per client (as Redis would keep across issuers), switchable
/// to "unreachable".
#[derive(Default)]
struct State {
    down: AtomicBool,
    counted: AtomicU32,
    revoked: Mutex<Vec<(String, u64)>>,
}

impl FleetState for State {
    fn rate_limit<'a>(&'a self, _client: &'a str, limit: u32, window_secs: u64) -> FleetFuture<'a, Option<Verdict>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return None;
            }
            let n = self.counted.fetch_add(1, Ordering::SeqCst) + 1;
            Some(if n > limit { Verdict::Limited { retry_after: window_secs } } else { Verdict::Allow })
        })
    }

    fn revoke<'a>(&'a self, username: &'a str, expiry: u64) -> FleetFuture<'a, bool> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return false;
            }
            self.revoked.lock().unwrap().push((username.to_owned(), expiry));
            true
        })
    }
}

fn relay(id: &str, port: u16) -> HandoutRelay {
    HandoutRelay {
        node_id: NodeId::new(id).unwrap(),
        urls: vec![format!("turn:10.0.0.{port}:3478?transport=udp"), format!("turn:10.0.0.{port}:3478?transport=tcp")],
    }
}

async fn start(configure: impl FnOnce(&mut IssuerConfig)) -> (Issuer, Arc<Directory>, Arc<State>) {
    let keys = KeyStore::shared();
    let (key, k1) = KeyStore::generate(KeyOptions::default(), T0);
    let (other, k2) = KeyStore::generate(KeyOptions::default(), T0 + 1);
    keys.replace_all(vec![k1, k2]);
    let directory = Arc::new(Directory::default());
    let state = Arc::new(State::default());
    let mut config = IssuerConfig { public_host: "unused.example".into(), ..IssuerConfig::default() };
    config.app.rate_limit.requests = 3;
    configure(&mut config);
    let fleet = FleetDeps { directory: directory.clone(), state: state.clone(), keys };
    (Issuer::start_fleet(key, other, config, fleet).await, directory, state)
}

#[tokio::test]
async fn answers_carry_the_chosen_relays_and_the_region() {
    let (iss, dir, _) = start(|c| c.relays_per_answer = 2).await;
    *dir.relays.lock().unwrap() = vec![relay("a", 1), relay("b", 2), relay("c", 3)];
    let path = format!("{}?region=eu", iss.generate_path(&iss.key.id, "generate-ice-servers"));
    let r = iss.post_json(&path, Some(&iss.key.token), Some(json!({"ttl": 60}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert_eq!(v["iceServers"][0]["urls"], json!(["stun:10.0.0.1:3478", "stun:10.0.0.2:3478"]));
    assert_eq!(
        v["iceServers"][1]["urls"],
        json!([
            "turn:10.0.0.1:3478?transport=udp",
            "turn:10.0.0.1:3478?transport=tcp",
            "turn:10.0.0.2:3478?transport=udp",
            "turn:10.0.0.2:3478?transport=tcp"
        ])
    );
    assert!(!r.text.contains("unused.example"), "the configured host is not handed out in fleet mode");
    assert_eq!(dir.asked.lock().unwrap().last().unwrap(), &(Some("eu".to_owned()), 2));
    // No region: the directory uses the issuer's own; a malformed one is a 400.
    let plain = iss.generate_path(&iss.key.id, "generate");
    let r = iss.post_json(&plain, Some(&iss.key.token), None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json()["iceServers"]["urls"].as_array().unwrap().len(), 6);
    assert_eq!(dir.asked.lock().unwrap().last().unwrap(), &(None, 2));
    let bad = format!("{plain}?region=no%20way");
    assert_eq!(iss.post_json(&bad, Some(&iss.key.token), None).await.status, 400);
}

#[tokio::test]
async fn no_healthy_relay_is_503_and_the_app_fallback_shape() {
    let (iss, _dir, _) = start(|_| {}).await;
    let r = iss.post_json(&iss.generate_path(&iss.key.id, "generate-ice-servers"), Some(&iss.key.token), None).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("no relay available")));
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["fallback"], true);
    let r = iss.send(iss.http.get(iss.url("/readyz"))).await;
    assert_eq!(r.status, 503);
}

#[tokio::test]
async fn fleet_listing_needs_a_token_of_any_key() {
    let (iss, dir, _) = start(|_| {}).await;
    *dir.relays.lock().unwrap() = vec![relay("a", 1)];
    assert_eq!(iss.send(iss.http.get(iss.url("/v1/fleet"))).await.status, 401);
    assert_eq!(iss.send(iss.http.get(iss.url("/v1/fleet")).bearer_auth("nope")).await.status, 401);
    for token in [&iss.key.token, &iss.other.token] {
        let r = iss.send(iss.http.get(iss.url("/v1/fleet")).bearer_auth(token)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        assert_eq!(v["relays"][0]["node_id"], "a");
        assert_eq!(v["relays"][0]["healthy"], true);
        assert_eq!(v["redis_up"], true);
    }
}

#[tokio::test]
async fn app_rate_limit_is_shared_then_local_when_redis_is_down() {
    let (iss, dir, state) = start(|_| {}).await;
    *dir.relays.lock().unwrap() = vec![relay("a", 1)];
    // Another issuer already counted 2 of the 3 allowed.
    state.counted.store(2, Ordering::SeqCst);
    let get = || iss.send(iss.http.get(iss.url("/api/turn-credentials")));
    let r = get().await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The app key is the fleet's oldest key.
    assert!(r.json()["iceServers"][1]["username"].as_str().unwrap().contains(&iss.key.id));
    let r = get().await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["fallback"], true);
    // Redis unreachable: this issuer's own limit (3 per window) applies.
    state.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(get().await.status, 200);
    }
    assert_eq!(get().await.status, 429);
}

#[tokio::test]
async fn revocations_are_published_or_503() {
    let (iss, dir, state) = start(|_| {}).await;
    *dir.relays.lock().unwrap() = vec![relay("a", 1)];
    let expiry = T0 + 600;
    let user = format!("{expiry}:{}:~0011223344556677", iss.key.id);
    let path = format!("/v1/turn/keys/{}/credentials/{user}/revoke", iss.key.id);
    assert_eq!(iss.post_json(&path, Some(&iss.key.token), None).await.status, 204);
    assert_eq!(state.revoked.lock().unwrap().as_slice(), &[(user.clone(), expiry)]);
    // Unreachable: 503, and a retry once it is back publishes it (already revoked locally).
    let user2 = format!("{expiry}:{}:x", iss.key.id);
    let path2 = format!("/v1/turn/keys/{}/credentials/{user2}/revoke", iss.key.id);
    state.down.store(true, Ordering::SeqCst);
    let r = iss.post_json(&path2, Some(&iss.key.token), None).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("fleet state unavailable, retry")));
    assert!(iss.revocations.is_revoked(&user2), "it holds locally meanwhile");
    state.down.store(false, Ordering::SeqCst);
    assert_eq!(iss.post_json(&path2, Some(&iss.key.token), None).await.status, 204);
    assert_eq!(state.revoked.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn shared_keys_are_replaced_as_a_whole() {
    let (iss, dir, _) = start(|_| {}).await;
    *dir.relays.lock().unwrap() = vec![relay("a", 1)];
    let path = iss.generate_path(&iss.other.id, "generate-ice-servers");
    assert_eq!(iss.post_json(&path, Some(&iss.other.token), None).await.status, 201);
    // The fleet deleted `other`: its token no longer works; a new key works at once.
    let (fresh, shared) = KeyStore::generate(KeyOptions::default(), T0 + 5);
    let keep = iss.state.keys().get(&iss.key.id).unwrap();
    let keep_hash = {
        use sha2::Digest as _;
        sha2::Sha256::digest(iss.key.token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    iss.state.keys().replace_all(vec![turnkey_issuer::SharedKey { info: keep, token_sha256: keep_hash }, shared]);
    assert_eq!(iss.post_json(&path, Some(&iss.other.token), None).await.status, 401);
    let p2 = iss.generate_path(&fresh.id, "generate-ice-servers");
    assert_eq!(iss.post_json(&p2, Some(&fresh.token), None).await.status, 201);
    assert!(iss.state.keys().create(KeyOptions::default(), T0).is_err(), "shared keys are written by the fleet");
}
