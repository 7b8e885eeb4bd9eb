//! What fleet mode tells the engine, kept current by the binary's background tasks and read
//! only on Allocate (never per packet): the userids at their allocation limit anywhere in the
//! fleet (486 here too), where a draining or full relay redirects new allocations (300 Try
//! Alternate), and where the engine reports allocations starting and ending (the fleet's
//! per-userid counts). The engine stays sans-IO: nothing here waits for Redis.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "fleet marks and alternates: written by background tasks, read on Allocate only, never per packet"
)]
use std::sync::RwLock;

use crate::types::Transport;

/// Told when an allocation starts or ends (from the shards; must not block).
pub trait AllocationObserver: Send + Sync + std::fmt::Debug {
    /// An allocation of `userid` started on this relay.
    fn started(&self, userid: &str);
    /// An allocation of `userid` ended on this relay.
    fn ended(&self, userid: &str);
}

/// The fleet's state as the engine reads it.
#[derive(Debug)]
#[allow(
    clippy::disallowed_types,
    reason = "fleet marks and alternates: written by background tasks, read on Allocate only, never per packet"
)]
pub struct FleetView {
    full: RwLock<Arc<HashSet<String>>>,
    /// ALTERNATE-SERVER per transport (UDP, TCP, TLS).
    alternates: RwLock<[Option<SocketAddr>; 3]>,
    observer: Arc<dyn AllocationObserver>,
}

fn slot(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

#[allow(
    clippy::disallowed_types,
    reason = "fleet marks and alternates: written by background tasks, read on Allocate only, never per packet"
)]
impl FleetView {
    /// A view reporting allocations to `observer`; nobody full, no alternate yet.
    pub fn new(observer: Arc<dyn AllocationObserver>) -> Self {
        Self { full: RwLock::default(), alternates: RwLock::default(), observer }
    }

    /// Replaces the set of userids at their limit somewhere in the fleet.
    pub fn set_full(&self, users: Arc<HashSet<String>>) {
        *self.full.write().unwrap_or_else(|p| p.into_inner()) = users;
    }

    /// Whether `userid` is at its allocation limit somewhere in the fleet.
    pub fn is_full(&self, userid: &str) -> bool {
        self.full.read().unwrap_or_else(|p| p.into_inner()).contains(userid)
    }

    /// Sets (or clears) where new allocations over `transport` go while this relay is draining
    /// or full.
    pub fn set_alternate(&self, transport: Transport, addr: Option<SocketAddr>) {
        self.alternates.write().unwrap_or_else(|p| p.into_inner())[slot(transport)] = addr;
    }

    /// The relay a client over `transport` is redirected to, if the fleet knows one.
    pub fn alternate(&self, transport: Transport) -> Option<SocketAddr> {
        self.alternates.read().unwrap_or_else(|p| p.into_inner())[slot(transport)]
    }

    pub(crate) fn started(&self, userid: &str) {
        self.observer.started(userid);
    }

    pub(crate) fn ended(&self, userid: &str) {
        self.observer.ended(userid);
    }
}
