//! A fixed-size limiter for unauthenticated replies (401s, Binding answers, errors to strangers),
//! fair between the 5-tuples behind one IP. Its memory never grows: addresses hash into fixed
//! tables of token buckets, and colliding keys share a bucket (which can only make the limit
//! stricter for them).
//!
//! Two tiers, checked in this order:
//!
//! 1. **Per source transport address** (IP and port): a small budget ([`PER_TUPLE_PER_SEC`],
//!    bursts of [`PER_TUPLE_BURST`]), enough for a STUN client's first request and its
//!    retransmissions. A flood from a few ports spends only those ports' budgets, so it cannot
//!    drain the budget of its IP. Each 5-tuple has two candidate buckets (two independent
//!    hashes): it is answered while either has a token, and each answer takes from both, so
//!    a flooding 5-tuple drains both of its buckets and a client is only held back if both of
//!    its buckets are shared with flooders.
//! 2. **Per source IP**: `per_sec` replies per second, bursts of twice that; bounds what any one
//!    IP (or spoofed IP) gets in total, whatever ports it uses.
//!
//! A request refused by tier 1 takes nothing from tier 2. Requests that carry a nonce issued to
//! their own 5-tuple never come here (see `handlers::Gate`): they have proven that the source
//! receives our replies, so answering them reflects nothing to a spoofed victim.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::bucket::TokenBucket;

const IP_SLOTS: usize = 4096;
const TUPLE_SLOTS: usize = 4096;
/// Replies per second one source transport address earns (tier 1).
pub(crate) const PER_TUPLE_PER_SEC: u64 = 1;
/// Replies one source transport address may get at once (tier 1): a first request and the
/// retransmissions a client sends before the answer arrives.
pub(crate) const PER_TUPLE_BURST: u64 = 4;

/// Per-5-tuple and per-IP reply limiter with a fixed footprint.
#[derive(Debug)]
pub(crate) struct ReplyLimiter {
    unlimited: bool,
    hashers: [RandomState; 3],
    by_ip: Box<[TokenBucket]>,
    by_tuple: Box<[TokenBucket]>,
}

impl ReplyLimiter {
    /// `per_sec` replies per second per IP, with bursts of `2 * per_sec`; 0 disables the limit.
    /// Every slot starts full at `now`.
    pub fn new(per_sec: u32, now: Instant) -> Self {
        let ip = TokenBucket::new(u64::from(per_sec), u64::from(per_sec) * 2, now);
        let tuple = TokenBucket::new(PER_TUPLE_PER_SEC, PER_TUPLE_BURST, now);
        Self {
            unlimited: per_sec == 0,
            hashers: [RandomState::new(), RandomState::new(), RandomState::new()],
            by_ip: vec![ip; IP_SLOTS].into_boxed_slice(),
            by_tuple: vec![tuple; TUPLE_SLOTS].into_boxed_slice(),
        }
    }

    /// Whether a reply to `client` may be sent now.
    pub fn allow(&mut self, client: SocketAddr, now: Instant) -> bool {
        if self.unlimited {
            return true;
        }
        let slots = [0, 1].map(|h| (self.hashers[h].hash_one(client) as usize) % TUPLE_SLOTS);
        let open = slots.map(|s| self.by_tuple[s].available(1, now));
        if !open.contains(&true) {
            return false;
        }
        let ip: IpAddr = client.ip();
        let i = (self.hashers[2].hash_one(ip) as usize) % IP_SLOTS;
        if !self.by_ip[i].take(1, now) {
            return false;
        }
        // Taken from every candidate that has a token, so one 5-tuple cannot spend two budgets.
        for (s, open) in slots.into_iter().zip(open) {
            if open {
                self.by_tuple[s].take(1, now);
            }
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_ip_and_refills() {
        let t = Instant::now();
        let mut l = ReplyLimiter::new(10, t);
        // Many ports of one IP: the IP's burst of 20 is the bound.
        let allowed = (0..100).filter(|p| l.allow(at(&format!("192.0.2.1:{}", 1000 + p)), t)).count();
        assert_eq!(allowed, 20);
        assert!(l.allow(at("192.0.2.1:5000"), t + Duration::from_millis(200)));
        assert!(l.allow(at("192.0.2.2:1000"), t), "other IPs have their own budget");
    }

    #[test]
    fn one_port_gets_its_burst_then_one_per_second() {
        let t = Instant::now();
        let mut l = ReplyLimiter::new(50, t);
        let flooder = at("192.0.2.1:4000");
        let burst = (0..1000).filter(|_| l.allow(flooder, t)).count();
        assert_eq!(burst as u64, PER_TUPLE_BURST);
        let later = (0..1000).filter(|_| l.allow(flooder, t + Duration::from_secs(1))).count();
        assert_eq!(later as u64, PER_TUPLE_PER_SEC);
    }

    /// The starvation case of issue 13: a flood from a few ports of one IP, at any rate, leaves
    /// the IP's budget to the other clients behind it.
    #[test]
    fn a_flood_from_a_few_ports_never_starves_other_ports_of_the_same_ip() {
        let t0 = Instant::now();
        let mut l = ReplyLimiter::new(50, t0);
        let flooders: Vec<SocketAddr> = (0..4).map(|p| at(&format!("192.0.2.1:{}", 40_000 + p))).collect();
        let mut flood_answered = 0;
        for ms in 0..10_000u64 {
            let now = t0 + Duration::from_millis(ms);
            // 4,000 requests per second from each flooding port...
            for f in &flooders {
                flood_answered += (0..4).filter(|_| l.allow(*f, now)).count();
            }
            // ...and every 500 ms a new client behind the same address sends its first request
            // (a client whose two buckets both collide with flooders' would be held back: with 8
            // of 4,096 slots taken, about 4 in a million clients).
            if ms % 500 == 0 {
                let client = at(&format!("192.0.2.1:{}", 1024 + ms / 500));
                assert!(l.allow(client, now), "client {client} starved at {ms} ms");
            }
        }
        // The flood got its ports' bursts and one reply per port per second: 4 * (4 + 10).
        assert!(flood_answered <= 4 * (4 + 10), "{flood_answered}");
    }

    #[test]
    fn zero_disables_both_tiers() {
        let t = Instant::now();
        let mut l = ReplyLimiter::new(0, t);
        assert!((0..10_000).all(|_| l.allow(at("192.0.2.1:1"), t)));
    }
}
