//! [`EngineStats`]: what one engine counted, as plain data (as quinn-proto's `ConnectionStats`).
//! Counters only grow and gauges hold the current value; the driver exports them (Prometheus, in
//! turnkey-relay's `metrics`) by the difference since its last export, so the engine holds no metric
//! handle and the labels below are the one list of their values.

use super::error::StunError;
use super::event::EndReason;
use crate::types::Transport;

/// Direction of relayed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client through the relay to a peer.
    ClientToPeer,
    /// From a peer through the relay to the client.
    PeerToClient,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Self::ClientToPeer, Self::PeerToClient];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientToPeer => "client_to_peer",
            Self::PeerToClient => "peer_to_client",
        }
    }
}

/// Why a packet was dropped (metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No permission installed for the peer.
    NoPermission,
    /// The peer policy refused the address.
    DeniedPeer,
    /// The allocation's bandwidth cap was exceeded.
    RateCap,
    /// A connection's outbound queue was full, or a socket send would block.
    QueueFull,
    /// Not a valid STUN message or ChannelData.
    Malformed,
    /// No allocation or channel for the packet.
    NoAllocation,
    /// An unauthenticated reply suppressed by the per-IP limiter.
    ReplyLimited,
    /// The allocation's TURN key reached its monthly cap (relay enforcement on).
    UsageCap,
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; 8] = [
        Self::NoPermission,
        Self::DeniedPeer,
        Self::RateCap,
        Self::QueueFull,
        Self::Malformed,
        Self::NoAllocation,
        Self::ReplyLimited,
        Self::UsageCap,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPermission => "no_permission",
            Self::DeniedPeer => "denied_peer",
            Self::RateCap => "rate_cap",
            Self::QueueFull => "queue_full",
            Self::Malformed => "malformed",
            Self::NoAllocation => "no_allocation",
            Self::ReplyLimited => "reply_limited",
            Self::UsageCap => "usage_cap",
        }
    }
}

/// Why a request failed authentication (the `reason` label of
/// `turnkey_relay_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the first round trip of every client (answered with a 401).
    MissingIntegrity,
    /// USERNAME, REALM or NONCE missing.
    BadRequest,
    /// The nonce expired or is not ours.
    StaleNonce,
    /// Another realm than ours.
    WrongRealm,
    /// Another username than the allocation's.
    WrongCredentials,
    /// Not a TURN REST username.
    MalformedUsername,
    /// The credential's expiry passed.
    Expired,
    /// The username was revoked.
    Revoked,
    /// MESSAGE-INTEGRITY matches no secret.
    BadCredential,
}

impl AuthFailure {
    /// All reasons, in label order.
    pub const ALL: [AuthFailure; 9] = [
        Self::MissingIntegrity,
        Self::BadRequest,
        Self::StaleNonce,
        Self::WrongRealm,
        Self::WrongCredentials,
        Self::MalformedUsername,
        Self::Expired,
        Self::Revoked,
        Self::BadCredential,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingIntegrity => "missing_integrity",
            Self::BadRequest => "bad_request",
            Self::StaleNonce => "stale_nonce",
            Self::WrongRealm => "wrong_realm",
            Self::WrongCredentials => "wrong_credentials",
            Self::MalformedUsername => "malformed_username",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::BadCredential => "bad_credential",
        }
    }
}

/// Which request the peer policy refused (the `path` label of `turnkey_relay_peer_denied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedPath {
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Send indication.
    Send,
}

impl DeniedPath {
    /// All paths, in label order.
    pub const ALL: [DeniedPath; 3] = [Self::CreatePermission, Self::ChannelBind, Self::Send];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreatePermission => "create_permission",
            Self::ChannelBind => "channel_bind",
            Self::Send => "send",
        }
    }
}

/// Every transport, in the index order of the per-transport counts.
pub const TRANSPORTS: [Transport; 3] = Transport::ALL;

const RESULTS: usize = 1 + StunError::ALL.len();

fn tidx(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// What one engine counted since it started: counters only grow, gauges are current values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EngineStats {
    bytes: [[u64; 3]; 2],
    packets: [[u64; 3]; 2],
    drops: [u64; 8],
    attempts: [u64; RESULTS],
    auth_failures: [u64; 9],
    peer_denied: [u64; 3],
    allocations: [u64; 3],
    ended: [u64; EndReason::ALL.len()],
    permissions: u64,
    channels: u64,
    control: u64,
}

impl EngineStats {
    /// Counts one relayed packet of `len` payload bytes.
    #[inline]
    pub(crate) fn relayed(&mut self, dir: Direction, t: Transport, len: usize) {
        let d = dir as usize;
        self.bytes[d][tidx(t)] += len as u64;
        self.packets[d][tidx(t)] += 1;
    }

    /// Counts `packets` relayed packets of `bytes` payload bytes in all (another data path's).
    pub(crate) fn relayed_many(&mut self, dir: Direction, t: Transport, packets: u64, bytes: u64) {
        let d = dir as usize;
        self.bytes[d][tidx(t)] += bytes;
        self.packets[d][tidx(t)] += packets;
    }

    /// Counts `n` dropped packets.
    #[inline]
    pub(crate) fn dropped(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }

    /// Counts one Allocate answered with `result` (`None`: success).
    pub(crate) fn attempt(&mut self, result: Option<StunError>) {
        let i = result.map_or(0, |e| 1 + StunError::ALL.iter().position(|x| *x == e).unwrap_or(0));
        self.attempts[i] += 1;
        self.control += 1;
    }

    /// Counts one authentication failure.
    pub(crate) fn auth_failed(&mut self, why: AuthFailure) {
        self.auth_failures[why as usize] += 1;
        self.control += 1;
    }

    /// Counts one peer-policy denial.
    pub(crate) fn peer_denied(&mut self, path: DeniedPath) {
        self.peer_denied[path as usize] += 1;
        self.control += 1;
    }

    /// One more (`true`) or one fewer live allocation over `t`.
    pub(crate) fn allocation(&mut self, t: Transport, live: bool) {
        let n = &mut self.allocations[tidx(t)];
        *n = if live { *n + 1 } else { n.saturating_sub(1) };
        self.control += 1;
    }

    /// Counts one allocation ended for `why`.
    pub(crate) fn end(&mut self, why: EndReason) {
        self.ended[why as usize] += 1;
    }

    /// The live permissions and channels (counted at each sweep).
    pub(crate) fn set_bindings(&mut self, permissions: u64, channels: u64) {
        self.permissions = permissions;
        self.channels = channels;
    }

    /// Payload bytes and packets relayed in `dir` for clients over `t`.
    pub fn relayed_total(&self, dir: Direction, t: Transport) -> (u64, u64) {
        (self.bytes[dir as usize][tidx(t)], self.packets[dir as usize][tidx(t)])
    }

    /// Packets dropped for `r`.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Allocate requests by result label (`success` or the error code's digits), every label.
    pub fn allocation_attempts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Self::allocate_results().zip(self.attempts.iter().copied())
    }

    /// Every `result` label of Allocate requests, in the order of [`Self::allocation_attempts`].
    pub fn allocate_results() -> impl Iterator<Item = &'static str> {
        std::iter::once("success").chain(StunError::ALL.iter().map(|e| e.label()))
    }

    /// Authentication failures for `why`.
    pub fn auth_failures(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize]
    }

    /// Peer-policy denials on `path`.
    pub fn peer_denials(&self, path: DeniedPath) -> u64 {
        self.peer_denied[path as usize]
    }

    /// Live allocations over `t`.
    pub fn allocations(&self, t: Transport) -> u64 {
        self.allocations[tidx(t)]
    }

    /// Allocations ended for `why`.
    pub fn ended(&self, why: EndReason) -> u64 {
        self.ended[why as usize]
    }

    /// Live permissions as of the last sweep.
    pub fn permissions(&self) -> u64 {
        self.permissions
    }

    /// Live channel bindings as of the last sweep.
    pub fn channels(&self) -> u64 {
        self.channels
    }

    /// A number that changes whenever a control-path count (Allocate results, authentication
    /// failures, denials, live allocations) changed: a driver exports at once when it moved, and
    /// the data-path counts with its periodic sweep.
    pub fn control_version(&self) -> u64 {
        self.control
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_list_matches_its_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, p) in DeniedPath::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i);
        }
        for (i, r) in EndReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut s = EngineStats::default();
        s.attempt(Some(StunError::InsufficientCapacity));
        s.attempt(None);
        let counted: Vec<_> = s.allocation_attempts().filter(|(_, n)| *n > 0).collect();
        assert_eq!(counted, [("success", 1), ("508", 1)]);
        assert_eq!(s.allocation_attempts().count(), 1 + StunError::ALL.len());
    }
}
