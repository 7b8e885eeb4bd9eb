//! What one shard's drivers share: its engine, relay ports, client-facing sockets and UDP batch
//! buffers ([`ShardState`], borrowed between awaits only), what one readiness event on a UDP
//! socket does (one batched receive through the engine, one flush: `udp_batch`), the sweep, and
//! the engine's events mirrored into the kernel fast path and the session listing.
//!
//! Layering: below this file only leaves (`bind`, `udp_sock`, `relay_ports`, `clients`,
//! `stream_conn`, `udp_batch`), none of which knows a shard or starts a task; above it the UDP
//! driver (`udp`) and the TCP/TLS driver (`stream`), which own the tasks. Nothing below points
//! back up.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::clients::{dispatch, ClientSockets};
use crate::engine::{Engine, Event};
use crate::fastpath::KernelPath;
use crate::metrics::{RelayMetrics, StatsExporter};
use crate::relay_ports::Ports;
use crate::sessions::{SessionTable, ShardSlot};
use crate::snapshot_round::SnapshotRound;
use crate::types::{ClientAddr, FiveTuple, Now, PeerAddr, RelayHandle, Transport};
use crate::udp_batch::{count_receive, emit, flush, UdpBatches};
use crate::udp_sock::UdpSock;

/// One shard's engine and its relay sockets, shared by the shard's tasks.
pub(crate) struct ShardState {
    pub engine: Engine,
    pub ports: Ports,
    pub clients: ClientSockets,
    pub batches: UdpBatches,
    metrics: RelayMetrics,
    exporter: StatsExporter,
    /// Relay sockets of allocations created since [`ShardState::take_created`] last ran.
    created: Vec<RelayHandle>,
    /// The kernel fast path and this shard's index in it (`fastpath`), when attached.
    kernel: Option<(Arc<KernelPath>, usize)>,
    /// The node-wide session listing and this shard's place in it.
    sessions: (Arc<SessionTable>, ShardSlot),
    /// This shard's next session snapshot, built a slice per sweep step.
    snapshot: SnapshotRound,
    /// When the kernel fast path's next collect round starts (once per sweep interval, however
    /// many steps the sweep or the round takes).
    kernel_due: Instant,
    /// When the collect round under way started: its next step is due (at the next sweep step).
    kernel_round: Option<Instant>,
    /// The allocations the current step's collect visited (their caps rechecked after it).
    kernel_visited: Vec<crate::engine::AllocationId>,
}

impl ShardState {
    /// A shard state with no client sockets yet, exporting its engine's counts into `metrics`.
    pub fn new(engine: Engine, ports: Ports, metrics: RelayMetrics, sessions: (Arc<SessionTable>, ShardSlot)) -> Self {
        Self {
            engine,
            ports,
            clients: ClientSockets::default(),
            batches: UdpBatches::new(),
            metrics,
            exporter: StatsExporter::default(),
            created: Vec::new(),
            kernel: None,
            sessions,
            snapshot: SnapshotRound::new(crate::clock::now().mono),
            kernel_due: crate::clock::now().mono,
            kernel_round: None,
            kernel_visited: Vec::new(),
        }
    }

    /// Mirrors this shard's bound channels into the kernel fast path (shard number `shard`).
    pub fn with_kernel(mut self, kernel: Option<Arc<KernelPath>>, shard: usize) -> Self {
        self.kernel = kernel.map(|k| (k, shard));
        self
    }

    /// Hands a datagram or frame from a client to the engine and sends its answer.
    #[inline]
    pub fn client_input(&mut self, now: Now, tuple: FiveTuple, bytes: &[u8]) {
        let Self { engine, ports, clients, .. } = self;
        let out = engine.handle_client(now, tuple, bytes, ports);
        dispatch(engine, ports, clients, out);
        self.settle();
    }

    /// After a call into the engine that may have changed its state: takes its events and
    /// exports the control-path counts if they moved (the data path's wait for [`Self::sweep`]).
    #[inline]
    pub fn settle(&mut self) {
        self.poll_events();
        if self.exporter.control_moved(self.engine.stats()) {
            self.exporter.export(self.engine.stats(), &self.metrics);
        }
    }

    /// When [`Self::sweep`] is next due: the engine's timer, or at once while a sweep round or
    /// a session snapshot is cut into steps.
    pub fn sweep_due(&self) -> Instant {
        let engine = self.engine.poll_timeout();
        // A collect round under way: its next step is due now (the round's start has passed).
        let engine = self.kernel_round.map_or(engine, |started| engine.min(started));
        self.snapshot.due(&self.sessions.0).map_or(engine, |due| engine.min(due))
    }

    /// One bounded step of the shard's periodic work: a step of the kernel fast path's collect
    /// round (at most `fastpath::MAX_READS_PER_STEP` counter reads), the engine's timer (expiry,
    /// revocations, usage; at most `MAX_VISITED_PER_SWEEP` allocations), the operator's kills, a
    /// slice of this shard's session snapshot, then every count exported. No step is
    /// proportional to every allocation the shard holds: the driver runs the shard's I/O between
    /// two steps.
    pub fn sweep(&mut self, now: Now) {
        let kernel_turn = self.kernel.is_some() && (self.kernel_round.is_some() || now.mono >= self.kernel_due);
        if kernel_turn && self.kernel_round.is_none() {
            self.kernel_due = now.mono + crate::engine::SWEEP_INTERVAL;
        }
        self.kernel_visited.clear();
        if let Some((k, shard)) = self.kernel.as_ref().filter(|_| kernel_turn) {
            let started = self.kernel_round.unwrap_or(now.mono);
            let done = k.collect(*shard, &mut self.engine, &mut self.kernel_visited);
            self.kernel_round = (!done).then_some(started);
        }
        self.engine.handle_timeout(now, &mut self.ports);
        let (table, slot) = &self.sessions;
        let kernel = &self.kernel;
        self.snapshot.sweep(now, &mut self.engine, &mut self.ports, (table, *slot), || {
            kernel.as_ref().map(|(k, shard)| k.in_kernel(*shard)).unwrap_or_default()
        });
        self.export_all();
        if let Some((k, shard)) = self.kernel.as_ref().filter(|_| kernel_turn) {
            k.recheck(*shard, &self.engine, &self.kernel_visited);
        }
    }

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

    /// Ends every allocation (shutdown), leaves the session listing and exports the final counts.
    pub fn close_all(&mut self) {
        self.engine.close_all(&mut self.ports);
        let (table, slot) = &self.sessions;
        table.clear(*slot);
        self.export_all();
    }

    /// The relay sockets of allocations created since the last call, for the UDP driver to
    /// start their receive tasks (`udp::start_relays`).
    pub fn take_created(&mut self) -> Vec<RelayHandle> {
        std::mem::take(&mut self.created)
    }

    fn poll_events(&mut self) {
        while let Some(e) = self.engine.poll_event() {
            let mut relayed_local = None;
            if let Event::AllocationCreated { alloc, .. } = &e {
                self.created.push(alloc.relay);
                relayed_local = self.ports.sock(alloc.relay).and_then(|s| s.socket.local_addr().ok());
            }
            if let Some((k, shard)) = &self.kernel {
                k.on_event(*shard, &mut self.engine, &e, relayed_local);
            }
            log_event(&e);
        }
    }

    fn export_all(&mut self) {
        self.poll_events();
        self.exporter.export(self.engine.stats(), &self.metrics);
        self.batches.counts.flush(&self.metrics.udp);
    }
}

/// The debug lines of allocations starting and ending.
fn log_event(e: &Event) {
    match e {
        Event::AllocationCreated { alloc, .. } => {
            tracing::debug!(client = %alloc.tuple.client, relay = %alloc.relayed, id = %alloc.id, "allocation created");
        }
        Event::AllocationEnded { alloc, reason } => {
            let reason = reason.as_str();
            tracing::debug!(client = %alloc.tuple.client, relay = %alloc.relayed, id = %alloc.id, reason, "allocation ended");
        }
        _ => tracing::trace!(event = ?e, "engine event"),
    }
}
