//! Tests of the batching layer: property tests of the send grouping against a recording sink,
//! and real sockets on loopback for both paths (the namespace tests in `tests/` cover a veth).
#![allow(clippy::disallowed_methods, reason = "socket tests bound their waits by the wall clock")]

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// A recording sink

#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    key: u8,
    to: SocketAddr,
    segment: Option<usize>,
    contents: Vec<u8>,
}

impl Sent {
    fn datagrams(&self) -> Vec<&[u8]> {
        match self.segment {
            Some(s) => self.contents.chunks(s).collect(),
            None => vec![&self.contents[..]],
        }
    }
}

#[derive(Default)]
struct Recorder {
    sent: Vec<Sent>,
    max: HashMap<u8, usize>,
    fail: HashSet<SocketAddr>,
    full: HashSet<SocketAddr>,
    refuse_gso: bool,
    gso_attempts: usize,
}

impl SendSink<u8> for Recorder {
    fn max_segments(&self, key: u8) -> usize {
        self.max.get(&key).copied().unwrap_or(64)
    }

    fn send(&mut self, key: u8, out: &Outgoing<'_>) -> io::Result<()> {
        if out.segment_size.is_some() {
            self.gso_attempts += 1;
            if self.refuse_gso {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        if self.fail.contains(&out.to) {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        if self.full.contains(&out.to) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.sent.push(Sent { key, to: out.to, segment: out.segment_size, contents: out.contents.to_vec() });
        Ok(())
    }
}

fn dest(i: u8) -> SocketAddr {
    match i % 4 {
        0 => "10.0.0.1:5000".parse().unwrap(),
        1 => "10.0.0.2:5000".parse().unwrap(),
        2 => "[2001:db8::1]:6000".parse().unwrap(),
        _ => "[2001:db8::2]:6000".parse().unwrap(),
    }
}

/// Datagram `n` of a test, `len` bytes: its first bytes carry `n` so every datagram differs.
fn payload(n: usize, len: usize) -> Vec<u8> {
    let tag = (n as u32).to_be_bytes();
    (0..len).map(|i| if i < 4 { tag[i] } else { (n + i) as u8 }).collect()
}

/// Sizes that hit every boundary: empty, tiny, typical audio and video, the GSO segment limits
/// and just past them, and datagrams far larger than any segment.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(0usize),
        1usize..8,
        Just(160usize),
        Just(1200usize),
        Just(MAX_GSO_SEGMENT_V6),
        Just(MAX_GSO_SEGMENT_V4),
        Just(MAX_GSO_SEGMENT_V4 + 1),
        1usize..2000,
        Just(9000usize),
    ]
}

/// Pushes: (socket key, destination index, size, repeat): trains of equal datagrams, interleaved.
fn pushes() -> impl Strategy<Value = Vec<(u8, u8, usize, usize)>> {
    prop::collection::vec((0u8..3, 0u8..4, size(), 1usize..30), 0..24)
}

type Flow = (u8, SocketAddr);

/// Expands pushes into the datagrams, each with its flow, in push order.
fn expand(pushes: &[(u8, u8, usize, usize)]) -> Vec<(Flow, Vec<u8>)> {
    let mut out = Vec::new();
    for &(key, d, len, times) in pushes {
        for _ in 0..times {
            let n = out.len();
            out.push(((key, dest(d)), payload(n, len)));
        }
    }
    out
}

fn per_flow<'a>(items: impl Iterator<Item = (Flow, &'a [u8])>) -> HashMap<Flow, Vec<Vec<u8>>> {
    let mut m: HashMap<Flow, Vec<Vec<u8>>> = HashMap::new();
    for (f, d) in items {
        m.entry(f).or_default().push(d.to_vec());
    }
    m
}

fn run_batch(datagrams: &[(Flow, Vec<u8>)], max: usize, sink: &mut Recorder) -> FlushStats {
    let mut batch = SendBatch::new(max);
    for ((key, to), data) in datagrams {
        batch.push(*key, *to, None, data);
    }
    assert_eq!(batch.len(), datagrams.len());
    let stats = batch.flush(sink);
    assert!(batch.is_empty());
    stats
}

#[test]
fn a_batch_fanning_out_to_many_destinations_still_joins_each_train() {
    // 40 destinations (past the linear scan, so the run index is used), each sent 3 datagrams
    // interleaved: every destination's three leave as one train of three, in order.
    let flows: Vec<Flow> = (0..40u16).map(|i| (1u8, SocketAddr::from(([127, 0, 0, 1], 1000 + i)))).collect();
    let mut datagrams = Vec::new();
    for round in 0..3u8 {
        for (n, f) in flows.iter().enumerate() {
            datagrams.push((*f, vec![round; 100 + n]));
        }
    }
    let mut sink = Recorder::default();
    let stats = run_batch(&datagrams, 64, &mut sink);
    assert_eq!((stats.sent, stats.syscalls, sink.sent.len()), (120, 40, 40));
    for (n, s) in sink.sent.iter().enumerate() {
        assert_eq!(s.to, flows[n].1);
        assert_eq!(s.datagrams(), vec![&vec![0u8; 100 + n][..], &vec![1u8; 100 + n][..], &vec![2u8; 100 + n][..]]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Every datagram leaves exactly once, in push order per flow, and every GSO train has the
    /// shape the kernel accepts: equal segments but a shorter last one, within the limits.
    #[test]
    fn every_datagram_once_in_order_with_valid_trains(p in pushes(), max in prop_oneof![Just(1usize), 2usize..8, Just(64usize)]) {
        let datagrams = expand(&p);
        let mut sink = Recorder::default();
        let stats = run_batch(&datagrams, max, &mut sink);
        let trains: Vec<usize> = sink.sent.iter().filter(|s| s.segment.is_some()).map(|s| s.datagrams().len()).collect();
        let expected = FlushStats {
            sent: datagrams.len(),
            syscalls: sink.sent.len(),
            gso_sends: trains.len(),
            gso_datagrams: trains.iter().sum(),
            ..FlushStats::default()
        };
        prop_assert_eq!(stats, expected);
        let want = per_flow(datagrams.iter().map(|(f, d)| (*f, &d[..])));
        let got = per_flow(sink.sent.iter().flat_map(|s| s.datagrams().into_iter().map(move |d| ((s.key, s.to), d))));
        prop_assert_eq!(got, want);
        for s in &sink.sent {
            let Some(seg) = s.segment else { continue };
            let parts = s.datagrams();
            prop_assert!(parts.len() > 1 && parts.len() <= max, "{} segments, max {}", parts.len(), max);
            prop_assert!(seg > 0 && seg <= max_segment_for(s.to));
            prop_assert!(s.contents.len() <= MAX_GSO_BYTES);
            let (last, full) = parts.split_last().unwrap();
            prop_assert!(full.iter().all(|d| d.len() == seg) && !last.is_empty() && last.len() <= seg);
        }
    }

    /// Trains are as long as the rules allow: two sends in a row to one flow could not have been
    /// one (the first was full, ended short, or the next datagram is larger or not a segment).
    #[test]
    fn consecutive_same_size_datagrams_share_a_send(p in pushes()) {
        let datagrams = expand(&p);
        let mut sink = Recorder::default();
        run_batch(&datagrams, 64, &mut sink);
        let mut last: HashMap<Flow, &Sent> = HashMap::new();
        for s in &sink.sent {
            if let Some(prev) = last.insert((s.key, s.to), s) {
                let parts = prev.datagrams();
                let seg = parts[0].len();
                let next = s.datagrams()[0].len();
                let could_join = seg > 0
                    && seg <= max_segment_for(s.to)
                    && parts.iter().all(|d| d.len() == seg)
                    && next <= seg
                    && next > 0
                    && parts.len() < 64
                    && prev.contents.len() + next <= MAX_GSO_BYTES;
                prop_assert!(!could_join, "a {next}-byte datagram was not added to a train of {} x {seg}", parts.len());
            }
        }
    }

    /// A failing or full destination loses only its own datagrams (counted); every other flow
    /// is delivered whole and in order. A socket that refuses GSO still delivers everything,
    /// one datagram per send.
    #[test]
    fn errors_stay_with_their_destination(
        p in pushes(),
        fail in prop::collection::hash_set(0u8..4, 0..2),
        full in prop::collection::hash_set(0u8..4, 0..2),
        refuse_gso: bool,
    ) {
        let datagrams = expand(&p);
        let mut sink = Recorder { refuse_gso, ..Recorder::default() };
        sink.fail = fail.iter().map(|&d| dest(d)).collect();
        sink.full = full.iter().map(|&d| dest(d)).filter(|a| !sink.fail.contains(a)).collect();
        let stats = run_batch(&datagrams, 64, &mut sink);
        let failing = datagrams.iter().filter(|((_, to), _)| sink.fail.contains(to)).count();
        let blocked = datagrams.iter().filter(|((_, to), _)| sink.full.contains(to)).count();
        prop_assert_eq!(stats.sent + stats.dropped(), datagrams.len());
        prop_assert_eq!(stats.failed, failing);
        prop_assert_eq!(stats.would_block, blocked);
        let ok = datagrams.iter().filter(|((_, to), _)| !sink.fail.contains(to) && !sink.full.contains(to));
        let want = per_flow(ok.map(|(f, d)| (*f, &d[..])));
        let got = per_flow(sink.sent.iter().flat_map(|s| s.datagrams().into_iter().map(move |d| ((s.key, s.to), d))));
        prop_assert_eq!(got, want);
        if refuse_gso {
            prop_assert!(sink.sent.iter().all(|s| s.segment.is_none()));
            prop_assert_eq!(stats.gso_fallbacks, sink.gso_attempts);
        }
    }

    /// A socket whose GSO limit dropped after the batch was built (the kernel refused GSO on
    /// it) gets its trains in pieces it can carry, still in order.
    #[test]
    fn a_lower_socket_limit_splits_trains(p in pushes(), limit in 1usize..5) {
        let datagrams = expand(&p);
        let mut sink = Recorder::default();
        sink.max.insert(1, limit);
        let stats = run_batch(&datagrams, 64, &mut sink);
        prop_assert_eq!(stats.sent, datagrams.len());
        prop_assert!(sink.sent.iter().filter(|s| s.key == 1).all(|s| s.datagrams().len() <= limit));
        let want = per_flow(datagrams.iter().map(|(f, d)| (*f, &d[..])));
        let got = per_flow(sink.sent.iter().flat_map(|s| s.datagrams().into_iter().map(move |d| ((s.key, s.to), d))));
        prop_assert_eq!(got, want);
    }
}

/// A receive batch as the kernel fills it: per buffer, a train of `count` datagrams of `segment`
/// bytes and a last one of `last` bytes (one buffer of `last` bytes alone when `count` is 0).
fn fill(batch: &mut RecvBatch, buffers: &[(usize, usize, usize)]) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut want = Vec::new();
    let n = batch
        .recv_with(|bufs, meta| {
            for (i, &(segment, count, last)) in buffers.iter().enumerate() {
                let from: SocketAddr = format!("192.0.2.{}:{}", i + 1, 1000 + i).parse().unwrap();
                let mut at = 0;
                let sizes = std::iter::repeat_n(segment, count).chain([last]);
                for (k, len) in sizes.enumerate() {
                    let d = payload(i * 1000 + k, len);
                    bufs[i][at..at + len].copy_from_slice(&d);
                    at += len;
                    want.push((from, d));
                }
                // (RecvMeta is non-exhaustive: filled field by field.)
                let mut m = quinn_udp::RecvMeta::default();
                m.addr = from;
                m.len = at;
                m.stride = if count > 0 { segment } else { at };
                meta[i] = m;
            }
            Ok(buffers.len())
        })
        .unwrap();
    assert_eq!(n, buffers.len());
    want
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// GRO buffers split back into exactly the datagrams the sender sent, at its segment
    /// boundaries, with their source, in order; handing them over in place (with room around
    /// each, which the handler may overwrite) gives the same datagrams.
    #[test]
    fn gro_buffers_split_at_the_senders_segment_boundaries(
        buffers in prop::collection::vec((1usize..1500, 0usize..40, 0usize..1500), 1..8)
    ) {
        let buffers: Vec<_> = buffers.into_iter().map(|(seg, count, last)| (seg, count, if count > 0 { last.min(seg).max(1) } else { last })).collect();
        let mut batch = RecvBatch::with_room(8, 4, 3);
        let want = fill(&mut batch, &buffers);
        let got: Vec<_> = batch.datagrams().map(|d| (d.from, d.data.to_vec())).collect();
        prop_assert_eq!(&got, &want);
        let coalesced: usize = buffers.iter().filter(|b| b.1 > 0).map(|b| b.1 + 1).sum();
        prop_assert_eq!(batch.coalesced(), coalesced, "datagrams that came in GRO trains");
        let mut in_place = Vec::new();
        batch.for_each_in_place(|from, _, buf, len| {
            in_place.push((from, buf[4..4 + len].to_vec()));
            buf.fill(0xaa);
        });
        prop_assert_eq!(in_place, want);
    }
}

#[test]
fn ecn_values_never_share_a_train() {
    let to = dest(0);
    let mut batch = SendBatch::new(64);
    batch.push(0u8, to, None, &[1; 100]);
    batch.push(0u8, to, Some(Ecn::Ect0), &[2; 100]);
    batch.push(0u8, to, None, &[3; 100]);
    batch.push(0u8, to, Some(Ecn::Ect0), &[4; 100]);
    let mut sink = Recorder::default();
    assert_eq!(batch.flush(&mut sink).syscalls, 2);
    assert_eq!(sink.sent.iter().map(|s| s.contents[0]).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(sink.sent.iter().map(|s| s.contents[100]).collect::<Vec<_>>(), [3, 4]);
}

#[test]
fn a_shorter_datagram_ends_the_train_and_a_larger_one_starts_a_new_one() {
    let to = dest(1);
    let mut batch = SendBatch::new(64);
    for len in [1200, 1200, 700, 1200, 1200, 1300, 1300] {
        batch.push(0u8, to, None, &payload(len, len));
    }
    let mut sink = Recorder::default();
    batch.flush(&mut sink);
    let shapes: Vec<Vec<usize>> = sink.sent.iter().map(|s| s.datagrams().iter().map(|d| d.len()).collect()).collect();
    assert_eq!(shapes, [vec![1200, 1200, 700], vec![1200, 1200], vec![1300, 1300]]);
}

// ---------------------------------------------------------------------------------------------
// Real sockets on loopback

fn bound(addr: &str) -> (UdpIo, UdpSocket) {
    let s = UdpSocket::bind(addr).unwrap();
    let io = UdpIo::new(&s).unwrap();
    (io, s)
}

fn plain(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Receives until `n` datagrams came or two seconds passed (loopback delivers within the send
/// call, so the first receive usually has everything).
fn recv_all(io: &UdpIo, s: &UdpSocket, batch: &mut RecvBatch, n: usize) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<usize>) {
    let (mut got, mut buffers) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while got.len() < n && std::time::Instant::now() < deadline {
        match io.recv(s, batch) {
            Ok(k) => {
                buffers.push(k);
                got.extend(batch.datagrams().map(|d| (d.from, d.data.to_vec())));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("recv: {e}"),
        }
    }
    (got, buffers)
}

fn loopback_recv_batch(local: &str) {
    let (io, rx) = bound(local);
    let to = rx.local_addr().unwrap();
    let a = plain(local);
    let b = plain(local);
    let mut want = Vec::new();
    for i in 0..12usize {
        let (s, len) = if i % 3 == 0 { (&b, 1200) } else { (&a, 40 + i) };
        let data = payload(i, len);
        s.send_to(&data, to).unwrap();
        want.push((s.local_addr().unwrap(), data));
    }
    let mut batch = RecvBatch::new(32);
    let (got, buffers) = recv_all(&io, &rx, &mut batch, want.len());
    assert_eq!(got, want);
    // Everything was queued before the first receive: one syscall took it all.
    assert_eq!(buffers, [12]);
}

#[test]
fn one_recv_takes_every_queued_datagram_with_its_source_ipv4() {
    loopback_recv_batch("127.0.0.1:0");
}

#[test]
fn one_recv_takes_every_queued_datagram_with_its_source_ipv6() {
    loopback_recv_batch("[::1]:0");
}

#[test]
fn a_recv_never_waits_for_the_batch_to_fill() {
    let (io, rx) = bound("127.0.0.1:0");
    let tx = plain("127.0.0.1:0");
    let mut batch = RecvBatch::new(32);
    assert_eq!(io.recv(&rx, &mut batch).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    tx.send_to(b"one", rx.local_addr().unwrap()).unwrap();
    assert_eq!(io.recv(&rx, &mut batch).unwrap(), 1);
    assert_eq!(batch.datagrams().map(|d| d.data).collect::<Vec<_>>(), [b"one"]);
}

fn gso_to_plain_socket(local: &str) {
    let (io, tx) = bound(local);
    let rx = plain(local);
    let to = rx.local_addr().unwrap();
    let mut batch = SendBatch::new(offload().gso_segments);
    let want: Vec<Vec<u8>> = (0..20).map(|i| payload(i, 1000)).chain([payload(20, 500)]).collect();
    for d in &want {
        batch.push(0u8, to, None, d);
    }
    let socks = [(io, tx)];
    let stats = batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    assert_eq!(stats.sent, 21);
    let gso = offload().gso_segments >= 21;
    assert_eq!(stats.syscalls, if gso { 1 } else { 21 }, "GSO: {:?}", offload());
    // A socket without GRO gets the train segmented back into the datagrams that were pushed.
    let mut buf = [0u8; 2048];
    for (i, d) in want.iter().enumerate() {
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&d[..], socks[0].1.local_addr().unwrap()), "datagram {i}");
    }
}

#[test]
fn a_gso_train_reaches_a_plain_socket_as_the_datagrams_pushed_ipv4() {
    gso_to_plain_socket("127.0.0.1:0");
}

#[test]
fn a_gso_train_reaches_a_plain_socket_as_the_datagrams_pushed_ipv6() {
    gso_to_plain_socket("[::1]:0");
}

#[test]
fn a_gso_train_to_a_gro_socket_arrives_as_one_buffer_split_at_its_segments() {
    let off = offload();
    let (tx_io, tx) = bound("127.0.0.1:0");
    let (rx_io, rx) = bound("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let want: Vec<Vec<u8>> = (0..9).map(|i| payload(i, 1200)).chain([payload(9, 77)]).collect();
    let mut batch = SendBatch::new(off.gso_segments);
    for d in &want {
        batch.push(0u8, to, None, d);
    }
    let socks = [(tx_io, tx)];
    batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    let mut recv = RecvBatch::new(8);
    let (got, buffers) = recv_all(&rx_io, &rx, &mut recv, want.len());
    let from = socks[0].1.local_addr().unwrap();
    assert_eq!(got, want.iter().map(|d| (from, d.clone())).collect::<Vec<_>>());
    if off.gso_segments > 1 && off.gro {
        // Loopback hands a GSO train to a GRO socket whole; the batch splits it at its segments.
        assert_eq!(buffers, [1], "one buffer holding the whole train");
    }
}

/// A GRO train's control data carries its segment size, the destination address and the ECN
/// bits together; every segment comes out with the sender's ECN value and the address it was
/// sent to. (With quinn-udp 0.6's receive timestamps left on, the kernel had no room left for
/// the TOS / traffic class message of a train: `restore.rs`.)
fn gro_train_keeps_ecn(local: &str) {
    let off = offload();
    let (tx_io, tx) = bound(local);
    let (rx_io, rx) = bound(local);
    let to = rx.local_addr().unwrap();
    let want: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 300)).collect();
    let mut batch = SendBatch::new(off.gso_segments);
    for d in &want {
        batch.push(0u8, to, Some(Ecn::Ect0), d);
    }
    let socks = [(tx_io, tx)];
    let stats = batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    assert_eq!(stats.sent, want.len(), "{stats:?}");
    let mut recv = RecvBatch::new(8);
    let (mut got, mut buffers) = (Vec::new(), Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        match rx_io.recv(&rx, &mut recv) {
            Ok(k) => {
                buffers.push(k);
                got.extend(recv.datagrams().map(|d| (d.data.to_vec(), d.ecn, d.local_ip)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert_eq!(got.iter().map(|g| &g.0).collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
    let meta: Vec<_> = got.iter().map(|g| (g.1, g.2)).collect();
    assert_eq!(meta, vec![(Some(Ecn::Ect0), Some(to.ip())); want.len()], "ECN and destination per datagram");
    if off.gso_segments > 1 && off.gro {
        assert_eq!(buffers, [1], "the train arrived as one GRO buffer");
    }
}

#[test]
fn a_gro_train_keeps_its_ecn_and_destination_address_ipv4() {
    gro_train_keeps_ecn("127.0.0.1:0");
}

#[test]
fn a_gro_train_keeps_its_ecn_and_destination_address_ipv6() {
    gro_train_keeps_ecn("[::1]:0");
}

#[test]
fn in_place_handling_gets_room_around_every_datagram_including_gro_segments() {
    let (tx_io, tx) = bound("127.0.0.1:0");
    let (rx_io, rx) = bound("127.0.0.1:0");
    let plain_tx = plain("127.0.0.1:0");
    let to = rx.local_addr().unwrap();
    let train: Vec<Vec<u8>> = (0..5).map(|i| payload(i, 300)).collect();
    let mut batch = SendBatch::new(offload().gso_segments);
    for d in &train {
        batch.push(0u8, to, None, d);
    }
    let socks = [(tx_io, tx)];
    batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    plain_tx.send_to(&payload(99, 33), to).unwrap();
    let mut recv = RecvBatch::with_room(8, 4, 3);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while got.len() < 6 && std::time::Instant::now() < deadline {
        if rx_io.recv(&rx, &mut recv).is_ok() {
            recv.for_each_in_place(|_, _, buf, len| {
                assert_eq!(buf.len(), 4 + len + 3);
                let payload = buf[4..4 + len].to_vec();
                // The handler may write around the payload (a ChannelData header, padding).
                buf[..4].copy_from_slice(&[0xff; 4]);
                buf[4 + len..].fill(0xee);
                got.push(payload);
            });
        }
    }
    let want: Vec<Vec<u8>> = train.into_iter().chain([payload(99, 33)]).collect();
    assert_eq!(got, want);
}

#[test]
fn mixed_sizes_and_destinations_arrive_in_order_per_destination() {
    let (io, tx) = bound("127.0.0.1:0");
    let rx = [plain("127.0.0.1:0"), plain("127.0.0.1:0")];
    let sizes = [1200, 1200, 1200, 160, 160, 3000, 1200, 1, 1200, 1200, 0, 1472, 1472, 1473];
    let mut batch = SendBatch::new(offload().gso_segments);
    let mut want: [Vec<Vec<u8>>; 2] = Default::default();
    for (i, &len) in sizes.iter().enumerate() {
        let r = i % 3 % 2;
        let d = payload(i, len);
        batch.push(0u8, rx[r].local_addr().unwrap(), None, &d);
        want[r].push(d);
    }
    let socks = [(io, tx)];
    let stats = batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    assert_eq!(stats.sent, sizes.len());
    let mut buf = [0u8; 4096];
    for (r, want) in rx.iter().zip(&want) {
        for d in want {
            let n = r.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &d[..]);
        }
    }
}

#[test]
fn a_refused_destination_is_counted_and_the_others_still_get_theirs() {
    let (io, tx) = bound("127.0.0.1:0");
    let rx = plain("127.0.0.1:0");
    let good = rx.local_addr().unwrap();
    // Broadcast without SO_BROADCAST: the kernel refuses it (EACCES), train or single.
    let bad: SocketAddr = "255.255.255.255:9".parse().unwrap();
    let mut batch = SendBatch::new(offload().gso_segments);
    for i in 0..6 {
        batch.push(0u8, if i % 2 == 0 { bad } else { good }, None, &payload(i, 200));
        batch.push(0u8, bad, None, &payload(100 + i, 200));
    }
    batch.push(1u8, good, None, b"unknown socket");
    let socks = [(io, tx)];
    let stats = batch.flush(&mut Sockets::new(|k: u8| socks.get(usize::from(k)).map(|(i, s)| (i, s))));
    assert_eq!((stats.sent, stats.failed, stats.would_block), (3, 10, 0), "{stats:?}");
    let mut buf = [0u8; 512];
    for i in [1, 3, 5] {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &payload(i, 200)[..]);
    }
}

#[test]
fn recv_ready_returns_what_one_readiness_event_delivers() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let rx = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
        let io = UdpIo::new(&rx).unwrap();
        let to = rx.local_addr().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let tx = plain("[::1]:0");
            for i in 0..3 {
                tx.send_to(&payload(i, 64), to).unwrap();
            }
        });
        let mut batch = RecvBatch::new(32);
        let mut got = Vec::new();
        while got.len() < 3 {
            let n =
                tokio::time::timeout(Duration::from_secs(2), io.recv_ready(&rx, &mut batch)).await.unwrap().unwrap();
            assert!(n >= 1);
            got.extend(batch.datagrams().map(|d| d.data.to_vec()));
        }
        assert_eq!(got, (0..3).map(|i| payload(i, 64)).collect::<Vec<_>>());
        sender.join().unwrap();
    });
}

/// What quinn-udp sets for QUIC is put back as it was: path-MTU mode, `IPV6_DONTFRAG`, receive
/// timestamps (`restore.rs`), whichever value the socket had.
#[test]
fn the_sockets_fragmentation_and_timestamp_modes_are_left_as_they_were() {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt as nopt};
    use rustix::net::sockopt;
    use std::os::fd::AsRawFd;
    for stamps in [false, true] {
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt(v4.as_raw_fd(), nopt::ReceiveTimestampns, &stamps).unwrap();
        let before = sockopt::ip_mtu_discover(&v4).unwrap();
        let _io = UdpIo::new(&v4).unwrap();
        assert_eq!(sockopt::ip_mtu_discover(&v4).unwrap(), before);
        assert_eq!(getsockopt(v4.as_raw_fd(), nopt::ReceiveTimestampns).unwrap(), stamps);

        let v6 = UdpSocket::bind("[::1]:0").unwrap();
        setsockopt(v6.as_raw_fd(), nopt::ReceiveTimestampns, &stamps).unwrap();
        let before = (sockopt::ipv6_mtu_discover(&v6).unwrap(), sockopt::ip_mtu_discover(&v6).unwrap());
        let dontfrag = getsockopt(v6.as_raw_fd(), nopt::Ipv6DontFrag).unwrap();
        let _io = UdpIo::new(&v6).unwrap();
        assert_eq!((sockopt::ipv6_mtu_discover(&v6).unwrap(), sockopt::ip_mtu_discover(&v6).unwrap()), before);
        assert_eq!(getsockopt(v6.as_raw_fd(), nopt::Ipv6DontFrag).unwrap(), dontfrag);
        assert_eq!(getsockopt(v6.as_raw_fd(), nopt::ReceiveTimestampns).unwrap(), stamps);
    }
}

/// Configuring a socket leaves the process holding one IPv6 UDP socket with GRO and receive
/// timestamps on for good (`gro_pin`): the relay's own sockets turning them on and closing then
/// only count the kernel's static keys instead of patching kernel code on every CPU when the
/// first is made or the last closed (docs/benchmarks.md). The same socket every time, still
/// bound.
#[test]
fn configuring_sockets_keeps_one_ipv6_gro_socket_open() {
    for _ in 0..3 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let _io = UdpIo::new(&s).unwrap();
    }
    let held = crate::gro_pin::pin().expect("an IPv6 loopback socket (::1) on this host");
    assert!(held.is_ipv6(), "{held}");
    assert_eq!(crate::gro_pin::pin(), Some(held), "made once, then kept");
    let e = UdpSocket::bind(held).expect_err("still bound by the process");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
}
