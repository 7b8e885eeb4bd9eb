//! The socket options `quinn-udp`'s `UdpSocketState::new` sets that a relay must not keep, read
//! before it runs and put back after.
//!
//! `quinn-udp` 0.6 (Linux) sets on the socket it is given: `IP_RECVTOS` (and, on IPv6,
//! `IPV6_RECVTCLASS`), `IP_PKTINFO` / `IPV6_RECVPKTINFO`, `UDP_GRO`, all kept: this crate reports
//! ECN, the destination address and GRO trains. It probes GSO with `UDP_SEGMENT` and resets it to
//! 0 (the default: GSO only where a send asks for it), so nothing is left to undo there. Three
//! it sets suit QUIC, not a relay, and are put back here:
//!
//! - **path-MTU discovery** (`IP_MTU_DISCOVER`, and `IPV6_MTU_DISCOVER` on IPv6, set to
//!   `*_PMTUDISC_PROBE`: the DF bit, no local fragmentation) and **`IPV6_DONTFRAG`**: a relay
//!   forwards whatever its clients send, so a datagram larger than the route's MTU must still
//!   leave in fragments, over IPv4 and IPv6. GSO trains are not affected: their segments always
//!   fit the MTU.
//! - **`SO_TIMESTAMPNS`** (new in 0.6): a receive timestamp in every datagram's control data.
//!   Nothing here reads it, and with it `quinn-udp`'s 96-byte control buffer is too small for a
//!   GRO train's messages (timestamp 32 + segment size 24 + packet info 32 or 40 + TOS or traffic
//!   class 24 bytes): the kernel drops the last one, so every GRO train would arrive without its
//!   ECN bits (test `tests::a_gro_train_keeps_its_ecn_and_destination_address`). Turning it off
//!   again stops the control message; the socket still counts towards the kernel's "some socket
//!   wants receive timestamps" switch until it is closed (the kernel clears that only at close),
//!   so the machine stamps the packets it receives while the process holds such a socket
//!   (`gro_pin.rs` holds one for the process's life).
//!
//! Each is restored to the value it had before, so a caller that had turned one on keeps it.

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use rustix::net::sockopt as rsockopt;

/// What the socket had before `UdpSocketState::new`; `None` where the option does not apply to
/// the socket's family.
#[derive(Debug)]
pub(crate) struct Saved {
    ip_mtu_discover: Option<rsockopt::Ipv4PathMtuDiscovery>,
    ipv6_mtu_discover: Option<rsockopt::Ipv6PathMtuDiscovery>,
    ipv6_dontfrag: Option<bool>,
    timestamp_ns: Option<bool>,
}

impl Saved {
    /// Reads the options `quinn-udp` is about to change.
    pub(crate) fn read(fd: BorrowedFd<'_>) -> Self {
        let raw = fd.as_raw_fd();
        let ipv6_mtu_discover = rsockopt::ipv6_mtu_discover(fd).ok();
        Self {
            ip_mtu_discover: rsockopt::ip_mtu_discover(fd).ok(),
            // IPV6_DONTFRAG exists on IPv6 sockets only, as IPV6_MTU_DISCOVER does.
            ipv6_dontfrag: ipv6_mtu_discover.and_then(|_| getsockopt(raw, sockopt::Ipv6DontFrag).ok()),
            ipv6_mtu_discover,
            timestamp_ns: getsockopt(raw, sockopt::ReceiveTimestampns).ok(),
        }
    }

    /// Puts every option read back as it was.
    pub(crate) fn restore(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        if let Some(mode) = self.ip_mtu_discover {
            rsockopt::set_ip_mtu_discover(fd, mode)?;
        }
        if let Some(mode) = self.ipv6_mtu_discover {
            rsockopt::set_ipv6_mtu_discover(fd, mode)?;
        }
        if let Some(was) = self.ipv6_dontfrag {
            setsockopt(raw, sockopt::Ipv6DontFrag, &was).map_err(io::Error::from)?;
        }
        if let Some(was) = self.timestamp_ns {
            setsockopt(raw, sockopt::ReceiveTimestampns, &was).map_err(io::Error::from)?;
        }
        Ok(())
    }
}
