//! The per-client rate limit of the browser-facing endpoints, and how the client is identified.
//!
//! A fixed window per client (an IPv4 address, or the /64 of an IPv6 address so one host cannot
//! rotate through its prefix): `requests` per `window_secs`. Memory is bounded by `max_clients`:
//! when the table is full even after dropping finished windows, requests from clients not in it
//! are refused (429) until a window ends; clients already tracked are unaffected.
//!
//! The client is the TCP peer, unless the peer is a configured trusted proxy: then
//! `X-Forwarded-For` is read right to left, skipping trusted proxies, and the first address that
//! is not one is the client (a client cannot spoof its way past the proxy by sending its own
//! header, since the proxy appends the real peer).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use axum::http::HeaderMap;
use ipnet::IpNet;
use turnkey_auth::UnixTime;

use crate::config::RateLimitConfig;

/// The limiter's table.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateLimitConfig,
    table: Mutex<HashMap<IpAddr, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    count: u32,
}

/// The limiter's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refused; retry after this many seconds (at least 1).
    Limited {
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

impl RateLimiter {
    /// A limiter with `cfg`'s limits.
    pub fn new(cfg: RateLimitConfig) -> Self {
        Self { cfg, table: Mutex::new(HashMap::new()) }
    }

    /// Counts one request from `client` at `now`.
    pub fn check(&self, client: IpAddr, now: UnixTime) -> Verdict {
        if self.cfg.requests == 0 {
            return Verdict::Allow;
        }
        let key = bucket(client);
        let window = self.cfg.window_secs;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.contains_key(&key) && table.len() >= self.cfg.max_clients {
            table.retain(|_, w| now.0 < w.start.saturating_add(window));
            if table.len() >= self.cfg.max_clients {
                let soonest = table.values().map(|w| w.start.saturating_add(window)).min().unwrap_or(now.0);
                return Verdict::Limited { retry_after: soonest.saturating_sub(now.0).max(1) };
            }
        }
        let w = table.entry(key).or_insert(Window { start: now.0, count: 0 });
        if now.0 >= w.start.saturating_add(window) {
            *w = Window { start: now.0, count: 0 };
        }
        if w.count >= self.cfg.requests {
            return Verdict::Limited { retry_after: w.start.saturating_add(window).saturating_sub(now.0).max(1) };
        }
        w.count += 1;
        Verdict::Allow
    }

    /// Drops finished windows (also done lazily when the table is full).
    pub fn purge(&self, now: UnixTime) {
        let window = self.cfg.window_secs;
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        table.retain(|_, w| now.0 < w.start.saturating_add(window));
    }

    /// How many clients are tracked.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The address a client is counted under: an IPv4 address, or the /64 of an IPv6 one.
pub(crate) fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
    }
}

/// The client address: `peer`, or, when `peer` is a trusted proxy, the rightmost address in
/// `X-Forwarded-For` that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // An unparsable hop: stop trusting the chain here.
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(requests: u32, window_secs: u64, max_clients: usize) -> RateLimitConfig {
        RateLimitConfig { requests, window_secs, max_clients }
    }

    #[test]
    fn fixed_window_with_retry_after() {
        let l = RateLimiter::new(cfg(10, 300, 100));
        let c = ip("198.51.100.7");
        for _ in 0..10 {
            assert_eq!(l.check(c, UnixTime(1000)), Verdict::Allow);
        }
        assert_eq!(l.check(c, UnixTime(1100)), Verdict::Limited { retry_after: 200 });
        assert_eq!(l.check(ip("198.51.100.8"), UnixTime(1100)), Verdict::Allow);
        assert_eq!(l.check(c, UnixTime(1300)), Verdict::Allow);
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let l = RateLimiter::new(cfg(1, 60, 100));
        assert_eq!(l.check(ip("2001:db8:1:2::1"), UnixTime(0)), Verdict::Allow);
        assert!(matches!(l.check(ip("2001:db8:1:2::ffff"), UnixTime(0)), Verdict::Limited { .. }));
        assert_eq!(l.check(ip("2001:db8:1:3::1"), UnixTime(0)), Verdict::Allow);
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(cfg(5, 60, 3));
        for i in 0..3u8 {
            assert_eq!(l.check(IpAddr::from([192, 0, 2, i]), UnixTime(0)), Verdict::Allow);
        }
        assert_eq!(l.check(ip("192.0.2.99"), UnixTime(10)), Verdict::Limited { retry_after: 50 });
        assert_eq!(l.len(), 3);
        // Tracked clients still get their quota; after the windows end new clients fit again.
        assert_eq!(l.check(ip("192.0.2.1"), UnixTime(10)), Verdict::Allow);
        assert_eq!(l.check(ip("192.0.2.99"), UnixTime(61)), Verdict::Allow);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4, 203.0.113.9, 10.0.0.2"));
        // From an untrusted peer the header is ignored.
        assert_eq!(client_ip(ip("198.51.100.1"), &h, &trusted), ip("198.51.100.1"));
        // From the proxy: the rightmost untrusted hop, not the spoofable leftmost one.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted), ip("10.0.0.1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("garbage"));
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("10.0.0.1"));
    }
}
