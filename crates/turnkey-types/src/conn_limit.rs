//! The one connection limiter and the one accept backoff of every TCP listener: the relay's
//! TURN-over-TCP/TLS listeners (turnkey-relay `stream`) and the issuer's HTTP server
//! (turnkey-issuer `http`). Sans-IO: no socket, no task, no clock (time is passed in).
//!
//! - [`ConnLimiter`]: connections held per client (an IPv4 address, or an IPv6 /64; an
//!   IPv4-mapped IPv6 address counts as its IPv4 one) and in total; a slot is released when its
//!   [`ConnSlot`] drops. Locked once per accept and close, never per packet.
//! - [`AcceptBackoff`]: after a failed accept (EMFILE, ENFILE) pause 10 ms, doubling to 1 s,
//!   and log at most once a second with the count of failures not logged.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRefusal {
    /// The client holds its per-IP share already.
    PerIp,
    /// The listener (or relay) holds its total already.
    Total,
}

/// The key connections are counted under: the IPv4 address, or the IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::V6(o.into())
        }
        v4 => v4,
    }
}

/// Per-client and total connection counts, shared by every task or shard accepting for one
/// listener (or relay).
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    inner: Arc<LimiterInner>,
}

#[derive(Debug)]
struct LimiterInner {
    per_ip: u32,
    max: u32,
    total: AtomicU32,
    by_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// A connection slot; released when dropped.
#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<LimiterInner>,
    key: IpAddr,
}

impl ConnLimiter {
    /// A limiter allowing `per_ip` connections per client and `max` in total.
    pub fn new(per_ip: u32, max: u32) -> Self {
        Self {
            inner: Arc::new(LimiterInner { per_ip, max, total: AtomicU32::new(0), by_ip: Mutex::new(HashMap::new()) }),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which cap refused it.
    pub fn acquire(&self, ip: IpAddr) -> Result<ConnSlot, CapRefusal> {
        let key = client_key(ip);
        let mut by_ip = self.inner.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = by_ip.get(&key).copied().unwrap_or(0);
        if n >= self.inner.per_ip {
            return Err(CapRefusal::PerIp);
        }
        if self
            .inner
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t < self.inner.max).then_some(t + 1))
            .is_err()
        {
            return Err(CapRefusal::Total);
        }
        by_ip.insert(key, n + 1);
        Ok(ConnSlot { limiter: self.inner.clone(), key })
    }

    /// Connections held now.
    pub fn total(&self) -> u32 {
        self.inner.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut by_ip = self.limiter.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.key);
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The pause and the log budget after failed accepts (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct AcceptBackoff {
    delay: Duration,
    last_log: Option<Instant>,
    suppressed: u64,
}

/// What to do after one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptPause {
    /// How long to wait before accepting again.
    pub delay: Duration,
    /// `Some(k)`: log this failure, `k` failures having gone unlogged since the last line;
    /// `None`: do not log it.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(10);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(1);

    /// An accept succeeded: the next failure pauses [`Self::FIRST`] again.
    pub fn accepted(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// An accept failed at `now`.
    pub fn failed(&mut self, now: Instant) -> AcceptPause {
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        let log = if self.last_log.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            self.last_log = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        AcceptPause { delay: self.delay, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_per_ip_and_total_and_releases_on_drop() {
        let l = ConnLimiter::new(2, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), CapRefusal::PerIp);
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), CapRefusal::Total);
        drop(s1);
        assert_eq!(l.total(), 2);
        let _s4 = l.acquire(a).unwrap();
        assert_eq!(l.total(), 3);
    }

    #[test]
    fn ipv6_is_counted_per_64_and_mapped_v4_as_v4() {
        let l = ConnLimiter::new(1, 100);
        let _x = l.acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(l.acquire("2001:db8:1:2::ffff".parse().unwrap()).unwrap_err(), CapRefusal::PerIp);
        let _y = l.acquire("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _z = l.acquire("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(l.acquire("::ffff:192.0.2.7".parse().unwrap()).unwrap_err(), CapRefusal::PerIp);
        assert_eq!(client_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn backoff_doubles_to_a_second_and_logs_once_a_second() {
        let t0 = Instant::now();
        let mut b = AcceptBackoff::default();
        let ms = Duration::from_millis;
        let first = b.failed(t0);
        assert_eq!(first, AcceptPause { delay: ms(10), log: Some(0) });
        let delays: Vec<_> = (1..=8).map(|i| b.failed(t0 + ms(i))).collect();
        assert_eq!(delays.iter().map(|p| p.delay).collect::<Vec<_>>(), [20, 40, 80, 160, 320, 640, 1000, 1000].map(ms));
        assert!(delays.iter().all(|p| p.log.is_none()), "within the second: not logged");
        assert_eq!(b.failed(t0 + ms(1000)).log, Some(8), "the next line counts the ones not logged");
        b.accepted();
        assert_eq!(b.failed(t0 + ms(1001)).delay, ms(10), "a success starts over");
    }
}
