//! What the fast path's tests share: the root/BPF requirement (fail under CI=true, skip with a
//! printed reason elsewhere, as tests/src/lib.rs does for tools), a private network namespace for
//! the calling thread, shell commands run inside it, and the frames and ChannelData the tests
//! (and `examples/prog_cost.rs`) send.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use etherparse::PacketBuilder;

use turnkey_fastpath::FastPath;

/// The loaded program, or None (skip) when this machine cannot load BPF; under CI=true a missing
/// capability fails the test instead.
pub fn load_or_skip() -> Option<FastPath> {
    let why = if !turnkey_fastpath::AVAILABLE {
        Some(format!("built without the XDP program: {}", turnkey_fastpath::UNAVAILABLE))
    } else if !rustix::process::geteuid().is_root() {
        Some("not running as root (BPF_PROG_TEST_RUN and XDP need CAP_BPF + CAP_NET_ADMIN)".to_string())
    } else {
        match FastPath::load() {
            Ok(fp) => return Some(fp),
            // A rejected program is a bug, whatever the environment: never a skip.
            Err(e @ turnkey_fastpath::FastPathError::Rejected { .. }) => panic!("{e}"),
            Err(e) => Some(format!("loading the program failed: {e}")),
        }
    };
    let why = why.unwrap_or_default();
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the fast path tests need BPF and root: {why} (CI must not skip)");
    }
    eprintln!("SKIP: {why}");
    None
}

/// Moves the calling thread into a fresh network namespace (it dies with the thread; commands this
/// thread starts run inside it). Names inside are therefore private to the test.
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    sh("ip link set lo up");
}

/// Runs `cmd` with sh in the thread's namespace; panics with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An interface's MAC address.
pub fn mac(iface: &str) -> [u8; 6] {
    // (not /sys/class/net: sysfs shows the namespace it was mounted in, not the thread's)
    let s = sh(&format!("ip -br link show dev {iface} | awk '{{print $3}}'"));
    let mut out = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate() {
        out[i] = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

/// A UDP frame with valid checksums, built by etherparse.
pub fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac);
    let mut out = Vec::new();
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.ipv4(s.octets(), d.octets(), 61).udp(src.port(), dst.port()).write(&mut out, payload).unwrap()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.ipv6(s.octets(), d.octets(), 61).udp(src.port(), dst.port()).write(&mut out, payload).unwrap()
        }
        _ => unreachable!(),
    }
    out
}

pub fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = channel.to_be_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}
