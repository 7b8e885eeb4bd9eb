//! What the live session listing costs a relay holding many allocations: N allocations (50,000
//! by default, `--allocations N`) created through the real engine (authenticated Allocates), then
//! timed: one shard's snapshot round into the node-wide [`SessionTable`] (what every shard does
//! each 500 ms: [`SnapshotRound::sweep`] steps of 1,024 slots until published; the whole round
//! and its longest step), and one listing read (every snapshot copied out, as `/v1/sessions` does before
//! filtering); and the same sweep with the listing off (`SessionTable::off`, `[relay] sessions =
//! false`). Run with `cargo run --release -p turnkey-relay --example sessions_publish_bench`.

#![allow(clippy::unwrap_used, clippy::disallowed_methods, reason = "a benchmark: it reads the clock and fails loudly")]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME};
use stun::integrity::MessageIntegrity;
use stun::message::{Message, MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE};
use stun::textattrs::TextAttribute;
use turnkey_auth::{RevocationSet, Secret, SecretRing};
use turnkey_relay::engine::{
    Engine, EngineConfig, PortRequest, RelayBinding, RelayPorts, Shared, Transmit, SWEEP_INTERVAL,
};
use turnkey_relay::policy::PeerPolicy;
use turnkey_relay::sessions::SessionTable;
use turnkey_relay::snapshot_round::SnapshotRound;
use turnkey_relay::{ClientAddr, FiveTuple, RelayHandle, Transport};

const REALM: &str = "bench.example";

/// Relay "sockets" that are only numbers.
struct Ports(u32);

impl RelayPorts for Ports {
    fn bind(&mut self, _now: Instant, _ipv6: bool, _request: PortRequest) -> Option<RelayBinding> {
        self.0 += 1;
        let advertised = SocketAddr::from(([192, 0, 2, 1], (self.0 % 60_000) as u16 + 1024));
        Some(RelayBinding { handle: RelayHandle(self.0), advertised, reservation: None })
    }
    fn release(&mut self, _handle: RelayHandle) {}
}

fn allocate(user: &str, pass: &str, nonce: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_type(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST));
    m.new_transaction_id().unwrap();
    m.write_header();
    m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    TextAttribute::new(ATTR_USERNAME, user.to_owned()).add_to(&mut m).unwrap();
    TextAttribute::new(ATTR_REALM, REALM.to_owned()).add_to(&mut m).unwrap();
    TextAttribute::new(ATTR_NONCE, nonce.to_owned()).add_to(&mut m).unwrap();
    MessageIntegrity::new_long_term_integrity(user.to_owned(), REALM.to_owned(), pass.to_owned())
        .add_to(&mut m)
        .unwrap();
    m.raw
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n: u32 = 50_000;
    while let Some(a) = args.next() {
        if a == "--allocations" {
            n = args.next().and_then(|s| s.parse().ok()).expect("--allocations N");
        }
    }
    let ring = SecretRing::new(vec![Secret::new("sessions-bench-secret")]).unwrap();
    let mut cfg = EngineConfig::new(REALM, ring.clone(), PeerPolicy::new(vec![], vec![], vec![]));
    cfg.max_allocations = n + 1;
    cfg.max_allocations_per_user = n + 1;
    cfg.unauth_replies_per_sec = 0;
    let nonce_key = cfg.nonce_key.clone();
    let table = Arc::new(SessionTable::default());
    let shared = Arc::new(Shared::new(RevocationSet::new()).with_id_prefix(7));
    let now = turnkey_relay::clock::now();
    let mut engine = Engine::new(Arc::new(cfg), shared, now.mono);
    let mut ports = Ports(0);
    let keys = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"];
    let started = Instant::now();
    for i in 0..n {
        let client = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40_000));
        let tuple = FiveTuple {
            transport: Transport::Udp,
            client: ClientAddr(client),
            server: "192.0.2.1:3478".parse().unwrap(),
        };
        let user = format!("{}:user{}", keys[i as usize % 2], i % 5_000);
        let c = ring.mint(&user, now.unix(), 3600).unwrap();
        let req = allocate(&c.username, &c.password, &nonce_key.issue(now.unix(), client));
        match engine.handle_client(now, tuple, &req, &mut ports) {
            Some(Transmit::Client { .. }) => {}
            other => panic!("allocate {i}: {other:?}"),
        }
    }
    assert_eq!(engine.allocation_count(), n as usize);
    eprintln!("{n} allocations created in {:?}", started.elapsed());
    let slot = table.register();
    let off = SessionTable::off();
    let off_slot = off.register();
    let base = turnkey_relay::clock::now();
    let mut round = SnapshotRound::new(base.mono);
    let mut off_round = SnapshotRound::new(base.mono);
    let (mut publish, mut longest_step, mut publish_off, mut list) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..11 {
        // One round as the shard runs it: steps of 1,024 slots until the snapshot is published,
        // one sweep interval after the previous round (the engine's clock is told, not read).
        let now = base.advance(SWEEP_INTERVAL * i);
        let (t, mut longest) = (Instant::now(), Duration::ZERO);
        loop {
            let step = Instant::now();
            let more = round.sweep(now, &mut engine, &mut ports, (&table, slot), HashSet::new);
            longest = longest.max(step.elapsed());
            if !more {
                break;
            }
        }
        publish.push(t.elapsed());
        longest_step.push(longest);
        let t = Instant::now();
        let all = table.list();
        list.push(t.elapsed());
        assert_eq!(all.len(), n as usize);
        let t = Instant::now();
        off_round.sweep(now, &mut engine, &mut ports, (&off, off_slot), HashSet::new);
        publish_off.push(t.elapsed());
        assert!(off.is_empty());
    }
    println!(
        "{{\"allocations\": {n}, \"sweep_publish_ms\": {:.2}, \"longest_step_ms\": {:.3}, \
         \"listing_copy_ms\": {:.2}, \"sweep_publish_off_ms\": {:.4}}}",
        median(publish).as_secs_f64() * 1000.0,
        median(longest_step).as_secs_f64() * 1000.0,
        median(list).as_secs_f64() * 1000.0,
        median(publish_off).as_secs_f64() * 1000.0
    );
}
