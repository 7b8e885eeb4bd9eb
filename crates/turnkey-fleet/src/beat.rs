//! What a relay's heartbeat measures, as plain arithmetic over the figures the caller reads: the
//! relayed bit rate between two beats ([`RelayedRate`]) and when a relay is near enough to its
//! capacity to look up where it would redirect to ([`near_capacity`]). No clock: the caller
//! passes the time of each beat.

use std::time::Instant;

/// The bit rate of relayed payload between two heartbeats, from a running byte total.
#[derive(Debug, Clone, Copy)]
pub struct RelayedRate {
    /// When the last beat was taken and the byte total then.
    last: (Instant, u64),
}

impl RelayedRate {
    /// Starts measuring at `now`, with `total` bytes relayed so far.
    pub fn new(now: Instant, total: u64) -> Self {
        Self { last: (now, total) }
    }

    /// Bits per second relayed since the previous call (or [`RelayedRate::new`]), given the
    /// running byte total at `now`; 0 when no time has passed. A total that went backwards (a
    /// counter reset) counts as nothing relayed.
    pub fn bps(&mut self, now: Instant, total: u64) -> u64 {
        let secs = now.saturating_duration_since(self.last.0).as_secs_f64();
        let bits = total.saturating_sub(self.last.1).saturating_mul(8);
        self.last = (now, total);
        if secs > 0.0 {
            (bits as f64 / secs) as u64
        } else {
            0
        }
    }
}

/// Whether a relay holding `allocations` of `capacity` is at 90 % or more (a relay without
/// capacity always is): from then on it may redirect new allocations, so it keeps its
/// ALTERNATE-SERVER current.
pub fn near_capacity(allocations: u64, capacity: u64) -> bool {
    allocations.saturating_mul(10) >= capacity.saturating_mul(9)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_rate_is_the_bytes_since_the_last_beat_over_the_time_since() {
        let t0 = Instant::now();
        let mut r = RelayedRate::new(t0, 0);
        // 1 MB in 2 s: 4 Mbit/s.
        assert_eq!(r.bps(t0 + Duration::from_secs(2), 1_000_000), 4_000_000);
        // Nothing more in the next 2 s.
        assert_eq!(r.bps(t0 + Duration::from_secs(4), 1_000_000), 0);
        // 125 bytes in 0.5 s: 2000 bit/s.
        assert_eq!(r.bps(t0 + Duration::from_millis(4500), 1_000_125), 2000);
        // No time passed: 0, not a division by zero.
        assert_eq!(r.bps(t0 + Duration::from_millis(4500), 2_000_000), 0);
        // The bytes of that call are not counted again.
        assert_eq!(r.bps(t0 + Duration::from_millis(5500), 2_000_000), 0);
        // A total that went backwards, or a time before the last beat, counts as nothing.
        assert_eq!(r.bps(t0 + Duration::from_secs(6), 10), 0);
        assert_eq!(r.bps(t0, 1000), 0);
    }

    #[test]
    fn near_capacity_is_ninety_percent() {
        assert!(!near_capacity(0, 100));
        assert!(!near_capacity(89, 100));
        assert!(near_capacity(90, 100));
        assert!(near_capacity(150, 100));
        assert!(near_capacity(0, 0));
        assert!(!near_capacity(u64::MAX / 10, u64::MAX));
        assert!(near_capacity(u64::MAX, u64::MAX));
    }

    proptest! {
        #[test]
        fn rates_over_consecutive_beats_add_up_to_the_bytes_relayed(
            steps in prop::collection::vec((1u64..5000, 0u64..10_000_000), 1..20),
        ) {
            let t0 = Instant::now();
            let mut r = RelayedRate::new(t0, 0);
            let (mut at, mut total, mut bits) = (0u64, 0u64, 0f64);
            for (ms, bytes) in steps {
                at += ms;
                total += bytes;
                let bps = r.bps(t0 + Duration::from_millis(at), total);
                prop_assert_eq!(bps, ((bytes * 8) as f64 / Duration::from_millis(ms).as_secs_f64()) as u64);
                bits += bps as f64 * ms as f64 / 1000.0;
            }
            // Each beat's truncation loses under one bit per second of the interval.
            let lost = (total * 8) as f64 - bits;
            prop_assert!(lost >= -1.0 && lost <= at as f64 / 1000.0 + 1.0, "lost {} bits", lost);
        }
    }
}
