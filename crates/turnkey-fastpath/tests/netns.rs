//! The program on a real interface: two network namespaces joined by a veth, the relay's end
//! running turnkey_xdp natively, the outside end the XDP_PASS stub with TX checksum offload off
//! (the veth traps in docs/fastpath.md). Real UDP sockets: ChannelData sent by the client arrives
//! at the peer as the bare payload from the relayed address, the peer's reply arrives at the client
//! as ChannelData from the listener, both accepted by the kernel's UDP stack (so with valid
//! checksums); removing the entry or letting its deadline pass sends the next packet to user space
//! (a socket bound in the relay namespace receives it); nothing stays attached after drop; a stale
//! netlink attachment of turnkey's program is replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use turnkey_fastpath::{AllocationEntry, AttachedMode, ChannelBinding, FastPath, FastPathMode, KernelClock};

use common::{channel_data, load_or_skip, sh};

/// Two named namespaces, deleted on drop.
struct Namespaces {
    relay: String,
    outside: String,
    tag: String,
    /// More namespaces a test adds (deleted too).
    extra: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.relay]).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.outside]).status();
        for ns in &self.extra {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into the named namespace.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f.as_raw_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

fn socket(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf).ok().map(|(n, from)| (buf[..n].to_vec(), from))
}

/// ChannelData padded with zeros to a multiple of 4 bytes (RFC 8656 §12.5).
fn padded(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel_data(channel, data);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

fn require(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("required tool `{tool}` is missing (scripts/install-test-tools.sh installs it)");
        }
        eprintln!("SKIP: `{tool}` not installed");
    }
    found
}

/// The relay namespace (r0: 10.77.0.1, the program attached natively, forwarding on) and the
/// outside (o0: client 10.77.0.2, peer 10.77.0.3, the XDP_PASS stub, TX checksum offload off),
/// with one allocation and its channel bound; None when the test must skip.
struct Pair {
    fp: FastPath,
    _stub: FastPath,
    client: UdpSocket,
    peer: UdpSocket,
    user_listener: UdpSocket,
    user_relayed: UdpSocket,
    listener: SocketAddr,
    relayed: SocketAddr,
    binding: ChannelBinding,
    clock: KernelClock,
    // Last: the namespaces go after every socket and program in them.
    ns: Namespaces,
}

fn pair() -> Option<Pair> {
    if !require("ip") || !require("ethtool") {
        return None;
    }
    let _probe = load_or_skip()?;
    drop(_probe);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let tag = format!("{}-{}", std::process::id(), nanos % 100_000);
    let ns = Namespaces {
        relay: format!("tkfp22r-{tag}"),
        outside: format!("tkfp22o-{tag}"),
        tag: tag.clone(),
        extra: Vec::new(),
    };
    let (r, o) = (&ns.relay, &ns.outside);
    sh(&format!("ip netns add {r} && ip netns add {o}"));
    sh(&format!("ip -n {r} link add r0 type veth peer name o0 netns {o}"));
    sh(&format!("ip -n {r} addr add 10.77.0.1/24 dev r0 && ip -n {r} link set r0 up && ip -n {r} link set lo up"));
    sh(&format!(
        "ip -n {o} addr add 10.77.0.2/24 dev o0 && ip -n {o} addr add 10.77.0.3/24 dev o0 && ip -n {o} link set o0 up && ip -n {o} link set lo up"
    ));
    // Local senders hand the veth CHECKSUM_PARTIAL packets: the program rewrites real checksums.
    sh(&format!("ip netns exec {o} ethtool -K o0 tx off >/dev/null"));
    sh(&format!("ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/r0/forwarding'"));
    let o_mac = sh(&format!("ip -n {o} -br link show o0 | awk '{{print $3}}'")).trim().to_string();
    for ip in ["10.77.0.2", "10.77.0.3"] {
        sh(&format!("ip -n {r} neigh replace {ip} lladdr {o_mac} dev r0 nud permanent"));
    }

    // The outside: the XDP_PASS stub (so XDP_TX frames from r0 are delivered), client and peer.
    enter(o);
    let mut stub = load_or_skip().unwrap();
    stub.attach_pass_stub("o0").unwrap();
    let client = socket("10.77.0.2:0");
    let peer = socket("10.77.0.3:0");

    // The relay: the program on r0, and sockets where user space would receive what it passes.
    enter(r);
    let mut fp = load_or_skip().unwrap();
    let listener: SocketAddr = "10.77.0.1:3478".parse().unwrap();
    let relayed: SocketAddr = "10.77.0.1:50000".parse().unwrap();
    let user_listener = socket("10.77.0.1:3478");
    let user_relayed = socket("10.77.0.1:50000");
    user_listener.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    fp.add_listener(listener).unwrap();
    fp.add_relay_ip(relayed.ip()).unwrap();
    assert_eq!(turnkey_fastpath::forwarding("r0"), turnkey_fastpath::Forwarding { ipv4: true, ipv6: false });
    assert_eq!(fp.attach("r0", FastPathMode::Xdp).unwrap(), AttachedMode::Native);
    let shown = sh(&format!("ip -n {r} -d link show r0"));
    assert!(shown.contains("xdp"), "ip link shows the program: {shown}");

    let clock = KernelClock::new();
    let far = clock.deadline(Instant::now() + Duration::from_secs(120));
    let binding = ChannelBinding {
        client: client.local_addr().unwrap(),
        listener,
        channel: 0x4001,
        relayed,
        peer: peer.local_addr().unwrap(),
        alloc: fp.add_allocation(AllocationEntry { deadline: far, budget_bytes: None }).unwrap().unwrap(),
    };
    fp.bind_channel(&binding, far).unwrap();

    Some(Pair { fp, _stub: stub, client, peer, user_listener, user_relayed, listener, relayed, binding, clock, ns })
}

#[test]
fn veth_relays_both_directions_in_the_kernel_and_hands_back_to_user_space() {
    let Some(Pair { mut fp, _stub, client, peer, user_listener, user_relayed, listener, relayed, binding, clock, ns }) =
        pair()
    else {
        return;
    };
    let (r, tag) = (&ns.relay, ns.tag.clone());
    // client -> peer: the bare payload, from the relayed address.
    client.send_to(&channel_data(0x4001, b"ping through the kernel"), listener).unwrap();
    let (got, from) = recv(&peer).expect("the peer receives the relayed datagram");
    assert_eq!((got.as_slice(), from), (&b"ping through the kernel"[..], relayed));
    // peer -> client: ChannelData from the listener.
    peer.send_to(b"pong", relayed).unwrap();
    let (got, from) = recv(&client).expect("the client receives ChannelData");
    assert_eq!((got, from), (channel_data(0x4001, b"pong"), listener));
    // Padded ChannelData (RFC 8656 §12.5, as webrtc-rs's client sends it): header and padding
    // trimmed, the peer's kernel accepts the checksum.
    client.send_to(&padded(0x4001, b"padded"), listener).unwrap();
    let (got, from) = recv(&peer).expect("the peer receives the trimmed datagram");
    assert_eq!((got.as_slice(), from), (&b"padded"[..], relayed));
    // User space saw none of them.
    assert!(recv(&user_listener).is_none() && recv(&user_relayed).is_none(), "user space received a relayed datagram");
    let c = fp.alloc_counters(binding.alloc).unwrap();
    assert_eq!((c.to_peer_packets, c.to_peer_bytes, c.to_client_packets, c.to_client_bytes), (2, 29, 1, 4));
    assert!(fp.counters().unwrap().tx >= 2);

    // Removing the entry: the next datagram is user space's (XDP_PASS), the peer gets nothing.
    fp.unbind_channel(&binding).unwrap();
    client.send_to(&channel_data(0x4001, b"after unbind"), listener).unwrap();
    let (got, _) = recv(&user_listener).expect("user space receives the passed ChannelData");
    assert_eq!(got, channel_data(0x4001, b"after unbind"));
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(recv(&peer).is_none());

    // A deadline that passes with no sweep: relayed before, user space's after.
    fp.bind_channel(&binding, clock.deadline(Instant::now() + Duration::from_millis(400))).unwrap();
    client.send_to(&channel_data(0x4001, b"before"), listener).unwrap();
    assert_eq!(recv(&peer).expect("relayed before the deadline").0, b"before");
    std::thread::sleep(Duration::from_millis(500));
    client.send_to(&channel_data(0x4001, b"after"), listener).unwrap();
    assert_eq!(recv(&user_listener).expect("passed after the deadline").0, channel_data(0x4001, b"after"));
    assert!(recv(&peer).is_none());

    // Drop detaches.
    drop(fp);
    let shown = sh(&format!("ip -n {r} -d link show r0"));
    assert!(!shown.contains("prog/xdp"), "still attached after drop: {shown}");

    // A stale attachment through netlink (as a crashed pre-link turnkey or `ip link` leaves it) is
    // replaced by the next start.
    let obj = std::env::temp_dir().join(format!("turnkey_xdp-{tag}.o"));
    std::fs::write(&obj, turnkey_fastpath::OBJECT.unwrap()).unwrap();
    sh(&format!("ip -n {r} link set dev r0 xdpdrv obj {} sec xdp", obj.display()));
    let _ = std::fs::remove_file(&obj);
    let shown = sh(&format!("ip -n {r} -d -j link show r0"));
    assert!(shown.contains("\"name\":\"turnkey_xdp\""), "the stale program is attached: {shown}");
    let mut fp = load_or_skip().unwrap();
    assert_eq!(fp.attach("r0", FastPathMode::Xdp).unwrap(), AttachedMode::Native);
    fp.detach("r0").unwrap();
    let shown = sh(&format!("ip -n {r} -d link show r0"));
    assert!(!shown.contains("prog/xdp"), "still attached after detach: {shown}");
}

#[test]
fn auto_falls_back_and_off_attaches_nothing() {
    let Some(mut fp) = load_or_skip() else { return };
    common::private_netns();
    // An interface that does not exist is an error in every mode that attaches.
    assert!(fp.attach("tkfp-nonexistent", FastPathMode::Auto).is_err(), "an unknown interface is an error");
    assert_eq!(fp.attach("lo", FastPathMode::Off).unwrap(), AttachedMode::UserSpace("fast_path = off".to_string()));
    assert!(fp.attached().is_empty());
    // Loopback offers generic XDP only: auto lands there.
    assert_eq!(fp.attach("lo", FastPathMode::Auto).unwrap(), AttachedMode::Generic);
    // A second program in native mode where another already sits: auto reports user space with
    // the reason, xdp fails.
    sh("ip link add tkfpx type veth peer name tkfpy && ip link set tkfpx up && ip link set tkfpy up");
    let mut other = load_or_skip().unwrap();
    other.attach_pass_stub("tkfpx").unwrap();
    match fp.attach("tkfpx", FastPathMode::Auto).unwrap() {
        AttachedMode::UserSpace(why) => assert!(why.contains("tkfpx"), "{why}"),
        m => panic!("expected user space, got {m:?}"),
    }
    assert!(fp.attach("tkfpx", FastPathMode::Xdp).is_err());
}

#[test]
fn veth_relays_ipv6_both_directions() {
    let Some(mut p) = pair() else { return };
    let (r, o) = (p.ns.relay.clone(), p.ns.outside.clone());
    sh(&format!("ip -n {o} addr add fd00:77::2/64 dev o0 nodad && ip -n {o} addr add fd00:77::3/64 dev o0 nodad"));
    sh(&format!("ip -n {r} addr add fd00:77::1/64 dev r0 nodad"));
    sh(&format!("ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv6/conf/r0/forwarding'"));
    let o_mac = sh(&format!("ip -n {o} -br link show o0 | awk '{{print $3}}'")).trim().to_string();
    let r_mac = sh(&format!("ip -n {r} -br link show r0 | awk '{{print $3}}'")).trim().to_string();
    for ip in ["fd00:77::2", "fd00:77::3"] {
        sh(&format!("ip -n {r} -6 neigh replace {ip} lladdr {o_mac} dev r0 nud permanent"));
    }
    sh(&format!("ip -n {o} -6 neigh replace fd00:77::1 lladdr {r_mac} dev o0 nud permanent"));

    enter(&o);
    let client = socket("[fd00:77::2]:0");
    let peer = socket("[fd00:77::3]:0");
    enter(&r);
    let listener: SocketAddr = "[fd00:77::1]:3478".parse().unwrap();
    let relayed: SocketAddr = "[fd00:77::1]:50000".parse().unwrap();
    let user_listener = socket("[fd00:77::1]:3478");
    let user_relayed = socket("[fd00:77::1]:50000");
    user_listener.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    p.fp.add_listener(listener).unwrap();
    p.fp.add_relay_ip(relayed.ip()).unwrap();
    let far = p.clock.deadline(Instant::now() + Duration::from_secs(120));
    let binding = ChannelBinding {
        client: client.local_addr().unwrap(),
        listener,
        channel: 0x4fff,
        relayed,
        peer: peer.local_addr().unwrap(),
        alloc: p.fp.add_allocation(AllocationEntry { deadline: far, budget_bytes: None }).unwrap().unwrap(),
    };
    p.fp.bind_channel(&binding, far).unwrap();

    let mut total = 0;
    for data in [&b"x"[..], b"odd-sized payload", &[0xc3u8; 1200][..]] {
        client.send_to(&channel_data(0x4fff, data), listener).unwrap();
        let (got, from) = recv(&peer).expect("the peer receives the relayed datagram over IPv6");
        assert_eq!((got.as_slice(), from), (data, relayed));
        peer.send_to(data, relayed).unwrap();
        let (got, from) = recv(&client).expect("the client receives ChannelData over IPv6");
        assert_eq!((got, from), (channel_data(0x4fff, data), listener));
        total += data.len() as u64;
    }
    // Padded ChannelData (RFC 8656 §12.5): the peer's kernel accepts the trimmed datagram.
    for data in [&b"pad"[..], b"a", b"padded to four!"] {
        client.send_to(&padded(0x4fff, data), listener).unwrap();
        let (got, from) = recv(&peer).expect("the peer receives the trimmed datagram over IPv6");
        assert_eq!((got.as_slice(), from), (data, relayed));
        total += data.len() as u64;
    }
    assert!(recv(&user_listener).is_none() && recv(&user_relayed).is_none(), "user space received a relayed datagram");
    let c = p.fp.alloc_counters(binding.alloc).unwrap();
    assert_eq!((c.to_peer_packets, c.to_peer_bytes, c.to_client_packets, c.to_client_bytes), (6, total, 3, total - 19));
}

/// A peer behind a second interface of the relay (a third namespace): client -> peer leaves r1
/// and peer -> client leaves r0 by XDP_REDIRECT through the devmap of attached interfaces.
#[test]
fn veth_redirects_between_two_relay_interfaces() {
    let Some(mut p) = pair() else { return };
    let r = p.ns.relay.clone();
    let far = format!("tkfp22p-{}", p.ns.tag);
    p.ns.extra.push(far.clone());
    sh(&format!("ip netns add {far}"));
    sh(&format!("ip -n {r} link add r1 type veth peer name p0 netns {far}"));
    sh(&format!("ip -n {r} addr add 10.78.0.1/24 dev r1 && ip -n {r} link set r1 up"));
    sh(&format!(
        "ip -n {far} addr add 10.78.0.3/24 dev p0 && ip -n {far} link set p0 up && ip -n {far} link set lo up"
    ));
    sh(&format!("ip netns exec {far} ethtool -K p0 tx off >/dev/null"));
    sh(&format!("ip netns exec {r} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/r1/forwarding'"));
    let p_mac = sh(&format!("ip -n {far} -br link show p0 | awk '{{print $3}}'")).trim().to_string();
    sh(&format!("ip -n {r} neigh replace 10.78.0.3 lladdr {p_mac} dev r1 nud permanent"));

    enter(&far);
    let mut stub = load_or_skip().unwrap();
    stub.attach_pass_stub("p0").unwrap();
    let far_peer = socket("10.78.0.3:0");
    enter(&r);
    let relayed: SocketAddr = "10.78.0.1:50001".parse().unwrap();
    let user_relayed = socket("10.78.0.1:50001");
    p.fp.add_relay_ip(relayed.ip()).unwrap();
    assert_eq!(p.fp.attach("r1", FastPathMode::Xdp).unwrap(), AttachedMode::Native);
    let deadline = p.clock.deadline(Instant::now() + Duration::from_secs(120));
    let binding = ChannelBinding {
        client: p.client.local_addr().unwrap(),
        listener: p.listener,
        channel: 0x4002,
        relayed,
        peer: far_peer.local_addr().unwrap(),
        alloc: p.fp.add_allocation(AllocationEntry { deadline, budget_bytes: None }).unwrap().unwrap(),
    };
    p.fp.bind_channel(&binding, deadline).unwrap();

    let before = p.fp.counters().unwrap().redirected;
    p.client.send_to(&channel_data(0x4002, b"over there"), p.listener).unwrap();
    let (got, from) = recv(&far_peer).expect("the far peer receives the redirected datagram");
    assert_eq!((got.as_slice(), from), (&b"over there"[..], relayed));
    far_peer.send_to(b"and back", relayed).unwrap();
    let (got, from) = recv(&p.client).expect("the client receives the redirected ChannelData");
    assert_eq!((got, from), (channel_data(0x4002, b"and back"), p.listener));
    assert!(recv(&p.user_listener).is_none() && recv(&user_relayed).is_none());
    assert_eq!(p.fp.counters().unwrap().redirected, before + 2);
}

/// The program's own cost per relayed datagram on this machine (BPF_ENABLE_STATS run time / run
/// count), for docs/fastpath.md: `cargo nextest run -p turnkey-fastpath --run-ignored only
/// cost_per_packet --no-capture`. A measurement, not a check: it asserts only that every datagram
/// ran the program and arrived.
#[test]
#[ignore = "a measurement; run on demand"]
fn cost_per_packet() {
    let Some(mut p) = pair() else { return };
    p.fp.enable_run_stats().unwrap();
    let n: u64 = std::env::var("FASTPATH_COST_PACKETS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for (label, size) in [("100 B", 100usize), ("1000 B", 1000)] {
        let msg = channel_data(0x4001, &vec![0x5a; size]);
        let before = p.fp.run_stats().unwrap();
        let mut got = 0u64;
        let mut buf = [0u8; 2048];
        p.peer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // Batches of 50 sent, then read back, so the peer's socket buffer never overflows.
        for _ in 0..n / 50 {
            for _ in 0..50 {
                p.client.send_to(&msg, p.listener).unwrap();
            }
            let mut batch = 0;
            while batch < 50 && p.peer.recv_from(&mut buf).is_ok() {
                batch += 1;
            }
            got += batch;
        }
        let after = p.fp.run_stats().unwrap();
        let runs = after.run_count - before.run_count;
        let ns = (after.run_time - before.run_time).as_nanos() as f64 / runs.max(1) as f64;
        println!("turnkey_xdp client->peer ChannelData {label}: {runs} runs, {ns:.0} ns per run, {got}/{n} received");
        assert!(runs >= n, "every datagram ran the program");
    }
}
