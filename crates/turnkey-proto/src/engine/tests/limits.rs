//! The unauthenticated reply limit: per-IP budgets, first contacts never starved, returning
//! 5-tuples and stream first contacts never limited, no state created by a flood.

use super::*;

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
