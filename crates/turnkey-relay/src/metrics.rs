//! The relay's Prometheus metrics, defined once and registered into a registry the binary passes in
//! (never global statics), and their export from what each shard's engine counted
//! ([`EngineStats`], plain data): [`StatsExporter`] adds the difference since its last export.
//! A shard exports the control-path counts (allocations, Allocate results, authentication
//! failures) as soon as they move, and everything (relayed bytes, drops) with its 500 ms sweep, so
//! relayed traffic moves the counters while it flows.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub use crate::engine::{AuthFailure, DeniedPath, Direction, DropReason};
use crate::engine::{EndReason, EngineStats, TRANSPORTS};
use crate::types::Transport;

/// Every metric the relay exports.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Live allocations by transport.
    pub allocations: IntGaugeVec,
    /// Allocations ended, by reason (the labels of [`ended_label`]).
    pub allocations_ended: IntCounterVec,
    /// Allocate requests by result (`success` or the error code).
    pub allocation_attempts: IntCounterVec,
    /// Authentication failures by reason.
    pub auth_failures: IntCounterVec,
    /// Live permissions.
    pub permissions: IntGauge,
    /// Live channel bindings.
    pub channels: IntGauge,
    /// Relayed payload bytes by direction and client transport.
    pub relayed_bytes: IntCounterVec,
    /// Relayed packets by direction and client transport.
    pub relayed_packets: IntCounterVec,
    /// Packets dropped by reason.
    pub dropped_packets: IntCounterVec,
    /// Peer-policy denials by path (`create_permission`, `channel_bind`, `send`).
    pub peer_denied: IntCounterVec,
    /// Client connections live (TCP/TLS).
    pub connections: IntGaugeVec,
    /// Client connections closed by transport and reason.
    pub connections_closed: IntCounterVec,
    /// Number of data-path shards.
    pub shards: IntGauge,
    /// UDP batching: sends that carried a GSO train, the datagrams in them, GSO trains the
    /// kernel refused (resent one by one), datagrams received coalesced by GRO.
    pub udp: UdpBatchMetrics,
    /// How long each shard's loop holds its own work up (`turnkey_relay_shard_stall_*`).
    pub shard_loop: crate::loopclock::LoopMetrics,
}

/// How much the UDP data path batched (see `crate::batch`).
#[derive(Debug, Clone)]
pub struct UdpBatchMetrics {
    /// `turnkey_relay_udp_gso_sends_total`.
    pub gso_sends: IntCounter,
    /// `turnkey_relay_udp_gso_datagrams_total`.
    pub gso_datagrams: IntCounter,
    /// `turnkey_relay_udp_gso_fallbacks_total`.
    pub gso_fallbacks: IntCounter,
    /// `turnkey_relay_udp_gro_datagrams_total`.
    pub gro_datagrams: IntCounter,
    /// `turnkey_relay_udp_recv_calls_total`.
    pub recv_calls: IntCounter,
}

impl RelayMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            allocations: IntGaugeVec::new(
                Opts::new("turnkey_relay_allocations", "Live allocations by client transport."),
                &["transport"],
            )?,
            allocations_ended: IntCounterVec::new(
                Opts::new("turnkey_relay_allocations_ended_total", "Allocations ended, by reason."),
                &["reason"],
            )?,
            allocation_attempts: IntCounterVec::new(
                Opts::new("turnkey_relay_allocation_attempts_total", "Allocate requests by result."),
                &["result"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new("turnkey_relay_auth_failures_total", "Authentication failures by reason."),
                &["reason"],
            )?,
            permissions: IntGauge::new("turnkey_relay_permissions", "Live permissions.")?,
            channels: IntGauge::new("turnkey_relay_channels", "Live channel bindings.")?,
            relayed_bytes: IntCounterVec::new(
                Opts::new(
                    "turnkey_relay_relayed_bytes_total",
                    "Relayed payload bytes by direction (client_to_peer, peer_to_client) and client transport.",
                ),
                &["direction", "transport"],
            )?,
            relayed_packets: IntCounterVec::new(
                Opts::new("turnkey_relay_relayed_packets_total", "Relayed packets by direction and client transport."),
                &["direction", "transport"],
            )?,
            dropped_packets: IntCounterVec::new(
                Opts::new("turnkey_relay_dropped_packets_total", "Packets dropped by reason."),
                &["reason"],
            )?,
            peer_denied: IntCounterVec::new(
                Opts::new("turnkey_relay_peer_denied_total", "Peer-policy denials by request path."),
                &["path"],
            )?,
            connections: IntGaugeVec::new(
                Opts::new("turnkey_relay_connections", "Live TCP/TLS client connections."),
                &["transport"],
            )?,
            connections_closed: IntCounterVec::new(
                Opts::new("turnkey_relay_connections_closed_total", "Closed TCP/TLS client connections by reason."),
                &["transport", "reason"],
            )?,
            shards: IntGauge::new("turnkey_relay_shards", "Data-path shards (one per core).")?,
            shard_loop: crate::loopclock::LoopMetrics::new(registry)?,
            udp: UdpBatchMetrics {
                gso_sends: IntCounter::new(
                    "turnkey_relay_udp_gso_sends_total",
                    "UDP sends that carried a GSO train (two or more datagrams in one syscall).",
                )?,
                gso_datagrams: IntCounter::new(
                    "turnkey_relay_udp_gso_datagrams_total",
                    "Datagrams sent inside GSO trains.",
                )?,
                gso_fallbacks: IntCounter::new(
                    "turnkey_relay_udp_gso_fallbacks_total",
                    "GSO trains the kernel refused, resent datagram by datagram.",
                )?,
                gro_datagrams: IntCounter::new(
                    "turnkey_relay_udp_gro_datagrams_total",
                    "Datagrams received coalesced by UDP GRO (segments of buffers that held two or more).",
                )?,
                recv_calls: IntCounter::new(
                    "turnkey_relay_udp_recv_calls_total",
                    "Batched UDP receive syscalls (recvmmsg) that returned data.",
                )?,
            },
        };
        registry.register(Box::new(m.allocations.clone()))?;
        registry.register(Box::new(m.allocation_attempts.clone()))?;
        registry.register(Box::new(m.allocations_ended.clone()))?;
        registry.register(Box::new(m.auth_failures.clone()))?;
        registry.register(Box::new(m.permissions.clone()))?;
        registry.register(Box::new(m.channels.clone()))?;
        registry.register(Box::new(m.relayed_bytes.clone()))?;
        registry.register(Box::new(m.relayed_packets.clone()))?;
        registry.register(Box::new(m.dropped_packets.clone()))?;
        registry.register(Box::new(m.peer_denied.clone()))?;
        registry.register(Box::new(m.connections.clone()))?;
        registry.register(Box::new(m.connections_closed.clone()))?;
        registry.register(Box::new(m.shards.clone()))?;
        for c in [&m.udp.gso_sends, &m.udp.gso_datagrams, &m.udp.gso_fallbacks, &m.udp.gro_datagrams, &m.udp.recv_calls]
        {
            registry.register(Box::new(c.clone()))?;
        }
        // Make the zero values visible from the first scrape.
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            m.allocations.with_label_values(&[t.as_str()]);
            for d in Direction::ALL {
                m.relayed_bytes.with_label_values(&[d.as_str(), t.as_str()]);
                m.relayed_packets.with_label_values(&[d.as_str(), t.as_str()]);
            }
        }
        for r in DropReason::ALL {
            m.dropped_packets.with_label_values(&[r.as_str()]);
        }
        for label in ENDED_LABELS {
            m.allocations_ended.with_label_values(&[label]);
        }
        for t in [Transport::Tcp, Transport::Tls] {
            m.connections.with_label_values(&[t.as_str()]);
        }
        for p in DeniedPath::ALL {
            m.peer_denied.with_label_values(&[p.as_str()]);
        }
        for r in AuthFailure::ALL {
            m.auth_failures.with_label_values(&[r.as_str()]);
        }
        for r in EngineStats::allocate_results() {
            m.allocation_attempts.with_label_values(&[r]);
        }
        Ok(m)
    }

    /// Metrics registered into a private registry (tests and tools).
    pub fn unregistered() -> Self {
        match Self::new(&Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable!("a fresh registry cannot hold duplicates: {e}"),
        }
    }
}

/// The UDP data path's batching counts of one shard since the last flush.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpBatchCounts {
    /// Sends that carried a GSO train.
    pub gso_sends: u64,
    /// Datagrams inside those trains.
    pub gso_datagrams: u64,
    /// GSO trains refused and resent one by one.
    pub gso_fallbacks: u64,
    /// Datagrams received coalesced by GRO.
    pub gro_datagrams: u64,
    /// Receive syscalls that returned data.
    pub recv_calls: u64,
}

impl UdpBatchCounts {
    /// Adds the counts into `m` and resets them.
    pub fn flush(&mut self, m: &UdpBatchMetrics) {
        m.gso_sends.inc_by(self.gso_sends);
        m.gso_datagrams.inc_by(self.gso_datagrams);
        m.gso_fallbacks.inc_by(self.gso_fallbacks);
        m.gro_datagrams.inc_by(self.gro_datagrams);
        m.recv_calls.inc_by(self.recv_calls);
        *self = Self::default();
    }
}

/// The `reason` labels of `turnkey_relay_allocations_ended_total`, in order.
pub const ENDED_LABELS: [&str; 6] = ["expired", "deallocated", "revoked", "closed", "killed", "shutdown"];

/// The `reason` label of `turnkey_relay_allocations_ended_total` for an engine's [`EndReason`]:
/// the operator's vocabulary, coarser than the engine's (a lifetime and a credential running out
/// are both `expired`).
pub fn ended_label(r: EndReason) -> &'static str {
    match r {
        EndReason::Expired | EndReason::CredentialExpired => "expired",
        EndReason::Deleted => "deallocated",
        EndReason::Revoked => "revoked",
        EndReason::ConnectionClosed => "closed",
        EndReason::Killed => "killed",
        EndReason::Drained => "shutdown",
    }
}

/// One shard's export of its engine's [`EngineStats`] into [`RelayMetrics`]: each export adds
/// what moved since the previous one (counters) or the change of a current value (gauges), so
/// any number of shards share the metrics.
#[derive(Debug, Default)]
pub struct StatsExporter {
    last: EngineStats,
}

fn add_counter(c: &IntCounter, now: u64, last: u64) {
    if now > last {
        c.inc_by(now - last);
    }
}

fn add_gauge(g: &IntGauge, now: u64, last: u64) {
    if now != last {
        g.add(now as i64 - last as i64);
    }
}

impl StatsExporter {
    /// Whether the control-path counts moved since the last export.
    #[inline]
    pub fn control_moved(&self, s: &EngineStats) -> bool {
        s.control_version() != self.last.control_version()
    }

    /// Adds what `s` counted since the last export into `m`.
    pub fn export(&mut self, s: &EngineStats, m: &RelayMetrics) {
        let last = &self.last;
        for dir in Direction::ALL {
            for t in TRANSPORTS {
                let (b, p) = s.relayed_total(dir, t);
                let (lb, lp) = last.relayed_total(dir, t);
                if p != lp {
                    add_counter(&m.relayed_bytes.with_label_values(&[dir.as_str(), t.as_str()]), b, lb);
                    add_counter(&m.relayed_packets.with_label_values(&[dir.as_str(), t.as_str()]), p, lp);
                }
            }
        }
        for r in DropReason::ALL {
            if s.drops(r) != last.drops(r) {
                add_counter(&m.dropped_packets.with_label_values(&[r.as_str()]), s.drops(r), last.drops(r));
            }
        }
        if s.control_version() != last.control_version() {
            for ((label, n), (_, l)) in s.allocation_attempts().zip(last.allocation_attempts()) {
                if n != l {
                    add_counter(&m.allocation_attempts.with_label_values(&[label]), n, l);
                }
            }
            for r in AuthFailure::ALL {
                if s.auth_failures(r) != last.auth_failures(r) {
                    let c = m.auth_failures.with_label_values(&[r.as_str()]);
                    add_counter(&c, s.auth_failures(r), last.auth_failures(r));
                }
            }
            for p in DeniedPath::ALL {
                if s.peer_denials(p) != last.peer_denials(p) {
                    let c = m.peer_denied.with_label_values(&[p.as_str()]);
                    add_counter(&c, s.peer_denials(p), last.peer_denials(p));
                }
            }
            for r in EndReason::ALL {
                if s.ended(r) != last.ended(r) {
                    add_counter(&m.allocations_ended.with_label_values(&[ended_label(r)]), s.ended(r), last.ended(r));
                }
            }
            for t in TRANSPORTS {
                if s.allocations(t) != last.allocations(t) {
                    add_gauge(&m.allocations.with_label_values(&[t.as_str()]), s.allocations(t), last.allocations(t));
                }
            }
        }
        add_gauge(&m.permissions, s.permissions(), last.permissions());
        add_gauge(&m.channels, s.channels(), last.channels());
        self.last = s.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allocate_result_is_exported_from_the_start() {
        let registry = Registry::new();
        RelayMetrics::new(&registry).unwrap();
        let family = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "turnkey_relay_allocation_attempts_total")
            .expect("registered");
        let mut results: Vec<String> =
            family.get_metric().iter().map(|m| m.get_label()[0].value().to_owned()).collect();
        results.sort();
        let mut expected: Vec<String> = EngineStats::allocate_results().map(str::to_owned).collect();
        expected.sort();
        assert_eq!(results, expected);
        assert_eq!(expected.len(), 14, "success and the 13 error codes");
    }

    #[test]
    fn every_end_reason_has_one_of_the_ended_labels_and_each_label_is_used() {
        let used: std::collections::BTreeSet<_> = EndReason::ALL.iter().map(|r| ended_label(*r)).collect();
        let listed: std::collections::BTreeSet<_> = ENDED_LABELS.into_iter().collect();
        assert_eq!(used, listed);
    }

    #[test]
    fn an_engines_counts_are_exported_once_each_by_difference() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use turnkey_auth::{Secret, SecretRing};

        use crate::engine::{Engine, EngineConfig, Shared};
        use crate::policy::PeerPolicy;
        use crate::types::{ClientAddr, FiveTuple, Now};

        struct NoPorts;
        impl crate::engine::RelayPorts for NoPorts {
            fn bind(
                &mut self,
                _: Instant,
                _: bool,
                _: crate::engine::PortRequest,
            ) -> Option<crate::engine::RelayBinding> {
                None
            }
            fn release(&mut self, _: crate::types::RelayHandle) {}
        }
        let ring = SecretRing::new(vec![Secret::new("s")]).unwrap();
        let mut cfg = EngineConfig::new("r", ring, PeerPolicy::new(vec![], vec![], vec![]));
        cfg.unauth_replies_per_sec = 0;
        #[allow(clippy::disallowed_methods, reason = "a test's arbitrary start")]
        let now = Now::new(Instant::now(), Duration::from_secs(1_800_000_000));
        let mut engine = Engine::new(Arc::new(cfg), Arc::new(Shared::default()), now.mono);
        let from = FiveTuple {
            transport: Transport::Udp,
            client: ClientAddr("203.0.113.5:5555".parse().unwrap()),
            server: "192.0.2.10:3478".parse().unwrap(),
        };
        // An Allocate without credentials (header only: a 401), and garbage (dropped).
        let mut allocate = vec![0x00, 0x03, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        allocate.extend_from_slice(&[7; 12]);
        assert!(engine.handle_client(now, from, &allocate, &mut NoPorts).is_some());
        assert!(engine.handle_client(now, from, &[0xFF; 8], &mut NoPorts).is_none());
        let m = RelayMetrics::unregistered();
        let mut exporter = StatsExporter::default();
        assert!(exporter.control_moved(engine.stats()));
        for _ in 0..2 {
            exporter.export(engine.stats(), &m);
            assert!(!exporter.control_moved(engine.stats()));
            assert_eq!(m.allocation_attempts.with_label_values(&["401"]).get(), 1);
            assert_eq!(m.auth_failures.with_label_values(&["missing_integrity"]).get(), 1);
            assert_eq!(m.dropped_packets.with_label_values(&["malformed"]).get(), 1);
        }
        assert!(engine.handle_client(now, from, &[0xFF; 8], &mut NoPorts).is_none());
        exporter.export(engine.stats(), &m);
        assert_eq!(m.dropped_packets.with_label_values(&["malformed"]).get(), 2);
    }
}
