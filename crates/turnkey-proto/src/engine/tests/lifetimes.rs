//! How allocations and permissions end: refresh, expiry, credential expiry and revocation
//! (one and a mass revocation in bounded sweeps), permission lifetime, draining.

use super::*;

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
    let u = crowd(&mut h, n);
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
fn draining_refuses_new_allocations() {
    let mut h = Harness::new();
    h.shared.start_draining();
    let (r, _) = h.allocate(tuple("203.0.113.5:1000"), "alice");
    assert_eq!(code(&r), Some(508));
}
