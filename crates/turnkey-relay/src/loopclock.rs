//! How long a shard keeps its own work waiting: the shard loop's stalls.
//!
//! A shard is one thread running a current-thread tokio runtime: every task of the shard (UDP
//! receive loops, TCP/TLS readers and writers, the engine's sweep, accepts) runs on it in turn,
//! and I/O readiness and timers are only looked at between two task polls. One step that takes
//! long (a sweep ending thousands of revoked allocations, a slow syscall) therefore delays
//! every packet of the shard by that long. A probe task per shard ([`LoopMetrics::probe`])
//! asks to run every 10 ms and records how late it ran: the time the shard's loop held
//! everything else up, with the timer wheel's 1 ms resolution.
//!
//! - `turnkey_relay_shard_stall_seconds{shard}`: histogram of those delays;
//! - `turnkey_relay_shard_stall_max_seconds{shard}`: the longest since start.
//!
//! The probe wakes the shard 100 times a second (a few microseconds each); nothing in the data
//! path is touched.

use std::time::Duration;

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};

/// How often the probe asks to run.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Bucket bounds (seconds): 1 ms (the timer's resolution) to 1 s, finer around the 5 ms target.
const BUCKETS: [f64; 13] = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0];

/// The shard stall metrics (registered into the registry passed in).
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    /// `turnkey_relay_shard_stall_seconds{shard}`.
    pub stalls: HistogramVec,
    /// `turnkey_relay_shard_stall_max_seconds{shard}`.
    pub max: GaugeVec,
}

impl LoopMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            stalls: HistogramVec::new(
                HistogramOpts::new(
                    "turnkey_relay_shard_stall_seconds",
                    "How late a shard ran a task that was due (10 ms probe): how long its loop held its own work up.",
                )
                .buckets(BUCKETS.to_vec()),
                &["shard"],
            )?,
            max: GaugeVec::new(
                Opts::new("turnkey_relay_shard_stall_max_seconds", "The longest shard stall since start."),
                &["shard"],
            )?,
        };
        registry.register(Box::new(m.stalls.clone()))?;
        registry.register(Box::new(m.max.clone()))?;
        Ok(m)
    }

    /// The probe of shard `shard`: runs on the shard's runtime until the shard stops.
    pub async fn probe(self, shard: usize) {
        let label = shard.to_string();
        let (hist, max) = (self.stalls.with_label_values(&[&label]), self.max.with_label_values(&[&label]));
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = tick.tick().await;
            let late = due.elapsed().as_secs_f64();
            hist.observe(late);
            if late > max.get() {
                max.set(late);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_step_is_measured() {
        let registry = Registry::new();
        let m = LoopMetrics::new(&registry).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(m.clone().probe(3));
        local.block_on(&rt, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // One step that holds the thread for 40 ms.
            std::thread::sleep(Duration::from_millis(40));
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        let hist = m.stalls.with_label_values(&["3"]);
        assert!(hist.get_sample_count() >= 5, "{}", hist.get_sample_count());
        let longest = m.max.with_label_values(&["3"]).get();
        assert!((0.025..1.0).contains(&longest), "{longest}");
        assert_eq!(registry.gather().len(), 2);
    }
}
