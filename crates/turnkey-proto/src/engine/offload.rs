//! Traffic relayed outside the engine: a kernel fast path (turnkey-fastpath's XDP program)
//! relays ChannelData of bound channels the driver mirrored into it from the engine's
//! [`Event`](super::Event)s. The driver asks which allocations may be mirrored
//! ([`Engine::offloadable`]) and hands back what the kernel counted ([`Engine::add_offloaded`]),
//! so relayed counts, usage accounting and monthly caps are the same as if the engine had relayed
//! every datagram itself.

use std::sync::Arc;

use super::event::AllocationRef;
use super::stats::Direction;
use super::Engine;
use crate::usage::UsageDelta;

/// What another data path relayed for one allocation since it last reported (payload bytes, as
/// the engine counts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloaded {
    /// Datagrams client to peer.
    pub to_peer_packets: u64,
    /// Payload bytes client to peer.
    pub to_peer_bytes: u64,
    /// Datagrams peer to client.
    pub to_client_packets: u64,
    /// Payload bytes peer to client.
    pub to_client_bytes: u64,
}

impl Engine {
    fn live_index(&self, alloc: &AllocationRef) -> Option<usize> {
        let idx = *self.by_relay.get(&alloc.relay)?;
        self.allocs[idx].as_ref().filter(|a| a.aref().id == alloc.id).map(|_| idx)
    }

    /// Whether `alloc` may be relayed outside the engine: live here, over UDP, not stopped by its
    /// key's monthly cap, and no per-allocation bandwidth limit configured (a limited allocation
    /// stays in user space, where its token bucket decides).
    pub fn offloadable(&self, alloc: &AllocationRef) -> bool {
        self.cfg.bandwidth_limit == 0
            && alloc.tuple.transport == crate::types::Transport::Udp
            && self.live_index(alloc).and_then(|i| self.allocs[i].as_ref()).is_some_and(|a| !a.capped())
    }

    /// The userid that owns live allocation `alloc` (the driver keeps it to report traffic
    /// counted after the allocation ended).
    pub fn userid(&self, alloc: &AllocationRef) -> Option<Arc<str>> {
        let idx = self.live_index(alloc)?;
        self.allocs[idx].as_ref().map(|a| a.owner().userid.clone())
    }

    /// Counts what another data path relayed for `alloc` (owned by `userid`): in the relayed
    /// counts, and for usage, on the allocation when it is live, else straight into the next
    /// usage report (traffic the kernel relayed between the last reading and the allocation's
    /// end).
    pub fn add_offloaded(&mut self, alloc: &AllocationRef, userid: &Arc<str>, o: Offloaded) {
        let t = alloc.tuple.transport;
        self.stats.relayed_many(Direction::ClientToPeer, t, o.to_peer_packets, o.to_peer_bytes);
        self.stats.relayed_many(Direction::PeerToClient, t, o.to_client_packets, o.to_client_bytes);
        match self.live_index(alloc).and_then(|i| self.allocs[i].as_mut()) {
            Some(a) => {
                a.add_offloaded(Direction::ClientToPeer, o.to_peer_packets, o.to_peer_bytes);
                a.add_offloaded(Direction::PeerToClient, o.to_client_packets, o.to_client_bytes);
            }
            None if o.to_peer_bytes + o.to_client_bytes > 0 => {
                let delta = UsageDelta { client_to_peer: o.to_peer_bytes, peer_to_client: o.to_client_bytes };
                self.usage_batch.push((userid.clone(), delta));
                self.flush_usage();
            }
            None => {}
        }
    }
}
