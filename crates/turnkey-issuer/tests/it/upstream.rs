//! Cloudflare as upstream, against the local double: fallback, merge, cache and refresh,
//! retries, circuit breaker, timeouts, failures, and no leakage of the upstream token or bodies.

use std::time::Duration;

use serde_json::{json, Value};
use turnkey_issuer::UpstreamMode;

use crate::cloudflare_double::{Behaviour, CloudflareDouble};
use crate::harness::{assert_no_leak, upstream_config, with_upstream, Issuer, Reply};

async fn generate(iss: &Issuer) -> Reply {
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    iss.post_json(&path, Some(&iss.key.token), Some(json!({"ttl": 600}))).await
}

fn urls(body: &Value) -> Vec<String> {
    body["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap().clone())
        .map(|u| u.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn fallback_serves_upstream_only_when_local_cannot() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |_| {}).await;
    // Local ready: local only, upstream untouched.
    let r = generate(&iss).await;
    assert_eq!(r.status, 201);
    assert!(urls(&r.json()).iter().all(|u| u.contains("turn.test.example")));
    assert_eq!(cf.hits(), 0);
    // Local not ready: Cloudflare's servers, as Cloudflare sent them.
    iss.set_ready(false);
    let r = generate(&iss).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_no_leak(&r, &cf);
    let body = r.json();
    assert_eq!(body["iceServers"][0]["urls"][0], "stun:stun.cloudflare.com:3478");
    assert_eq!(body["iceServers"][1]["username"], "cf-user-1");
    assert_eq!(body["iceServers"][1]["credential"], "cf-credential-1");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // The upstream was asked per the contract: {"ttl": N} with the configured TTL.
    assert_eq!(cf.ttls(), vec![json!(86_400)]);
    // The object shape is the flattened upstream answer.
    let path = iss.generate_path(&iss.key.id, "generate");
    let r = iss.post_json(&path, Some(&iss.key.token), None).await;
    assert_eq!(r.status, 201);
    let obj = r.json();
    assert_eq!(obj["iceServers"]["username"], "cf-user-1");
    assert_eq!(obj["iceServers"]["urls"].as_array().unwrap().len(), 8);
    // The app endpoint too.
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["iceServers"][1]["username"], "cf-user-1");
    assert!(r.json().get("fallback").is_none());
    assert_eq!(iss.metric("turnkey_issuer_upstream_fallbacks_total", &[]), 3.0);
    // Bandwidth cap reached on a ready relay also falls back.
    iss.set_ready(true);
    iss.relay.exhausted.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["iceServers"][1]["username"], "cf-user-1");
}

#[tokio::test]
async fn merge_appends_upstream_after_local() {
    let (iss, cf) = with_upstream(UpstreamMode::Merge, |_| {}).await;
    let r = generate(&iss).await;
    assert_eq!(r.status, 201);
    assert_no_leak(&r, &cf);
    let body = r.json();
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 4);
    assert_eq!(servers[0]["urls"][0], "stun:turn.test.example:3478");
    assert!(servers[1]["username"].as_str().unwrap().contains(&format!(":{}:~", iss.key.id)));
    assert_eq!(servers[2]["urls"][0], "stun:stun.cloudflare.com:3478");
    assert_eq!(servers[3]["username"], "cf-user-1");
    // Upstream down in merge mode: local only, still 201.
    cf.set(Behaviour::Status(500));
    iss.advance(90_000); // past the cached credential's expiry
    let r = generate(&iss).await;
    assert_eq!(r.status, 201);
    assert_no_leak(&r, &cf);
    assert_eq!(r.json()["iceServers"].as_array().unwrap().len(), 2);
    // Object shape in merge mode: local only.
    cf.set(Behaviour::Ok);
    let path = iss.generate_path(&iss.key.id, "generate");
    let r = iss.post_json(&path, Some(&iss.key.token), None).await;
    assert!(r.json()["iceServers"]["username"].as_str().unwrap().contains(&iss.key.id));
}

#[tokio::test]
async fn one_upstream_credential_serves_many_until_refresh() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |_| {}).await;
    iss.set_ready(false);
    for _ in 0..5 {
        let r = generate(&iss).await;
        assert_eq!(r.json()["iceServers"][1]["username"], "cf-user-1");
    }
    assert_eq!(cf.hits(), 1);
    // ttl 86400, refresh_threshold 3600: reused until 82800 s after the fetch.
    iss.advance(82_799);
    assert_eq!(generate(&iss).await.json()["iceServers"][1]["username"], "cf-user-1");
    assert_eq!(cf.hits(), 1);
    iss.advance(1);
    assert_eq!(generate(&iss).await.json()["iceServers"][1]["username"], "cf-user-2");
    assert_eq!(cf.hits(), 2);
    assert_eq!(iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "cached")]), 5.0);
    // Concurrent misses share one fetch.
    iss.advance(90_000);
    cf.set(Behaviour::Slow(Duration::from_millis(100)));
    let statuses = concurrent_generate(&iss, 8).await;
    assert_eq!(statuses, vec![201; 8]);
    assert_eq!(cf.hits(), 3);
}

/// `n` generate requests in flight at once; returns their statuses.
async fn concurrent_generate(iss: &Issuer, n: usize) -> Vec<u16> {
    let url = iss.url(&iss.generate_path(&iss.key.id, "generate-ice-servers"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let req = iss.http.post(&url).bearer_auth(&iss.key.token).json(&json!({"ttl": 600}));
        tasks.spawn(async move { req.send().await.unwrap().status().as_u16() });
    }
    let mut out = Vec::new();
    while let Some(s) = tasks.join_next().await {
        out.push(s.unwrap());
    }
    out
}

#[tokio::test]
async fn retries_with_backoff_then_gives_up() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |_| {}).await;
    iss.set_ready(false);
    // Two failures then success, within 3 tries.
    cf.set(Behaviour::FailFirst(2));
    let r = generate(&iss).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(cf.hits(), 3);
    // Three failures: 3 tries, then 502 with a generic message.
    iss.advance(90_000);
    cf.set(Behaviour::FailFirst(3));
    let r = generate(&iss).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json(), json!({"error": "upstream error"}));
    assert_no_leak(&r, &cf);
    assert_eq!(cf.hits(), 6);
}

#[tokio::test]
async fn client_errors_are_not_retried_and_do_not_leak() {
    // A wrong upstream token: Cloudflare's 401 becomes our 502, tried once.
    let cf = CloudflareDouble::start().await;
    let cf2 = cf.clone();
    let iss = Issuer::start(move |c, dir| {
        let u = upstream_config(&cf2, dir);
        std::fs::write(u.token_file.as_ref().unwrap(), "wrong-token").unwrap();
        c.upstream = Some(u);
    })
    .await;
    iss.set_ready(false);
    let r = generate(&iss).await;
    assert_eq!(r.status, 502);
    assert_no_leak(&r, &cf);
    assert_eq!(cf.hits(), 1);
    // A malformed 201 body is a 502 too.
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| u.retries = 1).await;
    iss.set_ready(false);
    cf.set(Behaviour::Malformed);
    let r = generate(&iss).await;
    assert_eq!(r.status, 502);
    assert_no_leak(&r, &cf);
}

#[tokio::test]
async fn timeouts_are_504() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        u.timeout_ms = 50;
        u.retries = 2;
    })
    .await;
    iss.set_ready(false);
    cf.set(Behaviour::Slow(Duration::from_millis(400)));
    let started = std::time::Instant::now();
    let r = generate(&iss).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.json(), json!({"error": "upstream timed out"}));
    assert!(started.elapsed() < Duration::from_millis(380));
    assert_eq!(iss.metric("turnkey_issuer_upstream_requests_total", &[("result", "timeout")]), 1.0);
}

#[tokio::test]
async fn circuit_breaker_opens_and_half_opens() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| {
        u.retries = 1;
        u.circuit_failure_threshold = 2;
        u.circuit_cooldown_secs = 30;
    })
    .await;
    iss.set_ready(false);
    cf.set(Behaviour::Status(500));
    assert_eq!(generate(&iss).await.status, 502);
    assert_eq!(iss.metric("turnkey_issuer_circuit_open", &[]), 0.0);
    assert_eq!(generate(&iss).await.status, 502);
    assert_eq!(iss.metric("turnkey_issuer_circuit_open", &[]), 1.0);
    assert_eq!(cf.hits(), 2);
    // Open: fail fast without calling the upstream.
    let r = generate(&iss).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"error": "upstream unavailable"}));
    assert_eq!(cf.hits(), 2);
    // After the cool-down one probe goes through; it fails and the circuit reopens at once.
    iss.advance(30);
    assert_eq!(generate(&iss).await.status, 502);
    assert_eq!(cf.hits(), 3);
    assert_eq!(generate(&iss).await.status, 503);
    assert_eq!(cf.hits(), 3);
    // The next probe succeeds and closes it.
    iss.advance(30);
    cf.set(Behaviour::Ok);
    assert_eq!(generate(&iss).await.status, 201);
    assert_eq!(iss.metric("turnkey_issuer_circuit_open", &[]), 0.0);
    assert_eq!(cf.hits(), 4);
}

#[tokio::test]
async fn both_failing_on_app_endpoints_is_stun_only_with_fallback_flag() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| u.retries = 1).await;
    iss.set_ready(false);
    cf.set(Behaviour::Status(503));
    for req in [
        iss.http.get(iss.url("/api/turn-credentials")),
        iss.http.post(iss.url("/api/turn-credentials")),
        iss.http.post(iss.url("/api/turn/credentials")).json(&json!({"ttl": 600})),
    ] {
        let r = iss.send(req).await;
        assert_eq!(r.status, 502, "{}", r.text);
        assert_no_leak(&r, &cf);
        let body = r.json();
        assert_eq!(body["fallback"], json!(true));
        assert_eq!(body["iceServers"], json!([{"urls": ["stun:turn.test.example:3478"]}]));
    }
}

#[tokio::test]
async fn stale_but_valid_upstream_credential_served_while_upstream_fails() {
    let (iss, cf) = with_upstream(UpstreamMode::Fallback, |u| u.retries = 1).await;
    iss.set_ready(false);
    assert_eq!(generate(&iss).await.status, 201);
    cf.set(Behaviour::Status(500));
    iss.advance(83_000); // past the refresh point, before expiry
    let r = generate(&iss).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["iceServers"][1]["username"], "cf-user-1");
    assert_eq!(cf.hits(), 2);
}

#[tokio::test]
async fn merge_does_not_wait_through_retries_for_a_slow_upstream() {
    let (iss, cf) = with_upstream(UpstreamMode::Merge, |u| {
        u.timeout_ms = 50;
        u.retries = 3;
        u.backoff_base_ms = 200;
    })
    .await;
    cf.set(Behaviour::Slow(Duration::from_millis(400)));
    let started = std::time::Instant::now();
    let r = generate(&iss).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["iceServers"].as_array().unwrap().len(), 2);
    assert!(started.elapsed() < Duration::from_millis(300), "{:?}", started.elapsed());
}
