//! A local double of Cloudflare's TURN credential API, following `shared/cloudflare-api.md`:
//! `POST /v1/turn/keys/{id}/credentials/generate-ice-servers` with `Authorization: Bearer`,
//! body `{"ttl": N}` (at most 172800), answering 201 with the array shape (STUN entry first, then
//! one TURN entry with a username/credential pair). It can be told to fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// A string that appears in every failing upstream body: it must never reach a client.
pub const UPSTREAM_BODY_MARKER: &str = "UPSTREAM-PRIVATE-BODY-7f3a";

/// How the double answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 201 with the documented array shape.
    Ok,
    /// This status with a body carrying the marker.
    Status(u16),
    /// Fail the next `n` requests with 500, then behave as `Ok`.
    FailFirst(usize),
    /// Sleep this long, then answer `Ok`.
    Slow(Duration),
    /// 201 with a body that is not JSON.
    Malformed,
}

#[derive(Debug)]
struct Shared {
    key_id: String,
    token: String,
    behaviour: Mutex<Behaviour>,
    hits: AtomicUsize,
    ttls: Mutex<Vec<Value>>,
}

/// A running double.
#[derive(Debug, Clone)]
pub struct CloudflareDouble {
    /// `http://127.0.0.1:PORT/v1/turn` (what turnkey's `upstream.base_url` is set to).
    pub base_url: String,
    /// The upstream key id.
    pub key_id: String,
    /// The upstream API token.
    pub token: String,
    shared: Arc<Shared>,
}

impl CloudflareDouble {
    /// Starts the double on 127.0.0.1:0.
    pub async fn start() -> Self {
        let key_id = "cfcfcfcfcfcfcfcfcfcfcfcfcfcfcfcf".to_owned();
        let token = "cf-upstream-token-SECRET-93c1d".to_owned();
        let shared = Arc::new(Shared {
            key_id: key_id.clone(),
            token: token.clone(),
            behaviour: Mutex::new(Behaviour::Ok),
            hits: AtomicUsize::new(0),
            ttls: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/turn/keys/{id}/credentials/generate-ice-servers", post(generate_ice_servers))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base_url: format!("http://{addr}/v1/turn"), key_id, token, shared }
    }

    /// Changes how the double answers.
    pub fn set(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = b;
    }

    /// Requests received so far (authenticated or not).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// The `ttl` values received.
    pub fn ttls(&self) -> Vec<Value> {
        self.shared.ttls.lock().unwrap().clone()
    }
}

async fn generate_ice_servers(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let n = s.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let behaviour = {
        let mut b = s.behaviour.lock().unwrap();
        let current = b.clone();
        if let Behaviour::FailFirst(k) = current {
            if k > 0 {
                *b = Behaviour::FailFirst(k - 1);
            } else {
                *b = Behaviour::Ok;
            }
        }
        current
    };
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != format!("Bearer {}", s.token) {
        return (StatusCode::UNAUTHORIZED, format!("{UPSTREAM_BODY_MARKER} bad token")).into_response();
    }
    if id != s.key_id {
        return (StatusCode::NOT_FOUND, UPSTREAM_BODY_MARKER).into_response();
    }
    let ok_type =
        headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let ttl = parsed.as_ref().and_then(|v| v.get("ttl")).cloned();
    if !ok_type || !matches!(ttl.as_ref().and_then(Value::as_u64), Some(1..=172_800)) {
        return (StatusCode::BAD_REQUEST, UPSTREAM_BODY_MARKER).into_response();
    }
    s.ttls.lock().unwrap().push(ttl.unwrap_or(Value::Null));
    match behaviour {
        Behaviour::Ok => {}
        Behaviour::FailFirst(0) => {}
        Behaviour::FailFirst(_) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{UPSTREAM_BODY_MARKER} oops")).into_response()
        }
        Behaviour::Status(code) => {
            return (StatusCode::from_u16(code).unwrap(), format!("{UPSTREAM_BODY_MARKER} status {code}"))
                .into_response()
        }
        Behaviour::Slow(d) => tokio::time::sleep(d).await,
        Behaviour::Malformed => {
            return (StatusCode::CREATED, format!("<html>{UPSTREAM_BODY_MARKER}</html>")).into_response()
        }
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "iceServers": [
                { "urls": ["stun:stun.cloudflare.com:3478", "stun:stun.cloudflare.com:53"] },
                {
                    "urls": [
                        "turn:turn.cloudflare.com:3478?transport=udp",
                        "turn:turn.cloudflare.com:53?transport=udp",
                        "turn:turn.cloudflare.com:3478?transport=tcp",
                        "turn:turn.cloudflare.com:80?transport=tcp",
                        "turns:turn.cloudflare.com:5349?transport=tcp",
                        "turns:turn.cloudflare.com:443?transport=tcp"
                    ],
                    "username": format!("cf-user-{n}"),
                    "credential": format!("cf-credential-{n}")
                }
            ]
        })),
    )
        .into_response()
}
