//! Usage reporting: the engine hands the payload bytes its allocations relayed, per userid, to a
//! [`UsageSink`] the binary provides (at every sweep, so usage moves while traffic flows), and asks
//! it whether a userid must stop being relayed (monthly cap reached, enforcement on).

use std::sync::Arc;

/// Payload bytes relayed for one userid since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    /// Client to peer.
    pub client_to_peer: u64,
    /// Peer to client.
    pub peer_to_client: u64,
}

/// Where the relay reports usage (implemented by the binary over its usage ledger).
pub trait UsageSink: Send + Sync + std::fmt::Debug {
    /// Adds deltas (a userid may appear more than once). Called from the shards' sweeps.
    fn record(&self, batch: &[(Arc<str>, UsageDelta)]);
    /// Whether relaying for `userid` must stop (checked on Allocate and when
    /// [`UsageSink::generation`] changes).
    fn blocked(&self, userid: &str) -> bool;
    /// Changes whenever [`UsageSink::blocked`] may answer differently.
    fn generation(&self) -> u64;
}
