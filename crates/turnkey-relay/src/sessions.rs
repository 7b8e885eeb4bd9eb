//! The node-wide live session table: each shard publishes a snapshot of its allocations at its
//! sweep (every [`crate::engine::SWEEP_INTERVAL`], never per packet, built in bounded steps by
//! [`SnapshotRound`](crate::snapshot_round::SnapshotRound)) and applies the operator's kill
//! requests queued for it. Listing reads the last snapshots (one lock, then a clone of an
//! `Arc` per shard); nothing here is on the data path. A table made with [`SessionTable::off`]
//! (`[relay] sessions = false`) takes no snapshot and lists nothing.

use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "session table: locked by each shard once per sweep and by an operator's listing, never per packet"
)]
use std::sync::Mutex;

use crate::engine::{AllocationId, SessionSnapshot};

/// One shard's place in the table (from [`SessionTable::register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSlot(usize);

#[derive(Debug, Default)]
struct Slot {
    sessions: Arc<Vec<SessionSnapshot>>,
    kills: Vec<AllocationId>,
    /// The snapshot before the current one: handed back at the next publish (its buffer reused
    /// once no listing holds it).
    spare: Arc<Vec<SessionSnapshot>>,
}

/// Every shard's last snapshot and its pending kills. (Allocation ids come from the engine's
/// [`Shared`](crate::engine::Shared) state, random-prefixed per process.)
#[derive(Debug)]
#[allow(clippy::disallowed_types, reason = "see the import")]
pub struct SessionTable {
    slots: Mutex<Vec<Slot>>,
    on: bool,
}

impl Default for SessionTable {
    /// A table the shards publish to.
    #[allow(clippy::disallowed_types, reason = "see the import")]
    fn default() -> Self {
        Self { slots: Mutex::default(), on: true }
    }
}

impl SessionTable {
    /// A table that stays empty: shards skip the snapshot at their sweep (the listing is off).
    pub fn off() -> Self {
        Self { on: false, ..Self::default() }
    }

    /// Whether shards publish their sessions here (false for [`SessionTable::off`]).
    pub fn is_on(&self) -> bool {
        self.on
    }

    #[allow(clippy::disallowed_types, reason = "see the import")]
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more shard.
    pub fn register(&self) -> ShardSlot {
        let mut slots = self.lock();
        slots.push(Slot::default());
        ShardSlot(slots.len() - 1)
    }

    /// The kills queued for the shard since its last sweep.
    pub fn take_kills(&self, slot: ShardSlot) -> Vec<AllocationId> {
        std::mem::take(&mut self.lock()[slot.0].kills)
    }

    /// Publishes the shard's `snapshot` and hands back the buffer of the snapshot before the
    /// previous one as it is, still full (the caller empties it a slice at a time and reuses
    /// it: dropping a whole snapshot at once costs time proportional to the allocations), or an
    /// empty one while a listing still holds that snapshot (the listing frees it).
    pub fn publish(&self, slot: ShardSlot, snapshot: Vec<SessionSnapshot>) -> Vec<SessionSnapshot> {
        let old = {
            let mut slots = self.lock();
            let s = &mut slots[slot.0];
            let previous = std::mem::replace(&mut s.sessions, Arc::new(snapshot));
            std::mem::replace(&mut s.spare, previous)
        };
        Arc::try_unwrap(old).unwrap_or_default()
    }

    /// Empties the shard's snapshot (the shard stopped).
    pub fn clear(&self, slot: ShardSlot) {
        self.lock()[slot.0] = Slot::default();
    }

    /// Every shard's last snapshot (cheap: one `Arc` per shard).
    pub fn snapshots(&self) -> Vec<Arc<Vec<SessionSnapshot>>> {
        self.lock().iter().map(|s| s.sessions.clone()).collect()
    }

    /// Every live session, unordered (a copy of the last snapshots).
    pub fn list(&self) -> Vec<SessionSnapshot> {
        self.snapshots().iter().flat_map(|s| s.iter().cloned()).collect()
    }

    /// The live session `id`, if a shard listed it at its last sweep.
    pub fn get(&self, id: AllocationId) -> Option<SessionSnapshot> {
        self.snapshots().iter().find_map(|s| s.iter().find(|x| x.id == id).cloned())
    }

    /// Queues the end of session `id` for the shard that listed it; it ends at that shard's next
    /// sweep. False when no shard lists it.
    pub fn request_end(&self, id: AllocationId) -> bool {
        let mut slots = self.lock();
        match slots.iter_mut().find(|s| s.sessions.iter().any(|x| x.id == id)) {
            Some(s) => {
                s.kills.push(id);
                true
            }
            None => false,
        }
    }

    /// Whether a shard listed `id` at its last sweep.
    pub fn is_listed(&self, id: AllocationId) -> bool {
        self.lock().iter().any(|s| s.sessions.iter().any(|x| x.id == id))
    }

    /// Live sessions at the last sweeps.
    pub fn len(&self) -> usize {
        self.lock().iter().map(|s| s.sessions.len()).sum()
    }

    /// Whether no session is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::engine::{Engine, RelayPorts};
    use crate::snapshot_round::SnapshotRound;
    use crate::types::{ClientAddr, FiveTuple, Now, Transport};

    fn session(id: u64) -> SessionSnapshot {
        SessionSnapshot {
            id: AllocationId(id),
            username: "1800000000:k:alice".into(),
            userid: "k:alice".into(),
            tuple: FiveTuple {
                transport: Transport::Udp,
                client: ClientAddr("203.0.113.5:5555".parse().unwrap()),
                server: "192.0.2.10:3478".parse().unwrap(),
            },
            relayed: "192.0.2.10:50000".parse().unwrap(),
            permissions: 1,
            channels: 0,
            created: 1_800_000_000,
            expires: 1_800_000_600,
            bytes_client_to_peer: 0,
            bytes_peer_to_client: 0,
            packets_client_to_peer: 0,
            packets_peer_to_client: 0,
            fast_path: false,
        }
    }

    #[test]
    fn a_kill_is_queued_for_the_shard_that_listed_it_and_taken_at_its_next_sweep() {
        let t = SessionTable::default();
        let (a, b) = (t.register(), t.register());
        assert!(t.is_empty(), "nothing is listed before a sweep");
        assert!(t.publish(a, vec![session(1)]).is_empty());
        assert!(t.publish(b, vec![session(2), session(3)]).is_empty());
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(AllocationId(2)).map(|s| s.id), Some(AllocationId(2)));
        assert!(t.request_end(AllocationId(2)));
        assert!(t.is_listed(AllocationId(2)), "ended at the shard's next sweep, not before");
        assert_eq!(t.take_kills(a), vec![]);
        assert_eq!(t.take_kills(b), vec![AllocationId(2)]);
        assert_eq!(t.take_kills(b), vec![], "taken once");
        assert!(t.publish(b, vec![session(3)]).is_empty(), "the first snapshot is the spare now");
        assert!(!t.is_listed(AllocationId(2)));
        assert!(!t.request_end(AllocationId(2)), "an id no shard lists is not queued");
        let mut ids: Vec<_> = t.list().iter().map(|s| s.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3]);
        t.clear(a);
        assert_eq!(t.len(), 1);
    }

    #[derive(Default)]
    struct NumberedPorts(u32, Vec<crate::types::RelayHandle>);

    impl RelayPorts for NumberedPorts {
        fn bind(
            &mut self,
            _: std::time::Instant,
            _: bool,
            _: crate::engine::PortRequest,
        ) -> Option<crate::engine::RelayBinding> {
            self.0 += 1;
            let advertised = std::net::SocketAddr::from(([192, 0, 2, 10], 50_000 + self.0 as u16));
            Some(crate::engine::RelayBinding {
                handle: crate::types::RelayHandle(self.0),
                advertised,
                reservation: None,
            })
        }
        fn release(&mut self, h: crate::types::RelayHandle) {
            self.1.push(h);
        }
    }

    /// An engine holding two allocations of `k:alice` (authenticated Allocates), events drained.
    fn engine_with_two_allocations() -> (Engine, NumberedPorts, Now) {
        use std::net::SocketAddr;
        use std::time::{Duration, Instant};

        use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT, ATTR_USERNAME};
        use stun::integrity::MessageIntegrity;
        use stun::message::{Message, MessageType, Setter, CLASS_REQUEST, METHOD_ALLOCATE};
        use stun::textattrs::TextAttribute;
        use turnkey_auth::{RevocationSet, Secret, SecretRing};

        use crate::engine::{EngineConfig, Shared};
        use crate::policy::PeerPolicy;

        let ring = SecretRing::new(vec![Secret::new("sessions-test-secret")]).unwrap();
        let mut cfg = EngineConfig::new("r", ring.clone(), PeerPolicy::new(vec![], vec![], vec![]));
        cfg.unauth_replies_per_sec = 0;
        let nonce_key = cfg.nonce_key.clone();
        #[allow(clippy::disallowed_methods, reason = "a test's arbitrary start")]
        let now = Now::new(Instant::now(), Duration::from_secs(1_800_000_000));
        let shared = Arc::new(Shared::new(RevocationSet::new()).with_id_prefix(0xAB));
        let mut engine = Engine::new(Arc::new(cfg), shared, now.mono);
        let mut ports = NumberedPorts::default();
        for port in [5555, 6666] {
            let client = SocketAddr::from(([203, 0, 113, 5], port));
            let c = ring.mint("k:alice", now.unix(), 600).unwrap();
            let mut m = Message::new();
            m.set_type(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST));
            m.new_transaction_id().unwrap();
            m.write_header();
            m.add(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            TextAttribute::new(ATTR_USERNAME, c.username.clone()).add_to(&mut m).unwrap();
            TextAttribute::new(ATTR_REALM, "r".to_owned()).add_to(&mut m).unwrap();
            TextAttribute::new(ATTR_NONCE, nonce_key.issue(now.unix(), client)).add_to(&mut m).unwrap();
            MessageIntegrity::new_long_term_integrity(c.username, "r".to_owned(), c.password).add_to(&mut m).unwrap();
            let tuple = FiveTuple { client: ClientAddr(client), ..session(0).tuple };
            assert!(engine.handle_client(now, tuple, &m.raw, &mut ports).is_some());
            assert!(engine.has_allocation(&tuple));
        }
        while engine.poll_event().is_some() {}
        (engine, ports, now)
    }

    /// What the shard does with the listing at each sweep step ([`SnapshotRound::sweep`]), steps
    /// run until the round is published; `now` then moves one sweep interval on, so the next
    /// call starts a new round.
    fn sweep(
        round: &mut SnapshotRound,
        now: &mut Now,
        engine: &mut Engine,
        ports: &mut NumberedPorts,
        (table, slot): (&SessionTable, ShardSlot),
        in_kernel: impl Fn() -> HashSet<AllocationId>,
    ) {
        while round.sweep(*now, engine, ports, (table, slot), &in_kernel) {}
        *now = now.advance(crate::engine::SWEEP_INTERVAL);
    }

    #[test]
    fn a_kill_through_the_table_ends_one_allocation_with_one_event_and_the_killed_label() {
        use crate::engine::{EndReason, Event};
        use crate::metrics::{RelayMetrics, StatsExporter};

        let (mut engine, mut ports, mut now) = engine_with_two_allocations();
        let table = SessionTable::default();
        let slot = table.register();
        let mut round = SnapshotRound::new(now.mono);
        sweep(&mut round, &mut now, &mut engine, &mut ports, (&table, slot), HashSet::new);
        let listed = table.list();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|s| !s.fast_path), "nothing in the kernel");
        // The driver's mark: one allocation's channel relayed by the kernel.
        let kernel = listed[1].id;
        sweep(&mut round, &mut now, &mut engine, &mut ports, (&table, slot), || HashSet::from([kernel]));
        let listed = table.list();
        let marked: Vec<bool> = listed.iter().map(|s| s.fast_path).collect();
        assert_eq!(marked, [false, true], "only the allocation the kernel relays is marked");
        assert!(listed.iter().all(|s| s.id.0 >> 32 == 0xAB && &*s.userid == "k:alice"), "{listed:?}");
        let id = listed[0].id;
        assert!(table.request_end(id));
        assert_eq!(engine.allocation_count(), 2, "ended at the shard's next sweep, not before");
        // One step at the same instant: the kill restarts the round, which drops it at once.
        assert!(!round.sweep(now, &mut engine, &mut ports, (&table, slot), HashSet::new));
        assert_eq!(engine.allocation_count(), 1);
        assert_eq!(ports.1.len(), 1, "its relay socket was released");
        let ended: Vec<_> = std::iter::from_fn(|| engine.poll_event())
            .filter_map(|e| match e {
                Event::AllocationEnded { alloc, reason } => Some((alloc.id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(ended, [(id, EndReason::Killed)], "exactly one AllocationEnded");
        assert!(!table.is_listed(id) && table.len() == 1);
        let m = RelayMetrics::unregistered();
        StatsExporter::default().export(engine.stats(), &m);
        assert_eq!(m.allocations_ended.with_label_values(&["killed"]).get(), 1);
        assert_eq!(m.allocations_ended.with_label_values(&["expired"]).get(), 0);
    }

    #[test]
    fn a_table_that_is_off_takes_no_snapshot_and_queues_no_end() {
        assert!(SessionTable::default().is_on());
        let t = SessionTable::off();
        assert!(!t.is_on());
        let slot = t.register();
        let (mut engine, mut ports, mut now) = engine_with_two_allocations();
        let mut round = SnapshotRound::new(now.mono);
        assert_eq!(round.due(&t), None, "no snapshot step is ever due");
        let marked = std::cell::Cell::new(0);
        for _ in 0..2 {
            sweep(&mut round, &mut now, &mut engine, &mut ports, (&t, slot), || {
                marked.set(marked.get() + 1);
                HashSet::new()
            });
        }
        assert!(t.is_empty() && t.list().is_empty(), "no snapshot of the two allocations");
        assert_eq!(marked.get(), 0, "no allocation was looked at");
        assert_eq!(engine.allocation_count(), 2);
        let id = {
            let on = SessionTable::default();
            let s = on.register();
            let mut on_round = SnapshotRound::new(now.mono);
            assert_eq!(on_round.due(&on), Some(now.mono));
            sweep(&mut on_round, &mut now, &mut engine, &mut ports, (&on, s), HashSet::new);
            on.list()[0].id
        };
        assert!(!t.request_end(id), "nothing listed, so nothing can be ended through it");
        sweep(&mut round, &mut now, &mut engine, &mut ports, (&t, slot), HashSet::new);
        assert_eq!(engine.allocation_count(), 2);
    }

    #[test]
    fn a_publish_hands_back_the_snapshot_before_the_previous_one_whole_unless_a_listing_holds_it() {
        let t = SessionTable::default();
        let a = t.register();
        assert!(t.publish(a, vec![session(1)]).is_empty());
        assert!(t.publish(a, vec![session(2)]).is_empty());
        let back = t.publish(a, vec![session(3)]);
        assert_eq!(back, [session(1)], "not cleared: the shard drops it a slice at a time");
        assert_eq!(t.list(), [session(3)]);
        // A listing that still holds the snapshot before the previous one keeps it.
        let held = t.snapshots();
        assert_eq!(t.publish(a, vec![session(4)]), [session(2)]);
        assert!(t.publish(a, vec![session(5)]).is_empty(), "session 3's snapshot is held by the listing");
        assert_eq!(*held[0], [session(3)]);
    }

    #[test]
    fn unknown_ids_are_not_queued() {
        let t = SessionTable::default();
        t.register();
        assert!(!t.request_end(AllocationId(7)));
        assert!(t.is_empty());
    }
}
