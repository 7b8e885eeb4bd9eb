//! Where a shard's answers to clients go, a leaf of the relay's drivers: the shard's
//! client-facing UDP sockets and TCP/TLS connections ([`ClientSockets`]), and [`dispatch`], which
//! sends one engine [`Transmit`] (to a peer from a relay socket, or to a client over its
//! transport) and counts what cannot be sent as a drop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use crate::engine::{Engine, Transmit};
use crate::metrics::DropReason;
use crate::relay_ports::Ports;
use crate::stream_conn::StreamConn;
use crate::types::{FiveTuple, Transport};
use crate::udp_sock::{send_now, UdpSock};

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
