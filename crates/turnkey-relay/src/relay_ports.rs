//! The relay sockets of one shard, a leaf of the relay's drivers: where they are bound and what
//! is advertised ([`RelayAddrs`]), the sockets held for RESERVATION-TOKENs ([`Reservations`]),
//! and [`Ports`], the engine's [`RelayPorts`]: it binds the port the engine's rules choose and
//! releases it, and holds each socket's receive task once the UDP driver started it. It knows
//! no shard and starts no task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::rc::Rc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;
use turnkey_proto::ports::candidates;

use crate::bind::relay_socket;
use crate::engine::{PortRequest, RelayBinding, RelayPorts};
use crate::metrics::DropReason;
use crate::types::{PeerAddr, RelayHandle};
use crate::udp_sock::{send_now, UdpSock};

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

/// Sockets held for RESERVATION-TOKENs, shared by every shard: the Allocate that redeems a token
/// may arrive on any shard, so the held socket moves to whichever shard asks first (the rules
/// and the 30 s lifetime are turnkey-proto's).
pub type Reservations = turnkey_proto::ports::Reservations<std::net::UdpSocket>;

/// Relay sockets of one shard; the engine binds and releases them through [`RelayPorts`]. A
/// socket's receive task is started from the engine's `AllocationCreated` event
/// (`udp::start_relays`), not while the engine is deciding.
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
        // One socket tries the candidates in turn (a failed bind leaves it unbound); only a
        // candidate bound without its reserved next port uses a socket up.
        let mut socket = relay_socket(ip)?;
        let mut next = None;
        for c in candidates(request, self.addrs.ports.clone(), &mut self.rng)? {
            if socket.bind(&SocketAddr::new(ip, c.port).into()).is_err() {
                continue;
            }
            if !c.reserve_next {
                return Some((socket.into(), None));
            }
            let second = match next.take() {
                Some(s) => s,
                None => relay_socket(ip)?,
            };
            if second.bind(&SocketAddr::new(ip, c.port + 1).into()).is_ok() {
                return Some((socket.into(), Some(second.into())));
            }
            next = Some(second);
            socket = relay_socket(ip)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A loopback range of 8 free UDP ports below the kernel's ephemeral range (no port-0 bind
    /// lands there), with every port but `free` held by a socket of this test.
    fn crowded_range(free: &[u16]) -> (RangeInclusive<u16>, Vec<std::net::UdpSocket>) {
        for base in (20_000..30_000u16).step_by(16) {
            let all: Vec<_> =
                (base..base + 8).filter_map(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).ok()).collect();
            if all.len() == 8 {
                let held =
                    all.into_iter().filter(|s| !free.contains(&(s.local_addr().unwrap().port() - base))).collect();
                return (base..=base + 7, held);
            }
        }
        panic!("no 8 free ports");
    }

    #[test]
    fn taken_ports_are_skipped_and_a_pair_is_found_among_them() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            // Free: offsets 4 and 5 (an even port and the next) and 7 (odd).
            let (range, _held) = crowded_range(&[4, 5, 7]);
            let base = *range.start();
            let v4 = Some("127.0.0.1".parse().unwrap());
            let addrs = RelayAddrs { v4, v6: None, external_v4: None, external_v6: None, ports: range };
            let mut ports = Ports::new(addrs, Reservations::default());
            #[allow(clippy::disallowed_methods, reason = "any instant: the reservation is not redeemed")]
            let now = Instant::now();
            let pair = ports.bind(now, false, PortRequest::EvenReserveNext).expect("the one free pair");
            assert_eq!(pair.advertised.port(), base + 4);
            assert!(pair.reservation.is_some(), "the next port is held for the token");
            // Left: offset 7 only; every other draw is a taken port.
            let odd = ports.bind(now, false, PortRequest::Any).expect("the last free port");
            assert_eq!(odd.advertised.port(), base + 7);
            assert!(ports.bind(now, false, PortRequest::Any).is_none(), "all 8 taken now");
        });
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
