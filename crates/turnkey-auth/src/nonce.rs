//! Stateless nonces: `hex(issue time) || hex(HMAC-SHA1(key, issue time || client address))`.
//! Nothing is stored per client, so an unauthenticated flood cannot grow memory; a nonce is
//! bound to the client's transport address and expires after a configurable lifetime.

use std::net::{IpAddr, SocketAddr};

use subtle::ConstantTimeEq;

use crate::mac::hmac_sha1;
use crate::ring::SecretRing;
use crate::UnixTime;

const TS_HEX: usize = 16;
const MAC_BYTES: usize = 12;
const NONCE_LEN: usize = TS_HEX + MAC_BYTES * 2;
/// Nonces issued this far in the future (clock skew between shards or hosts) are still accepted.
const FUTURE_SKEW_SECS: u64 = 5;

/// The key nonces are signed with.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(<redacted>)")
    }
}

/// What a received NONCE turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by us to this client address, within its lifetime.
    Valid,
    /// Ours, but older than the lifetime (answer 438 with a fresh nonce).
    Stale,
    /// Not ours, or issued to another address, or malformed (also 438: RFC 8489 §9.2.4).
    Forged,
}

impl NonceKey {
    /// A key from caller-supplied random bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from the newest secret, so every shard and every process sharing the secret
    /// accepts each other's nonces, and rotating the secret invalidates old nonces.
    pub fn derive(ring: &SecretRing) -> Self {
        let a = hmac_sha1(ring.newest().as_bytes(), &[b"turnkey nonce key v1/a"]);
        let b = hmac_sha1(ring.newest().as_bytes(), &[b"turnkey nonce key v1/b"]);
        let mut k = [0u8; 32];
        k[..20].copy_from_slice(&a);
        k[20..].copy_from_slice(&b[..12]);
        Self(k)
    }

    /// A nonce for `client`, issued at `now`.
    pub fn issue(&self, now: UnixTime, client: SocketAddr) -> String {
        let mac = self.mac(now.0, client);
        let mut out = String::with_capacity(NONCE_LEN);
        push_hex(&mut out, &now.0.to_be_bytes());
        push_hex(&mut out, &mac[..MAC_BYTES]);
        out
    }

    /// Checks a nonce received from `client` at `now`; `lifetime_secs` is how long a nonce stays fresh.
    pub fn check(&self, nonce: &[u8], now: UnixTime, client: SocketAddr, lifetime_secs: u64) -> NonceStatus {
        if nonce.len() != NONCE_LEN {
            return NonceStatus::Forged;
        }
        let Some(ts_bytes) = parse_hex::<8>(&nonce[..TS_HEX]) else {
            return NonceStatus::Forged;
        };
        let Some(mac) = parse_hex::<MAC_BYTES>(&nonce[TS_HEX..]) else {
            return NonceStatus::Forged;
        };
        let ts = u64::from_be_bytes(ts_bytes);
        let expected = self.mac(ts, client);
        if !bool::from(expected[..MAC_BYTES].ct_eq(&mac)) {
            return NonceStatus::Forged;
        }
        if ts > now.0.saturating_add(FUTURE_SKEW_SECS) || now.0.saturating_sub(ts) >= lifetime_secs {
            return NonceStatus::Stale;
        }
        NonceStatus::Valid
    }

    fn mac(&self, ts: u64, client: SocketAddr) -> [u8; 20] {
        let mut buf = [0u8; 8 + 16 + 2];
        buf[..8].copy_from_slice(&ts.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => buf[8..12].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => buf[8..24].copy_from_slice(&ip.octets()),
        }
        buf[24..].copy_from_slice(&client.port().to_be_bytes());
        hmac_sha1(&self.0, &[&buf])
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nib(pair[0])? << 4) | nib(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> NonceKey {
        NonceKey::new([7; 32])
    }
    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn fresh_nonce_is_valid_then_stale() {
        let c = addr("192.0.2.1:5000");
        let n = key().issue(UnixTime(1000), c);
        assert_eq!(n.len(), NONCE_LEN);
        assert_eq!(key().check(n.as_bytes(), UnixTime(1000), c, 600), NonceStatus::Valid);
        assert_eq!(key().check(n.as_bytes(), UnixTime(1599), c, 600), NonceStatus::Valid);
        assert_eq!(key().check(n.as_bytes(), UnixTime(1600), c, 600), NonceStatus::Stale);
    }

    #[test]
    fn bound_to_client_address_and_key() {
        let n = key().issue(UnixTime(1000), addr("192.0.2.1:5000"));
        assert_eq!(key().check(n.as_bytes(), UnixTime(1000), addr("192.0.2.1:5001"), 600), NonceStatus::Forged);
        assert_eq!(key().check(n.as_bytes(), UnixTime(1000), addr("[2001:db8::1]:5000"), 600), NonceStatus::Forged);
        let other = NonceKey::new([8; 32]);
        assert_eq!(other.check(n.as_bytes(), UnixTime(1000), addr("192.0.2.1:5000"), 600), NonceStatus::Forged);
    }

    #[test]
    fn far_future_nonce_is_stale() {
        let c = addr("192.0.2.1:5000");
        let n = key().issue(UnixTime(10_000), c);
        assert_eq!(key().check(n.as_bytes(), UnixTime(1000), c, 600), NonceStatus::Stale);
    }

    proptest! {
        #[test]
        fn garbage_never_valid(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_ne!(key().check(&bytes, UnixTime(0), addr("192.0.2.1:1"), 600), NonceStatus::Valid);
        }

        #[test]
        fn tampered_nonce_is_forged(idx in 0usize..NONCE_LEN, c in b'0'..=b'f') {
            let client = addr("198.51.100.7:3478");
            let n = key().issue(UnixTime(5000), client);
            let mut b = n.into_bytes();
            prop_assume!(b[idx] != c);
            b[idx] = c;
            prop_assert_ne!(key().check(&b, UnixTime(5000), client, 600), NonceStatus::Valid);
        }
    }
}
