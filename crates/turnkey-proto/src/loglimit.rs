//! [`LogLimiter`]: at most N log lines per second for noisy events (garbage floods, authentication
//! failures), with a count of the lines suppressed in between. Sans-IO: time is passed in.

use std::time::{Duration, Instant};

/// A per-second budget of log lines.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    per_sec: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// At most `per_sec` lines per second (0: none at all).
    pub fn new(per_sec: u32) -> Self {
        Self { per_sec, window: None, used: 0, suppressed: 0 }
    }

    /// `Some(k)` when a line may be emitted at `now`, where `k` lines were suppressed since the
    /// last one emitted (log it with the line); `None` when this one must be suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.window.is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
mod tests {
    use super::*;

    #[test]
    fn budget_per_second_with_suppressed_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3);
        assert_eq!((0..3).map(|_| l.allow(t0)).collect::<Vec<_>>(), vec![Some(0); 3]);
        for _ in 0..10 {
            assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(l.allow(t0 + Duration::from_millis(1000)), Some(10));
        assert_eq!(l.allow(t0 + Duration::from_millis(1001)), Some(0));
        let mut off = LogLimiter::new(0);
        assert_eq!(off.allow(t0), None);
    }
}
