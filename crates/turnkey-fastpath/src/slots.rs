//! Slots: which of the kernel's allocation slots are live, the one record of it. Dense (array
//! indexes below a limit), never-used slots first, then those of ended allocations, the earliest
//! freed first, so that a slot is reused as late as possible; none left: the allocation stays in
//! user space. Plain bookkeeping: [`crate::FastPath`] owns it and clears the maps' slots.

use std::collections::{HashMap, VecDeque};

use crate::entry::AllocKey;
use crate::stats::AllocCounters;

#[derive(Debug)]
pub(crate) struct Slots {
    limit: u32,
    /// Slots below `next` have been handed out at least once.
    next: u32,
    /// Freed slots, the earliest freed first.
    free: VecDeque<u32>,
    /// Live slots, each with its counters as the last sweep read them.
    live: HashMap<u32, AllocCounters>,
}

impl Slots {
    /// `limit` slots: 0..limit.
    pub(crate) fn new(limit: u32) -> Self {
        Self { limit, next: 0, free: VecDeque::new(), live: HashMap::new() }
    }

    /// A slot for a new allocation (swept counters at zero), or `None` when every slot is live.
    pub(crate) fn take(&mut self) -> Option<AllocKey> {
        let slot = if self.next < self.limit {
            self.next += 1;
            self.next - 1
        } else {
            self.free.pop_front()?
        };
        self.live.insert(slot, AllocCounters::default());
        Some(AllocKey(slot))
    }

    /// Frees a live slot, returning its counters as last swept; `None` (and nothing freed) when it
    /// is not live, so a slot is never queued twice.
    pub(crate) fn give(&mut self, key: AllocKey) -> Option<AllocCounters> {
        let swept = self.live.remove(&key.0)?;
        self.free.push_back(key.0);
        Some(swept)
    }

    pub(crate) fn is_live(&self, key: AllocKey) -> bool {
        self.live.contains_key(&key.0)
    }

    /// A live slot's counters as the last sweep read them.
    pub(crate) fn swept_mut(&mut self, key: AllocKey) -> Option<&mut AllocCounters> {
        self.live.get_mut(&key.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_reused_as_late_as_possible() {
        let mut slots = Slots::new(4);
        assert_eq!(slots.take(), Some(AllocKey(0)));
        assert_eq!(slots.take(), Some(AllocKey(1)));
        assert!(slots.give(AllocKey(0)).is_some());
        // Fresh slots first, while any is left.
        assert_eq!(slots.take(), Some(AllocKey(2)));
        assert_eq!(slots.take(), Some(AllocKey(3)));
        assert!(slots.give(AllocKey(1)).is_some());
        assert_eq!(slots.take(), Some(AllocKey(0)), "the earliest freed");
        assert_eq!(slots.take(), Some(AllocKey(1)));
        assert_eq!(slots.take(), None, "all in use: the allocation stays in user space");
        assert!((0..4).all(|s| slots.is_live(AllocKey(s))));
    }

    #[test]
    fn only_live_slots_are_freed_once() {
        let mut slots = Slots::new(2);
        let a = slots.take().unwrap();
        assert!(slots.give(a).is_some());
        assert!(slots.give(a).is_none(), "freed twice");
        assert!(slots.give(AllocKey(1)).is_none(), "never handed out");
        assert!(slots.give(AllocKey(7)).is_none(), "beyond the limit");
        assert!(!slots.is_live(a));
        assert_eq!(slots.take(), Some(AllocKey(1)));
        assert_eq!(slots.take(), Some(a));
        assert_eq!(slots.take(), None, "the double free queued the slot once");
    }

    #[test]
    fn a_reused_slot_starts_with_nothing_swept() {
        let mut slots = Slots::new(1);
        let a = slots.take().unwrap();
        slots.swept_mut(a).unwrap().to_peer_bytes = 42;
        assert_eq!(slots.give(a).unwrap().to_peer_bytes, 42);
        assert_eq!(slots.swept_mut(a), None);
        assert_eq!(slots.take(), Some(a));
        assert_eq!(slots.swept_mut(a).copied(), Some(AllocCounters::default()));
    }
}
