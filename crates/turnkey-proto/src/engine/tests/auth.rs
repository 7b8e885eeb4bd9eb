//! Authentication, nonces, transactions and what malformed input gets (RFC 8489 §9.2 and
//! RFC 8656), the RFC 5769 test vectors, and property tests that no input panics.

use super::*;

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

mod rfc5769 {
    use crate::engine::message::{integrity_matches, parse};

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
