//! The bounded-work rule of the sweep: one call of `handle_timeout` visits at most
//! `MAX_VISITED_PER_SWEEP` allocation slots and ends at most `MAX_ENDED_PER_SWEEP`, so no turn of
//! the driver's loop is proportional to every allocation a shard holds; the round's next step is
//! due at once and the round, however many steps it takes, misses no allocation. The session
//! snapshot is cut into slices the same way.

use super::*;

/// Steps of the round started by the sweep now due (the first step included).
fn steps_of_round(h: &mut Harness) -> usize {
    let due = h.engine.poll_timeout().saturating_duration_since(h.now.mono);
    h.advance_by(due);
    let mut steps = 1;
    while h.engine.poll_timeout() <= h.now.mono {
        h.engine.handle_timeout(h.now, &mut h.ports);
        h.settle();
        steps += 1;
        assert!(steps < 1000, "the round never ends");
    }
    steps
}

#[test]
fn a_round_over_many_allocations_is_cut_into_bounded_steps() {
    let mut h = Harness::with(|c| c.max_allocations_per_user = 10_000);
    let n = MAX_VISITED_PER_SWEEP * 2 + 7;
    crowd(&mut h, n);
    assert_eq!(steps_of_round(&mut h), 3, "{n} slots in steps of {MAX_VISITED_PER_SWEEP}");
    // Nothing ended, and the next round waits for the interval again.
    assert_eq!(h.shared.allocations() as usize, n);
    assert!(h.engine.poll_timeout() >= h.now.mono + SWEEP_INTERVAL);
    // Every allocation is still visited: once their lifetime is over, the rounds expire them
    // all, at most MAX_ENDED_PER_SWEEP per step.
    h.now = h.now.advance(Duration::from_secs(601));
    let mut steps = 0;
    while h.shared.allocations() > 0 {
        let before = h.shared.allocations() as usize;
        h.engine.handle_timeout(h.now, &mut h.ports);
        h.settle();
        let ended = before - h.shared.allocations() as usize;
        assert!(ended <= MAX_ENDED_PER_SWEEP, "{ended} ended in one step");
        steps += 1;
        assert!(steps <= n, "expiry never finishes");
    }
    assert!(steps >= n.div_ceil(MAX_ENDED_PER_SWEEP), "{steps}");
    let expired = h.events.iter().filter(|e| matches!(e, Event::AllocationEnded { reason: EndReason::Expired, .. }));
    assert_eq!(expired.count(), n);
}

#[test]
fn a_revocation_ends_every_revoked_allocation_across_a_split_round() {
    let mut h = Harness::with(|c| c.max_allocations_per_user = 10_000);
    let n = MAX_VISITED_PER_SWEEP + MAX_ENDED_PER_SWEEP + 3;
    let u = crowd(&mut h, n);
    let bob = tuple("198.51.100.9:5555");
    assert_eq!(h.allocate(bob, "bob").0.typ.class, CLASS_SUCCESS_RESPONSE);
    // A round is in progress when the revocation comes: it is still seen by the next round.
    let due = h.engine.poll_timeout().saturating_duration_since(h.now.mono);
    h.advance_by(due);
    assert!(h.engine.poll_timeout() <= h.now.mono, "the round is split");
    h.shared.revocations.revoke(&u, UnixTime(T0_UNIX + 10_000));
    let mut guard = 0;
    while h.shared.allocations() > 1 {
        let before = h.shared.allocations() as usize;
        let due = h.engine.poll_timeout().saturating_duration_since(h.now.mono);
        h.advance_by(due);
        assert!(before - h.shared.allocations() as usize <= MAX_ENDED_PER_SWEEP);
        guard += 1;
        assert!(guard < 1000, "the revocation never completes");
    }
    assert!(h.engine.has_allocation(&bob), "only bob's allocation is left");
    assert_eq!(h.ports.released.len(), n);
}

#[test]
fn a_snapshot_in_slices_lists_what_one_snapshot_lists() {
    let mut h = Harness::with(|c| c.max_allocations_per_user = 10_000);
    crowd(&mut h, 2500);
    // Holes in the slot table: a few allocations deleted.
    for i in [0usize, 3, 1024, 2499] {
        let t = tuple(&format!("203.0.{}.{}:5555", 1 + i / 250, 1 + i % 250));
        h.engine.client_closed(t, &mut h.ports);
    }
    let mut whole = Vec::new();
    h.engine.snapshot_sessions(h.now, &mut whole);
    assert_eq!(whole.len(), 2496);
    let (mut sliced, mut at, mut slices) = (Vec::new(), Some(0), 0);
    while let Some(from) = at {
        at = h.engine.snapshot_sessions_from(h.now, from, 1000, &mut sliced);
        slices += 1;
    }
    assert_eq!(slices, 3);
    assert_eq!(sliced, whole);
}
