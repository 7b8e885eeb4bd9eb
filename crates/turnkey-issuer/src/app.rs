//! The browser-facing endpoints: `GET`/`POST /api/turn-credentials` and `POST /api/turn/credentials`
//! (body `{"ttl": N}` optional on both POSTs). No token: they issue for the configured app key.
//!
//! Success: 200 `{"iceServers": [...]}` (array shape), `Cache-Control: no-store`.
//!
//! Failure: always JSON with `"fallback": true` so the page falls back to STUN-only:
//! - 4xx (bad ttl 400, body 413/415, origin refused 403, rate limit 429 with `Retry-After`,
//!   bandwidth cap 429 `"Bandwidth limit reached"`): `{"error": "...", "fallback": true}`;
//! - 5xx (no relay and no upstream 503, upstream failure 502/503/504, app key missing 503):
//!   `{"error": "...", "fallback": true, "iceServers": [<STUN-only entry>]}`.
//!
//! CORS: the `Origin` must be exactly one of `app.allowed_origins` (byte-for-byte; a look-alike
//! such as `https://app.example.com.evil.net` is not) or the issuer's own origin (its `Host`);
//! another origin gets 403. Allowed cross-origin answers echo the one origin in
//! `Access-Control-Allow-Origin` (never `*`), every answer carries `Vary: Origin`, and preflight
//! (`OPTIONS`) answers 204 with the allowed methods and the `Content-Type` header. Requests with
//! no `Origin` (server-side callers) are served without CORS headers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::{credential_response, max_ttl};
use crate::body::{read_request, CredentialRequest};
use crate::error::ApiError;
use crate::issue::{issue, Shape};
use crate::ratelimit::{client_ip, Verdict};
use crate::state::IssuerState;

/// `GET /api/turn-credentials`: default TTL.
pub(crate) async fn get_credentials(State(state): State<IssuerState>, req: Request) -> Response {
    let stun = state.inner.advertised.stun_only();
    match serve(&state, req, false).await {
        Ok(r) => r,
        Err(e) => e.into_app_response(stun),
    }
}

/// `POST /api/turn-credentials` and `POST /api/turn/credentials`: optional `{"ttl": N}`.
pub(crate) async fn post_credentials(State(state): State<IssuerState>, req: Request) -> Response {
    let stun = state.inner.advertised.stun_only();
    match serve(&state, req, true).await {
        Ok(r) => r,
        Err(e) => e.into_app_response(stun),
    }
}

/// `OPTIONS` on the app paths (the CORS middleware adds the preflight headers).
pub(crate) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn serve(state: &IssuerState, req: Request, with_body: bool) -> Result<Response, ApiError> {
    let s = &state.inner;
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = client_ip(peer, req.headers(), &s.config.app.trusted_proxies);
    if let Verdict::Limited { retry_after } = s.limiter.check(client, state.now()) {
        s.metrics.rate_limited.inc();
        return Err(ApiError::RateLimited { retry_after });
    }
    let (parts, body) = req.into_parts();
    let request = if with_body {
        read_request(&parts.headers, body, s.config.max_body_bytes).await?
    } else {
        CredentialRequest::default()
    };
    let key_id = s.app_key.as_deref().ok_or(ApiError::NotConfigured)?;
    let key = s.keys.get(key_id).ok_or(ApiError::NotConfigured)?;
    let ttl = request.ttl(s.config.default_ttl, max_ttl(state, &key))?;
    let issued = issue(state, &key, ttl, None, Shape::Array).await?;
    Ok(credential_response(StatusCode::OK, issued))
}

/// The CORS middleware of the app routes (see the module doc).
pub(crate) async fn cors(State(state): State<IssuerState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
    let cfg = &state.inner.config.app;
    let cross_origin_allowed = match &origin {
        None => false,
        Some(o) => {
            let o = o.to_str().unwrap_or("");
            if cfg.allowed_origins.iter().any(|a| a == o) {
                true
            } else if host.as_deref().is_some_and(|h| same_origin(o, h)) {
                false
            } else {
                let mut resp = ApiError::OriginNotAllowed.into_app_response(state.inner.advertised.stun_only());
                resp.headers_mut().append(header::VARY, HeaderValue::from_static("Origin"));
                return resp;
            }
        }
    };
    let is_preflight = req.method() == Method::OPTIONS;
    let mut resp = next.run(req).await.into_response();
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let (true, Some(origin)) = (cross_origin_allowed, origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if cfg.allow_credentials {
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if is_preflight {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        } else {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
        }
    }
    resp
}

/// Whether `origin` is `http(s)://<host>` for the request's own `Host`.
fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_is_exact() {
        assert!(same_origin("https://issuer.example.com", "issuer.example.com"));
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("https://issuer.example.com.evil.net", "issuer.example.com"));
        assert!(!same_origin("https://evil.net", "issuer.example.com"));
        assert!(!same_origin("null", "issuer.example.com"));
    }
}
