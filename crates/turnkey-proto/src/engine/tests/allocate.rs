//! Allocate requests and what bounds them: attribute errors, quotas (486/508), even-port
//! reservations, IPv6, fleet limits and ALTERNATE-SERVER, bandwidth caps, usage reporting and
//! caps, the session snapshot and allocation ids.

use super::*;

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
