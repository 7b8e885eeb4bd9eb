//! The addresses this process serves on: its bound listeners ([`Listening`]) and where relay
//! sockets bind ([`relay_addrs`]: configured, else detected). A leaf the serve wiring, the
//! issuer, the fleet heartbeat and `check-config` read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use turnkey_relay::udp::RelayAddrs;
use turnkey_relay::BoundSockets;

use crate::config::Settings;

/// The addresses the relay actually listens on (ports resolved).
pub(crate) struct Listening {
    pub(crate) udp: Vec<SocketAddr>,
    pub(crate) tcp: Vec<SocketAddr>,
    pub(crate) tls: Vec<SocketAddr>,
}

impl Listening {
    pub(crate) fn of(sockets: &BoundSockets) -> Self {
        Self { udp: sockets.udp_addrs(), tcp: sockets.tcp_addrs(), tls: sockets.tls_addrs() }
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &SocketAddr> {
        self.udp.iter().chain(&self.tcp).chain(&self.tls)
    }
}

/// Where relay sockets bind: the configured addresses, else the primary IPv4.
pub(crate) fn relay_addrs(s: &Settings) -> RelayAddrs {
    let mut addrs = configured_relay_addrs(s);
    if addrs.v4.is_none() && addrs.v6.is_none() {
        addrs.v4 = Some(detect_ipv4());
    }
    addrs
}

/// The relay addresses as configured, nothing detected (what `check-config` reasons about, on
/// whatever host it runs).
pub(crate) fn configured_relay_addrs(s: &Settings) -> RelayAddrs {
    let r = &s.relay;
    RelayAddrs {
        v4: r.relay_ip.v4,
        v6: r.relay_ip.v6,
        external_v4: r.external_ip.v4,
        external_v6: r.external_ip.v6,
        ports: r.relay_ports.range(),
    }
}

/// The address the kernel would use to reach the internet (no packet is sent), else loopback.
pub(crate) fn detect_ipv4() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect("203.0.113.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}
