//! Batched UDP I/O: one `recvmmsg` per readiness event with UDP GRO, and sends coalesced into UDP
//! GSO super-datagrams, on top of `quinn-udp` (which keeps every `unsafe` cmsg and `mmsghdr` line
//! inside that crate; this workspace denies `unsafe_code`).
//!
//! - [`UdpIo`] configures one socket (GRO on, ECN and destination-address reporting) and does its
//!   syscalls; [`offload`] tells, once per process and logged once, what the kernel supports.
//! - [`RecvBatch`] receives whatever one readiness event delivers (never waits for a batch to
//!   fill) and yields every datagram, splitting GRO buffers back into the datagrams the sender
//!   sent, with its source.
//! - [`SendBatch`] collects the datagrams a receive batch produced and, at [`SendBatch::flush`],
//!   sends each run of consecutive same-socket, same-destination, same-size datagrams as one GSO
//!   send (the last segment may be shorter, as GSO allows). Datagrams to one destination leave in
//!   the order they were pushed. A failing destination does not stop the others: its datagrams
//!   are counted in [`FlushStats`], a GSO send the kernel refuses is retried datagram by datagram.
//!
//! Why no `sendmmsg`: every allocation has its own relay socket, and `sendmmsg` batches only
//! datagrams of one socket. What one receive batch sends through one socket is, in practice, one
//! flow (a client's train to its peer, a peer's train back to its client), which GSO already
//! turns into one syscall *and* one pass through the network stack; `quinn-udp` sends with
//! `sendmsg`, one per run.

mod gro_pin;
mod recv;
mod restore;
mod send;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::OnceLock;

pub use quinn_udp::EcnCodepoint as Ecn;
use quinn_udp::{UdpSockRef, UdpSocketState};
pub use recv::{Datagram, RecvBatch, RECV_SLOT};
pub use send::{FlushStats, Outgoing, SendBatch, SendSink, MAX_GSO_BYTES, MAX_GSO_SEGMENT_V4, MAX_GSO_SEGMENT_V6};

/// What the kernel offers for UDP segmentation offload, detected once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Most datagrams one GSO send may carry (1: no GSO, every datagram is its own send).
    pub gso_segments: usize,
    /// Whether UDP GRO can be enabled (received trains arrive as one buffer).
    pub gro: bool,
}

/// Detects GSO and GRO support on first call (one probe socket on loopback, once per process)
/// and logs the result once; later calls return the same answer.
pub fn offload() -> Offload {
    static OFFLOAD: OnceLock<Offload> = OnceLock::new();
    *OFFLOAD.get_or_init(|| {
        let found = probe().unwrap_or(Offload { gso_segments: 1, gro: false });
        tracing::info!(
            gso = found.gso_segments > 1,
            gso_segments = found.gso_segments,
            gro = found.gro,
            "UDP segmentation offload{}",
            if found.gso_segments > 1 && found.gro { "" } else { " (partly unavailable: falling back)" }
        );
        found
    })
}

fn probe() -> io::Result<Offload> {
    let s = std::net::UdpSocket::bind(("127.0.0.1", 0)).or_else(|_| std::net::UdpSocket::bind(("::1", 0)))?;
    let io = UdpIo::new(&s)?;
    Ok(Offload { gso_segments: io.max_gso_segments(), gro: io.gro() })
}

/// One UDP socket's batching state: configures the socket once (GRO, ECN and destination
/// address reporting) and performs its batched syscalls. Keep one per socket, next to it.
///
/// `quinn-udp` (0.6) configures and probes the socket it is given: no other socket is opened.
/// It also sets options that suit QUIC but not a relay (path-MTU probing, `IPV6_DONTFRAG`,
/// receive timestamps); `new` puts each back as it was (`restore.rs`), so a datagram larger than
/// the route's MTU still leaves in fragments, over IPv4 and IPv6, and the control data of a GRO
/// train keeps its ECN bits.
#[derive(Debug)]
pub struct UdpIo {
    state: UdpSocketState,
}

impl UdpIo {
    /// Configures `socket` (which must be a bound UDP socket; it is made non-blocking).
    pub fn new(socket: &impl AsFd) -> io::Result<Self> {
        let fd = socket.as_fd();
        let saved = restore::Saved::read(fd);
        gro_pin::pin();
        let state = UdpSocketState::new(UdpSockRef::from(socket))?;
        saved.restore(fd)?;
        Ok(Self { state })
    }

    /// Most segments one GSO send on this socket may carry now (1 once the kernel refused GSO
    /// on it).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// Whether GRO is available (received trains may arrive as one buffer).
    pub fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    /// Sends one [`Outgoing`] (one datagram, or a GSO train) with one `sendmsg`. Errors are
    /// returned as they are, `WouldBlock` included (a full socket buffer).
    pub fn send(&self, socket: &impl AsFd, out: &Outgoing<'_>) -> io::Result<()> {
        let t = quinn_udp::Transmit {
            destination: out.to,
            ecn: out.ecn,
            contents: out.contents,
            segment_size: out.segment_size,
            src_ip: None,
        };
        self.state.try_send(UdpSockRef::from(socket), &t)
    }

    /// One non-blocking `recvmmsg` into `batch` (see [`RecvBatch::recv`]).
    pub fn recv(&self, socket: &impl AsFd, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.recv_with(|bufs, meta| self.state.recv(UdpSockRef::from(socket), bufs, meta))
    }

    /// Waits until `socket` is readable, then receives what is there with one `recvmmsg`:
    /// whatever one readiness event delivers, never waiting for more.
    pub async fn recv_ready(&self, socket: &tokio::net::UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(tokio::io::Interest::READABLE, || self.recv(socket, batch)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }
}

/// A [`SendSink`] over real sockets, found by key with `lookup` (an unknown key fails its
/// datagrams).
pub struct Sockets<'a, F> {
    lookup: F,
    _borrow: std::marker::PhantomData<&'a ()>,
}

impl<'a, F> Sockets<'a, F> {
    /// Sends through the sockets `lookup` finds.
    pub fn new(lookup: F) -> Self {
        Self { lookup, _borrow: std::marker::PhantomData }
    }
}

impl<F> std::fmt::Debug for Sockets<'_, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sockets")
    }
}

impl<'a, K, S, F> SendSink<K> for Sockets<'a, F>
where
    S: AsFd + 'a,
    F: Fn(K) -> Option<(&'a UdpIo, &'a S)>,
{
    fn max_segments(&self, key: K) -> usize {
        (self.lookup)(key).map_or(1, |(io, _)| io.max_gso_segments())
    }

    fn send(&mut self, key: K, out: &Outgoing<'_>) -> io::Result<()> {
        let (io, socket) = (self.lookup)(key).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        io.send(socket, out)
    }
}

/// The family-dependent largest GSO segment (see [`MAX_GSO_SEGMENT_V4`]).
fn max_segment_for(to: SocketAddr) -> usize {
    // An IPv4-mapped destination on a dual-stack socket leaves as IPv4 (smaller header): the IPv6
    // limit is safe for it too.
    if to.is_ipv4() {
        MAX_GSO_SEGMENT_V4
    } else {
        MAX_GSO_SEGMENT_V6
    }
}

#[cfg(test)]
mod tests;
