//! [`IssuerMetrics`]: every issuer metric, defined once and registered into the registry the
//! binary passes in (no global statics).

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The issuer's metrics. Label values are bounded: `endpoint` is a route template, `status` an
/// HTTP status, `key` a configured key id, `result` one of a fixed set.
#[derive(Debug, Clone)]
pub struct IssuerMetrics {
    /// `turnkey_issuer_requests_total{endpoint,status}`.
    pub requests: IntCounterVec,
    /// `turnkey_issuer_request_duration_seconds{endpoint}`.
    pub request_duration: HistogramVec,
    /// `turnkey_issuer_credentials_issued_total{key}`.
    pub credentials_issued: IntCounterVec,
    /// `turnkey_issuer_revocations_total`.
    pub revocations: IntCounter,
    /// `turnkey_issuer_upstream_requests_total{result}`: result is `ok`, `error` or `timeout`
    /// (one per fetch), or `cached`, `shared` (waited for the fetch in flight) or `circuit_open`
    /// (one per request that did not start a fetch).
    pub upstream_requests: IntCounterVec,
    /// `turnkey_issuer_upstream_fallbacks_total`: answers served from the upstream because the
    /// local relays could not.
    pub upstream_fallbacks: IntCounter,
    /// `turnkey_issuer_circuit_open`: 1 while the upstream circuit breaker is open.
    pub circuit_open: IntGauge,
    /// `turnkey_issuer_rate_limited_total`.
    pub rate_limited: IntCounter,
}

impl IssuerMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new("turnkey_issuer_requests_total", "HTTP requests by endpoint and status"),
                &["endpoint", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new("turnkey_issuer_request_duration_seconds", "HTTP request duration by endpoint")
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                &["endpoint"],
            )?,
            credentials_issued: IntCounterVec::new(
                Opts::new("turnkey_issuer_credentials_issued_total", "Credentials minted, by key id"),
                &["key"],
            )?,
            revocations: IntCounter::new("turnkey_issuer_revocations_total", "Usernames revoked")?,
            upstream_requests: IntCounterVec::new(
                Opts::new("turnkey_issuer_upstream_requests_total", "Upstream credential fetches by result"),
                &["result"],
            )?,
            upstream_fallbacks: IntCounter::new(
                "turnkey_issuer_upstream_fallbacks_total",
                "Answers served from the upstream because local relays could not",
            )?,
            circuit_open: IntGauge::new("turnkey_issuer_circuit_open", "1 while the upstream circuit breaker is open")?,
            rate_limited: IntCounter::new(
                "turnkey_issuer_rate_limited_total",
                "Browser-facing requests refused by the rate limit",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.credentials_issued.clone()))?;
        registry.register(Box::new(m.revocations.clone()))?;
        registry.register(Box::new(m.upstream_requests.clone()))?;
        registry.register(Box::new(m.upstream_fallbacks.clone()))?;
        registry.register(Box::new(m.circuit_open.clone()))?;
        registry.register(Box::new(m.rate_limited.clone()))?;
        for r in ["ok", "cached", "shared", "error", "timeout", "circuit_open"] {
            m.upstream_requests.with_label_values(&[r]);
        }
        Ok(m)
    }

    /// Records one finished request.
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests.with_label_values(&[endpoint, status_label(status)]).inc();
        let h: Histogram = self.request_duration.with_label_values(&[endpoint]);
        h.observe(seconds);
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_once_per_registry() {
        let r = Registry::new();
        let m = IssuerMetrics::register(&r).unwrap();
        m.observe_request("/healthz", 200, 0.001);
        assert!(IssuerMetrics::register(&r).is_err());
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_owned()).collect();
        assert!(names.contains(&"turnkey_issuer_requests_total".to_owned()));
        assert!(IssuerMetrics::register(&Registry::new()).is_ok());
    }
}
