//! Request handling: authentication, Allocate, Refresh, CreatePermission, ChannelBind, Send and
//! Binding. Handlers return a success message or a [`StunError`]; the answer is encoded in one
//! place per request ([`Engine::answer`]). TURN attributes are read and written through
//! webrtc-rs's `turn::proto` types on `stun` messages; the exceptions say why where they are.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use stun::addr::AlternateServer;
use stun::attributes::{
    AttrType, Attributes, RawAttribute, ATTR_ALTERNATE_SERVER, ATTR_DATA, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_SOFTWARE, ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS,
};
use stun::message::{
    Getter, Message, MessageType, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
    METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use stun::xoraddr::XorMappedAddress;
use turn::proto::channum::ChannelNumber as ChannelNumberAttr;
use turn::proto::data::Data;
use turn::proto::evenport::EvenPort;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqfamily::{RequestedAddressFamily, REQUESTED_FAMILY_IPV6};
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::rsrvtoken::ReservationToken;
use turn::proto::PROTO_UDP;
use turnkey_auth::{long_term_key, NonceStatus, RestUsername};

use super::allocation::{Allocation, Grant, Owner};
use super::error::StunError;
use super::message::{self, add, add_error, finish, response, Parsed};
use super::{Engine, PortRequest, RelayPorts, Transmit};
use crate::metrics::{Direction, DropReason};
use crate::types::{ChannelNumber, FiveTuple, Now, PeerAddr};

/// Why authentication produced no [`Owner`]: the encoded answer and its error, or nothing (the
/// per-IP reply limit suppressed it).
enum Refused {
    Reply(StunError, Vec<u8>),
    Drop,
}

/// Whether a refusal goes through the per-IP reply limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// A stranger: the reply may go to a spoofed source, so it is limited.
    FirstContact,
    /// The request carries a nonce we issued to this very 5-tuple: the source has received our
    /// replies, so answering reflects nothing to a third party and is never limited (a client
    /// behind an address that is being flooded still completes its 401/438 rounds).
    Proven,
}

impl Refused {
    fn into_reply(self) -> Option<Vec<u8>> {
        match self {
            Self::Reply(_, bytes) => Some(bytes),
            Self::Drop => None,
        }
    }
}

impl Engine {
    pub(super) fn handle_stun<'a>(
        &mut self,
        now: Now,
        from: FiveTuple,
        buf: &'a [u8],
        ports: &mut dyn RelayPorts,
    ) -> Option<Transmit<'a>> {
        let parsed = match message::parse(buf) {
            Ok(p) => p,
            Err(_) => {
                self.garbage(now.mono, from, "invalid STUN message");
                return None;
            }
        };
        let typ = parsed.msg.typ;
        if typ.class == CLASS_INDICATION {
            if typ.method == METHOD_SEND {
                return self.send_indication(now, from, &parsed.msg);
            }
            return None;
        }
        if typ.class != CLASS_REQUEST {
            // Responses are never answered.
            return None;
        }
        let reply = self.request(now, from, &parsed, ports)?;
        Some(Transmit::Client { to: from, data: Cow::Owned(reply) })
    }

    fn request(&mut self, now: Now, from: FiveTuple, p: &Parsed, ports: &mut dyn RelayPorts) -> Option<Vec<u8>> {
        let m = &p.msg;
        let unknown = message::unknown_required(m);
        if !unknown.is_empty() {
            let mut r = self.error(m, StunError::UnknownAttribute);
            add(&mut r, &UnknownAttributes(unknown));
            return self.unauth_reply(now, from, finish(r, None));
        }
        match m.typ.method {
            METHOD_BINDING => {
                let mut r = response(m, CLASS_SUCCESS_RESPONSE);
                let addr = from.client.0;
                add(&mut r, &XorMappedAddress { ip: addr.ip(), port: addr.port() });
                self.add_software(&mut r);
                self.unauth_reply(now, from, finish(r, None))
            }
            METHOD_ALLOCATE => self.allocate(now, from, p, ports),
            METHOD_REFRESH | METHOD_CREATE_PERMISSION | METHOD_CHANNEL_BIND => {
                let existing = self.by_tuple.get(&from).copied();
                let owner = match self.authenticate(now, from, p, existing) {
                    Ok(o) => o,
                    Err(refused) => return refused.into_reply(),
                };
                // A request for an unknown 5-tuple is authenticated first, so strangers learn nothing.
                let result = match (existing, m.typ.method) {
                    (None, _) => Err(StunError::AllocationMismatch),
                    (Some(idx), METHOD_REFRESH) => self.refresh(now, idx, m, ports),
                    (Some(idx), METHOD_CREATE_PERMISSION) => self.create_permission(now, idx, m),
                    (Some(idx), _) => self.channel_bind(now, idx, m),
                };
                Some(self.answer(m, result, &owner.key))
            }
            _ => self.unauth_reply(now, from, finish(self.error(m, StunError::BadRequest), None)),
        }
    }

    /// RFC 8489 §9.2 long-term credential checks with TURN REST usernames.
    fn authenticate(
        &mut self,
        now: Now,
        from: FiveTuple,
        p: &Parsed,
        existing: Option<usize>,
    ) -> Result<Owner, Refused> {
        let m = &p.msg;
        let Some(mi_offset) = p.mi_offset else {
            self.auth_failed(now, from, "missing_integrity");
            return Err(self.challenge(now, from, m, StunError::Unauthorized, Gate::FirstContact));
        };
        let (Some(username), Some(realm), Some(nonce)) =
            (text(m, ATTR_USERNAME), text(m, ATTR_REALM), m.get(ATTR_NONCE).ok())
        else {
            self.auth_failed(now, from, "bad_request");
            let bytes = finish(self.error(m, StunError::BadRequest), None);
            return Err(self.refuse(now, from, StunError::BadRequest, bytes));
        };
        let gate = match self.cfg.nonce_key.check(&nonce, now.unix(), from.client.0, self.cfg.nonce_lifetime.as_secs())
        {
            NonceStatus::Valid => Gate::Proven,
            status => {
                // A stale nonce of ours still proves the 5-tuple while a client may be refreshing
                // with it (up to one allocation lifetime past its own); a forged one proves nothing.
                let window = self.cfg.nonce_lifetime.saturating_add(self.cfg.max_lifetime).as_secs();
                let ours = status == NonceStatus::Stale
                    && self.cfg.nonce_key.check(&nonce, now.unix(), from.client.0, window) == NonceStatus::Valid;
                self.auth_failed(now, from, "stale_nonce");
                let gate = if ours { Gate::Proven } else { Gate::FirstContact };
                return Err(self.challenge(now, from, m, StunError::StaleNonce, gate));
            }
        };
        if realm != self.cfg.realm {
            self.auth_failed(now, from, "wrong_realm");
            return Err(self.challenge(now, from, m, StunError::Unauthorized, gate));
        }
        let allocation = existing.and_then(|i| self.allocs[i].as_ref()).map(Allocation::owner);
        if allocation.is_some_and(|o| *o.username != *username) {
            self.auth_failed(now, from, "wrong_credentials");
            let e = StunError::WrongCredentials;
            return Err(Refused::Reply(e, self.error_reply(m, e, None)));
        }
        let cached = allocation.map(|o| o.key);
        let parsed = match RestUsername::parse(&username) {
            Ok(u) => u,
            Err(_) => {
                self.auth_failed(now, from, "malformed_username");
                return Err(self.challenge(now, from, m, StunError::Unauthorized, gate));
            }
        };
        if parsed.check_expiry(now.unix()).is_err() {
            self.auth_failed(now, from, "expired");
            return Err(self.challenge(now, from, m, StunError::Unauthorized, gate));
        }
        if self.shared.revocations.is_revoked(&username) {
            self.auth_failed(now, from, "revoked");
            return Err(self.challenge(now, from, m, StunError::Unauthorized, gate));
        }
        let key = match cached {
            Some(k) if message::integrity_matches(&m.raw, mi_offset, &k) => Some(k),
            Some(_) => None,
            None => self
                .cfg
                .secrets
                .passwords(&username)
                .map(|pw| long_term_key(&username, &self.cfg.realm, &pw))
                .find(|k| message::integrity_matches(&m.raw, mi_offset, k)),
        };
        let Some(key) = key else {
            self.auth_failed(now, from, "bad_credential");
            return Err(self.challenge(now, from, m, StunError::Unauthorized, gate));
        };
        let (userid, expiry) = (parsed.userid().into(), parsed.expiry());
        Ok(Owner { username: username.into(), userid, key, expiry })
    }

    fn allocate(&mut self, now: Now, from: FiveTuple, p: &Parsed, ports: &mut dyn RelayPorts) -> Option<Vec<u8>> {
        let m = &p.msg;
        let existing = self.by_tuple.get(&from).copied();
        let owner = match self.authenticate(now, from, p, existing) {
            Ok(o) => o,
            Err(Refused::Reply(e, bytes)) => {
                self.attempt(e.label());
                return Some(bytes);
            }
            Err(Refused::Drop) => return None,
        };
        match self.allocate_authenticated(now, from, m, &owner, existing, ports) {
            Ok(bytes) => {
                self.attempt("success");
                Some(bytes)
            }
            Err(e) => {
                // Draining or full: redirect to the fleet's alternate when it knows one.
                let alternate = match e {
                    StunError::InsufficientCapacity => {
                        self.shared.fleet.as_ref().and_then(|f| f.alternate(from.transport))
                    }
                    _ => None,
                };
                let e = if alternate.is_some() { StunError::TryAlternate } else { e };
                let attrs: Vec<u16> = m.attributes.0.iter().map(|a| a.typ.0).collect();
                tracing::debug!(client = %from.client, code = e.code(), ?attrs, ?alternate, "allocate refused");
                self.attempt(e.label());
                let mut r = self.error(m, e);
                if let Some(a) = alternate {
                    // AlternateServer is MAPPED-ADDRESS's encoding under its own type.
                    let attr = AlternateServer { ip: a.ip(), port: a.port() };
                    if let Err(e) = attr.add_to_as(&mut r, ATTR_ALTERNATE_SERVER) {
                        tracing::debug!(error = %e, "failed to add ALTERNATE-SERVER");
                    }
                }
                Some(finish(r, Some(&owner.key)))
            }
        }
    }

    fn allocate_authenticated(
        &mut self,
        now: Now,
        from: FiveTuple,
        m: &Message,
        owner: &Owner,
        existing: Option<usize>,
        ports: &mut dyn RelayPorts,
    ) -> Result<Vec<u8>, StunError> {
        if let Some(a) = existing.and_then(|i| self.allocs[i].as_ref()) {
            // A retransmission gets the same answer; anything else is a mismatch.
            return a
                .retransmitted_answer(&m.transaction_id.0)
                .map(<[u8]>::to_vec)
                .ok_or(StunError::AllocationMismatch);
        }
        if self.shared.is_draining() {
            return Err(StunError::InsufficientCapacity);
        }
        if self.shared.usage_blocked(&owner.userid) {
            // The key's monthly bandwidth cap is reached (relay enforcement on).
            return Err(StunError::AllocationQuotaReached);
        }
        let transport = optional::<RequestedTransport>(m)?.ok_or(StunError::BadRequest)?;
        if transport.protocol != PROTO_UDP {
            return Err(StunError::UnsupportedTransport);
        }
        let even = optional::<EvenPort>(m)?;
        let token = optional::<ReservationToken>(m)?;
        if token.is_some() && (even.is_some() || m.contains(ATTR_REQUESTED_ADDRESS_FAMILY)) {
            return Err(StunError::BadRequest);
        }
        let request = match (token, even) {
            (Some(t), _) => {
                let t: [u8; 8] = t.0.as_slice().try_into().map_err(|_| StunError::BadRequest)?;
                PortRequest::Reserved(u64::from_be_bytes(t))
            }
            // EvenPort keeps its R bit private; it equals the default exactly when the bit is clear.
            (None, Some(e)) if e != EvenPort::default() => PortRequest::EvenReserveNext,
            (None, Some(_)) => PortRequest::Even,
            (None, None) => PortRequest::Any,
        };
        let ipv6 = requested_family(m)?.unwrap_or(false);
        let reserved = matches!(request, PortRequest::Reserved(_));
        if !reserved && ((ipv6 && !self.cfg.relay_v6) || (!ipv6 && !self.cfg.relay_v4)) {
            return Err(StunError::AddressFamilyNotSupported);
        }
        let lifetime = self.granted_lifetime(optional::<Lifetime>(m)?.map(|l| l.0));
        self.shared.reserve(&owner.userid, self.cfg.max_allocations_per_user, self.cfg.max_allocations)?;
        let Some(binding) = ports.bind(ipv6, request) else {
            self.shared.release(&owner.userid);
            return Err(StunError::InsufficientCapacity);
        };
        let mut r = response(m, CLASS_SUCCESS_RESPONSE);
        let relayed = binding.advertised;
        add(&mut r, &RelayedAddress { ip: relayed.ip(), port: relayed.port() });
        add(&mut r, &lifetime_attr(lifetime));
        add(&mut r, &XorMappedAddress { ip: from.client.0.ip(), port: from.client.0.port() });
        if let Some(token) = binding.reservation {
            add(&mut r, &ReservationToken(token.to_be_bytes().to_vec()));
        }
        self.add_software(&mut r);
        let bytes = finish(r, Some(&owner.key));
        let a = Allocation::new(
            from,
            (binding.handle, relayed),
            owner.clone(),
            now.mono + lifetime,
            self.cfg.bandwidth_limit,
            now.mono,
            (m.transaction_id.0, bytes.clone()),
        );
        tracing::debug!(client = %from.client, relay = %relayed, "allocation created");
        self.insert(a);
        Ok(bytes)
    }

    fn refresh(&mut self, now: Now, idx: usize, m: &Message, ports: &mut dyn RelayPorts) -> Result<Message, StunError> {
        let requested = optional::<Lifetime>(m)?.map(|l| l.0);
        let v6 = self.allocs[idx].as_ref().is_some_and(|a| a.relay_addr().is_ipv6());
        match requested_family(m) {
            Ok(None) => {}
            Ok(Some(family)) if family == v6 => {}
            Err(StunError::BadRequest) => return Err(StunError::BadRequest),
            Ok(Some(_)) | Err(_) => return Err(StunError::PeerAddressFamilyMismatch),
        }
        let lifetime = if requested == Some(Duration::ZERO) {
            self.remove(idx, ports, super::EndReason::Deallocated);
            Duration::ZERO
        } else {
            let l = self.granted_lifetime(requested);
            if let Some(a) = self.allocs[idx].as_mut() {
                a.refresh(now.mono + l);
            }
            l
        };
        let mut r = response(m, CLASS_SUCCESS_RESPONSE);
        add(&mut r, &lifetime_attr(lifetime));
        Ok(r)
    }

    fn create_permission(&mut self, now: Now, idx: usize, m: &Message) -> Result<Message, StunError> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for attr in m.attributes.0.iter().filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS) {
            let peer = peer_address(&one_attribute(m, attr))?;
            self.check_peer(idx, peer, "create_permission")?;
            ips.push(peer.ip());
        }
        if ips.is_empty() {
            return Err(StunError::BadRequest);
        }
        let grant = self.grant(now);
        let a = self.allocs[idx].as_mut().ok_or(StunError::AllocationMismatch)?;
        a.permit_all(&ips, &grant)?;
        Ok(response(m, CLASS_SUCCESS_RESPONSE))
    }

    fn channel_bind(&mut self, now: Now, idx: usize, m: &Message) -> Result<Message, StunError> {
        let number = optional::<ChannelNumberAttr>(m)?.ok_or(StunError::BadRequest)?;
        // The range is checked here, not with ChannelNumberAttr::valid(), which always allows
        // RFC 5766's 0x7FFF; RFC 8656 ends at 0x4FFF unless the operator opts in.
        let number = ChannelNumber(number.0);
        if number.0 < ChannelNumber::MIN || number.0 > self.cfg.max_channel() {
            return Err(StunError::BadRequest);
        }
        let peer = peer_address(m)?;
        self.check_peer(idx, peer, "channel_bind")?;
        let grant = self.grant(now);
        let a = self.allocs[idx].as_mut().ok_or(StunError::AllocationMismatch)?;
        a.bind_channel(number, PeerAddr(peer), &grant)?;
        Ok(response(m, CLASS_SUCCESS_RESPONSE))
    }

    fn send_indication<'a>(&mut self, now: Now, from: FiveTuple, m: &Message) -> Option<Transmit<'a>> {
        let Some(&idx) = self.by_tuple.get(&from) else {
            self.stats.dropped(DropReason::NoAllocation);
            return None;
        };
        let mut data = Data::default();
        let (Ok(peer), Ok(())) = (peer_address(m), data.get_from(m)) else {
            self.stats.dropped(DropReason::Malformed);
            return None;
        };
        if !self.cfg.policy.permits(peer) {
            self.metrics.peer_denied.with_label_values(&["send"]).inc();
            self.stats.dropped(DropReason::DeniedPeer);
            return None;
        }
        let relay = self.admit(idx, peer.ip(), data.0.len(), Direction::ClientToPeer, now.mono)?.relay();
        Some(Transmit::Peer { relay, to: PeerAddr(peer), data: Cow::Owned(data.0) })
    }

    /// Policy and address-family checks shared by CreatePermission and ChannelBind.
    fn check_peer(&mut self, idx: usize, peer: SocketAddr, path: &str) -> Result<(), StunError> {
        let v6 = self.allocs[idx].as_ref().is_some_and(|a| a.relay_addr().is_ipv6());
        if peer.is_ipv6() != v6 {
            return Err(StunError::PeerAddressFamilyMismatch);
        }
        if !self.cfg.policy.permits(peer) {
            self.metrics.peer_denied.with_label_values(&[path]).inc();
            return Err(StunError::Forbidden);
        }
        Ok(())
    }

    /// The lifetimes and caps a CreatePermission or ChannelBind at `now` grants.
    fn grant(&self, now: Now) -> Grant {
        Grant {
            now: now.mono,
            permission_until: now.mono + self.cfg.permission_lifetime,
            max_permissions: self.cfg.max_permissions,
            channel_until: now.mono + self.cfg.channel_lifetime,
            max_channels: self.cfg.max_channels,
        }
    }

    fn granted_lifetime(&self, requested: Option<Duration>) -> Duration {
        let (default, max) = (self.cfg.default_lifetime.min(self.cfg.max_lifetime), self.cfg.max_lifetime);
        requested.map_or(default, |r| r.clamp(default, max))
    }

    /// 401 or 438 with REALM and a fresh NONCE, subject to the reply limit at first contact
    /// (checked before the answer is built, so a flood costs no nonce).
    fn challenge(&mut self, now: Now, from: FiveTuple, m: &Message, e: StunError, gate: Gate) -> Refused {
        if gate == Gate::FirstContact && !self.may_reply(now, from) {
            return Refused::Drop;
        }
        let mut r = self.error(m, e);
        add(&mut r, &TextAttribute::new(ATTR_REALM, self.cfg.realm.clone()));
        let nonce = self.cfg.nonce_key.issue(now.unix(), from.client.0);
        add(&mut r, &TextAttribute::new(ATTR_NONCE, nonce));
        Refused::Reply(e, finish(r, None))
    }

    /// A refusal to a stranger, subject to the reply limit.
    fn refuse(&mut self, now: Now, from: FiveTuple, e: StunError, bytes: Vec<u8>) -> Refused {
        if !self.may_reply(now, from) {
            return Refused::Drop;
        }
        Refused::Reply(e, bytes)
    }

    /// A reply to a stranger, subject to the reply limiter (per 5-tuple, then per IP).
    fn unauth_reply(&mut self, now: Now, from: FiveTuple, bytes: Vec<u8>) -> Option<Vec<u8>> {
        self.may_reply(now, from).then_some(bytes)
    }

    /// Whether the reply limiter lets a reply to `from` go now; counts the drop if not. Only
    /// UDP is limited: a TCP or TLS client completed a handshake from its address, so a reply
    /// reflects nothing to a spoofed victim, and a reply dropped on a stream is never asked for
    /// again (no retransmission) and would stall the client until its timeout.
    fn may_reply(&mut self, now: Now, from: FiveTuple) -> bool {
        if from.transport != crate::types::Transport::Udp {
            return true;
        }
        let ok = self.limiter.allow(from.client.0, now.mono);
        if !ok {
            self.stats.dropped(DropReason::ReplyLimited);
        }
        ok
    }

    /// The answer to an authenticated request: its success, or its error, signed with `key`.
    fn answer(&self, m: &Message, result: Result<Message, StunError>, key: &[u8; 16]) -> Vec<u8> {
        match result {
            Ok(mut r) => {
                self.add_software(&mut r);
                finish(r, Some(key))
            }
            Err(e) => self.error_reply(m, e, Some(key)),
        }
    }

    fn error(&self, m: &Message, e: StunError) -> Message {
        let mut r = response(m, CLASS_ERROR_RESPONSE);
        add_error(&mut r, e);
        self.add_software(&mut r);
        r
    }

    fn error_reply(&self, m: &Message, e: StunError, key: Option<&[u8; 16]>) -> Vec<u8> {
        finish(self.error(m, e), key)
    }

    fn add_software(&self, r: &mut Message) {
        if let Some(s) = &self.cfg.software {
            add(r, &TextAttribute::new(ATTR_SOFTWARE, s.clone()));
        }
    }

    fn auth_failed(&mut self, now: Now, from: FiveTuple, reason: &str) {
        self.metrics.auth_failures.with_label_values(&[reason]).inc();
        // Challenges without credentials are the normal first round trip, not failures worth a line.
        if !matches!(reason, "missing_integrity" | "stale_nonce") {
            if let Some(suppressed) = self.auth_log.allow(now.mono) {
                tracing::info!(client = %from.client, reason, suppressed, "TURN authentication failed");
            }
        }
    }

    fn attempt(&self, result: &str) {
        self.metrics.allocation_attempts.with_label_values(&[result]).inc();
    }
}

/// A Data indication carrying `payload` from `peer`.
pub(super) fn data_indication(peer: PeerAddr, payload: &[u8]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_type(MessageType::new(METHOD_DATA, CLASS_INDICATION));
    m.transaction_id.0 = rand::random();
    m.write_header();
    add(&mut m, &PeerAddress { ip: peer.0.ip(), port: peer.0.port() });
    // Not turn::proto's Data: it owns a Vec, which would copy every relayed payload once more.
    m.add(ATTR_DATA, payload);
    finish(m, None)
}

fn text(m: &Message, t: AttrType) -> Option<String> {
    m.get(t).ok().and_then(|v| String::from_utf8(v).ok())
}

/// An optional attribute read through its `turn::proto` type: `None` when absent, 400 when
/// malformed.
fn optional<G: Getter + Default>(m: &Message) -> Result<Option<G>, StunError> {
    let mut g = G::default();
    match g.get_from(m) {
        Ok(()) => Ok(Some(g)),
        Err(stun::Error::ErrAttributeNotFound) => Ok(None),
        Err(_) => Err(StunError::BadRequest),
    }
}

/// REQUESTED-ADDRESS-FAMILY: `None` when absent, else whether IPv6 is asked; 400 for a bad size,
/// 440 for a family that is neither IPv4 nor IPv6.
fn requested_family(m: &Message) -> Result<Option<bool>, StunError> {
    let mut f = RequestedAddressFamily::default();
    match f.get_from(m) {
        Ok(()) => Ok(Some(f == REQUESTED_FAMILY_IPV6)),
        Err(stun::Error::ErrAttributeNotFound) => Ok(None),
        Err(stun::Error::ErrAttributeSizeInvalid) => Err(StunError::BadRequest),
        Err(_) => Err(StunError::AddressFamilyNotSupported),
    }
}

/// LIFETIME for `d`, saturating at the largest value the attribute holds (turn::proto's setter
/// would truncate).
fn lifetime_attr(d: Duration) -> Lifetime {
    Lifetime(d.min(Duration::from_secs(u64::from(u32::MAX))))
}

/// The (first) XOR-PEER-ADDRESS of `m`, read through turn::proto's `PeerAddress`. stun's address
/// decoder zero-fills a truncated address, so the exact length (8 bytes for IPv4, 20 for IPv6) is
/// checked first.
pub(crate) fn peer_address(m: &Message) -> Result<SocketAddr, StunError> {
    let attr = m.attributes.0.iter().find(|a| a.typ == ATTR_XOR_PEER_ADDRESS).ok_or(StunError::BadRequest)?;
    let exact = match attr.value.as_slice() {
        [0, 1, ..] => attr.value.len() == 8,
        [0, 2, ..] => attr.value.len() == 20,
        _ => false,
    };
    if !exact {
        return Err(StunError::BadRequest);
    }
    let mut peer = PeerAddress::default();
    peer.get_from(m).map_err(|_| StunError::BadRequest)?;
    Ok(SocketAddr::new(peer.ip, peer.port))
}

/// A view of `m` holding only `attr`. `PeerAddress` reads the first attribute of its type, and a
/// CreatePermission may carry several XOR-PEER-ADDRESSes (RFC 8656 §10.1): each is read from its
/// own view (the control path; Send and ChannelBind read theirs from the message itself).
fn one_attribute(m: &Message, attr: &RawAttribute) -> Message {
    Message { transaction_id: m.transaction_id, attributes: Attributes(vec![attr.clone()]), ..Message::default() }
}
