//! What changed in the engine's state: [`Event`]s, polled by the driver with
//! [`Engine::poll_event`](super::Engine::poll_event).
//!
//! # The contract
//!
//! - **One event per edge.** Each allocation yields exactly one [`Event::AllocationCreated`] and
//!   exactly one [`Event::AllocationEnded`], with any number of [`Event::AllocationRefreshed`]
//!   between. A permission (per allocation and peer IP) or a channel (per allocation, number and
//!   peer) yields one `…Installed` / `…Bound` when it starts to let data through, a
//!   `…Refreshed` for each request that extends it while it is live, and one `…Expired` when it
//!   stops; after an `…Expired`, the same permission or channel requested again is a new
//!   `…Installed` / `…Bound`.
//! - **Ending an allocation ends its permissions and channels with it**: no `…Expired` follows
//!   for them; [`Event::AllocationEnded`] is the last event naming that [`AllocationId`].
//! - **Order.** Events come in the order the engine changed its state: within one call, an
//!   allocation's `Created` before its permissions, a permission installed by a ChannelBind
//!   after the channel's `Bound`. Nothing is reordered across calls.
//! - **Deadlines.** Every event of something that lives carries when it ends (`expires`); an
//!   `…Expired` carries the deadline that passed. The engine itself stops relaying at the
//!   deadline; the `…Expired` event is emitted by the first
//!   [`Engine::handle_timeout`](super::Engine::handle_timeout) at or after it (the sweep runs
//!   every [`SWEEP_INTERVAL`](super::SWEEP_INTERVAL)), so a mirror of the engine's state (a
//!   kernel map) must check the deadline itself if it must not relay past it.
//! - **What a driver must do**: drain the queue (call `poll_event` until `None`) after each
//!   call that may change state (`handle_client`, `handle_timeout`, `client_closed`,
//!   `close_all`, `kill`) and before it awaits; events wait in the engine until polled. The data
//!   path (`handle_peer`, ChannelData) never yields events.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::types::{ChannelNumber, FiveTuple, PeerAddr, RelayHandle};

/// A stable name of one allocation: never reused, unlike its slot or its relay handle. Ids come
/// from the [`Shared`](super::Shared) state of all shards of one relay, so they are unique across
/// its shards; their high 32 bits are the relay's prefix
/// ([`Shared::with_id_prefix`](super::Shared::with_id_prefix), random per process), so two relays
/// of a fleet do not hand out the same id. The operator's session listing names allocations by
/// it (`GET /v1/sessions`, `DELETE /v1/sessions/{id}`), written as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

impl std::fmt::Display for AllocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl AllocationId {
    /// Parses the 16 lowercase hex digits `Display` writes.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        hex.then(|| u64::from_str_radix(s, 16).ok().map(AllocationId)).flatten()
    }
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its lifetime passed without a Refresh.
    Expired,
    /// The client deleted it (Refresh with LIFETIME 0).
    Deleted,
    /// Its username was revoked.
    Revoked,
    /// The credential's own expiry (the TURN REST username's timestamp) passed.
    CredentialExpired,
    /// The driver ended it ([`Engine::kill`](super::Engine::kill)).
    Killed,
    /// The relay shut down ([`Engine::close_all`](super::Engine::close_all)).
    Drained,
    /// The client's TCP/TLS connection closed.
    ConnectionClosed,
}

impl EndReason {
    /// Every reason, in declaration order (the index of [`EngineStats::ended`](super::EngineStats::ended)).
    pub const ALL: [EndReason; 7] = [
        Self::Expired,
        Self::Deleted,
        Self::Revoked,
        Self::CredentialExpired,
        Self::Killed,
        Self::Drained,
        Self::ConnectionClosed,
    ];

    /// A stable lower-case name (logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Deleted => "deleted",
            Self::Revoked => "revoked",
            Self::CredentialExpired => "credential_expired",
            Self::Killed => "killed",
            Self::Drained => "drained",
            Self::ConnectionClosed => "connection_closed",
        }
    }
}

/// Which allocation an event is about: its id, the client's 5-tuple, its relay socket and the
/// relayed address it advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationRef {
    /// The allocation's stable id.
    pub id: AllocationId,
    /// The client's 5-tuple.
    pub tuple: FiveTuple,
    /// The driver's relay socket.
    pub relay: RelayHandle,
    /// The relayed transport address (XOR-RELAYED-ADDRESS).
    pub relayed: SocketAddr,
}

/// A change of the engine's state (see the module documentation for the contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An Allocate succeeded.
    AllocationCreated {
        /// The allocation.
        alloc: AllocationRef,
        /// When it expires unless refreshed.
        expires: Instant,
    },
    /// A Refresh with a non-zero lifetime extended it.
    AllocationRefreshed {
        /// The allocation.
        alloc: AllocationRef,
        /// The new end of its life.
        expires: Instant,
    },
    /// It ended; its relay socket was released and its permissions and channels are gone.
    AllocationEnded {
        /// The allocation.
        alloc: AllocationRef,
        /// Why.
        reason: EndReason,
    },
    /// A permission for `peer` now lets data through (CreatePermission or ChannelBind).
    PermissionInstalled {
        /// The allocation.
        alloc: AllocationRef,
        /// The peer IP permitted.
        peer: IpAddr,
        /// When it expires unless refreshed.
        expires: Instant,
    },
    /// A live permission was extended.
    PermissionRefreshed {
        /// The allocation.
        alloc: AllocationRef,
        /// The peer IP.
        peer: IpAddr,
        /// The new deadline.
        expires: Instant,
    },
    /// A permission's lifetime passed.
    PermissionExpired {
        /// The allocation.
        alloc: AllocationRef,
        /// The peer IP.
        peer: IpAddr,
        /// The deadline that passed.
        expired: Instant,
    },
    /// A ChannelBind bound `number` to `peer`.
    ChannelBound {
        /// The allocation.
        alloc: AllocationRef,
        /// The channel number.
        number: ChannelNumber,
        /// The peer's transport address.
        peer: PeerAddr,
        /// When it expires unless refreshed.
        expires: Instant,
    },
    /// A live channel was refreshed (a ChannelBind of the same number and peer).
    ChannelRefreshed {
        /// The allocation.
        alloc: AllocationRef,
        /// The channel number.
        number: ChannelNumber,
        /// The peer's transport address.
        peer: PeerAddr,
        /// The new deadline.
        expires: Instant,
    },
    /// A channel's lifetime passed (its number and peer stay reserved for the RFC's 5 minutes,
    /// but no data flows).
    ChannelExpired {
        /// The allocation.
        alloc: AllocationRef,
        /// The channel number.
        number: ChannelNumber,
        /// The peer's transport address.
        peer: PeerAddr,
        /// The deadline that passed.
        expired: Instant,
    },
}

impl Event {
    /// The allocation the event is about.
    pub fn alloc(&self) -> &AllocationRef {
        match self {
            Self::AllocationCreated { alloc, .. }
            | Self::AllocationRefreshed { alloc, .. }
            | Self::AllocationEnded { alloc, .. }
            | Self::PermissionInstalled { alloc, .. }
            | Self::PermissionRefreshed { alloc, .. }
            | Self::PermissionExpired { alloc, .. }
            | Self::ChannelBound { alloc, .. }
            | Self::ChannelRefreshed { alloc, .. }
            | Self::ChannelExpired { alloc, .. } => alloc,
        }
    }
}
