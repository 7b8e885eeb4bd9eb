//! Request handling: authentication, Allocate, Refresh, CreatePermission, ChannelBind, Send and
//! Binding. Every answer is built here; the engine's data path lives in `mod.rs`.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use stun::attributes::{
    AttrType, ATTR_CHANNEL_NUMBER, ATTR_DATA, ATTR_EVEN_PORT, ATTR_LIFETIME, ATTR_NONCE, ATTR_REALM,
    ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_REQUESTED_TRANSPORT, ATTR_RESERVATION_TOKEN, ATTR_SOFTWARE, ATTR_USERNAME,
    ATTR_XORMAPPED_ADDRESS, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun::message::{
    Message, MessageType, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, MAGIC_COOKIE,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH,
    METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use stun::xoraddr::XorMappedAddress;
use turnkey_auth::{long_term_key, NonceStatus, RestUsername, UnixTime};

use super::allocation::{Allocation, BindCheck, Channel, TokenBucket};
use super::message::{self, add, add_error, finish, response, Parsed};
use super::{Engine, PortRequest, RelayPorts, Transmit};
use crate::metrics::{Direction, DropReason};
use crate::types::{ChannelNumber, FiveTuple, Now, PeerAddr};

/// A request that passed authentication.
struct Auth {
    username: String,
    key: [u8; 16],
    userid: String,
    expiry: UnixTime,
}

enum Outcome {
    Ok(Auth),
    Reply(Vec<u8>),
    Drop,
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
            let mut r = self.error(m, 420);
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
                let Some(&idx) = self.by_tuple.get(&from) else {
                    // Requests for an unknown 5-tuple: authenticate first so strangers learn nothing.
                    return match self.authenticate(now, from, p, None) {
                        Outcome::Ok(auth) => Some(self.error_reply(m, 437, Some(&auth.key))),
                        Outcome::Reply(r) => Some(r),
                        Outcome::Drop => None,
                    };
                };
                let auth = match self.authenticate(now, from, p, Some(idx)) {
                    Outcome::Ok(a) => a,
                    Outcome::Reply(r) => return Some(r),
                    Outcome::Drop => return None,
                };
                Some(match m.typ.method {
                    METHOD_REFRESH => self.refresh(now, idx, m, &auth, ports),
                    METHOD_CREATE_PERMISSION => self.create_permission(now, idx, m, &auth),
                    _ => self.channel_bind(now, idx, m, &auth),
                })
            }
            _ => self.unauth_reply(now, from, finish(self.error(m, 400), None)),
        }
    }

    /// RFC 8489 §9.2 long-term credential checks with TURN REST usernames.
    fn authenticate(&mut self, now: Now, from: FiveTuple, p: &Parsed, existing: Option<usize>) -> Outcome {
        let m = &p.msg;
        let Some(mi_offset) = p.mi_offset else {
            self.auth_failed(now, from, "missing_integrity");
            return self.challenge(now, from, m, 401);
        };
        let (Some(username), Some(realm), Some(nonce)) =
            (text(m, ATTR_USERNAME), text(m, ATTR_REALM), m.get(ATTR_NONCE).ok())
        else {
            self.auth_failed(now, from, "bad_request");
            return match self.unauth_reply(now, from, finish(self.error(m, 400), None)) {
                Some(r) => Outcome::Reply(r),
                None => Outcome::Drop,
            };
        };
        match self.cfg.nonce_key.check(&nonce, now.unix(), from.client.0, self.cfg.nonce_lifetime.as_secs()) {
            NonceStatus::Valid => {}
            NonceStatus::Stale | NonceStatus::Forged => {
                self.auth_failed(now, from, "stale_nonce");
                return self.challenge(now, from, m, 438);
            }
        }
        if realm != self.cfg.realm {
            self.auth_failed(now, from, "wrong_realm");
            return self.challenge(now, from, m, 401);
        }
        if let Some(idx) = existing {
            if let Some(a) = self.allocs[idx].as_ref() {
                if *a.username != *username {
                    self.auth_failed(now, from, "wrong_credentials");
                    return Outcome::Reply(self.error_reply(m, 441, None));
                }
            }
        }
        let parsed = match RestUsername::parse(&username) {
            Ok(u) => u,
            Err(_) => {
                self.auth_failed(now, from, "malformed_username");
                return self.challenge(now, from, m, 401);
            }
        };
        if parsed.check_expiry(now.unix()).is_err() {
            self.auth_failed(now, from, "expired");
            return self.challenge(now, from, m, 401);
        }
        if self.shared.revocations.is_revoked(&username) {
            self.auth_failed(now, from, "revoked");
            return self.challenge(now, from, m, 401);
        }
        let cached = existing.and_then(|i| self.allocs[i].as_ref()).map(|a| a.key);
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
            return self.challenge(now, from, m, 401);
        };
        let (userid, expiry) = (parsed.userid().to_owned(), parsed.expiry());
        Outcome::Ok(Auth { username, key, userid, expiry })
    }

    fn allocate(&mut self, now: Now, from: FiveTuple, p: &Parsed, ports: &mut dyn RelayPorts) -> Option<Vec<u8>> {
        let m = &p.msg;
        let existing = self.by_tuple.get(&from).copied();
        let auth = match self.authenticate(now, from, p, existing) {
            Outcome::Ok(a) => a,
            Outcome::Reply(r) => {
                self.attempt(reply_code(&r));
                return Some(r);
            }
            Outcome::Drop => return None,
        };
        let result = self.allocate_authenticated(now, from, m, &auth, existing, ports);
        if let Err(code) = result {
            let attrs: Vec<u16> = m.attributes.0.iter().map(|a| a.typ.0).collect();
            tracing::debug!(client = %from.client, code, ?attrs, "allocate refused");
        }
        self.attempt(match &result {
            Ok(_) => "success",
            Err(code) => code_label(*code),
        });
        Some(match result {
            Ok(bytes) => bytes,
            Err(code) => self.error_reply(m, code, Some(&auth.key)),
        })
    }

    fn allocate_authenticated(
        &mut self,
        now: Now,
        from: FiveTuple,
        m: &Message,
        auth: &Auth,
        existing: Option<usize>,
        ports: &mut dyn RelayPorts,
    ) -> Result<Vec<u8>, u16> {
        if let Some(a) = existing.and_then(|i| self.allocs[i].as_ref()) {
            // A retransmission gets the same answer; anything else is a mismatch.
            return if a.allocate_txid == m.transaction_id.0 { Ok(a.allocate_response.clone()) } else { Err(437) };
        }
        if self.shared.is_draining() {
            return Err(508);
        }
        if self.shared.usage_blocked(&auth.userid) {
            // The key's monthly bandwidth cap is reached (relay enforcement on).
            return Err(486);
        }
        let transport = m.get(ATTR_REQUESTED_TRANSPORT).map_err(|_| 400u16)?;
        if transport.len() != 4 {
            return Err(400);
        }
        if transport[0] != 17 {
            return Err(442);
        }
        let even = m.get(ATTR_EVEN_PORT).ok();
        let token = m.get(ATTR_RESERVATION_TOKEN).ok();
        let family = m.get(ATTR_REQUESTED_ADDRESS_FAMILY).ok();
        if token.is_some() && (even.is_some() || family.is_some()) {
            return Err(400);
        }
        let request = match (&token, &even) {
            (Some(t), _) => {
                let t: [u8; 8] = t.as_slice().try_into().map_err(|_| 400u16)?;
                PortRequest::Reserved(u64::from_be_bytes(t))
            }
            (None, Some(e)) if e.len() != 1 => return Err(400),
            (None, Some(e)) if e[0] & 0x80 != 0 => PortRequest::EvenReserveNext,
            (None, Some(_)) => PortRequest::Even,
            (None, None) => PortRequest::Any,
        };
        let ipv6 = match family.as_deref() {
            None => false,
            Some([1, ..]) => false,
            Some([2, ..]) => true,
            Some(_) => return Err(440),
        };
        if token.is_none() && ((ipv6 && !self.cfg.relay_v6) || (!ipv6 && !self.cfg.relay_v4)) {
            return Err(440);
        }
        let lifetime = self.granted_lifetime(lifetime_attr(m)?);
        self.shared.reserve(&auth.userid, self.cfg.max_allocations_per_user, self.cfg.max_allocations)?;
        let Some(binding) = ports.bind(ipv6, request) else {
            self.shared.release(&auth.userid);
            return Err(508);
        };
        let mut r = response(m, CLASS_SUCCESS_RESPONSE);
        add_xor(&mut r, ATTR_XOR_RELAYED_ADDRESS, binding.advertised);
        add_lifetime(&mut r, lifetime);
        add_xor(&mut r, ATTR_XORMAPPED_ADDRESS, from.client.0);
        if let Some(token) = binding.reservation {
            r.add(ATTR_RESERVATION_TOKEN, &token.to_be_bytes());
        }
        self.add_software(&mut r);
        let bytes = finish(r, Some(&auth.key));
        let a = Allocation {
            tuple: from,
            relay: binding.handle,
            relay_addr: binding.advertised,
            username: auth.username.as_str().into(),
            userid: auth.userid.as_str().into(),
            key: auth.key,
            cred_expiry: auth.expiry,
            expires: now.mono + lifetime,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_txid: m.transaction_id.0,
            allocate_response: bytes.clone(),
            bucket: TokenBucket::new(self.cfg.bandwidth_limit, now.mono),
            bytes_relayed: 0,
            unreported: [0, 0],
            capped: false,
        };
        tracing::debug!(client = %from.client, relay = %binding.advertised, "allocation created");
        self.insert(a);
        Ok(bytes)
    }

    fn refresh(&mut self, now: Now, idx: usize, m: &Message, auth: &Auth, ports: &mut dyn RelayPorts) -> Vec<u8> {
        let requested = match lifetime_attr(m) {
            Ok(l) => l,
            Err(code) => return self.error_reply(m, code, Some(&auth.key)),
        };
        if let Ok(fam) = m.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let v6 = self.allocs[idx].as_ref().is_some_and(|a| a.relay_addr.is_ipv6());
            if fam.first() != Some(if v6 { &2 } else { &1 }) {
                return self.error_reply(m, 443, Some(&auth.key));
            }
        }
        let lifetime = if requested == Some(Duration::ZERO) {
            self.remove(idx, ports);
            Duration::ZERO
        } else {
            let l = self.granted_lifetime(requested);
            if let Some(a) = self.allocs[idx].as_mut() {
                a.expires = now.mono + l;
            }
            l
        };
        let mut r = response(m, CLASS_SUCCESS_RESPONSE);
        add_lifetime(&mut r, lifetime);
        self.add_software(&mut r);
        finish(r, Some(&auth.key))
    }

    fn create_permission(&mut self, now: Now, idx: usize, m: &Message, auth: &Auth) -> Vec<u8> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for attr in m.attributes.0.iter().filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS) {
            let Some(peer) = decode_xor(&attr.value, &m.transaction_id.0) else {
                return self.error_reply(m, 400, Some(&auth.key));
            };
            if let Err(code) = self.check_peer(idx, peer, "create_permission") {
                return self.error_reply(m, code, Some(&auth.key));
            }
            ips.push(peer.ip());
        }
        if ips.is_empty() {
            return self.error_reply(m, 400, Some(&auth.key));
        }
        let (cap, until) = (self.cfg.max_permissions, now.mono + self.cfg.permission_lifetime);
        let Some(a) = self.allocs[idx].as_mut() else { return self.error_reply(m, 437, Some(&auth.key)) };
        if !a.can_permit_all(&ips, now.mono, cap) {
            return self.error_reply(m, 508, Some(&auth.key));
        }
        for ip in ips {
            a.permit(ip, until, now.mono, cap);
        }
        self.success(m, &auth.key)
    }

    fn channel_bind(&mut self, now: Now, idx: usize, m: &Message, auth: &Auth) -> Vec<u8> {
        let number = match m.get(ATTR_CHANNEL_NUMBER) {
            Ok(v) if v.len() == 4 => ChannelNumber(u16::from_be_bytes([v[0], v[1]])),
            _ => return self.error_reply(m, 400, Some(&auth.key)),
        };
        if number.0 < ChannelNumber::MIN || number.0 > self.cfg.max_channel() {
            return self.error_reply(m, 400, Some(&auth.key));
        }
        let peer = match m.get(ATTR_XOR_PEER_ADDRESS).ok().and_then(|v| decode_xor(&v, &m.transaction_id.0)) {
            Some(p) => p,
            None => return self.error_reply(m, 400, Some(&auth.key)),
        };
        if let Err(code) = self.check_peer(idx, peer, "channel_bind") {
            return self.error_reply(m, code, Some(&auth.key));
        }
        let cfg = self.cfg.clone();
        let Some(a) = self.allocs[idx].as_mut() else { return self.error_reply(m, 437, Some(&auth.key)) };
        a.prune(now.mono);
        let peer = PeerAddr(peer);
        let chan_until = now.mono + cfg.channel_lifetime;
        match a.check_bind(number, peer, now.mono) {
            BindCheck::Conflict => return self.error_reply(m, 400, Some(&auth.key)),
            BindCheck::Refresh(i) => a.channels[i].expires = chan_until,
            BindCheck::New => {
                if a.live_channels(now.mono) >= cfg.max_channels {
                    return self.error_reply(m, 508, Some(&auth.key));
                }
                a.channels.push(Channel { number, peer, expires: chan_until });
            }
        }
        if !a.permit(peer.0.ip(), now.mono + cfg.permission_lifetime, now.mono, cfg.max_permissions) {
            return self.error_reply(m, 508, Some(&auth.key));
        }
        self.success(m, &auth.key)
    }

    fn send_indication<'a>(&mut self, now: Now, from: FiveTuple, m: &Message) -> Option<Transmit<'a>> {
        let Some(&idx) = self.by_tuple.get(&from) else {
            self.stats.dropped(DropReason::NoAllocation);
            return None;
        };
        let peer = m.get(ATTR_XOR_PEER_ADDRESS).ok().and_then(|v| decode_xor(&v, &m.transaction_id.0));
        let (Some(peer), Ok(data)) = (peer, m.get(ATTR_DATA)) else {
            self.stats.dropped(DropReason::Malformed);
            return None;
        };
        if !self.cfg.policy.permits(peer) {
            self.metrics.peer_denied.with_label_values(&["send"]).inc();
            self.stats.dropped(DropReason::DeniedPeer);
            return None;
        }
        let a = self.allocs[idx].as_mut()?;
        if !a.permitted(peer.ip(), now.mono) {
            self.stats.dropped(DropReason::NoPermission);
            return None;
        }
        if a.capped {
            self.stats.dropped(DropReason::UsageCap);
            return None;
        }
        if !a.bucket.take(data.len(), now.mono) {
            self.stats.dropped(DropReason::RateCap);
            return None;
        }
        a.bytes_relayed += data.len() as u64;
        a.unreported[Direction::ClientToPeer as usize] += data.len() as u64;
        let relay = a.relay;
        self.stats.relayed(Direction::ClientToPeer, from.transport, data.len());
        Some(Transmit::Peer { relay, to: PeerAddr(peer), data: Cow::Owned(data) })
    }

    /// Policy and address-family checks shared by CreatePermission and ChannelBind.
    fn check_peer(&mut self, idx: usize, peer: SocketAddr, path: &str) -> Result<(), u16> {
        let v6 = self.allocs[idx].as_ref().is_some_and(|a| a.relay_addr.is_ipv6());
        if peer.is_ipv6() != v6 {
            return Err(443);
        }
        if !self.cfg.policy.permits(peer) {
            self.metrics.peer_denied.with_label_values(&[path]).inc();
            return Err(403);
        }
        Ok(())
    }

    fn granted_lifetime(&self, requested: Option<Duration>) -> Duration {
        let (default, max) = (self.cfg.default_lifetime.min(self.cfg.max_lifetime), self.cfg.max_lifetime);
        requested.map_or(default, |r| r.clamp(default, max))
    }

    /// 401 or 438 with REALM and a fresh NONCE, subject to the per-IP reply limit.
    fn challenge(&mut self, now: Now, from: FiveTuple, m: &Message, code: u16) -> Outcome {
        let mut r = self.error(m, code);
        add(&mut r, &TextAttribute::new(ATTR_REALM, self.cfg.realm.clone()));
        let nonce = self.cfg.nonce_key.issue(now.unix(), from.client.0);
        add(&mut r, &TextAttribute::new(ATTR_NONCE, nonce));
        match self.unauth_reply(now, from, finish(r, None)) {
            Some(bytes) => Outcome::Reply(bytes),
            None => Outcome::Drop,
        }
    }

    fn unauth_reply(&mut self, now: Now, from: FiveTuple, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if self.limiter.allow(from.client.0.ip(), now.mono) {
            Some(bytes)
        } else {
            self.stats.dropped(DropReason::ReplyLimited);
            None
        }
    }

    fn error(&self, m: &Message, code: u16) -> Message {
        let mut r = response(m, CLASS_ERROR_RESPONSE);
        add_error(&mut r, code);
        self.add_software(&mut r);
        r
    }

    fn error_reply(&self, m: &Message, code: u16, key: Option<&[u8; 16]>) -> Vec<u8> {
        finish(self.error(m, code), key)
    }

    fn success(&self, m: &Message, key: &[u8; 16]) -> Vec<u8> {
        let mut r = response(m, CLASS_SUCCESS_RESPONSE);
        self.add_software(&mut r);
        finish(r, Some(key))
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
    add_xor(&mut m, ATTR_XOR_PEER_ADDRESS, peer.0);
    m.add(ATTR_DATA, payload);
    finish(m, None)
}

fn text(m: &Message, t: AttrType) -> Option<String> {
    m.get(t).ok().and_then(|v| String::from_utf8(v).ok())
}

fn lifetime_attr(m: &Message) -> Result<Option<Duration>, u16> {
    match m.get(ATTR_LIFETIME) {
        Ok(v) if v.len() == 4 => Ok(Some(Duration::from_secs(u64::from(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))))),
        Ok(_) => Err(400),
        Err(_) => Ok(None),
    }
}

fn add_lifetime(m: &mut Message, d: Duration) {
    let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    m.add(ATTR_LIFETIME, &secs.to_be_bytes());
}

fn add_xor(m: &mut Message, t: AttrType, addr: SocketAddr) {
    let x = XorMappedAddress { ip: addr.ip(), port: addr.port() };
    if let Err(e) = x.add_to_as(m, t) {
        tracing::debug!(error = %e, "failed to add address");
    }
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2).
pub(crate) fn decode_xor(v: &[u8], txid: &[u8; 12]) -> Option<SocketAddr> {
    if v.len() < 4 || v[0] != 0 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (1, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (2, 20) => {
            let mut o = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txid[i - 4] };
                o[i] = v[4 + i] ^ k;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The error code in an encoded error response (for metric labels).
fn reply_code(r: &[u8]) -> &'static str {
    let mut m = Message::new();
    m.raw = r.to_vec();
    if m.decode().is_err() || m.typ.class != CLASS_ERROR_RESPONSE {
        return "other";
    }
    match m.get(stun::attributes::ATTR_ERROR_CODE) {
        Ok(v) if v.len() >= 4 => code_label(u16::from(v[2]) * 100 + u16::from(v[3])),
        _ => "other",
    }
}

fn code_label(code: u16) -> &'static str {
    match code {
        400 => "400",
        401 => "401",
        403 => "403",
        420 => "420",
        437 => "437",
        438 => "438",
        440 => "440",
        441 => "441",
        442 => "442",
        443 => "443",
        486 => "486",
        508 => "508",
        _ => "other",
    }
}
