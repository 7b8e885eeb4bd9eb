//! A shard's session snapshot, built a bounded slice per turn of the shard's loop.
//!
//! The node-wide listing (`sessions`) wants every allocation of the shard once per
//! [`SWEEP_INTERVAL`]. Building it in one go costs time proportional to every allocation the
//! shard holds (10,000 allocations: milliseconds, every half second), during which the shard
//! relays nothing. A [`SnapshotRound`] instead appends at most [`SNAPSHOT_SLOTS_PER_STEP`]
//! allocation slots per call ([`Engine::snapshot_sessions_from`]), asks to be called again at
//! once until the last slot is reached, and only then publishes the whole snapshot. (The engine's
//! own sweep is cut into steps the same way: `MAX_VISITED_PER_SWEEP`.)

use std::collections::HashSet;
use std::time::Instant;

use crate::engine::{AllocationId, Engine, RelayPorts, SessionSnapshot, SWEEP_INTERVAL};
use crate::sessions::{SessionTable, ShardSlot};
use crate::types::Now;

/// Allocation slots one step of the snapshot copies at most.
pub const SNAPSHOT_SLOTS_PER_STEP: usize = 1024;

/// One shard's snapshot in progress (or the time the next one starts). The shard drives it
/// through [`SnapshotRound::sweep`] and [`SnapshotRound::due`], the one place that knows the
/// listing can be off.
#[derive(Debug)]
pub struct SnapshotRound {
    /// The slot the next step starts at; `None`: no round in progress.
    at: Option<usize>,
    /// When the next round starts (in the past while a round is in progress).
    next: Instant,
    /// The snapshot being built (between rounds: an empty buffer, reused).
    building: Vec<SessionSnapshot>,
    /// The snapshot the table handed back at the last publish (the one before the previous),
    /// dropped [`SNAPSHOT_SLOTS_PER_STEP`] entries per step of the next round, whose steps are
    /// at least as many as its slices; its emptied buffer is the building buffer of the round
    /// after. (Dropped whole, it cost one step 2.9 ms at 50,000 allocations.)
    stale: Vec<SessionSnapshot>,
    /// The allocations the kernel fast path relays a channel of, read when the round started.
    in_kernel: HashSet<AllocationId>,
}

impl SnapshotRound {
    /// No round yet; the first starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self { at: None, next: now, building: Vec::new(), stale: Vec::new(), in_kernel: HashSet::new() }
    }

    /// Starts a new round at `now` (the one in progress, if any, is dropped): after a kill.
    fn restart(&mut self, now: Instant) {
        self.at = None;
        self.next = now;
    }

    /// When the next step is due: at once while a round is in progress; never when the table is
    /// [off](SessionTable::off).
    pub fn due(&self, table: &SessionTable) -> Option<Instant> {
        table.is_on().then_some(self.next)
    }

    /// The listing's part of one sweep step of a shard, after the engine's timer: ends the
    /// allocations the operator asked to end ([`Engine::kill`]: each emits its
    /// `AllocationEnded` like any other end; a kill restarts the round, so the listing drops
    /// them at its end rather than an interval later), then one [`SnapshotRound::step`].
    /// Nothing at all when the table is [off](SessionTable::off): no kill can be queued there
    /// and no snapshot is taken. Returns whether a round is still in progress.
    pub fn sweep(
        &mut self,
        now: Now,
        engine: &mut Engine,
        ports: &mut dyn RelayPorts,
        (table, slot): (&SessionTable, ShardSlot),
        in_kernel: impl FnOnce() -> HashSet<AllocationId>,
    ) -> bool {
        if !table.is_on() {
            return false;
        }
        let mut killed = false;
        for id in table.take_kills(slot) {
            killed |= engine.kill(id, ports);
        }
        if killed {
            self.restart(now.mono);
        }
        self.step(now, engine, (table, slot), in_kernel)
    }

    /// One step: starts a round if one is due (`in_kernel` is then asked which allocations the
    /// kernel relays), copies the next slice of slots, and publishes the snapshot into `table`
    /// when the last slot was copied. Returns whether a round is still in progress.
    fn step(
        &mut self,
        now: Now,
        engine: &Engine,
        (table, slot): (&SessionTable, ShardSlot),
        in_kernel: impl FnOnce() -> HashSet<AllocationId>,
    ) -> bool {
        let from = match self.at {
            Some(at) => at,
            None if now.mono < self.next => return false,
            None => {
                // Empty, unless a kill restarted the round: its partial copy is dropped a slice
                // at a time with the stale one when that one is gone already, else at once
                // (rare: an operator's kill).
                if self.stale.is_empty() {
                    std::mem::swap(&mut self.stale, &mut self.building);
                }
                self.building.clear();
                self.in_kernel = in_kernel();
                0
            }
        };
        self.stale.truncate(self.stale.len().saturating_sub(SNAPSHOT_SLOTS_PER_STEP));
        let copied = self.building.len();
        let next = engine.snapshot_sessions_from(now, from, SNAPSHOT_SLOTS_PER_STEP, &mut self.building);
        if !self.in_kernel.is_empty() {
            for s in &mut self.building[copied..] {
                s.fast_path = self.in_kernel.contains(&s.id);
            }
        }
        self.at = next;
        if next.is_none() {
            let old = table.publish(slot, std::mem::take(&mut self.building));
            // Drained by this round's steps (one per 1,024 slots; the stale snapshot listed at
            // most as many allocations as there are slots): an empty buffer to build into next.
            self.building = std::mem::replace(&mut self.stale, old);
            self.building.clear();
            self.next = now.mono + SWEEP_INTERVAL;
        }
        self.at.is_some()
    }
}
