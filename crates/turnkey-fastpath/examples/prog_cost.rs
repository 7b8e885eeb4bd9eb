//! The XDP program's own cost per packet, through BPF_PROG_TEST_RUN (root):
//! `cargo run --release -p turnkey-fastpath --example prog_cost [RUNS]` (default 200,000 per case).
//!
//! Each case (client → peer, peer → client, hairpin; IPv4 and IPv6; 100-byte payloads) is run RUNS
//! times with repeat 1: with a larger `repeat` the kernel hands the program its own rewritten
//! output (a relayed frame is addressed to the peer, no longer to the relay), so only the first run
//! would relay. The kernel times each run (`duration`, one program run plus one clock read); the
//! XDP_PASS stub timed the same way gives that fixed part, and the figure printed is the median
//! run minus the stub's median. BPF_ENABLE_STATS' mean (what `bpftool prog show` reports for a live
//! interface, two clock reads per run included) is printed beside it.
//!
//! The set-up is the golden tests': a private network namespace with veths and static neighbours,
//! so `bpf_fib_lookup` resolves next hops as on a relay host. Every run must relay (XDP_TX).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use common::{channel_data, udp_frame};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnkey_fastpath::{
    action, ifindex, AllocKey, AllocationEntry, ChannelBinding, FastPath, KernelClock, PASS_STUB_NAME, PROGRAM_NAME,
};

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Runs `frame` `runs` times through `program`; the median kernel-timed run in ns.
fn time(fp: &mut FastPath, program: &str, frame: &[u8], ingress: u32, runs: usize, want: u32) -> u64 {
    let mut ns = Vec::with_capacity(runs);
    for _ in 0..runs {
        let out = fp.test_run_program(program, frame, ingress).unwrap();
        assert_eq!(out.action, want, "{program}: unexpected action");
        ns.push(out.duration.as_nanos() as u64);
    }
    median(ns)
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let Some(mut fp) = common::load_or_skip() else { std::process::exit(2) };
    common::private_netns();
    common::sh("ip link add tka type veth peer name tkb && ip link set tka up && ip link set tkb up");
    common::sh("ip addr add 10.1.0.1/24 dev tka && ip -6 addr add fd00:1::1/64 dev tka nodad");
    common::sh("echo 1 > /proc/sys/net/ipv4/conf/tka/forwarding && echo 1 > /proc/sys/net/ipv6/conf/tka/forwarding");
    for (ip, mac) in [("10.1.0.2", "02"), ("10.1.0.3", "03"), ("fd00:1::2", "02"), ("fd00:1::3", "03")] {
        common::sh(&format!("ip neigh replace {ip} lladdr 02:00:00:00:00:{mac} dev tka nud permanent"));
    }
    let ingress = ifindex("tka").unwrap();
    let relay_mac = common::mac("tka");
    for l in ["10.1.0.1:3478", "[fd00:1::1]:3478"] {
        fp.add_listener(sa(l)).unwrap();
    }
    for ip in ["10.1.0.1", "fd00:1::1"] {
        fp.add_relay_ip(ip.parse().unwrap()).unwrap();
    }
    let deadline = KernelClock::new().deadline(Instant::now() + Duration::from_secs(3600));
    let mut alive = || fp.add_allocation(AllocationEntry { deadline, budget_bytes: None }).unwrap().unwrap();
    let allocs: Vec<AllocKey> = (0..6).map(|_| alive()).collect();
    let payload = [0x5au8; 100];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (fam, ip, client, peer, alloc) in [
        ("v4", "10.1.0.1", "10.1.0.2", "10.1.0.3", &allocs[..3]),
        ("v6", "fd00:1::1", "fd00:1::2", "fd00:1::3", &allocs[3..]),
    ] {
        let at = |addr: &str, port: u16| -> SocketAddr {
            if addr.contains(':') {
                sa(&format!("[{addr}]:{port}"))
            } else {
                sa(&format!("{addr}:{port}"))
            }
        };
        let direct = ChannelBinding {
            client: at(client, 5000),
            listener: at(ip, 3478),
            channel: 0x4001,
            relayed: at(ip, 50000),
            peer: at(peer, 6000),
            alloc: alloc[0],
        };
        // Hairpin: two allocations of this relay, each with a channel to the other's relayed address.
        let a = ChannelBinding {
            client: at(client, 5001),
            channel: 0x4002,
            relayed: at(ip, 50001),
            peer: at(ip, 50002),
            alloc: alloc[1],
            ..direct
        };
        let b = ChannelBinding {
            client: at(client, 5002),
            channel: 0x4003,
            relayed: at(ip, 50002),
            peer: at(ip, 50001),
            alloc: alloc[2],
            ..direct
        };
        for binding in [&direct, &a, &b] {
            fp.bind_channel(binding, deadline).unwrap();
        }
        let cd = |ch| channel_data(ch, &payload);
        cases.push((
            if fam == "v4" { "client->peer v4" } else { "client->peer v6" },
            udp_frame(CLIENT_MAC, relay_mac, direct.client, direct.listener, &cd(0x4001)),
        ));
        cases.push((
            if fam == "v4" { "peer->client v4" } else { "peer->client v6" },
            udp_frame(PEER_MAC, relay_mac, direct.peer, direct.relayed, &payload),
        ));
        cases.push((
            if fam == "v4" { "hairpin v4" } else { "hairpin v6" },
            udp_frame(CLIENT_MAC, relay_mac, a.client, a.listener, &cd(0x4002)),
        ));
    }
    fp.enable_run_stats().unwrap();
    println!("{runs} runs per case, 100-byte payloads; ns per run of {PROGRAM_NAME}");
    println!("{:<18} {:>8} {:>10} {:>10}", "case", "median", "-stub", "bpf_stats");
    for (label, frame) in &cases {
        let stub = time(&mut fp, PASS_STUB_NAME, frame, ingress, runs, action::PASS);
        let before = fp.run_stats().unwrap();
        let med = time(&mut fp, PROGRAM_NAME, frame, ingress, runs, action::TX);
        let after = fp.run_stats().unwrap();
        let mean = (after.run_time - before.run_time).as_nanos() as f64 / (after.run_count - before.run_count) as f64;
        println!("{label:<18} {med:>8} {:>10} {mean:>10.0}", med.saturating_sub(stub));
    }
}
