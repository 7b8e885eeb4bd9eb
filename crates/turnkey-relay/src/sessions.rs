//! The node-wide live session table: each shard publishes a snapshot of its allocations at its
//! sweep (every [`crate::engine::SWEEP_INTERVAL`], never per packet) and applies the operator's
//! kill requests queued for it. Listing reads the last snapshots (one lock, then a clone of an
//! `Arc` per shard); nothing here is on the data path.

use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "session table: locked by each shard once per sweep and by an operator's listing, never per packet"
)]
use std::sync::Mutex;

use crate::engine::{AllocationId, Engine, RelayPorts, SessionSnapshot};
use crate::types::Now;

/// One shard's place in the table (from [`SessionTable::register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSlot(usize);

#[derive(Debug, Default)]
struct Slot {
    sessions: Arc<Vec<SessionSnapshot>>,
    kills: Vec<AllocationId>,
    /// The snapshot before the current one: its buffer is reused once no listing holds it.
    spare: Arc<Vec<SessionSnapshot>>,
}

/// Every shard's last snapshot and its pending kills. (Allocation ids come from the engine's
/// [`Shared`](crate::engine::Shared) state, random-prefixed per process.)
#[derive(Debug, Default)]
#[allow(clippy::disallowed_types, reason = "see the import")]
pub struct SessionTable {
    slots: Mutex<Vec<Slot>>,
}

impl SessionTable {
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

    /// The shard's sweep: ends the allocations an operator asked to end ([`Engine::kill`]: each
    /// emits its `AllocationEnded` like any other end), then publishes a fresh snapshot of the rest.
    pub fn sync(&self, slot: ShardSlot, engine: &mut Engine, ports: &mut dyn RelayPorts, now: Now) {
        for id in self.take_kills(slot) {
            engine.kill(id, ports);
        }
        self.publish(slot, |buf| engine.snapshot_sessions(now, buf));
    }

    /// The kills queued for the shard since its last sweep.
    pub fn take_kills(&self, slot: ShardSlot) -> Vec<AllocationId> {
        std::mem::take(&mut self.lock()[slot.0].kills)
    }

    /// Publishes the shard's snapshot, written by `fill` into a cleared buffer: the previous
    /// snapshot's buffer is reused when no listing holds it any more.
    pub fn publish(&self, slot: ShardSlot, fill: impl FnOnce(&mut Vec<SessionSnapshot>)) {
        let spare = std::mem::take(&mut self.lock()[slot.0].spare);
        let mut buf = Arc::try_unwrap(spare).unwrap_or_default();
        buf.clear();
        fill(&mut buf);
        let mut slots = self.lock();
        let s = &mut slots[slot.0];
        s.spare = std::mem::replace(&mut s.sessions, Arc::new(buf));
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

    use super::*;
    use crate::types::{ClientAddr, FiveTuple, Transport};

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
        }
    }

    #[test]
    fn a_kill_is_queued_for_the_shard_that_listed_it_and_taken_at_its_next_sweep() {
        let t = SessionTable::default();
        let (a, b) = (t.register(), t.register());
        assert!(t.is_empty(), "nothing is listed before a sweep");
        t.publish(a, |buf| buf.push(session(1)));
        t.publish(b, |buf| buf.extend([session(2), session(3)]));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(AllocationId(2)).map(|s| s.id), Some(AllocationId(2)));
        assert!(t.request_end(AllocationId(2)));
        assert!(t.is_listed(AllocationId(2)), "ended at the shard's next sweep, not before");
        assert_eq!(t.take_kills(a), vec![]);
        assert_eq!(t.take_kills(b), vec![AllocationId(2)]);
        assert_eq!(t.take_kills(b), vec![], "taken once");
        t.publish(b, |buf| buf.push(session(3)));
        assert!(!t.is_listed(AllocationId(2)));
        assert!(!t.request_end(AllocationId(2)), "an id no shard lists is not queued");
        let mut ids: Vec<_> = t.list().iter().map(|s| s.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 3]);
        t.clear(a);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unknown_ids_are_not_queued() {
        let t = SessionTable::default();
        t.register();
        assert!(!t.request_end(AllocationId(7)));
        assert!(t.is_empty());
    }
}
