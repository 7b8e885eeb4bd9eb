//! One allocation: its relay socket, owner, permissions, channels, lifetime and bandwidth bucket.
//! Its fields are private: the data path goes through [`Allocation::admit`], the control path
//! through the methods below.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_auth::UnixTime;

use super::bucket::TokenBucket;
use super::error::StunError;
use super::sessions::SessionId;
use crate::metrics::{Direction, DropReason};
use crate::types::{ChannelNumber, FiveTuple, PeerAddr, RelayHandle};
use crate::usage::UsageDelta;

/// After a channel binding expires, neither its number nor its peer may be bound to something else
/// for this long (RFC 8656 §12).
pub(crate) const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

/// Who authenticated a request: the credential an allocation is created with and checked against.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    /// The USERNAME, `<expiry>:<userid>`.
    pub username: Arc<str>,
    /// The user part (quotas and usage are counted against it).
    pub userid: Arc<str>,
    /// The long-term key (MESSAGE-INTEGRITY of every request and response).
    pub key: [u8; 16],
    /// When the credential stops working.
    pub expiry: UnixTime,
}

/// The limits a ChannelBind or CreatePermission is held to, with the lifetimes it grants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub now: Instant,
    pub permission_until: Instant,
    pub max_permissions: usize,
    pub channel_until: Instant,
    pub max_channels: usize,
}

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

#[derive(Debug)]
struct Channel {
    number: ChannelNumber,
    peer: PeerAddr,
    expires: Instant,
}

/// The outcome of a ChannelBind against the RFC's rebinding rules.
#[derive(Debug, PartialEq, Eq)]
enum BindCheck {
    /// Refresh (or revive) the existing binding at this index.
    Refresh(usize),
    /// A new binding.
    New,
    /// Number bound to another peer, or peer bound to another number (400).
    Conflict,
}

#[derive(Debug)]
pub(crate) struct Allocation {
    tuple: FiveTuple,
    relay: RelayHandle,
    relay_addr: SocketAddr,
    owner: Owner,
    expires: Instant,
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// Transaction id and bytes of the Allocate success, resent on retransmission.
    allocate_txid: [u8; 12],
    allocate_response: Vec<u8>,
    bucket: TokenBucket,
    /// Payload bytes relayed, both directions (usage accounting).
    bytes_relayed: u64,
    /// Payload bytes relayed since the last usage report, by [`Direction`].
    unreported: [u64; 2],
    /// The usage sink said to stop relaying for this userid (monthly cap reached).
    capped: bool,
    /// Its id in the relay's session listing.
    id: SessionId,
    /// When it was created.
    created: Instant,
    /// Payload bytes and packets relayed over its life, by [`Direction`] (session listing).
    bytes: [u64; 2],
    packets: [u64; 2],
}

impl Allocation {
    /// A new allocation of `relay` (advertised as `relay_addr`) for `tuple`, live until `expires`;
    /// `answer` is the Allocate success it was created with (transaction id, bytes).
    pub fn new(
        tuple: FiveTuple,
        relay: (RelayHandle, SocketAddr),
        owner: Owner,
        expires: Instant,
        bandwidth_limit: u64,
        now: Instant,
        answer: ([u8; 12], Vec<u8>),
    ) -> Self {
        Self {
            tuple,
            relay: relay.0,
            relay_addr: relay.1,
            owner,
            expires,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_txid: answer.0,
            allocate_response: answer.1,
            bucket: TokenBucket::new(bandwidth_limit, bandwidth_limit.max(1), now),
            bytes_relayed: 0,
            unreported: [0, 0],
            capped: false,
            id: SessionId::default(),
            created: now,
            bytes: [0, 0],
            packets: [0, 0],
        }
    }

    /// Admits a datagram of `len` payload bytes to or from a peer at `peer`, in `dir`: it needs a
    /// live permission, an uncapped key and room in the bandwidth bucket; admitted bytes are
    /// counted for usage. The one check of the data path (ChannelData, Send, peer datagrams).
    #[inline]
    pub fn admit(&mut self, peer: IpAddr, len: usize, dir: Direction, now: Instant) -> Result<(), DropReason> {
        if !self.permitted(peer, now) {
            return Err(DropReason::NoPermission);
        }
        if self.capped {
            return Err(DropReason::UsageCap);
        }
        if !self.bucket.take(len as u64, now) {
            return Err(DropReason::RateCap);
        }
        self.bytes_relayed += len as u64;
        self.unreported[dir as usize] += len as u64;
        self.bytes[dir as usize] += len as u64;
        self.packets[dir as usize] += 1;
        Ok(())
    }

    /// The client's 5-tuple.
    #[inline]
    pub fn tuple(&self) -> FiveTuple {
        self.tuple
    }

    /// The relay socket.
    #[inline]
    pub fn relay(&self) -> RelayHandle {
        self.relay
    }

    /// The advertised relayed address.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay_addr
    }

    /// The credential that created the allocation.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The Allocate success to resend if `txid` is the Allocate that created this allocation.
    pub fn retransmitted_answer(&self, txid: &[u8; 12]) -> Option<&[u8]> {
        (self.allocate_txid == *txid).then_some(&self.allocate_response[..])
    }

    /// Whether the lifetime or the credential ran out.
    pub fn ended(&self, now: Instant, unix: UnixTime) -> bool {
        self.expires <= now || self.owner.expiry <= unix
    }

    /// Its id in the session listing.
    pub fn session_id(&self) -> SessionId {
        self.id
    }

    /// Sets its id in the session listing (once, when the engine inserts it).
    pub fn set_session_id(&mut self, id: SessionId) {
        self.id = id;
    }

    /// When it was created.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// When it ends unless refreshed.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Payload bytes and packets relayed over its life, each indexed by [`Direction`].
    pub fn counters(&self) -> ([u64; 2], [u64; 2]) {
        (self.bytes, self.packets)
    }

    /// Live (permissions, channels) at `now`, without pruning.
    pub fn live_counts(&self, now: Instant) -> (usize, usize) {
        (self.permissions.iter().filter(|p| p.expires > now).count(), self.live_channels(now))
    }

    /// Sets a new end of life (Refresh).
    pub fn refresh(&mut self, until: Instant) {
        self.expires = until;
    }

    /// Sets whether the key's monthly cap stops relaying.
    pub fn set_capped(&mut self, capped: bool) {
        self.capped = capped;
    }

    /// Payload bytes relayed over the allocation's life.
    pub fn bytes_relayed(&self) -> u64 {
        self.bytes_relayed
    }

    /// The bytes relayed since the last call, if any.
    pub fn take_unreported(&mut self) -> Option<UsageDelta> {
        if self.unreported == [0, 0] {
            return None;
        }
        let [client_to_peer, peer_to_client] = std::mem::take(&mut self.unreported);
        Some(UsageDelta { client_to_peer, peer_to_client })
    }

    /// The peer of the live channel `number`.
    #[inline]
    pub fn channel_peer(&self, number: ChannelNumber, now: Instant) -> Option<PeerAddr> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| c.peer)
    }

    /// The number of the live channel bound to `peer`.
    #[inline]
    pub fn channel_for_peer(&self, peer: PeerAddr, now: Instant) -> Option<ChannelNumber> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number)
    }

    /// Installs or refreshes permissions for every IP in `ips` (CreatePermission), all or none:
    /// 508 if they would exceed the cap.
    pub fn permit_all(&mut self, ips: &[IpAddr], g: &Grant) -> Result<(), StunError> {
        let live = self.permissions.iter().filter(|p| p.expires > g.now).count();
        let new =
            ips.iter().enumerate().filter(|(i, ip)| !ips[..*i].contains(ip) && !self.permitted(**ip, g.now)).count();
        if live + new > g.max_permissions {
            return Err(StunError::InsufficientCapacity);
        }
        for ip in ips {
            self.permit(*ip, g.permission_until, g.now, g.max_permissions);
        }
        Ok(())
    }

    /// Binds (or refreshes) channel `number` to `peer` under RFC 8656 §12's rebinding rules, and
    /// installs or refreshes the peer's permission.
    pub fn bind_channel(&mut self, number: ChannelNumber, peer: PeerAddr, g: &Grant) -> Result<(), StunError> {
        self.prune(g.now);
        match self.check_bind(number, peer, g.now) {
            BindCheck::Conflict => return Err(StunError::BadRequest),
            BindCheck::Refresh(i) => self.channels[i].expires = g.channel_until,
            BindCheck::New => {
                if self.live_channels(g.now) >= g.max_channels {
                    return Err(StunError::InsufficientCapacity);
                }
                self.channels.push(Channel { number, peer, expires: g.channel_until });
            }
        }
        if !self.permit(peer.0.ip(), g.permission_until, g.now, g.max_permissions) {
            return Err(StunError::InsufficientCapacity);
        }
        Ok(())
    }

    /// Drops expired permissions and channels whose cooldown is over; returns the live
    /// (permissions, channels) counts.
    pub fn prune(&mut self, now: Instant) -> (usize, usize) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        (self.permissions.len(), self.live_channels(now))
    }

    /// Whether a live permission exists for `ip`.
    #[inline]
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission. Returns false if `cap` would be exceeded.
    fn permit(&mut self, ip: IpAddr, until: Instant, now: Instant, cap: usize) -> bool {
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

    /// Applies RFC 8656 §12's rules to a ChannelBind of `number` to `peer`.
    fn check_bind(&self, number: ChannelNumber, peer: PeerAddr, now: Instant) -> BindCheck {
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
    fn live_channels(&self, now: Instant) -> usize {
        self.channels.iter().filter(|c| c.expires > now).count()
    }
}
