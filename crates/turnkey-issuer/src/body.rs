//! Reading and validating the JSON request body `{"ttl": N, "customIdentifier": "..."}`.
//!
//! - Larger than `max_body_bytes` (by `Content-Length` or by what arrives): 413.
//! - A non-empty body whose `Content-Type` is not `application/json` (parameters such as
//!   `charset` allowed): 415. An empty body is accepted with any or no content type and means
//!   "all defaults".
//! - Not JSON, or JSON that is not an object: 400.
//! - `ttl`: absent means the default; otherwise an integer in `1..=max` (the issuer's `max_ttl`,
//!   lowered by the key's own `max_ttl`). Zero, negative, fractional (`1.5`, `1.0`), string,
//!   `null` or above the maximum: 400.
//! - `customIdentifier`: absent or a string (sanitized, see [`crate::ice::sanitize_custom_id`]);
//!   any other type: 400.
//! - Unknown fields are ignored (as Cloudflare's clients may send more).

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::error::ApiError;

/// A parsed credential request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CredentialRequest {
    /// The TTL asked for, if any (not yet range-checked).
    pub ttl: Option<Value>,
    /// The raw `customIdentifier`, if any.
    pub custom_identifier: Option<String>,
}

impl CredentialRequest {
    /// The TTL to mint with: the default when absent, else an integer within `1..=max`.
    pub fn ttl(&self, default: u64, max: u64) -> Result<u64, ApiError> {
        const MSG: &str = "ttl must be an integer number of seconds between 1 and the maximum ttl";
        match &self.ttl {
            None => Ok(default.min(max)),
            Some(v) => match v.as_u64() {
                Some(t) if (1..=max).contains(&t) => Ok(t),
                _ => Err(ApiError::BadRequest(MSG)),
            },
        }
    }
}

/// Reads the body (bounded by `limit`) and parses it per the rules above.
pub async fn read_request(headers: &HeaderMap, body: Body, limit: usize) -> Result<CredentialRequest, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::PayloadTooLarge)?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(CredentialRequest::default());
    }
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| ApiError::BadRequest("malformed JSON body"))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::BadRequest("body must be a JSON object"));
    };
    let custom_identifier = match map.remove("customIdentifier") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::BadRequest("customIdentifier must be a string")),
    };
    Ok(CredentialRequest { ttl: map.remove("ttl"), custom_identifier })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|essence| essence.eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        h
    }

    async fn read(h: &HeaderMap, body: &'static str) -> Result<CredentialRequest, ApiError> {
        read_request(h, Body::from(body), 64).await
    }

    #[tokio::test]
    async fn ttl_bounds() {
        let h = json_headers();
        let ttl = |body: &'static str| {
            let h = h.clone();
            async move { read(&h, body).await.and_then(|r| r.ttl(86_400, 172_800)) }
        };
        assert_eq!(ttl("").await.unwrap(), 86_400);
        assert_eq!(ttl("{}").await.unwrap(), 86_400);
        assert_eq!(ttl(r#"{"ttl": 1}"#).await.unwrap(), 1);
        assert_eq!(ttl(r#"{"ttl": 172800}"#).await.unwrap(), 172_800);
        for bad in [
            r#"{"ttl": 0}"#,
            r#"{"ttl": -1}"#,
            r#"{"ttl": 172801}"#,
            r#"{"ttl": "abc"}"#,
            r#"{"ttl": "60"}"#,
            r#"{"ttl": 1.5}"#,
            r#"{"ttl": 60.0}"#,
            r#"{"ttl": null}"#,
            r#"{"ttl": 1e3}"#,
        ] {
            let e = ttl(bad).await.unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e:?}");
        }
    }

    #[tokio::test]
    async fn media_type_size_and_syntax() {
        assert!(matches!(read(&HeaderMap::new(), r#"{"ttl":5}"#).await, Err(ApiError::UnsupportedMediaType)));
        let mut text = HeaderMap::new();
        text.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(read(&text, r#"{"ttl":5}"#).await, Err(ApiError::UnsupportedMediaType)));
        let big = "{\"ttl\": 5, \"pad\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}";
        assert!(matches!(read(&json_headers(), big).await, Err(ApiError::PayloadTooLarge)));
        assert!(matches!(read(&json_headers(), "{").await, Err(ApiError::BadRequest(_))));
        assert!(matches!(read(&json_headers(), "[1]").await, Err(ApiError::BadRequest(_))));
        let r = read(&json_headers(), r#"{"customIdentifier":"u1"}"#).await.unwrap();
        assert_eq!(r.custom_identifier.as_deref(), Some("u1"));
        assert!(read(&json_headers(), r#"{"customIdentifier":5}"#).await.is_err());
    }
}
