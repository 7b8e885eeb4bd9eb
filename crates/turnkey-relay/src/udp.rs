//! The UDP data path of one shard: client-facing sockets (one per listening address, each bound
//! with SO_REUSEPORT so the kernel spreads clients over shards), relay sockets bound on demand,
//! and the tasks that move datagrams between them and the engine.
//!
//! A shard is one thread running a current-thread tokio runtime; its engine lives in a
//! `RefCell` that is borrowed only between awaits, so the data path takes no lock. Each readiness
//! event on a socket is one batched receive (`recvmmsg`, GRO), every datagram through the engine,
//! and one flush of the answers (UDP GSO for trains); see `udp_batch`. A lone datagram is
//! answered with one direct `sendto`. The buffers are the shard's, reused: no heap allocation
//! per datagram.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use turnkey_proto::ports::candidates;

use crate::engine::{PortRequest, RelayBinding, RelayPorts};
use crate::metrics::DropReason;
use crate::shard::ShardState;
use crate::types::{PeerAddr, RelayHandle};
use crate::udp_batch::UdpSock;

/// Kernel socket buffer for client-facing sockets.
pub(crate) const CLIENT_SOCKET_BUFFER: usize = 4 << 20;
/// Kernel socket buffer for relay sockets.
const RELAY_SOCKET_BUFFER: usize = 1 << 20;

/// Where relay sockets are bound and what is advertised.
#[derive(Debug, Clone)]
pub struct RelayAddrs {
    /// IPv4 address relay sockets bind to (None: no IPv4 relays).
    pub v4: Option<IpAddr>,
    /// IPv6 address relay sockets bind to (None: no IPv6 relays).
    pub v6: Option<IpAddr>,
    /// IPv4 address advertised instead of `v4` (1:1 NAT).
    pub external_v4: Option<IpAddr>,
    /// IPv6 address advertised instead of `v6`.
    pub external_v6: Option<IpAddr>,
    /// Port range for relay sockets.
    pub ports: RangeInclusive<u16>,
}

/// Binds `n` UDP sockets on `addr` with SO_REUSEPORT (the kernel hashes each client to one of
/// them), after `shard::unshared_port` made sure no other socket owns the address (and resolved
/// port 0); `shard::bind_alone` then makes sure none joined in between.
pub fn bind_udp_shards(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    crate::shard::bind_alone(addr, Type::DGRAM, n, bind_reuseport)
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
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

/// Sockets held for RESERVATION-TOKENs, shared by every shard: the Allocate that redeems a token
/// may arrive on any shard, so the held socket moves to whichever shard asks first (the rules
/// and the 30 s lifetime are turnkey-proto's).
pub type Reservations = turnkey_proto::ports::Reservations<std::net::UdpSocket>;

/// Relay sockets of one shard; the engine binds and releases them through [`RelayPorts`]. A
/// socket's receive task is started from the engine's `AllocationCreated` event
/// ([`start_relays`]), not while the engine is deciding.
pub(crate) struct Ports {
    addrs: RelayAddrs,
    reservations: Reservations,
    next: u32,
    sockets: HashMap<u32, (Rc<UdpSock>, Option<JoinHandle<()>>)>,
    /// Port draws and reservation tokens.
    rng: StdRng,
}

impl Ports {
    pub fn new(addrs: RelayAddrs, reservations: Reservations) -> Self {
        let rng = StdRng::from_entropy();
        Self { addrs, reservations, next: 0, sockets: HashMap::new(), rng }
    }

    /// Sends from a relay socket to a peer.
    #[inline]
    pub fn send(&self, relay: RelayHandle, to: PeerAddr, data: &[u8]) -> Result<(), DropReason> {
        let Some((s, _)) = self.sockets.get(&relay.0) else {
            return Err(DropReason::NoAllocation);
        };
        send_now(&s.socket, data, to.0)
    }

    /// Relay socket `relay`.
    #[inline]
    pub(crate) fn sock(&self, relay: RelayHandle) -> Option<&UdpSock> {
        self.sockets.get(&relay.0).map(|(s, _)| &**s)
    }

    /// Binds a relay socket on the first free port the engine's rules choose (and, with the R
    /// bit, the next port too).
    fn bind_socket(
        &mut self,
        ip: IpAddr,
        request: PortRequest,
    ) -> Option<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        for c in candidates(request, self.addrs.ports.clone(), &mut self.rng)? {
            let Some(s) = bind_relay(SocketAddr::new(ip, c.port)) else { continue };
            if !c.reserve_next {
                return Some((s, None));
            }
            if let Some(next) = bind_relay(SocketAddr::new(ip, c.port + 1)) {
                return Some((s, Some(next)));
            }
        }
        None
    }

    fn install(&mut self, std_socket: std::net::UdpSocket) -> Option<(RelayHandle, SocketAddr)> {
        let local = std_socket.local_addr().ok()?;
        let socket = Rc::new(UdpSock::new(std_socket).ok()?);
        self.next = self.next.wrapping_add(1);
        let handle = RelayHandle(self.next);
        self.sockets.insert(handle.0, (socket, None));
        let external = if local.is_ipv6() { self.addrs.external_v6 } else { self.addrs.external_v4 };
        Some((handle, SocketAddr::new(external.unwrap_or(local.ip()), local.port())))
    }
}

/// Sends one datagram with one non-blocking `sendto`, bypassing tokio's readiness cache: the
/// data path never waits for writability (a full socket buffer drops the datagram), and tokio's
/// `try_send_to` answers `WouldBlock` without trying while a freshly registered socket has not
/// yet been seen writable by the reactor, which dropped the first datagram to a new peer on a
/// busy shard.
#[inline]
pub(crate) fn send_now(s: &UdpSocket, data: &[u8], to: SocketAddr) -> Result<(), DropReason> {
    socket2::SockRef::from(s).send_to(data, &to.into()).map(|_| ()).map_err(|_| DropReason::QueueFull)
}

fn bind_relay(addr: SocketAddr) -> Option<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).ok()?;
    if addr.is_ipv6() {
        s.set_only_v6(true).ok()?;
    }
    set_buffers(&s, RELAY_SOCKET_BUFFER);
    s.set_nonblocking(true).ok()?;
    s.bind(&addr.into()).ok()?;
    Some(s.into())
}

impl RelayPorts for Ports {
    fn bind(&mut self, now: Instant, ipv6: bool, request: PortRequest) -> Option<RelayBinding> {
        let (socket, next) = match request {
            PortRequest::Reserved(token) => (self.reservations.take(token, now)?, None),
            _ => {
                let ip = if ipv6 { self.addrs.v6? } else { self.addrs.v4? };
                self.bind_socket(ip, request)?
            }
        };
        let (handle, advertised) = self.install(socket)?;
        let reservation = next.map(|n| self.reservations.hold(n, now, &mut self.rng));
        Some(RelayBinding { handle, advertised, reservation })
    }

    fn release(&mut self, handle: RelayHandle) {
        if let Some((_, Some(task))) = self.sockets.remove(&handle.0) {
            task.abort();
        }
    }
}

impl Ports {
    /// Relay socket `relay`, shared (for its receive task).
    pub(crate) fn sock_rc(&self, relay: RelayHandle) -> Option<Rc<UdpSock>> {
        self.sockets.get(&relay.0).map(|(s, _)| s.clone())
    }

    /// Records the receive task of relay socket `relay`; aborts it if the socket is gone.
    pub(crate) fn set_task(&mut self, relay: RelayHandle, task: JoinHandle<()>) {
        match self.sockets.get_mut(&relay.0) {
            Some((_, slot)) => *slot = Some(task),
            None => task.abort(),
        }
    }
}

/// Receives from clients on client-facing socket `idx` until the shard stops: one batched
/// receive per readiness event, handled and flushed before the next await.
pub(crate) async fn client_loop(shard: Rc<RefCell<ShardState>>, sock: Rc<UdpSock>, idx: usize) {
    loop {
        if let Err(e) = sock.socket.readable().await {
            tracing::warn!(error = %e, "udp socket no longer pollable");
            return;
        }
        let result = shard.borrow_mut().client_readable(idx, &sock);
        ShardState::start_relays(&shard);
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::WouldBlock {
                // ICMP errors surface here on some systems; they concern one peer only.
                tracing::trace!(error = %e, "udp recv error");
            }
        }
    }
}

/// Receives from peers on one relay socket, for the life of its allocation (see
/// [`client_loop`]).
///
/// A backlog (the shard was held up: descheduled, or a long step) is drained one full batch per
/// turn of the shard's loop: the task yields after a batch that filled every buffer, so the
/// writers of the TCP/TLS connections it fills run in between. Drained in one go, a backlog
/// larger than a connection's outbound queue (`outbound_queue` frames) would be dropped as
/// `queue_full` although the client reads at full speed (the soak's drops, docs/benchmarks.md).
pub(crate) async fn peer_loop(shard: Rc<RefCell<ShardState>>, sock: Rc<UdpSock>, handle: RelayHandle) {
    loop {
        if sock.socket.readable().await.is_err() {
            return;
        }
        let result = shard.borrow_mut().peer_readable(handle, &sock);
        match result {
            Ok(true) => tokio::task::yield_now().await,
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::trace!(error = %e, "relay recv error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    /// Another process's SO_REUSEPORT sockets (same user) on ports the kernel could hand out.
    fn foreign_reuseport(n: usize) -> (Vec<std::net::UdpSocket>, HashSet<u16>) {
        let socks: Vec<_> = (0..n).map(|_| bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap()).collect();
        let ports = socks.iter().map(|s| s.local_addr().unwrap().port()).collect();
        (socks, ports)
    }

    #[test]
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

    #[test]
    fn a_fresh_relay_socket_sends_before_the_reactor_has_polled_it() {
        // The first datagram to a peer often follows the socket's creation with no reactor turn
        // in between (a busy shard); it must be sent, not dropped as if the buffer were full.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = PeerAddr(peer.local_addr().unwrap());
            let addrs = RelayAddrs {
                v4: Some("127.0.0.1".parse().unwrap()),
                v6: None,
                external_v4: None,
                external_v6: None,
                ports: 49152..=65535,
            };
            let mut ports = Ports::new(addrs, Reservations::default());
            for i in 0..20u8 {
                // No await between the bind and the send.
                #[allow(clippy::disallowed_methods, reason = "any instant: no reservation involved")]
                let binding = ports.bind(Instant::now(), false, PortRequest::Any).unwrap();
                assert_eq!(ports.send(binding.handle, to, &[i]), Ok(()), "datagram {i}");
                let mut buf = [0u8; 4];
                let (n, from) = peer.recv_from(&mut buf).unwrap();
                assert_eq!((&buf[..n], from.port()), (&[i][..], binding.advertised.port()));
            }
        });
    }
}
