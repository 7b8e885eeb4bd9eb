//! The Cloudflare-compatible API: shapes, bearer auth, body rules, TTL bounds, revocation, key
//! reload, health and the OpenAPI document.

use serde_json::{json, Value};
use turnkey_auth::{RestUsername, UnixTime};
use turnkey_issuer::{keys_create, keys_delete, KeyOptions};

use crate::harness::{Issuer, T0};

fn turn_entry(body: &Value) -> (&str, &str) {
    let servers = body["iceServers"].as_array().expect("array shape");
    let turn = &servers[1];
    (turn["username"].as_str().unwrap(), turn["credential"].as_str().unwrap())
}

#[tokio::test]
async fn generate_ice_servers_array_shape_verifies() {
    let iss = Issuer::start(|_, _| {}).await;
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    let r = iss.post_json(&path, Some(&iss.key.token), Some(json!({"ttl": 86400}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let servers = body["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0], json!({"urls": ["stun:turn.test.example:3478"]}));
    assert_eq!(
        servers[1]["urls"],
        json!([
            "turn:turn.test.example:3478?transport=udp",
            "turn:turn.test.example:3478?transport=tcp",
            "turns:turn.test.example:5349?transport=tcp"
        ])
    );
    let (user, cred) = turn_entry(&body);
    let parsed = iss.ring.verify_password(user, cred, UnixTime(T0)).expect("credential verifies");
    assert!(parsed.userid().starts_with(&format!("{}:~", iss.key.id)), "{}", parsed.userid());
    assert_eq!(parsed.expiry(), UnixTime(T0 + 86_400));
    assert!(iss.ring.verify_password(user, cred, UnixTime(T0 + 86_400)).is_err());
    assert_eq!(iss.metric("turnkey_issuer_credentials_issued_total", &[("key", &iss.key.id)]), 1.0);
    assert_eq!(
        iss.metric(
            "turnkey_issuer_requests_total",
            &[("endpoint", "/v1/turn/keys/{id}/credentials/generate-ice-servers"), ("status", "201")]
        ),
        1.0
    );
}

#[tokio::test]
async fn generate_object_shape_with_custom_identifier() {
    let iss = Issuer::start(|_, _| {}).await;
    let path = iss.generate_path(&iss.key.id, "generate");
    let r =
        iss.post_json(&path, Some(&iss.key.token), Some(json!({"ttl": 3600, "customIdentifier": "user4523958"}))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let data = r.json();
    // The consumer pattern: `data.iceServers.urls` read directly.
    let urls: Vec<&str> =
        data["iceServers"]["urls"].as_array().expect("object shape").iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(
        urls,
        [
            "stun:turn.test.example:3478",
            "turn:turn.test.example:3478?transport=udp",
            "turn:turn.test.example:3478?transport=tcp",
            "turns:turn.test.example:5349?transport=tcp"
        ]
    );
    let user = data["iceServers"]["username"].as_str().unwrap();
    let cred = data["iceServers"]["credential"].as_str().unwrap();
    let parsed = iss.ring.verify_password(user, cred, UnixTime(T0)).unwrap();
    assert_eq!(parsed.userid(), format!("{}:user4523958", iss.key.id));
    assert_eq!(parsed.expiry(), UnixTime(T0 + 3600));
    // A hostile identifier is sanitized and bounded.
    let r = iss
        .post_json(&path, Some(&iss.key.token), Some(json!({"customIdentifier": format!("a/b c:{}", "x".repeat(300))})))
        .await;
    let user = r.json()["iceServers"]["username"].as_str().unwrap().to_owned();
    let userid = RestUsername::parse(&user).unwrap().userid().to_owned();
    let label = userid.strip_prefix(&format!("{}:", iss.key.id)).unwrap();
    assert!(label.starts_with("a_b_c_x"));
    assert_eq!(label.len(), 64);
}

#[tokio::test]
async fn bearer_auth_rules() {
    let iss = Issuer::start(|_, _| {}).await;
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    // Missing.
    let r = iss.post_json(&path, None, None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    assert!(r.json()["error"].is_string());
    // Wrong.
    let r = iss.post_json(&path, Some("not-a-token"), None).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    // Another scheme.
    let r = iss.send(iss.http.post(iss.url(&path)).basic_auth("x", Some(iss.key.token.as_str()))).await;
    assert_eq!(r.status, 401);
    // Another key's valid token.
    let r = iss.post_json(&path, Some(&iss.other.token), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!r.text.contains(&iss.other.token));
    // Unknown key id with some token.
    let unknown = iss.generate_path(&"0".repeat(32), "generate-ice-servers");
    assert_eq!(iss.post_json(&unknown, Some("nope"), None).await.status, 401);
    // Token in the query string never works, with or without a valid header.
    for q in ["token", "access_token", "Access_Token"] {
        let url = format!("{}?{q}={}", iss.url(&path), iss.key.token);
        let r = iss.send(iss.http.post(&url)).await;
        assert_eq!(r.status, 400, "{q}");
        assert!(!r.everything().contains(&iss.key.token));
        let r = iss.send(iss.http.post(&url).bearer_auth(&iss.key.token)).await;
        assert_eq!(r.status, 400, "{q} with header");
    }
    // And with the header, the same key succeeds.
    assert_eq!(iss.post_json(&path, Some(&iss.key.token), None).await.status, 201);
}

#[tokio::test]
async fn ttl_bounds_and_body_rules() {
    let iss = Issuer::start(|c, _| c.max_body_bytes = 256).await;
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    let tok = Some(iss.key.token.as_str());
    for bad in [json!(0), json!(-1), json!(172_801), json!("abc"), json!(1.5), json!(null)] {
        let r = iss.post_json(&path, tok, Some(json!({ "ttl": bad }))).await;
        assert_eq!(r.status, 400, "ttl {bad}");
        assert!(r.json()["error"].as_str().unwrap().contains("ttl"));
    }
    for good in [1u64, 172_800] {
        let r = iss.post_json(&path, tok, Some(json!({ "ttl": good }))).await;
        assert_eq!(r.status, 201, "ttl {good}");
        let body = r.json();
        let (user, _) = turn_entry(&body);
        assert_eq!(RestUsername::parse(user).unwrap().expiry(), UnixTime(T0 + good));
    }
    // No body: default TTL.
    let r = iss.post_json(&path, tok, None).await;
    let body = r.json();
    assert_eq!(RestUsername::parse(turn_entry(&body).0).unwrap().expiry(), UnixTime(T0 + 86_400));
    // 413.
    let big = json!({"ttl": 60, "pad": "x".repeat(1000)});
    let r = iss.post_json(&path, tok, Some(big)).await;
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].is_string());
    // 415.
    let r = iss
        .send(
            iss.http
                .post(iss.url(&path))
                .bearer_auth(&iss.key.token)
                .header("content-type", "text/plain")
                .body(r#"{"ttl": 60}"#),
        )
        .await;
    assert_eq!(r.status, 415);
    assert!(r.json()["error"].is_string());
    // Malformed JSON.
    let r = iss
        .send(
            iss.http
                .post(iss.url(&path))
                .bearer_auth(&iss.key.token)
                .header("content-type", "application/json")
                .body(r#"{"ttl": "#),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn key_max_ttl_lowers_the_bound() {
    let iss = Issuer::start(|_, _| {}).await;
    let k = iss.state.keys().create(KeyOptions { max_ttl: Some(600), ..KeyOptions::default() }, T0).unwrap();
    let path = iss.generate_path(&k.id, "generate-ice-servers");
    let r = iss.post_json(&path, Some(&k.token), Some(json!({"ttl": 601}))).await;
    assert_eq!(r.status, 400);
    let r = iss.post_json(&path, Some(&k.token), Some(json!({"ttl": 600}))).await;
    assert_eq!(r.status, 201);
    // The default (86400) is clamped to the key's maximum.
    let r = iss.post_json(&path, Some(&k.token), None).await;
    let body = r.json();
    assert_eq!(RestUsername::parse(turn_entry(&body).0).unwrap().expiry(), UnixTime(T0 + 600));
}

#[tokio::test]
async fn revoke_marks_persists_and_is_owner_only() {
    let iss = Issuer::start(|_, _| {}).await;
    let gen = iss.generate_path(&iss.key.id, "generate");
    let r = iss.post_json(&gen, Some(&iss.key.token), Some(json!({"customIdentifier": "bob"}))).await;
    let username = r.json()["iceServers"]["username"].as_str().unwrap().to_owned();
    let revoke = |key: &str, user: &str| format!("/v1/turn/keys/{key}/credentials/{user}/revoke");
    // Unauthenticated and other key: refused, nothing revoked.
    assert_eq!(iss.post_json(&revoke(&iss.key.id, &username), None, None).await.status, 401);
    assert_eq!(iss.post_json(&revoke(&iss.other.id, &username), Some(&iss.other.token), None).await.status, 403);
    assert!(!iss.revocations.is_revoked(&username));
    // Not a TURN REST username / not one of ours.
    for bad in ["garbage", "123", "123:not+a+key"] {
        let r = iss.post_json(&revoke(&iss.key.id, bad), Some(&iss.key.token), None).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    // A userid naming another key id (one rule for key ids: `someone-else` is one) is another
    // key's username.
    let r = iss.post_json(&revoke(&iss.key.id, "123:someone-else"), Some(&iss.key.token), None).await;
    assert_eq!(r.status, 403);
    // Expiry beyond any TTL could not have been minted.
    let far = format!("{}:{}", T0 + 200_000, iss.key.id);
    assert_eq!(iss.post_json(&revoke(&iss.key.id, &far), Some(&iss.key.token), None).await.status, 400);
    // No relay watches this data directory: the revocation would reach nothing and is refused.
    let r = iss.post_json(&revoke(&iss.key.id, &username), Some(&iss.key.token), None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.text.contains("no relay watches"), "{}", r.text);
    assert!(!iss.revocations.is_revoked(&username));
    let relay_set = turnkey_auth::RevocationSet::new();
    let mut relay =
        turnkey_issuer::RevocationWatch::start(iss.dir.path(), relay_set.clone(), UnixTime(iss.now())).unwrap();
    // The owner revokes: 204, shared set updated, persisted, seen by the watching relay.
    let r = iss.post_json(&revoke(&iss.key.id, &username), Some(&iss.key.token), None).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(iss.revocations.is_revoked(&username));
    // Idempotent.
    assert_eq!(iss.post_json(&revoke(&iss.key.id, &username), Some(&iss.key.token), None).await.status, 204);
    assert_eq!(iss.metric("turnkey_issuer_revocations_total", &[]), 1.0);
    let file = std::fs::read_to_string(iss.dir.path().join("revocations.json")).unwrap();
    assert!(file.contains(&username));
    assert_eq!(relay.poll(UnixTime(iss.now())).unwrap(), 1);
    assert!(relay_set.is_revoked(&username));
    // A "restart" on the same data directory loads it into a fresh shared set.
    let set = turnkey_auth::RevocationSet::new();
    let _store = turnkey_issuer::RevocationStore::load(iss.dir.path(), set.clone(), UnixTime(iss.now()), 10).unwrap();
    assert!(set.is_revoked(&username));
    // ...and drops it once the credential would have expired anyway.
    let later = turnkey_auth::RevocationSet::new();
    let _ = turnkey_issuer::RevocationStore::load(iss.dir.path(), later.clone(), UnixTime(T0 + 86_400), 10).unwrap();
    assert!(!later.is_revoked(&username));
}

#[tokio::test]
async fn keys_created_and_deleted_while_running() {
    let iss = Issuer::start(|_, _| {}).await;
    // As `turnkey keys create --data-dir` would, from "another process".
    let out = keys_create(iss.dir.path(), KeyOptions::default(), T0).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let (id, token) = (v["id"].as_str().unwrap(), v["token"].as_str().unwrap());
    let path = iss.generate_path(id, "generate-ice-servers");
    assert_eq!(iss.post_json(&path, Some(token), None).await.status, 201);
    keys_delete(iss.dir.path(), id).unwrap();
    assert_eq!(iss.post_json(&path, Some(token), None).await.status, 401);
}

#[tokio::test]
async fn relay_not_ready_without_upstream_is_503() {
    let iss = Issuer::start(|_, _| {}).await;
    iss.set_ready(false);
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    let r = iss.post_json(&path, Some(&iss.key.token), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json(), json!({"error": "no relay available"}));
}

#[tokio::test]
async fn health_ready_openapi_and_json_errors() {
    let iss = Issuer::start(|_, _| {}).await;
    let r = iss.send(iss.http.get(iss.url("/healthz"))).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    assert_eq!(iss.send(iss.http.get(iss.url("/readyz"))).await.status, 200);
    iss.set_ready(false);
    assert_eq!(iss.send(iss.http.get(iss.url("/readyz"))).await.status, 503);
    assert_eq!(iss.send(iss.http.get(iss.url("/healthz"))).await.status, 200);
    let r = iss.send(iss.http.get(iss.url("/openapi.yaml"))).await;
    assert_eq!(r.status, 200);
    assert!(r.text.starts_with("openapi: 3"));
    assert!(r.text.contains("/v1/turn/keys/{keyId}/credentials/generate-ice-servers"));
    let r = iss.send(iss.http.get(iss.url("/nope"))).await;
    assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not found")));
    let r = iss.send(iss.http.get(iss.url(&iss.generate_path(&iss.key.id, "generate")))).await;
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());
}
