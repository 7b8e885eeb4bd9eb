//! Peers: permissions and the peer policy (special addresses, operator rules, port rules),
//! channel bindings, ChannelData both ways and Send/Data indications.

use super::*;

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
