//! The batching layer (`turnkey_relay::batch`) over a veth pair between two network namespaces
//! the test creates: a 1500-byte MTU and NAPI GRO, as on a NIC. GSO trains must cross intact,
//! reach a GRO socket as one buffer that the layer splits at the sender's segment boundaries,
//! and reach a plain socket as the separate datagrams that were pushed; a datagram larger than
//! the MTU must still leave (in fragments). Skipped with a message where namespaces cannot be
//! made; required under CI=true.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use turnkey_e2e::netns::{VethPair, A_V4, A_V6, B_V4, B_V6};
use turnkey_relay::batch::{offload, RecvBatch, SendBatch, Sockets, UdpIo};

/// Datagram `n`, `len` bytes, its first bytes carrying `n`.
fn payload(n: usize, len: usize) -> Vec<u8> {
    let tag = (n as u32).to_be_bytes();
    (0..len).map(|i| if i < 4 { tag[i] } else { (n * 7 + i) as u8 }).collect()
}

fn bind(ip: IpAddr) -> (UdpIo, UdpSocket) {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
    let io = UdpIo::new(&s).unwrap();
    (io, s)
}

/// Pushes `datagrams` to `to` from `tx` and flushes; returns the send syscalls used.
fn send(tx: &(UdpIo, UdpSocket), to: SocketAddr, datagrams: &[Vec<u8>]) -> usize {
    let mut batch = SendBatch::new(offload().gso_segments);
    for d in datagrams {
        batch.push(0u8, to, None, d);
    }
    let stats = batch.flush(&mut Sockets::new(|_: u8| Some((&tx.0, &tx.1))));
    assert_eq!((stats.sent, stats.dropped()), (datagrams.len(), 0), "{stats:?}");
    stats.syscalls
}

/// Receives through the batching layer until `n` datagrams came (bounded to 3 s); returns them
/// and the number of buffers each receive filled.
fn recv(rx: &(UdpIo, UdpSocket), n: usize) -> (Vec<Vec<u8>>, Vec<usize>) {
    let mut batch = RecvBatch::new(32);
    let (mut got, mut buffers) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(3);
    while got.len() < n && Instant::now() < deadline {
        match rx.0.recv(&rx.1, &mut batch) {
            Ok(k) => {
                buffers.push(k);
                got.extend(batch.datagrams().map(|d| d.data.to_vec()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("recv: {e}"),
        }
    }
    (got, buffers)
}

fn gso_train_across_veth(a_ip: IpAddr, b_ip: IpAddr) {
    let Some(pair) = VethPair::new() else { return };
    let off = offload();
    assert!(off.gso_segments > 1 && off.gro, "this kernel offers GSO and GRO (Linux 5+): {off:?}");
    let tx = pair.a.enter(|| bind(a_ip));
    let (gro_rx, plain_rx) = pair.b.enter(|| {
        let plain = UdpSocket::bind(SocketAddr::new(b_ip, 0)).unwrap();
        plain.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        (bind(b_ip), plain)
    });
    // A video frame's worth: forty 1200 B datagrams and a short last one.
    let train: Vec<Vec<u8>> = (0..40).map(|i| payload(i, 1200)).chain([payload(40, 500)]).collect();

    // To a GRO socket: one send, one receive buffer, split back at the sender's boundaries.
    assert_eq!(send(&tx, gro_rx.1.local_addr().unwrap(), &train), 1, "the train left in one GSO send");
    let (got, buffers) = recv(&gro_rx, train.len());
    assert_eq!(got, train, "every datagram once, in order, with its size");
    assert_eq!(buffers, [1], "GRO delivered the train as one buffer");

    // To a socket without GRO: the same train arrives as the datagrams that were pushed.
    assert_eq!(send(&tx, plain_rx.local_addr().unwrap(), &train), 1);
    let mut buf = [0u8; 2048];
    for (i, d) in train.iter().enumerate() {
        let (n, from) = plain_rx.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&d[..], tx.1.local_addr().unwrap()), "datagram {i}");
    }
    drop(pair);
}

#[test]
fn gso_trains_cross_a_veth_and_arrive_as_one_gro_buffer_ipv4() {
    gso_train_across_veth(A_V4, B_V4);
}

#[test]
fn gso_trains_cross_a_veth_and_arrive_as_one_gro_buffer_ipv6() {
    gso_train_across_veth(A_V6, B_V6);
}

#[test]
fn datagrams_of_mixed_sizes_cross_a_veth_whole_and_in_order() {
    let Some(pair) = VethPair::new() else { return };
    let tx = pair.a.enter(|| bind(A_V4));
    let rx = pair.b.enter(|| bind(B_V4));
    // Segments up to the MTU's 1472 bytes coalesce; a 1473 B and a 3000 B datagram cannot be
    // segments on a 1500-byte link and leave alone (the 3000 B one in IPv4 fragments).
    // [1472 x3] [1473] [3000] [160, 160, 100] [1200, 1200, 1]
    let sizes = [1472, 1472, 1472, 1473, 3000, 160, 160, 100, 1200, 1200, 1];
    mixed_sizes_across(&tx, &rx, &sizes, 5);
}

#[test]
fn datagrams_over_the_mtu_leave_in_ipv6_fragments() {
    let Some(pair) = VethPair::new() else { return };
    let tx = pair.a.enter(|| bind(A_V6));
    let rx = pair.b.enter(|| bind(B_V6));
    // quinn-udp sets IPV6_DONTFRAG; UdpIo clears it, so a relayed 3000 B datagram is not refused.
    // [1452 x2] [1453] [3000] [1200, 1200, 1]
    mixed_sizes_across(&tx, &rx, &[1452, 1452, 1453, 3000, 1200, 1200, 1], 4);
}

fn mixed_sizes_across(tx: &(UdpIo, UdpSocket), rx: &(UdpIo, UdpSocket), sizes: &[usize], sends: usize) {
    let datagrams: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| payload(i, len)).collect();
    let syscalls = send(tx, rx.1.local_addr().unwrap(), &datagrams);
    assert_eq!(syscalls, sends, "one send per GSO train or lone datagram");
    let (got, _) = recv(rx, datagrams.len());
    assert_eq!(got, datagrams);
}
