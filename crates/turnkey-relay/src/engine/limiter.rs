//! A fixed-size, per-source-IP limiter for unauthenticated replies (401s, Binding answers, errors to
//! strangers). Its memory never grows: IPs hash into a fixed table of token buckets, and colliding
//! IPs share a bucket (which can only make the limit stricter for them).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Slot {
    tokens: u32,
    last: Option<Instant>,
}

/// Per-IP reply limiter with a fixed footprint.
#[derive(Debug)]
pub(crate) struct ReplyLimiter {
    per_sec: u32,
    burst: u32,
    hasher: RandomState,
    slots: Box<[Slot]>,
}

impl ReplyLimiter {
    /// `per_sec` replies per second per IP, with bursts of `2 * per_sec`; 0 disables the limit.
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            burst: per_sec.saturating_mul(2),
            hasher: RandomState::new(),
            slots: vec![Slot { tokens: 0, last: None }; SLOTS].into_boxed_slice(),
        }
    }

    /// Whether a reply to `ip` may be sent now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.per_sec == 0 {
            return true;
        }
        let i = (self.hasher.hash_one(ip) as usize) % SLOTS;
        let s = &mut self.slots[i];
        match s.last {
            None => {
                s.tokens = self.burst;
                s.last = Some(now);
            }
            Some(last) => {
                let ms = now.saturating_duration_since(last).as_millis() as u64;
                let add = ms * u64::from(self.per_sec) / 1000;
                if add > 0 {
                    s.tokens = (u64::from(s.tokens) + add).min(u64::from(self.burst)) as u32;
                    s.last = Some(now);
                }
            }
        }
        if s.tokens > 0 {
            s.tokens -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_per_ip_and_refills() {
        let mut l = ReplyLimiter::new(10);
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(a, t)).count();
        assert_eq!(allowed, 20);
        assert!(l.allow(a, t + Duration::from_millis(200)));
    }
}
