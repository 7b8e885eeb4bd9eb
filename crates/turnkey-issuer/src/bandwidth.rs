//! `GET /api/bandwidth-status`: the app key's measured usage in the shape the apps' own endpoints
//! returned when they estimated it (documented in `docs/observability.md` and
//! `docs/api/openapi.yaml`):
//!
//! ```json
//! {"bandwidthUsedGB": "45.23", "bandwidthLimitGB": 1000, "percentage": 4.52,
//!  "remainingGB": "954.77", "resetDate": "2025-02-01T00:00:00.000Z",
//!  "activeConnections": 3, "status": "OK"}
//! ```
//!
//! - GB are decimal: 1 GB = 10^9 bytes (what Cloudflare bills); bytes are payload bytes relayed
//!   in both directions since the period started.
//! - `bandwidthUsedGB` and `remainingGB` are strings with two decimals; `bandwidthLimitGB` is a
//!   number (the key's `monthly_bandwidth_bytes` / 10^9; an integer when it divides evenly);
//!   `percentage` is a number with at most two decimals (may exceed 100 slightly: bytes in flight
//!   when the cap is crossed still count).
//! - Without a cap the values stay renderable, in the types the apps' own endpoints used:
//!   `bandwidthLimitGB` and `remainingGB` are the string `"unlimited"`, `percentage` is `0`,
//!   status `OK`. (`null` is not renderable: `${limit} GB` prints "null GB", and a progress bar
//!   needs a number.)
//! - `status`: `OK` below 90 %, `WARNING` from 90 %, `LIMIT_REACHED` at or above the cap (the app
//!   endpoints then answer 429 `Bandwidth limit reached` unless an upstream serves).
//! - `resetDate`: when the monthly period ends (00:00 UTC on the configured `reset_day`).
//! - `activeConnections`: live allocations of credentials minted for the key.
//!
//! Same CORS rules as the other app endpoints; not rate limited (read-only, no minting).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::{BandwidthUsage, IssuerState};

/// `bandwidthLimitGB` and `remainingGB` of a key without a cap.
pub const UNLIMITED: &str = "unlimited";

/// Bytes per GB in the bandwidth status (decimal).
pub const GB: f64 = 1e9;

/// The handler.
pub(crate) async fn status(State(state): State<IssuerState>) -> Response {
    match body(&state) {
        Ok(v) => ([(axum::http::header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn body(state: &IssuerState) -> Result<BandwidthStatus, ApiError> {
    let s = &state.inner;
    let key_id = s.app_key().ok_or(ApiError::NotConfigured)?;
    let key = s.keys.get(&key_id).ok_or(ApiError::NotConfigured)?;
    let usage = s.relay.bandwidth(&key.id).ok_or(ApiError::UsageUnavailable)?;
    Ok(bandwidth_status_body(usage, key.monthly_bandwidth_bytes))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The body of `GET /api/bandwidth-status` (fields serialize in the documented order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthStatus {
    /// Used this period, GB with two decimals.
    #[serde(rename = "bandwidthUsedGB")]
    pub used_gb: String,
    /// The key's cap in GB (a number), or `"unlimited"` without a cap.
    #[serde(rename = "bandwidthLimitGB")]
    pub limit_gb: Value,
    /// Used / cap in percent, two decimals (`0` without a cap).
    pub percentage: Value,
    /// What is left, GB with two decimals, or `"unlimited"` without a cap.
    #[serde(rename = "remainingGB")]
    pub remaining_gb: String,
    /// When the period ends.
    #[serde(rename = "resetDate")]
    pub reset_date: String,
    /// Live allocations of the key.
    #[serde(rename = "activeConnections")]
    pub active_connections: u64,
    /// `OK`, `WARNING` or `LIMIT_REACHED`.
    pub status: &'static str,
}

/// The body for `usage` against `cap` (bytes).
pub fn bandwidth_status_body(usage: BandwidthUsage, cap: Option<u64>) -> BandwidthStatus {
    let used_gb = usage.used_bytes as f64 / GB;
    let (limit_gb, percentage, remaining_gb, status) = match cap {
        Some(cap) => {
            let pct = if cap == 0 { 100.0 } else { usage.used_bytes as f64 * 100.0 / cap as f64 };
            let status = if usage.used_bytes >= cap {
                "LIMIT_REACHED"
            } else if pct >= 90.0 {
                "WARNING"
            } else {
                "OK"
            };
            let limit = if cap % 1_000_000_000 == 0 { json!(cap / 1_000_000_000) } else { json!(cap as f64 / GB) };
            let remaining = cap.saturating_sub(usage.used_bytes) as f64 / GB;
            (limit, json!(round2(pct)), format!("{remaining:.2}"), status)
        }
        None => (json!(UNLIMITED), json!(0), UNLIMITED.to_owned(), "OK"),
    };
    BandwidthStatus {
        used_gb: format!("{used_gb:.2}"),
        limit_gb,
        percentage,
        remaining_gb,
        reset_date: iso8601(usage.reset_at),
        active_connections: usage.active_allocations,
        status,
    }
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` (JavaScript's `Date.toISOString()`).
fn iso8601(t: u64) -> String {
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (t / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 };
    let s = t % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(used: u64) -> BandwidthUsage {
        BandwidthUsage { used_bytes: used, reset_at: 1_738_368_000, active_allocations: 3 }
    }

    #[test]
    fn the_documented_example() {
        let v = bandwidth_status_body(u(45_230_000_000), Some(1_000_000_000_000));
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"bandwidthUsedGB":"45.23","bandwidthLimitGB":1000,"percentage":4.52,"remainingGB":"954.77","resetDate":"2025-02-01T00:00:00.000Z","activeConnections":3,"status":"OK"}"#
        );
    }

    #[test]
    fn statuses() {
        let cap = Some(1_000);
        assert_eq!(bandwidth_status_body(u(899), cap).status, "OK");
        assert_eq!(bandwidth_status_body(u(900), cap).status, "WARNING");
        assert_eq!(bandwidth_status_body(u(1000), cap).status, "LIMIT_REACHED");
        assert_eq!(bandwidth_status_body(u(1500), cap).remaining_gb, "0.00");
        assert_eq!(bandwidth_status_body(u(1500), cap).limit_gb, 1e-6);
        let none = bandwidth_status_body(u(5_000_000_000), None);
        assert_eq!(
            serde_json::to_string(&none).unwrap(),
            r#"{"bandwidthUsedGB":"5.00","bandwidthLimitGB":"unlimited","percentage":0,"remainingGB":"unlimited","resetDate":"2025-02-01T00:00:00.000Z","activeConnections":3,"status":"OK"}"#
        );
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_736_942_400), "2025-01-15T12:00:00.000Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00.000Z");
    }
}
