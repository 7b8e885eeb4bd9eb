//! The event contract (see `engine::event`): one event per lifecycle edge, in order, with its
//! deadline, driven by hand-advanced time; and the replay test (same seed, same inputs: the same
//! bytes and events).

use std::net::IpAddr;

use super::*;

const MIN: Duration = Duration::from_secs(60);

/// The one allocation event of `events`, checked to name `t`.
fn only(events: Vec<Event>, t: FiveTuple) -> Event {
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = events.into_iter().next().unwrap();
    assert_eq!(e.alloc().tuple, t);
    e
}

/// Allocates for `t` and returns the Created event's reference and deadline.
fn created(h: &mut Harness, t: FiveTuple, user: &str) -> (AllocationRef, Auth) {
    let (r, a) = h.allocate(t, user);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    match only(h.take_events(), t) {
        Event::AllocationCreated { alloc, expires } => {
            assert_eq!(expires, h.now.mono + 10 * MIN, "the default lifetime");
            assert_eq!(alloc.relayed, xor(&r, ATTR_XOR_RELAYED_ADDRESS));
            assert_eq!(alloc.relay, h.relay_handle(t));
            (alloc, a)
        }
        other => panic!("{other:?}"),
    }
}

/// Advances to the engine's next sweep (the first at or after now).
fn to_sweep(h: &mut Harness) {
    let due = h.engine.poll_timeout().saturating_duration_since(h.now.mono);
    h.advance_by(due);
}

fn ended(h: &mut Harness, alloc: AllocationRef, reason: EndReason) {
    assert_eq!(h.take_events(), vec![Event::AllocationEnded { alloc, reason }]);
}

#[test]
fn created_once_refreshed_with_its_new_deadline_and_deleted() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, a) = created(&mut h, t, "alice");
    // The 401 round trip before and a retransmitted Allocate after create nothing.
    assert!(h.take_events().is_empty());
    h.advance(30);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(1200)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_eq!(h.take_events(), vec![Event::AllocationRefreshed { alloc, expires: h.now.mono + 20 * MIN }]);
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(0)], Some(&a))).unwrap();
    assert_eq!(lifetime(&r), 0);
    ended(&mut h, alloc, EndReason::Deleted);
    // Gone: later sweeps and requests say nothing more about it.
    h.advance(3600);
    assert!(h.take_events().is_empty());
}

#[test]
fn expiry_is_announced_once_by_the_first_sweep_at_its_deadline() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, _) = created(&mut h, t, "alice");
    h.advance_by(10 * MIN - Duration::from_millis(1));
    assert!(h.take_events().is_empty(), "not before the deadline");
    h.advance_by(Duration::from_millis(1));
    to_sweep(&mut h);
    assert!(h.now.mono < h.engine.poll_timeout());
    ended(&mut h, alloc, EndReason::Expired);
    h.advance(1);
    assert!(h.take_events().is_empty(), "once");
}

#[test]
fn credential_expiry_revocation_connection_close_kill_and_drain_each_name_their_reason() {
    let mut h = Harness::new();
    // The credential ends before the allocation.
    let t = tuple("203.0.113.5:5555");
    let (u, p) = h.creds("shortlived", 60);
    let a = Auth { user: u, pass: p, nonce: h.nonce(t) };
    h.take_events();
    h.send(t, &request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a))).unwrap();
    let Event::AllocationCreated { alloc, .. } = only(h.take_events(), t) else { panic!() };
    h.advance(61);
    ended(&mut h, alloc, EndReason::CredentialExpired);

    let t = tuple("203.0.113.6:5555");
    let (alloc, a) = created(&mut h, t, "bob");
    h.shared.revocations.revoke(&a.user, UnixTime(T0_UNIX + 10_000));
    h.advance(1);
    ended(&mut h, alloc, EndReason::Revoked);

    let stream = FiveTuple { transport: Transport::Tcp, ..tuple("203.0.113.7:5555") };
    let (alloc, _) = created(&mut h, stream, "carol");
    h.engine.client_closed(stream, &mut h.ports);
    ended(&mut h, alloc, EndReason::ConnectionClosed);

    let t = tuple("203.0.113.8:5555");
    let (alloc, _) = created(&mut h, t, "dave");
    assert!(h.engine.kill(alloc.id, &mut h.ports));
    ended(&mut h, alloc, EndReason::Killed);
    assert!(!h.engine.kill(alloc.id, &mut h.ports), "an id is never reused");
    assert_eq!(h.ports.released.last(), Some(&alloc.relay.0));

    let t = tuple("203.0.113.9:5555");
    let (alloc, _) = created(&mut h, t, "erin");
    assert_ne!(alloc.id, AllocationId(0));
    h.engine.close_all(&mut h.ports);
    ended(&mut h, alloc, EndReason::Drained);
    assert_eq!(h.engine.stats().allocations(Transport::Udp), 0);
    assert_eq!(h.engine.stats().allocations(Transport::Tcp), 0);
}

#[test]
fn permissions_are_installed_refreshed_and_expire_once_then_install_anew() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, a) = created(&mut h, t, "alice");
    let peer: IpAddr = addr(PEER).ip();
    let permit = |h: &mut Harness| {
        let r = h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER))], Some(&a))).unwrap();
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{r}");
    };
    permit(&mut h);
    let installed_at = h.now.mono;
    assert_eq!(h.take_events(), vec![Event::PermissionInstalled { alloc, peer, expires: installed_at + 5 * MIN }]);
    h.advance(100);
    permit(&mut h);
    let deadline = h.now.mono + 5 * MIN;
    assert_eq!(h.take_events(), vec![Event::PermissionRefreshed { alloc, peer, expires: deadline }]);
    // Keep the allocation alive past the permission.
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(3600)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    h.take_events();
    h.advance_by(5 * MIN - Duration::from_millis(1));
    assert!(h.take_events().is_empty());
    h.advance_by(Duration::from_millis(1));
    to_sweep(&mut h);
    assert_eq!(h.take_events(), vec![Event::PermissionExpired { alloc, peer, expired: deadline }]);
    assert_eq!(h.engine.stats().permissions(), 0);
    h.advance(10);
    assert!(h.take_events().is_empty(), "once");
    permit(&mut h);
    assert_eq!(
        h.take_events(),
        vec![Event::PermissionInstalled { alloc, peer, expires: h.now.mono + 5 * MIN }],
        "a permission asked for again after it expired is a new one"
    );
    assert_eq!(h.engine.stats().permissions(), 0, "counted at the sweep");
    h.advance(1);
    assert_eq!(h.engine.stats().permissions(), 1);
}

#[test]
fn an_expired_permission_asked_for_again_before_the_sweep_expires_then_installs() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, a) = created(&mut h, t, "alice");
    let peer: IpAddr = addr(PEER).ip();
    let req = request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER))], Some(&a));
    h.send(t, &req).unwrap();
    let deadline = h.now.mono + 5 * MIN;
    h.take_events();
    // Past the deadline without a sweep in between.
    h.now = h.now.advance(5 * MIN);
    let a = h.renew(t, a);
    h.send(t, &request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER))], Some(&a))).unwrap();
    assert_eq!(
        h.take_events(),
        vec![
            Event::PermissionExpired { alloc, peer, expired: deadline },
            Event::PermissionInstalled { alloc, peer, expires: h.now.mono + 5 * MIN },
        ]
    );
}

#[test]
fn channels_are_bound_refreshed_and_expire_once_then_bind_anew() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, a) = created(&mut h, t, "alice");
    let r = h.send(t, &request(METHOD_REFRESH, &[Attr::Lifetime(3600)], Some(&a))).unwrap();
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    h.take_events();
    let (peer, number) = (PeerAddr(addr(PEER)), ChannelNumber(0x4001));
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let expires = h.now.mono + 10 * MIN;
    assert_eq!(
        h.take_events(),
        vec![
            Event::ChannelBound { alloc, number, peer, expires },
            Event::PermissionInstalled { alloc, peer: peer.0.ip(), expires: h.now.mono + 5 * MIN },
        ],
        "the channel first, then the permission it installs"
    );
    assert_eq!(alloc.relayed, h.engine.allocs[h.engine.by_tuple[&t]].as_ref().unwrap().relay_addr());
    h.advance(240);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let expires = h.now.mono + 10 * MIN;
    assert_eq!(
        h.take_events(),
        vec![
            Event::ChannelRefreshed { alloc, number, peer, expires },
            Event::PermissionRefreshed { alloc, peer: peer.0.ip(), expires: h.now.mono + 5 * MIN },
        ]
    );
    // The permission expires first (5 minutes), the channel at its own deadline.
    h.advance(300);
    let events = h.take_events();
    assert!(matches!(events[..], [Event::PermissionExpired { .. }]), "{events:#?}");
    let left = expires - h.now.mono;
    h.advance_by(left);
    assert_eq!(h.take_events(), vec![Event::ChannelExpired { alloc, number, peer, expired: expires }]);
    assert_eq!(h.engine.stats().channels(), 0);
    h.advance(1);
    assert!(h.take_events().is_empty(), "once");
    // Still reserved for the same peer (RFC 8656 §12): binding it again is a new binding.
    let a = h.renew(t, a);
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    let events = h.take_events();
    assert_eq!(events[0], Event::ChannelBound { alloc, number, peer, expires: h.now.mono + 10 * MIN });
    assert!(matches!(events[1..], [Event::PermissionInstalled { .. }]), "{events:#?}");
}

#[test]
fn an_ended_allocation_takes_its_permissions_and_channels_without_more_events() {
    let mut h = Harness::new();
    let t = tuple("203.0.113.5:5555");
    let (alloc, a) = created(&mut h, t, "alice");
    assert_eq!(bind_channel(&mut h, t, &a, 0x4001, PEER), None);
    assert_eq!(h.take_events().len(), 2);
    h.advance(601);
    ended(&mut h, alloc, EndReason::Expired);
    h.advance(3600);
    assert!(h.take_events().is_empty());
}

#[test]
fn ids_are_distinct_and_never_reused_when_slots_are() {
    let mut h = Harness::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..4 {
        let t = tuple(&format!("203.0.113.5:{}", 5000 + i));
        let (alloc, _) = created(&mut h, t, "alice");
        assert!(seen.insert(alloc.id), "{:?} reused", alloc.id);
        h.engine.client_closed(t, &mut h.ports);
        h.take_events();
    }
}

/// One input of a recorded session: at `at` after the start, `bytes` from a client or a peer.
#[derive(Clone)]
enum Input {
    Client { at: Duration, from: FiveTuple, bytes: Vec<u8> },
    Peer { at: Duration, relay: RelayHandle, from: PeerAddr, bytes: Vec<u8> },
    Sweep { at: Duration },
}

/// What the engine sent, owned.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Client(FiveTuple, Vec<u8>),
    Peer(RelayHandle, PeerAddr, Vec<u8>),
}

fn owned(t: Transmit<'_>) -> Sent {
    match t {
        Transmit::Client { to, data } => Sent::Client(to, data.into_owned()),
        Transmit::Peer { relay, to, data } => Sent::Peer(relay, to, data.into_owned()),
    }
}

/// Feeds `inputs` to a fresh engine seeded with `seed`, starting at `start`; returns everything
/// it sent and every event, in order.
fn replay(seed: [u8; 32], start: Now, inputs: &[Input]) -> (Vec<Sent>, Vec<Event>) {
    let cfg = cfg_with(|c| c.rng_seed = Some(seed));
    let mut engine = Engine::new(Arc::new(cfg), Arc::new(Shared::new(RevocationSet::new())), start.mono);
    let mut ports = FakePorts::default();
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    for input in inputs {
        let out = match input {
            Input::Client { at, from, bytes } => {
                engine.handle_client(start.advance(*at), *from, bytes, &mut ports).map(owned)
            }
            Input::Peer { at, relay, from, bytes } => {
                let mut buf = vec![0u8; PEER_HEADROOM + bytes.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + bytes.len()].copy_from_slice(bytes);
                engine.handle_peer(start.advance(*at), *relay, *from, &mut buf, bytes.len()).map(owned)
            }
            Input::Sweep { at } => {
                engine.handle_timeout(start.advance(*at), &mut ports);
                None
            }
        };
        sent.extend(out);
        while let Some(e) = engine.poll_event() {
            events.push(e);
        }
    }
    (sent, events)
}

/// Records a session (two clients, UDP and TCP: 401 rounds, Allocate, CreatePermission,
/// ChannelBind, Send, ChannelData, peer data both as ChannelData and as Data indications,
/// Refresh, expiry) by driving a live engine, so the authenticated requests carry real nonces.
fn record(seed: [u8; 32]) -> (Now, Vec<Input>) {
    let mut h = Harness::with(|c| c.rng_seed = Some(seed));
    let start = h.now;
    let mut inputs = Vec::new();
    let mut client = |h: &mut Harness, from: FiveTuple, bytes: Vec<u8>| {
        let _ = h.engine.handle_client(h.now, from, &bytes, &mut h.ports);
        inputs.push(Input::Client { at: h.now.mono - start.mono, from, bytes });
    };
    let udp = tuple("203.0.113.5:5555");
    let tcp = FiveTuple { transport: Transport::Tcp, ..tuple("203.0.113.6:6666") };
    let mut auths = Vec::new();
    for (t, user) in [(udp, "alice"), (tcp, "bob")] {
        client(&mut h, t, request(METHOD_ALLOCATE, &[Attr::Transport(17)], None));
        let (u, p) = h.creds(user, 3600);
        let a = Auth { user: u, pass: p, nonce: h.engine.cfg.nonce_key.issue(h.now.unix(), t.client.0) };
        client(&mut h, t, request(METHOD_ALLOCATE, &[Attr::Transport(17)], Some(&a)));
        client(&mut h, t, request(METHOD_CREATE_PERMISSION, &[Attr::Peer(addr(PEER))], Some(&a)));
        client(&mut h, t, request(METHOD_CHANNEL_BIND, &[Attr::Channel(0x4001), Attr::Peer(addr(PEER))], Some(&a)));
        auths.push((t, a));
    }
    client(&mut h, udp, channel_data(0x4001, b"to the peer"));
    let send = build(
        MessageType::new(METHOD_SEND, CLASS_INDICATION),
        &[Attr::Peer(addr("8.8.8.8:40001")), Attr::Data(b"sent".to_vec())],
        None,
        &[],
    );
    client(&mut h, tcp, send);
    let mut peer_inputs = Vec::new();
    for t in [udp, tcp] {
        let relay = h.relay_handle(t);
        for (from, bytes) in [(PEER, &b"on the channel"[..]), ("8.8.8.8:40001", b"as a Data indication")] {
            peer_inputs.push(Input::Peer {
                at: h.now.mono - start.mono,
                relay,
                from: PeerAddr(addr(from)),
                bytes: bytes.to_vec(),
            });
        }
    }
    inputs.extend(peer_inputs);
    h.now = h.now.advance(Duration::from_secs(200));
    let (t, a) = auths[0].clone();
    let a = h.renew(t, a);
    let mut client = |h: &mut Harness, from: FiveTuple, bytes: Vec<u8>| {
        let _ = h.engine.handle_client(h.now, from, &bytes, &mut h.ports);
        inputs.push(Input::Client { at: h.now.mono - start.mono, from, bytes });
    };
    client(&mut h, t, request(METHOD_REFRESH, &[Attr::Lifetime(1800)], Some(&a)));
    for secs in [301, 601, 1000, 2001] {
        inputs.push(Input::Sweep { at: Duration::from_secs(secs) });
    }
    (start, inputs)
}

#[test]
fn the_same_seed_and_inputs_give_byte_identical_transmits_and_events() {
    let seed = [7u8; 32];
    let (start, inputs) = record(seed);
    let first = replay(seed, start, &inputs);
    let second = replay(seed, start, &inputs);
    assert_eq!(first, second);
    let (sent, events) = &first;
    // The session did what it was recorded to do: every kind of transmit and every edge.
    let indications = sent.iter().filter(|s| matches!(s, Sent::Client(_, d) if d[..2] == [0x00, 0x17])).count();
    assert_eq!(indications, 2, "a Data indication per client");
    assert!(sent.iter().any(|s| matches!(s, Sent::Peer(..))));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::AllocationCreated { .. } => "created",
            Event::AllocationRefreshed { .. } => "refreshed",
            Event::AllocationEnded { .. } => "ended",
            Event::PermissionInstalled { .. } => "perm",
            Event::PermissionRefreshed { .. } => "perm-refreshed",
            Event::PermissionExpired { .. } => "perm-expired",
            Event::ChannelBound { .. } => "bound",
            Event::ChannelRefreshed { .. } => "bound-refreshed",
            Event::ChannelExpired { .. } => "chan-expired",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "created",
            "perm",
            "bound",
            "perm-refreshed", // alice
            "created",
            "perm",
            "bound",
            "perm-refreshed", // bob
            "refreshed",      // alice's Refresh at 200 s
            "perm-expired",
            "perm-expired", // both permissions at 300 s
            "chan-expired", // alice's channel at 600 s (her allocation comes first)
            "ended",        // bob's allocation at 600 s (alice refreshed hers), its channel with it
            "ended",        // alice's at 2000 s
        ]
    );
    // The seed is what the randomness comes from: another one changes the indications' ids.
    let other = replay([8u8; 32], start, &inputs);
    assert_eq!(other.1, first.1, "events do not depend on the seed");
    assert_ne!(other.0, first.0);
}
