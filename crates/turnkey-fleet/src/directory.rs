//! The issuer's relay directory as plain state: the last relay listing, when it was read, and
//! what this issuer handed out since each relay's last heartbeat. No I/O and no clock: the
//! caller passes the listing in as it arrives and the time with every question.
//!
//! - [`Directory::aged`]: the listing's relays with their heartbeat ages advanced to now, so a
//!   relay drops out of answers exactly 3 beats after its last one, however old the copy is; a
//!   listing kept while Redis is unreachable (`cached`) keeps its relays `max_stale` longer (no
//!   relay can beat then).
//! - [`Directory::choose`]: [`handout::choose_pending`] over the aged relays, each relay named
//!   counted as one allocation to come ([`Handed`]) until its next heartbeat shows what really
//!   happened (browsers allocate on each TURN server of an answer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handout;
use crate::names::{NodeId, Region};
use crate::registry::{RelaySnapshot, RelayStatus};

/// The relays of a listing as of one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Aged {
    /// The listing's relays, `age_ms` advanced by the copy's age.
    pub relays: Vec<RelayStatus>,
    /// The age past which a relay is not handed out (3 beats, plus `max_stale` for a cached
    /// listing).
    pub stale_after_ms: u64,
    /// Whether the listing is the last one read before Redis became unreachable.
    pub cached: bool,
}

/// The listing's relays with their ages advanced by `elapsed` (the copy's age), and the age past
/// which a relay is not handed out: `stale_after_ms` (3 beats), plus `max_stale_ms` for a listing
/// kept while Redis is unreachable.
pub fn aged(snap: &RelaySnapshot, elapsed: Duration, stale_after_ms: u64, max_stale_ms: u64) -> Aged {
    let extra = millis(elapsed);
    let mut relays = snap.relays.clone();
    for r in &mut relays {
        r.age_ms = r.age_ms.saturating_add(extra);
    }
    let stale_after_ms = if snap.cached { stale_after_ms.saturating_add(max_stale_ms) } else { stale_after_ms };
    Aged { relays, stale_after_ms, cached: snap.cached }
}

/// What this issuer handed out since each relay's last heartbeat: relays named in answers whose
/// allocations the relay's beat cannot show yet. A relay's count starts again at 0 when a newer
/// beat of it is seen (its `allocations` then include what the count stood for).
#[derive(Debug, Default)]
pub struct Handed {
    /// Node id -> (Redis time of the beat the count is relative to, handouts since).
    since_beat: HashMap<NodeId, (u64, u64)>,
    /// The listing the counts were last lined up with (they are again only when it changes, not
    /// per request).
    seen: Option<Arc<RelaySnapshot>>,
}

impl Handed {
    /// Lines the counts up with `snap`: a relay whose beat is newer than the one its count is
    /// relative to starts again at 0; relays no longer listed are forgotten.
    pub fn sync(&mut self, snap: &Arc<RelaySnapshot>) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            return;
        }
        self.since_beat.retain(|node, _| snap.relays.iter().any(|r| &r.node_id == node));
        for r in &snap.relays {
            let beat_at = snap.server_time_ms.saturating_sub(r.age_ms);
            let e = self.since_beat.entry(r.node_id.clone()).or_insert((beat_at, 0));
            if e.0 != beat_at {
                *e = (beat_at, 0);
            }
        }
        self.seen = Some(snap.clone());
    }

    /// Handouts of `node` since its last beat.
    pub fn pending(&self, node: &NodeId) -> u64 {
        self.since_beat.get(node).map_or(0, |e| e.1)
    }

    /// Counts one handout of `node` (a relay not in the listing last synced is not counted).
    pub fn handed_out(&mut self, node: &NodeId) {
        if let Some(e) = self.since_beat.get_mut(node) {
            e.1 += 1;
        }
    }

    /// How many relays have a count.
    pub fn len(&self) -> usize {
        self.since_beat.len()
    }

    /// Whether no relay has a count.
    pub fn is_empty(&self) -> bool {
        self.since_beat.is_empty()
    }
}

/// The relay listing as last read, when, and the handouts since each relay's last beat.
#[derive(Debug)]
pub struct Directory {
    snap: Arc<RelaySnapshot>,
    read_at: Instant,
    stale_after_ms: u64,
    max_stale_ms: u64,
    handed: Handed,
}

impl Directory {
    /// A directory over `snap`, read at `now`. `stale_after`: the heartbeat age past which a
    /// relay is not handed out; `max_stale`: how much longer a cached listing's relays are.
    pub fn new(snap: Arc<RelaySnapshot>, now: Instant, stale_after: Duration, max_stale: Duration) -> Self {
        Self {
            snap,
            read_at: now,
            stale_after_ms: millis(stale_after),
            max_stale_ms: millis(max_stale),
            handed: Handed::default(),
        }
    }

    /// A newer listing, read at `now`.
    pub fn update(&mut self, snap: Arc<RelaySnapshot>, now: Instant) {
        self.snap = snap;
        self.read_at = now;
    }

    /// The listing as last read.
    pub fn snapshot(&self) -> &Arc<RelaySnapshot> {
        &self.snap
    }

    /// The relays with their heartbeat ages advanced to `now`.
    pub fn aged(&self, now: Instant) -> Aged {
        aged(&self.snap, now.saturating_duration_since(self.read_at), self.stale_after_ms, self.max_stale_ms)
    }

    /// Up to `count` relays for one answer at `now`, best first (see [`handout::choose_pending`]),
    /// each counted as handed out until its next heartbeat. `region`: the request's or the
    /// issuer's own; `seed`: anything that varies per request.
    pub fn choose(&mut self, now: Instant, region: Option<&Region>, count: usize, seed: u64) -> Vec<RelayStatus> {
        let aged = self.aged(now);
        self.handed.sync(&self.snap);
        let handed = &self.handed;
        let chosen: Vec<RelayStatus> =
            handout::choose_pending(&aged.relays, region, count, aged.stale_after_ms, seed, |n| handed.pending(n))
                .into_iter()
                .cloned()
                .collect();
        for r in &chosen {
            self.handed.handed_out(&r.node_id);
        }
        chosen
    }

    /// Handouts of `node` since its last beat, as of the last [`Directory::choose`].
    pub fn pending(&self, node: &NodeId) -> u64 {
        self.handed.pending(node)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::registry::{AdvertisedUrl, RelayBeat, Transport};

    const STALE: Duration = Duration::from_secs(6);
    const MAX_STALE: Duration = Duration::from_secs(30);

    fn relay(id: &str, allocations: u64, age_ms: u64) -> RelayStatus {
        RelayStatus {
            node_id: NodeId::new(id).unwrap(),
            beat: RelayBeat {
                region: None,
                urls: vec![AdvertisedUrl { transport: Transport::Udp, url: format!("turn:{id}:3478?transport=udp") }],
                allocations,
                allocation_capacity: 100,
                relayed_bps: 0,
                bandwidth_capacity_bps: None,
                draining: false,
            },
            age_ms,
        }
    }

    fn snap(server_time_ms: u64, relays: Vec<RelayStatus>, cached: bool) -> Arc<RelaySnapshot> {
        Arc::new(RelaySnapshot { server_time_ms, relays, cached })
    }

    fn ids(v: &[RelayStatus]) -> Vec<String> {
        v.iter().map(|r| r.node_id.to_string()).collect()
    }

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn a_relay_leaves_three_beats_after_its_last_beat_whenever_the_copy_was_read() {
        let t0 = Instant::now();
        let mut d =
            Directory::new(snap(0, vec![relay("a", 0, 1000), relay("b", 0, 5000)], false), t0, STALE, MAX_STALE);
        let at = t0 + Duration::from_millis(1500);
        assert_eq!(d.aged(at).stale_after_ms, 6000);
        assert_eq!(ids(&d.choose(at, None, 5, 1)), ["a"], "b's beat is 6.5 s old by now");
        // A copy kept while Redis is down: its relays stay eligible up to max_stale longer.
        d.update(snap(0, vec![relay("a", 0, 1000), relay("b", 0, 5000)], true), t0);
        assert_eq!(d.aged(at).stale_after_ms, 36_000);
        assert_eq!(d.choose(at, None, 5, 1).len(), 2);
        assert!(d.choose(t0 + Duration::from_secs(40), None, 5, 1).is_empty());
        // A time before the read (a caller's clock is monotonic, but never trust it): no ageing.
        assert_eq!(d.aged(t0 - Duration::from_secs(1)).relays[0].age_ms, 1000);
    }

    #[test]
    fn handouts_count_until_the_relays_next_beat() {
        let mut h = Handed::default();
        let s = snap(10_000, vec![relay("a", 0, 1000), relay("b", 0, 500)], false);
        let (a, b) = (node("a"), node("b"));
        h.sync(&s);
        assert_eq!(h.pending(&a), 0);
        h.handed_out(&a);
        h.handed_out(&a);
        h.handed_out(&b);
        h.sync(&s);
        assert_eq!((h.pending(&a), h.pending(&b)), (2, 1));
        // A listing read later, same beats: the counts stay. A new beat of a: a's count restarts.
        h.sync(&snap(11_000, vec![relay("a", 0, 2000), relay("b", 0, 1500)], false));
        assert_eq!((h.pending(&a), h.pending(&b)), (2, 1));
        h.sync(&snap(12_000, vec![relay("a", 0, 100), relay("b", 0, 2500)], false));
        assert_eq!((h.pending(&a), h.pending(&b)), (0, 1));
        // A relay gone from the listing is forgotten; one never listed is not counted.
        h.sync(&snap(12_000, vec![relay("a", 0, 100)], false));
        h.handed_out(&node("c"));
        assert_eq!((h.pending(&b), h.pending(&node("c")), h.len()), (0, 0, 1));
    }

    #[test]
    fn a_burst_between_beats_alternates_over_equal_relays_and_a_beat_resets_it() {
        let t0 = Instant::now();
        let mut d =
            Directory::new(snap(10_000, vec![relay("a", 10, 0), relay("b", 10, 0)], false), t0, STALE, MAX_STALE);
        for k in 0..20 {
            d.choose(t0, None, 1, k);
        }
        assert_eq!((d.pending(&node("a")), d.pending(&node("b"))), (10, 10));
        // a beats again (its allocations now include its handouts): its count starts at 0.
        d.update(snap(11_000, vec![relay("a", 20, 0), relay("b", 10, 1000)], false), t0);
        d.choose(t0, None, 1, 0);
        let (a, b) = (d.pending(&node("a")), d.pending(&node("b")));
        assert_eq!(a + b, 11);
        assert!(a <= 1 && b >= 10, "a {a} b {b}");
    }

    fn arb_relays() -> impl Strategy<Value = Vec<RelayStatus>> {
        prop::collection::vec((0u64..120, 0u64..9000, any::<bool>()), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (allocs, age, draining))| {
                    let mut r = relay(&format!("r{i}"), allocs, age);
                    r.beat.draining = draining;
                    r
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn no_relay_is_handed_out_past_its_age_limit(
            relays in arb_relays(),
            cached in any::<bool>(),
            elapsed_ms in 0u64..60_000,
            count in 0usize..6,
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(elapsed_ms);
            let mut d = Directory::new(snap(50_000, relays.clone(), cached), t0, STALE, MAX_STALE);
            let limit = if cached { 36_000 } else { 6000 };
            let got = d.choose(now, None, count, seed);
            for r in &got {
                let listed = relays.iter().find(|x| x.node_id == r.node_id).unwrap();
                prop_assert_eq!(r.age_ms, listed.age_ms + elapsed_ms);
                prop_assert!(r.age_ms <= limit && !r.beat.draining && r.beat.load() < 1.0);
            }
            let fit = relays.iter().filter(|r| r.age_ms + elapsed_ms <= limit && handout::eligible(r, u64::MAX)).count();
            prop_assert_eq!(got.len(), count.min(fit));
        }

        #[test]
        fn the_choice_is_stable_under_reordering_of_the_listing(
            (relays, shuffled) in arb_relays().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
            rounds in 1usize..30,
            count in 1usize..4,
            seed in any::<u64>(),
        ) {
            let t0 = Instant::now();
            let mut a = Directory::new(snap(50_000, relays.clone(), false), t0, STALE, MAX_STALE);
            let mut b = Directory::new(snap(50_000, shuffled, false), t0, STALE, MAX_STALE);
            for k in 0..rounds as u64 {
                let at = t0 + Duration::from_millis(k * 10);
                prop_assert_eq!(ids(&a.choose(at, None, count, seed ^ k)), ids(&b.choose(at, None, count, seed ^ k)));
            }
            for r in &relays {
                prop_assert_eq!(a.pending(&r.node_id), b.pending(&r.node_id));
            }
        }

        #[test]
        fn each_answer_takes_the_least_loaded_counting_what_was_handed_out(
            allocs in prop::collection::vec(0u64..60, 1..8),
            rounds in 1u64..200,
            seed in any::<u64>(),
        ) {
            let relays: Vec<_> = allocs.iter().enumerate().map(|(i, a)| relay(&format!("r{i}"), *a, 0)).collect();
            let t0 = Instant::now();
            let mut d = Directory::new(snap(50_000, relays.clone(), false), t0, STALE, MAX_STALE);
            for k in 0..rounds {
                // Load in 5 % steps (as handout ranks) with what this issuer handed out so far;
                // handouts rank a relay but never exclude it (all relays here are below capacity).
                let step = |r: &RelayStatus, extra: u64| (((r.beat.allocations + extra) as f64 / 100.0) * 20.0).floor() as u64;
                let least = relays.iter().map(|r| step(r, d.pending(&r.node_id))).min().unwrap();
                let got = d.choose(t0, None, 1, seed.wrapping_add(k));
                let picked = &got[0];
                let before = step(picked, d.pending(&picked.node_id) - 1);
                prop_assert_eq!(before, least, "{} was not among the least loaded", picked.node_id);
            }
            prop_assert_eq!(relays.iter().map(|r| d.pending(&r.node_id)).sum::<u64>(), rounds);
        }
    }
}
