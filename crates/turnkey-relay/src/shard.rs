//! What one shard's drivers share: its engine, relay ports, client-facing sockets and UDP batch
//! buffers ([`ShardState`], borrowed between awaits only), the dispatch of the engine's
//! [`Transmit`]s to UDP sockets and stream connections, and the port-0 resolution every
//! SO_REUSEPORT bind uses. (The batched UDP receive and send of a readiness event is in
//! `udp_batch`.)
//! The UDP driver (`udp`) and the TCP/TLS driver (`stream`) both build on this file and not on
//! each other.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use socket2::{Domain, Socket, Type};

use crate::engine::{Engine, Transmit};
use crate::metrics::DropReason;
use crate::stream::StreamConn;
use crate::types::{FiveTuple, Now, Transport};
use crate::udp::{send_now, Ports};
use crate::udp_batch::{UdpBatches, UdpSock};

/// One shard's engine and its relay sockets, shared by the shard's tasks.
pub(crate) struct ShardState {
    pub engine: Engine,
    pub ports: Ports,
    pub clients: ClientSockets,
    pub batches: UdpBatches,
}

impl ShardState {
    /// A shard state with no client sockets yet.
    pub fn new(engine: Engine, ports: Ports) -> Self {
        Self { engine, ports, clients: ClientSockets::default(), batches: UdpBatches::new() }
    }

    /// Hands a datagram or frame from a client to the engine and sends its answer.
    #[inline]
    pub fn client_input(&mut self, now: Now, tuple: FiveTuple, bytes: &[u8]) {
        let Self { engine, ports, clients, .. } = self;
        let out = engine.handle_client(now, tuple, bytes, ports);
        dispatch(engine, ports, clients, out);
    }
}

/// Sends what the engine wants sent: to a peer from a relay socket, or to a client over its
/// transport. What cannot be sent is counted as a drop.
#[inline]
pub(crate) fn dispatch(engine: &mut Engine, ports: &Ports, clients: &ClientSockets, out: Option<Transmit<'_>>) {
    let result = match out {
        Some(Transmit::Peer { relay, to, data }) => ports.send(relay, to, &data),
        Some(Transmit::Client { to, data }) => clients.send(to, &data),
        None => Ok(()),
    };
    if let Err(reason) = result {
        engine.count_drop(reason);
    }
}

/// The shard's client-facing UDP sockets, by local address, and its TCP/TLS connections.
#[derive(Default)]
pub(crate) struct ClientSockets {
    udp: Vec<(SocketAddr, Rc<UdpSock>)>,
    streams: HashMap<FiveTuple, StreamConn>,
}

impl ClientSockets {
    /// Adds a client-facing UDP socket; returns its index (see [`ClientSockets::udp_sock`]).
    pub fn add_udp(&mut self, local: SocketAddr, s: Rc<UdpSock>) -> usize {
        self.udp.push((local, s));
        self.udp.len() - 1
    }

    /// The local address of client-facing socket `idx`.
    pub fn udp_local(&self, idx: usize) -> Option<SocketAddr> {
        self.udp.get(idx).map(|(a, _)| *a)
    }

    /// The index of the client-facing socket bound to `local`.
    #[inline]
    pub fn udp_index(&self, local: SocketAddr) -> Option<usize> {
        self.udp.iter().position(|(a, _)| *a == local)
    }

    /// Client-facing socket `idx`.
    #[inline]
    pub fn udp_sock(&self, idx: usize) -> Option<&UdpSock> {
        self.udp.get(idx).map(|(_, s)| &**s)
    }

    pub fn add_stream(&mut self, tuple: FiveTuple, conn: StreamConn) {
        self.streams.insert(tuple, conn);
    }

    pub fn remove_stream(&mut self, tuple: &FiveTuple) -> Option<StreamConn> {
        self.streams.remove(tuple)
    }

    pub fn stream_tuples(&self) -> impl Iterator<Item = FiveTuple> + '_ {
        self.streams.keys().copied()
    }

    pub fn stream_task(&self, tuple: &FiveTuple) -> Option<tokio::task::AbortHandle> {
        self.streams.get(tuple).map(StreamConn::task)
    }

    /// Bytes queued towards a stream client.
    #[cfg(test)]
    pub fn queued_bytes(&self, tuple: &FiveTuple) -> Option<usize> {
        self.streams.get(tuple).map(StreamConn::queued_bytes)
    }

    /// Sends to a client: a UDP datagram (a full socket buffer drops it), or a frame queued on
    /// the client's connection (a full queue drops it).
    pub fn send(&self, to: FiveTuple, data: &[u8]) -> Result<(), DropReason> {
        match to.transport {
            Transport::Udp => {
                let Some((_, s)) = self.udp.iter().find(|(a, _)| *a == to.server) else {
                    return Err(DropReason::NoAllocation);
                };
                send_now(&s.socket, data, to.client.0)
            }
            Transport::Tcp | Transport::Tls => match self.streams.get(&to) {
                Some(c) if c.try_send(data) => Ok(()),
                Some(_) => Err(DropReason::QueueFull),
                None => Err(DropReason::NoAllocation),
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn tcp_port_zero_never_joins_another_reuseport_group() {
        let held: Vec<_> = (0..300)
            .map(|_| crate::stream::bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0))
            .collect();
        let ports: HashSet<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), held.len(), "every listener got its own port");
        for _ in 0..200 {
            let shards = crate::stream::bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let p = shards[0].local_addr().unwrap().port();
            assert!(!ports.contains(&p), "listener joined a foreign group on port {p}");
            assert_eq!(shards[1].local_addr().unwrap().port(), p);
        }
    }
}
