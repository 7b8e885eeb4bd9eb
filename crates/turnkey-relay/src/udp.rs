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
use std::io;
use std::rc::Rc;

pub use crate::bind::bind_udp_shards;
pub use crate::relay_ports::{RelayAddrs, Reservations};
use crate::shard::ShardState;
use crate::types::RelayHandle;
use crate::udp_sock::UdpSock;

/// Starts the receive task of every relay socket whose allocation the engine created since the
/// last call (noted from `AllocationCreated` events); a socket whose allocation already ended
/// is gone and skipped. Called by the tasks that fed the engine (this driver's and the stream
/// driver's), once their borrow of the shard ended.
pub(crate) fn start_relays(shard: &Rc<RefCell<ShardState>>) {
    let created = shard.borrow_mut().take_created();
    for handle in created {
        let Some(sock) = shard.borrow().ports.sock_rc(handle) else { continue };
        let task = tokio::task::spawn_local(peer_loop(shard.clone(), sock, handle));
        shard.borrow_mut().ports.set_task(handle, task);
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
        start_relays(&shard);
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
