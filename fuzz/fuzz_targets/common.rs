//! A TURN engine with time and ports driven by the fuzz target, and the client side of the
//! long-term credential dance, so fuzzed requests reach the authenticated handlers too.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{Message, Setter as _};
use stun::textattrs::TextAttribute;
use turnkey_auth::{RevocationSet, Secret, SecretRing, UnixTime};
use turnkey_relay::engine::{
    AllocationId, Engine, EngineConfig, Event, PortRequest, RelayBinding, RelayPorts, Shared, Transmit,
};
use turnkey_relay::policy::PeerPolicy;
use turnkey_relay::{ClientAddr, FiveTuple, Now, RelayHandle, Transport};

pub const REALM: &str = "fuzz.turnkey";
const T0: u64 = 1_800_000_000;

#[derive(Default)]
pub struct Ports {
    next: u32,
    live: HashMap<u32, SocketAddr>,
}

impl RelayPorts for Ports {
    fn bind(&mut self, _now: Instant, ipv6: bool, _request: PortRequest) -> Option<RelayBinding> {
        if self.live.len() >= 64 {
            return None;
        }
        self.next += 1;
        let ip = if ipv6 { "2001:db8::10" } else { "198.51.100.10" };
        let addr = SocketAddr::new(ip.parse().ok()?, 50_000 + (self.next % 10_000) as u16);
        self.live.insert(self.next, addr);
        Some(RelayBinding { handle: RelayHandle(self.next), advertised: addr, reservation: None })
    }

    fn release(&mut self, h: RelayHandle) {
        self.live.remove(&h.0);
    }
}

pub struct Harness {
    pub engine: Engine,
    pub ports: Ports,
    pub now: Now,
    ring: SecretRing,
    nonce: HashMap<FiveTuple, String>,
    /// Allocations the events said are live (the event contract is checked on every call).
    live: HashSet<AllocationId>,
}

impl Harness {
    pub fn new() -> Self {
        let ring = SecretRing::new(vec![Secret::new(b"fuzz-secret-not-real")]).expect("one secret");
        let mut cfg = EngineConfig::new(REALM, ring.clone(), PeerPolicy::new(vec![], vec![], vec![]));
        cfg.relay_v4 = true;
        cfg.relay_v6 = true;
        let mono = Instant::now();
        let engine = Engine::new(Arc::new(cfg), Arc::new(Shared::new(RevocationSet::new())), mono);
        let now = Now::new(mono, Duration::from_secs(T0));
        Self { engine, ports: Ports::default(), now, ring, nonce: HashMap::new(), live: HashSet::new() }
    }

    pub fn tuple(selector: u8) -> FiveTuple {
        let transport = match selector % 3 {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            _ => Transport::Tls,
        };
        let client = SocketAddr::from(([203, 0, 113, 1 + selector % 4], 40_000 + u16::from(selector % 7)));
        FiveTuple { transport, client: ClientAddr(client), server: "192.0.2.10:3478".parse().expect("addr") }
    }

    /// Hands `buf` to the engine as is; checks what comes back is well-formed enough to send.
    pub fn raw(&mut self, from: FiveTuple, buf: &[u8]) {
        let out = self.engine.handle_client(self.now, from, buf, &mut self.ports);
        if let Some(Transmit::Client { data, .. }) = &out {
            assert!(data.len() >= 4, "a reply shorter than any TURN message");
            if data[0] & 0xC0 == 0 {
                let mut m = Message::new();
                m.raw = data.to_vec();
                m.decode().expect("the engine answers well-formed STUN");
                if let Some(nonce) = m.get(ATTR_NONCE).ok().and_then(|n| String::from_utf8(n).ok()) {
                    self.nonce.insert(from, nonce);
                }
            }
        }
        self.check_events();
    }

    /// Every event names a live allocation; each is created once and ended once; the live count
    /// the engine reports is the events' count.
    fn check_events(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            let id = e.alloc().id;
            match e {
                Event::AllocationCreated { .. } => assert!(self.live.insert(id), "{id} created twice"),
                Event::AllocationEnded { .. } => assert!(self.live.remove(&id), "{id} ended but not live"),
                _ => assert!(self.live.contains(&id), "an event for {id}, which is not live: {e:?}"),
            }
        }
        assert_eq!(self.live.len(), self.engine.allocation_count());
    }

    /// If `buf` decodes as STUN, re-signs it with valid credentials (USERNAME, REALM, the nonce
    /// the engine last gave this 5-tuple, MESSAGE-INTEGRITY) so the authenticated handlers run on
    /// the fuzzed attributes; otherwise hands it over raw.
    pub fn signed(&mut self, from: FiveTuple, buf: &[u8]) {
        let mut m = Message::new();
        m.raw = buf.to_vec();
        if m.decode().is_err() {
            return self.raw(from, buf);
        }
        let nonce = self.nonce.get(&from).cloned().unwrap_or_default();
        let Ok(c) = self.ring.mint("fuzz", UnixTime(self.now.wall.as_secs()), 3600) else { return };
        // Keep only the attributes before any integrity, then sign.
        let mut out = Message::new();
        out.set_type(m.typ);
        out.transaction_id = m.transaction_id;
        out.write_header();
        for a in m.attributes.0.iter().filter(|a| a.typ.value() < 0x0008 || a.typ.value() > 0x0008).take(16) {
            if a.typ == ATTR_USERNAME || a.typ == ATTR_REALM || a.typ == ATTR_NONCE || a.typ.value() == 0x8028 {
                continue;
            }
            out.add(a.typ, &a.value);
        }
        let signed = sign(&mut out, &c.username, &c.password, nonce).map(|()| out.raw);
        if let Ok(bytes) = signed {
            self.raw(from, &bytes);
        }
    }

    /// Moves time forward and lets the engine expire what it must.
    pub fn advance(&mut self, secs: u8) {
        let d = Duration::from_secs(u64::from(secs));
        self.now = Now::new(self.now.mono + d, self.now.wall + d);
        self.engine.handle_timeout(self.now, &mut self.ports);
        self.check_events();
    }
}

fn sign(m: &mut Message, user: &str, pass: &str, nonce: String) -> Result<(), stun::Error> {
    TextAttribute::new(ATTR_USERNAME, user.to_owned()).add_to(m)?;
    TextAttribute::new(ATTR_REALM, REALM.into()).add_to(m)?;
    TextAttribute::new(ATTR_NONCE, nonce).add_to(m)?;
    MessageIntegrity::new_long_term_integrity(user.to_owned(), REALM.into(), pass.to_owned()).add_to(m)
}

/// Splits fuzz input into records: `[op][len: u16 big-endian][len bytes]...`.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&op, rest) = data.split_first()?;
        let len = rest.get(..2)?;
        let rest = &rest[2..];
        let n = usize::from(u16::from_be_bytes([len[0], len[1]])).min(rest.len());
        let (rec, rest) = rest.split_at(n);
        data = rest;
        Some((op, rec))
    })
}
