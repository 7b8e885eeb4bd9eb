//! The crate's error type ([`Error`]) and the one place where HTTP statuses are chosen
//! ([`ApiError`] and its [`IntoResponse`] implementation).
//!
//! Every handler returns `Result<_, ApiError>`; [`ApiError::status`] is the only mapping from a
//! failure to a status code, and every error body is JSON `{"error": "<message>"}` (plus
//! `"fallback": true` and a STUN-only `iceServers` on the browser-facing endpoints). Messages are
//! fixed strings chosen here: no token, upstream body or internal path ever reaches a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::ice_shape::{IceServer, Shape};

/// Everything that can fail in the issuer outside an HTTP exchange: configuration, key files,
/// revocation persistence, the upstream client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent (the message says which setting).
    #[error("invalid issuer configuration: {0}")]
    Config(String),
    /// Reading or writing a file in the data directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A key file or the revocation file does not parse.
    #[error("malformed file {path}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong (never file contents).
        message: String,
    },
    /// A key id is not 32 lowercase hex characters.
    #[error("invalid key id (expected 1-64 characters of A-Z a-z 0-9 . _ -)")]
    InvalidKeyId,
    /// No key with that id exists.
    #[error("no such key: {0}")]
    NoSuchKey(String),
    /// Keys are shared through the fleet: this store cannot create or delete them.
    #[error("keys live in the fleet (Redis): use `turnkey keys --redis URL ...`")]
    SharedKeys,
    /// The upstream token could not be read (the message names the file or variable only).
    #[error("upstream token unavailable: {0}")]
    UpstreamToken(String),
    /// Building the HTTP client failed.
    #[error("cannot build the upstream HTTP client: {0}")]
    HttpClient(String),
    /// A metric could not be registered (usually registered twice in one registry).
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

/// Why the upstream (Cloudflare) could not serve. Never carries the upstream body or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No upstream is configured.
    NotConfigured,
    /// The circuit breaker is open.
    CircuitOpen,
    /// Every try timed out.
    Timeout,
    /// The upstream answered with an error status or a body that is not the documented shape.
    BadGateway,
}

/// A failure of one HTTP exchange. [`ApiError::status`] picks its status code; nothing else does.
#[derive(Debug)]
pub enum ApiError {
    /// No `Authorization: Bearer` header (401 with `WWW-Authenticate: Bearer`).
    MissingToken,
    /// A token that is valid for no key, or a key id that does not exist (401).
    InvalidToken,
    /// A token valid for another key (403).
    WrongKey,
    /// A token offered in the query string (400); it is never used.
    TokenInQuery,
    /// The request body is larger than the configured cap (413).
    PayloadTooLarge,
    /// A body that is not `application/json` (415).
    UnsupportedMediaType,
    /// Malformed JSON, a bad `ttl`, a bad username... (400, the message says what).
    BadRequest(&'static str),
    /// A revoke of a username minted by another key (403).
    ForeignUsername,
    /// The browser origin is not in the allowlist (403).
    OriginNotAllowed,
    /// Too many requests from this client (429 with `Retry-After`).
    RateLimited {
        /// Seconds until the client may try again.
        retry_after: u64,
    },
    /// The key's monthly bandwidth cap is reached and no upstream can serve (429).
    BandwidthExhausted,
    /// No local relay can serve and no upstream is configured (503).
    NoRelay,
    /// The app endpoints have no key to issue for, or it was deleted (503).
    NotConfigured,
    /// No usage accounting in this process (`turnkey issuer` without a relay) (503).
    UsageUnavailable,
    /// The upstream failed (502, 503 or 504 by kind).
    Upstream(UpstreamFailure),
    /// The revocation list is full (503).
    RevocationsFull,
    /// No relay watches the revocation list, so a revocation would take effect nowhere (503).
    RevocationUnreachable,
    /// Fleet mode: a revocation could not be published to the fleet (Redis unreachable); it
    /// holds on this issuer's process only (503, retry).
    FleetUnavailable,
    /// No session with that id, or one the token may not see (404, the same either way).
    SessionNotFound,
    /// The session listing cannot be read or the end not confirmed (503, the message says why).
    SessionsUnavailable(&'static str),
    /// This process has no session listing to serve: off by configuration, or `turnkey issuer`
    /// without a fleet (501, the message says which; retrying does not help).
    SessionsNotServed(&'static str),
    /// An unknown path (404).
    NotFound,
    /// A known path with another method (405).
    MethodNotAllowed,
    /// Something on the server went wrong (500); details are logged, not sent.
    Internal,
}

impl ApiError {
    /// The status code of each failure: the single place where statuses are chosen.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::WrongKey | Self::ForeignUsername | Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::TokenInQuery | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::BandwidthExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::NoRelay
            | Self::NotConfigured
            | Self::RevocationsFull
            | Self::RevocationUnreachable
            | Self::UsageUnavailable
            | Self::FleetUnavailable
            | Self::SessionsUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream(UpstreamFailure::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(UpstreamFailure::BadGateway) => StatusCode::BAD_GATEWAY,
            Self::Upstream(UpstreamFailure::CircuitOpen | UpstreamFailure::NotConfigured) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotFound | Self::SessionNotFound => StatusCode::NOT_FOUND,
            Self::SessionsNotServed(_) => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The fixed, client-safe message.
    pub fn message(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing bearer token",
            Self::InvalidToken => "invalid token",
            Self::WrongKey => "token is not valid for this key",
            Self::TokenInQuery => "tokens are not accepted in the query string; use the Authorization header",
            Self::PayloadTooLarge => "request body too large",
            Self::UnsupportedMediaType => "content type must be application/json",
            Self::BadRequest(m) => m,
            Self::ForeignUsername => "username was not issued by this key",
            Self::OriginNotAllowed => "origin not allowed",
            Self::RateLimited { .. } => "rate limit exceeded",
            Self::BandwidthExhausted => "Bandwidth limit reached",
            Self::NoRelay => "no relay available",
            Self::NotConfigured => "credential issuing is not configured",
            Self::UsageUnavailable => "bandwidth accounting unavailable",
            Self::Upstream(UpstreamFailure::Timeout) => "upstream timed out",
            Self::Upstream(UpstreamFailure::BadGateway) => "upstream error",
            Self::Upstream(UpstreamFailure::CircuitOpen | UpstreamFailure::NotConfigured) => "upstream unavailable",
            Self::RevocationsFull => "revocation list full",
            Self::RevocationUnreachable => {
                "no relay watches the revocation list: start the relays with this issuer's data directory"
            }
            Self::FleetUnavailable => "fleet state unavailable, retry",
            Self::SessionNotFound => "no such session",
            Self::SessionsUnavailable(m) | Self::SessionsNotServed(m) => m,
            Self::NotFound => "not found",
            Self::MethodNotAllowed => "method not allowed",
            Self::Internal => "internal error",
        }
    }

    /// The browser-facing form of this error: the same status and message, plus
    /// `"fallback": true` and, for server-side failures, a STUN-only `iceServers` in the
    /// requested shape (object shape: the one STUN entry, absent when no STUN URL is advertised),
    /// so a page hands it to `RTCPeerConnection` the way it hands a success.
    pub fn into_app_response(self, stun_only: Vec<IceServer>, shape: Shape) -> Response {
        let status = self.status();
        let mut body = json!({"error": self.message(), "fallback": true});
        if status.is_server_error() {
            match shape {
                Shape::Array => body["iceServers"] = json!(stun_only),
                Shape::Object => {
                    if let Some(entry) = stun_only.into_iter().next() {
                        body["iceServers"] = json!(entry);
                    }
                }
            }
        }
        self.finish(status, body)
    }

    fn finish(self, status: StatusCode, body: serde_json::Value) -> Response {
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::MissingToken => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"turnkey\""));
            }
            Self::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"turnkey\", error=\"invalid_token\""),
                );
            }
            Self::RateLimited { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            _ => {}
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({"error": self.message()});
        self.finish(status, body)
    }
}

impl From<UpstreamFailure> for ApiError {
    fn from(f: UpstreamFailure) -> Self {
        Self::Upstream(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_gateway_statuses() {
        assert_eq!(ApiError::from(UpstreamFailure::Timeout).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ApiError::from(UpstreamFailure::BadGateway).status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ApiError::from(UpstreamFailure::CircuitOpen).status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let r = ApiError::MissingToken.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
    }
}
