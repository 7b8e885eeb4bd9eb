//! FastPathMetrics: the fast path's Prometheus series, registered into a registry passed in. The
//! relay exports them; values come from the kernel counters it reads at each sweep.
//!   turnkey_relay_fastpath_mode{interface, mode}              1 for how each interface relays
//!   turnkey_relay_fastpath_packets_total{direction}           client_to_peer | peer_to_client
//!                                                             (turnkey_relay_relayed_*'s labels)
//!   turnkey_relay_fastpath_bytes_total{direction}             application data bytes
//!   turnkey_relay_fastpath_passes_total{reason}               packets handed to user space

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::attached::AttachedMode;
use crate::stats::{AllocCounters, PassReason, ProgramCounters};

/// The fast path's metrics.
#[derive(Debug)]
pub struct FastPathMetrics {
    mode: IntGaugeVec,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    passes: IntCounterVec,
    /// The kernel totals last seen per reason (the kernel's counters are absolute).
    seen: Vec<AtomicU64>,
}

impl FastPathMetrics {
    /// Registers the series into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let mode = IntGaugeVec::new(
            Opts::new("turnkey_relay_fastpath_mode", "1 for how each interface relays bound channels"),
            &["interface", "mode"],
        )?;
        let packets = IntCounterVec::new(
            Opts::new("turnkey_relay_fastpath_packets_total", "Datagrams relayed by the kernel fast path"),
            &["direction"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new("turnkey_relay_fastpath_bytes_total", "Application data bytes relayed by the kernel fast path"),
            &["direction"],
        )?;
        let passes = IntCounterVec::new(
            Opts::new("turnkey_relay_fastpath_passes_total", "Packets the fast path handed to user space, by reason"),
            &["reason"],
        )?;
        registry.register(Box::new(mode.clone()))?;
        registry.register(Box::new(packets.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(passes.clone()))?;
        for r in PassReason::ALL {
            passes.with_label_values(&[r.label()]);
        }
        for d in ["client_to_peer", "peer_to_client"] {
            packets.with_label_values(&[d]);
            bytes.with_label_values(&[d]);
        }
        Ok(Self { mode, packets, bytes, passes, seen: PassReason::ALL.iter().map(|_| AtomicU64::new(0)).collect() })
    }

    /// Records how `iface` relays (replacing its previous mode).
    pub fn set_mode(&self, iface: &str, mode: &AttachedMode) {
        for m in ["native", "generic", "off"] {
            self.mode.with_label_values(&[iface, m]).set(i64::from(m == mode.label()));
        }
    }

    /// Adds kernel-relayed traffic (the deltas of allocations' counters since the last sweep).
    pub fn add_relayed(&self, delta: &AllocCounters) {
        self.packets.with_label_values(&["client_to_peer"]).inc_by(delta.to_peer_packets);
        self.bytes.with_label_values(&["client_to_peer"]).inc_by(delta.to_peer_bytes);
        self.packets.with_label_values(&["peer_to_client"]).inc_by(delta.to_client_packets);
        self.bytes.with_label_values(&["peer_to_client"]).inc_by(delta.to_client_bytes);
    }

    /// Brings the pass counters up to the kernel's totals.
    pub fn observe_passes(&self, kernel: &ProgramCounters) {
        for (i, r) in PassReason::ALL.iter().enumerate() {
            let now = kernel.passed(*r);
            let before = self.seen[i].swap(now, Ordering::Relaxed);
            self.passes.with_label_values(&[r.label()]).inc_by(now.saturating_sub(before));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_follow_kernel_totals() {
        let registry = Registry::new();
        let m = FastPathMetrics::register(&registry).unwrap();
        let mut k = ProgramCounters { passed: PassReason::ALL.iter().map(|r| (*r, 0)).collect(), tx: 0, redirected: 0 };
        k.passed[PassReason::Stun.index() as usize].1 = 5;
        m.observe_passes(&k);
        k.passed[PassReason::Stun.index() as usize].1 = 7;
        m.observe_passes(&k);
        assert_eq!(m.passes.with_label_values(&["stun"]).get(), 7);
        m.set_mode("eth0", &AttachedMode::Generic);
        assert_eq!(m.mode.with_label_values(&["eth0", "generic"]).get(), 1);
        assert_eq!(m.mode.with_label_values(&["eth0", "native"]).get(), 0);
        m.add_relayed(&AllocCounters { to_peer_packets: 2, to_peer_bytes: 200, ..Default::default() });
        assert_eq!(m.bytes.with_label_values(&["client_to_peer"]).get(), 200);
        assert_eq!(m.packets.with_label_values(&["peer_to_client"]).get(), 0);
    }
}
