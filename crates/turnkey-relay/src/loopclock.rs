//! How long a shard keeps its own work waiting: the shard loop's stalls and turns.
//!
//! A shard is one thread running a current-thread tokio runtime: every task of the shard (UDP
//! receive loops, TCP/TLS readers and writers, the engine's sweep, accepts) runs on it in turn,
//! and I/O readiness and timers are only looked at between two task polls. One step that takes
//! long (a sweep ending thousands of revoked allocations, a slow syscall) therefore delays
//! every packet of the shard by that long. Two measures, one per cause:
//!
//! - **Turns** (the relay's own work): the shard's tasks run inside one `LocalSet`, whose future
//!   the runtime polls once per loop turn (the set runs at most 61 task polls per turn, then the
//!   runtime looks at I/O and timers again). [`LoopMetrics::turns`] wraps that future and times
//!   each poll: how long the shard's own work kept its I/O unread. Being descheduled inside a
//!   turn counts; waiting for a CPU between turns does not.
//!   `turnkey_relay_shard_turn_seconds{shard}` and `turnkey_relay_shard_turn_max_seconds{shard}`.
//! - **Stalls** (what a packet sees): a probe task per shard ([`LoopMetrics::probe`]) asks to run
//!   every 10 ms and records how late it ran, with the timer wheel's 1 ms resolution: the turns
//!   before it, plus any time the thread waited for a CPU or for the machine to wake it.
//!   `turnkey_relay_shard_stall_seconds{shard}` and `turnkey_relay_shard_stall_max_seconds{shard}`.
//!
//! The probe wakes the shard 100 times a second (a few microseconds each); the turn timer reads
//! the clock twice per turn and observes into a thread-local histogram flushed every 100 ms.
//! Nothing in the data path is touched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::local::LocalHistogram;
use prometheus::{Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts, Registry};

/// How often the probe asks to run.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Bucket bounds (seconds): 1 ms (the timer's resolution) to 1 s, finer around the 5 ms target.
const BUCKETS: [f64; 13] = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0];

/// Turn bucket bounds (seconds): 50 µs (a turn handling one batch) to 1 s, the same steps as
/// [`BUCKETS`] from 1 ms.
const TURN_BUCKETS: [f64; 17] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 7.5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0,
];

/// How often a shard's turn timer publishes its thread-local histogram.
const TURN_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The shard stall metrics (registered into the registry passed in).
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    /// `turnkey_relay_shard_stall_seconds{shard}`.
    pub stalls: HistogramVec,
    /// `turnkey_relay_shard_stall_max_seconds{shard}`.
    pub max: GaugeVec,
    /// `turnkey_relay_shard_turn_seconds{shard}`.
    pub turns: HistogramVec,
    /// `turnkey_relay_shard_turn_max_seconds{shard}`.
    pub turn_max: GaugeVec,
}

impl LoopMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            stalls: HistogramVec::new(
                HistogramOpts::new(
                    "turnkey_relay_shard_stall_seconds",
                    "How late a shard ran a task that was due (10 ms probe): its loop turns before it plus any wait for a CPU.",
                )
                .buckets(BUCKETS.to_vec()),
                &["shard"],
            )?,
            max: GaugeVec::new(
                Opts::new("turnkey_relay_shard_stall_max_seconds", "The longest shard stall since start."),
                &["shard"],
            )?,
            turns: HistogramVec::new(
                HistogramOpts::new(
                    "turnkey_relay_shard_turn_seconds",
                    "How long one turn of a shard's loop ran its tasks before looking at I/O and timers again.",
                )
                .buckets(TURN_BUCKETS.to_vec()),
                &["shard"],
            )?,
            turn_max: GaugeVec::new(
                Opts::new("turnkey_relay_shard_turn_max_seconds", "The longest shard loop turn since start."),
                &["shard"],
            )?,
        };
        registry.register(Box::new(m.stalls.clone()))?;
        registry.register(Box::new(m.max.clone()))?;
        registry.register(Box::new(m.turns.clone()))?;
        registry.register(Box::new(m.turn_max.clone()))?;
        Ok(m)
    }

    /// `run` (the shard's `LocalSet` future) with each of its polls, one loop turn, timed into
    /// shard `shard`'s turn metrics.
    pub fn turns<F: Future>(&self, shard: usize, run: F) -> Turns<F> {
        let label = shard.to_string();
        let hist = self.turns.with_label_values(&[&label]).local();
        let max = self.turn_max.with_label_values(&[&label]);
        #[allow(clippy::disallowed_methods, reason = "the turn timer is a driver's clock")]
        let flushed = Instant::now();
        Turns { run: Box::pin(run), hist, max, longest: 0.0, flushed }
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

/// A shard's loop future, each poll timed (see [`LoopMetrics::turns`]).
pub struct Turns<F> {
    run: Pin<Box<F>>,
    hist: LocalHistogram,
    max: Gauge,
    /// The longest turn seen (the gauge is written only when it grows).
    longest: f64,
    flushed: Instant,
}

impl<F> std::fmt::Debug for Turns<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turns").field("longest", &self.longest).finish_non_exhaustive()
    }
}

impl<F: Future> Future for Turns<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        #[allow(clippy::disallowed_methods, reason = "the turn timer is a driver's clock")]
        let start = Instant::now();
        let out = self.run.as_mut().poll(cx);
        #[allow(clippy::disallowed_methods, reason = "the turn timer is a driver's clock")]
        let end = Instant::now();
        let turn = end.duration_since(start).as_secs_f64();
        self.hist.observe(turn);
        if turn > self.longest {
            self.longest = turn;
            self.max.set(turn);
        }
        if end.duration_since(self.flushed) >= TURN_FLUSH_EVERY || out.is_ready() {
            self.hist.flush();
            self.flushed = end;
        }
        out
    }
}

impl<F> Drop for Turns<F> {
    fn drop(&mut self) {
        self.hist.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_step_is_measured_as_a_stall_and_a_turn() {
        let registry = Registry::new();
        let m = LoopMetrics::new(&registry).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.spawn_local(m.clone().probe(3));
        let run = local.run_until(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            // One step of a task that holds the thread for 40 ms.
            tokio::task::spawn_local(async { std::thread::sleep(Duration::from_millis(40)) }).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        rt.block_on(m.turns(3, run));
        let hist = m.stalls.with_label_values(&["3"]);
        assert!(hist.get_sample_count() >= 5, "{}", hist.get_sample_count());
        let longest = m.max.with_label_values(&["3"]).get();
        assert!((0.025..1.0).contains(&longest), "{longest}");
        let turns = m.turns.with_label_values(&["3"]);
        assert!(turns.get_sample_count() >= 5, "every turn is counted: {}", turns.get_sample_count());
        let longest_turn = m.turn_max.with_label_values(&["3"]).get();
        assert!((0.04..1.0).contains(&longest_turn), "{longest_turn}");
        assert_eq!(registry.gather().len(), 4);
    }

    #[test]
    fn waiting_between_turns_is_not_a_turn() {
        let registry = Registry::new();
        let m = LoopMetrics::new(&registry).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let run = local.run_until(async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        rt.block_on(m.turns(0, run));
        let turns = m.turns.with_label_values(&["0"]);
        // Published at the end although the run was shorter than the flush period.
        assert!(turns.get_sample_count() >= 10, "{}", turns.get_sample_count());
        let longest_turn = m.turn_max.with_label_values(&["0"]).get();
        // 100 ms of sleeping in 10 ms waits: each turn is the few microseconds of arming a timer.
        assert!(longest_turn < 0.005, "{longest_turn}");
        assert!(turns.get_sample_sum() < 0.02, "{}", turns.get_sample_sum());
    }
}
