//! Which relays to hand out: pure functions over a listing, no I/O.
//!
//! [`choose`] picks up to N relays for one answer: never a draining, stale or full relay; the
//! preferred region first (when any eligible relay is in it), then the least loaded relative to
//! capacity. Loads are compared in 5 % steps and ties are broken by a hash of the caller's seed
//! and the node id, so a burst of requests between two heartbeats (when loads look equal) is
//! spread over the equally loaded relays instead of all landing on the first by name.
//! [`alternate`] picks the relay a draining or full relay redirects to (300 Try Alternate).
//!
//! [`choose_pending`] also takes the issuer's own handouts since each relay's last heartbeat
//! (`pending`: relays named in answers the relay's beat cannot show yet) and counts them as
//! allocations when ranking, so a burst between two heartbeats is spread by load, not only by
//! the hash tie-break. Pending handouts never make a relay ineligible: only what the relay
//! itself measured does.

use std::hash::{Hash, Hasher};

use crate::names::{NodeId, Region};
use crate::registry::{RelayStatus, Transport};

/// Loads are compared in steps of 1/LOAD_STEPS.
const LOAD_STEPS: f64 = 20.0;

/// Whether `r` may be handed out: not draining, heartbeat at most `stale_after_ms` old, below
/// its capacity, and advertising at least one URL.
pub fn eligible(r: &RelayStatus, stale_after_ms: u64) -> bool {
    !r.beat.draining && r.age_ms <= stale_after_ms && r.beat.load() < 1.0 && !r.beat.urls.is_empty()
}

fn load_step(r: &RelayStatus) -> u64 {
    step(r.beat.load())
}

/// The load step of `r` with `pending` more allocations than its heartbeat shows.
fn pending_step(r: &RelayStatus, pending: u64) -> u64 {
    let b = &r.beat;
    if pending == 0 || b.allocation_capacity == 0 {
        return load_step(r);
    }
    let with = b.allocations.saturating_add(pending) as f64 / b.allocation_capacity as f64;
    step(b.load().max(with))
}

fn step(l: f64) -> u64 {
    if l.is_finite() {
        (l * LOAD_STEPS).floor() as u64
    } else {
        u64::MAX
    }
}

fn tiebreak(seed: u64, node: &NodeId) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    node.hash(&mut h);
    h.finish()
}

/// Up to `count` relays for one answer, best first. `region`: the request's region or the
/// issuer's own; `seed`: anything that varies per request (a counter, a random number).
pub fn choose<'a>(
    relays: &'a [RelayStatus],
    region: Option<&Region>,
    count: usize,
    stale_after_ms: u64,
    seed: u64,
) -> Vec<&'a RelayStatus> {
    choose_pending(relays, region, count, stale_after_ms, seed, |_| 0)
}

/// [`choose`], ranking each relay as if it held `pending(node)` more allocations than its last
/// heartbeat shows (what this issuer handed out since).
pub fn choose_pending<'a>(
    relays: &'a [RelayStatus],
    region: Option<&Region>,
    count: usize,
    stale_after_ms: u64,
    seed: u64,
    pending: impl Fn(&NodeId) -> u64,
) -> Vec<&'a RelayStatus> {
    let mut ok: Vec<&RelayStatus> = relays.iter().filter(|r| eligible(r, stale_after_ms)).collect();
    ok.sort_by_cached_key(|r| {
        let away = region.is_some() && r.beat.region.as_ref() != region;
        let extra = pending(&r.node_id);
        (away, pending_step(r, extra), tiebreak(seed, &r.node_id))
    });
    ok.truncate(count);
    ok
}

/// The least-loaded eligible relay other than `own` that serves `transport`: where a draining
/// or full relay sends a client (ALTERNATE-SERVER). Same region first when `region` is given.
pub fn alternate<'a>(
    relays: &'a [RelayStatus],
    own: &NodeId,
    transport: Transport,
    region: Option<&Region>,
    stale_after_ms: u64,
) -> Option<&'a RelayStatus> {
    relays
        .iter()
        .filter(|r| &r.node_id != own && eligible(r, stale_after_ms) && r.beat.urls_for(transport).next().is_some())
        .min_by(|a, b| {
            let ka = (region.is_some() && a.beat.region.as_ref() != region, a.beat.load());
            let kb = (region.is_some() && b.beat.region.as_ref() != region, b.beat.load());
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then_with(|| a.node_id.cmp(&b.node_id))
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::registry::{AdvertisedUrl, RelayBeat};

    const STALE: u64 = 6000;

    fn relay(id: &str, region: Option<&str>, allocs: u64, cap: u64, draining: bool, age_ms: u64) -> RelayStatus {
        RelayStatus {
            node_id: NodeId::new(id).unwrap(),
            beat: RelayBeat {
                region: region.map(|r| Region::new(r).unwrap()),
                urls: vec![
                    AdvertisedUrl { transport: Transport::Udp, url: format!("turn:{id}:3478?transport=udp") },
                    AdvertisedUrl { transport: Transport::Tcp, url: format!("turn:{id}:3478?transport=tcp") },
                ],
                allocations: allocs,
                allocation_capacity: cap,
                relayed_bps: 0,
                bandwidth_capacity_bps: None,
                draining,
            },
            age_ms,
        }
    }

    /// Pending counts from a map (absent: 0).
    fn of(m: &HashMap<NodeId, u64>) -> impl Fn(&NodeId) -> u64 + '_ {
        |n| m.get(n).copied().unwrap_or(0)
    }

    fn ids(v: &[&RelayStatus]) -> Vec<String> {
        v.iter().map(|r| r.node_id.to_string()).collect()
    }

    #[test]
    fn skips_draining_stale_and_full_relays() {
        let rs = vec![
            relay("a", None, 0, 100, true, 0),
            relay("b", None, 0, 100, false, STALE + 1),
            relay("c", None, 100, 100, false, 0),
            relay("d", None, 10, 0, false, 0),
            relay("e", None, 50, 100, false, 0),
        ];
        assert_eq!(ids(&choose(&rs, None, 5, STALE, 1)), ["e"]);
    }

    #[test]
    fn prefers_region_then_least_loaded() {
        let rs = vec![
            relay("eu1", Some("eu"), 80, 100, false, 0),
            relay("eu2", Some("eu"), 10, 100, false, 0),
            relay("us1", None, 0, 100, false, 0),
            relay("us2", Some("us"), 5, 100, false, 0),
        ];
        let eu = Region::new("eu").unwrap();
        assert_eq!(ids(&choose(&rs, Some(&eu), 3, STALE, 7)), ["eu2", "eu1", "us1"]);
        assert_eq!(ids(&choose(&rs, None, 2, STALE, 7)), ["us1", "us2"]);
    }

    #[test]
    fn equal_loads_are_spread_by_seed() {
        let rs: Vec<_> = (0..3).map(|i| relay(&format!("r{i}"), None, 0, 100, false, 0)).collect();
        let mut first = std::collections::BTreeSet::new();
        for seed in 0..64 {
            first.insert(choose(&rs, None, 1, STALE, seed)[0].node_id.to_string());
        }
        assert_eq!(first.len(), 3, "every equally loaded relay is picked first for some seed");
    }

    #[test]
    fn alternate_is_another_healthy_relay_with_the_transport() {
        let mut rs = vec![
            relay("self", None, 0, 100, true, 0),
            relay("busy", None, 90, 100, false, 0),
            relay("idle", None, 1, 100, false, 0),
            relay("gone", None, 0, 100, false, STALE + 1),
        ];
        let me = NodeId::new("self").unwrap();
        assert_eq!(alternate(&rs, &me, Transport::Udp, None, STALE).unwrap().node_id.as_str(), "idle");
        assert!(alternate(&rs, &me, Transport::Tls, None, STALE).is_none());
        rs[2].beat.draining = true;
        assert_eq!(alternate(&rs, &me, Transport::Tcp, None, STALE).unwrap().node_id.as_str(), "busy");
    }

    #[test]
    fn pending_handouts_rank_but_never_exclude() {
        let rs = vec![relay("a", None, 10, 100, false, 0), relay("b", None, 10, 100, false, 0)];
        let a = NodeId::new("a").unwrap();
        // 10 pending on a: 20 % against b's 10 %, whatever the seed.
        let pending = HashMap::from([(a.clone(), 10)]);
        for seed in 0..32 {
            assert_eq!(ids(&choose_pending(&rs, None, 2, STALE, seed, of(&pending))), ["b", "a"]);
        }
        // Pending past capacity: still handed out (only the relay's own figures exclude it).
        let pending = HashMap::from([(a, 1000)]);
        assert_eq!(ids(&choose_pending(&rs, None, 2, STALE, 3, of(&pending))), ["b", "a"]);
    }

    fn arb_relay() -> impl Strategy<Value = RelayStatus> {
        (
            0u32..40,
            prop::option::of(prop::sample::select(vec!["eu", "us", "ap"])),
            0u64..150,
            0u64..120,
            any::<bool>(),
            0u64..9000,
        )
            .prop_map(|(id, region, allocs, cap, draining, age)| {
                relay(&format!("n{id}"), region, allocs, cap, draining, age)
            })
    }

    proptest! {
        #[test]
        fn choice_properties(
            relays in prop::collection::vec(arb_relay(), 0..30),
            region in prop::option::of(prop::sample::select(vec!["eu", "us", "ap"])),
            count in 0usize..6,
            seed in any::<u64>(),
        ) {
            let region = region.map(|r| Region::new(r).unwrap());
            let got = choose(&relays, region.as_ref(), count, STALE, seed);
            let eligible_n = relays.iter().filter(|r| eligible(r, STALE)).count();
            // Exactly min(count, eligible) answers, all eligible.
            prop_assert_eq!(got.len(), count.min(eligible_n));
            for r in &got {
                prop_assert!(!r.beat.draining && r.age_ms <= STALE && r.beat.load() < 1.0);
            }
            // In-region relays come first, and no eligible in-region relay is left out while an
            // out-of-region one is handed out.
            if let Some(reg) = &region {
                let home = |r: &RelayStatus| r.beat.region.as_ref() == Some(reg);
                let first_away = got.iter().position(|r| !home(r)).unwrap_or(got.len());
                prop_assert!(got[first_away..].iter().all(|r| !home(r)));
                let home_eligible = relays.iter().filter(|r| eligible(r, STALE) && home(r)).count();
                if first_away < got.len() {
                    prop_assert_eq!(first_away, home_eligible);
                }
            }
            // Within each region class, load steps never decrease.
            for w in got.windows(2) {
                let same_class = region.is_none()
                    || (w[0].beat.region.as_ref() == region.as_ref()) == (w[1].beat.region.as_ref() == region.as_ref());
                if same_class {
                    prop_assert!(load_step(w[0]) <= load_step(w[1]));
                }
            }
            // A relay handed out is never more loaded (by step) than an eligible one left out of
            // the same class.
            if let Some(last) = got.last() {
                for r in relays.iter().filter(|r| eligible(r, STALE)) {
                    let class = |x: &RelayStatus| region.is_some() && x.beat.region.as_ref() != region.as_ref();
                    if class(r) == class(last) && !got.iter().any(|g| std::ptr::eq(*g, r)) {
                        prop_assert!(load_step(r) >= load_step(last));
                    }
                }
            }
        }

        #[test]
        fn no_pending_is_plain_choice(
            relays in prop::collection::vec(arb_relay(), 0..30),
            count in 0usize..6,
            seed in any::<u64>(),
        ) {
            let plain = ids(&choose(&relays, None, count, STALE, seed));
            let zeros: HashMap<NodeId, u64> = relays.iter().map(|r| (r.node_id.clone(), 0)).collect();
            prop_assert_eq!(&plain, &ids(&choose_pending(&relays, None, count, STALE, seed, |_| 0)));
            prop_assert_eq!(&plain, &ids(&choose_pending(&relays, None, count, STALE, seed, of(&zeros))));
        }

        #[test]
        fn pending_choice_properties(
            relays in prop::collection::vec(arb_relay(), 0..30),
            pend in prop::collection::vec(0u64..200, 40),
            region in prop::option::of(prop::sample::select(vec!["eu", "us", "ap"])),
            count in 0usize..6,
            seed in any::<u64>(),
        ) {
            let region = region.map(|r| Region::new(r).unwrap());
            let pending: HashMap<NodeId, u64> =
                (0..40u32).map(|i| (NodeId::new(format!("n{i}")).unwrap(), pend[i as usize])).collect();
            let got = choose_pending(&relays, region.as_ref(), count, STALE, seed, of(&pending));
            // The same relays are eligible: pending counts never exclude one.
            let eligible_n = relays.iter().filter(|r| eligible(r, STALE)).count();
            prop_assert_eq!(got.len(), count.min(eligible_n));
            let home = |r: &RelayStatus| region.is_none() || r.beat.region.as_ref() == region.as_ref();
            let step_of = |r: &RelayStatus| pending_step(r, pending.get(&r.node_id).copied().unwrap_or(0));
            // Home region first; within a class, steps (with pending) never decrease, and no
            // eligible relay of the last one's class left out has a lower step.
            let first_away = got.iter().position(|r| !home(r)).unwrap_or(got.len());
            prop_assert!(got[first_away..].iter().all(|r| !home(r)));
            for w in got.windows(2) {
                if home(w[0]) == home(w[1]) {
                    prop_assert!(step_of(w[0]) <= step_of(w[1]));
                }
            }
            if let Some(last) = got.last() {
                for r in relays.iter().filter(|r| eligible(r, STALE) && home(r) == home(last)) {
                    if !got.iter().any(|g| std::ptr::eq(*g, r)) {
                        prop_assert!(step_of(r) >= step_of(last));
                    }
                }
            }
        }

        #[test]
        fn a_burst_between_heartbeats_is_spread_by_load(
            allocs in prop::collection::vec(0u64..40, 2..6),
            burst in 1u64..300,
            seed in any::<u64>(),
        ) {
            // Relays of capacity 100 with measured loads `allocs`; `burst` answers of one relay
            // each before any relay beats again, every handout counted as pending.
            let rs: Vec<RelayStatus> =
                allocs.iter().enumerate().map(|(i, a)| relay(&format!("r{i}"), None, *a, 100, false, 0)).collect();
            let mut pending: HashMap<NodeId, u64> = HashMap::new();
            for k in 0..burst {
                let got = choose_pending(&rs, None, 1, STALE, seed.wrapping_add(k), of(&pending));
                *pending.entry(got[0].node_id.clone()).or_default() += 1;
            }
            let pend = |r: &RelayStatus| pending.get(&r.node_id).copied().unwrap_or(0);
            prop_assert_eq!(rs.iter().map(pend).sum::<u64>(), burst);
            for a in rs.iter().filter(|a| pend(a) > 0) {
                for b in &rs {
                    // a's last pick had a step <= b's step at that time <= b's final step.
                    let (at_last_pick, b_final) = (pending_step(a, pend(a) - 1), pending_step(b, pend(b)));
                    prop_assert!(
                        at_last_pick <= b_final,
                        "{} picked at step {} while {} ends at step {}", a.node_id, at_last_pick, b.node_id, b_final
                    );
                    // In allocations: within one step (5) of each other.
                    let total = |r: &RelayStatus| r.beat.allocations + pend(r);
                    prop_assert!(total(a) <= total(b) + 5, "{} {} vs {} {}", a.node_id, total(a), b.node_id, total(b));
                }
            }
        }

        #[test]
        fn alternate_properties(relays in prop::collection::vec(arb_relay(), 0..30), own in 0u32..40) {
            let own = NodeId::new(format!("n{own}")).unwrap();
            match alternate(&relays, &own, Transport::Udp, None, STALE) {
                Some(a) => {
                    prop_assert!(a.node_id != own && eligible(a, STALE));
                    for r in relays.iter().filter(|r| r.node_id != own && eligible(r, STALE)) {
                        prop_assert!(a.beat.load() <= r.beat.load());
                    }
                }
                None => prop_assert!(relays.iter().all(|r| r.node_id == own || !eligible(r, STALE))),
            }
        }
    }
}
