//! [`TokenBucket`]: the one refill rule behind the per-allocation bandwidth cap and the per-IP
//! limiter of unauthenticated replies. Time is passed in.

use std::time::Instant;

/// A token bucket refilled at `rate` tokens per second up to `burst`; a rate of 0 disables it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate_per_sec: u64, burst: u64, now: Instant) -> Self {
        Self { rate: rate_per_sec, burst, tokens: burst, last: now }
    }

    /// Takes `n` tokens; false (and nothing taken) if there are fewer.
    #[inline]
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        if !self.available(n, now) {
            return false;
        }
        if self.rate != 0 {
            self.tokens -= n;
        }
        true
    }

    /// Whether `n` tokens are there at `now` (after refilling); takes nothing.
    #[inline]
    pub fn available(&mut self, n: u64, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX).saturating_mul(self.rate) / 1_000_000_000;
            if add > 0 {
                self.tokens = self.tokens.saturating_add(add).min(self.burst);
                self.last = now;
            }
        }
        self.tokens >= n
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caps_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert!(b.take(600, t0));
        assert!(!b.take(600, t0));
        assert!(b.take(600, t0 + Duration::from_millis(300)));
        // Refill never exceeds the burst.
        let mut b = TokenBucket::new(1000, 1000, t0);
        assert!(b.take(1000, t0 + Duration::from_secs(3600)));
        assert!(!b.take(1, t0 + Duration::from_secs(3600)));
        let mut unlimited = TokenBucket::new(0, 0, t0);
        assert!(unlimited.take(u64::MAX / 2, t0));
    }
}
