//! The kernel program's map layouts, byte for byte (`bpf/turnkey_xdp.c`: change both together).
//! Every struct is `#[repr(C)]` with explicit padding, so no byte is uninitialised when aya copies
//! it into a map. Addresses are 16 bytes (IPv4 in the first 4, the rest zero), ports and channel
//! numbers in network byte order, as the program reads them from the packet.

// aya copies map keys and values as raw bytes and requires `unsafe impl Pod` to do so. Each impl
// below is sound: the types are `Copy`, `#[repr(C)]`, made only of integers and byte arrays, and
// have no implicit padding (checked by the size assertions at the bottom). This is the only module
// of the crate with unsafe code.
#![allow(unsafe_code)]

use std::net::IpAddr;

pub(crate) const FAM_V4: u8 = 4;
pub(crate) const FAM_V6: u8 = 6;
pub(crate) const ALLOC_LIMITED: u32 = 1;
pub(crate) const ALLOC_LIVE: u32 = 2;
pub(crate) const CHAN_HAIRPIN: u32 = 1;

/// client -> listener, one bound channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChanKey {
    pub client: [u8; 16],
    pub listener: [u8; 16],
    pub client_port: u16,
    pub listener_port: u16,
    pub channel: u16,
    pub family: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChanVal {
    pub relayed: [u8; 16],
    pub peer: [u8; 16],
    pub relayed_port: u16,
    pub peer_port: u16,
    pub alloc: u32,
    pub deadline_ns: u64,
    /// CHAN_HAIRPIN when the peer's IP is one of the relay's relayed IPs.
    pub flags: u32,
    pub pad: u32,
}

/// peer -> relayed address, the peer has a bound channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerKey {
    pub peer: [u8; 16],
    pub relayed: [u8; 16],
    pub peer_port: u16,
    pub relayed_port: u16,
    pub family: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerVal {
    pub client: [u8; 16],
    pub listener: [u8; 16],
    pub client_port: u16,
    pub listener_port: u16,
    pub channel: u16,
    pub pad: u16,
    pub alloc: u32,
    pub pad2: u32,
    pub deadline_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AllocVal {
    pub deadline_ns: u64,
    pub budget: i64,
    pub flags: u32,
    pub pad: u32,
}

/// Per CPU; bytes are application data (the ChannelData payload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AllocStats {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// A listener (port set) or a relayed IP (port 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AddrKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub pad: u8,
}

unsafe impl aya::Pod for ChanKey {}
unsafe impl aya::Pod for ChanVal {}
unsafe impl aya::Pod for PeerKey {}
unsafe impl aya::Pod for PeerVal {}
unsafe impl aya::Pod for AllocVal {}
unsafe impl aya::Pod for AllocStats {}
unsafe impl aya::Pod for AddrKey {}

const _: () = {
    assert!(size_of::<ChanKey>() == 40);
    assert!(size_of::<ChanVal>() == 56);
    assert!(size_of::<PeerKey>() == 40);
    assert!(size_of::<PeerVal>() == 56);
    assert!(size_of::<AllocVal>() == 24);
    assert!(size_of::<AllocStats>() == 32);
    assert!(size_of::<AddrKey>() == 20);
};

/// The address as the program stores it, and its family tag.
pub(crate) fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    // An IPv4-mapped IPv6 address (a dual-stack socket's view) is the IPv4 packet on the wire.
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAM_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAM_V6),
    }
}
