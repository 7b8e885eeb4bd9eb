//! The upstream fallback's timing against a hanging Cloudflare double: one fetch for concurrent
//! misses, the circuit's cooldown counted from the recorded failure, merge mode opening the
//! circuit and then adding nothing, the default timeouts a browser can wait for, and the TTL an
//! answer is valid for. The issuer's own clock is the harness's hand-driven one; the timeouts are
//! real (they are what a page waits).

use std::time::{Duration, Instant};

use serde_json::json;
use turnkey_auth::RestUsername;
use turnkey_issuer::{UpstreamConfig, UpstreamMode};

use crate::cloudflare_double::{Behaviour, CloudflareDouble};
use crate::harness::{with_upstream, Issuer, Reply};

/// An upstream that accepts the request and never answers in the test's lifetime.
const HANG: Behaviour = Behaviour::Slow(Duration::from_secs(600));

async fn generate(iss: &Issuer, ttl: u64) -> Reply {
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    iss.post_json(&path, Some(&iss.key.token), Some(json!({ "ttl": ttl }))).await
}

/// Waits (bounded) until the double has received `n` requests.
async fn until_hits(cf: &CloudflareDouble, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while cf.hits() < n {
        assert!(Instant::now() < deadline, "the upstream got {} requests, expected {n}", cf.hits());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn the_defaults_answer_a_hanging_upstream_within_3_5_s() {
    // Only where the upstream is comes from the harness; every timing is the default.
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        let d = UpstreamConfig::default();
        (u.timeout_ms, u.retries, u.backoff_base_ms, u.ttl) = (d.timeout_ms, d.retries, d.backoff_base_ms, d.ttl);
        (u.circuit_failure_threshold, u.circuit_cooldown_secs) = (d.circuit_failure_threshold, d.circuit_cooldown_secs);
    })
    .await;
    iss.set_ready(false);
    cf.set(HANG);
    let started = Instant::now();
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json()["fallback"], true);
    assert!(took < Duration::from_millis(3500), "a hanging upstream kept the page waiting {took:?}");
    // Two tries of 1.2 s with 0.3 s between them: not a premature give-up either.
    assert!(took >= Duration::from_millis(2700), "{took:?}");
    assert_eq!(cf.hits(), 2);
}

#[tokio::test]
async fn concurrent_misses_share_one_fetch_even_when_it_fails() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        u.timeout_ms = 400;
        u.retries = 2;
        u.backoff_base_ms = 50;
    })
    .await;
    iss.set_ready(false);
    cf.set(HANG);
    let url = iss.url(&iss.generate_path(&iss.key.id, "generate-ice-servers"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let req = iss.http.post(&url).bearer_auth(&iss.key.token).json(&json!({"ttl": 600}));
        tasks.spawn(async move {
            let started = Instant::now();
            let status = req.send().await.unwrap().status().as_u16();
            (status, started.elapsed())
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (status, took) = done.unwrap();
        assert_eq!(status, 504);
        // One fetch of 400 + 50 + 400 ms; a second fetch after it would take the total past 1.7 s.
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
    assert_eq!(cf.hits(), 2, "one fetch (two tries) for three concurrent misses");
    assert_eq!(iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "timeout")]), 1.0);
    assert_eq!(iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "shared")]), 2.0);
}

#[tokio::test]
async fn the_cooldown_starts_when_the_failure_is_recorded() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        u.timeout_ms = 500;
        u.retries = 1;
        u.circuit_failure_threshold = 1;
        u.circuit_cooldown_secs = 30;
    })
    .await;
    iss.set_ready(false);
    cf.set(HANG);
    // A slow failure: the request starts at T0 and the issuer's clock reads T0+20 when the try
    // times out.
    let pending = {
        let (http, url, token) =
            (iss.http.clone(), iss.url(&iss.generate_path(&iss.key.id, "generate-ice-servers")), iss.key.token.clone());
        tokio::spawn(async move { http.post(url).bearer_auth(token).send().await.unwrap().status().as_u16() })
    };
    until_hits(&cf, 1).await;
    iss.advance(20);
    assert_eq!(pending.await.unwrap(), 504);
    assert_eq!(iss.metric("turnkey_issuer_circuit_open", &[]), 1.0);
    // 29 s after the failure (49 s after the request started): still open, no probe.
    iss.advance(29);
    let r = generate(&iss, 600).await;
    assert_eq!((r.status, r.json()), (503, json!({"error": "upstream unavailable"})));
    assert_eq!(cf.hits(), 1);
    // 30 s after the failure: one probe.
    iss.advance(1);
    cf.set(Behaviour::Ok);
    assert_eq!(generate(&iss, 600).await.status, 201);
    assert_eq!(cf.hits(), 2);
    assert_eq!(iss.metric("turnkey_issuer_circuit_open", &[]), 0.0);
}

/// The median time of `n` sequential generate requests, and their answers' entry counts.
async fn median_generate(iss: &Issuer, n: usize) -> (Duration, Vec<usize>) {
    let mut times = Vec::new();
    let mut entries = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let r = generate(iss, 600).await;
        times.push(started.elapsed());
        assert_eq!(r.status, 201, "{}", r.text);
        entries.push(r.json()["iceServers"].as_array().unwrap().len());
    }
    times.sort();
    (times[n / 2], entries)
}

#[tokio::test]
async fn merge_with_a_hanging_upstream_opens_the_circuit_then_adds_nothing() {
    let (iss, cf) = with_upstream(UpstreamMode::Merge, |u| {
        u.timeout_ms = 300;
        u.retries = 1;
        u.circuit_failure_threshold = 3;
    })
    .await;
    cf.set(HANG);
    // The first request waits one timeout_ms at most and answers with the local servers.
    let started = Instant::now();
    let r = generate(&iss, 600).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["iceServers"].as_array().unwrap().len(), 2);
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    // That fetch is recorded as a failure even though its waiter gave up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "timeout")]) < 1.0 {
        assert!(Instant::now() < deadline, "the hanging fetch was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Later requests do not wait for the failing upstream, but each failed fetch counts: the
    // circuit opens after three of them (bounded loop).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut requests = 1;
    while iss.metric("turnkey_issuer_circuit_open", &[]) == 0.0 {
        assert!(Instant::now() < deadline, "the circuit never opened ({} upstream calls)", cf.hits());
        let started = Instant::now();
        assert_eq!(generate(&iss, 600).await.json()["iceServers"].as_array().unwrap().len(), 2);
        let took = started.elapsed();
        assert!(took < Duration::from_millis(150), "waited for a failing upstream: {took:?}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cf.hits(), 3, "after {requests} requests");
    assert!(iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "timeout")]) >= 3.0);
    // Open: merge answers as fast as an issuer with no upstream at all, and calls nobody.
    let plain = Issuer::start(|_, _| {}).await;
    let (base, _) = median_generate(&plain, 21).await;
    let (merged, entries) = median_generate(&iss, 21).await;
    assert!(entries.iter().all(|&n| n == 2));
    assert_eq!(cf.hits(), 3);
    eprintln!("median generate: no upstream {base:?}, merge with the circuit open {merged:?}");
    assert!(
        merged < base + Duration::from_millis(10),
        "merge with the circuit open adds {:?} (median {merged:?} vs {base:?})",
        merged.saturating_sub(base)
    );
}

#[tokio::test]
async fn an_answer_is_valid_for_the_requested_ttl_or_says_how_long() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        u.ttl = 7200;
        u.refresh_threshold_secs = 600;
        u.retries = 1;
    })
    .await;
    iss.set_ready(false);
    // Asked 3600 of an upstream configured for 7200: fetched for 7200.
    let r = generate(&iss, 3600).await;
    assert_eq!(r.status, 201);
    assert!(r.json().get("ttl").is_none());
    assert_eq!(cf.ttls(), vec![json!(7200)]);
    // 4000 s later the cached credential has 3200 s left: a request for 3600 gets a new one,
    // a request for 600 the cached one.
    iss.advance(4000);
    assert_eq!(generate(&iss, 600).await.json()["iceServers"][1]["username"], "cf-user-1");
    assert_eq!(generate(&iss, 3600).await.json()["iceServers"][1]["username"], "cf-user-2");
    // A request for more than the configured ttl asks the upstream for its own ttl.
    assert_eq!(generate(&iss, 86_400).await.json()["iceServers"][1]["username"], "cf-user-3");
    assert_eq!(cf.ttls(), vec![json!(7200), json!(7200), json!(86_400)]);
    // The upstream fails: the cached credential is served with the seconds it has left.
    cf.set(Behaviour::Status(500));
    iss.advance(86_000);
    let r = generate(&iss, 3600).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let body = r.json();
    assert_eq!(body["iceServers"][1]["username"], "cf-user-3");
    assert_eq!(body["ttl"], 400);
    // The object shape and the app endpoints say it the same way.
    let r = iss.send(iss.http.post(iss.url("/api/turn/credentials?shape=object")).json(&json!({"ttl": 3600}))).await;
    assert_eq!((r.status, r.json()["ttl"].clone()), (200, json!(400)));
    assert_eq!(r.json()["iceServers"]["username"], "cf-user-3");
}

#[tokio::test]
async fn merge_never_appends_a_credential_shorter_than_asked() {
    let (iss, cf) = with_upstream(UpstreamMode::Merge, |u| {
        u.ttl = 7200;
        u.refresh_threshold_secs = 600;
        u.retries = 1;
    })
    .await;
    let r = generate(&iss, 3600).await;
    assert_eq!(r.json()["iceServers"].as_array().unwrap().len(), 4);
    cf.set(Behaviour::Status(500));
    iss.advance(5000);
    // 2200 s left upstream: appended for a 600 s request, not for a 3600 s one.
    assert_eq!(generate(&iss, 600).await.json()["iceServers"].as_array().unwrap().len(), 4);
    let r = generate(&iss, 3600).await;
    let body = r.json();
    assert_eq!(body["iceServers"].as_array().unwrap().len(), 2, "{body}");
    assert!(body.get("ttl").is_none());
    let user = body["iceServers"][1]["username"].as_str().unwrap();
    assert_eq!(RestUsername::parse(user).unwrap().expiry().0, iss.now() + 3600);
}
