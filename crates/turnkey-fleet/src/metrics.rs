//! [`FleetMetrics`]: Redis health and the fleet's view of its relays, registered into the
//! registry the binary passes in. The only label is a relay's node id (bounded by the fleet's
//! size; series of relays that left are removed at every listing).

use prometheus::{Gauge, GaugeVec, IntCounter, IntGauge, Opts, Registry};

/// The fleet metrics.
#[derive(Debug, Clone)]
pub struct FleetMetrics {
    /// `turnkey_fleet_redis_up`: 1 while Redis answers, 0 while it does not.
    pub redis_up: IntGauge,
    /// `turnkey_fleet_redis_reconnects_total`: times Redis became reachable again after an outage.
    pub reconnects: IntCounter,
    /// `turnkey_fleet_redis_errors_total`: Redis calls that failed (outage or error).
    pub errors: IntCounter,
    /// `turnkey_fleet_usage_buffered_entries`: usage deltas waiting to be flushed to Redis.
    pub usage_buffered: IntGauge,
    /// `turnkey_fleet_usage_dropped_total`: usage deltas dropped because the buffer was full.
    pub usage_dropped: IntCounter,
    /// `turnkey_fleet_usage_dropped_bytes_total`: the bytes those dropped deltas carried.
    pub usage_dropped_bytes: IntCounter,
    /// `turnkey_fleet_usage_batches_total`: usage batches applied in Redis.
    pub usage_batches: IntCounter,
    /// `turnkey_fleet_relays_healthy`: relays with a live heartbeat at the last listing.
    pub relays_healthy: IntGauge,
    /// `turnkey_fleet_relay_heartbeat_age_seconds{node}`: age of each relay's last heartbeat
    /// at the last listing.
    pub heartbeat_age: GaugeVec,
    /// `turnkey_fleet_revocations_received_total`: revocation events delivered to subscribers.
    pub revocations_received: IntCounter,
}

impl FleetMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self::build()?;
        registry.register(Box::new(m.redis_up.clone()))?;
        registry.register(Box::new(m.reconnects.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.usage_buffered.clone()))?;
        registry.register(Box::new(m.usage_dropped.clone()))?;
        registry.register(Box::new(m.usage_dropped_bytes.clone()))?;
        registry.register(Box::new(m.usage_batches.clone()))?;
        registry.register(Box::new(m.relays_healthy.clone()))?;
        registry.register(Box::new(m.heartbeat_age.clone()))?;
        registry.register(Box::new(m.revocations_received.clone()))?;
        Ok(m)
    }

    fn build() -> Result<Self, prometheus::Error> {
        Ok(Self {
            redis_up: IntGauge::new("turnkey_fleet_redis_up", "1 while Redis answers, 0 while it does not.")?,
            reconnects: IntCounter::new(
                "turnkey_fleet_redis_reconnects_total",
                "Times Redis became reachable again after an outage.",
            )?,
            errors: IntCounter::new(
                "turnkey_fleet_redis_errors_total",
                "Redis calls that failed (unreachable, timed out or answered an error).",
            )?,
            usage_buffered: IntGauge::new(
                "turnkey_fleet_usage_buffered_entries",
                "Usage deltas (per period, key and label) waiting to be flushed to Redis.",
            )?,
            usage_dropped: IntCounter::new(
                "turnkey_fleet_usage_dropped_total",
                "Usage deltas dropped because the flush buffer was full.",
            )?,
            usage_dropped_bytes: IntCounter::new(
                "turnkey_fleet_usage_dropped_bytes_total",
                "Relayed bytes carried by usage deltas dropped because the flush buffer was full.",
            )?,
            usage_batches: IntCounter::new("turnkey_fleet_usage_batches_total", "Usage batches applied in Redis.")?,
            relays_healthy: IntGauge::new(
                "turnkey_fleet_relays_healthy",
                "Relays with a live heartbeat at the last listing.",
            )?,
            heartbeat_age: GaugeVec::new(
                Opts::new(
                    "turnkey_fleet_relay_heartbeat_age_seconds",
                    "Age of each relay's last heartbeat at the last listing.",
                ),
                &["node"],
            )?,
            revocations_received: IntCounter::new(
                "turnkey_fleet_revocations_received_total",
                "Revocation events delivered to subscribers (live and replayed on reconnect).",
            )?,
        })
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        match Self::build() {
            Ok(m) => m,
            Err(e) => unreachable!("static metric definitions are valid: {e}"),
        }
    }

    pub(crate) fn set_ages(&self, ages: &[(&str, f64)]) {
        self.heartbeat_age.reset();
        for (node, age) in ages {
            let g: Gauge = self.heartbeat_age.with_label_values(&[node]);
            g.set(*age);
        }
        self.relays_healthy.set(i64::try_from(ages.len()).unwrap_or(i64::MAX));
    }
}
