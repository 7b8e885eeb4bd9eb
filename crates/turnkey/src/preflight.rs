//! Before anything starts: every listening address this process needs is probed at once, and all
//! the unavailable ones are reported together (one error naming each, instead of one per
//! attempt), before the data directory, Redis or any listener is touched. A process dying of a
//! port clash then never joins the fleet, so it logs no Redis trouble either.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// What a listening address is for, as the error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS.
    Tls,
    /// The issuer's HTTP listener (`--http`).
    Http,
    /// Prometheus (`--metrics`).
    Metrics,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Http => "http",
            Self::Metrics => "metrics",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Self::Udp => "--udp",
            Self::Tcp => "--tcp",
            Self::Tls => "--tls",
            Self::Http => "--http",
            Self::Metrics => "--metrics",
        }
    }
}

/// Binds every `(role, address)` (port 0 needs no check) and holds them all until every one is
/// tried, so an address configured twice is caught too; fails naming each unavailable one.
pub fn check(wanted: &[(Role, SocketAddr)]) -> anyhow::Result<()> {
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for &(role, addr) in wanted.iter().filter(|(_, a)| a.port() != 0) {
        match probe(role, addr) {
            Ok(s) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                failed.push(format!("{} {addr} ({}: already in use by another process)", role.name(), role.flag()));
            }
            Err(e) => failed.push(format!("{} {addr} ({}: {e})", role.name(), role.flag())),
        }
    }
    drop(held);
    if failed.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} listening address{} unavailable: {}. Each turnkey process on a host needs its own ports \
         (--udp, --tcp, --tls, --http, --metrics; docs/fleet.md, \"Several processes on one host\")",
        failed.len(),
        if failed.len() == 1 { " is" } else { "es are" },
        failed.join(", ")
    )
}

/// Binds `addr` the way nothing else may share it: no SO_REUSEPORT; IPv6 only for an IPv6
/// address (the relay binds `0.0.0.0` and `::` side by side); TCP with SO_REUSEADDR (a restart
/// passes its predecessor's TIME_WAIT connections) and listening (so a second bind fails).
fn probe(role: Role, addr: SocketAddr) -> std::io::Result<Socket> {
    let udp = role == Role::Udp;
    let (ty, proto) = if udp { (Type::DGRAM, Protocol::UDP) } else { (Type::STREAM, Protocol::TCP) };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if !udp {
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())?;
    if !udp {
        s.listen(1)?;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_unavailable_address_is_named_at_once() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (u, t) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = check(&[(Role::Udp, u), (Role::Tcp, t), (Role::Http, t), (Role::Metrics, free)]).unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with("3 listening addresses are unavailable"), "{text}");
        for part in [format!("udp {u} (--udp"), format!("tcp {t} (--tcp"), format!("http {t} (--http")] {
            assert!(text.contains(&part), "{part}: {text}");
        }
        assert!(text.contains("already in use by another process"), "{text}");
        assert!(!text.contains(&free.to_string()), "{text}");
        check(&[(Role::Udp, "127.0.0.1:0".parse().unwrap()), (Role::Metrics, free)]).unwrap();
    }

    #[test]
    fn an_address_configured_twice_is_caught() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = check(&[(Role::Tcp, free), (Role::Http, free)]).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("http {free}")), "{e:#}");
    }
}
