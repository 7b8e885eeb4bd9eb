//! The relay's Prometheus metrics, defined once and registered into a registry the binary passes in
//! (never global statics). Hot-path counters are accumulated per shard and flushed about once a
//! second (see [`ShardStats`]), so relayed traffic moves the counters while it flows.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::engine::StunError;
use crate::types::Transport;

/// Every metric the relay exports.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    /// Live allocations by transport.
    pub allocations: IntGaugeVec,
    /// Allocations ended, by reason (see [`crate::engine::EndReason`]).
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

/// The `reason` label values of `turnkey_relay_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 9] = [
    "missing_integrity",
    "bad_request",
    "stale_nonce",
    "wrong_realm",
    "wrong_credentials",
    "malformed_username",
    "expired",
    "revoked",
    "bad_credential",
];

/// Why a packet was dropped (metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No permission installed for the peer.
    NoPermission,
    /// The peer policy refused the address.
    DeniedPeer,
    /// The allocation's bandwidth cap was exceeded.
    RateCap,
    /// A connection's outbound queue was full, or a socket send would block.
    QueueFull,
    /// Not a valid STUN message or ChannelData.
    Malformed,
    /// No allocation or channel for the packet.
    NoAllocation,
    /// An unauthenticated reply suppressed by the per-IP limiter.
    ReplyLimited,
    /// The allocation's TURN key reached its monthly cap (relay enforcement on).
    UsageCap,
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; 8] = [
        Self::NoPermission,
        Self::DeniedPeer,
        Self::RateCap,
        Self::QueueFull,
        Self::Malformed,
        Self::NoAllocation,
        Self::ReplyLimited,
        Self::UsageCap,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoPermission => "no_permission",
            Self::DeniedPeer => "denied_peer",
            Self::RateCap => "rate_cap",
            Self::QueueFull => "queue_full",
            Self::Malformed => "malformed",
            Self::NoAllocation => "no_allocation",
            Self::ReplyLimited => "reply_limited",
            Self::UsageCap => "usage_cap",
        }
    }
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
        for r in crate::engine::EndReason::ALL {
            m.allocations_ended.with_label_values(&[r.as_str()]);
        }
        for t in [Transport::Tcp, Transport::Tls] {
            m.connections.with_label_values(&[t.as_str()]);
        }
        for p in ["create_permission", "channel_bind", "send"] {
            m.peer_denied.with_label_values(&[p]);
        }
        for r in AUTH_FAILURE_REASONS {
            m.auth_failures.with_label_values(&[r]);
        }
        m.allocation_attempts.with_label_values(&["success"]);
        for e in StunError::ALL {
            m.allocation_attempts.with_label_values(&[e.label()]);
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

/// Direction of relayed traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client through the relay to a peer.
    ClientToPeer,
    /// From a peer through the relay to the client.
    PeerToClient,
}

impl Direction {
    /// Both directions.
    pub const ALL: [Direction; 2] = [Self::ClientToPeer, Self::PeerToClient];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientToPeer => "client_to_peer",
            Self::PeerToClient => "peer_to_client",
        }
    }
}

/// Per-shard counters for the data path: plain integers, flushed into [`RelayMetrics`].
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    bytes: [[u64; 3]; 2],
    packets: [[u64; 3]; 2],
    drops: [u64; 8],
    udp: UdpBatchCounts,
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

fn tidx(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

impl ShardStats {
    /// Counts one relayed packet of `len` payload bytes.
    #[inline]
    pub fn relayed(&mut self, dir: Direction, t: Transport, len: usize) {
        let d = dir as usize;
        self.bytes[d][tidx(t)] += len as u64;
        self.packets[d][tidx(t)] += 1;
    }

    /// Counts one dropped packet.
    #[inline]
    pub fn dropped(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    /// Counts `n` dropped packets.
    #[inline]
    pub fn dropped_n(&mut self, r: DropReason, n: u64) {
        self.drops[r as usize] += n;
    }

    /// The UDP batching counts, for the driver to add to.
    #[inline]
    pub fn udp(&mut self) -> &mut UdpBatchCounts {
        &mut self.udp
    }

    /// How many packets were dropped for `r` since the last flush.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Adds the counts into `m` and resets them.
    pub fn flush(&mut self, m: &RelayMetrics) {
        for dir in Direction::ALL {
            for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
                let (b, p) = (self.bytes[dir as usize][tidx(t)], self.packets[dir as usize][tidx(t)]);
                if p > 0 {
                    m.relayed_bytes.with_label_values(&[dir.as_str(), t.as_str()]).inc_by(b);
                    m.relayed_packets.with_label_values(&[dir.as_str(), t.as_str()]).inc_by(p);
                }
            }
        }
        for r in DropReason::ALL {
            let n = self.drops[r as usize];
            if n > 0 {
                m.dropped_packets.with_label_values(&[r.as_str()]).inc_by(n);
            }
        }
        let u = self.udp;
        m.udp.gso_sends.inc_by(u.gso_sends);
        m.udp.gso_datagrams.inc_by(u.gso_datagrams);
        m.udp.gso_fallbacks.inc_by(u.gso_fallbacks);
        m.udp.gro_datagrams.inc_by(u.gro_datagrams);
        m.udp.recv_calls.inc_by(u.recv_calls);
        *self = Self::default();
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
        let mut expected: Vec<String> = StunError::ALL.iter().map(|e| e.code().to_string()).collect();
        expected.push("success".to_owned());
        assert_eq!(results, expected);
    }
}
