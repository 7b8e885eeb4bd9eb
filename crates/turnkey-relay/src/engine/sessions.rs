//! Live sessions seen from one engine: a snapshot of every allocation (who, where, since when,
//! how much) for the operator's listing, and ending one allocation by its id.
//!
//! Both are control-path calls the driver makes at its sweep ([`crate::sessions`]), never per
//! packet: the data path only bumps the per-direction byte and packet counters it already keeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{Engine, RelayPorts};
use crate::types::{FiveTuple, Now};

/// A relay-wide allocation id: unique within one process (the node-wide table hands them out),
/// with a per-process random prefix so ids of two relays of a fleet do not collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl SessionId {
    /// Parses the 16 lowercase hex digits [`SessionId`]'s `Display` writes.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        hex.then(|| u64::from_str_radix(s, 16).ok().map(SessionId)).flatten()
    }
}

/// Why an allocation ended (`turnkey_relay_allocations_ended_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its lifetime or its credential's ran out.
    Expired,
    /// The client sent a Refresh with LIFETIME 0.
    Deallocated,
    /// Its username was revoked.
    Revoked,
    /// Its TCP/TLS connection closed.
    Closed,
    /// An operator ended it (`DELETE /v1/sessions/{id}`).
    Killed,
    /// The relay shut down.
    Shutdown,
}

impl EndReason {
    /// Every reason, in label order.
    pub const ALL: [EndReason; 6] =
        [Self::Expired, Self::Deallocated, Self::Revoked, Self::Closed, Self::Killed, Self::Shutdown];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Deallocated => "deallocated",
            Self::Revoked => "revoked",
            Self::Closed => "closed",
            Self::Killed => "killed",
            Self::Shutdown => "shutdown",
        }
    }
}

/// One live allocation as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The allocation's id.
    pub id: SessionId,
    /// The USERNAME it authenticated with (`<expiry>:<userid>`).
    pub username: Arc<str>,
    /// The user part of the username (`<key id>:<user>` for issued credentials).
    pub userid: Arc<str>,
    /// The client's 5-tuple (transport, client address, our listening address).
    pub tuple: FiveTuple,
    /// The advertised relayed address.
    pub relayed: SocketAddr,
    /// Live permissions.
    pub permissions: u32,
    /// Live channel bindings.
    pub channels: u32,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// When it expires unless refreshed (Unix seconds).
    pub expires: u64,
    /// Payload bytes relayed from the client to peers.
    pub bytes_client_to_peer: u64,
    /// Payload bytes relayed from peers to the client.
    pub bytes_peer_to_client: u64,
    /// Packets relayed from the client to peers.
    pub packets_client_to_peer: u64,
    /// Packets relayed from peers to the client.
    pub packets_peer_to_client: u64,
}

/// Unix seconds of the monotonic instant `at`, as seen at `now`.
fn unix_of(now: Now, at: Instant) -> u64 {
    let wall = if at >= now.mono { now.wall + (at - now.mono) } else { now.wall.saturating_sub(now.mono - at) };
    wall.as_secs()
}

impl Engine {
    /// Replaces `out`'s contents with a snapshot of every live allocation of this engine (its
    /// buffer is reused: no allocation once it has grown to the shard's size).
    pub fn snapshot_sessions(&self, now: Now, out: &mut Vec<SessionSnapshot>) {
        out.clear();
        out.reserve(self.by_tuple.len());
        for a in self.allocs.iter().flatten() {
            let (permissions, channels) = a.live_counts(now.mono);
            let (bytes, packets) = a.counters();
            out.push(SessionSnapshot {
                id: a.session_id(),
                username: a.owner().username.clone(),
                userid: a.owner().userid.clone(),
                tuple: a.tuple(),
                relayed: a.relay_addr(),
                permissions: u32::try_from(permissions).unwrap_or(u32::MAX),
                channels: u32::try_from(channels).unwrap_or(u32::MAX),
                created: unix_of(now, a.created()),
                expires: unix_of(now, a.expires()).min(a.owner().expiry.0),
                bytes_client_to_peer: bytes[0],
                bytes_peer_to_client: bytes[1],
                packets_client_to_peer: packets[0],
                packets_peer_to_client: packets[1],
            });
        }
    }

    /// Ends the allocation `id` now, if this engine holds it: its relay socket closes at once
    /// (relayed traffic stops) and the client's next request on its 5-tuple gets 437.
    pub fn end_session(&mut self, id: SessionId, reason: EndReason, ports: &mut dyn RelayPorts) -> bool {
        let found = self.allocs.iter().position(|a| a.as_ref().is_some_and(|a| a.session_id() == id));
        match found {
            Some(idx) => {
                self.remove(idx, ports, reason);
                true
            }
            None => false,
        }
    }
}
