//! `GET /test`: the browser self-test page (`selftest.html`, embedded at build time).
//!
//! The page fetches credentials from `POST /api/turn/credentials` (same origin), gathers candidates
//! with `iceTransportPolicy: "relay"` per advertised TURN URL, then connects two relay-only peer
//! connections inside the page and exchanges data-channel messages through the relay. Its
//! machine-readable outcome is `window.turnkeyResult` (see `docs/selftest.md`).
//!
//! The page is self-contained (inline style and script, no external URL) and is served with a
//! strict Content-Security-Policy: nothing may load but the page itself, the one inline `<style>`
//! and the one inline `<script>` (allowed by their SHA-256 hashes, computed here from the embedded
//! file so they cannot drift), and `connect-src 'self'` for the credential request.

use std::sync::OnceLock;

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The self-test page.
pub const SELFTEST_HTML: &str = include_str!("selftest.html");

/// The text between the first `open` tag and the following `close` tag (what a browser hashes
/// for a CSP source expression). Empty when absent.
fn inline_block<'a>(html: &'a str, open: &str, close: &str) -> &'a str {
    html.find(open).map(|i| &html[i + open.len()..]).and_then(|rest| rest.find(close).map(|j| &rest[..j])).unwrap_or("")
}

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes())))
}

/// The Content-Security-Policy of `/test`.
pub fn selftest_csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = csp_hash(inline_block(SELFTEST_HTML, "<script>", "</script>"));
        let style = csp_hash(inline_block(SELFTEST_HTML, "<style>", "</style>"));
        format!(
            "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// The transports `?transport=` may name (the page tests only that transport's TURN URLs).
const TRANSPORTS: [&str; 3] = ["udp", "tcp", "tls"];

/// `GET /test`. An unknown `?transport=` value is a 400, so a typo is answered instead of
/// producing a page that tests nothing.
pub(crate) async fn page(query: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|_| ApiError::BadRequest("malformed query string"))?;
    if let Some(t) = params.get("transport") {
        if !TRANSPORTS.contains(&t.as_str()) {
            return Err(ApiError::BadRequest("transport must be udp, tcp or tls"));
        }
    }
    let csp = HeaderValue::from_str(selftest_csp()).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        ],
        SELFTEST_HTML,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_inline_script_and_style_and_nothing_external() {
        let lower = SELFTEST_HTML.to_ascii_lowercase();
        assert_eq!(lower.matches("<script").count(), 1, "one inline script, no <script src>");
        assert_eq!(lower.matches("<style").count(), 1, "one inline style");
        let style = inline_block(&lower, "<style>", "</style>");
        assert!(!style.contains("url(") && !style.contains("@import"), "the style loads nothing");
        for bad in ["://", " src=", "<iframe", "<object", "<embed", "<base", " style="] {
            assert!(!lower.contains(bad), "the page must not contain `{bad}`");
        }
        // Inline event handler attributes would need 'unsafe-hashes'.
        let markup = lower.replace(inline_block(&lower, "<script>", "</script>"), "");
        for handler in [" onclick=", " onload=", " onerror="] {
            assert!(!markup.contains(handler), "inline handler `{handler}`");
        }
        for href in lower.split(" href=").skip(1) {
            assert!(href.starts_with("\"data:"), "only data: hrefs: {}", &href[..href.len().min(40)]);
        }
        assert!(lower.contains("<meta name=\"viewport\""), "readable on a phone");
    }

    #[test]
    fn csp_hashes_are_of_the_inline_blocks() {
        let csp = selftest_csp();
        let script = inline_block(SELFTEST_HTML, "<script>", "</script>");
        assert!(script.contains("window.turnkeyResult"));
        assert!(csp.contains(&format!("script-src {}", csp_hash(script))), "{csp}");
        assert!(csp.contains("style-src 'sha256-"), "{csp}");
        assert!(csp.contains("default-src 'none'"));
        assert!(csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert!(HeaderValue::from_str(csp).is_ok());
    }

    #[test]
    fn inline_block_finds_the_text_between_tags() {
        assert_eq!(inline_block("a<x>b</x>c", "<x>", "</x>"), "b");
        assert_eq!(inline_block("none", "<x>", "</x>"), "");
    }
}
