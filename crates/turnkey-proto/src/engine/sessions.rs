//! Live sessions seen from one engine: a snapshot of every allocation (who, where, since when,
//! how much) for the operator's listing. Ending one is [`Engine::kill`] by its [`AllocationId`].
//!
//! The snapshot is a control-path call the driver makes at its sweep (turnkey-relay's
//! `sessions`), never per packet: the data path only bumps the per-direction byte and packet
//! counters it already keeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::{AllocationId, Engine};
use crate::types::{FiveTuple, Now};

/// One live allocation as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// The allocation's id.
    pub id: AllocationId,
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
    /// Whether a channel of it is relayed by the kernel fast path now (the engine never knows:
    /// false here, set by the driver that mirrors channels into the kernel).
    pub fast_path: bool,
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
        self.snapshot_sessions_from(now, 0, usize::MAX, out);
    }

    /// One step of a snapshot built over several turns of the driver's loop: appends to `out`
    /// the live allocations among at most `max_slots` allocation slots from slot `from` on, and
    /// returns the slot the next step starts at, or `None` when the last slot was reached. An
    /// allocation created or ended between two steps is listed or not depending on its slot; the
    /// listing is a sweep-time view either way.
    pub fn snapshot_sessions_from(
        &self,
        now: Now,
        from: usize,
        max_slots: usize,
        out: &mut Vec<SessionSnapshot>,
    ) -> Option<usize> {
        let end = from.saturating_add(max_slots).min(self.allocs.len());
        for a in self.allocs.get(from..end).unwrap_or_default().iter().flatten() {
            let (permissions, channels) = a.live_counts(now.mono);
            let (bytes, packets) = a.counters();
            out.push(SessionSnapshot {
                id: a.aref().id,
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
                fast_path: false,
            });
        }
        (end < self.allocs.len()).then_some(end)
    }
}
