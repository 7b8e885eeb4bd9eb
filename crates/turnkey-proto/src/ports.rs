//! Relay port choice, without sockets: which ports an Allocate may be given (RFC 8656 §14.6
//! EVEN-PORT and its R bit) and the ports held for a RESERVATION-TOKEN (§14.9) for
//! [`RESERVATION_LIFETIME`]. The driver only tries the ports chosen here and keeps the held
//! sockets in a [`Reservations`] table; the time and the random source are passed in.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "held EVEN-PORT reservations: locked on Allocate only, never per packet"
)]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::engine::PortRequest;

/// How long a reserved port (EVEN-PORT with the R bit) is held for its RESERVATION-TOKEN.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Random ports tried before an Allocate gets 508.
pub const BIND_ATTEMPTS: usize = 64;

/// One port to try for an Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The relay port.
    pub port: u16,
    /// Whether `port + 1` must be bound too and held for a RESERVATION-TOKEN (the R bit).
    pub reserve_next: bool,
}

/// The ports to try, in order, for a fresh relay socket (not a reservation: its socket is
/// already bound): [`BIND_ATTEMPTS`] random draws from `range`; an even port when EVEN-PORT asks
/// (a draw that rounds below the range is skipped), and with the R bit a port whose next one is
/// in the range too. `None` for [`PortRequest::Reserved`].
pub fn candidates<'r, R: Rng>(
    request: PortRequest,
    range: RangeInclusive<u16>,
    rng: &'r mut R,
) -> Option<impl Iterator<Item = Candidate> + 'r> {
    let (even, reserve_next) = match request {
        PortRequest::Any => (false, false),
        PortRequest::Even => (true, false),
        PortRequest::EvenReserveNext => (true, true),
        PortRequest::Reserved(_) => return None,
    };
    let (lo, hi) = (*range.start(), *range.end());
    Some((0..BIND_ATTEMPTS).filter_map(move |_| {
        let mut port = rng.gen_range(lo..=hi);
        if even {
            port &= !1;
        }
        let usable = port >= lo && (!reserve_next || port < hi);
        usable.then_some(Candidate { port, reserve_next })
    }))
}

/// Ports held for RESERVATION-TOKENs, shared by every shard (the Allocate that redeems a token
/// may arrive on any shard): the driver's held socket `T` by token, each for
/// [`RESERVATION_LIFETIME`] from when it was held.
#[derive(Debug)]
pub struct Reservations<T> {
    #[allow(clippy::disallowed_types, reason = "held EVEN-PORT reservations: locked on Allocate only")]
    inner: Arc<Mutex<HashMap<u64, (T, Instant)>>>,
}

impl<T> Default for Reservations<T> {
    fn default() -> Self {
        Self { inner: Arc::default() }
    }
}

impl<T> Clone for Reservations<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T> Reservations<T> {
    /// Holds `item` from `now` under a fresh token drawn from `rng` (and drops the holds that
    /// ran out).
    pub fn hold(&self, item: T, now: Instant, rng: &mut impl Rng) -> u64 {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, at)| now.saturating_duration_since(*at) < RESERVATION_LIFETIME);
        loop {
            let token: u64 = rng.gen();
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(token) {
                e.insert((item, now));
                return token;
            }
        }
    }

    /// Redeems `token` at `now`: its item, once, if it is still held.
    pub fn take(&self, token: u64, now: Instant) -> Option<T> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (item, at) = map.remove(&token)?;
        (now.saturating_duration_since(at) < RESERVATION_LIFETIME).then_some(item)
    }

    /// Items held (expired or not).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn all(request: PortRequest, range: RangeInclusive<u16>, seed: u64) -> Vec<Candidate> {
        let mut rng = StdRng::seed_from_u64(seed);
        candidates(request, range, &mut rng).unwrap().collect()
    }

    #[test]
    fn any_draws_every_parity_inside_the_range() {
        let c = all(PortRequest::Any, 50_000..=50_009, 1);
        assert_eq!(c.len(), BIND_ATTEMPTS);
        assert!(c.iter().all(|c| (50_000..=50_009).contains(&c.port) && !c.reserve_next));
        assert!(c.iter().any(|c| c.port % 2 == 1) && c.iter().any(|c| c.port % 2 == 0));
    }

    #[test]
    fn even_port_is_even_and_never_below_an_odd_start() {
        for seed in 0..20 {
            let c = all(PortRequest::Even, 50_001..=50_004, seed);
            assert!(!c.is_empty());
            assert!(c.iter().all(|c| c.port % 2 == 0 && (50_002..=50_004).contains(&c.port)), "{c:?}");
        }
        // A range holding a single odd port has no even one.
        assert!(all(PortRequest::Even, 50_001..=50_001, 3).is_empty());
    }

    #[test]
    fn the_r_bit_leaves_room_for_the_next_port() {
        for seed in 0..20 {
            let c = all(PortRequest::EvenReserveNext, 50_000..=50_004, seed);
            assert!(!c.is_empty());
            for c in &c {
                assert!(c.reserve_next && c.port % 2 == 0 && c.port < 50_004, "{c:?}");
            }
        }
        // The only even port is the range's end: nothing fits.
        assert!(all(PortRequest::EvenReserveNext, 50_003..=50_004, 5).is_empty());
        let mut rng = StdRng::seed_from_u64(0);
        assert!(candidates(PortRequest::Reserved(7), 1..=2, &mut rng).is_none());
    }

    #[test]
    fn the_same_seed_gives_the_same_ports() {
        assert_eq!(all(PortRequest::Any, 1024..=65535, 9), all(PortRequest::Any, 1024..=65535, 9));
        assert_ne!(all(PortRequest::Any, 1024..=65535, 9), all(PortRequest::Any, 1024..=65535, 10));
    }

    #[test]
    fn a_reservation_is_redeemed_once_within_30_seconds() {
        let (r, t0, mut rng) = (Reservations::default(), Instant::now(), StdRng::seed_from_u64(1));
        let a = r.hold("a", t0, &mut rng);
        let b = r.hold("b", t0, &mut rng);
        assert_ne!(a, b);
        let shard = r.clone();
        assert_eq!(shard.take(a, t0 + Duration::from_secs(29)), Some("a"), "any shard redeems it");
        assert_eq!(r.take(a, t0 + Duration::from_secs(29)), None, "once");
        assert_eq!(r.take(b, t0 + RESERVATION_LIFETIME), None, "30 s later it is gone");
        assert_eq!(r.take(12345, t0), None, "unknown");
    }

    #[test]
    fn holding_drops_the_expired_holds() {
        let (r, t0, mut rng) = (Reservations::default(), Instant::now(), StdRng::seed_from_u64(2));
        r.hold(1, t0, &mut rng);
        r.hold(2, t0 + Duration::from_secs(10), &mut rng);
        assert_eq!(r.len(), 2);
        let c = r.hold(3, t0 + Duration::from_secs(31), &mut rng);
        assert_eq!(r.len(), 2, "the first hold ran out");
        assert_eq!(r.take(c, t0 + Duration::from_secs(31)), Some(3));
    }
}
