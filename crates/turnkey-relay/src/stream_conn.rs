//! A TCP/TLS connection as its shard sees it, a leaf of the relay's drivers: the sending half of
//! the connection's bounded outbound queue (`outq`), its task, and its connection-limit slot.
//! The shard's dispatch queues frames here; the stream driver owns the rest.

use tokio::task::AbortHandle;

use crate::conn::ConnSlot;
use crate::outq::OutSender;

/// A live connection as the shard sees it.
#[derive(Debug)]
pub(crate) struct StreamConn {
    tx: OutSender,
    task: AbortHandle,
    _slot: ConnSlot,
}

impl StreamConn {
    /// The shard's side of a connection: its outbound queue, its task, and its place under the
    /// connection limits (released when the connection leaves the shard).
    pub fn new(tx: OutSender, task: AbortHandle, slot: ConnSlot) -> Self {
        Self { tx, task, _slot: slot }
    }

    /// The connection's task.
    pub fn task(&self) -> AbortHandle {
        self.task.clone()
    }

    /// Bytes queued for the client.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.tx.queued_bytes()
    }

    /// Queues a frame for the client (its one copy); `false` if it does not fit.
    #[inline]
    pub fn try_send(&self, data: &[u8]) -> bool {
        self.tx.push(data)
    }
}
