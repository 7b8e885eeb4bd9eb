//! The issuer's request bodies through the real router: `generate-ice-servers`, `generate`, the
//! browser endpoint and revoke get fuzzed bodies, content types and usernames. No input may
//! panic or produce a 5xx other than the documented 503s, and every answer is JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request};
use tower::ServiceExt as _;
use turnkey_auth::{RevocationSet, Secret, SecretRing, UnixTime};
use turnkey_issuer::{FixedRelayStatus, IssuerConfig, IssuerDeps, IssuerState};

struct Fixture {
    _dir: tempfile::TempDir,
    router: axum::Router,
    id: String,
    token: String,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_800_000_000;
        let key = turnkey_issuer::ensure_default_key(dir.path(), now).expect("default key");
        let token = std::fs::read_to_string(key.token_path.expect("token file")).expect("token");
        let mut config = IssuerConfig::default();
        config.public_host = "fuzz.example".into();
        let state = IssuerState::new(IssuerDeps {
            config,
            data_dir: dir.path().to_path_buf(),
            secrets: SecretRing::new(vec![Secret::new(b"fuzz-secret-not-real")]).expect("ring"),
            revocations: RevocationSet::new(),
            relay: Arc::new(FixedRelayStatus(true)),
            registry: prometheus::Registry::new(),
            clock: Arc::new(move || UnixTime(now)),
            app_key: Some(key.id.clone()),
            fleet: None,
            sessions: None,
        })
        .expect("issuer state");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        Fixture { router: turnkey_issuer::router(state), id: key.id, token: token.trim().to_owned(), rt, _dir: dir }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&sel, body)) = data.split_first() else { return };
    let path = match sel % 4 {
        0 => format!("/v1/turn/keys/{}/credentials/generate-ice-servers", f.id),
        1 => format!("/v1/turn/keys/{}/credentials/generate", f.id),
        2 => "/api/turn/credentials".to_owned(),
        _ => {
            // The body is the username to revoke (percent-encoded into the path).
            let user: String = body.iter().map(|b| format!("%{b:02X}")).collect();
            format!("/v1/turn/keys/{}/credentials/{user}/revoke", f.id)
        }
    };
    let content_type = match (sel >> 2) % 4 {
        0 => "application/json",
        1 => "application/json; charset=utf-8",
        2 => "text/plain",
        _ => "",
    };
    let mut req = Request::post(path).header(header::AUTHORIZATION, format!("Bearer {}", f.token));
    if !content_type.is_empty() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(mut req) = req.body(Body::from(body.to_vec())) else { return };
    req.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([192, 0, 2, 1 + sel % 8], 40_000))));
    let resp = f.rt.block_on(f.router.clone().oneshot(req)).expect("infallible");
    let status = resp.status();
    assert!(!status.is_server_error() || status == 503, "{status}");
    let bytes = f.rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).expect("body");
    if status != 204 {
        serde_json::from_slice::<serde_json::Value>(&bytes).expect("every answer is JSON");
    }
});
