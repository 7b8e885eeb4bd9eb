//! One allocation: its relay socket, owner, permissions, channels, lifetime and bandwidth bucket.
//! Its fields are private: the data path goes through [`Allocation::admit`], the control path
//! through the methods below.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_auth::UnixTime;

use super::bucket::TokenBucket;
use super::error::StunError;
use super::event::{AllocationId, AllocationRef, Event};
use super::stats::{Direction, DropReason};
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

/// Events of an allocation's permissions and channels are queued here (see [`Event`]).
pub(crate) type Events = VecDeque<Event>;

#[derive(Debug)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
    /// Announced live ([`Event::PermissionInstalled`]) and not yet expired.
    live: bool,
}

#[derive(Debug)]
struct Channel {
    number: ChannelNumber,
    peer: PeerAddr,
    expires: Instant,
    /// Announced live ([`Event::ChannelBound`]) and not yet expired.
    live: bool,
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
    id: AllocationId,
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
    /// When it was created.
    created: Instant,
    /// Payload bytes and packets relayed over its life, by [`Direction`] (session listing).
    bytes: [u64; 2],
    packets: [u64; 2],
}

impl Allocation {
    /// A new allocation `id` of `relay` (advertised as `relay_addr`) for `tuple`, live until
    /// `expires`; `answer` is the Allocate success it was created with (transaction id, bytes).
    #[allow(clippy::too_many_arguments, reason = "one constructor, called from one place")]
    pub fn new(
        id: AllocationId,
        tuple: FiveTuple,
        relay: (RelayHandle, SocketAddr),
        owner: Owner,
        expires: Instant,
        bandwidth_limit: u64,
        now: Instant,
        answer: ([u8; 12], Vec<u8>),
    ) -> Self {
        Self {
            id,
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

    /// How events name this allocation.
    pub fn aref(&self) -> AllocationRef {
        AllocationRef { id: self.id, tuple: self.tuple, relay: self.relay, relayed: self.relay_addr }
    }

    /// When the allocation expires unless refreshed.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// Whether the credential ran out (as opposed to the allocation's lifetime).
    pub fn credential_expired(&self, unix: UnixTime) -> bool {
        self.owner.expiry <= unix
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

    /// When it was created.
    pub fn created(&self) -> Instant {
        self.created
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

    /// Whether the key's monthly cap stops relaying.
    pub fn capped(&self) -> bool {
        self.capped
    }

    /// Counts `packets` datagrams of `bytes` payload another data path (the kernel fast path)
    /// relayed for this allocation in `dir`, for usage and the session counters as
    /// [`Allocation::admit`] counts its own.
    pub fn add_offloaded(&mut self, dir: Direction, packets: u64, bytes: u64) {
        self.bytes_relayed += bytes;
        self.unreported[dir as usize] += bytes;
        self.bytes[dir as usize] += bytes;
        self.packets[dir as usize] += packets;
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
    pub fn permit_all(&mut self, ips: &[IpAddr], g: &Grant, ev: &mut Events) -> Result<(), StunError> {
        let live = self.permissions.iter().filter(|p| p.expires > g.now).count();
        let new =
            ips.iter().enumerate().filter(|(i, ip)| !ips[..*i].contains(ip) && !self.permitted(**ip, g.now)).count();
        if live + new > g.max_permissions {
            return Err(StunError::InsufficientCapacity);
        }
        for ip in ips {
            self.permit(*ip, g, ev);
        }
        Ok(())
    }

    /// Binds (or refreshes) channel `number` to `peer` under RFC 8656 §12's rebinding rules, and
    /// installs or refreshes the peer's permission.
    pub fn bind_channel(
        &mut self,
        number: ChannelNumber,
        peer: PeerAddr,
        g: &Grant,
        ev: &mut Events,
    ) -> Result<(), StunError> {
        self.prune(g.now, ev);
        let (alloc, expires) = (self.aref(), g.channel_until);
        match self.check_bind(number, peer, g.now) {
            BindCheck::Conflict => return Err(StunError::BadRequest),
            BindCheck::Refresh(i) => {
                let c = &mut self.channels[i];
                c.expires = expires;
                ev.push_back(if c.live {
                    Event::ChannelRefreshed { alloc, number, peer, expires }
                } else {
                    Event::ChannelBound { alloc, number, peer, expires }
                });
                c.live = true;
            }
            BindCheck::New => {
                if self.live_channels(g.now) >= g.max_channels {
                    return Err(StunError::InsufficientCapacity);
                }
                self.channels.push(Channel { number, peer, expires, live: true });
                ev.push_back(Event::ChannelBound { alloc, number, peer, expires });
            }
        }
        if !self.permit(peer.0.ip(), g, ev) {
            return Err(StunError::InsufficientCapacity);
        }
        Ok(())
    }

    /// Drops expired permissions and channels whose cooldown is over, announcing each
    /// permission and channel whose deadline passed; returns the live (permissions, channels)
    /// counts.
    pub fn prune(&mut self, now: Instant, ev: &mut Events) -> (usize, usize) {
        self.expire_permissions(now, ev);
        let alloc = self.aref();
        for c in self.channels.iter_mut().filter(|c| c.live && c.expires <= now) {
            c.live = false;
            ev.push_back(Event::ChannelExpired { alloc, number: c.number, peer: c.peer, expired: c.expires });
        }
        self.channels.retain(|c| c.expires + CHANNEL_COOLDOWN > now);
        (self.permissions.len(), self.live_channels(now))
    }

    /// Drops the permissions whose deadline passed, announcing each.
    fn expire_permissions(&mut self, now: Instant, ev: &mut Events) {
        let alloc = self.aref();
        self.permissions.retain(|p| {
            if p.expires > now {
                return true;
            }
            if p.live {
                ev.push_back(Event::PermissionExpired { alloc, peer: p.ip, expired: p.expires });
            }
            false
        });
    }

    /// Whether a live permission exists for `ip`.
    #[inline]
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes a permission for `ip` as `g` grants. Returns false if its cap
    /// would be exceeded.
    fn permit(&mut self, ip: IpAddr, g: &Grant, ev: &mut Events) -> bool {
        let (alloc, expires) = (self.aref(), g.permission_until);
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            if p.expires > g.now {
                // Live: extended (or, if never announced, installed).
                let was = p.live;
                p.expires = expires;
                p.live = true;
                ev.push_back(if was {
                    Event::PermissionRefreshed { alloc, peer: ip, expires }
                } else {
                    Event::PermissionInstalled { alloc, peer: ip, expires }
                });
                return true;
            }
        }
        // Expired ones go (announced), then a fresh one is installed.
        self.expire_permissions(g.now, ev);
        if self.permissions.len() >= g.max_permissions {
            return false;
        }
        self.permissions.push(Permission { ip, expires, live: true });
        ev.push_back(Event::PermissionInstalled { alloc, peer: ip, expires });
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
