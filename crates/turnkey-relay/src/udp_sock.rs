//! The UDP socket of the data path, a leaf of the relay's drivers: a tokio socket with its
//! batching state ([`UdpSock`]: one `recvmmsg` per readiness event), which socket a batched
//! datagram leaves from ([`SockKey`]), and the one direct `sendto` ([`send_now`]).

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use crate::batch::{RecvBatch, UdpIo};
use crate::metrics::DropReason;
use crate::types::RelayHandle;

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

/// Sends one datagram with one non-blocking `sendto`, bypassing tokio's readiness cache: the
/// data path never waits for writability (a full socket buffer drops the datagram), and tokio's
/// `try_send_to` answers `WouldBlock` without trying while a freshly registered socket has not
/// yet been seen writable by the reactor, which dropped the first datagram to a new peer on a
/// busy shard.
#[inline]
pub(crate) fn send_now(s: &UdpSocket, data: &[u8], to: SocketAddr) -> Result<(), DropReason> {
    socket2::SockRef::from(s).send_to(data, &to.into()).map(|_| ()).map_err(|_| DropReason::QueueFull)
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
