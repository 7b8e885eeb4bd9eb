//! Engine tests with time driven by hand: no sockets, no sleeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use turnkey_auth::{RevocationSet, Secret, SecretRing, UnixTime};

use super::*;
use crate::policy::{PeerPolicy, PeerRule};
use crate::types::{ClientAddr, Transport};

const REALM: &str = "turnkey.test";
const SECRET: &str = "engine-test-secret-not-real";
const T0_UNIX: u64 = 1_800_000_000;

#[derive(Default)]
struct FakePorts {
    next: u32,
    live: HashMap<u32, SocketAddr>,
    released: Vec<u32>,
    exhausted: bool,
    reserved: HashMap<u64, SocketAddr>,
}

impl RelayPorts for FakePorts {
    fn bind(&mut self, _now: Instant, ipv6: bool, request: PortRequest) -> Option<RelayBinding> {
        if self.exhausted {
            return None;
        }
        self.next += 1;
        let ip = if ipv6 { "2001:4860::10" } else { "8.8.4.4" };
        let even = SocketAddr::new(ip.parse().unwrap(), 50_000 + self.next as u16 * 2);
        let (addr, reservation) = match request {
            PortRequest::Reserved(t) => (self.reserved.remove(&t)?, None),
            PortRequest::EvenReserveNext => {
                let token = 0x1122_3344_5566_7700 + u64::from(self.next);
                self.reserved.insert(token, SocketAddr::new(even.ip(), even.port() + 1));
                (even, Some(token))
            }
            PortRequest::Even => (even, None),
            PortRequest::Any => (SocketAddr::new(even.ip(), even.port() + 1), None),
        };
        self.live.insert(self.next, addr);
        Some(RelayBinding { handle: RelayHandle(self.next), advertised: addr, reservation })
    }
    fn release(&mut self, h: RelayHandle) {
        self.live.remove(&h.0);
        self.released.push(h.0);
    }
}

struct Harness {
    engine: Engine,
    ports: FakePorts,
    now: Now,
    shared: Arc<Shared>,
    ring: SecretRing,
    /// The engine's events, in order, as the driver would poll them.
    events: Vec<Event>,
}

fn cfg_with(f: impl FnOnce(&mut EngineConfig)) -> EngineConfig {
    let ring = SecretRing::new(vec![Secret::new(SECRET)]).unwrap();
    let mut c = EngineConfig::new(REALM, ring, PeerPolicy::new(vec![], vec![], vec![]));
    c.unauth_replies_per_sec = 0;
    c.relay_v6 = true;
    f(&mut c);
    c
}

impl Harness {
    fn new() -> Self {
        Self::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut EngineConfig)) -> Self {
        Self::with_shared(f, Shared::new(RevocationSet::new()))
    }

    fn with_shared(f: impl FnOnce(&mut EngineConfig), shared: Shared) -> Self {
        let cfg = cfg_with(f);
        let ring = cfg.secrets.clone();
        let shared = Arc::new(shared);
        let now = Now::new(Instant::now(), Duration::from_secs(T0_UNIX));
        let engine = Engine::new(Arc::new(cfg), shared.clone(), now.mono);
        Self { engine, ports: FakePorts::default(), now, shared, ring, events: Vec::new() }
    }

    fn advance(&mut self, secs: u64) {
        self.advance_by(Duration::from_secs(secs));
    }

    fn advance_by(&mut self, d: Duration) {
        self.now = self.now.advance(d);
        self.engine.handle_timeout(self.now, &mut self.ports);
        self.settle();
    }

    /// What the driver does after each call: polls the events.
    fn settle(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            self.events.push(e);
        }
    }

    /// Allocate requests answered with `result` (`success` or an error code's digits).
    fn attempts(&self, result: &str) -> u64 {
        self.engine.stats().allocation_attempts().find(|(r, _)| *r == result).map_or(0, |(_, n)| n)
    }

    /// The events since the last call.
    fn take_events(&mut self) -> Vec<Event> {
        self.settle();
        std::mem::take(&mut self.events)
    }

    /// Sends `bytes` from `tuple`; returns the reply to the client, decoded.
    fn send(&mut self, tuple: FiveTuple, bytes: &[u8]) -> Option<Message> {
        let reply = match self.engine.handle_client(self.now, tuple, bytes, &mut self.ports)? {
            Transmit::Client { to, data } => {
                assert_eq!(to, tuple);
                decode(&data)
            }
            Transmit::Peer { .. } => panic!("unexpected peer transmit"),
        };
        self.settle();
        Some(reply)
    }

    fn creds(&self, user: &str, ttl: u64) -> (String, String) {
        let c = self.ring.mint(user, UnixTime(self.now.unix().0), ttl).unwrap();
        (c.username, c.password)
    }

    fn nonce(&mut self, tuple: FiveTuple) -> String {
        let r = self.send(tuple, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], None)).unwrap();
        assert_eq!(code(&r), Some(401));
        text(&r, ATTR_NONCE)
    }

    /// Performs the 401 dance and an authenticated Allocate.
    fn allocate(&mut self, tuple: FiveTuple, user: &str) -> (Message, Auth) {
        let (u, p) = self.creds(user, 3600);
        let auth = Auth { user: u, pass: p, nonce: self.nonce(tuple) };
        let r = self.send(tuple, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&auth))).unwrap();
        (r, auth)
    }

    /// The same credentials with a nonce that is fresh now.
    fn renew(&self, tuple: FiveTuple, a: Auth) -> Auth {
        Auth { nonce: self.engine.cfg.nonce_key.issue(self.now.unix(), tuple.client.0), ..a }
    }

    fn relay_handle(&self, tuple: FiveTuple) -> RelayHandle {
        let idx = self.engine.by_tuple[&tuple];
        self.engine.allocs[idx].as_ref().unwrap().relay()
    }
}

#[derive(Clone)]
struct Auth {
    user: String,
    pass: String,
    nonce: String,
}

enum Attr {
    Transport(u8),
    Lifetime(u32),
    Peer(SocketAddr),
    Channel(u16),
    Data(Vec<u8>),
    Family(u8),
    Raw(u16, Vec<u8>),
}

fn tuple(s: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: ClientAddr(s.parse().unwrap()),
        server: "192.0.2.10:3478".parse().unwrap(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn build(typ: MessageType, attrs: &[Attr], auth: Option<&Auth>, after_mi: &[Attr]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_type(typ);
    m.new_transaction_id().unwrap();
    m.write_header();
    let put = |m: &mut Message, a: &Attr| match a {
        Attr::Transport(p) => m.add(ATTR_REQUESTED_TRANSPORT, &[*p, 0, 0, 0]),
        Attr::Lifetime(l) => m.add(ATTR_LIFETIME, &l.to_be_bytes()),
        Attr::Peer(p) => XorMappedAddress { ip: p.ip(), port: p.port() }.add_to_as(m, ATTR_XOR_PEER_ADDRESS).unwrap(),
        Attr::Channel(c) => m.add(ATTR_CHANNEL_NUMBER, &[(c >> 8) as u8, *c as u8, 0, 0]),
        Attr::Data(d) => m.add(ATTR_DATA, d),
        Attr::Family(f) => m.add(ATTR_REQUESTED_ADDRESS_FAMILY, &[*f, 0, 0, 0]),
        Attr::Raw(t, v) => m.add(AttrType(*t), v),
    };
    for a in attrs {
        put(&mut m, a);
    }
    if let Some(auth) = auth {
        TextAttribute::new(ATTR_USERNAME, auth.user.clone()).add_to(&mut m).unwrap();
        TextAttribute::new(ATTR_REALM, REALM.into()).add_to(&mut m).unwrap();
        TextAttribute::new(ATTR_NONCE, auth.nonce.clone()).add_to(&mut m).unwrap();
        MessageIntegrity::new_long_term_integrity(auth.user.clone(), REALM.into(), auth.pass.clone())
            .add_to(&mut m)
            .unwrap();
    }
    for a in after_mi {
        put(&mut m, a);
    }
    m.raw
}

fn request(method: Method, attrs: &[Attr], auth: Option<&Auth>) -> Vec<u8> {
    build(MessageType::new(method, CLASS_REQUEST), attrs, auth, &[])
}

fn decode(b: &[u8]) -> Message {
    let mut m = Message::new();
    m.raw = b.to_vec();
    m.decode().unwrap();
    m
}

fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn text(m: &Message, t: AttrType) -> String {
    String::from_utf8(m.get(t).unwrap()).unwrap()
}

fn xor(m: &Message, t: AttrType) -> SocketAddr {
    let mut x = XorMappedAddress::default();
    x.get_from_as(m, t).unwrap();
    SocketAddr::new(x.ip, x.port)
}

fn lifetime(m: &Message) -> u32 {
    let v = m.get(ATTR_LIFETIME).unwrap();
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn verify_mi(m: &Message, a: &Auth) -> bool {
    let key = turnkey_auth::long_term_key(&a.user, REALM, &a.pass);
    let mut copy = m.clone();
    MessageIntegrity(key.to_vec()).check(&mut copy).is_ok()
}

const PEER: &str = "8.8.8.8:40000";

fn with_permission(h: &mut Harness, t: FiveTuple) -> Auth {
    let (r, a) = h.allocate(t, "alice");
    assert!(r.typ.class == CLASS_SUCCESS_RESPONSE, "{r}");
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER))], Some(&a))).unwrap();
    assert_eq!(r.typ, MessageType::new(METHOD_CREATE_PERMISSION, CLASS_SUCCESS_RESPONSE));
    a
}

/// Allocates `n` allocations for one credential (user `crowd`), from distinct client addresses;
/// returns the username.
fn crowd(h: &mut Harness, n: usize) -> String {
    let (u, p) = h.creds("crowd", 3600);
    for i in 0..n {
        let t = tuple(&format!("203.0.{}.{}:5555", 1 + i / 250, 1 + i % 250));
        let a = Auth { user: u.clone(), pass: p.clone(), nonce: h.nonce(t) };
        let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a))).unwrap();
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{i}");
    }
    u
}

fn bind_channel(h: &mut Harness, t: FiveTuple, a: &Auth, ch: u16, peer: &str) -> Option<u16> {
    let r = h.send(t, &request(METHOD_CHANNEL_BIND, &[Attr::Channel(ch), Attr::Peer(addr(peer))], Some(a))).unwrap();
    code(&r)
}

fn channel_data(ch: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![(ch >> 8) as u8, ch as u8, (payload.len() >> 8) as u8, payload.len() as u8];
    v.extend_from_slice(payload);
    v
}

fn from_peer(h: &mut Harness, relay: RelayHandle, peer: &str, payload: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
    match h.engine.handle_peer(h.now, relay, PeerAddr(addr(peer)), &mut buf, payload.len())? {
        Transmit::Client { data, .. } => Some(data.into_owned()),
        Transmit::Peer { .. } => panic!("peer to peer"),
    }
}

mod allocate;
mod auth;
mod events;
mod lifetimes;
mod limits;
mod peers;
mod sweep_steps;
