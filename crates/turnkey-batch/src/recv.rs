//! [`RecvBatch`]: the buffers one `recvmmsg` fills, and the datagrams in them (GRO buffers split
//! back at their segment size).

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::RecvMeta;

use super::Ecn;

/// Bytes per receive buffer: larger than any UDP datagram and than any GRO train (the kernel
/// caps one at 64 KiB), so nothing is ever truncated.
pub const RECV_SLOT: usize = 65_536;

/// Receive buffers for one `recvmmsg`, reused from batch to batch (no allocation per batch).
/// One per shard is enough: a batch is received and handled without an await in between.
pub struct RecvBatch {
    buf: Vec<u8>,
    meta: Vec<RecvMeta>,
    filled: usize,
    headroom: usize,
    tailroom: usize,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("slots", &self.meta.len()).field("filled", &self.filled).finish()
    }
}

/// One received datagram (a whole UDP datagram, or one segment of a GRO train).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Who sent it.
    pub from: SocketAddr,
    /// Its ECN bits, where the socket reports them.
    pub ecn: Option<Ecn>,
    /// The local address it was sent to, where the socket reports it.
    pub local_ip: Option<IpAddr>,
    /// The payload.
    pub data: &'a [u8],
}

impl RecvBatch {
    /// Buffers for up to `slots` receive buffers per syscall (capped at `quinn_udp::BATCH_SIZE`,
    /// at least 1), each [`RECV_SLOT`] bytes.
    pub fn new(slots: usize) -> Self {
        Self::with_room(slots, 0, 0)
    }

    /// Like [`RecvBatch::new`], with `headroom` spare bytes before and `tailroom` after each
    /// datagram handed to [`RecvBatch::for_each_in_place`] (the peer path writes the ChannelData
    /// header in front of the payload in place).
    pub fn with_room(slots: usize, headroom: usize, tailroom: usize) -> Self {
        let slots = slots.clamp(1, quinn_udp::BATCH_SIZE);
        Self {
            buf: vec![0; slots * (headroom + RECV_SLOT + tailroom)],
            meta: vec![RecvMeta::default(); slots],
            filled: 0,
            headroom,
            tailroom,
            scratch: Vec::new(),
        }
    }

    fn stride(&self) -> usize {
        self.headroom + RECV_SLOT + self.tailroom
    }

    /// Runs one receive syscall over the buffers; returns how many buffers it filled (each
    /// holds one datagram or one GRO train). Errors (`WouldBlock` included) leave it empty.
    pub(crate) fn recv_with(
        &mut self,
        f: impl FnOnce(&mut [IoSliceMut<'_>], &mut [RecvMeta]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        self.filled = 0;
        let (stride, head, slots) = (self.stride(), self.headroom, self.meta.len());
        let mut chunks = self.buf.chunks_mut(stride).map(|c| IoSliceMut::new(&mut c[head..head + RECV_SLOT]));
        let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
            std::array::from_fn(|_| chunks.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        let n = f(&mut bufs[..slots], &mut self.meta)?;
        self.filled = n.min(slots);
        Ok(self.filled)
    }

    /// How many buffers one receive can fill.
    pub fn slots(&self) -> usize {
        self.meta.len()
    }

    /// How many buffers the last receive filled.
    pub fn buffers(&self) -> usize {
        self.filled
    }

    /// How many datagrams of the last receive arrived coalesced by GRO (the segments of buffers
    /// that held two or more).
    pub fn coalesced(&self) -> usize {
        self.meta[..self.filled]
            .iter()
            .map(|m| {
                let (len, size) = (m.len.min(RECV_SLOT), segment_size(m));
                if len > size {
                    len.div_ceil(size)
                } else {
                    0
                }
            })
            .sum()
    }

    /// The datagrams of the last receive, in arrival order; a GRO buffer yields each of its
    /// segments.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        let stride = self.stride();
        self.meta[..self.filled].iter().enumerate().flat_map(move |(i, m)| {
            let start = i * stride + self.headroom;
            let whole = &self.buf[start..start + m.len.min(RECV_SLOT)];
            Segments { rest: Some(whole), size: segment_size(m) }.map(move |data| Datagram {
                from: m.addr,
                ecn: m.ecn,
                local_ip: m.dst_ip,
                data,
            })
        })
    }

    /// Calls `f(from, ecn, buf, len)` for every datagram of the last receive, in arrival order,
    /// with the payload at `buf[headroom..headroom + len]` and `headroom` and `tailroom` spare
    /// bytes around it that `f` may overwrite. A buffer holding one datagram is handed over in
    /// place; the segments of a GRO train are copied out one by one first (writing around one
    /// segment in place would overwrite its neighbours).
    pub fn for_each_in_place(&mut self, mut f: impl FnMut(SocketAddr, Option<Ecn>, &mut [u8], usize)) {
        let (stride, head, tail) = (self.stride(), self.headroom, self.tailroom);
        for i in 0..self.filled {
            let m = self.meta[i];
            let len = m.len.min(RECV_SLOT);
            let slot = &mut self.buf[i * stride..(i + 1) * stride];
            let size = segment_size(&m);
            if len <= size {
                f(m.addr, m.ecn, &mut slot[..head + len + tail], len);
                continue;
            }
            for seg in slot[head..head + len].chunks(size) {
                self.scratch.clear();
                self.scratch.resize(head, 0);
                self.scratch.extend_from_slice(seg);
                self.scratch.resize(head + seg.len() + tail, 0);
                f(m.addr, m.ecn, &mut self.scratch, seg.len());
            }
        }
    }
}

/// The segment size of one receive buffer (its whole length without GRO).
fn segment_size(m: &RecvMeta) -> usize {
    if m.stride == 0 {
        m.len.max(1)
    } else {
        m.stride
    }
}

/// Splits a buffer at `size`; an empty buffer is one empty datagram (UDP allows them).
struct Segments<'a> {
    rest: Option<&'a [u8]>,
    size: usize,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest.take()?;
        let (seg, more) = rest.split_at(rest.len().min(self.size));
        if !more.is_empty() {
            self.rest = Some(more);
        }
        Some(seg)
    }
}
