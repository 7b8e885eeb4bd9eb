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

#[test]
fn binding_reflects_the_client_address() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let r = h.send(t, &request(METHOD_BINDING, &[], None)).unwrap();
    assert_eq!(r.typ, BINDING_SUCCESS);
    assert_eq!(xor(&r, ATTR_XORMAPPED_ADDRESS), t.client.0);
    assert!(r.contains(ATTR_FINGERPRINT));
}

#[test]
fn unauthenticated_allocate_gets_401_with_realm_and_nonce_and_no_software() {
    let mut h = Harness::new();
    let r = h.send(tuple("203.0.113.5:5555"), &request(METHOD_ALLOCATE, &[Attr::Transport(17)], None)).unwrap();
    assert_eq!(code(&r), Some(401));
    assert_eq!(text(&r, ATTR_REALM), REALM);
    assert!(!text(&r, ATTR_NONCE).is_empty());
    assert!(!r.contains(ATTR_SOFTWARE));
    assert!(!r.contains(ATTR_MESSAGE_INTEGRITY));
}

#[test]
fn allocate_succeeds_with_integrity_and_fingerprint() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (r, a) = h.allocate(t, "alice");
    assert_eq!(r.typ, MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE));
    assert_eq!(xor(&r, ATTR_XOR_RELAYED_ADDRESS).ip().to_string(), "8.8.4.4");
    assert_eq!(xor(&r, ATTR_XORMAPPED_ADDRESS), t.client.0);
    assert_eq!(lifetime(&r), 600);
    assert!(verify_mi(&r, &a));
    assert!(r.contains(ATTR_FINGERPRINT));
    assert_eq!(h.shared.allocations(), 1);
    assert_eq!(h.attempts("success"), 1);
}

#[test]
fn bad_credentials_get_401_never_400() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let nonce = h.nonce(t);
    let (u, p) = h.creds("alice", 3600);
    let other = SecretRing::new(vec![Secret::new("some-other-secret")]).unwrap();
    let foreign = other.mint("alice", h.now.unix(), 3600).unwrap();
    let expired = h.ring.mint("alice", UnixTime(T0_UNIX - 7200), 3600).unwrap();
    let cases = [
        Auth { user: u.clone(), pass: "wrong".into(), nonce: nonce.clone() },
        Auth { user: "alice".into(), pass: p.clone(), nonce: nonce.clone() },
        Auth { user: foreign.username, pass: foreign.password, nonce: nonce.clone() },
        Auth { user: expired.username, pass: expired.password, nonce: nonce.clone() },
    ];
    for a in &cases {
        let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(a))).unwrap();
        assert_eq!(code(&r), Some(401), "user {}", a.user);
        assert!(r.contains(ATTR_NONCE) && r.contains(ATTR_REALM));
    }
    assert_eq!(h.shared.allocations(), 0);
}

#[test]
fn stale_and_forged_nonces_get_438_with_a_fresh_nonce() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let nonce = h.nonce(t);
    let (u, p) = h.creds("alice", 7200);
    let forged = Auth { user: u.clone(), pass: p.clone(), nonce: "0000000000000000aaaaaaaaaaaaaaaaaaaaaaaa".into() };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&forged))).unwrap();
    assert_eq!(code(&r), Some(438));
    h.advance(601);
    let stale = Auth { user: u, pass: p, nonce: nonce.clone() };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&stale))).unwrap();
    assert_eq!(code(&r), Some(438));
    assert_ne!(text(&r, ATTR_NONCE), nonce);
    // A nonce issued to another client address is not accepted either.
    let other = tuple("203.0.113.6:5555");
    let r = h.send(other, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&Auth { nonce, ..stale }))).unwrap();
    assert_eq!(code(&r), Some(438));
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_others_get_437() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let req = request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a));
    let first = h.engine.handle_client(h.now, t, &req, &mut h.ports).unwrap();
    let second = h.engine.handle_client(h.now, t, &req, &mut h.ports).unwrap();
    assert_eq!(first, second);
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(437));
    assert_eq!(h.ports.live.len(), 1);
}

#[test]
fn requests_for_unknown_five_tuples_get_437() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    for (method, attrs) in [
        (METHOD_REFRESH, vec![Attr::Lifetime(600)]),
        (METHOD_CREATE_PERMISSION, vec![Attr::Peer(addr(PEER))]),
        (METHOD_CHANNEL_BIND, vec![Attr::Channel(0x4000), Attr::Peer(addr(PEER))]),
    ] {
        let r = h.send(t, &request(method, &attrs, Some(&a))).unwrap();
        assert_eq!(code(&r), Some(437));
    }
}

#[test]
fn refresh_caps_lifetime_and_zero_deletes() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(100_000)], Some(&a))).unwrap();
    assert_eq!(lifetime(&r), 3600);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(0)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(lifetime(&r), 0);
    assert_eq!(h.ports.released.len(), 1);
    assert_eq!(h.shared.allocations(), 0);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(600)], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(437));
}

#[test]
fn allocation_expires_when_its_lifetime_ends() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    h.allocate(t, "alice");
    h.advance(599);
    assert_eq!(h.shared.allocations(), 1);
    h.advance(2);
    assert_eq!(h.shared.allocations(), 0);
    assert_eq!(h.ports.released, vec![1]);
}

#[test]
fn credential_expiry_and_revocation_tear_down_allocations() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("shortlived", 60);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    h.advance(61);
    assert_eq!(h.shared.allocations(), 0, "expired credential ends the allocation");

    let t2 = tuple("203.0.113.6:5555");
    let (_, a2) = h.allocate(t2, "bob");
    assert_eq!(h.shared.allocations(), 1);
    h.shared.revocations.revoke(&a2.user, UnixTime(T0_UNIX + 10_000));
    // The next request on the allocation is refused at once, and the sweep ends it.
    let r = h.send(t2, &request(METHOD_REFRESH, &[Attr::Lifetime(600)], Some(&a2))).unwrap();
    assert_eq!(code(&r), Some(401));
    h.advance(1);
    assert_eq!(h.shared.allocations(), 0);
    let a3 = Auth { nonce: h.nonce(t2), ..a2 };
    let r = h.send(t2, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a3))).unwrap();
    assert_eq!(code(&r), Some(401));
    assert!(h.engine.stats().auth_failures(AuthFailure::Revoked) >= 2);
}

#[test]
fn a_mass_revocation_is_ended_in_bounded_sweeps() {
    let mut h = Harness::with(|c| c.max_allocations_per_user = 10_000);
    let n = MAX_ENDED_PER_SWEEP * 2 + 10;
    let (u, p) = h.creds("crowd", 3600);
    for i in 0..n {
        let t = tuple(&format!("203.0.{}.{}:5555", 1 + i / 250, 1 + i % 250));
        let a = Auth { user: u.clone(), pass: p.clone(), nonce: h.nonce(t) };
        let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a))).unwrap();
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{i}");
    }
    let (bob, _) = {
        let t = tuple("198.51.100.9:5555");
        h.allocate(t, "bob")
    };
    assert_eq!(bob.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(h.shared.allocations() as usize, n + 1);
    h.shared.revocations.revoke(&u, UnixTime(T0_UNIX + 10_000));
    h.advance(1);
    // One sweep ends at most MAX_ENDED_PER_SWEEP, and asks for the next at once...
    assert_eq!(h.shared.allocations() as usize, n + 1 - MAX_ENDED_PER_SWEEP);
    assert!(h.engine.poll_timeout() <= h.now.mono);
    // ...which go on (no new revocation needed) until every revoked one is gone.
    h.engine.handle_timeout(h.now, &mut h.ports);
    assert_eq!(h.shared.allocations() as usize, n + 1 - 2 * MAX_ENDED_PER_SWEEP);
    h.engine.handle_timeout(h.now, &mut h.ports);
    assert_eq!(h.shared.allocations(), 1, "only bob's allocation is left");
    assert!(h.engine.poll_timeout() > h.now.mono, "back to the sweep interval");
    assert_eq!(h.ports.released.len(), n);
}

#[test]
fn create_permission_is_atomic_and_denies_special_addresses() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    for denied in ["127.0.0.1:80", "10.0.0.1:80", "169.254.169.254:80", "0.0.0.0:80"] {
        let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(denied))], Some(&a))).unwrap();
        assert_eq!(code(&r), Some(403), "{denied}");
    }
    let r = h
        .send(
            t,
            &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER)), Attr::Peer(addr("127.0.0.1:9"))], Some(&a)),
        )
        .unwrap();
    assert_eq!(code(&r), Some(403));
    // Nothing was installed: the public peer's data is dropped.
    let relay = h.relay_handle(t);
    assert!(from_peer(&mut h, relay, PEER, b"hello").is_none());
    // Family mismatch: an IPv6 peer on an IPv4 relay.
    let r =
        h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("[2606:4700::1111]:80"))], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(443));
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(400));
}

#[test]
fn operator_allow_rule_opens_loopback() {
    let mut h = Harness::with(|c| {
        c.policy = PeerPolicy::new(vec!["127.0.0.1/32".parse::<PeerRule>().unwrap()], vec![], vec![]);
    });
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("127.0.0.1:9"))], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
}

/// CreatePermission ignores the peer port (RFC 8656 §9): `port` in the request, then whether
/// peers of that IP on `probe_ports` reach the client, and the live permission count.
fn permit_with_port(port: u16, probe_ports: &[u16]) -> (Vec<bool>, u64) {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let peer = SocketAddr::new(addr(PEER).ip(), port);
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(peer)], Some(&a))).unwrap();
    assert_eq!(r.typ, MessageType::new(METHOD_CREATE_PERMISSION, CLASS_SUCCESS_RESPONSE), "port {port}");
    let relay = h.relay_handle(t);
    let reached =
        probe_ports.iter().map(|p| from_peer(&mut h, relay, &format!("8.8.8.8:{p}"), b"x").is_some()).collect();
    h.advance(1);
    (reached, h.engine.stats().permissions())
}

#[test]
fn create_permission_ignores_the_peer_port() {
    let probes = [1, 9, 3478, 40000, 65535];
    let (zero, n_zero) = permit_with_port(0, &probes);
    let (any, n_any) = permit_with_port(51234, &probes);
    assert_eq!((zero.clone(), n_zero), (any, n_any), "port 0 and port 51234 install the same permission");
    assert_eq!((zero, n_zero), (vec![true; probes.len()], 1), "every port of the IP is reachable");
    // The RFC example: one request naming the same IP on two ports is one permission.
    let mut h = Harness::with(|c| c.max_permissions = 1);
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let two = [Attr::Peer(addr("8.8.8.8:0")), Attr::Peer(addr("8.8.8.8:7"))];
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &two, Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    // An IP reachable on no port is refused whatever the port, and counted as a denial.
    for denied in ["10.0.0.1:0", "127.0.0.1:0", "169.254.169.254:80"] {
        let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(denied))], Some(&a))).unwrap();
        assert_eq!(code(&r), Some(403), "{denied}");
    }
    assert_eq!(h.engine.stats().peer_denials(super::stats::DeniedPath::CreatePermission), 3);
}

#[test]
fn port_zero_refreshes_keep_a_permission_past_300_seconds() {
    // pion/turn refreshes its permissions every 120 s with CreatePermission to port 0.
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(3600)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let relay = h.relay_handle(t);
    let mut a = a;
    for _ in 0..2 {
        h.advance(120);
        a = h.renew(t, a);
        let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("8.8.8.8:0"))], Some(&a))).unwrap();
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    }
    h.advance(70); // 310 s after the first permission, 70 s after the last refresh.
    assert!(from_peer(&mut h, relay, PEER, b"x").is_some());
    assert!(from_peer(&mut h, relay, "8.8.8.8:5", b"x").is_some());
}

#[test]
fn port_rules_still_hold_where_a_port_is_named() {
    // Loopback reopened for the test; the relay's own listener is 127.0.0.1:3478.
    let mut h = Harness::with(|c| {
        c.policy = PeerPolicy::new(
            vec!["127.0.0.1/32".parse::<PeerRule>().unwrap()],
            vec![],
            vec![crate::policy::ServiceAddr { ip: Some(addr("127.0.0.1:3478").ip()), port: 3478 }],
        );
    });
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("127.0.0.1:0"))], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    // ChannelBind and Send name a port: port 0 and the service port stay refused.
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "127.0.0.1:3478"), Some(403));
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "127.0.0.1:0"), Some(403));
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "127.0.0.1:9"), None);
    let send = |to: &str| {
        build(
            MessageType::new(METHOD_SEND, CLASS_INDICATION),
            &[Attr::Peer(addr(to)), Attr::Data(b"hi".to_vec())],
            None,
            &[],
        )
    };
    assert!(h.engine.handle_client(h.now, t, &send("127.0.0.1:3478"), &mut h.ports).is_none());
    assert!(h.engine.handle_client(h.now, t, &send("127.0.0.1:0"), &mut h.ports).is_none());
    assert!(h.engine.handle_client(h.now, t, &send("127.0.0.1:10"), &mut h.ports).is_some());
    assert_eq!(h.engine.stats().peer_denials(super::stats::DeniedPath::ChannelBind), 2);
    assert_eq!(h.engine.stats().peer_denials(super::stats::DeniedPath::Send), 2);
}

#[test]
fn channel_bind_range_and_rebinding_rules() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(3600)], Some(&a))).unwrap();
    assert_eq!(lifetime(&r), 3600);
    assert_eq!(bind_channel(&mut h, t, &a, 0x3FFF, PEER), Some(400));
    assert_eq!(bind_channel(&mut h, t, &a, 0x5000, PEER), Some(400));
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, PEER), None);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, PEER), None, "refresh");
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "8.8.8.8:40001"), Some(400), "number taken");
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), Some(400), "peer taken");
    assert_eq!(bind_channel(&mut h, t, &a, 0x4FFF, "1.1.1.1:3"), None);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4002, "127.0.0.1:3"), Some(403));
    // After expiry the number stays reserved for the cooldown.
    h.advance(601);
    let a = h.renew(t, a);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "8.8.8.8:40001"), Some(400));
    h.advance(300);
    let a = h.renew(t, a);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4000, "8.8.8.8:40001"), None);
}

#[test]
fn rfc5766_compat_setting_widens_channel_range() {
    let mut h = Harness::with(|c| c.rfc5766_channel_numbers = true);
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x7FFF, PEER), None);
    assert_eq!(bind_channel(&mut h, t, &a, 0x8000, PEER), Some(400));
}

#[test]
fn channel_data_flows_both_ways_without_copies() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let cd = channel_data(0x4001, b"ping");
    match h.engine.handle_client(h.now, t, &cd, &mut h.ports).unwrap() {
        Transmit::Peer { to, data, .. } => {
            assert_eq!(to, PeerAddr(addr(PEER)));
            assert!(matches!(data, Cow::Borrowed(_)));
            assert_eq!(&*data, b"ping");
        }
        other => panic!("{other:?}"),
    }
    let relay = h.relay_handle(t);
    let back = from_peer(&mut h, relay, PEER, b"pong!").unwrap();
    assert_eq!(back, channel_data(0x4001, b"pong!"));
    // Unknown channel and lying length are dropped.
    assert!(h.engine.handle_client(h.now, t, &channel_data(0x4002, b"x"), &mut h.ports).is_none());
    let mut liar = channel_data(0x4001, b"abc");
    liar[3] = 200;
    assert!(h.engine.handle_client(h.now, t, &liar, &mut h.ports).is_none());
    assert_eq!(h.engine.stats().drops(DropReason::Malformed), 1);
    h.advance(1);
    let c2p = h.engine.stats().relayed_total(Direction::ClientToPeer, Transport::Udp).0;
    let p2c = h.engine.stats().relayed_total(Direction::PeerToClient, Transport::Udp).0;
    assert_eq!((c2p, p2c), (4, 5));
}

#[test]
fn stream_channel_data_is_padded() {
    let mut h = Harness::new();
    let mut t = tuple("203.0.113.5:5555");
    t.transport = Transport::Tcp;
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let relay = h.relay_handle(t);
    let back = from_peer(&mut h, relay, PEER, b"pong!").unwrap();
    assert_eq!(back.len(), 12);
    assert_eq!(&back[..9], &channel_data(0x4001, b"pong!")[..]);
}

#[test]
fn send_and_data_indications() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let _a = with_permission(&mut h, t);
    let send = build(
        MessageType::new(METHOD_SEND, CLASS_INDICATION),
        &[Attr::Peer(addr(PEER)), Attr::Data(b"hi".to_vec())],
        None,
        &[],
    );
    match h.engine.handle_client(h.now, t, &send, &mut h.ports).unwrap() {
        Transmit::Peer { to, data, .. } => assert_eq!((to.0, &*data), (addr(PEER), &b"hi"[..])),
        other => panic!("{other:?}"),
    }
    // No permission for this peer: dropped silently.
    let send = build(
        MessageType::new(METHOD_SEND, CLASS_INDICATION),
        &[Attr::Peer(addr("1.1.1.1:1")), Attr::Data(b"hi".to_vec())],
        None,
        &[],
    );
    assert!(h.engine.handle_client(h.now, t, &send, &mut h.ports).is_none());
    let relay = h.relay_handle(t);
    let ind = decode(&from_peer(&mut h, relay, PEER, b"data!").unwrap());
    assert_eq!(ind.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(xor(&ind, ATTR_XOR_PEER_ADDRESS), addr(PEER));
    assert_eq!(ind.get(ATTR_DATA).unwrap(), b"data!");
    // Peers without permission are dropped.
    assert!(from_peer(&mut h, relay, "1.1.1.1:5", b"x").is_none());
}

#[test]
fn permissions_expire_after_300_seconds() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(3600)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let relay = h.relay_handle(t);
    h.advance(299);
    assert!(from_peer(&mut h, relay, PEER, b"x").is_some());
    h.advance(2);
    assert!(from_peer(&mut h, relay, PEER, b"x").is_none());
}

#[test]
fn quotas_give_486_and_508() {
    let mut h = Harness::with(|c| {
        c.max_allocations_per_user = 2;
        c.max_allocations = 3;
    });
    for i in 0..2 {
        let (r, _) = h.allocate(tuple(&format!("203.0.113.5:{}", 1000 + i)), "alice");
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    }
    // A fresh username for the same userid does not reset the quota.
    let (r, _) = h.allocate(tuple("203.0.113.5:1002"), "alice");
    assert_eq!(code(&r), Some(486));
    let (r, _) = h.allocate(tuple("203.0.113.5:1003"), "bob");
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let (r, _) = h.allocate(tuple("203.0.113.5:1004"), "carol");
    assert_eq!(code(&r), Some(508));
    assert_eq!(h.attempts("486"), 1);

    let mut h = Harness::new();
    h.ports.exhausted = true;
    let (r, _) = h.allocate(tuple("203.0.113.5:1000"), "alice");
    assert_eq!(code(&r), Some(508));
    assert_eq!(h.shared.allocations(), 0, "a failed bind releases the quota");
}

#[test]
fn allocate_attribute_errors() {
    let mut h = Harness::with(|c| c.relay_v6 = false);
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let cases: Vec<(Vec<Attr>, u16)> = vec![
        (vec![], 400),
        (vec![Attr::Transport(6)], 442),
        (vec![Attr::Transport(17), Attr::Family(2)], 440),
        (vec![Attr::Transport(17), Attr::Family(3)], 440),
        (vec![Attr::Transport(17), Attr::Raw(0x0022, vec![0; 8])], 508),
        (vec![Attr::Transport(17), Attr::Raw(0x0022, vec![0; 4])], 400),
        (vec![Attr::Transport(17), Attr::Raw(0x0018, vec![0x80, 0, 0, 0])], 400),
        (vec![Attr::Transport(17), Attr::Raw(0x0022, vec![0; 8]), Attr::Family(1)], 400),
        (vec![Attr::Transport(17), Attr::Raw(0x0031, vec![1, 2, 3, 4])], 420),
    ];
    for (attrs, want) in cases {
        let r = h.send(t, &request(METHOD_ALLOCATE, &attrs, Some(&a))).unwrap();
        assert_eq!(code(&r), Some(want));
        if want == 420 {
            assert_eq!(r.get(ATTR_UNKNOWN_ATTRIBUTES).unwrap(), vec![0x00, 0x31]);
        }
    }
    // Comprehension-optional unknown attributes are ignored.
    let r =
        h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17), Attr::Raw(0x8123, vec![0; 4])], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
}

#[test]
fn allocate_errors_carry_their_reason_and_count_under_their_code() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(6)], Some(&a))).unwrap();
    let mut e = ErrorCodeAttribute::default();
    e.get_from(&r).unwrap();
    assert_eq!((e.code.0, e.reason.as_slice()), (442, &b"Unsupported Transport Protocol"[..]));
    assert!(verify_mi(&r, &a), "an authenticated request's error is signed");
    assert_eq!(h.attempts("442"), 1);
    // The challenge before it counted as a 401.
    assert_eq!(h.attempts("401"), 1);
}

#[test]
fn truncated_or_odd_peer_addresses_are_bad_requests() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    // stun's decoder alone would zero-fill these: 7 bytes of an IPv4 address, 19 of an IPv6 one,
    // an IPv4 address with trailing bytes, and an unknown family.
    let mut v6 = vec![0, 2, 0x11, 0x22];
    v6.extend([9; 15]);
    let bad = [
        vec![0, 1, 0x11, 0x22, 1, 2, 3],
        v6,
        vec![0, 1, 0x11, 0x22, 1, 2, 3, 4, 0, 0, 0, 0],
        vec![0, 3, 0, 0, 1, 2, 3, 4],
    ];
    for value in bad {
        for (method, mut attrs) in
            [(METHOD_CREATE_PERMISSION, vec![]), (METHOD_CHANNEL_BIND, vec![Attr::Channel(0x4000)])]
        {
            attrs.push(Attr::Raw(ATTR_XOR_PEER_ADDRESS.0, value.clone()));
            let r = h.send(t, &request(method, &attrs, Some(&a))).unwrap();
            assert_eq!(code(&r), Some(400), "{method:?} {value:?}");
        }
    }
    // Several peers in one CreatePermission are all read (and all installed).
    let peers = [Attr::Peer(addr("8.8.4.4:1")), Attr::Peer(addr("9.9.9.9:2"))];
    let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &peers, Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    let relay = h.relay_handle(t);
    for peer in ["8.8.4.4:7", "9.9.9.9:7"] {
        assert!(from_peer(&mut h, relay, peer, b"hi").is_some(), "{peer} is permitted");
    }
}

#[test]
fn even_port_reservation_is_redeemed_once() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let r =
        h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17), Attr::Raw(0x0018, vec![0x80])], Some(&a))).unwrap();
    let port = xor(&r, ATTR_XOR_RELAYED_ADDRESS).port();
    assert_eq!(port % 2, 0);
    let token = r.get(ATTR_RESERVATION_TOKEN).unwrap();
    let t2 = tuple("203.0.113.5:5556");
    let a2 = h.renew(t2, a.clone());
    let redeem = request(METHOD_ALLOCATE, &[Attr::Transport(17), Attr::Raw(0x0022, token.clone())], Some(&a2));
    let r2 = h.send(t2, &redeem).unwrap();
    assert_eq!(xor(&r2, ATTR_XOR_RELAYED_ADDRESS).port(), port + 1);
    let t3 = tuple("203.0.113.5:5557");
    let a3 = h.renew(t3, a);
    let r3 =
        h.send(t3, &request(METHOD_ALLOCATE, &[Attr::Transport(17), Attr::Raw(0x0022, token)], Some(&a3))).unwrap();
    assert_eq!(code(&r3), Some(508), "a token is used once");
}

#[test]
fn ipv6_allocations() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17), Attr::Family(2)], Some(&a))).unwrap();
    assert!(xor(&r, ATTR_XOR_RELAYED_ADDRESS).is_ipv6());
    let r =
        h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("[2606:4700::1111]:80"))], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let r =
        h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr("[::ffff:127.0.0.1]:80"))], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(403));
}

#[test]
fn wrong_credentials_on_an_allocation_get_441() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (_, a) = h.allocate(t, "alice");
    let (u, p) = h.creds("mallory", 3600);
    let m = Auth { user: u, pass: p, nonce: a.nonce.clone() };
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(600)], Some(&m))).unwrap();
    assert_eq!(code(&r), Some(441));
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("alice", 3600);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    let req = build(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST), &[], Some(&a), &[Attr::Transport(17)]);
    let r = h.send(t, &req).unwrap();
    assert_eq!(code(&r), Some(400), "REQUESTED-TRANSPORT after MI must not count");
}

#[test]
fn bad_fingerprint_responses_and_garbage_are_dropped() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let mut m = Message::new();
    m.set_type(BINDING_REQUEST);
    m.new_transaction_id().unwrap();
    m.write_header();
    stun::fingerprint::FINGERPRINT.add_to(&mut m).unwrap();
    let mut bad = m.raw.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(h.send(t, &m.raw).is_some());
    assert!(h.send(t, &bad).is_none());
    assert!(h.send(t, &build(BINDING_SUCCESS, &[], None, &[])).is_none(), "responses are never answered");
    let mut trailing = request(METHOD_BINDING, &[], None);
    trailing.push(0);
    assert!(h.send(t, &trailing).is_none());
    let mut not4 = request(METHOD_BINDING, &[], None);
    not4[3] = 2;
    not4.truncate(22);
    assert!(h.send(t, &not4).is_none());
    assert!(h.send(t, &[0xFF; 40]).is_none());
    assert!(h.send(t, &[]).is_none());
}

#[test]
fn draining_refuses_new_allocations() {
    let mut h = Harness::new();
    h.shared.start_draining();
    let (r, _) = h.allocate(tuple("203.0.113.5:1000"), "alice");
    assert_eq!(code(&r), Some(508));
}

/// Records what the engine reports to the fleet.
#[derive(Debug, Default)]
struct Reports(std::sync::Mutex<Vec<String>>);

impl crate::fleet::AllocationObserver for Reports {
    fn started(&self, userid: &str) {
        self.0.lock().unwrap().push(format!("+{userid}"));
    }
    fn ended(&self, userid: &str) {
        self.0.lock().unwrap().push(format!("-{userid}"));
    }
}

fn fleet_harness(f: impl FnOnce(&mut EngineConfig)) -> (Harness, Arc<crate::fleet::FleetView>, Arc<Reports>) {
    let reports = Arc::new(Reports::default());
    let view = Arc::new(crate::fleet::FleetView::new(reports.clone()));
    let h = Harness::with_shared(f, Shared::new(RevocationSet::new()).with_fleet(view.clone()));
    (h, view, reports)
}

#[test]
fn fleet_marks_refuse_users_at_their_limit_elsewhere_and_allocations_are_reported() {
    let (mut h, view, reports) = fleet_harness(|_| {});
    view.set_full(Arc::new(["alice".to_owned()].into_iter().collect()));
    let (r, _) = h.allocate(tuple("203.0.113.5:1000"), "alice");
    assert_eq!(code(&r), Some(486));
    let t = tuple("203.0.113.5:1001");
    let (r, a) = h.allocate(t, "bob");
    assert_eq!(code(&r), None);
    let a = h.renew(t, a);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(0)], Some(&a))).unwrap();
    assert_eq!(code(&r), None);
    assert_eq!(*reports.0.lock().unwrap(), ["+bob", "-bob"]);
    view.set_full(Arc::default());
    let (r, _) = h.allocate(tuple("203.0.113.5:1002"), "alice");
    assert_eq!(code(&r), None, "unmarked: allowed again");
}

#[test]
fn a_draining_or_full_relay_answers_300_with_the_alternate_of_the_transport() {
    let (mut h, view, _) = fleet_harness(|c| c.max_allocations = 1);
    let alt = addr("198.51.100.7:3478");
    view.set_alternate(Transport::Udp, Some(alt));
    view.set_alternate(Transport::Tcp, Some(addr("198.51.100.8:3478")));
    let (r, _) = h.allocate(tuple("203.0.113.5:1000"), "alice");
    assert_eq!(code(&r), None);
    // Full: redirected, with integrity (the request was authenticated).
    let (r, a) = h.allocate(tuple("203.0.113.5:1001"), "bob");
    assert_eq!(code(&r), Some(300));
    let mut got = stun::addr::AlternateServer::default();
    got.get_from_as(&r, ATTR_ALTERNATE_SERVER).unwrap();
    assert_eq!(SocketAddr::new(got.ip, got.port), alt);
    assert!(verify_mi(&r, &a));
    // Draining, and no alternate known for this transport: 508 as before.
    h.shared.start_draining();
    view.set_alternate(Transport::Udp, None);
    let (r, _) = h.allocate(tuple("203.0.113.5:1002"), "carol");
    assert_eq!(code(&r), Some(508));
}

#[test]
fn bandwidth_cap_drops_excess() {
    let mut h = Harness::with(|c| c.bandwidth_limit = 1000);
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let cd = channel_data(0x4001, &[0u8; 400]);
    let sent = (0..10).filter(|_| h.engine.handle_client(h.now, t, &cd, &mut h.ports).is_some()).count();
    assert_eq!(sent, 2);
    assert_eq!(h.engine.stats().drops(DropReason::RateCap), 8);
}

#[test]
fn unauthenticated_replies_are_rate_limited_per_ip() {
    let mut h = Harness::with(|c| c.unauth_replies_per_sec = 5);
    let req = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    let answered = (0..100).filter(|i| h.send(tuple(&format!("203.0.113.5:{}", 1000 + i)), &req).is_some()).count();
    assert_eq!(answered, 10);
    assert!(h.send(tuple("203.0.113.77:1000"), &req).is_some(), "other IPs unaffected");
}

/// Issue 13, item 5: a flood of unauthenticated Allocates from a few ports of one IP (an
/// attacker behind the same NAT, or spoofing it) at thousands per second leaves first contact
/// to every other client behind that IP, which then allocates; the flood gets a few replies.
#[test]
fn a_flood_from_one_ip_never_starves_first_contact_from_the_same_ip() {
    let mut h = Harness::with(|c| c.unauth_replies_per_sec = 50);
    let bare = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    let flooders: Vec<FiveTuple> = (0..4).map(|p| tuple(&format!("198.51.100.9:{}", 40_000 + p))).collect();
    let (mut flood_in, mut flood_out, mut answered) = (0usize, 0usize, 0u32);
    for step in 0..100u32 {
        // 100 ms per step: 500 requests per flooding port per step, 20,000 per second.
        for f in &flooders {
            for _ in 0..500 {
                flood_in += bare.len();
                if let Some(Transmit::Client { data, .. }) = h.engine.handle_client(h.now, *f, &bare, &mut h.ports) {
                    flood_out += data.len();
                    answered += 1;
                }
            }
        }
        if step % 10 == 5 {
            // A new client behind the same address: 401, then a successful Allocate.
            let t = tuple(&format!("198.51.100.9:{}", 2000 + step));
            let (r, _) = h.allocate(t, "alice");
            assert_eq!(r.typ, MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE), "step {step}: {r}");
        }
        h.now = h.now.advance(Duration::from_millis(100));
    }
    // 4 ports x (burst 4 + 10 s x 1/s) replies at most, out of 200,000 requests.
    assert!(answered <= 4 * (4 + 10), "{answered}");
    let ratio = flood_out as f64 / flood_in as f64;
    assert!(ratio < 0.002, "flood bytes out per byte in: {ratio}");
}

/// The same flood from random ports (a spoofed source): the IP's budget bounds what it gets.
#[test]
fn a_flood_from_random_ports_is_bounded_by_the_ip_budget() {
    let mut h = Harness::with(|c| c.unauth_replies_per_sec = 50);
    let bare = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    let (mut flood_in, mut flood_out, mut answered) = (0usize, 0usize, 0u32);
    for step in 0..100u32 {
        for i in 0..1000u32 {
            let t = tuple(&format!("198.51.100.9:{}", 1024 + (step * 1000 + i) % 64_000));
            flood_in += bare.len();
            if let Some(Transmit::Client { data, .. }) = h.engine.handle_client(h.now, t, &bare, &mut h.ports) {
                flood_out += data.len();
                answered += 1;
            }
        }
        h.now = h.now.advance(Duration::from_millis(100));
    }
    // A burst of 100, then 50 per second for 10 s.
    assert!(answered <= 100 + 50 * 10, "{answered}");
    let ratio = flood_out as f64 / flood_in as f64;
    assert!(ratio < 0.05, "flood bytes out per byte in: {ratio}");
}

/// A request carrying a nonce issued to its own 5-tuple is answered even when the IP's budget
/// is spent: a wrong password (401) and a stale nonce (438) still get their challenge.
#[test]
fn refusals_to_a_returning_5_tuple_are_never_limited() {
    let mut h = Harness::with(|c| c.unauth_replies_per_sec = 1);
    let t = tuple("198.51.100.9:3000");
    let nonce = h.nonce(t);
    let bare = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    for p in 0..100 {
        h.send(tuple(&format!("198.51.100.9:{}", 40_000 + p)), &bare);
    }
    assert!(h.send(tuple("198.51.100.9:3001"), &bare).is_none(), "the IP's budget is spent");
    let (user, pass) = h.creds("alice", 3600);
    let wrong = Auth { user: user.clone(), pass: "wrong".into(), nonce: nonce.clone() };
    for _ in 0..20 {
        let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&wrong))).unwrap();
        assert_eq!(code(&r), Some(401));
    }
    // Past the nonce lifetime (600 s), still within a lifetime of refreshes: 438, then allocate.
    h.now = h.now.advance(Duration::from_secs(700));
    for p in 0..100 {
        h.send(tuple(&format!("198.51.100.9:{}", 41_000 + p)), &bare);
    }
    let stale = Auth { user, pass, nonce };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&stale))).unwrap();
    assert_eq!(code(&r), Some(438));
    let fresh = Auth { nonce: text(&r, ATTR_NONCE), ..stale };
    let r = h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&fresh))).unwrap();
    assert_eq!(r.typ, MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE), "{r}");
    // A nonce of another 5-tuple, or a forged one, proves nothing: limited like a stranger.
    let other = tuple("198.51.100.9:3002");
    let forged = Auth { nonce: "0".repeat(40), ..fresh.clone() };
    let borrowed = Auth { nonce: fresh.nonce.clone(), ..fresh };
    for _ in 0..10 {
        h.send(other, &bare);
    }
    assert!(h.send(other, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&forged))).is_none());
    assert!(h.send(other, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&borrowed))).is_none());
}

/// TCP and TLS clients proved their address with a handshake and never retransmit: their first
/// requests are answered whatever the IP's UDP budget, so an allocation storm over TCP from one
/// address never stalls on a withheld 401.
#[test]
fn stream_first_contacts_are_never_reply_limited() {
    let mut h = Harness::with(|c| c.unauth_replies_per_sec = 1);
    let bare = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    for p in 0..100 {
        h.send(tuple(&format!("198.51.100.7:{}", 40_000 + p)), &bare);
    }
    assert!(h.send(tuple("198.51.100.7:3001"), &bare).is_none(), "the IP's UDP budget is spent");
    for p in 0..200 {
        let mut t = tuple(&format!("198.51.100.7:{}", 50_000 + p));
        t.transport = if p % 2 == 0 { Transport::Tcp } else { Transport::Tls };
        let r = h.send(t, &bare).unwrap_or_else(|| panic!("stream first contact {p} unanswered"));
        assert_eq!(code(&r), Some(401));
    }
}

#[test]
fn unauthenticated_flood_creates_no_state() {
    let mut h = Harness::new();
    let req = request(METHOD_ALLOCATE, &[Attr::Transport(17)], None);
    for i in 0..5000u32 {
        let t = tuple(&format!("203.0.{}.{}:{}", (i >> 8) & 255, i & 255, 1024 + (i % 60000)));
        h.send(t, &req);
    }
    assert_eq!(h.engine.allocs.len(), 0);
    assert!(h.engine.by_tuple.is_empty());
}

mod rfc5769 {
    use super::super::message::{integrity_matches, parse};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // RFC 5769 §2.1: sample request, short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    const REQUEST: &str = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
    // §2.2: IPv4 response.
    const RESPONSE_V4: &str = "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96";
    // §2.3: IPv6 response.
    const RESPONSE_V6: &str = "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed4180280004c8fb0b4c";
    // §2.4: request with long-term authentication.
    const LONG_TERM: &str = "000100602112a44278ad3433c6ad72c029da412e00060012e3839ee38388e383aae38383e382afe382b900000015001c662f2f3439396b39353464364f4c33346f4c394653547679363473410014000b6578616d706c652e6f72670000080014f67024656dd64a3e02b8e0712e85c9a28ca89666";

    #[test]
    fn sample_request_integrity_and_fingerprint() {
        let raw = hex(REQUEST);
        let p = parse(&raw).expect("valid vector");
        let mi = p.mi_offset.unwrap();
        assert!(integrity_matches(&raw, mi, b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!integrity_matches(&raw, mi, b"VOkJxbRl1RmTxUk/WvJxBT"));
        let mut bad = raw.clone();
        bad[30] ^= 1;
        assert!(parse(&bad).is_err(), "fingerprint catches corruption");
    }

    #[test]
    fn sample_responses_parse_and_verify() {
        for v in [RESPONSE_V4, RESPONSE_V6] {
            let raw = hex(v);
            let p = parse(&raw).expect("valid vector");
            assert!(integrity_matches(&raw, p.mi_offset.unwrap(), b"VOkJxbRl1RmTxUk/WvJxBt"));
        }
        // XOR-PEER-ADDRESS is encoded as XOR-MAPPED-ADDRESS is (RFC 8656 §18.3): the vectors'
        // addresses, retyped, exercise the engine's peer address reader.
        let peer = |v: &str| {
            let mut m = parse(&hex(v)).unwrap().msg;
            for a in &mut m.attributes.0 {
                if a.typ == stun::attributes::ATTR_XORMAPPED_ADDRESS {
                    a.typ = stun::attributes::ATTR_XOR_PEER_ADDRESS;
                }
            }
            super::super::handlers::peer_address(&m).unwrap()
        };
        assert_eq!(peer(RESPONSE_V4), "192.0.2.1:32853".parse().unwrap());
        assert_eq!(peer(RESPONSE_V6), "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap());
    }

    #[test]
    fn long_term_request_verifies_with_the_md5_key() {
        let raw = hex(LONG_TERM);
        let p = parse(&raw).expect("valid vector");
        let key =
            turnkey_auth::long_term_key("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", "example.org", "TheMatrIX");
        assert!(integrity_matches(&raw, p.mi_offset.unwrap(), &key));
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut h = Harness::new();
            let t = tuple("203.0.113.5:5555");
            let _ = h.engine.handle_client(h.now, t, &bytes, &mut h.ports);
            let mut buf = vec![0u8; PEER_HEADROOM + bytes.len() + PEER_TAILROOM];
            let _ = h.engine.handle_peer(h.now, RelayHandle(1), PeerAddr(addr(PEER)), &mut buf, bytes.len());
        }

        #[test]
        fn mutated_valid_messages_never_panic(idx in 0usize..200, val in any::<u8>(), cut in 0usize..200) {
            let mut h = Harness::new();
            let t = tuple("203.0.113.5:5555");
            let (_, a) = h.allocate(t, "alice");
            let mut req = request(METHOD_CHANNEL_BIND, &[Attr::Channel(0x4000), Attr::Peer(addr(PEER))], Some(&a));
            let i = idx % req.len();
            req[i] = val;
            let _ = h.engine.handle_client(h.now, t, &req, &mut h.ports);
            req.truncate(cut.min(req.len()));
            let _ = h.engine.handle_client(h.now, t, &req, &mut h.ports);
            let _ = h.engine.handle_client(h.now, t, &channel_data(0x4000, &req), &mut h.ports);
        }
    }
}

#[derive(Debug, Default)]
struct FakeUsage {
    recorded: std::sync::Mutex<HashMap<String, (u64, u64)>>,
    blocked: std::sync::atomic::AtomicBool,
    generation: std::sync::atomic::AtomicU64,
}

impl crate::usage::UsageSink for FakeUsage {
    fn record(&self, batch: &[(Arc<str>, crate::usage::UsageDelta)]) {
        let mut r = self.recorded.lock().unwrap();
        for (u, d) in batch {
            let e = r.entry(u.to_string()).or_default();
            e.0 += d.client_to_peer;
            e.1 += d.peer_to_client;
        }
    }
    fn blocked(&self, _userid: &str) -> bool {
        self.blocked.load(Ordering::SeqCst)
    }
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

#[test]
fn usage_is_reported_at_each_sweep_and_caps_stop_relaying() {
    let sink = Arc::new(FakeUsage::default());
    let mut h = Harness::new();
    h.shared = Arc::new(Shared::new(RevocationSet::new()).with_usage(sink.clone()));
    h.engine = Engine::new(h.engine.cfg.clone(), h.shared.clone(), h.now.mono);
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    assert!(h.engine.handle_client(h.now, t, &channel_data(0x4001, b"ping"), &mut h.ports).is_some());
    let relay = h.relay_handle(t);
    assert!(from_peer(&mut h, relay, PEER, b"pong!").is_some());
    assert!(sink.recorded.lock().unwrap().is_empty(), "reported at the sweep, not per packet");
    h.advance(1);
    assert_eq!(sink.recorded.lock().unwrap()["alice"], (4, 5));
    // While the allocation lives, every sweep reports what moved since the last one.
    assert!(h.engine.handle_client(h.now, t, &channel_data(0x4001, b"again"), &mut h.ports).is_some());
    h.advance(1);
    assert_eq!(sink.recorded.lock().unwrap()["alice"], (9, 5));
    // The cap is reached: relaying stops at the next sweep, and new allocations get 486.
    sink.blocked.store(true, Ordering::SeqCst);
    sink.generation.fetch_add(1, Ordering::SeqCst);
    h.advance(1);
    assert!(h.engine.handle_client(h.now, t, &channel_data(0x4001, b"ping"), &mut h.ports).is_none());
    assert!(from_peer(&mut h, relay, PEER, b"pong!").is_none());
    assert_eq!(h.engine.stats().drops(DropReason::UsageCap), 2);
    let (r, _) = h.allocate(tuple("203.0.113.6:5555"), "alice");
    assert_eq!(code(&r), Some(486));
    // Lifted (new period): relaying resumes; bytes of an allocation that ends are still reported.
    sink.blocked.store(false, Ordering::SeqCst);
    sink.generation.fetch_add(1, Ordering::SeqCst);
    h.advance(1);
    assert!(h.engine.handle_client(h.now, t, &channel_data(0x4001, b"12345678"), &mut h.ports).is_some());
    h.engine.close_all(&mut h.ports);
    assert_eq!(sink.recorded.lock().unwrap()["alice"], (17, 5));
}

#[test]
fn sessions_snapshot_counts_each_direction_and_an_ended_session_gets_437() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let a = with_permission(&mut h, t);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let other = tuple("203.0.113.6:6666");
    let (r, other_auth) = h.allocate(other, "bob");
    assert!(r.typ.class == CLASS_SUCCESS_RESPONSE, "{r}");
    for _ in 0..3 {
        assert!(h.engine.handle_client(h.now, t, &channel_data(0x4001, b"ping"), &mut h.ports).is_some());
    }
    let relay = h.relay_handle(t);
    assert!(from_peer(&mut h, relay, PEER, b"pong!").is_some());
    h.advance(10);
    let mut out = Vec::new();
    h.engine.snapshot_sessions(h.now, &mut out);
    assert_eq!(out.len(), 2);
    let s = out.iter().find(|s| s.tuple == t).unwrap().clone();
    assert!(s.username.ends_with(":alice") && &*s.userid == "alice", "{s:?}");
    assert_eq!((s.permissions, s.channels), (1, 1));
    assert_eq!((s.bytes_client_to_peer, s.packets_client_to_peer), (12, 3));
    assert_eq!((s.bytes_peer_to_client, s.packets_peer_to_client), (5, 1));
    assert_eq!(s.created, T0_UNIX);
    assert_eq!(s.expires, T0_UNIX + 600);
    assert_eq!(s.relayed, h.ports.live[&relay.0]);
    let b = out.iter().find(|s| s.tuple == other).unwrap().id;
    assert_ne!(s.id, b);

    // Ending one session: only it goes, its relay socket closes, its next request gets 437.
    assert!(h.engine.kill(s.id, &mut h.ports));
    assert!(!h.engine.kill(s.id, &mut h.ports));
    assert!(h.ports.released.contains(&relay.0));
    assert!(from_peer(&mut h, relay, PEER, b"late").is_none());
    let a = h.renew(t, a);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(600)], Some(&a))).unwrap();
    assert_eq!(code(&r), Some(437));
    let other_auth = h.renew(other, other_auth);
    let r = h.send(other, &request(METHOD_REFRESH, &[Attr::Lifetime(600)], Some(&other_auth))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    h.engine.snapshot_sessions(h.now, &mut out);
    assert_eq!(out.iter().map(|s| s.id).collect::<Vec<_>>(), vec![b]);
    assert_eq!(h.engine.stats().ended(EndReason::Killed), 1);
    assert_eq!(EndReason::ALL.iter().map(|r| h.engine.stats().ended(*r)).sum::<u64>(), 1);
}

#[test]
fn allocation_ids_are_unique_across_the_shards_of_one_shared_and_carry_its_prefix() {
    let mut h = Harness::with_shared(|_| {}, Shared::new(RevocationSet::new()).with_id_prefix(0xABCD_0001));
    let (r, _) = h.allocate(tuple("203.0.113.5:5555"), "alice");
    assert!(r.typ.class == CLASS_SUCCESS_RESPONSE, "{r}");
    let mut second = Engine::new(Arc::new(cfg_with(|_| {})), h.shared.clone(), h.now.mono);
    let mut out = Vec::new();
    h.engine.snapshot_sessions(h.now, &mut out);
    let first = out[0].id;
    assert_eq!(first.0 >> 32, 0xABCD_0001);
    assert_eq!(first.to_string().len(), 16);
    assert_eq!(AllocationId::parse(&first.to_string()), Some(first));
    assert_eq!(AllocationId::parse("ABCD000100000001"), None, "lowercase only");
    assert_eq!(AllocationId::parse("abcd00010000001"), None, "16 digits");
    // Another shard's engine on the same Shared never hands out the same id.
    std::mem::swap(&mut h.engine, &mut second);
    let (r, _) = h.allocate(tuple("203.0.113.6:5555"), "bob");
    assert!(r.typ.class == CLASS_SUCCESS_RESPONSE, "{r}");
    h.engine.snapshot_sessions(h.now, &mut out);
    assert_eq!(out.len(), 1);
    assert_ne!(out[0].id, first);
    assert_eq!(out[0].id.0 >> 32, 0xABCD_0001);
}

mod events;
mod sweep_steps;
