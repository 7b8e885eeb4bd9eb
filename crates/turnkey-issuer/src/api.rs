//! The Cloudflare-compatible API under `/v1/turn/keys/{id}/credentials/...`, authenticated by the
//! key's bearer token.
//!
//! Authentication: no `Authorization: Bearer` header → 401 with `WWW-Authenticate: Bearer`; a
//! token of no key (or a key id that does not exist) → 401 `error="invalid_token"`; a token valid
//! for another key → 403. A `token`/`access_token` query parameter is refused with 400 on every
//! path before anything else (see `router.rs`), so it can never authenticate.
//!
//! Revoke: the username must be a TURN REST username `<expiry>:<keyid>[:<label>]` whose key part
//! is this key's id (another key's id → 403; not a turnkey username at all → 400) and whose
//! expiry is at most 172800 s ahead (else it could not have been minted → 400). An already
//! expired or already revoked username is accepted (204) with nothing to do. In fleet mode the
//! revocation is also published to every relay; when that fails (Redis unreachable) the answer
//! is 503 and the client retries (the revocation already holds on this process).
//!
//! `?region=` on the generate endpoints (fleet mode) prefers relays of that region.
//! `GET /v1/fleet` (fleet mode; 404 otherwise) lists the relays with health and load; any key's
//! token authenticates it, with the same 401 rules.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use turnkey_auth::RestUsername;

use crate::bearer::bearer_token;
use crate::body::read_request;
use crate::config::ABSOLUTE_MAX_TTL;
use crate::error::ApiError;
use crate::fleet::requested_region;
use crate::ice;
use crate::ice_shape::IceServer;
use crate::ice_shape::Shape;
use crate::issue::{issue, Issued, Servers};
use crate::keys::{is_valid_key_id, KeyInfo, TokenCheck};
use crate::revocations::Revoked;
use crate::state::IssuerState;

/// `POST /v1/turn/keys/{id}/credentials/generate-ice-servers` → 201 array shape.
pub(crate) async fn generate_ice_servers(
    State(state): State<IssuerState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    generate(state, path, req, Shape::Array).await
}

/// `POST /v1/turn/keys/{id}/credentials/generate` → 201 object shape.
pub(crate) async fn generate_object(
    State(state): State<IssuerState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    generate(state, path, req, Shape::Object).await
}

async fn generate(
    state: IssuerState,
    path: Result<Path<String>, PathRejection>,
    req: Request,
    shape: Shape,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::NotFound)?;
    let (parts, body) = req.into_parts();
    let key = authenticate(&state, &id, &parts.headers)?;
    let region = requested_region(parts.uri.query())?;
    let request = read_request(&parts.headers, body, state.inner.config.max_body_bytes).await?;
    let ttl = request.ttl(state.inner.config.default_ttl, max_ttl(&state, &key))?;
    let custom = match shape {
        Shape::Object => request.custom_identifier.as_deref(),
        Shape::Array => None,
    };
    let issued = issue(&state, &key, ttl, custom, shape, region.as_ref()).await?;
    Ok(credential_response(StatusCode::CREATED, issued))
}

/// `POST /v1/turn/keys/{id}/credentials/{username}/revoke` → 204.
pub(crate) async fn revoke(
    State(state): State<IssuerState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    _body: Body,
) -> Result<Response, ApiError> {
    let Path((id, username)) = path.map_err(|_| ApiError::NotFound)?;
    let key = authenticate(&state, &id, &headers)?;
    let parsed = RestUsername::parse(&username)
        .map_err(|_| ApiError::BadRequest("not a TURN REST username <expiry>:<userid>"))?;
    let owner = ice::key_of_userid(parsed.userid());
    if !is_valid_key_id(owner) {
        return Err(ApiError::BadRequest("username was not issued by this service"));
    }
    if owner != key.id {
        return Err(ApiError::ForeignUsername);
    }
    let now = state.now();
    if parsed.expiry() > now.plus_secs(ABSOLUTE_MAX_TTL) {
        return Err(ApiError::BadRequest("username expiry is beyond any possible ttl"));
    }
    let expiry = parsed.expiry();
    // The rewrite of revocations.json syncs to disk: keep it off the async workers.
    let (st, user) = (state.clone(), username.clone());
    let outcome = tokio::task::spawn_blocking(move || st.inner.revocations.revoke(&user, expiry, now))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "persisting revocations failed");
            ApiError::Internal
        })?;
    match outcome {
        Revoked::New => {
            state.inner.metrics.revocations.inc();
            tracing::info!(key = %key.id, username = %username, "credential revoked");
        }
        Revoked::Already => {}
        Revoked::AlreadyExpired => return Ok(StatusCode::NO_CONTENT.into_response()),
        Revoked::Full => return Err(ApiError::RevocationsFull),
        Revoked::Unreachable => {
            tracing::warn!(key = %key.id, "revocation refused: no relay watches this data directory's revocation list");
            return Err(ApiError::RevocationUnreachable);
        }
    }
    // Published again when already revoked here: an earlier publish may have failed.
    if let Some(fleet) = &state.inner.fleet {
        if !fleet.revoke(&username, expiry.0).await {
            return Err(ApiError::FleetUnavailable);
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/fleet` → 200 [`crate::FleetListing`] (fleet mode only).
pub(crate) async fn fleet(State(state): State<IssuerState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = bearer_token(&headers)?;
    state.inner.keys.check_any(token).ok_or(ApiError::InvalidToken)?;
    let directory = state.inner.directory.as_ref().ok_or(ApiError::NotFound)?;
    let mut resp = Json(directory.listing()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The bearer check described in the module doc.
pub(crate) fn authenticate(state: &IssuerState, id: &str, headers: &HeaderMap) -> Result<KeyInfo, ApiError> {
    let token = bearer_token(headers)?;
    match state.inner.keys.check_token(id, token) {
        TokenCheck::Valid(k) => Ok(k),
        TokenCheck::OtherKey => Err(ApiError::WrongKey),
        TokenCheck::Invalid => Err(ApiError::InvalidToken),
    }
}

/// The issuer's `max_ttl`, lowered by the key's own.
pub(crate) fn max_ttl(state: &IssuerState, key: &KeyInfo) -> u64 {
    let global = state.inner.config.max_ttl;
    key.max_ttl.map_or(global, |k| k.clamp(1, global))
}

/// A credential-carrying JSON answer with `Cache-Control: no-store`. Serialized from typed
/// structs (not a `serde_json::Value`, whose maps sort their keys), so entries keep Cloudflare's
/// field order: `urls`, `username`, `credential`.
pub(crate) fn credential_response(status: StatusCode, issued: Issued) -> Response {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Shaped {
        Array(Vec<IceServer>),
        Object(IceServer),
    }
    #[derive(Serialize)]
    struct Answer {
        #[serde(rename = "iceServers")]
        ice_servers: Shaped,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl: Option<u64>,
    }
    let ice_servers = match issued.servers {
        Servers::Array(v) => Shaped::Array(v),
        Servers::Object(o) => Shaped::Object(o),
    };
    let body = Answer { ice_servers, ttl: issued.shorter_ttl };
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
