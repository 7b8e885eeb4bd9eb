//! A fixed-size, per-source-IP limiter for unauthenticated replies (401s, Binding answers, errors to
//! strangers). Its memory never grows: IPs hash into a fixed table of token buckets, and colliding
//! IPs share a bucket (which can only make the limit stricter for them).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

use super::bucket::TokenBucket;

const SLOTS: usize = 4096;

/// Per-IP reply limiter with a fixed footprint.
#[derive(Debug)]
pub(crate) struct ReplyLimiter {
    hasher: RandomState,
    slots: Box<[TokenBucket]>,
}

impl ReplyLimiter {
    /// `per_sec` replies per second per IP, with bursts of `2 * per_sec`; 0 disables the limit.
    /// Every slot starts full at `now`.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let bucket = TokenBucket::new(u64::from(per_sec), u64::from(per_sec) * 2, now);
        Self { hasher: RandomState::new(), slots: vec![bucket; SLOTS].into_boxed_slice() }
    }

    /// Whether a reply to `ip` may be sent now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let i = (self.hasher.hash_one(ip) as usize) % SLOTS;
        self.slots[i].take(1, now)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_per_ip_and_refills() {
        let t = Instant::now();
        let mut l = ReplyLimiter::new(10, t);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(a, t)).count();
        assert_eq!(allowed, 20);
        assert!(l.allow(a, t + Duration::from_millis(200)));
    }
}
