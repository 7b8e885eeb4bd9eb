//! Sans-IO decisions for TURN-over-TCP/TLS connections: their limits, the timers that close them
//! ([`ConnTimers`], handed the time by the caller), why they close ([`CloseReason`]), and the
//! per-IP and total connection caps shared by every shard ([`ConnLimiter`], the one limiter of
//! every TCP listener: `turnkey_types::conn_limit`, re-exported here; a refusal is a
//! [`CloseReason`]).
//!
//! The driver (turnkey-relay's `stream`) owns sockets and tokio timers; everything it decides about a
//! connection's life is decided here, so it can be tested with time passed in by hand.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use turnkey_types::conn_limit::CapRefusal;
pub use turnkey_types::conn_limit::{AcceptBackoff, ConnLimiter, ConnSlot};
use turnkey_types::parse::{in_range, nonzero_secs};

/// Limits and timeouts of stream (TCP/TLS) client connections: `[relay]` keys of the config file,
/// checked while they are parsed (see [`crate::settings`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamLimits {
    /// Connections one client IP (IPv6: one /64) may hold at once, across both transports.
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub max_connections_per_ip: u32,
    /// Connections the relay holds at once.
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub max_connections: u32,
    /// Time allowed for a TLS handshake (seconds).
    #[serde(with = "nonzero_secs")]
    pub tls_handshake_timeout: Duration,
    /// A connection without an allocation for this long is closed (also after its allocation
    /// ended; seconds).
    #[serde(with = "nonzero_secs")]
    pub allocate_timeout: Duration,
    /// A connection whose client sent nothing for this long is closed (seconds).
    #[serde(with = "nonzero_secs")]
    pub idle_timeout: Duration,
    /// Largest STUN or ChannelData length field accepted (512 to 65535).
    #[serde(deserialize_with = "in_range::<_, _, 512, 65_535>")]
    pub max_frame: usize,
    /// Frames queued towards one client; past it, frames to that client are dropped and counted
    /// (1 to 65536).
    #[serde(deserialize_with = "in_range::<_, _, 1, 65_536>")]
    pub outbound_queue: usize,
    /// Bytes queued towards one client (about a socket buffer); past it, frames to that client
    /// are dropped and counted (4096 to 1 GiB; a frame larger than it is always dropped).
    #[serde(deserialize_with = "in_range::<_, _, 4096, { 1 << 30 }>")]
    pub outbound_queue_bytes: usize,
    /// A write to a client socket that makes no progress for this long closes the connection
    /// (a client that stopped reading; seconds).
    #[serde(with = "nonzero_secs")]
    pub write_timeout: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_connections_per_ip: 64,
            max_connections: 20_000,
            tls_handshake_timeout: Duration::from_secs(10),
            allocate_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            max_frame: 65_535,
            outbound_queue: 256,
            outbound_queue_bytes: 256 * 1024,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a connection was closed (the `reason` label of `turnkey_relay_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed it (EOF).
    ClientClosed,
    /// The client sent nothing for `idle_timeout`.
    Idle,
    /// No allocation for `allocate_timeout`.
    NeverAllocated,
    /// The TLS handshake took longer than `tls_handshake_timeout`.
    HandshakeTimeout,
    /// The TLS handshake failed.
    HandshakeFailed,
    /// An HTTP request on a TURN port.
    Http,
    /// A TLS record on the plain TCP port.
    TlsOnPlain,
    /// Bytes that are not STUN or ChannelData, or a bad length.
    Malformed,
    /// The client's IP holds `max_connections_per_ip` already.
    PerIpCap,
    /// The relay holds `max_connections` already.
    TotalCap,
    /// A read or write failed (reset, broken pipe).
    IoError,
    /// A write made no progress for `write_timeout`: the client stopped reading.
    WriteTimeout,
    /// The relay stopped.
    Shutdown,
}

impl CloseReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::Idle => "idle",
            Self::NeverAllocated => "never_allocated",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::Http => "http",
            Self::TlsOnPlain => "tls_on_plain",
            Self::Malformed => "malformed",
            Self::PerIpCap => "per_ip_cap",
            Self::TotalCap => "total_cap",
            Self::IoError => "io_error",
            Self::WriteTimeout => "write_timeout",
            Self::Shutdown => "shutdown",
        }
    }

    /// Why a stream's framing failed.
    pub fn from_framing(e: crate::framing::FramingError) -> Self {
        use crate::framing::FramingError as F;
        match e {
            F::HttpRequest => Self::Http,
            F::TlsRecord => Self::TlsOnPlain,
            _ => Self::Malformed,
        }
    }
}

/// The phase of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// TLS handshake under way, started at the instant.
    Handshake(Instant),
    /// Messages flow; `Some(since)` while there is no allocation.
    Open { unallocated_since: Option<Instant> },
}

/// When one connection must be closed: a sans-IO state machine fed with events and the time.
///
/// - TLS: the handshake must finish within `tls_handshake_timeout` of the accept.
/// - A connection without an allocation (from the accept, or since its allocation ended) is
///   closed after `allocate_timeout`.
/// - A connection whose client sent no byte for `idle_timeout` is closed, allocated or not.
#[derive(Debug, Clone)]
pub struct ConnTimers {
    handshake_timeout: Duration,
    allocate_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    last_rx: Instant,
}

impl ConnTimers {
    /// A connection accepted at `now`; `tls` connections start with their handshake.
    pub fn new(limits: &StreamLimits, now: Instant, tls: bool) -> Self {
        Self {
            handshake_timeout: limits.tls_handshake_timeout,
            allocate_timeout: limits.allocate_timeout,
            idle_timeout: limits.idle_timeout,
            phase: if tls { Phase::Handshake(now) } else { Phase::Open { unallocated_since: Some(now) } },
            last_rx: now,
        }
    }

    /// The TLS handshake completed at `now`; the allocate timer starts.
    pub fn handshake_done(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Handshake(_)) {
            self.phase = Phase::Open { unallocated_since: Some(now) };
            self.last_rx = now;
        }
    }

    /// The client sent bytes at `now`.
    pub fn client_data(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// Whether the connection has an allocation as of `now` (call after requests and on timer
    /// checks: allocations end by Refresh 0, expiry or revocation).
    pub fn set_allocated(&mut self, now: Instant, allocated: bool) {
        if let Phase::Open { unallocated_since } = &mut self.phase {
            match (allocated, *unallocated_since) {
                (true, Some(_)) => *unallocated_since = None,
                (false, None) => *unallocated_since = Some(now),
                _ => {}
            }
        }
    }

    /// Whether the connection holds an allocation.
    pub fn allocated(&self) -> bool {
        matches!(self.phase, Phase::Open { unallocated_since: None })
    }

    /// The next instant at which [`check`](Self::check) may close the connection.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Handshake(since) => since + self.handshake_timeout,
            Phase::Open { unallocated_since } => {
                let idle = self.last_rx + self.idle_timeout;
                match unallocated_since {
                    Some(since) => idle.min(since + self.allocate_timeout),
                    None => idle,
                }
            }
        }
    }

    /// Why the connection must close at `now`, if it must.
    pub fn check(&self, now: Instant) -> Option<CloseReason> {
        match self.phase {
            Phase::Handshake(since) => (now >= since + self.handshake_timeout).then_some(CloseReason::HandshakeTimeout),
            Phase::Open { unallocated_since } => {
                if unallocated_since.is_some_and(|since| now >= since + self.allocate_timeout) {
                    Some(CloseReason::NeverAllocated)
                } else if now >= self.last_rx + self.idle_timeout {
                    Some(CloseReason::Idle)
                } else {
                    None
                }
            }
        }
    }
}

impl From<CapRefusal> for CloseReason {
    fn from(r: CapRefusal) -> Self {
        match r {
            CapRefusal::PerIp => Self::PerIpCap,
            CapRefusal::Total => Self::TotalCap,
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> StreamLimits {
        StreamLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            allocate_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            ..StreamLimits::default()
        }
    }

    #[test]
    fn a_connection_that_never_allocates_is_closed_after_allocate_timeout() {
        let t0 = Instant::now();
        let mut t = ConnTimers::new(&limits(), t0, false);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(60));
        // Client traffic (Binding requests, failed Allocates) does not extend it.
        for s in 1..60 {
            t.client_data(t0 + Duration::from_secs(s));
            t.set_allocated(t0 + Duration::from_secs(s), false);
            assert_eq!(t.check(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(t.check(t0 + Duration::from_secs(60)), Some(CloseReason::NeverAllocated));
    }

    #[test]
    fn an_allocated_connection_lives_while_the_client_talks() {
        let t0 = Instant::now();
        let mut t = ConnTimers::new(&limits(), t0, false);
        t.client_data(t0 + Duration::from_secs(5));
        t.set_allocated(t0 + Duration::from_secs(5), true);
        assert!(t.allocated());
        for s in (100..2000).step_by(100) {
            t.client_data(t0 + Duration::from_secs(s));
            assert_eq!(t.check(t0 + Duration::from_secs(s + 1)), None);
        }
        // Silence: idle after 300 s.
        let last = t0 + Duration::from_secs(1900);
        assert_eq!(t.deadline(), last + Duration::from_secs(300));
        assert_eq!(t.check(last + Duration::from_secs(299)), None);
        assert_eq!(t.check(last + Duration::from_secs(300)), Some(CloseReason::Idle));
    }

    #[test]
    fn the_allocate_timer_restarts_when_the_allocation_ends() {
        let t0 = Instant::now();
        let mut t = ConnTimers::new(&limits(), t0, false);
        t.set_allocated(t0 + Duration::from_secs(1), true);
        t.client_data(t0 + Duration::from_secs(100));
        t.set_allocated(t0 + Duration::from_secs(100), false);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(160));
        t.client_data(t0 + Duration::from_secs(150));
        assert_eq!(t.check(t0 + Duration::from_secs(159)), None);
        assert_eq!(t.check(t0 + Duration::from_secs(160)), Some(CloseReason::NeverAllocated));
    }

    #[test]
    fn a_silent_header_is_closed_by_the_timers() {
        // A header announcing 65535 bytes then silence: nothing resets the timers.
        let t0 = Instant::now();
        let mut t =
            ConnTimers::new(&StreamLimits { allocate_timeout: Duration::from_secs(900), ..limits() }, t0, false);
        t.client_data(t0);
        assert_eq!(t.check(t0 + Duration::from_secs(300)), Some(CloseReason::Idle));
    }

    #[test]
    fn tls_handshake_timeout_then_allocate_timer() {
        let t0 = Instant::now();
        let mut t = ConnTimers::new(&limits(), t0, true);
        assert_eq!(t.deadline(), t0 + Duration::from_secs(10));
        assert_eq!(t.check(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.check(t0 + Duration::from_secs(10)), Some(CloseReason::HandshakeTimeout));
        // Allocation state is ignored during the handshake.
        t.set_allocated(t0, true);
        assert!(!t.allocated());
        t.handshake_done(t0 + Duration::from_secs(2));
        assert_eq!(t.deadline(), t0 + Duration::from_secs(62));
        assert_eq!(t.check(t0 + Duration::from_secs(62)), Some(CloseReason::NeverAllocated));
    }
}
