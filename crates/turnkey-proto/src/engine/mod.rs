//! The sans-IO TURN engine (RFC 8656 over RFC 8489).
//!
//! The engine is handed the time and the bytes a client or a peer sent, and returns what to send
//! where ([`Transmit`]); it never touches a socket, a thread or the clock. Relay sockets are bound
//! by the driver through the [`RelayPorts`] capability the engine is handed per call. One engine
//! serves one shard; state shared between shards (quotas, drain flag, revocations) lives in
//! [`Shared`] and is touched only on the control path.
//!
//! What changed in its state (allocations, permissions, channels) the engine tells its driver
//! through [`Engine::poll_event`]; the contract (one event per edge, order, deadlines, what a
//! driver must do) is in [`event`]. What it counted is plain data ([`EngineStats`]), exported by
//! the driver. Its randomness (transaction ids of Data indications) comes from a generator seeded
//! from [`EngineConfig::rng_seed`]: the same seed and the same inputs give the same outputs.

mod allocation;
mod bucket;
mod error;
pub mod event;
mod handlers;
mod limiter;
mod message;
mod offload;
mod sessions;
mod stats;
#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests start from an arbitrary instant and drive time by hand; test sinks lock"
)]
mod tests;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "per-userid quotas: locked on Allocate and when an allocation ends, never per packet"
)]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use turnkey_auth::{NonceKey, RevocationSet, SecretRing};

use crate::fleet::FleetView;
use crate::loglimit::LogLimiter;
use crate::policy::PeerPolicy;
pub use crate::settings::EngineSettings;
use crate::types::{ChannelNumber, FiveTuple, Now, PeerAddr, RelayHandle};
use crate::usage::{UsageDelta, UsageSink};

use allocation::Allocation;
pub(crate) use error::StunError;
pub use event::{AllocationId, AllocationRef, EndReason, Event};
use limiter::ReplyLimiter;
pub use offload::Offloaded;
pub use sessions::SessionSnapshot;
pub use stats::{AuthFailure, DeniedPath, Direction, DropReason, EngineStats, TRANSPORTS};

/// How often the engine wants [`Engine::handle_timeout`] (expiry, revocations, usage).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Allocations one sweep step ends at most. A step that reaches it stops there, and the next
/// one, due at once, goes on from that allocation (a revocation that ends thousands at once):
/// the driver runs the shard's other work in between, so no packet waits for the whole teardown
/// (measured: docs/benchmarks.md, "Shard stalls").
pub const MAX_ENDED_PER_SWEEP: usize = 64;
/// Allocation slots one sweep step visits at most: a round over a shard holding thousands of
/// allocations (expiry, permissions, usage) is cut into steps like a mass revocation, so no
/// single step of the shard's loop is proportional to every allocation it holds.
pub const MAX_VISITED_PER_SWEEP: usize = 1024;
/// Bytes the driver must leave free before a peer's payload (room for a ChannelData header).
pub const PEER_HEADROOM: usize = 4;
/// Bytes the driver must leave free after a peer's payload (room for stream padding).
pub const PEER_TAILROOM: usize = 3;
/// Log lines per second and shard for noisy events (authentication failures, garbage, denied
/// peers).
pub const NOISY_LOG_LINES_PER_SEC: u32 = 5;

/// Everything the engine needs to decide; built once by the binary.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The REALM of long-term credentials.
    pub realm: String,
    /// Accepted secrets (TURN REST).
    pub secrets: SecretRing,
    /// Key of the stateless nonces.
    pub nonce_key: NonceKey,
    /// How long a nonce stays fresh before 438.
    pub nonce_lifetime: Duration,
    /// Lifetime given when a client asks for less or nothing (RFC: 600 s).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted (see [`EngineSettings`]).
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC: 600 s).
    pub channel_lifetime: Duration,
    /// Allocations one userid may hold at once (486 past it).
    pub max_allocations_per_user: u32,
    /// Allocations this relay holds at once (508 past it).
    pub max_allocations: u32,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channels per allocation.
    pub max_channels: usize,
    /// Per-allocation bandwidth cap in bytes per second, both directions together (0: none).
    pub bandwidth_limit: u64,
    /// Where relayed traffic may go.
    pub policy: PeerPolicy,
    /// Whether IPv4 / IPv6 relay addresses can be allocated.
    pub relay_v4: bool,
    /// See `relay_v4`.
    pub relay_v6: bool,
    /// Accept channel numbers up to 0x7FFF (RFC 5766 clients such as coturn 4.6's uclient).
    pub rfc5766_channel_numbers: bool,
    /// Unauthenticated replies per second per source IP (0: unlimited).
    pub unauth_replies_per_sec: u32,
    /// SOFTWARE attribute on responses (none by default: replies to strangers stay small).
    pub software: Option<String>,
    /// Seed of the engine's random number generator (as quinn-proto's `rng_seed`): `None` seeds
    /// it from the operating system; a fixed seed makes the engine's outputs a function of its
    /// inputs (replay tests).
    pub rng_seed: Option<[u8; 32]>,
}

impl EngineConfig {
    /// A configuration with the default [`EngineSettings`].
    pub fn new(realm: impl Into<String>, secrets: SecretRing, policy: PeerPolicy) -> Self {
        Self::from_settings(realm, secrets, policy, EngineSettings::default())
    }

    /// A configuration with the operator's settings; the RFC lifetimes are fixed, and IPv4
    /// relaying is on, IPv6 off, until the caller says which relay addresses it has.
    pub fn from_settings(
        realm: impl Into<String>,
        secrets: SecretRing,
        policy: PeerPolicy,
        settings: EngineSettings,
    ) -> Self {
        let EngineSettings {
            nonce_lifetime,
            max_lifetime,
            max_allocations_per_user,
            max_allocations,
            max_permissions,
            max_channels,
            bandwidth_limit,
            unauth_replies_per_sec,
            rfc5766_channel_numbers,
            software,
        } = settings;
        Self {
            realm: realm.into(),
            nonce_key: NonceKey::derive(&secrets),
            secrets,
            nonce_lifetime,
            default_lifetime: Duration::from_secs(600),
            max_lifetime,
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            max_allocations_per_user,
            max_allocations,
            max_permissions,
            max_channels,
            bandwidth_limit,
            policy,
            relay_v4: true,
            relay_v6: false,
            rfc5766_channel_numbers,
            unauth_replies_per_sec,
            software,
            rng_seed: None,
        }
    }

    fn max_channel(&self) -> u16 {
        if self.rfc5766_channel_numbers {
            ChannelNumber::MAX_RFC5766
        } else {
            ChannelNumber::MAX_RFC8656
        }
    }
}

/// State shared by every shard of one relay: quotas, the drain flag, revocations, allocation ids.
#[derive(Debug, Default)]
#[allow(
    clippy::disallowed_types,
    reason = "per-userid quotas: locked on Allocate and when an allocation ends, never per packet"
)]
pub struct Shared {
    users: Mutex<HashMap<Box<str>, u32>>,
    total: AtomicU32,
    draining: AtomicBool,
    id_prefix: u64,
    ids: AtomicU64,
    /// Usernames the issuer revoked.
    pub revocations: RevocationSet,
    /// Where relayed bytes are reported (usage accounting, monthly caps).
    pub usage: Option<Arc<dyn UsageSink>>,
    /// Fleet mode: fleet-wide quota marks, the ALTERNATE-SERVER, allocation reports.
    pub fleet: Option<Arc<FleetView>>,
}

impl Shared {
    /// Shared state consulting `revocations`.
    pub fn new(revocations: RevocationSet) -> Self {
        Self { revocations, ..Self::default() }
    }

    /// Reports usage to `sink` (builder style).
    pub fn with_usage(mut self, sink: Arc<dyn UsageSink>) -> Self {
        self.usage = Some(sink);
        self
    }

    /// Hands out [`AllocationId`]s whose high 32 bits are `prefix` (builder style): random per
    /// process in the binary, so two relays of a fleet do not name two allocations alike.
    pub fn with_id_prefix(mut self, prefix: u32) -> Self {
        self.id_prefix = u64::from(prefix) << 32;
        self
    }

    /// A fresh [`AllocationId`], unique across this relay's shards: the prefix, then a counter.
    fn next_id(&self) -> AllocationId {
        AllocationId(self.id_prefix | ((self.ids.fetch_add(1, Ordering::Relaxed) + 1) & 0xFFFF_FFFF))
    }

    /// Joins a fleet (builder style).
    pub fn with_fleet(mut self, fleet: Arc<FleetView>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// Live allocations across all shards whose userid satisfies `pred` (e.g. one TURN key's).
    pub fn allocations_where(&self, pred: impl Fn(&str) -> bool) -> u32 {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        users.iter().filter(|(u, _)| pred(u)).map(|(_, n)| *n).sum()
    }

    /// Whether the usage sink says `userid` must not be relayed.
    fn usage_blocked(&self, userid: &str) -> bool {
        self.usage.as_ref().is_some_and(|u| u.blocked(userid))
    }

    /// Live allocations across all shards.
    pub fn allocations(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Stop accepting new allocations (live ones keep working).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the relay is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Reserves one allocation for `userid`; the error is the one to answer.
    fn reserve(&self, userid: &str, per_user: u32, total: u32) -> Result<(), StunError> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        let n = users.get(userid).copied().unwrap_or(0);
        if n >= per_user || self.fleet.as_ref().is_some_and(|f| f.is_full(userid)) {
            return Err(StunError::AllocationQuotaReached);
        }
        if self.total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t < total).then_some(t + 1)).is_err() {
            return Err(StunError::InsufficientCapacity);
        }
        users.insert(userid.into(), n + 1);
        if let Some(f) = &self.fleet {
            f.started(userid);
        }
        Ok(())
    }

    fn release(&self, userid: &str) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = users.get_mut(userid) {
            *n -= 1;
            if *n == 0 {
                users.remove(userid);
            }
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(f) = &self.fleet {
            f.ended(userid);
        }
    }
}

/// A relay socket the driver bound for an allocation.
#[derive(Debug, Clone, Copy)]
pub struct RelayBinding {
    /// The driver's handle for the socket.
    pub handle: RelayHandle,
    /// The address to advertise in XOR-RELAYED-ADDRESS (the external address behind 1:1 NAT).
    pub advertised: SocketAddr,
    /// With [`PortRequest::EvenReserveNext`]: the RESERVATION-TOKEN of the held next port.
    pub reservation: Option<u64>,
}

/// Which relay port an Allocate asks for (RFC 8656 §14.6 EVEN-PORT, §14.9 RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port in the range.
    Any,
    /// An even port.
    Even,
    /// An even port, and hold the next (odd) one for a later Allocate with the returned token.
    EvenReserveNext,
    /// The port held under this RESERVATION-TOKEN (its family is the reservation's).
    Reserved(u64),
}

/// The driver's side of relay sockets, handed to the engine on each call that may need it.
pub trait RelayPorts {
    /// Binds a relay socket of the given family as `request` asks, at `now` (the engine's time:
    /// reservations are held and redeemed by it; the ports to try come from
    /// [`crate::ports::candidates`]); `None` when no port is free or the reservation is unknown
    /// (the engine answers 508).
    fn bind(&mut self, now: Instant, ipv6: bool, request: PortRequest) -> Option<RelayBinding>;
    /// Closes a relay socket whose allocation ended.
    fn release(&mut self, handle: RelayHandle);
}

/// What the engine wants sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Transmit<'a> {
    /// To a client over its 5-tuple.
    Client {
        /// The client's 5-tuple.
        to: FiveTuple,
        /// The bytes (a STUN message or ChannelData).
        data: Cow<'a, [u8]>,
    },
    /// To a peer from an allocation's relay socket.
    Peer {
        /// The relay socket to send from.
        relay: RelayHandle,
        /// The peer.
        to: PeerAddr,
        /// The payload.
        data: Cow<'a, [u8]>,
    },
}

/// One shard's TURN engine.
#[derive(Debug)]
pub struct Engine {
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    stats: EngineStats,
    events: VecDeque<Event>,
    rng: StdRng,
    allocs: Vec<Option<Allocation>>,
    free: Vec<usize>,
    by_tuple: HashMap<FiveTuple, usize>,
    by_relay: HashMap<RelayHandle, usize>,
    limiter: ReplyLimiter,
    next_sweep: Instant,
    seen_revocations: u64,
    /// Where the unfinished sweep round goes on (see [`MAX_ENDED_PER_SWEEP`]); 0: a new round.
    sweep: SweepRound,
    usage_batch: Vec<(Arc<str>, UsageDelta)>,
    seen_usage_generation: u64,
    auth_log: LogLimiter,
    garbage_log: LogLimiter,
    peer_log: LogLimiter,
}

/// One sweep round over every allocation, possibly in several steps.
#[derive(Debug, Default)]
struct SweepRound {
    /// The allocation slot the next step starts at (0: the round is done, a new one starts).
    resume_at: usize,
    /// A revocation came since the last round: ask the revocation set for every allocation.
    check_revoked: bool,
    /// The usage caps changed since the last round.
    check_usage: bool,
    /// Live permissions and channels counted so far in this round.
    permissions: u64,
    channels: u64,
}

impl Engine {
    /// A new shard engine starting at `now`.
    pub fn new(cfg: Arc<EngineConfig>, shared: Arc<Shared>, now: Instant) -> Self {
        let limiter = ReplyLimiter::new(cfg.unauth_replies_per_sec, now);
        let seen_revocations = shared.revocations.generation();
        let seen_usage_generation = shared.usage.as_ref().map_or(0, |u| u.generation());
        let rng = match cfg.rng_seed {
            Some(seed) => StdRng::from_seed(seed),
            None => StdRng::from_entropy(),
        };
        Self {
            cfg,
            shared,
            stats: EngineStats::default(),
            events: VecDeque::new(),
            rng,
            allocs: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            limiter,
            next_sweep: now + SWEEP_INTERVAL,
            seen_revocations,
            sweep: SweepRound::default(),
            usage_batch: Vec::new(),
            seen_usage_generation,
            auth_log: LogLimiter::new(NOISY_LOG_LINES_PER_SEC),
            garbage_log: LogLimiter::new(NOISY_LOG_LINES_PER_SEC),
            peer_log: LogLimiter::new(NOISY_LOG_LINES_PER_SEC),
        }
    }

    /// Handles a datagram or stream frame from a client. `buf` is exactly one STUN message or one
    /// ChannelData message (for UDP: one datagram, trailing ChannelData padding allowed).
    pub fn handle_client<'a>(
        &mut self,
        now: Now,
        from: FiveTuple,
        buf: &'a [u8],
        ports: &mut dyn RelayPorts,
    ) -> Option<Transmit<'a>> {
        match buf.first() {
            Some(b) if b & 0xC0 == 0x40 => self.channel_data(now.mono, from, buf),
            Some(b) if b & 0xC0 == 0 => self.handle_stun(now, from, buf, ports),
            _ => {
                self.garbage(now.mono, from, "not STUN or ChannelData");
                None
            }
        }
    }

    /// Handles a datagram a peer sent to a relay socket. The payload is
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]`, and `buf` has [`PEER_TAILROOM`] spare bytes after
    /// it, so a ChannelData answer is built in place without copying.
    pub fn handle_peer<'a>(
        &mut self,
        now: Now,
        relay: RelayHandle,
        from: PeerAddr,
        buf: &'a mut [u8],
        len: usize,
    ) -> Option<Transmit<'a>> {
        let Some(&idx) = self.by_relay.get(&relay) else {
            self.stats.dropped(DropReason::NoAllocation, 1);
            return None;
        };
        let a = self.admit(idx, from.0.ip(), len, Direction::PeerToClient, now.mono)?;
        let to = a.tuple();
        if let Some(ChannelNumber(number)) = a.channel_for_peer(from, now.mono) {
            if buf.len() < PEER_HEADROOM + len + PEER_TAILROOM || len > usize::from(u16::MAX) {
                return None;
            }
            buf[0..2].copy_from_slice(&number.to_be_bytes());
            buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            let mut total = PEER_HEADROOM + len;
            if to.transport.is_stream() {
                let padded = (total + 3) & !3;
                buf[total..padded].fill(0);
                total = padded;
            }
            return Some(Transmit::Client { to, data: Cow::Borrowed(&buf[..total]) });
        }
        let payload = &buf[PEER_HEADROOM..PEER_HEADROOM + len];
        let data = handlers::data_indication(from, payload, &mut self.rng);
        Some(Transmit::Client { to, data: Cow::Owned(data) })
    }

    /// A stream client's connection closed: its allocation ends at once.
    pub fn client_closed(&mut self, tuple: FiveTuple, ports: &mut dyn RelayPorts) {
        if let Some(&idx) = self.by_tuple.get(&tuple) {
            self.remove(idx, ports, EndReason::ConnectionClosed);
        }
    }

    /// Ends allocation `id` at once ([`EndReason::Killed`]); false if it is not live here.
    pub fn kill(&mut self, id: AllocationId, ports: &mut dyn RelayPorts) -> bool {
        let found = self.allocs.iter().position(|a| a.as_ref().is_some_and(|a| a.aref().id == id));
        if let Some(idx) = found {
            self.remove(idx, ports, EndReason::Killed);
        }
        found.is_some()
    }

    /// The next change of state not yet polled (see [`event`] for the contract).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether `tuple` holds an allocation.
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// When the engine next wants [`Engine::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Expires allocations, permissions and channels, ends revoked or expired credentials'
    /// allocations, counts the live permissions and channels, and hands usage to the sink. One
    /// call is one step of a round over every allocation: it visits at most
    /// [`MAX_VISITED_PER_SWEEP`] slots and ends at most [`MAX_ENDED_PER_SWEEP`] allocations; an
    /// unfinished round makes the next step due at once. Cheap to call early.
    pub fn handle_timeout(&mut self, now: Now, ports: &mut dyn RelayPorts) {
        if now.mono < self.next_sweep {
            return;
        }
        if self.sweep.resume_at == 0 {
            let generation = self.shared.revocations.generation();
            let usage_generation = self.shared.usage.as_ref().map_or(0, |u| u.generation());
            self.sweep = SweepRound {
                check_revoked: generation != self.seen_revocations,
                check_usage: usage_generation != self.seen_usage_generation,
                ..SweepRound::default()
            };
            self.seen_revocations = generation;
            self.seen_usage_generation = usage_generation;
        }
        let (check_revoked, check_usage) = (self.sweep.check_revoked, self.sweep.check_usage);
        let unix = now.unix();
        let mut ended_now = 0usize;
        let mut idx = self.sweep.resume_at;
        let stop = idx.saturating_add(MAX_VISITED_PER_SWEEP).min(self.allocs.len());
        while idx < stop && ended_now < MAX_ENDED_PER_SWEEP {
            let i = idx;
            idx += 1;
            let Some(a) = self.allocs[i].as_mut() else { continue };
            let ended = if check_revoked && self.shared.revocations.is_revoked(&a.owner().username) {
                Some(EndReason::Revoked)
            } else if a.credential_expired(unix) {
                Some(EndReason::CredentialExpired)
            } else if a.ended(now.mono, unix) {
                Some(EndReason::Expired)
            } else {
                None
            };
            if let Some(reason) = ended {
                ended_now += 1;
                self.remove(i, ports, reason);
                continue;
            }
            if check_usage {
                a.set_capped(self.shared.usage_blocked(&a.owner().userid));
            }
            if let Some(d) = a.take_unreported() {
                self.usage_batch.push((a.owner().userid.clone(), d));
            }
            let (p, c) = a.prune(now.mono, &mut self.events);
            self.sweep.permissions += p as u64;
            self.sweep.channels += c as u64;
        }
        if idx < self.allocs.len() {
            self.sweep.resume_at = idx;
            self.next_sweep = now.mono;
        } else {
            self.stats.set_bindings(self.sweep.permissions, self.sweep.channels);
            self.sweep = SweepRound::default();
            self.next_sweep = now.mono + SWEEP_INTERVAL;
        }
        self.flush_usage();
    }

    /// Hands the usage gathered since the last sweep to the sink.
    fn flush_usage(&mut self) {
        if self.usage_batch.is_empty() {
            return;
        }
        if let Some(sink) = &self.shared.usage {
            sink.record(&self.usage_batch);
        }
        self.usage_batch.clear();
    }

    /// Counts a malformed packet, logging it (at debug, rate-limited).
    fn garbage(&mut self, now: Instant, from: FiveTuple, what: &str) {
        self.stats.dropped(DropReason::Malformed, 1);
        if let Some(suppressed) = self.garbage_log.allow(now) {
            tracing::debug!(client = %from.client, what, suppressed, "dropped malformed packet");
        }
    }

    /// Live allocations in this shard.
    pub fn allocation_count(&self) -> usize {
        self.by_tuple.len()
    }

    /// Payload bytes relayed by this shard's live allocations, by userid (usage accounting).
    pub fn usage_by_user(&self) -> impl Iterator<Item = (&str, u64)> {
        self.allocs.iter().flatten().map(|a| (&*a.owner().userid, a.bytes_relayed()))
    }

    /// Ends every allocation (shutdown).
    pub fn close_all(&mut self, ports: &mut dyn RelayPorts) {
        for idx in 0..self.allocs.len() {
            if self.allocs[idx].is_some() {
                self.remove(idx, ports, EndReason::Drained);
            }
        }
        self.stats.set_bindings(0, 0);
        self.flush_usage();
    }

    /// Counts a packet the driver could not deliver.
    #[inline]
    pub fn count_drop(&mut self, reason: DropReason) {
        self.stats.dropped(reason, 1);
    }

    /// Counts `n` packets the driver could not deliver (a batch's refused sends).
    #[inline]
    pub fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.stats.dropped(reason, n);
    }

    /// What the engine counted since it started (the driver exports it).
    #[inline]
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The ChannelData fast path. Not through turn::proto's `ChannelData`: it decodes into owned
    /// `Vec`s (an allocation and a copy per datagram); the 4-byte header is read in place here, and
    /// written in place by [`Engine::handle_peer`].
    fn channel_data<'a>(&mut self, now: Instant, from: FiveTuple, buf: &'a [u8]) -> Option<Transmit<'a>> {
        if buf.len() < 4 {
            self.garbage(now, from, "short ChannelData");
            return None;
        }
        let number = ChannelNumber(u16::from_be_bytes([buf[0], buf[1]]));
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if 4 + len > buf.len() {
            self.garbage(now, from, "truncated ChannelData");
            return None;
        }
        let Some(&idx) = self.by_tuple.get(&from) else {
            self.stats.dropped(DropReason::NoAllocation, 1);
            return None;
        };
        let Some(peer) = self.allocs[idx].as_ref()?.channel_peer(number, now) else {
            self.stats.dropped(DropReason::NoAllocation, 1);
            return None;
        };
        let relay = self.admit(idx, peer.0.ip(), len, Direction::ClientToPeer, now)?.relay();
        Some(Transmit::Peer { relay, to: peer, data: Cow::Borrowed(&buf[4..4 + len]) })
    }

    /// The data path's one check: admits a datagram of `len` payload bytes between allocation
    /// `idx` and a peer at `peer` (see [`Allocation::admit`]) and counts it, relayed or dropped.
    #[inline]
    fn admit(&mut self, idx: usize, peer: IpAddr, len: usize, dir: Direction, now: Instant) -> Option<&Allocation> {
        let a = self.allocs[idx].as_mut()?;
        match a.admit(peer, len, dir, now) {
            Ok(()) => {
                self.stats.relayed(dir, a.tuple().transport, len);
                Some(a)
            }
            Err(reason) => {
                self.stats.dropped(reason, 1);
                None
            }
        }
    }

    /// A fresh [`AllocationId`] (from [`Shared`]: unique across the relay's shards).
    fn next_id(&self) -> AllocationId {
        self.shared.next_id()
    }

    fn insert(&mut self, a: Allocation) -> usize {
        let (tuple, relay) = (a.tuple(), a.relay());
        self.stats.allocation(tuple.transport, true);
        self.events.push_back(Event::AllocationCreated { alloc: a.aref(), expires: a.expires() });
        let idx = match self.free.pop() {
            Some(i) => {
                self.allocs[i] = Some(a);
                i
            }
            None => {
                self.allocs.push(Some(a));
                self.allocs.len() - 1
            }
        };
        self.by_tuple.insert(tuple, idx);
        self.by_relay.insert(relay, idx);
        idx
    }

    fn remove(&mut self, idx: usize, ports: &mut dyn RelayPorts, reason: EndReason) {
        let Some(mut a) = self.allocs[idx].take() else { return };
        let tuple = a.tuple();
        self.by_tuple.remove(&tuple);
        self.by_relay.remove(&a.relay());
        ports.release(a.relay());
        self.shared.release(&a.owner().userid);
        if let Some(d) = a.take_unreported() {
            self.usage_batch.push((a.owner().userid.clone(), d));
        }
        self.stats.allocation(tuple.transport, false);
        self.stats.end(reason);
        self.events.push_back(Event::AllocationEnded { alloc: a.aref(), reason });
        self.free.push(idx);
    }
}
