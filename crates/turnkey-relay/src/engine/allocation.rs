//! One allocation: its relay socket, permissions, channels, lifetime and bandwidth bucket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_auth::UnixTime;

use crate::types::{ChannelNumber, FiveTuple, PeerAddr, RelayHandle};

/// After a channel binding expires, neither its number nor its peer may be bound to something else
/// for this long (RFC 8656 §12).
pub(crate) const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(crate) struct Permission {
    pub ip: IpAddr,
    pub expires: Instant,
}

#[derive(Debug)]
pub(crate) struct Channel {
    pub number: ChannelNumber,
    pub peer: PeerAddr,
    pub expires: Instant,
}

/// The outcome of a ChannelBind against the RFC's rebinding rules.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BindCheck {
    /// Refresh (or revive) the existing binding at this index.
    Refresh(usize),
    /// A new binding.
    New,
    /// Number bound to another peer, or peer bound to another number (400).
    Conflict,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    pub tuple: FiveTuple,
    pub relay: RelayHandle,
    pub relay_addr: SocketAddr,
    pub username: Box<str>,
    pub userid: Arc<str>,
    pub key: [u8; 16],
    pub cred_expiry: UnixTime,
    pub expires: Instant,
    pub permissions: Vec<Permission>,
    pub channels: Vec<Channel>,
    /// Transaction id and bytes of the Allocate success, resent on retransmission.
    pub allocate_txid: [u8; 12],
    pub allocate_response: Vec<u8>,
    pub bucket: TokenBucket,
    /// Payload bytes relayed, both directions (usage accounting).
    pub bytes_relayed: u64,
    /// Payload bytes relayed since the last usage report, by direction (client to peer, peer to client).
    pub unreported: [u64; 2],
    /// The usage sink said to stop relaying for this userid (monthly cap reached).
    pub capped: bool,
}

impl Allocation {
    /// Whether a live permission exists for `ip`.
    #[inline]
    pub fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission. Returns false if `cap` would be exceeded.
    pub fn permit(&mut self, ip: IpAddr, until: Instant, now: Instant, cap: usize) -> bool {
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = until;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= cap {
            return false;
        }
        self.permissions.push(Permission { ip, expires: until });
        true
    }

    /// Whether `ips` can all be installed without exceeding `cap`.
    pub fn can_permit_all(&self, ips: &[IpAddr], now: Instant, cap: usize) -> bool {
        let live = self.permissions.iter().filter(|p| p.expires > now).count();
        let new = ips
            .iter()
            .enumerate()
            .filter(|(i, ip)| {
                !ips[..*i].contains(ip) && !self.permissions.iter().any(|p| p.ip == **ip && p.expires > now)
            })
            .count();
        live + new <= cap
    }

    /// The live channel with `number`.
    #[inline]
    pub fn channel(&self, number: ChannelNumber, now: Instant) -> Option<&Channel> {
        self.channels.iter().find(|c| c.number == number && c.expires > now)
    }

    /// The live channel bound to `peer`.
    #[inline]
    pub fn channel_for_peer(&self, peer: PeerAddr, now: Instant) -> Option<&Channel> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now)
    }

    /// Applies RFC 8656 §12's rules to a ChannelBind of `number` to `peer`.
    pub fn check_bind(&self, number: ChannelNumber, peer: PeerAddr, now: Instant) -> BindCheck {
        for (i, c) in self.channels.iter().enumerate() {
            let reserved = c.expires + CHANNEL_COOLDOWN > now;
            if c.number == number {
                return if c.peer == peer {
                    BindCheck::Refresh(i)
                } else if reserved {
                    BindCheck::Conflict
                } else {
                    continue;
                };
            }
            if c.peer == peer && reserved {
                return BindCheck::Conflict;
            }
        }
        BindCheck::New
    }

    /// Live channel count.
    pub fn live_channels(&self, now: Instant) -> usize {
        self.channels.iter().filter(|c| c.expires > now).count()
    }

    /// Drops expired permissions and channels whose cooldown is over.
    pub fn prune(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
    }
}

/// A byte-rate token bucket; a rate of 0 disables it.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_sec: u64, now: Instant) -> Self {
        let burst = rate_bytes_per_sec.max(1);
        Self { rate: rate_bytes_per_sec, burst, tokens: burst, last: now }
    }

    /// Takes `n` bytes' worth of tokens; false if the cap is exceeded.
    #[inline]
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        if !elapsed.is_zero() {
            let add = (elapsed.as_nanos() as u64).saturating_mul(self.rate) / 1_000_000_000;
            if add > 0 {
                self.tokens = (self.tokens + add).min(self.burst);
                self.last = now;
            }
        }
        let n = n as u64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_caps_and_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.take(600, t0));
        assert!(!b.take(600, t0));
        assert!(b.take(600, t0 + Duration::from_millis(300)));
        let mut unlimited = TokenBucket::new(0, t0);
        assert!(unlimited.take(usize::MAX / 2, t0));
    }
}
