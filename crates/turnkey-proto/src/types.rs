//! Newtypes for the values that are classically mixed up in a TURN server: the client's transport
//! address vs. a peer's, channel numbers, relay handles, and the time the engine is told.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnkey_auth::UnixTime;

/// The transport a client reached us over (the workspace's one `Transport`).
pub use turnkey_types::Transport;

/// A client's transport address (where its requests and ChannelData come from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// A peer's transport address (where relayed data goes to or comes from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The client side of an allocation's 5-tuple: transport, client address and the server address
/// the client talks to. Allocations are looked up by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// UDP, TCP or TLS.
    pub transport: Transport,
    /// The client's address.
    pub client: ClientAddr,
    /// Our listening address the client sent to.
    pub server: SocketAddr,
}

/// A TURN channel number (RFC 8656 §12: 0x4000 through 0x4FFF; 0x7FFF with the RFC 5766 setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(pub u16);

impl ChannelNumber {
    /// Lowest valid channel number.
    pub const MIN: u16 = 0x4000;
    /// Highest channel number RFC 8656 allows.
    pub const MAX_RFC8656: u16 = 0x4FFF;
    /// Highest channel number RFC 5766 allowed.
    pub const MAX_RFC5766: u16 = 0x7FFF;
}

/// An opaque handle of a relay socket, chosen by the driver when it binds one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayHandle(pub u32);

/// The time, as told to the engine: a monotonic instant for lifetimes and the wall clock for
/// credential expiry. Tests build one by hand and [`Now::advance`] it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Time since the Unix epoch.
    pub wall: Duration,
}

impl Now {
    /// A time from its two parts.
    pub fn new(mono: Instant, wall: Duration) -> Self {
        Self { mono, wall }
    }

    /// Unix seconds.
    pub fn unix(&self) -> UnixTime {
        UnixTime(self.wall.as_secs())
    }

    /// The same clock `d` later.
    #[must_use]
    pub fn advance(self, d: Duration) -> Self {
        Self { mono: self.mono + d, wall: self.wall + d }
    }
}
