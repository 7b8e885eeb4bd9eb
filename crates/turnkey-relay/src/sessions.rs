//! The node-wide live session table: each shard publishes a snapshot of its allocations at its
//! sweep (every [`crate::engine::SWEEP_INTERVAL`], never per packet) and applies the operator's
//! kill requests queued for it. Listing reads the last snapshots (one lock, then a clone of an
//! `Arc` per shard); nothing here is on the data path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "session table: locked by each shard once per sweep and by an operator's listing, never per packet"
)]
use std::sync::Mutex;

use crate::engine::{EndReason, Engine, RelayPorts, SessionId, SessionSnapshot};
use crate::types::Now;

/// One shard's place in the table (from [`SessionTable::register`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSlot(usize);

#[derive(Debug, Default)]
struct Slot {
    sessions: Arc<Vec<SessionSnapshot>>,
    kills: Vec<SessionId>,
    /// The snapshot before the current one: its buffer is reused once no listing holds it.
    spare: Arc<Vec<SessionSnapshot>>,
}

/// Every shard's last snapshot and its pending kills; hands out allocation ids.
#[derive(Debug)]
#[allow(clippy::disallowed_types, reason = "see the import")]
pub struct SessionTable {
    prefix: u64,
    next: AtomicU64,
    slots: Mutex<Vec<Slot>>,
}

impl Default for SessionTable {
    fn default() -> Self {
        Self::new(0)
    }
}

impl SessionTable {
    /// A table whose ids are `prefix` (the high 32 bits; random per process in the binary, so
    /// two relays of a fleet do not hand out the same id) followed by a counter.
    #[allow(clippy::disallowed_types, reason = "see the import")]
    pub fn new(prefix: u32) -> Self {
        Self { prefix: u64::from(prefix) << 32, next: AtomicU64::new(1), slots: Mutex::default() }
    }

    /// A fresh allocation id.
    pub fn next_id(&self) -> SessionId {
        SessionId(self.prefix | (self.next.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF))
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

    /// The shard's sweep: ends the allocations an operator asked to end, then publishes a fresh
    /// snapshot of the rest. The previous snapshot's buffer is reused when no listing holds it.
    pub fn sync(&self, slot: ShardSlot, engine: &mut Engine, ports: &mut dyn RelayPorts, now: Now) {
        let (kills, spare) = {
            let mut slots = self.lock();
            let s = &mut slots[slot.0];
            (std::mem::take(&mut s.kills), std::mem::take(&mut s.spare))
        };
        for id in kills {
            engine.end_session(id, EndReason::Killed, ports);
        }
        let mut buf = Arc::try_unwrap(spare).unwrap_or_default();
        engine.snapshot_sessions(now, &mut buf);
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
    pub fn get(&self, id: SessionId) -> Option<SessionSnapshot> {
        self.snapshots().iter().find_map(|s| s.iter().find(|x| x.id == id).cloned())
    }

    /// Queues the end of session `id` for the shard that listed it; it ends at that shard's next
    /// sweep. False when no shard lists it.
    pub fn request_end(&self, id: SessionId) -> bool {
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
    pub fn is_listed(&self, id: SessionId) -> bool {
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

    #[test]
    fn ids_carry_the_prefix_and_never_repeat() {
        let t = SessionTable::new(0xABCD_0001);
        let a = t.next_id();
        let b = t.next_id();
        assert_ne!(a, b);
        assert_eq!(a.0 >> 32, 0xABCD_0001);
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(SessionId::parse(&a.to_string()), Some(a));
        assert_eq!(SessionId::parse("ABCD00010000000"), None);
        assert_eq!(SessionId::parse("xyz"), None);
    }

    #[test]
    fn unknown_ids_are_not_queued() {
        let t = SessionTable::default();
        t.register();
        assert!(!t.request_end(SessionId(7)));
        assert!(t.is_empty());
    }
}
