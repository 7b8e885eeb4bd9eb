//! Golden packets through BPF_PROG_TEST_RUN (repeat 1, as root): every rewrite (IPv4, IPv6, both
//! directions, hairpin, redirect), every pass-to-user-space reason, expiry; output checksums
//! verified by an independent parser (etherparse) and the frame's every header field checked.
//!
//! Each test runs in a private network namespace (unshare on its thread) holding veths with static
//! neighbours, so `bpf_fib_lookup` resolves the next hop exactly as on a relay host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use etherparse::{Ipv4Header, Ipv6Header, UdpHeader};
use turnkey_fastpath::{
    action, ifindex, AllocKey, AllocationEntry, ChannelBinding, FastPath, KernelClock, KernelDeadline, PassReason,
    MAX_ALLOCATIONS,
};

use common::{channel_data, load_or_skip, mac, private_netns, sh, udp_frame};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const FAR_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x13];

/// The relay's namespace: `tka` (ingress; 10.1.0.1/24, fd00:1::1/64) with the client (.2) and a
/// peer (.3) as static neighbours, and `tkc` (10.2.0.1/24) with a far peer 10.2.0.3.
struct Net {
    fp: FastPath,
    ingress: u32,
    relay_mac: [u8; 6],
}

fn setup() -> Option<Net> {
    let mut fp = load_or_skip()?;
    private_netns();
    sh("ip link add tka type veth peer name tkb && ip link add tkc type veth peer name tkd");
    sh("ip addr add 10.1.0.1/24 dev tka && ip -6 addr add fd00:1::1/64 dev tka nodad");
    sh("ip addr add 10.2.0.1/24 dev tkc");
    sh("for d in tka tkb tkc tkd; do ip link set $d up; done");
    // bpf_fib_lookup answers only with forwarding on for the ingress interface (docs/fastpath.md).
    sh("echo 1 > /proc/sys/net/ipv4/conf/tka/forwarding && echo 1 > /proc/sys/net/ipv6/conf/tka/forwarding");
    sh("ip neigh replace 10.1.0.2 lladdr 02:00:00:00:00:02 dev tka nud permanent");
    sh("ip neigh replace 10.1.0.3 lladdr 02:00:00:00:00:03 dev tka nud permanent");
    sh("ip -6 neigh replace fd00:1::2 lladdr 02:00:00:00:00:02 dev tka nud permanent");
    sh("ip -6 neigh replace fd00:1::3 lladdr 02:00:00:00:00:03 dev tka nud permanent");
    sh("ip neigh replace 10.2.0.3 lladdr 02:00:00:00:00:13 dev tkc nud permanent");
    for l in ["10.1.0.1:3478", "[fd00:1::1]:3478"] {
        fp.add_listener(l.parse().unwrap()).unwrap();
    }
    for ip in ["10.1.0.1", "fd00:1::1"] {
        fp.add_relay_ip(ip.parse().unwrap()).unwrap();
    }
    let ingress = ifindex("tka").unwrap();
    assert_eq!(turnkey_fastpath::interface_of("10.1.0.1".parse().unwrap()).as_deref(), Some("tka"));
    assert_eq!(turnkey_fastpath::interface_of("fd00:1::1".parse().unwrap()).as_deref(), Some("tka"));
    assert_eq!(turnkey_fastpath::interface_of("10.2.0.1".parse().unwrap()).as_deref(), Some("tkc"));
    assert_eq!(turnkey_fastpath::interface_of("192.0.2.1".parse().unwrap()), None);
    Some(Net { fp, ingress, relay_mac: mac("tka") })
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// An allocation entry that ends in 10 minutes.
fn entry(budget_bytes: Option<u64>) -> AllocationEntry {
    AllocationEntry { deadline: KernelClock::new().deadline(Instant::now() + Duration::from_secs(600)), budget_bytes }
}

/// A new allocation, in the slot the fast path hands out.
fn alive(fp: &mut FastPath, budget: Option<u64>) -> AllocKey {
    fp.add_allocation(entry(budget)).unwrap().expect("a free slot")
}

fn bind(fp: &mut FastPath, b: &ChannelBinding) {
    fp.bind_channel(b, KernelClock::new().deadline(Instant::now() + Duration::from_secs(600))).unwrap();
}

fn binding4(alloc: AllocKey) -> ChannelBinding {
    ChannelBinding {
        client: sa("10.1.0.2:5000"),
        listener: sa("10.1.0.1:3478"),
        channel: 0x4001,
        relayed: sa("10.1.0.1:50000"),
        peer: sa("10.1.0.3:6000"),
        alloc,
    }
}

fn binding6(alloc: AllocKey) -> ChannelBinding {
    ChannelBinding {
        client: sa("[fd00:1::2]:5000"),
        listener: sa("[fd00:1::1]:3478"),
        channel: 0x4abc,
        relayed: sa("[fd00:1::1]:50000"),
        peer: sa("[fd00:1::3]:6000"),
        alloc,
    }
}

/// Parses a frame independently and checks everything: MACs, addresses, ports, TTL, payload, and
/// that the IP and UDP checksums are what a from-scratch computation gives.
fn expect_frame(frame: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    assert_eq!(&frame[0..6], &dst_mac, "destination MAC");
    assert_eq!(&frame[6..12], &src_mac, "source MAC");
    let l3 = &frame[14..];
    let (udp, rest) = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(&frame[12..14], &[0x08, 0x00]);
            let (ip, rest) = Ipv4Header::from_slice(l3).unwrap();
            assert_eq!(ip.source, s.octets());
            assert_eq!(ip.destination, d.octets());
            assert_eq!(ip.time_to_live, 64);
            assert_eq!(usize::from(ip.total_len), l3.len(), "IPv4 total length");
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
            let (udp, data) = UdpHeader::from_slice(rest).unwrap();
            assert_eq!(udp.checksum, udp.calc_checksum_ipv4(&ip, data).unwrap(), "UDP checksum (IPv4)");
            (udp, data)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(&frame[12..14], &[0x86, 0xdd]);
            let (ip, rest) = Ipv6Header::from_slice(l3).unwrap();
            assert_eq!(ip.source, s.octets());
            assert_eq!(ip.destination, d.octets());
            assert_eq!(ip.hop_limit, 64);
            assert_eq!(usize::from(ip.payload_length), rest.len(), "IPv6 payload length");
            let (udp, data) = UdpHeader::from_slice(rest).unwrap();
            assert_eq!(udp.checksum, udp.calc_checksum_ipv6(&ip, data).unwrap(), "UDP checksum (IPv6)");
            (udp, data)
        }
        _ => unreachable!(),
    };
    assert_eq!(udp.source_port, src.port());
    assert_eq!(udp.destination_port, dst.port());
    assert_eq!(usize::from(udp.length), 8 + payload.len(), "UDP length");
    assert_eq!(rest, payload, "payload");
}

/// Runs `frame` and checks the action, naming the pass reasons counted when it differs.
fn run(net: &mut Net, frame: &[u8], want: u32) -> Vec<u8> {
    let before = net.fp.counters().unwrap();
    let out = net.fp.test_run(frame, net.ingress).unwrap();
    if out.action != want {
        let after = net.fp.counters().unwrap();
        let why: Vec<_> =
            PassReason::ALL.iter().filter(|r| after.passed(**r) > before.passed(**r)).map(|r| r.label()).collect();
        panic!("action {} instead of {want}; passed as {why:?}", out.action);
    }
    out.frame
}

fn expect_pass(net: &mut Net, frame: &[u8], reason: PassReason) {
    let before = net.fp.counters().unwrap().passed(reason);
    let out = net.fp.test_run(frame, net.ingress).unwrap();
    assert_eq!(out.action, action::PASS, "expected XDP_PASS ({})", reason.label());
    assert_eq!(out.frame, frame, "a passed frame is untouched ({})", reason.label());
    assert_eq!(net.fp.counters().unwrap().passed(reason), before + 1, "counted as {}", reason.label());
}

#[test]
fn ipv4_both_directions_rewrite_with_valid_checksums() {
    let Some(mut net) = setup() else { return };
    let a = alive(&mut net.fp, None);
    let b = binding4(a);
    bind(&mut net.fp, &b);
    let data = b"hello, peer: an odd-length payload";

    let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, data));
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, PEER_MAC, b.relayed, b.peer, data);

    let reply = b"and back to the client";
    let frame = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, reply);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(0x4001, reply));

    let c = net.fp.alloc_counters(a).unwrap();
    assert_eq!((c.to_peer_packets, c.to_peer_bytes), (1, data.len() as u64));
    assert_eq!((c.to_client_packets, c.to_client_bytes), (1, reply.len() as u64));
    assert_eq!(net.fp.counters().unwrap().tx, 2);

    // Sweeps hand out what is new, once; a removal hands out the rest.
    assert_eq!(net.fp.sweep(a).unwrap(), c);
    assert!(net.fp.sweep(a).unwrap().is_zero());
    let frame = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, reply);
    run(&mut net, &frame, action::TX);
    let once = turnkey_fastpath::AllocCounters {
        to_client_packets: 1,
        to_client_bytes: reply.len() as u64,
        ..Default::default()
    };
    assert_eq!(net.fp.sweep(a).unwrap(), once);
    run(&mut net, &frame, action::TX);
    assert_eq!(net.fp.remove_allocation(a).unwrap(), once);
    assert!(net.fp.sweep(a).unwrap().is_zero());
    assert!(net.fp.remove_allocation(a).unwrap().is_zero(), "removed once");

    // An RFC 5766 client's channel number (0x5000-0x7FFF, when the relay accepts them): relayed
    // once bound, user space's before.
    let legacy = ChannelBinding {
        client: sa("10.1.0.2:5002"),
        channel: 0x7fff,
        relayed: sa("10.1.0.1:50002"),
        alloc: alive(&mut net.fp, None),
        ..b
    };
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, legacy.client, legacy.listener, &channel_data(0x7fff, data));
    expect_pass(&mut net, &frame, PassReason::NoChannel);
    bind(&mut net.fp, &legacy);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, PEER_MAC, legacy.relayed, legacy.peer, data);
}

#[test]
fn ipv6_both_directions_rewrite_with_valid_checksums() {
    let Some(mut net) = setup() else { return };
    let b = binding6(alive(&mut net.fp, None));
    bind(&mut net.fp, &b);
    for data in [&b""[..], b"x", b"sixteen bytes!!!", &[0xa5u8; 1200][..]] {
        let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4abc, data));
        let out = run(&mut net, &frame, action::TX);
        expect_frame(&out, net.relay_mac, PEER_MAC, b.relayed, b.peer, data);

        let frame = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, data);
        let out = run(&mut net, &frame, action::TX);
        expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(0x4abc, data));
    }
    assert_eq!(net.fp.alloc_counters(b.alloc).unwrap().to_peer_packets, 4);
}

/// Allocation a (client :5000, relayed 10.1.0.1:50000) and allocation b (client :5001, relayed
/// `b_ip`:50001) on the same relay, both alive, each binding (not yet bound) a channel to the
/// other's relayed address.
fn hairpin_pair(net: &mut Net, b_ip: &str) -> (ChannelBinding, ChannelBinding) {
    let b_relayed = sa(&format!("{b_ip}:50001"));
    let a = ChannelBinding { peer: b_relayed, ..binding4(alive(&mut net.fp, None)) };
    let b = ChannelBinding {
        client: sa("10.1.0.2:5001"),
        listener: sa("10.1.0.1:3478"),
        channel: 0x4002,
        relayed: b_relayed,
        peer: sa("10.1.0.1:50000"),
        alloc: alive(&mut net.fp, None),
    };
    (a, b)
}

#[test]
fn hairpin_between_two_allocations_is_relayed_in_one_step() {
    let Some(mut net) = setup() else { return };
    let (a, b) = hairpin_pair(&mut net, "10.1.0.1");
    bind(&mut net.fp, &a);

    // Only one side bound: the other allocation's relayed address is ours, user space relays it.
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, a.client, a.listener, &channel_data(0x4001, b"hairpin"));
    expect_pass(&mut net, &frame, PassReason::HairpinUnbound);

    bind(&mut net.fp, &b);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(0x4002, b"hairpin"));
    assert_eq!(net.fp.alloc_counters(a.alloc).unwrap().to_peer_bytes, 7);
    assert_eq!(net.fp.alloc_counters(b.alloc).unwrap().to_client_bytes, 7);
}

#[test]
fn a_peer_datagram_that_looks_like_channel_data_is_relayed_as_data() {
    // The program looks a ChannelData-shaped datagram up as a channel first: a peer's payload of
    // that shape misses there and is relayed to the client as any other data.
    let Some(mut net) = setup() else { return };
    let b = binding4(alive(&mut net.fp, None));
    bind(&mut net.fp, &b);
    let lookalike = channel_data(0x4001, b"not a channel here");
    let frame = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, &lookalike);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(0x4001, &lookalike));
}

#[test]
fn hairpin_is_marked_by_the_relay_ips_user_space_declared() {
    let Some(mut net) = setup() else { return };
    // The other allocation's relayed address is on 10.2.0.1 (tkc), not yet declared a relay IP:
    // the program takes the channel for a direct one (the local destination goes to user space).
    let (a, b) = hairpin_pair(&mut net, "10.2.0.1");
    bind(&mut net.fp, &a);
    bind(&mut net.fp, &b);
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, a.client, a.listener, &channel_data(0x4001, b"hairpin"));
    expect_pass(&mut net, &frame, PassReason::NoRoute);
    // Declared afterwards: the channels already bound to it are marked hairpin.
    net.fp.add_relay_ip("10.2.0.1".parse().unwrap()).unwrap();
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(0x4002, b"hairpin"));
}

/// The fast path hands out every slot once, then none (the allocation stays in user space); the
/// last slot relays; freed slots come back the earliest freed first, their counters from zero.
#[test]
fn allocation_slots_stop_at_the_kernel_arrays_size() {
    let Some(mut net) = setup() else { return };
    let keys: Vec<AllocKey> = (0..MAX_ALLOCATIONS).map(|_| alive(&mut net.fp, None)).collect();
    assert_eq!(net.fp.add_allocation(entry(None)).unwrap(), None, "every slot in use");
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len(), "each slot handed out once");
    let last = keys[keys.len() - 1];
    let b = binding4(last);
    bind(&mut net.fp, &b);
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, b"last"));
    run(&mut net, &frame, action::TX);
    assert_eq!(net.fp.sweep(last).unwrap().to_peer_packets, 1);
    run(&mut net, &frame, action::TX);
    assert!(net.fp.remove_allocation(keys[5]).unwrap().is_zero());
    assert_eq!(net.fp.remove_allocation(last).unwrap().to_peer_packets, 1);
    // Freed: the channel that still names the slot is user space's.
    expect_pass(&mut net, &frame, PassReason::NoAllocation);
    assert_eq!(net.fp.add_allocation(entry(None)).unwrap(), Some(keys[5]), "the earliest freed first");
    assert_eq!(net.fp.add_allocation(entry(None)).unwrap(), Some(last));
    assert_eq!(net.fp.add_allocation(entry(None)).unwrap(), None);
    // A reused slot starts from zero.
    assert_eq!(net.fp.alloc_counters(last).unwrap(), Default::default());
    assert!(net.fp.sweep(last).unwrap().is_zero());
    run(&mut net, &frame, action::TX);
    assert_eq!(net.fp.sweep(last).unwrap().to_peer_packets, 1);
}

#[test]
fn another_egress_interface_is_redirected_when_forwarding_else_passed() {
    let Some(mut net) = setup() else { return };
    let b = ChannelBinding { peer: sa("10.2.0.3:6000"), ..binding4(alive(&mut net.fp, None)) };
    bind(&mut net.fp, &b);
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, b"far"));

    // Forwarding off on the ingress interface: the kernel gives no next hop, user space relays.
    sh("echo 0 > /proc/sys/net/ipv4/conf/tka/forwarding");
    expect_pass(&mut net, &frame, PassReason::ForwardingOff);
    sh("echo 1 > /proc/sys/net/ipv4/conf/tka/forwarding");
    // Not an interface the fast path may send on yet.
    expect_pass(&mut net, &frame, PassReason::NoTxPort);
    net.fp.allow_egress(ifindex("tkc").unwrap()).unwrap();
    let out = run(&mut net, &frame, action::REDIRECT);
    expect_frame(&out, mac("tkc"), FAR_PEER_MAC, b.relayed, b.peer, b"far");
    assert_eq!(net.fp.counters().unwrap().redirected, 1);
}

#[test]
fn strict_expiry_in_the_kernel() {
    let Some(mut net) = setup() else { return };
    let b = binding4(alive(&mut net.fp, None));
    let clock = KernelClock::new();
    net.fp.bind_channel(&b, clock.deadline(Instant::now() + Duration::from_millis(300))).unwrap();
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, b"soon"));
    run(&mut net, &frame, action::TX);
    std::thread::sleep(Duration::from_millis(400));
    // No sweep ran: the entry is still in the map, and still not used.
    assert_eq!(net.fp.channel_count(), 1);
    expect_pass(&mut net, &frame, PassReason::Expired);
    let reply = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, b"late");
    expect_pass(&mut net, &reply, PassReason::Expired);

    // The allocation's own end counts too, whatever the channel's deadline says.
    bind(&mut net.fp, &b);
    run(&mut net, &frame, action::TX);
    let past = KernelDeadline(KernelClock::now().0 - 1);
    net.fp.update_allocation(b.alloc, AllocationEntry { deadline: past, budget_bytes: None }).unwrap();
    expect_pass(&mut net, &frame, PassReason::Expired);

    // Removal is immediate.
    net.fp.update_allocation(b.alloc, entry(None)).unwrap();
    run(&mut net, &frame, action::TX);
    net.fp.unbind_channel(&b).unwrap();
    expect_pass(&mut net, &frame, PassReason::NoChannel);
    expect_pass(&mut net, &reply, PassReason::NoPeer);
}

#[test]
fn byte_budget_is_spent_then_user_space_takes_over() {
    let Some(mut net) = setup() else { return };
    let b = binding4(alive(&mut net.fp, Some(10)));
    bind(&mut net.fp, &b);
    let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, b"sixbyt"));
    run(&mut net, &frame, action::TX);
    expect_pass(&mut net, &frame, PassReason::OverBudget); // 4 bytes left, 6 asked
    net.fp.refill_budget(b.alloc, 6).unwrap();
    run(&mut net, &frame, action::TX);
    let removed = net.fp.remove_allocation(b.alloc).unwrap();
    assert_eq!((removed.to_peer_packets, removed.to_peer_bytes), (2, 12));
    expect_pass(&mut net, &frame, PassReason::NoAllocation);
    assert!(net.fp.refill_budget(b.alloc, 6).is_err(), "not live");
    assert!(net.fp.update_allocation(b.alloc, entry(None)).is_err(), "not live");
}

#[test]
fn every_unsure_packet_goes_to_user_space() {
    let Some(mut net) = setup() else { return };
    let b = binding4(alive(&mut net.fp, None));
    bind(&mut net.fp, &b);
    let rm = net.relay_mac;
    let good = udp_frame(CLIENT_MAC, rm, b.client, b.listener, &channel_data(0x4001, b"payload!"));

    // Not IP (ARP).
    let mut arp = good[..42].to_vec();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    expect_pass(&mut net, &arp, PassReason::NotIp);
    // A fragment (MF set), IPv4 options (IHL 6), IPv6 fragment header.
    let mut frag = good.clone();
    frag[20] |= 0x20;
    expect_pass(&mut net, &frag, PassReason::Fragment);
    let mut opts = good.clone();
    opts[14] = 0x46;
    expect_pass(&mut net, &opts, PassReason::IpOptions);
    let b6 = binding6(b.alloc);
    let mut frag6 = udp_frame(CLIENT_MAC, rm, b6.client, b6.listener, &channel_data(0x4abc, b"x"));
    frag6[14 + 6] = 44;
    expect_pass(&mut net, &frag6, PassReason::Fragment);
    // Not UDP (TCP to the listener's address).
    let mut tcp = good.clone();
    tcp[14 + 9] = 6;
    expect_pass(&mut net, &tcp, PassReason::NotUdp);
    // UDP to another address of the host, and to the relay IP on a port no peer entry covers
    // (the host's own services, e.g. DNS replies).
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, sa("10.1.0.99:53"), b"dns"), PassReason::NotRelayAddr);
    expect_pass(
        &mut net,
        &udp_frame(PEER_MAC, rm, sa("10.1.0.3:53"), sa("10.1.0.1:40000"), b"dns"),
        PassReason::NoPeer,
    );
    // Length mismatches: UDP length, ChannelData length.
    let mut ulen = good.clone();
    ulen[14 + 20 + 5] -= 1;
    expect_pass(&mut net, &ulen, PassReason::Length);
    let mut cdlen = channel_data(0x4001, b"payload!");
    cdlen[3] = 20;
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &cdlen), PassReason::Length);
    // Trailing bytes that are not padding to a multiple of 4 (length 5, 7 bytes of data): user
    // space ignores them, the program leaves them to it; 4 or more trailing bytes disagree.
    let mut uneven = channel_data(0x4001, b"abcde\0\0");
    uneven[3] = 5;
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &uneven), PassReason::Padded);
    let mut long = channel_data(0x4001, b"abcd\0\0\0\0");
    long[3] = 4;
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &long), PassReason::Length);
    // STUN: a Binding request, a Send indication.
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    stun.extend_from_slice(&[7; 12]);
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &stun), PassReason::Stun);
    stun[1] = 0x16;
    expect_pass(&mut net, &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &stun), PassReason::SendIndication);
    // First bits 10 (not STUN, not ChannelData).
    expect_pass(
        &mut net,
        &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &[0x80, 1, 0, 0]),
        PassReason::NotChannelData,
    );
    // A channel with no kernel entry; another client's 5-tuple on a bound channel number.
    expect_pass(
        &mut net,
        &udp_frame(CLIENT_MAC, rm, b.client, b.listener, &channel_data(0x4002, b"x")),
        PassReason::NoChannel,
    );
    expect_pass(
        &mut net,
        &udp_frame(CLIENT_MAC, rm, sa("10.1.0.2:5999"), b.listener, &channel_data(0x4001, b"x")),
        PassReason::NoChannel,
    );
    // A channel whose allocation has no entry (it ended: its slot is free).
    let ended = alive(&mut net.fp, None);
    net.fp.remove_allocation(ended).unwrap();
    let orphan = ChannelBinding { client: sa("10.1.0.2:6001"), relayed: sa("10.1.0.1:50010"), alloc: ended, ..b };
    bind(&mut net.fp, &orphan);
    expect_pass(
        &mut net,
        &udp_frame(CLIENT_MAC, rm, orphan.client, b.listener, &channel_data(0x4001, b"x")),
        PassReason::NoAllocation,
    );
    // A peer whose next hop is not resolved: the kernel stack resolves it for user space's send.
    let unresolved =
        ChannelBinding { client: sa("10.1.0.2:6002"), relayed: sa("10.1.0.1:50011"), peer: sa("10.1.0.9:6000"), ..b };
    bind(&mut net.fp, &unresolved);
    expect_pass(
        &mut net,
        &udp_frame(CLIENT_MAC, rm, unresolved.client, b.listener, &channel_data(0x4001, b"x")),
        PassReason::NoNeigh,
    );
    // A result larger than the egress MTU: peer -> client adds 4 bytes to a 1500-byte packet.
    let full = vec![0x11u8; 1500 - 20 - 8];
    expect_pass(&mut net, &udp_frame(PEER_MAC, rm, b.peer, b.relayed, &full), PassReason::Mtu);
    // One byte less fits.
    let fits = vec![0x11u8; 1500 - 20 - 8 - 4];
    run(&mut net, &udp_frame(PEER_MAC, rm, b.peer, b.relayed, &fits), action::TX);

    // Nothing above was relayed.
    let c = net.fp.alloc_counters(b.alloc).unwrap();
    assert_eq!((c.to_peer_packets, c.to_client_packets), (0, 1));
}

#[test]
fn ethernet_padding_is_trimmed_before_relaying() {
    let Some(mut net) = setup() else { return };
    let b = binding4(alive(&mut net.fp, None));
    bind(&mut net.fp, &b);
    // 14 + 20 + 8 + 4 + 2 = 48 bytes: a NIC pads it to 60.
    let mut frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &channel_data(0x4001, b"hi"));
    frame.resize(60, 0);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, PEER_MAC, b.relayed, b.peer, b"hi");
}

/// ChannelData padded to a multiple of 4 (RFC 8656 §12.5), with the padding's bytes as given (the
/// RFC asks for zeros; a sender's garbage must not leak into the checksum either).
fn padded_channel_data(channel: u16, data: &[u8], fill: u8) -> Vec<u8> {
    let mut v = channel_data(channel, data);
    v.resize(v.len().next_multiple_of(4), fill);
    v
}

/// Padded ChannelData from the client: header and padding stripped, lengths and checksums right,
/// for every padding length (0-3) and odd and even payloads, IPv4 and IPv6. The other direction
/// adds no padding, as user space does over UDP (`Engine::handle_peer` pads only on streams).
#[test]
fn padded_channel_data_is_trimmed_in_the_kernel() {
    let Some(mut net) = setup() else { return };
    let (b4, b6) = (binding4(alive(&mut net.fp, None)), binding6(alive(&mut net.fp, None)));
    bind(&mut net.fp, &b4);
    bind(&mut net.fp, &b6);
    let mut sent = [0u64; 2];
    for (i, b) in [b4, b6].iter().enumerate() {
        for len in [0usize, 1, 2, 3, 4, 5, 6, 7, 33, 1201] {
            for fill in [0x00, 0xff, 0x5a] {
                let data: Vec<u8> = (0..len).map(|k| (k * 7 + 3) as u8).collect();
                let msg = padded_channel_data(b.channel, &data, fill);
                assert_eq!(msg.len() % 4, 0);
                let frame = udp_frame(CLIENT_MAC, net.relay_mac, b.client, b.listener, &msg);
                let out = run(&mut net, &frame, action::TX);
                expect_frame(&out, net.relay_mac, PEER_MAC, b.relayed, b.peer, &data);
                sent[i] += len as u64;
            }
        }
        let data = b"odd reply";
        let frame = udp_frame(PEER_MAC, net.relay_mac, b.peer, b.relayed, data);
        let out = run(&mut net, &frame, action::TX);
        expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(b.channel, data));
    }
    // Bytes counted are the payload's, without the padding (as user space counts them).
    for (i, b) in [b4, b6].iter().enumerate() {
        let c = net.fp.alloc_counters(b.alloc).unwrap();
        assert_eq!((c.to_peer_packets, c.to_peer_bytes), (30, sent[i]));
    }
    assert_eq!(net.fp.counters().unwrap().passed(PassReason::Padded), 0);

    // A padded small IPv4 frame that Ethernet also pads to 60 bytes: both trimmed.
    let mut frame = udp_frame(CLIENT_MAC, net.relay_mac, b4.client, b4.listener, &padded_channel_data(0x4001, b"h", 0));
    frame.resize(60, 0);
    let out = run(&mut net, &frame, action::TX);
    expect_frame(&out, net.relay_mac, PEER_MAC, b4.relayed, b4.peer, b"h");
}

/// Padded ChannelData relayed client to client on the same relay (hairpin): the padding goes, the
/// other client's header comes, in one step.
#[test]
fn padded_channel_data_hairpin() {
    let Some(mut net) = setup() else { return };
    for v6 in [false, true] {
        let (ka, kb) = (alive(&mut net.fp, None), alive(&mut net.fp, None));
        let (a, b) = if v6 {
            (
                ChannelBinding { peer: sa("[fd00:1::1]:50001"), ..binding6(ka) },
                ChannelBinding {
                    client: sa("[fd00:1::2]:5001"),
                    listener: sa("[fd00:1::1]:3478"),
                    channel: 0x4003,
                    relayed: sa("[fd00:1::1]:50001"),
                    peer: sa("[fd00:1::1]:50000"),
                    alloc: kb,
                },
            )
        } else {
            (
                ChannelBinding { peer: sa("10.1.0.1:50001"), ..binding4(ka) },
                ChannelBinding {
                    client: sa("10.1.0.2:5001"),
                    listener: sa("10.1.0.1:3478"),
                    channel: 0x4002,
                    relayed: sa("10.1.0.1:50001"),
                    peer: sa("10.1.0.1:50000"),
                    alloc: kb,
                },
            )
        };
        bind(&mut net.fp, &a);
        bind(&mut net.fp, &b);
        let data = b"hairpin, padded";
        let msg = padded_channel_data(a.channel, data, 0xee);
        let frame = udp_frame(CLIENT_MAC, net.relay_mac, a.client, a.listener, &msg);
        let out = run(&mut net, &frame, action::TX);
        expect_frame(&out, net.relay_mac, CLIENT_MAC, b.listener, b.client, &channel_data(b.channel, data));
        assert_eq!(net.fp.alloc_counters(ka).unwrap().to_peer_bytes, data.len() as u64);
        assert_eq!(net.fp.alloc_counters(kb).unwrap().to_client_bytes, data.len() as u64);
    }
}
