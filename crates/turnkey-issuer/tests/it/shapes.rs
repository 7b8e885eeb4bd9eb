//! The app endpoints as drop-ins: the object or array shape (per endpoint in the config, per
//! request with `?shape=`), Cloudflare's field order in the raw JSON, browser-extension origins,
//! and another key's token (403) for a key created by another process.

use serde_json::{json, Value};
use turnkey_auth::UnixTime;
use turnkey_issuer::{keys_create, KeyOptions, Shape};

use crate::harness::{Issuer, Reply, T0};

const CHROME_EXT: &str = "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb";
const MOZ_EXT: &str = "moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2f";

/// The three app endpoints, each with the query string `q`.
async fn all_three(iss: &Issuer, q: &str) -> [Reply; 3] {
    [
        iss.send(iss.http.get(iss.url(&format!("/api/turn-credentials{q}")))).await,
        iss.send(iss.http.post(iss.url(&format!("/api/turn-credentials{q}")))).await,
        iss.send(iss.http.post(iss.url(&format!("/api/turn/credentials{q}"))).json(&json!({"ttl": 600}))).await,
    ]
}

/// Asserts the object shape (Cloudflare's `generate`) with a credential that verifies.
fn assert_object(iss: &Issuer, r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let o = body["iceServers"].as_object().unwrap_or_else(|| panic!("object shape: {body}"));
    let urls: Vec<&str> = o["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(
        urls,
        [
            "stun:turn.test.example:3478",
            "turn:turn.test.example:3478?transport=udp",
            "turn:turn.test.example:3478?transport=tcp",
            "turns:turn.test.example:5349?transport=tcp"
        ]
    );
    let (user, cred) = (o["username"].as_str().unwrap(), o["credential"].as_str().unwrap());
    assert!(iss.ring.verify_password(user, cred, UnixTime(T0)).is_ok());
}

fn assert_array(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let a = body["iceServers"].as_array().unwrap_or_else(|| panic!("array shape: {body}"));
    assert_eq!(a.len(), 2);
}

#[tokio::test]
async fn shape_per_request_and_per_endpoint() {
    let iss = Issuer::start(|_, _| {}).await;
    for r in all_three(&iss, "").await {
        assert_array(&r);
    }
    for r in all_three(&iss, "?shape=object").await {
        assert_object(&iss, &r);
    }
    for r in all_three(&iss, "?shape=array&t=1700000000").await {
        assert_array(&r);
    }
    // Configured per endpoint; the request still wins.
    let iss = Issuer::start(|c, _| {
        c.app.shape.get_turn_credentials = Shape::Object;
        c.app.shape.post_turn_slash_credentials = Shape::Object;
    })
    .await;
    let [get, post, post_slash] = all_three(&iss, "").await;
    assert_object(&iss, &get);
    assert_array(&post);
    assert_object(&iss, &post_slash);
    for r in all_three(&iss, "?shape=array").await {
        assert_array(&r);
    }
    // A bad value is a 400 in the fallback form.
    for q in ["?shape=objects", "?shape=", "?shape=object&shape=array"] {
        for r in all_three(&iss, q).await {
            assert_eq!(r.status, 400, "{q}");
            assert_eq!(r.json(), json!({"error": "shape must be object or array", "fallback": true}));
        }
    }
    // The Cloudflare-compatible paths have their own shapes and ignore the parameter.
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    let r = iss.post_json(&format!("{path}?shape=object"), Some(&iss.key.token), None).await;
    assert!(r.json()["iceServers"].is_array());
}

#[tokio::test]
async fn the_object_shape_fallback_is_an_object_too() {
    let iss = Issuer::start(|c, _| c.app.shape.get_turn_credentials = Shape::Object).await;
    iss.set_ready(false);
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        json!({"error": "no relay available", "fallback": true, "iceServers": {"urls": ["stun:turn.test.example:3478"]}})
    );
    let r = iss.send(iss.http.get(iss.url("/api/turn-credentials?shape=array"))).await;
    assert_eq!(r.json()["iceServers"], json!([{"urls": ["stun:turn.test.example:3478"]}]));
}

/// The byte offsets of `"urls"`, `"username"` and `"credential"` in `text` from `from` on.
fn key_order(text: &str, from: usize) -> [usize; 3] {
    let at = |k: &str| from + text[from..].find(k).unwrap_or_else(|| panic!("{k} missing in {text}"));
    [at("\"urls\""), at("\"username\""), at("\"credential\"")]
}

#[tokio::test]
async fn entries_serialize_in_cloudflare_field_order() {
    let iss = Issuer::start(|_, _| {}).await;
    let gen = |what: &str| iss.generate_path(&iss.key.id, what);
    let replies = [
        iss.post_json(&gen("generate-ice-servers"), Some(&iss.key.token), None).await,
        iss.post_json(&gen("generate"), Some(&iss.key.token), None).await,
        iss.send(iss.http.get(iss.url("/api/turn-credentials"))).await,
        iss.send(iss.http.get(iss.url("/api/turn-credentials?shape=object"))).await,
    ];
    for r in replies {
        assert!(r.text.starts_with("{\"iceServers\":"), "{}", r.text);
        // The entry with the credential: after the STUN-only one in the array shape.
        let turn = r.text.find("\"turn:").unwrap();
        let entry = r.text[..turn].rfind('{').unwrap();
        let [urls, username, credential] = key_order(&r.text, entry);
        assert!(urls < username && username < credential, "{}", r.text);
        let v: Value = r.json();
        assert!(v["iceServers"].is_array() || v["iceServers"].is_object());
    }
}

#[tokio::test]
async fn extension_origins_are_allowed_exactly() {
    let iss = Issuer::start(|c, _| c.app.allowed_origins = vec![CHROME_EXT.to_owned(), MOZ_EXT.to_owned()]).await;
    for origin in [CHROME_EXT, MOZ_EXT] {
        let r = iss.send(iss.http.get(iss.url("/api/turn-credentials")).header("origin", origin)).await;
        assert_eq!(r.status, 200, "{origin}: {}", r.text);
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        let r = iss
            .send(
                iss.http
                    .request(reqwest::Method::OPTIONS, iss.url("/api/turn/credentials"))
                    .header("origin", origin)
                    .header("access-control-request-method", "POST"),
            )
            .await;
        assert_eq!(r.status, 204, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    }
    for other in [
        "chrome-extension://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb.evil",
        "moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2e",
        "https://gjiajdnndcdbgggopkgjioifknkmklcb",
    ] {
        let r = iss.send(iss.http.get(iss.url("/api/turn-credentials")).header("origin", other)).await;
        assert_eq!(r.status, 403, "{other}");
        assert!(r.header("access-control-allow-origin").is_none());
    }
}

#[tokio::test]
async fn a_key_created_by_another_process_is_another_key_at_once() {
    let iss = Issuer::start(|_, _| {}).await;
    // `turnkey keys create` while the issuer runs: the running process has not scanned it yet.
    let out: Value = serde_json::from_str(&keys_create(iss.dir.path(), KeyOptions::default(), T0).unwrap()).unwrap();
    let token = out["token"].as_str().unwrap();
    let path = iss.generate_path(&iss.key.id, "generate-ice-servers");
    let r = iss.post_json(&path, Some(token), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(r.json(), json!({"error": "token is not valid for this key"}));
    assert!(r.header("www-authenticate").is_none());
    // A token of no key stays 401, on an existing and on an unknown key id; a valid token of
    // another key is 403 on an unknown key id too (which reveals nothing about that id).
    assert_eq!(iss.post_json(&path, Some("no-such-token"), None).await.status, 401);
    let unknown = iss.generate_path(&"0".repeat(32), "generate-ice-servers");
    assert_eq!(iss.post_json(&unknown, Some("no-such-token"), None).await.status, 401);
    assert_eq!(iss.post_json(&unknown, Some(token), None).await.status, 403);
}
