//! [`UsageMetrics`]: per-key usage metrics (bounded cardinality: the `key` label is a TURN key id,
//! at most one per configured key plus `unkeyed`; never a username or an address).

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The usage metrics, registered into the registry the binary passes in.
#[derive(Debug, Clone)]
pub struct UsageMetrics {
    /// `turnkey_usage_relayed_bytes_total{key,direction}`: payload bytes relayed per key since start.
    pub relayed_bytes: IntCounterVec,
    /// `turnkey_usage_period_bytes{key}`: bytes (both directions) relayed in the current period.
    pub period_bytes: IntGaugeVec,
    /// `turnkey_usage_monthly_cap_bytes{key}`: the key's monthly cap (keys with a cap only).
    pub cap_bytes: IntGaugeVec,
    /// `turnkey_usage_period_reset_timestamp_seconds`: when the current period ends.
    pub reset_at: IntGauge,
    /// `turnkey_usage_persisted_timestamp_seconds`: last successful write of `usage.json`.
    pub persisted_at: IntGauge,
}

impl UsageMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::build()?;
        registry.register(Box::new(m.relayed_bytes.clone()))?;
        registry.register(Box::new(m.period_bytes.clone()))?;
        registry.register(Box::new(m.cap_bytes.clone()))?;
        registry.register(Box::new(m.reset_at.clone()))?;
        registry.register(Box::new(m.persisted_at.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        match Self::build() {
            Ok(m) => m,
            Err(e) => unreachable!("static metric definitions are valid: {e}"),
        }
    }

    fn build() -> Result<Self, prometheus::Error> {
        Ok(Self {
            relayed_bytes: IntCounterVec::new(
                Opts::new(
                    "turnkey_usage_relayed_bytes_total",
                    "Payload bytes relayed per TURN key and direction (client_to_peer, peer_to_client).",
                ),
                &["key", "direction"],
            )?,
            period_bytes: IntGaugeVec::new(
                Opts::new(
                    "turnkey_usage_period_bytes",
                    "Payload bytes relayed per TURN key in the current monthly period, both directions.",
                ),
                &["key"],
            )?,
            cap_bytes: IntGaugeVec::new(
                Opts::new(
                    "turnkey_usage_monthly_cap_bytes",
                    "Monthly relayed-bytes cap per TURN key (keys with a cap).",
                ),
                &["key"],
            )?,
            reset_at: IntGauge::new(
                "turnkey_usage_period_reset_timestamp_seconds",
                "Unix time at which the current usage period ends and the totals reset.",
            )?,
            persisted_at: IntGauge::new(
                "turnkey_usage_persisted_timestamp_seconds",
                "Unix time of the last successful write of usage.json.",
            )?,
        })
    }
}
