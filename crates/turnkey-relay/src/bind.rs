//! Binding the shards' sockets, a leaf of the relay's drivers: the client-facing UDP sockets and
//! TCP/TLS listeners (one per shard, SO_REUSEPORT, after making sure no other process owns the
//! address: [`unshared_port`], [`bind_alone`], [`check_alone`]) and the relay sockets (one per
//! allocation, never shared). Nothing here knows a shard, an engine or a task.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffer for client-facing sockets.
pub(crate) const CLIENT_SOCKET_BUFFER: usize = 4 << 20;
/// Kernel socket buffer for relay sockets.
pub(crate) const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// Listen backlog of TCP/TLS listeners.
const BACKLOG: i32 = 1024;

/// Binds `n` UDP sockets on `addr` with SO_REUSEPORT (the kernel hashes each client to one of
/// them), after [`unshared_port`] made sure no other socket owns the address (and resolved
/// port 0); [`bind_alone`] then makes sure none joined in between.
pub fn bind_udp_shards(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    bind_alone(addr, Type::DGRAM, n, bind_reuseport)
}

pub(crate) fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    set_buffers(&s, CLIENT_SOCKET_BUFFER);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn set_buffers(s: &Socket, size: usize) {
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(size);
    let _ = s.set_send_buffer_size(size);
}

/// Binds `n` TCP listeners on `addr` with SO_REUSEPORT (the kernel spreads connections over
/// them), after [`unshared_port`] made sure no other socket owns the address (and resolved
/// port 0); [`bind_alone`] then makes sure none joined in between.
pub fn bind_tcp_shards(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    bind_alone(addr, Type::STREAM, n, bind_listener)
}

fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// An unbound relay socket for `ip`'s family: not shared (no SO_REUSEPORT), non-blocking, with
/// the relay buffer size. A bind that fails (the port is taken) leaves it unbound, so the caller
/// tries the next port with the same socket instead of making and closing one per taken port.
pub(crate) fn relay_socket(ip: IpAddr) -> Option<Socket> {
    let s = Socket::new(Domain::for_address(SocketAddr::new(ip, 0)), Type::DGRAM, Some(Protocol::UDP)).ok()?;
    if ip.is_ipv6() {
        s.set_only_v6(true).ok()?;
    }
    set_buffers(&s, RELAY_SOCKET_BUFFER);
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Probes `addr` with a bind *without* SO_REUSEPORT before the shards bind it with SO_REUSEPORT,
/// and resolves port 0 to the port the probe got.
///
/// - An explicit port held by any other socket fails here with `AddrInUse`: another process
///   (a second turnkey, of any data directory) owning the address is refused instead of silently
///   joining its SO_REUSEPORT group and taking about half of its clients. TCP probes set
///   SO_REUSEADDR, which does not pass a listening socket but lets a restart pass the previous
///   run's TIME_WAIT connections.
/// - Port 0: a SO_REUSEPORT socket bound to port 0 may be given a port another process of the
///   same user already holds with SO_REUSEPORT; a plain bind never shares.
pub(crate) fn unshared_port(addr: SocketAddr, ty: Type) -> io::Result<SocketAddr> {
    let probe = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    if ty == Type::STREAM && addr.port() != 0 {
        probe.set_reuse_address(true)?;
    }
    probe.bind(&addr.into())?;
    probe.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Probes `addr` ([`unshared_port`]), binds `n` sockets on the address found with `bind`, and
/// checks that no other process joined in between ([`check_alone`]). For port 0 a collision
/// (another process that resolved the same ephemeral port at the same instant) is retried with a
/// fresh port, up to 8 times; for an explicit port it is the error.
pub(crate) fn bind_alone<S>(
    addr: SocketAddr,
    ty: Type,
    n: usize,
    bind: impl Fn(SocketAddr) -> io::Result<S>,
) -> io::Result<Vec<S>> {
    let mut collisions = 0;
    loop {
        let at = unshared_port(addr, ty)?;
        let socks = (0..n.max(1)).map(|_| bind(at)).collect::<io::Result<Vec<_>>>()?;
        match check_alone(at, ty, socks.len()) {
            Err(e) if addr.port() == 0 && collisions < 8 && e.kind() == io::ErrorKind::AddrInUse => {
                collisions += 1;
                drop(socks);
            }
            checked => return checked.map(|()| socks),
        }
    }
}

/// Checks, after this process bound `ours` SO_REUSEPORT sockets on `addr`, that no other socket
/// is bound to exactly that address (`/proc/net/{udp,tcp}{,6}`: unconnected UDP sockets, or TCP
/// listeners). This closes the window the probe of [`unshared_port`] leaves: two processes that
/// both pass the probe at the same instant and then both bind see each other's sockets here, so
/// at most one of them keeps running (when both bound before either checked, both stop). Where
/// the table cannot be read, nothing is checked.
pub(crate) fn check_alone(addr: SocketAddr, ty: Type, ours: usize) -> io::Result<()> {
    let (table, state) = match (ty == Type::STREAM, addr.is_ipv6()) {
        (false, false) => ("/proc/net/udp", "07"),
        (false, true) => ("/proc/net/udp6", "07"),
        (true, false) => ("/proc/net/tcp", "0A"),
        (true, true) => ("/proc/net/tcp6", "0A"),
    };
    let Ok(text) = std::fs::read_to_string(table) else { return Ok(()) };
    let found = bound_to(&text, addr, state);
    if found > ours {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} other socket(s) joined {addr} while this process bound it", found - ours),
        ));
    }
    Ok(())
}

/// How many lines of a `/proc/net/{udp,tcp}{,6}` table have local address `addr` and state
/// `state` (hex: `07` unconnected UDP, `0A` TCP listen).
fn bound_to(table: &str, addr: SocketAddr, state: &str) -> usize {
    // The kernel prints each 32-bit word of the address as the hex of its in-memory value.
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    let local = format!("{ip}:{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (local_f, st) = (f.nth(1), f.nth(1));
            local_f.is_some_and(|l| l.eq_ignore_ascii_case(&local)) && st == Some(state)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn a_foreign_reuseport_socket_that_joined_after_the_probe_is_seen() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let udp = bind_udp_shards(addr, 2).unwrap();
            let at = udp[0].local_addr().unwrap();
            check_alone(at, Type::DGRAM, 2).unwrap();
            // What a second process racing past the probe would do: join the group.
            let intruder = Socket::new(Domain::for_address(at), Type::DGRAM, None).unwrap();
            intruder.set_reuse_port(true).unwrap();
            if at.is_ipv6() {
                intruder.set_only_v6(true).unwrap();
            }
            intruder.bind(&at.into()).unwrap();
            let e = check_alone(at, Type::DGRAM, 2).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");

            let tcp = bind_tcp_shards(addr, 2).unwrap();
            let at = tcp[0].local_addr().unwrap();
            check_alone(at, Type::STREAM, 2).unwrap();
            // An accepted connection on the same local address is not a listener.
            let _client = std::net::TcpStream::connect(at).unwrap();
            check_alone(at, Type::STREAM, 2).unwrap();
            let intruder = Socket::new(Domain::for_address(at), Type::STREAM, None).unwrap();
            intruder.set_reuse_port(true).unwrap();
            intruder.set_reuse_address(true).unwrap();
            if at.is_ipv6() {
                intruder.set_only_v6(true).unwrap();
            }
            intruder.bind(&at.into()).unwrap();
            intruder.listen(8).unwrap();
            assert_eq!(check_alone(at, Type::STREAM, 2).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        }
    }

    /// Another process resolving the same ephemeral port at the same instant (simulated: the
    /// first bind also lets an intruder join): port 0 moves to a fresh port; an explicit port is
    /// refused.
    #[test]
    fn a_port_zero_collision_is_retried_on_a_fresh_port() {
        let intruders = std::cell::RefCell::new(Vec::new());
        let bind = |at: SocketAddr| {
            let s = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
            s.set_reuse_port(true)?;
            s.bind(&at.into())?;
            if intruders.borrow().is_empty() {
                let other = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
                other.set_reuse_port(true)?;
                other.bind(&at.into())?;
                intruders.borrow_mut().push((at, other));
            }
            Ok(s)
        };
        let socks = bind_alone("127.0.0.1:0".parse().unwrap(), Type::DGRAM, 2, bind).unwrap();
        let got = socks[0].local_addr().unwrap().as_socket().unwrap();
        let (collided, _) = intruders.borrow()[0];
        assert_ne!(got.port(), collided.port(), "moved off the port another process joined");
        assert_eq!(socks.len(), 2);
        drop(socks);

        intruders.borrow_mut().clear();
        let explicit = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = bind_alone(explicit, Type::DGRAM, 1, bind).expect_err("an explicit port is refused");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn proc_net_lines_are_matched_by_exact_address_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
   1: 0100007F:0D96 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
   2: 00000000:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n";
        assert_eq!(
            bound_to(table, "127.0.0.1:3478".parse().unwrap(), "07"),
            if cfg!(target_endian = "little") { 1 } else { 0 }
        );
        assert_eq!(bound_to(table, "0.0.0.0:3478".parse().unwrap(), "07"), 1);
        assert_eq!(bound_to(table, "0.0.0.0:3479".parse().unwrap(), "07"), 0);
    }

    fn tcp_port_zero_never_joins_another_reuseport_group() {
        let held: Vec<_> =
            (0..300).map(|_| bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0)).collect();
        let ports: HashSet<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), held.len(), "every listener got its own port");
        for _ in 0..200 {
            let shards = bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let p = shards[0].local_addr().unwrap().port();
            assert!(!ports.contains(&p), "listener joined a foreign group on port {p}");
            assert_eq!(shards[1].local_addr().unwrap().port(), p);
        }
    }

    /// Another process's SO_REUSEPORT sockets (same user) on ports the kernel could hand out.
    /// Each port is found with a plain bind first ([`unshared_port`]), never by a SO_REUSEPORT
    /// bind to port 0: that one may land in the group of any other process of this user, and
    /// these sockets would then take a share of its clients. Bound that way, the 600 of them
    /// joined the UDP listener of a relay another test ran at the same moment in about one run
    /// in 50 (the 2-minute soak lost UDP packets, docs/benchmarks.md).
    fn foreign_reuseport(n: usize) -> (Vec<std::net::UdpSocket>, HashSet<u16>) {
        let socks: Vec<_> = (0..n)
            .map(|_| bind_reuseport(unshared_port("127.0.0.1:0".parse().unwrap(), Type::DGRAM).unwrap()).unwrap())
            .collect();
        let ports = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
        (socks, ports)
    }

    fn port_zero_never_joins_another_reuseport_group() {
        // A reuseport bind to port 0 may land on any of these ports (about 2% per bind here);
        // 300 binds would almost surely hit one if port 0 were passed to the kernel as is.
        let (_held, ports) = foreign_reuseport(600);
        for _ in 0..300 {
            let shards = bind_udp_shards("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let p = shards[0].local_addr().unwrap().port();
            assert!(!ports.contains(&p), "shard joined a foreign group on port {p}");
            assert_eq!(shards[1].local_addr().unwrap().port(), p, "the shards share one port");
        }
    }

    /// The helper above never joins a SO_REUSEPORT group it did not make: with 250 groups of
    /// "other processes" held (each one socket, as a relay's shard), 600 SO_REUSEPORT binds to
    /// port 0 would land in one of them with a probability of about 99 % (each bind about 1 %
    /// here); bound through the probe, none does.
    fn foreign_sockets_never_join_another_group() {
        let (_others, taken) = foreign_reuseport(250);
        let (_held, ports) = foreign_reuseport(600);
        let joined: Vec<_> = ports.intersection(&taken).collect();
        assert!(joined.is_empty(), "joined the groups on ports {joined:?}");
    }

    /// The four checks above read and churn the kernel's SO_REUSEPORT groups and
    /// `/proc/net/{udp,tcp}`: run side by side (one process each), the hundreds of port-0
    /// reuseport binds of one land in the group another has just checked, and a `/proc` read
    /// racing that churn can skip a line. In sequence, each sees only its own sockets.
    #[test]
    fn reuseport_groups_and_proc_net_checks_in_sequence() {
        a_foreign_reuseport_socket_that_joined_after_the_probe_is_seen();
        port_zero_never_joins_another_reuseport_group();
        tcp_port_zero_never_joins_another_reuseport_group();
        foreign_sockets_never_join_another_group();
    }
}
