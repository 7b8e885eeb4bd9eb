//! The browser-facing endpoints: shapes, `{ttl}` POST, rate limit, CORS, fallback answers.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use turnkey_auth::{RestUsername, UnixTime};

use crate::harness::{Issuer, T0};

const APP: &str = "https://app.example.com";

async fn app_issuer() -> Issuer {
    Issuer::start(|c, _| {
        c.app.allowed_origins = vec![APP.to_owned()];
        c.app.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await
}

fn assert_stun_only_fallback(body: &Value) {
    assert_eq!(body["fallback"], json!(true));
    assert!(body["error"].is_string());
    let servers = body["iceServers"].as_array().expect("STUN-only iceServers");
    assert!(!servers.is_empty());
    for s in servers {
        assert!(s.get("username").is_none());
        for u in s["urls"].as_array().unwrap() {
            assert!(u.as_str().unwrap().starts_with("stun:"));
        }
    }
}

#[tokio::test]
async fn all_three_endpoints_issue_the_array_shape() {
    let iss = app_issuer().await;
    let replies = [
        iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await,
        iss.send(iss.http.post(iss.url("/api/turn-credentials"))).await,
        iss.send(iss.http.post(iss.url("/api/turn/credentials")).json(&json!({"ttl": 3600}))).await,
    ];
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 200, "{i}: {}", r.text);
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let body = r.json();
        let servers = body["iceServers"].as_array().unwrap();
        assert_eq!(servers[0]["urls"][0], "stun:turn.test.example:3478");
        let user = servers[1]["username"].as_str().unwrap();
        let cred = servers[1]["credential"].as_str().unwrap();
        let parsed = iss.ring.verify_password(user, cred, UnixTime(T0)).unwrap();
        assert!(parsed.userid().starts_with(&format!("{}:~", iss.key.id)), "{}", parsed.userid());
        let ttl = if i == 2 { 3600 } else { 86_400 };
        assert_eq!(parsed.expiry(), UnixTime(T0 + ttl));
    }
    // A bad ttl is a 400 with the fallback flag.
    let r = iss.send(iss.http.post(iss.url("/api/turn/credentials")).json(&json!({"ttl": "abc"}))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["fallback"], json!(true));
    let _ = RestUsername::parse("1:x").unwrap();
}

#[tokio::test]
async fn rate_limit_per_client_with_retry_after() {
    let iss = Issuer::start(|c, _| {
        c.app.rate_limit.requests = 3;
        c.app.rate_limit.window_secs = 300;
        c.app.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let get = |xff: &'static str| iss.http.get(iss.url("/api/turn-credentials")).header("x-forwarded-for", xff);
    for _ in 0..3 {
        assert_eq!(iss.send(get("203.0.113.5")).await.status, 200);
    }
    iss.advance(100);
    let r = iss.send(get("203.0.113.5")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("200"));
    assert_eq!(r.json()["fallback"], json!(true));
    assert!(r.json()["error"].is_string());
    // A spoofed left-most hop does not help: the proxy-appended hop is the client.
    assert_eq!(iss.send(get("1.1.1.1, 203.0.113.5")).await.status, 429);
    // Another client is unaffected.
    assert_eq!(iss.send(get("203.0.113.6")).await.status, 200);
    assert_eq!(iss.metric("turnkey_issuer_rate_limited_total", &[]), 2.0);
    // The window ends.
    iss.advance(200);
    assert_eq!(iss.send(get("203.0.113.5")).await.status, 200);
}

#[tokio::test]
async fn forwarded_for_ignored_from_untrusted_peers() {
    let iss = Issuer::start(|c, _| c.app.rate_limit.requests = 2).await;
    for (i, xff) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"].iter().enumerate() {
        let r = iss.send(iss.http.get(iss.url("/api/turn-credentials")).header("x-forwarded-for", *xff)).await;
        assert_eq!(r.status, if i < 2 { 200 } else { 429 }, "{xff}");
    }
}

#[tokio::test]
async fn cors_exact_origins_only() {
    let iss = app_issuer().await;
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials")).header("origin", APP)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(r.header("vary").unwrap().contains("Origin"));
    assert!(r.header("access-control-allow-credentials").is_none());
    for evil in [
        "https://app.example.com.evil.net",
        "https://evil.app.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://APP.example.com",
        "null",
    ] {
        let r = iss
            .send(iss.http.post(iss.url("/api/turn/credentials")).header("origin", evil).json(&json!({"ttl": 60})))
            .await;
        assert_eq!(r.status, 403, "{evil}");
        assert!(r.header("access-control-allow-origin").is_none(), "{evil}");
        assert!(r.json().get("iceServers").is_none());
        assert!(!r.text.contains("credential"));
        // Preflight refused too.
        let r = iss
            .send(
                iss.http
                    .request(reqwest::Method::OPTIONS, iss.url("/api/turn/credentials"))
                    .header("origin", evil)
                    .header("access-control-request-method", "POST"),
            )
            .await;
        assert_eq!(r.status, 403, "preflight {evil}");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    // Preflight from the allowed origin.
    let r = iss
        .send(
            iss.http
                .request(reqwest::Method::OPTIONS, iss.url("/api/turn/credentials"))
                .header("origin", APP)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type"),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(r.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(r.header("access-control-allow-headers").unwrap().contains("content-type"));
    // Same-origin (the issuer's own Host) is fine without CORS headers.
    let own = iss.base.clone();
    let r = iss.send(iss.http.post(iss.url("/api/turn-credentials")).header("origin", own)).await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    // No wildcard anywhere, even with credentials enabled.
    let iss2 = Issuer::start(|c, _| {
        c.app.allowed_origins = vec![APP.to_owned()];
        c.app.allow_credentials = true;
    })
    .await;
    let r = iss2.send(iss2.http.get(iss2.url("/api/turn-credentials")).header("origin", APP)).await;
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
}

#[tokio::test]
async fn no_relay_and_no_upstream_gives_stun_only_fallback() {
    let iss = app_issuer().await;
    iss.set_ready(false);
    for req in [
        iss.http.get(iss.url("/api/turn-credentials")),
        iss.http.post(iss.url("/api/turn/credentials")).json(&json!({"ttl": 60})),
    ] {
        let r = iss.send(req).await;
        assert_eq!(r.status, 503);
        assert_stun_only_fallback(&r.json());
    }
}

#[tokio::test]
async fn bandwidth_cap_without_upstream_is_429() {
    let iss = app_issuer().await;
    iss.relay.exhausted.store(true, Ordering::SeqCst);
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error": "Bandwidth limit reached", "fallback": true}));
}

#[tokio::test]
async fn app_key_missing_is_503_fallback() {
    let iss = Issuer::start(|c, _| c.app.key = None).await;
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 503);
    assert_stun_only_fallback(&r.json());
}

fn set_cap(iss: &Issuer, cap: u64) {
    let path = iss.dir.path().join("keys").join(format!("{}.json", iss.key.id));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["monthly_bandwidth_bytes"] = json!(cap);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[tokio::test]
async fn bandwidth_status_reports_measured_usage_and_the_cap_is_enforced() {
    let iss = app_issuer().await;
    let usage = |used| {
        Some(turnkey_issuer::BandwidthUsage { used_bytes: used, reset_at: 1_738_368_000, active_allocations: 2 })
    };
    // No accounting in this process: 503.
    let r = iss.send(iss.http.get(iss.url("/api/bandwidth-status"))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    *iss.relay.usage.lock().unwrap() = usage(12_345_678_900);
    let r = iss.send(iss.http.get(iss.url("/api/bandwidth-status"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.text,
        r#"{"bandwidthUsedGB":"12.35","bandwidthLimitGB":"unlimited","percentage":0,"remainingGB":"unlimited","resetDate":"2025-02-01T00:00:00.000Z","activeConnections":2,"status":"OK"}"#
    );
    set_cap(&iss, 20_000_000_000);
    let v = iss.send(iss.http.get(iss.url("/api/bandwidth-status"))).await.json();
    assert_eq!(v["bandwidthLimitGB"], 20);
    assert_eq!(v["percentage"], 61.73);
    assert_eq!(v["remainingGB"], "7.65");
    assert_eq!(v["status"], "OK");
    *iss.relay.usage.lock().unwrap() = usage(18_000_000_000);
    let v = iss.send(iss.http.get(iss.url("/api/bandwidth-status"))).await.json();
    assert_eq!(v["status"], "WARNING");
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 200);
    // At the cap in the key file, the issuer stops minting for the key.
    *iss.relay.usage.lock().unwrap() = usage(20_000_000_000);
    let v = iss.send(iss.http.get(iss.url("/api/bandwidth-status"))).await.json();
    assert_eq!(v["status"], "LIMIT_REACHED");
    assert_eq!(v["remainingGB"], "0.00");
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json(), json!({"error": "Bandwidth limit reached", "fallback": true}));
    let r = iss
        .post_json(
            &iss.generate_path(&iss.key.id, "generate-ice-servers"),
            Some(&iss.key.token),
            Some(json!({"ttl": 600})),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
}
