//! The batching of one readiness event on a shard's UDP socket (driven by the shard's
//! `client_readable` / `peer_readable`), a leaf of the relay's drivers: one `recvmmsg` (GRO trains split back
//! into the datagrams that were sent), every datagram through the engine as before, and the
//! Transmits of that receive sent together at the end ([`crate::batch::SendBatch`]: consecutive
//! same-socket, same-destination, same-size datagrams leave as one UDP GSO send).
//!
//! Nothing waits for a batch to fill: a batch is whatever one receive returned, and it is flushed
//! before the task awaits again. A receive that returned a single datagram (the common case below
//! a few thousand packets per second per socket) is answered with one direct `sendto` as before,
//! without copying it into the send batch. Answers to TCP/TLS clients are queued on their
//! connection at once, as before; only UDP sends are batched.

use crate::batch::{offload, RecvBatch, SendBatch, Sockets};
use crate::clients::{dispatch, ClientSockets};
use crate::engine::{Engine, Transmit, PEER_HEADROOM, PEER_TAILROOM};
use crate::metrics::{DropReason, UdpBatchCounts};
use crate::relay_ports::Ports;
use crate::types::Transport;
use crate::udp_sock::SockKey;

/// Buffers per receive syscall (`quinn_udp::BATCH_SIZE` on Linux).
const RECV_SLOTS: usize = 32;

/// One shard's batch buffers, reused from readiness event to readiness event (the receive
/// buffers are shared by all the shard's sockets: a batch is handled without an await).
pub(crate) struct UdpBatches {
    /// Receive buffers of the client-facing sockets.
    pub client: RecvBatch,
    /// Receive buffers of the relay sockets (with room for a ChannelData header or a Data
    /// indication around each datagram).
    pub peer: RecvBatch,
    /// Answers of one receive, flushed before the next await.
    pub out: SendBatch<SockKey>,
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

/// Counts one receive; true when it brought a single datagram (answered directly).
pub(crate) fn count_receive(udp: &mut UdpBatchCounts, rb: &RecvBatch) -> bool {
    let coalesced = rb.coalesced();
    udp.recv_calls += 1;
    udp.gro_datagrams += coalesced as u64;
    rb.buffers() == 1 && coalesced == 0
}

/// Sends what the engine answered: at once when `direct` (and always to TCP/TLS clients),
/// otherwise into the send batch.
#[inline]
pub(crate) fn emit(
    engine: &mut Engine,
    ports: &Ports,
    clients: &ClientSockets,
    out: &mut SendBatch<SockKey>,
    direct: bool,
    t: Option<Transmit<'_>>,
) {
    let Some(t) = t else { return };
    if direct {
        dispatch(engine, ports, clients, Some(t));
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
pub(crate) fn flush(
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
