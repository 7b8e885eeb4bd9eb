//! The bearer token of a request (`Authorization: Bearer <token>`), read the same way by every
//! endpoint that takes one.

use axum::http::{header, HeaderMap};

use crate::error::ApiError;

/// The token of an `Authorization: Bearer` header (401 when missing or malformed).
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?
        .to_str()
        .map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(ApiError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    Ok(token)
}
