//! The kernel fast path's driver: mirrors the engine's bound channels into turnkey-fastpath's XDP
//! maps from the engine's [`Event`]s, and hands what the kernel relayed back to the engine.
//!
//! - A channel enters the kernel when it is bound *and* its peer's permission is live, on an
//!   allocation the engine calls offloadable (UDP, no bandwidth limit configured, not stopped by a
//!   monthly cap), whose listener and relay addresses the fast path serves. Its kernel deadline is
//!   the earliest of the channel's, the permission's and the allocation's ends (the program checks
//!   it against `bpf_ktime_get_ns`); refreshes rewrite it.
//! - It leaves at `ChannelExpired`, `PermissionExpired`, `AllocationEnded` (expiry, delete,
//!   revocation, credential expiry, session kill, drain) and when a sweep finds the allocation no
//!   longer offloadable (monthly cap reached).
//! - Once per sweep interval, before the engine's own timer, the kernel's per-allocation counters
//!   ([`FastPath::sweep`] deltas) go into the engine ([`Engine::add_offloaded`]): the relayed
//!   counters, usage accounting and monthly caps then include kernel traffic, and the fleet's
//!   heartbeat load with them (it counts the usage the engine reports). Each read is a `bpf()`
//!   system call (0.4 to 0.7 µs: 43 ms for all 65,536 slots, `examples/sweep_cost.rs` of
//!   turnkey-fastpath), so a round over a shard's allocations is taken in bounded steps
//!   ([`MAX_READS_PER_STEP`], in allocation id order from where the last step stopped), and an
//!   allocation is read only if it had a channel in the kernel since its last read: skipping the
//!   others defers nothing, as the kernel counted nothing for them.
//!
//! One [`KernelPath`] serves every shard (its lock is taken on the control path only: events and
//! sweeps, never per datagram). Dropping the last handle drops the [`FastPath`], which detaches
//! the program.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Bound;
use std::sync::Arc;
#[allow(clippy::disallowed_types, reason = "control path only: engine events and sweeps, never per datagram")]
use std::sync::Mutex;
use std::time::Instant;

use turnkey_fastpath::{
    AllocCounters, AllocKey, AllocationEntry, ChannelBinding, FastPath, FastPathError, FastPathMetrics, KernelClock,
};

use crate::engine::{AllocationId, AllocationRef, Engine, Event, Offloaded};

/// Most kernel counter reads one step of a shard's collect round makes (a `bpf()` lookup and the
/// engine's accounting each, 1 to 2 µs in a relay: about 0.5 ms a step; with 1,024 a step,
/// `bench/fastpath-turns.sh` showed 193 turns over 1 ms in 10 s with 10,000 allocations, with
/// 256 it showed 24).
pub const MAX_READS_PER_STEP: usize = 256;
/// Most allocations one step visits (reads or not: a visit without a read is a map lookup in
/// user space, and each visited allocation's cap is rechecked after the engine's timer).
pub const MAX_VISITS_PER_STEP: usize = 8192;

/// The loaded, attached fast path shared by every shard.
pub struct KernelPath {
    #[allow(clippy::disallowed_types, reason = "control path only: engine events and sweeps")]
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelPath").finish_non_exhaustive()
    }
}

impl Drop for KernelPath {
    fn drop(&mut self) {
        let g = self.lock();
        let ifaces: Vec<String> = g.fp.attached().into_iter().map(|(i, _)| i).collect();
        tracing::info!(interfaces = ?ifaces, "fast path: detaching XDP");
    }
}

struct Inner {
    fp: FastPath,
    clock: KernelClock,
    metrics: FastPathMetrics,
    /// Listening addresses the program serves (added to the fast path's address map).
    listeners: HashSet<SocketAddr>,
    /// Relay IPs the program serves.
    relay_ips: HashSet<IpAddr>,
    /// By shard, then allocation id: a shard's collect round walks its own range in id order.
    mirrors: BTreeMap<(usize, AllocationId), Mirror>,
    /// Each shard's collect round in progress: the last allocation its previous step visited.
    rounds: HashMap<usize, AllocationId>,
}

/// One allocation as the kernel knows it.
struct Mirror {
    /// Its kernel slot, from [`FastPath::add_allocation`] (which owns the slots).
    key: AllocKey,
    alloc: AllocationRef,
    userid: Arc<str>,
    /// The relay socket's local address (what peers send to; the advertised one may be NATed).
    relayed: SocketAddr,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// Channels now in the kernel.
    bound: HashSet<u16>,
    /// Not offloadable for now (monthly cap): everything in user space.
    held: bool,
    /// A channel entered or left the kernel since the counters were last read: read them at
    /// the next visit even if none is there now (what the kernel counted before it left).
    dirty: bool,
}

impl Mirror {
    fn binding(&self, number: u16, peer: SocketAddr) -> ChannelBinding {
        ChannelBinding {
            client: self.alloc.tuple.client.0,
            listener: self.alloc.tuple.server,
            channel: number,
            relayed: self.relayed,
            peer,
            alloc: self.key,
        }
    }

    /// The channel's kernel deadline, or None while its peer has no live permission.
    fn deadline(&self, number: u16) -> Option<(SocketAddr, Instant)> {
        let (peer, chan) = *self.channels.get(&number)?;
        let perm = *self.permissions.get(&peer.ip())?;
        Some((peer, chan.min(perm).min(self.expires)))
    }
}

fn to_offloaded(c: &AllocCounters) -> Offloaded {
    Offloaded {
        to_peer_packets: c.to_peer_packets,
        to_peer_bytes: c.to_peer_bytes,
        to_client_packets: c.to_client_packets,
        to_client_bytes: c.to_client_bytes,
    }
}

impl KernelPath {
    /// Wraps a loaded and attached fast path serving `listeners` (UDP listening addresses) and
    /// `relay_ips` (their addresses must be in the fast path's address map already).
    pub fn new(
        fp: FastPath,
        metrics: FastPathMetrics,
        listeners: impl IntoIterator<Item = SocketAddr>,
        relay_ips: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        let inner = Inner {
            fp,
            clock: KernelClock::new(),
            metrics,
            listeners: listeners.into_iter().collect(),
            relay_ips: relay_ips.into_iter().collect(),
            mirrors: BTreeMap::new(),
            rounds: HashMap::new(),
        };
        #[allow(clippy::disallowed_types, reason = "control path only")]
        let inner = Mutex::new(inner);
        Self { inner }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Channels in the kernel now.
    pub fn channel_count(&self) -> usize {
        self.lock().fp.channel_count()
    }

    /// The allocations of shard `shard` with at least one channel in the kernel now (the
    /// session listing's `fast_path`; read at the shard's sweep).
    pub fn in_kernel(&self, shard: usize) -> HashSet<AllocationId> {
        let g = self.lock();
        g.mirrors.range(after_range(shard, None)).filter(|(_, m)| !m.bound.is_empty()).map(|((_, id), _)| *id).collect()
    }

    /// Mirrors one engine event of shard `shard` (`relayed_local`: the relay socket's local
    /// address, for `AllocationCreated`). Traffic the kernel counted for an allocation that ended
    /// goes into the engine here.
    pub fn on_event(&self, shard: usize, engine: &mut Engine, e: &Event, relayed_local: Option<SocketAddr>) {
        let mut g = self.lock();
        let inner = &mut *g;
        let id = (shard, e.alloc().id);
        match e {
            Event::AllocationCreated { alloc, expires } => {
                let Some(relayed) = relayed_local else { return };
                if !inner.listeners.contains(&alloc.tuple.server)
                    || !inner.relay_ips.contains(&relayed.ip())
                    || !engine.offloadable(alloc)
                {
                    return;
                }
                let Some(userid) = engine.userid(alloc) else { return };
                let entry = AllocationEntry { deadline: inner.clock.deadline(*expires), budget_bytes: None };
                let key = match inner.fp.add_allocation(entry) {
                    Ok(Some(key)) => key,
                    Ok(None) => {
                        tracing::debug!(id = %alloc.id, "fast path: every kernel slot in use, allocation stays in user space");
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(%err, id = %alloc.id, "fast path: allocation stays in user space");
                        return;
                    }
                };
                inner.mirrors.insert(
                    id,
                    Mirror {
                        key,
                        alloc: *alloc,
                        userid,
                        relayed,
                        expires: *expires,
                        permissions: HashMap::new(),
                        channels: HashMap::new(),
                        bound: HashSet::new(),
                        held: false,
                        dirty: false,
                    },
                );
            }
            Event::AllocationRefreshed { expires, .. } => {
                let Some(m) = inner.mirrors.get_mut(&id) else { return };
                m.expires = *expires;
                let entry = AllocationEntry { deadline: inner.clock.deadline(*expires), budget_bytes: None };
                if let Err(err) = inner.fp.update_allocation(m.key, entry) {
                    tracing::warn!(%err, "fast path: refreshing an allocation");
                }
                let all: Vec<u16> = m.channels.keys().copied().collect();
                inner.sync(id, &all);
            }
            Event::AllocationEnded { alloc, .. } => {
                let Some(m) = inner.mirrors.remove(&id) else { return };
                for number in &m.bound {
                    if let Some((peer, _)) = m.channels.get(number) {
                        let _ = inner.fp.unbind_channel(&m.binding(*number, *peer));
                    }
                }
                // What the kernel counted since this shard's last sweep; the slot is freed.
                match inner.fp.remove_allocation(m.key) {
                    Ok(rest) if !rest.is_zero() => {
                        inner.metrics.add_relayed(&rest);
                        engine.add_offloaded(alloc, &m.userid, to_offloaded(&rest));
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(%err, "fast path: reading an ended allocation's counters"),
                }
            }
            Event::PermissionInstalled { peer, expires, .. } | Event::PermissionRefreshed { peer, expires, .. } => {
                let Some(m) = inner.mirrors.get_mut(&id) else { return };
                m.permissions.insert(*peer, *expires);
                let of_peer: Vec<u16> =
                    m.channels.iter().filter(|(_, (p, _))| p.ip() == *peer).map(|(n, _)| *n).collect();
                inner.sync(id, &of_peer);
            }
            Event::PermissionExpired { peer, .. } => {
                let Some(m) = inner.mirrors.get_mut(&id) else { return };
                m.permissions.remove(peer);
                let of_peer: Vec<u16> =
                    m.channels.iter().filter(|(_, (p, _))| p.ip() == *peer).map(|(n, _)| *n).collect();
                inner.sync(id, &of_peer);
            }
            Event::ChannelBound { number, peer, expires, .. }
            | Event::ChannelRefreshed { number, peer, expires, .. } => {
                let Some(m) = inner.mirrors.get_mut(&id) else { return };
                m.channels.insert(number.0, (peer.0, *expires));
                inner.sync(id, &[number.0]);
            }
            Event::ChannelExpired { number, peer, .. } => {
                let Some(m) = inner.mirrors.get_mut(&id) else { return };
                m.channels.remove(&number.0);
                if m.bound.remove(&number.0) {
                    m.dirty = true;
                    let _ = inner.fp.unbind_channel(&m.binding(number.0, peer.0));
                }
            }
        }
    }

    /// One bounded step of shard `shard`'s collect round, before the engine's timer: reads the
    /// kernel's counters of the next allocations of the shard (in id order from where the last
    /// step stopped; at most [`MAX_READS_PER_STEP`] reads and [`MAX_VISITS_PER_STEP`] visits)
    /// and hands their traffic to the engine (relayed counts, usage, caps). The allocations it
    /// visited are left in `visited` for [`KernelPath::recheck`]. Returns whether the round is
    /// complete; if not, the shard calls again at its next step. An allocation created behind
    /// the cursor is read in the next round; one that ends mid-round was read at its end.
    pub fn collect(&self, shard: usize, engine: &mut Engine, visited: &mut Vec<AllocationId>) -> bool {
        let mut g = self.lock();
        let inner = &mut *g;
        let after = inner.rounds.get(&shard).copied();
        let step = plan_step(
            inner.mirrors.range(after_range(shard, after)).map(|((_, id), m)| (*id, !m.bound.is_empty() || m.dirty)),
        );
        for id in &step.reads {
            let Some(m) = inner.mirrors.get_mut(&(shard, *id)) else { continue };
            m.dirty = false;
            match inner.fp.sweep(m.key) {
                Ok(d) if !d.is_zero() => {
                    inner.metrics.add_relayed(&d);
                    engine.add_offloaded(&m.alloc, &m.userid, to_offloaded(&d));
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "fast path: reading counters"),
            }
        }
        visited.extend_from_slice(&step.visited);
        match step.next {
            Some(last) => {
                inner.rounds.insert(shard, last);
                false
            }
            None => {
                inner.rounds.remove(&shard);
                if let Ok(c) = inner.fp.counters() {
                    inner.metrics.observe_passes(&c);
                }
                true
            }
        }
    }

    /// After a shard's sweep step: of the allocations the step's [`KernelPath::collect`] visited,
    /// those the engine no longer lets the kernel relay (a monthly cap reached) leave the kernel;
    /// those allowed again come back.
    pub fn recheck(&self, shard: usize, engine: &Engine, visited: &[AllocationId]) {
        let mut g = self.lock();
        let inner = &mut *g;
        for id in visited {
            let id = (shard, *id);
            let Some(m) = inner.mirrors.get_mut(&id) else { continue };
            let held = !engine.offloadable(&m.alloc);
            if held != m.held {
                m.held = held;
                tracing::debug!(id = %id.1, held, "fast path: allocation's kernel relaying changes (cap)");
                let all: Vec<u16> = m.channels.keys().copied().collect();
                inner.sync(id, &all);
            }
        }
    }
}

/// A mirror key: shard, then allocation.
type MirrorKey = (usize, AllocationId);

/// The mirror keys of shard `shard` after allocation `after` (all of them for `None`).
fn after_range(shard: usize, after: Option<AllocationId>) -> (Bound<MirrorKey>, Bound<MirrorKey>) {
    let start = match after {
        Some(id) => Bound::Excluded((shard, id)),
        None => Bound::Included((shard, AllocationId(0))),
    };
    (start, Bound::Included((shard, AllocationId(u64::MAX))))
}

/// One step of a collect round, planned from the shard's allocations after the cursor (in id
/// order, each with whether its counters need a read).
#[derive(Debug, Default, PartialEq, Eq)]
struct Step {
    /// Every allocation the step visits, in order.
    visited: Vec<AllocationId>,
    /// Those whose counters it reads.
    reads: Vec<AllocationId>,
    /// The cursor for the next step: `None` when the round is complete.
    next: Option<AllocationId>,
}

fn plan_step(mirrors: impl Iterator<Item = (AllocationId, bool)>) -> Step {
    let mut step = Step::default();
    for (id, read) in mirrors {
        if step.reads.len() == MAX_READS_PER_STEP || step.visited.len() == MAX_VISITS_PER_STEP {
            step.next = step.visited.last().copied();
            return step;
        }
        step.visited.push(id);
        if read {
            step.reads.push(id);
        }
    }
    step
}

impl Inner {
    /// Brings channels `numbers` of mirror `id` in line with its state: in the kernel with their
    /// deadline when bound, permitted and not held; out of it otherwise.
    fn sync(&mut self, id: (usize, AllocationId), numbers: &[u16]) {
        for &number in numbers {
            let Some(m) = self.mirrors.get_mut(&id) else { return };
            let want = if m.held { None } else { m.deadline(number) };
            match want {
                Some((peer, until)) => {
                    let binding = m.binding(number, peer);
                    match self.fp.bind_channel(&binding, self.clock.deadline(until)) {
                        Ok(()) => {
                            m.dirty |= m.bound.insert(number);
                        }
                        Err(err) => {
                            // Mixed families (RFC 6156), a full map: this channel stays in user space.
                            tracing::debug!(%err, channel = number, "fast path: channel stays in user space");
                            m.dirty |= m.bound.remove(&number);
                            let _ = self.fp.unbind_channel(&binding);
                        }
                    }
                }
                None => {
                    if m.bound.remove(&number) {
                        m.dirty = true;
                        let _ = self.unbind_number(id, number);
                    }
                }
            }
        }
    }

    /// Removes channel `number` of mirror `id` (still in its `channels`) from the kernel.
    fn unbind_number(&mut self, id: (usize, AllocationId), number: u16) -> Result<(), FastPathError> {
        let Some(m) = self.mirrors.get(&id) else { return Ok(()) };
        match m.channels.get(&number) {
            Some((peer, _)) => self.fp.unbind_channel(&m.binding(number, *peer)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a whole round over `ids` (`read(id)`: whether it needs a read) the way the shard
    /// does, `mutate` changing the set between steps; returns the reads in order and the steps.
    fn round(
        ids: &mut BTreeMap<(usize, AllocationId), bool>,
        mut mutate: impl FnMut(usize, &mut BTreeMap<(usize, AllocationId), bool>),
    ) -> (Vec<AllocationId>, usize) {
        let (mut reads, mut after, mut steps) = (Vec::new(), None, 0);
        loop {
            let step = plan_step(ids.range(after_range(1, after)).map(|((_, id), r)| (*id, *r)));
            steps += 1;
            reads.extend(step.reads);
            match step.next {
                Some(last) => after = Some(last),
                None => return (reads, steps),
            }
            mutate(steps, ids);
        }
    }

    #[test]
    fn a_round_is_taken_in_bounded_steps_and_reads_each_allocation_once() {
        // Shard 1's 3,000 allocations with a channel in the kernel, beside shard 0's and 2's.
        let mut ids = BTreeMap::new();
        for shard in [0, 1, 2] {
            for i in 0..3000u64 {
                ids.insert((shard, AllocationId(i * 7 + shard as u64)), true);
            }
        }
        let (reads, steps) = round(&mut ids, |_, _| {});
        assert_eq!(steps, 3000usize.div_ceil(MAX_READS_PER_STEP), "{MAX_READS_PER_STEP} reads a step");
        let want: Vec<AllocationId> = (0..3000u64).map(|i| AllocationId(i * 7 + 1)).collect();
        assert_eq!(reads, want, "every allocation of the shard once, in id order, none of another shard");
    }

    #[test]
    fn allocations_without_kernel_traffic_are_visited_not_read() {
        let mut ids: BTreeMap<_, _> = (0..20_000u64).map(|i| ((1, AllocationId(i)), i % 100 == 0)).collect();
        let (reads, steps) = round(&mut ids, |_, _| {});
        assert_eq!(reads.len(), 200, "only the 200 with a channel in the kernel are read");
        assert_eq!(steps, 3, "visits are bounded too: 8,192 a step");
        let step = plan_step(ids.range(after_range(1, None)).map(|((_, id), r)| (*id, *r)));
        assert_eq!(step.visited.len(), MAX_VISITS_PER_STEP);
        assert_eq!(step.next, Some(AllocationId(MAX_VISITS_PER_STEP as u64 - 1)));
    }

    #[test]
    fn allocations_created_or_ended_mid_round_are_never_read_twice() {
        let mut ids: BTreeMap<_, _> = (100..2100u64).map(|i| ((1, AllocationId(i)), true)).collect();
        let (reads, _) = round(&mut ids, |step, ids| {
            if step == 1 {
                // Created behind the cursor (read next round) and ahead of it (read now); one
                // not yet visited ends (its counters were read at its end).
                ids.insert((1, AllocationId(5)), true);
                ids.insert((1, AllocationId(5000)), true);
                ids.remove(&(1, AllocationId(2000)));
            }
        });
        let mut sorted = reads.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), reads.len(), "no allocation read twice in a round");
        assert!(!reads.contains(&AllocationId(5)) && reads.contains(&AllocationId(5000)));
        assert!(!reads.contains(&AllocationId(2000)));
        assert_eq!(reads.len(), 2000, "1,999 of the first 2,000 and the new one ahead");
    }
}
