//! What the kernel counts, as plain data: per-allocation packets and bytes by direction (summed
//! over CPUs), and packets passed to user space by reason.

/// Why the program passed a packet to the kernel stack (and so to user space), in the order of
/// the program's `fp_counter` enum (`bpf/turnkey_xdp.c`; keep both together).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PassReason {
    NotIp,
    Fragment,
    IpOptions,
    NotUdp,
    NotRelayAddr,
    Length,
    Stun,
    SendIndication,
    NotChannelData,
    Padded,
    NoChannel,
    NoPeer,
    Expired,
    NoAllocation,
    OverBudget,
    HairpinUnbound,
    NoRoute,
    NoNeigh,
    Mtu,
    NoTxPort,
    AdjustFailed,
    ForwardingOff,
}

impl PassReason {
    /// Every reason, in counter-index order.
    pub const ALL: [PassReason; 22] = [
        Self::NotIp,
        Self::Fragment,
        Self::IpOptions,
        Self::NotUdp,
        Self::NotRelayAddr,
        Self::Length,
        Self::Stun,
        Self::SendIndication,
        Self::NotChannelData,
        Self::Padded,
        Self::NoChannel,
        Self::NoPeer,
        Self::Expired,
        Self::NoAllocation,
        Self::OverBudget,
        Self::HairpinUnbound,
        Self::NoRoute,
        Self::NoNeigh,
        Self::Mtu,
        Self::NoTxPort,
        Self::AdjustFailed,
        Self::ForwardingOff,
    ];

    /// The metric label (`reason="..."`).
    pub const fn label(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::Fragment => "fragment",
            Self::IpOptions => "ip_options",
            Self::NotUdp => "not_udp",
            Self::NotRelayAddr => "not_relay_addr",
            Self::Length => "length",
            Self::Stun => "stun",
            Self::SendIndication => "send_indication",
            Self::NotChannelData => "not_channel_data",
            Self::Padded => "padded",
            Self::NoChannel => "no_channel",
            Self::NoPeer => "no_peer",
            Self::Expired => "expired",
            Self::NoAllocation => "no_allocation",
            Self::OverBudget => "over_budget",
            Self::HairpinUnbound => "hairpin_unbound",
            Self::NoRoute => "no_route",
            Self::NoNeigh => "no_neigh",
            Self::Mtu => "mtu",
            Self::NoTxPort => "no_tx_port",
            Self::AdjustFailed => "adjust_failed",
            Self::ForwardingOff => "forwarding_off",
        }
    }

    pub(crate) const fn index(self) -> u32 {
        self as u32
    }
}

/// Counter indexes after the pass reasons: packets relayed out of the ingress interface (XDP_TX)
/// and out of another one (XDP_REDIRECT).
pub(crate) const ACT_TX: u32 = PassReason::ALL.len() as u32;
pub(crate) const ACT_REDIRECT: u32 = ACT_TX + 1;
/// The size of the program's `fp_counters` array.
pub(crate) const COUNTERS: u32 = ACT_REDIRECT + 1;

/// One allocation's kernel-relayed traffic since its entry was created (bytes are application
/// data, as user space counts them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounters {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

impl AllocCounters {
    /// What was added since `earlier` (a reading of the same allocation).
    pub fn since(&self, earlier: &AllocCounters) -> AllocCounters {
        AllocCounters {
            to_peer_packets: self.to_peer_packets.saturating_sub(earlier.to_peer_packets),
            to_peer_bytes: self.to_peer_bytes.saturating_sub(earlier.to_peer_bytes),
            to_client_packets: self.to_client_packets.saturating_sub(earlier.to_client_packets),
            to_client_bytes: self.to_client_bytes.saturating_sub(earlier.to_client_bytes),
        }
    }

    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        *self == AllocCounters::default()
    }
}

/// The program's global counters (summed over CPUs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounters {
    /// Packets passed to user space, by reason (every reason present, zero or not).
    pub passed: Vec<(PassReason, u64)>,
    /// Packets relayed back out of the interface they arrived on.
    pub tx: u64,
    /// Packets relayed out of another interface.
    pub redirected: u64,
}

impl ProgramCounters {
    /// Passes for one reason.
    pub fn passed(&self, reason: PassReason) -> u64 {
        self.passed.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}
