//! [`SendBatch`]: the datagrams one receive batch produced, grouped into GSO runs and sent at
//! [`SendBatch::flush`].

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;

use super::{max_segment_for, Ecn};

/// Largest GSO segment to an IPv4 destination: a 1500-byte MTU less the IPv4 and UDP headers.
/// The kernel refuses a GSO send whose segments exceed the route's MTU (and `quinn-udp` then
/// turns GSO off for that socket), so larger datagrams are sent one by one.
pub const MAX_GSO_SEGMENT_V4: usize = 1472;
/// Largest GSO segment to an IPv6 destination (1500 less 40 + 8).
pub const MAX_GSO_SEGMENT_V6: usize = 1452;
/// Largest GSO train in bytes (an IP packet's 64 KiB less headers, with margin).
pub const MAX_GSO_BYTES: usize = 64_000;

/// Up to this many runs a push finds the run to join by a linear scan (cheaper than hashing for
/// the few destinations of a typical receive batch); past it, by a map built at that point.
const SCAN_RUNS: usize = 16;

/// One send: a single datagram (`segment_size` None) or a GSO train of `segment_size`-byte
/// datagrams, the last possibly shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing<'a> {
    /// The destination.
    pub to: SocketAddr,
    /// ECN bits to set.
    pub ecn: Option<Ecn>,
    /// The bytes of every datagram, back to back.
    pub contents: &'a [u8],
    /// The datagram size within `contents` when it carries more than one.
    pub segment_size: Option<usize>,
}

/// Where a [`SendBatch`] sends: the socket behind a key. The real one looks the key up in the
/// shard's sockets and calls [`super::UdpIo::send`]; tests record.
pub trait SendSink<K> {
    /// Most datagrams one send on `key`'s socket may carry now (1: no GSO).
    fn max_segments(&self, key: K) -> usize;
    /// Sends on `key`'s socket; `WouldBlock` means the socket buffer is full.
    fn send(&mut self, key: K, out: &Outgoing<'_>) -> io::Result<()>;
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Datagrams the kernel accepted.
    pub sent: usize,
    /// Send syscalls that succeeded (one per single datagram or GSO train).
    pub syscalls: usize,
    /// Datagrams dropped because the socket buffer was full.
    pub would_block: usize,
    /// Datagrams dropped for any other error (unreachable destination, unknown socket, ...).
    pub failed: usize,
    /// GSO trains the kernel refused, then retried datagram by datagram.
    pub gso_fallbacks: usize,
    /// Successful sends that carried a GSO train (two or more datagrams in one syscall).
    pub gso_sends: usize,
    /// Datagrams that left inside those GSO trains.
    pub gso_datagrams: usize,
}

impl FlushStats {
    /// Datagrams dropped, whatever the reason.
    pub fn dropped(&self) -> usize {
        self.would_block + self.failed
    }
}

/// A run: consecutive datagrams of one socket, destination and ECN value, all `segment` bytes
/// but the last, which may be shorter (and then ends the run).
#[derive(Debug)]
struct Run<K> {
    key: K,
    to: SocketAddr,
    ecn: Option<Ecn>,
    segment: usize,
    count: usize,
    sealed: bool,
    buf: Vec<u8>,
}

/// The datagrams of one receive batch, grouped for sending. Pushing copies the bytes (the
/// engine's answers borrow the receive buffer); buffers are reused from flush to flush.
#[derive(Debug)]
pub struct SendBatch<K> {
    runs: Vec<Run<K>>,
    /// The newest run per socket, destination and ECN value; kept only while there are more
    /// than [`SCAN_RUNS`] runs.
    open: HashMap<(K, SocketAddr, Option<u8>), usize>,
    pool: Vec<Vec<u8>>,
    max_segments: usize,
    queued: usize,
}

impl<K: Copy + Eq + Hash> SendBatch<K> {
    /// A batch coalescing up to `max_segments` datagrams per send (1: no GSO; see
    /// [`super::offload`]).
    pub fn new(max_segments: usize) -> Self {
        Self { runs: Vec::new(), open: HashMap::new(), pool: Vec::new(), max_segments: max_segments.max(1), queued: 0 }
    }

    /// Datagrams waiting for [`SendBatch::flush`].
    pub fn len(&self) -> usize {
        self.queued
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues one datagram to `to` on `key`'s socket. It joins the run of the previous datagram
    /// pushed to the same socket and destination when that run has room and this one is no
    /// larger than its segment size (a shorter one ends the run); otherwise it starts a run.
    pub fn push(&mut self, key: K, to: SocketAddr, ecn: Option<Ecn>, data: &[u8]) {
        self.queued += 1;
        let id = (key, to, ecn.map(|e| e as u8));
        if let Some(i) = self.newest_run(id) {
            let run = &mut self.runs[i];
            // An empty datagram is never a segment: it would vanish from the train.
            let fits = !run.sealed
                && !data.is_empty()
                && data.len() <= run.segment
                && run.count < self.max_segments
                && run.buf.len() + data.len() <= MAX_GSO_BYTES;
            if fits {
                run.buf.extend_from_slice(data);
                run.count += 1;
                run.sealed = data.len() < run.segment;
                return;
            }
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.extend_from_slice(data);
        // A datagram too large to be a GSO segment (or empty) is a run of its own.
        let sealed = self.max_segments == 1 || data.is_empty() || data.len() > max_segment_for(to);
        self.runs.push(Run { key, to, ecn, segment: data.len(), count: 1, sealed, buf });
        if !self.open.is_empty() {
            self.open.insert(id, self.runs.len() - 1);
        }
    }

    /// The index of the newest run of `id`.
    fn newest_run(&mut self, id: (K, SocketAddr, Option<u8>)) -> Option<usize> {
        let same = |r: &Run<K>| (r.key, r.to, r.ecn.map(|e| e as u8)) == id;
        if self.runs.len() <= SCAN_RUNS {
            return self.runs.iter().rposition(same);
        }
        if self.open.is_empty() {
            for (i, r) in self.runs.iter().enumerate() {
                self.open.insert((r.key, r.to, r.ecn.map(|e| e as u8)), i);
            }
        }
        self.open.get(&id).copied()
    }

    /// Sends every queued datagram, run by run in the order the runs were started (so each
    /// destination gets its datagrams in push order), and empties the batch. A run the socket
    /// cannot carry whole (its GSO limit dropped since) is sent in pieces; a GSO send the kernel
    /// refuses is retried datagram by datagram; an error on one destination never stops the
    /// others.
    pub fn flush(&mut self, sink: &mut impl SendSink<K>) -> FlushStats {
        let mut stats = FlushStats::default();
        for mut run in self.runs.drain(..) {
            let max = sink.max_segments(run.key).max(1);
            let piece = run.segment.max(1) * max;
            for contents in run.buf.chunks(piece) {
                send_train(sink, &run, contents, &mut stats);
            }
            if run.buf.is_empty() {
                // An empty datagram: chunks() yields nothing.
                send_train(sink, &run, &[], &mut stats);
            }
            run.buf.clear();
            self.pool.push(std::mem::take(&mut run.buf));
        }
        self.open.clear();
        self.queued = 0;
        stats
    }
}

/// Sends `contents` (datagrams of `run.segment` bytes, the last possibly shorter) in one send,
/// falling back to one send per datagram when the kernel refuses the GSO train.
fn send_train<K: Copy>(sink: &mut impl SendSink<K>, run: &Run<K>, contents: &[u8], stats: &mut FlushStats) {
    let count = if contents.is_empty() { 1 } else { contents.len().div_ceil(run.segment) };
    let out = Outgoing { to: run.to, ecn: run.ecn, contents, segment_size: (count > 1).then_some(run.segment) };
    match sink.send(run.key, &out) {
        Ok(()) => {
            stats.sent += count;
            stats.syscalls += 1;
            if count > 1 {
                stats.gso_sends += 1;
                stats.gso_datagrams += count;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => stats.would_block += count,
        Err(_) if count > 1 => {
            stats.gso_fallbacks += 1;
            for one in contents.chunks(run.segment) {
                let single = Outgoing { contents: one, segment_size: None, ..out };
                match sink.send(run.key, &single) {
                    Ok(()) => {
                        stats.sent += 1;
                        stats.syscalls += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => stats.would_block += 1,
                    Err(_) => stats.failed += 1,
                }
            }
        }
        Err(_) => stats.failed += 1,
    }
}
