//! What the driver tells the kernel, as plain values: a bound channel (both directions), an
//! allocation (deadline, optional byte budget), the relay's own addresses. Deadlines are the
//! kernel's CLOCK_MONOTONIC nanoseconds ([`KernelDeadline`], from the driver's `Instant`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::abi::{self, AllocVal, ChanKey, ChanVal, PeerKey, PeerVal};
use crate::error::FastPathError;

/// The kernel's slot for one allocation's counters and budget: below [`MAX_ALLOCATIONS`], unique
/// among live allocations. Only [`crate::FastPath::add_allocation`] makes one (the fast path owns
/// the slots: `slots.rs`); the program indexes arrays with it, which costs less per packet than a
/// hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocKey(pub(crate) u32);

/// How many allocation slots the kernel has (`MAX_ALLOCS` in `bpf/turnkey_xdp.c`).
pub const MAX_ALLOCATIONS: u32 = 65_536;

/// A deadline as `bpf_ktime_get_ns()` reads it (CLOCK_MONOTONIC, nanoseconds). The entry stops
/// being relayed in the kernel at this instant, whenever user space next sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelDeadline(pub u64);

/// Converts the driver's `Instant`s into kernel deadlines. Rust's `Instant` on Linux is
/// CLOCK_MONOTONIC too, but opaque: one pair of readings taken at creation anchors the
/// conversion (both read back to back; the error is the gap between them, well under a
/// microsecond). Create it once in the driver; it is `Copy`.
#[derive(Clone, Copy, Debug)]
pub struct KernelClock {
    instant: Instant,
    mono_ns: u64,
}

impl KernelClock {
    /// Anchors the conversion now (reads the clock: call it from the driver, not the engine).
    pub fn new() -> Self {
        let instant = Instant::now();
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let mono_ns = (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64);
        Self { instant, mono_ns }
    }

    /// The kernel deadline of `at` (an instant before the anchor maps to an earlier time, never
    /// below 0: an entry already past its deadline).
    pub fn deadline(&self, at: Instant) -> KernelDeadline {
        match at.checked_duration_since(self.instant) {
            Some(after) => KernelDeadline(self.mono_ns.saturating_add(nanos(after))),
            None => KernelDeadline(self.mono_ns.saturating_sub(nanos(self.instant - at))),
        }
    }

    /// The kernel's monotonic time now (what the program compares deadlines with).
    pub fn now() -> KernelDeadline {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        KernelDeadline((ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64))
    }
}

impl Default for KernelClock {
    fn default() -> Self {
        Self::new()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One bound channel: the client's 5-tuple on the listener and its channel number, and where the
/// data goes (from the allocation's relayed address to the peer). The kernel relays both
/// directions until `deadline`: the earliest of the channel's, the permission's and the
/// allocation's ends (the driver computes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelBinding {
    /// The client's address as the relay sees it.
    pub client: SocketAddr,
    /// The relay's listening address the client sends to (and receives from).
    pub listener: SocketAddr,
    /// The channel number: 0x4000..=0x4FFF (RFC 8656), or up to 0x7FFF when the relay accepts
    /// RFC 5766 clients' numbers.
    pub channel: u16,
    /// The allocation's relayed address.
    pub relayed: SocketAddr,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The allocation whose counters and budget the traffic moves.
    pub alloc: AllocKey,
}

impl ChannelBinding {
    /// The two map entries (client side, peer side). Both sides must be one family each: a client
    /// on IPv4 with an IPv6 relayed address (RFC 6156) stays in user space.
    pub(crate) fn entries(
        &self,
        deadline: KernelDeadline,
    ) -> Result<(ChanKey, ChanVal, PeerKey, PeerVal), FastPathError> {
        if !(0x4000..=0x7fff).contains(&self.channel) {
            return Err(FastPathError::InvalidChannel(self.channel));
        }
        let (client, fam_c) = abi::addr_bytes(self.client.ip());
        let (listener, fam_l) = abi::addr_bytes(self.listener.ip());
        let (relayed, fam_r) = abi::addr_bytes(self.relayed.ip());
        let (peer, fam_p) = abi::addr_bytes(self.peer.ip());
        if fam_c != fam_l || fam_r != fam_p || fam_c != fam_r {
            return Err(FastPathError::MixedFamilies);
        }
        let chan_key = ChanKey {
            client,
            listener,
            client_port: self.client.port().to_be(),
            listener_port: self.listener.port().to_be(),
            channel: self.channel.to_be(),
            family: fam_c,
            pad: 0,
        };
        let chan_val = ChanVal {
            relayed,
            peer,
            relayed_port: self.relayed.port().to_be(),
            peer_port: self.peer.port().to_be(),
            alloc: self.alloc.0,
            deadline_ns: deadline.0,
            flags: 0, // (CHAN_HAIRPIN: FastPath::bind_channel knows the relay's IPs)
            pad: 0,
        };
        let peer_key = PeerKey {
            peer,
            relayed,
            peer_port: self.peer.port().to_be(),
            relayed_port: self.relayed.port().to_be(),
            family: fam_c,
            pad: [0; 3],
        };
        let peer_val = PeerVal {
            client,
            listener,
            client_port: self.client.port().to_be(),
            listener_port: self.listener.port().to_be(),
            channel: self.channel.to_be(),
            pad: 0,
            alloc: self.alloc.0,
            pad2: 0,
            deadline_ns: deadline.0,
        };
        Ok((chan_key, chan_val, peer_key, peer_val))
    }
}

/// An allocation as the kernel knows it: its end, and the bytes it may still relay when it has a
/// bandwidth limit (refilled by the driver each sweep; `None`: no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocationEntry {
    pub deadline: KernelDeadline,
    pub budget_bytes: Option<u64>,
}

impl AllocationEntry {
    pub(crate) fn value(&self) -> AllocVal {
        AllocVal {
            deadline_ns: self.deadline.0,
            budget: self.budget_bytes.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            flags: abi::ALLOC_LIVE | if self.budget_bytes.is_some() { abi::ALLOC_LIMITED } else { 0 },
            pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_follow_instants() {
        let clock = KernelClock::new();
        let now = Instant::now();
        let later = clock.deadline(now + Duration::from_secs(10));
        let kernel_now = KernelClock::now();
        assert!(later.0 > kernel_now.0 + 9_000_000_000 && later.0 < kernel_now.0 + 11_000_000_000);
        let earlier = clock.deadline(clock.instant - Duration::from_secs(1));
        assert_eq!(earlier.0, clock.mono_ns - 1_000_000_000);
    }

    #[test]
    fn mixed_families_and_bad_channels_are_refused() {
        let b = ChannelBinding {
            client: "192.0.2.1:5000".parse().unwrap(),
            listener: "192.0.2.2:3478".parse().unwrap(),
            channel: 0x4000,
            relayed: "[2001:db8::1]:50000".parse().unwrap(),
            peer: "[2001:db8::2]:6000".parse().unwrap(),
            alloc: AllocKey(1),
        };
        assert!(matches!(b.entries(KernelDeadline(1)), Err(FastPathError::MixedFamilies)));
        let b = ChannelBinding { channel: 0x8000, ..b };
        assert!(matches!(b.entries(KernelDeadline(1)), Err(FastPathError::InvalidChannel(0x8000))));
        let b = ChannelBinding { channel: 0x3fff, ..b };
        assert!(matches!(b.entries(KernelDeadline(1)), Err(FastPathError::InvalidChannel(0x3fff))));
    }
}
