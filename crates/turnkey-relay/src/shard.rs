//! What one shard's drivers share: its engine, relay ports, client-facing sockets and UDP batch
//! buffers ([`ShardState`], borrowed between awaits only), the dispatch of the engine's
//! [`Transmit`]s to UDP sockets and stream connections, and the port-0 resolution every
//! SO_REUSEPORT bind uses. (The batched UDP receive and send of a readiness event is in
//! `udp_batch`.)
//! The UDP driver (`udp`) and the TCP/TLS driver (`stream`) both build on this file and not on
//! each other.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Socket, Type};

use crate::engine::{Engine, Event, Transmit};
use crate::fastpath::KernelPath;
use crate::metrics::{DropReason, RelayMetrics, StatsExporter};
use crate::sessions::{SessionTable, ShardSlot};
use crate::snapshot_round::SnapshotRound;
use crate::stream::StreamConn;
use crate::types::RelayHandle;
use crate::types::{FiveTuple, Now, Transport};
use crate::udp::{send_now, Ports};
use crate::udp_batch::{UdpBatches, UdpSock};

/// One shard's engine and its relay sockets, shared by the shard's tasks.
pub(crate) struct ShardState {
    pub engine: Engine,
    pub ports: Ports,
    pub clients: ClientSockets,
    pub batches: UdpBatches,
    metrics: RelayMetrics,
    exporter: StatsExporter,
    /// Relay sockets of allocations created since [`ShardState::start_relays`] last ran.
    created: Vec<RelayHandle>,
    /// The kernel fast path and this shard's index in it (`fastpath`), when attached.
    kernel: Option<(Arc<KernelPath>, usize)>,
    /// The node-wide session listing and this shard's place in it.
    sessions: (Arc<SessionTable>, ShardSlot),
    /// This shard's next session snapshot, built a slice per sweep step.
    snapshot: SnapshotRound,
    /// When the kernel fast path's counters are next read (once per sweep interval, however
    /// many steps the sweep takes).
    kernel_due: Instant,
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
        // With the listing off ([relay] sessions = false) no snapshot step is ever due.
        if self.sessions.0.is_on() {
            engine.min(self.snapshot.due())
        } else {
            engine
        }
    }

    /// One bounded step of the shard's periodic work: the engine's timer (expiry, revocations,
    /// usage; at most `MAX_VISITED_PER_SWEEP` allocations), the operator's kills, a slice of
    /// this shard's session snapshot, then every count exported. No step is proportional to
    /// every allocation the shard holds: the driver runs the shard's I/O between two steps.
    pub fn sweep(&mut self, now: Now) {
        let kernel_turn = self.kernel.is_some() && now.mono >= self.kernel_due;
        if kernel_turn {
            self.kernel_due = now.mono + crate::engine::SWEEP_INTERVAL;
        }
        if let Some((k, shard)) = self.kernel.as_ref().filter(|_| kernel_turn) {
            k.collect(*shard, &mut self.engine);
        }
        self.engine.handle_timeout(now, &mut self.ports);
        let (table, slot) = &self.sessions;
        // With the listing off the shard takes no kills (none can be queued) and no snapshot.
        if table.is_on() {
            let mut killed = false;
            for id in table.take_kills(*slot) {
                killed |= self.engine.kill(id, &mut self.ports);
            }
            if killed {
                // The operator waits for the killed session to leave the listing: a fresh
                // snapshot now rather than at the next interval.
                self.snapshot.restart(now.mono);
            }
            let kernel = &self.kernel;
            self.snapshot.step(now, &self.engine, (table, *slot), || {
                kernel.as_ref().map(|(k, shard)| k.in_kernel(*shard)).unwrap_or_default()
            });
        }
        self.export_all();
        if let Some((k, shard)) = self.kernel.as_ref().filter(|_| kernel_turn) {
            k.recheck(*shard, &self.engine);
        }
    }

    /// Ends every allocation (shutdown), leaves the session listing and exports the final counts.
    pub fn close_all(&mut self) {
        self.engine.close_all(&mut self.ports);
        let (table, slot) = &self.sessions;
        table.clear(*slot);
        self.export_all();
    }

    /// Starts the receive task of every relay socket whose allocation the engine created since
    /// the last call (noted from `AllocationCreated` events); a socket whose allocation already
    /// ended is gone and skipped. Called by the tasks that fed the engine, once their borrow of
    /// the shard ended.
    pub fn start_relays(shard: &Rc<RefCell<Self>>) {
        let created = std::mem::take(&mut shard.borrow_mut().created);
        for handle in created {
            let Some(sock) = shard.borrow().ports.sock_rc(handle) else { continue };
            let task = tokio::task::spawn_local(crate::udp::peer_loop(shard.clone(), sock, handle));
            shard.borrow_mut().ports.set_task(handle, task);
        }
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

/// Probes `addr` with a bind *without* SO_REUSEPORT before the shards bind it with SO_REUSEPORT,
/// and resolves port 0 to the port the probe got.
///
/// - An explicit port held by any other socket fails here with `AddrInUse`: another process
///   (a second turnkey, of any data directory) owning the address is refused instead of silently
///   joining its SO_REUSEPORT group and taking about half of its clients. TCP probes set
///   SO_REUSEADDR, which does not pass a listening socket but lets a restart pass the previous
///   run's TIME_WAIT connections.
/// - Port 0: a SO_REUSEPORT socket bound to port 0 may be given a port another process of the
///   same user already holds with SO_REUSEPORT; a plain bind never shares.
pub(crate) fn unshared_port(addr: SocketAddr, ty: Type) -> io::Result<SocketAddr> {
    let probe = Socket::new(Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    if ty == Type::STREAM && addr.port() != 0 {
        probe.set_reuse_address(true)?;
    }
    probe.bind(&addr.into())?;
    probe.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))
}

/// Probes `addr` ([`unshared_port`]), binds `n` sockets on the address found with `bind`, and
/// checks that no other process joined in between ([`check_alone`]). For port 0 a collision
/// (another process that resolved the same ephemeral port at the same instant) is retried with a
/// fresh port, up to 8 times; for an explicit port it is the error.
pub(crate) fn bind_alone<S>(
    addr: SocketAddr,
    ty: Type,
    n: usize,
    bind: impl Fn(SocketAddr) -> io::Result<S>,
) -> io::Result<Vec<S>> {
    let mut collisions = 0;
    loop {
        let at = unshared_port(addr, ty)?;
        let socks = (0..n.max(1)).map(|_| bind(at)).collect::<io::Result<Vec<_>>>()?;
        match check_alone(at, ty, socks.len()) {
            Err(e) if addr.port() == 0 && collisions < 8 && e.kind() == io::ErrorKind::AddrInUse => {
                collisions += 1;
                drop(socks);
            }
            checked => return checked.map(|()| socks),
        }
    }
}

/// Checks, after this process bound `ours` SO_REUSEPORT sockets on `addr`, that no other socket
/// is bound to exactly that address (`/proc/net/{udp,tcp}{,6}`: unconnected UDP sockets, or TCP
/// listeners). This closes the window the probe of [`unshared_port`] leaves: two processes that
/// both pass the probe at the same instant and then both bind see each other's sockets here, so
/// at most one of them keeps running (when both bound before either checked, both stop). Where
/// the table cannot be read, nothing is checked.
pub(crate) fn check_alone(addr: SocketAddr, ty: Type, ours: usize) -> io::Result<()> {
    let (table, state) = match (ty == Type::STREAM, addr.is_ipv6()) {
        (false, false) => ("/proc/net/udp", "07"),
        (false, true) => ("/proc/net/udp6", "07"),
        (true, false) => ("/proc/net/tcp", "0A"),
        (true, true) => ("/proc/net/tcp6", "0A"),
    };
    let Ok(text) = std::fs::read_to_string(table) else { return Ok(()) };
    let found = bound_to(&text, addr, state);
    if found > ours {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} other socket(s) joined {addr} while this process bound it", found - ours),
        ));
    }
    Ok(())
}

/// How many lines of a `/proc/net/{udp,tcp}{,6}` table have local address `addr` and state
/// `state` (hex: `07` unconnected UDP, `0A` TCP listen).
fn bound_to(table: &str, addr: SocketAddr, state: &str) -> usize {
    // The kernel prints each 32-bit word of the address as the hex of its in-memory value.
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => format!("{:08X}", u32::from_ne_bytes(v4.octets())),
        std::net::IpAddr::V6(v6) => v6
            .octets()
            .chunks_exact(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
            .collect(),
    };
    let local = format!("{ip}:{:04X}", addr.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (local_f, st) = (f.nth(1), f.nth(1));
            local_f.is_some_and(|l| l.eq_ignore_ascii_case(&local)) && st == Some(state)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_foreign_reuseport_socket_that_joined_after_the_probe_is_seen() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let udp = crate::udp::bind_udp_shards(addr, 2).unwrap();
            let at = udp[0].local_addr().unwrap();
            check_alone(at, Type::DGRAM, 2).unwrap();
            // What a second process racing past the probe would do: join the group.
            let intruder = Socket::new(Domain::for_address(at), Type::DGRAM, None).unwrap();
            intruder.set_reuse_port(true).unwrap();
            if at.is_ipv6() {
                intruder.set_only_v6(true).unwrap();
            }
            intruder.bind(&at.into()).unwrap();
            let e = check_alone(at, Type::DGRAM, 2).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");

            let tcp = crate::stream::bind_tcp_shards(addr, 2).unwrap();
            let at = tcp[0].local_addr().unwrap();
            check_alone(at, Type::STREAM, 2).unwrap();
            // An accepted connection on the same local address is not a listener.
            let _client = std::net::TcpStream::connect(at).unwrap();
            check_alone(at, Type::STREAM, 2).unwrap();
            let intruder = Socket::new(Domain::for_address(at), Type::STREAM, None).unwrap();
            intruder.set_reuse_port(true).unwrap();
            intruder.set_reuse_address(true).unwrap();
            if at.is_ipv6() {
                intruder.set_only_v6(true).unwrap();
            }
            intruder.bind(&at.into()).unwrap();
            intruder.listen(8).unwrap();
            assert_eq!(check_alone(at, Type::STREAM, 2).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        }
    }

    /// Another process resolving the same ephemeral port at the same instant (simulated: the
    /// first bind also lets an intruder join): port 0 moves to a fresh port; an explicit port is
    /// refused.
    #[test]
    fn a_port_zero_collision_is_retried_on_a_fresh_port() {
        let intruders = std::cell::RefCell::new(Vec::new());
        let bind = |at: SocketAddr| {
            let s = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
            s.set_reuse_port(true)?;
            s.bind(&at.into())?;
            if intruders.borrow().is_empty() {
                let other = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
                other.set_reuse_port(true)?;
                other.bind(&at.into())?;
                intruders.borrow_mut().push((at, other));
            }
            Ok(s)
        };
        let socks = bind_alone("127.0.0.1:0".parse().unwrap(), Type::DGRAM, 2, bind).unwrap();
        let got = socks[0].local_addr().unwrap().as_socket().unwrap();
        let (collided, _) = intruders.borrow()[0];
        assert_ne!(got.port(), collided.port(), "moved off the port another process joined");
        assert_eq!(socks.len(), 2);
        drop(socks);

        intruders.borrow_mut().clear();
        let explicit = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = bind_alone(explicit, Type::DGRAM, 1, bind).expect_err("an explicit port is refused");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn proc_net_lines_are_matched_by_exact_address_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
   1: 0100007F:0D96 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n\
   2: 00000000:0D96 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0\n";
        assert_eq!(
            bound_to(table, "127.0.0.1:3478".parse().unwrap(), "07"),
            if cfg!(target_endian = "little") { 1 } else { 0 }
        );
        assert_eq!(bound_to(table, "0.0.0.0:3478".parse().unwrap(), "07"), 1);
        assert_eq!(bound_to(table, "0.0.0.0:3479".parse().unwrap(), "07"), 0);
    }

    #[test]
    fn tcp_port_zero_never_joins_another_reuseport_group() {
        let held: Vec<_> = (0..300)
            .map(|_| crate::stream::bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0))
            .collect();
        let ports: HashSet<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert_eq!(ports.len(), held.len(), "every listener got its own port");
        for _ in 0..200 {
            let shards = crate::stream::bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 2).unwrap();
            let p = shards[0].local_addr().unwrap().port();
            assert!(!ports.contains(&p), "listener joined a foreign group on port {p}");
            assert_eq!(shards[1].local_addr().unwrap().port(), p);
        }
    }
}
