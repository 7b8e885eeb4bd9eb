//! The browser-facing endpoints: `GET`/`POST /api/turn-credentials` and `POST /api/turn/credentials`
//! (body `{"ttl": N}` optional on both POSTs). No token: they issue for the configured app key.
//!
//! Success: 200 `{"iceServers": [...]}` (array shape) or `{"iceServers": {urls, username,
//! credential}}` (object shape, Cloudflare's older `generate` answer, which some pages hand
//! straight to `RTCPeerConnection`), `Cache-Control: no-store`. The shape is the request's
//! `?shape=object|array`, else the endpoint's entry in `[issuer.app.shape]` (default array).
//!
//! Failure: always JSON with `"fallback": true` so the page falls back to STUN-only:
//! - 4xx (bad ttl 400, body 413/415, origin refused 403, rate limit 429 with `Retry-After`,
//!   bandwidth cap 429 `"Bandwidth limit reached"`): `{"error": "...", "fallback": true}`;
//! - 5xx (no relay and no upstream 503, upstream failure 502/503/504, app key missing 503):
//!   `{"error": "...", "fallback": true, "iceServers": [<STUN-only entry>]}` (object shape:
//!   `"iceServers": <STUN-only entry>`).
//!
//! CORS: the `Origin` must be exactly one of `app.allowed_origins` (byte-for-byte; a look-alike
//! such as `https://app.example.com.evil.net` is not; browser extensions send
//! `chrome-extension://<id>` or `moz-extension://<uuid>`) or the issuer's own origin (its `Host`);
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
use crate::fleet::requested_region;
use crate::ice_shape::Shape;
use crate::issue::issue;
use crate::origin::same_origin;
use crate::ratelimit::{client_ip, Verdict};
use crate::state::IssuerState;

/// `GET /api/turn-credentials`: default TTL.
pub(crate) async fn get_credentials(State(state): State<IssuerState>, req: Request) -> Response {
    let shape = state.inner.config.app.shape.get_turn_credentials;
    answer(&state, req, false, shape).await
}

/// `POST /api/turn-credentials`: optional `{"ttl": N}`.
pub(crate) async fn post_credentials(State(state): State<IssuerState>, req: Request) -> Response {
    let shape = state.inner.config.app.shape.post_turn_credentials;
    answer(&state, req, true, shape).await
}

/// `POST /api/turn/credentials`: optional `{"ttl": N}`.
pub(crate) async fn post_turn_credentials(State(state): State<IssuerState>, req: Request) -> Response {
    let shape = state.inner.config.app.shape.post_turn_slash_credentials;
    answer(&state, req, true, shape).await
}

/// `OPTIONS` on the app paths (the CORS middleware adds the preflight headers).
pub(crate) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// The answer in the shape the request names with `?shape=`, else the endpoint's configured one;
/// failures in the same shape (see [`ApiError::into_app_response`]).
async fn answer(state: &IssuerState, req: Request, with_body: bool, configured: Shape) -> Response {
    let stun = state.inner.advertised.stun_only();
    let shape = match requested_shape(req.uri().query()) {
        Ok(s) => s.unwrap_or(configured),
        Err(e) => return e.into_app_response(stun, configured),
    };
    match serve(state, req, with_body, shape).await {
        Ok(r) => r,
        Err(e) => e.into_app_response(stun, shape),
    }
}

/// The `shape` query parameter: absent, `array` or `object` (given more than once, every value
/// must agree); anything else is a 400. Other parameters (cache busters) are ignored.
fn requested_shape(query: Option<&str>) -> Result<Option<Shape>, ApiError> {
    const MSG: &str = "shape must be object or array";
    let mut shape = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "shape" {
            continue;
        }
        let s = Shape::parse(value).ok_or(ApiError::BadRequest(MSG))?;
        if shape.is_some_and(|prev| prev != s) {
            return Err(ApiError::BadRequest(MSG));
        }
        shape = Some(s);
    }
    Ok(shape)
}

async fn serve(state: &IssuerState, req: Request, with_body: bool, shape: Shape) -> Result<Response, ApiError> {
    let s = &state.inner;
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = client_ip(peer, req.headers(), &s.config.app.trusted_proxies);
    let region = requested_region(req.uri().query())?;
    if let Verdict::Limited { retry_after } = limit(state, client).await {
        s.metrics.rate_limited.inc();
        return Err(ApiError::RateLimited { retry_after });
    }
    let (parts, body) = req.into_parts();
    let request = if with_body {
        read_request(&parts.headers, body, s.config.max_body_bytes).await?
    } else {
        CredentialRequest::default()
    };
    let key_id = s.app_key().ok_or(ApiError::NotConfigured)?;
    let key = s.keys.get(&key_id).ok_or(ApiError::NotConfigured)?;
    let ttl = request.ttl(s.config.default_ttl, max_ttl(state, &key))?;
    let issued = issue(state, &key, ttl, None, shape, region.as_ref()).await?;
    Ok(credential_response(StatusCode::OK, issued))
}

/// The rate limit: across the fleet when in fleet mode and Redis answers, else this process's.
async fn limit(state: &IssuerState, client: IpAddr) -> Verdict {
    let s = &state.inner;
    if let Some(fleet) = &s.fleet {
        let rl = &s.config.app.rate_limit;
        let bucket = crate::ratelimit::bucket(client).to_string();
        if let Some(v) = fleet.rate_limit(&bucket, rl.requests, rl.window_secs).await {
            return v;
        }
    }
    s.limiter.check(client, state.now())
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
                let stun = state.inner.advertised.stun_only();
                let mut resp = ApiError::OriginNotAllowed.into_app_response(stun, Shape::Array);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_parameter() {
        assert_eq!(requested_shape(None).unwrap(), None);
        assert_eq!(requested_shape(Some("t=123")).unwrap(), None);
        assert_eq!(requested_shape(Some("shape=object")).unwrap(), Some(Shape::Object));
        assert_eq!(requested_shape(Some("x=1&shape=array")).unwrap(), Some(Shape::Array));
        assert_eq!(requested_shape(Some("shape=object&shape=object")).unwrap(), Some(Shape::Object));
        for bad in ["shape=", "shape", "shape=Object", "shape=objects", "shape=object&shape=array", "shape=%6Fbject"] {
            assert!(requested_shape(Some(bad)).is_err(), "{bad}");
        }
    }
}
