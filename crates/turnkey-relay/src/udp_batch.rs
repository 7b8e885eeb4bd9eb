//! What one readiness event on a shard's UDP socket does: one `recvmmsg` (GRO trains split back
//! into the datagrams that were sent), every datagram through the engine as before, and the
//! Transmits of that receive sent together at the end ([`crate::batch::SendBatch`]: consecutive
//! same-socket, same-destination, same-size datagrams leave as one UDP GSO send).
//!
//! Nothing waits for a batch to fill: a batch is whatever one receive returned, and it is flushed
//! before the task awaits again. A receive that returned a single datagram (the common case below
//! a few thousand packets per second per socket) is answered with one direct `sendto` as before,
//! without copying it into the send batch. Answers to TCP/TLS clients are queued on their
//! connection at once, as before; only UDP sends are batched.

use std::io;

use tokio::net::UdpSocket;

use crate::batch::{offload, RecvBatch, SendBatch, Sockets, UdpIo};
use crate::engine::{Engine, Transmit, PEER_HEADROOM, PEER_TAILROOM};
use crate::metrics::{DropReason, UdpBatchCounts};
use crate::shard::{ClientSockets, ShardState};
use crate::types::{ClientAddr, FiveTuple, PeerAddr, RelayHandle, Transport};
use crate::udp::Ports;

/// Buffers per receive syscall (`quinn_udp::BATCH_SIZE` on Linux).
const RECV_SLOTS: usize = 32;

/// A UDP socket of the data path with its batching state (GRO on, offload limits).
#[derive(Debug)]
pub(crate) struct UdpSock {
    pub socket: UdpSocket,
    pub io: UdpIo,
}

impl UdpSock {
    /// Configures `socket` for batched I/O and registers it with the shard's reactor.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let io = UdpIo::new(&socket)?;
        Ok(Self { socket: UdpSocket::from_std(socket)?, io })
    }

    /// One non-blocking `recvmmsg` into `batch`. The socket's readiness is cleared when the
    /// kernel had nothing (`WouldBlock`) and also when it returned fewer buffers than asked: a
    /// short batch means the queue is empty, so the next datagram raises a new readiness event,
    /// and the extra `recvmmsg` that would only have returned `WouldBlock` is saved. (tokio
    /// clears readiness only if no event came since it was observed, so nothing is missed.)
    pub fn recv(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let mut got = 0;
        let result = self.socket.try_io(tokio::io::Interest::READABLE, || {
            got = self.io.recv(&self.socket, batch)?;
            if got < batch.slots() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            r => r,
        }
    }
}

/// Which socket a batched datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SockKey {
    /// The shard's client-facing socket at this index.
    Client(usize),
    /// An allocation's relay socket.
    Relay(RelayHandle),
}

/// One shard's batch buffers, reused from readiness event to readiness event (the receive
/// buffers are shared by all the shard's sockets: a batch is handled without an await).
pub(crate) struct UdpBatches {
    client: RecvBatch,
    peer: RecvBatch,
    out: SendBatch<SockKey>,
    /// How much was batched since the last export.
    pub counts: UdpBatchCounts,
}

impl UdpBatches {
    pub fn new() -> Self {
        Self {
            client: RecvBatch::new(RECV_SLOTS),
            peer: RecvBatch::with_room(RECV_SLOTS, PEER_HEADROOM, PEER_TAILROOM),
            out: SendBatch::new(offload().gso_segments),
            counts: UdpBatchCounts::default(),
        }
    }
}

impl ShardState {
    /// Receives once on client-facing socket `idx` (whatever is there) and handles it; returns
    /// the receive's error (`WouldBlock`: nothing was there).
    pub fn client_readable(&mut self, idx: usize, sock: &UdpSock) -> io::Result<()> {
        let Self { engine, ports, clients, batches, .. } = self;
        sock.recv(&mut batches.client)?;
        let Some(local) = clients.udp_local(idx) else { return Ok(()) };
        let now = crate::clock::now();
        let UdpBatches { client: rb, out, counts, .. } = batches;
        let direct = count_receive(counts, rb);
        for d in rb.datagrams() {
            let tuple = FiveTuple { transport: Transport::Udp, client: ClientAddr(d.from), server: local };
            let t = engine.handle_client(now, tuple, d.data, ports);
            emit(engine, ports, clients, out, direct, t);
        }
        flush(engine, ports, clients, out, counts);
        self.settle();
        Ok(())
    }

    /// Receives once on relay socket `relay` and handles what came (see
    /// [`ShardState::client_readable`]). `Ok(true)`: the receive filled every buffer, so more
    /// may be queued.
    pub fn peer_readable(&mut self, relay: RelayHandle, sock: &UdpSock) -> io::Result<bool> {
        let Self { engine, ports, clients, batches, .. } = self;
        let got = sock.recv(&mut batches.peer)?;
        let full = got >= batches.peer.slots();
        let now = crate::clock::now();
        let UdpBatches { peer: rb, out, counts, .. } = batches;
        let direct = count_receive(counts, rb);
        rb.for_each_in_place(|from, _ecn, buf, len| {
            let t = engine.handle_peer(now, relay, PeerAddr(from), buf, len);
            emit(engine, ports, clients, out, direct, t);
        });
        flush(engine, ports, clients, out, counts);
        Ok(full)
    }
}

/// Counts one receive; true when it brought a single datagram (answered directly).
fn count_receive(udp: &mut UdpBatchCounts, rb: &RecvBatch) -> bool {
    let coalesced = rb.coalesced();
    udp.recv_calls += 1;
    udp.gro_datagrams += coalesced as u64;
    rb.buffers() == 1 && coalesced == 0
}

/// Sends what the engine answered: at once when `direct` (and always to TCP/TLS clients),
/// otherwise into the send batch.
#[inline]
fn emit(
    engine: &mut Engine,
    ports: &Ports,
    clients: &ClientSockets,
    out: &mut SendBatch<SockKey>,
    direct: bool,
    t: Option<Transmit<'_>>,
) {
    let Some(t) = t else { return };
    if direct {
        crate::shard::dispatch(engine, ports, clients, Some(t));
        return;
    }
    let result = match t {
        Transmit::Peer { relay, to, data } => {
            out.push(SockKey::Relay(relay), to.0, None, &data);
            Ok(())
        }
        Transmit::Client { to, data } if to.transport == Transport::Udp => match clients.udp_index(to.server) {
            Some(i) => {
                out.push(SockKey::Client(i), to.client.0, None, &data);
                Ok(())
            }
            None => Err(DropReason::NoAllocation),
        },
        Transmit::Client { to, data } => clients.send(to, &data),
    };
    if let Err(reason) = result {
        engine.count_drop(reason);
    }
}

/// Sends the batch: one syscall per GSO run; what the kernel refuses is counted as dropped
/// (`queue_full`, as a single send's failure is), the others still leave.
fn flush(
    engine: &mut Engine,
    ports: &Ports,
    clients: &ClientSockets,
    out: &mut SendBatch<SockKey>,
    udp: &mut UdpBatchCounts,
) {
    if out.is_empty() {
        return;
    }
    let mut sink = Sockets::new(|k: SockKey| {
        let s = match k {
            SockKey::Client(i) => clients.udp_sock(i)?,
            SockKey::Relay(h) => ports.sock(h)?,
        };
        Some((&s.io, &s.socket))
    });
    let stats = out.flush(&mut sink);
    engine.count_drops(DropReason::QueueFull, stats.dropped() as u64);
    udp.gso_sends += stats.gso_sends as u64;
    udp.gso_datagrams += stats.gso_datagrams as u64;
    udp.gso_fallbacks += stats.gso_fallbacks as u64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Waits (bounded) for readiness, then receives once.
    async fn recv_once(sock: &UdpSock, batch: &mut RecvBatch) -> io::Result<usize> {
        tokio::time::timeout(Duration::from_secs(2), sock.socket.readable())
            .await
            .map_err(|_| io::Error::other("no readiness event within 2 s"))??;
        sock.recv(batch)
    }

    #[test]
    fn a_short_batch_clears_readiness_and_the_next_datagram_raises_it_again() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sock = UdpSock::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
            let to = sock.socket.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut batch = RecvBatch::new(4);
            for round in 0..20u8 {
                // One datagram: a short batch (readiness cleared, no extra syscall) ...
                sender.send_to(&[round], to).unwrap();
                assert_eq!(recv_once(&sock, &mut batch).await.unwrap(), 1, "round {round}");
                assert_eq!(batch.datagrams().next().unwrap().data, [round]);
                // ... and the next datagram is seen all the same.
            }
            // A full batch keeps readiness: the rest is received without a new event.
            for i in 0..6u8 {
                sender.send_to(&vec![i; usize::from(i) + 1], to).unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(recv_once(&sock, &mut batch).await.unwrap(), 4);
            assert_eq!(sock.recv(&mut batch).unwrap(), 2);
            assert_eq!(sock.recv(&mut batch).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        });
    }
}
