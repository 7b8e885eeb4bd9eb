//! [`router`]: every route and the global middleware (metrics, query-token refusal, security
//! headers). [`crate::serve`] runs it within bounds.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::state::IssuerState;
use crate::{api, app, bandwidth, selftest, sessions_api};

/// The OpenAPI 3 document of every endpoint (`docs/api/openapi.yaml`).
pub const OPENAPI_YAML: &str = include_str!("../../../docs/api/openapi.yaml");

/// The issuer's HTTP API. Serve it with [`crate::serve`] (which provides the peer address the
/// rate limit needs); with another server, use
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(state: IssuerState) -> Router {
    let v1 = Router::new()
        .route("/v1/turn/keys/{id}/credentials/generate-ice-servers", post(api::generate_ice_servers))
        .route("/v1/turn/keys/{id}/credentials/generate", post(api::generate_object))
        .route("/v1/turn/keys/{id}/credentials/{username}/revoke", post(api::revoke))
        .route("/v1/fleet", get(api::fleet))
        .route("/v1/sessions", get(sessions_api::list))
        .route("/v1/sessions/{id}", get(sessions_api::get).delete(sessions_api::delete));
    let app_routes = Router::new()
        .route("/api/turn-credentials", get(app::get_credentials).post(app::post_credentials).options(app::preflight))
        .route("/api/turn/credentials", post(app::post_turn_credentials).options(app::preflight))
        .route("/api/bandwidth-status", get(bandwidth::status).options(app::preflight))
        .route_layer(middleware::from_fn_with_state(state.clone(), app::cors));
    Router::new()
        .merge(v1)
        .merge(app_routes)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(openapi))
        .route("/test", get(selftest::page))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn(refuse_query_tokens))
        .with_state(state)
}

/// Calls [`IssuerState::maintain`] every `interval`, forever (spawn it and abort it on shutdown).
pub async fn run_maintenance(state: IssuerState, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = state.clone();
        // Directory scans and file writes are blocking I/O.
        let _ = tokio::task::spawn_blocking(move || s.maintain()).await;
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<IssuerState>) -> Response {
    let ready = match &state.inner.directory {
        Some(d) => !d.choose(None, 1).is_empty(),
        None => state.inner.relay.ready(),
    };
    if ready {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready"}))).into_response()
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"))], OPENAPI_YAML).into_response()
}

/// Records `turnkey_issuer_requests_total` and the duration per route template.
async fn track(State(state): State<IssuerState>, req: Request, next: Next) -> Response {
    let endpoint =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.inner.metrics.observe_request(&endpoint, resp.status().as_u16(), start.elapsed().as_secs_f64());
    resp
}

/// Refuses (400) any request carrying a token in the query string, before routing, so such a
/// token is never looked at; also sets `X-Content-Type-Options: nosniff` on every answer.
async fn refuse_query_tokens(req: Request, next: Next) -> Response {
    let offending = req.uri().query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            ["token", "access_token"].iter().any(|t| name.eq_ignore_ascii_case(t))
        })
    });
    let mut resp = if offending { ApiError::TokenInQuery.into_response() } else { next.run(req).await };
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}
