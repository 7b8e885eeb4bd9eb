//! The live-session endpoints over HTTP: `GET /v1/sessions`, `GET /v1/sessions/{id}` and
//! `DELETE /v1/sessions/{id}`, scoped by the bearer token (the model, the scoping rule and the
//! [`SessionSource`] port are in [`crate::sessions`]).

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::bearer::bearer_token;
use crate::error::ApiError;
use crate::sessions::{is_session_id, select, Scope, Session, SessionQuery, SessionSource, SessionsFailure};
use crate::state::IssuerState;

/// Who the bearer token is: an operator, a key, or nobody (401).
fn scope(state: &IssuerState, headers: &HeaderMap) -> Result<Scope, ApiError> {
    let token = bearer_token(headers)?;
    if state.inner.admin_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok(Scope::All);
    }
    let key = state.inner.keys.check_any(token).ok_or(ApiError::InvalidToken)?;
    Ok(if key.admin { Scope::All } else { Scope::Key(key.id) })
}

fn source(state: &IssuerState) -> Result<&dyn SessionSource, ApiError> {
    state.inner.sessions.as_deref().ok_or_else(|| SessionsFailure::NoRelay.into())
}

fn no_store(body: impl Serialize, status: StatusCode) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The session a `/v1/sessions/{id}` path names, if the bearer token may see it: 401 for a
/// missing or unknown token first, then the same 404 for an id that is malformed, unknown or
/// another key's (a key cannot learn which sessions exist beyond its own).
pub(crate) struct ScopedSession(Session);

impl FromRequestParts<IssuerState> for ScopedSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &IssuerState) -> Result<Self, ApiError> {
        let scope = scope(state, &parts.headers)?;
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| ApiError::SessionNotFound)?;
        if !is_session_id(&id) {
            return Err(ApiError::SessionNotFound);
        }
        let all = source(state)?.list().await?;
        all.into_iter().find(|s| s.id == id && scope.allows(s)).map(Self).ok_or(ApiError::SessionNotFound)
    }
}

/// `GET /v1/sessions` → 200 [`SessionPage`].
pub(crate) async fn list(
    State(state): State<IssuerState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let scope = scope(&state, &headers)?;
    let Query(pairs) = query.map_err(|_| ApiError::BadRequest("malformed query string"))?;
    let q = SessionQuery::from_pairs(&pairs)?;
    let all = source(&state)?.list().await?;
    Ok(no_store(select(all, &scope, &q), StatusCode::OK))
}

/// `GET /v1/sessions/{id}` → 200 [`Session`].
pub(crate) async fn get(ScopedSession(session): ScopedSession) -> Response {
    no_store(session, StatusCode::OK)
}

/// `DELETE /v1/sessions/{id}` → 204 once the owning relay ended it.
pub(crate) async fn delete(
    State(state): State<IssuerState>,
    ScopedSession(session): ScopedSession,
) -> Result<Response, ApiError> {
    if !source(&state)?.end(&session).await? {
        return Err(ApiError::SessionNotFound);
    }
    tracing::info!(id = %session.id, node = %session.node, user = %session.user, "session ended by an operator");
    Ok(StatusCode::NO_CONTENT.into_response())
}
