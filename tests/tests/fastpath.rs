//! The relay feeding the kernel fast path, end to end: the real `turnkey serve` in namespace `a`
//! on a veth (forwarding on), clients and a UDP echo peer in namespace `b`, whose veth end runs the
//! XDP_PASS stub with TX checksum offload off (the veth traps in docs/fastpath.md). With
//! `--fast-path xdp` the kernel relays `turnkey load`'s channels: its counters move, the relayed
//! totals still equal what was sent (the kernel's share added at each sweep), and after SIGTERM's
//! drain nothing is left attached; with `--fast-path off` the same run gives the same totals in
//! user space. A Refresh extends kernel relaying and expiry ends it, a monthly cap reached by
//! kernel traffic takes the channel out of the kernel, `auto` on an interface with forwarding off
//! or held by another live process stays in user space and says why, `xdp` refuses to start
//! there. Third-party clients: fastpath_clients.rs. Skipped with a message where namespaces or
//! BPF are missing; required under CI=true.

#![allow(clippy::unwrap_used)]

mod fastpath_support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use fastpath_support::*;
use turnkey_e2e::netns::{VethPair, A_V4, A_V6, B_V4, B_V6};
use turnkey_e2e::{bin, metric_sum, run_with_timeout, Turnkey};
use turnkey_load::client::{Auth, Credentials, TurnClient};
use turnkey_load::transport::Target;
use turnkey_load::Transport;

/// Runs the load through a relay started with `fast_path`; returns (sent, relayed c2p, relayed
/// p2c, kernel c2p packets, kernel p2c packets).
fn relay_run(pair: &VethPair, fast_path: &str) -> (u64, u64, u64, u64, u64) {
    relay_run_at(pair, fast_path, A_V4, B_V4, &[])
}

/// [`relay_run`] with the relay on `relay_ip` (listener and relayed addresses), the echo peer on
/// `peer_ip`, and more `turnkey load` arguments.
fn relay_run_at(
    pair: &VethPair,
    fast_path: &str,
    relay_ip: IpAddr,
    peer_ip: IpAddr,
    load_args: &[&str],
) -> (u64, u64, u64, u64, u64) {
    let allow = peer_ip.to_string();
    let mut tk = Turnkey::serve_netns(
        pair.a.name(),
        relay_ip,
        &["--allow-peer", &allow, "--shards", "2", "--fast-path", fast_path],
    );
    assert_eq!(xdp_attached(pair), fast_path == "xdp", "attached only with the fast path on");
    let peer = EchoPeer::start_at(pair, peer_ip);
    let (code, r) = load_in_with(pair, &tk, peer.addr, load_args);
    assert_eq!(code, 0, "{r}");
    let sent = r["traffic"]["sent"].as_u64().unwrap();
    assert_eq!(r["traffic"]["delivered"].as_u64(), Some(sent), "zero loss: {r}");
    drop(peer);
    // Kernel counters and the engine's reach Prometheus at the shards' next sweeps (500 ms).
    let text = settled_metrics(pair, &tk, sent);
    let relayed =
        |dir: &str| metric_sum(&text, "turnkey_relay_relayed_packets_total", &[&format!("direction=\"{dir}\"")]) as u64;
    let kernel = |dir: &str| {
        metric_sum(&text, "turnkey_relay_fastpath_packets_total", &[&format!("direction=\"{dir}\"")]) as u64
    };
    let out = (
        sent,
        relayed("client_to_peer"),
        relayed("peer_to_client"),
        kernel("client_to_peer"),
        kernel("peer_to_client"),
    );
    eprintln!("fast_path={fast_path}: sent, relayed c2p, p2c, kernel c2p, p2c = {out:?}");
    if fast_path == "xdp" {
        let mode = metric_sum(&text, "turnkey_relay_fastpath_mode", &["interface=\"veth0\"", "mode=\"native\""]);
        assert_eq!(mode, 1.0, "native XDP on the veth:\n{text}");
        let stun = metric_sum(&text, "turnkey_relay_fastpath_passes_total", &["reason=\"stun\""]);
        assert!(stun > 0.0, "STUN went to user space:\n{text}");
    }
    // SIGTERM: drain, then the program is detached.
    let status = tk.signal_and_wait("TERM", Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "turnkey stopped cleanly: {status:?}");
    assert!(!xdp_attached(pair), "nothing attached after exit");
    out
}

#[test]
fn bound_channels_are_relayed_by_the_kernel_with_the_same_totals_as_user_space() {
    let Some((pair, _stub)) = setup(true) else { return };
    let started = Instant::now();
    let (sent, c2p, p2c, k_c2p, k_p2c) = relay_run(&pair, "xdp");
    assert_eq!((c2p, p2c), (sent, sent), "relayed totals include the kernel's share");
    // The load's first datagrams may arrive before the ChannelBind's events reached the kernel:
    // nearly all, not necessarily all, are the kernel's.
    assert!(
        k_c2p * 10 >= sent * 9 && k_p2c * 10 >= sent * 9,
        "the kernel relayed the channels: {k_c2p} {k_p2c} of {sent}"
    );
    assert!(k_c2p <= sent && k_p2c <= sent);

    let (sent_off, c2p_off, p2c_off, k_c2p_off, k_p2c_off) = relay_run(&pair, "off");
    assert_eq!((c2p_off, p2c_off), (sent_off, sent_off), "user space relayed everything");
    assert_eq!((k_c2p_off, k_p2c_off), (0, 0), "no kernel series moved with the fast path off");
    eprintln!("both runs in {:?}", started.elapsed());
}

/// IPv6 end to end through the binary: `turnkey load --family ipv6` (REQUESTED-ADDRESS-FAMILY)
/// allocates IPv6 relayed addresses on a relay listening on IPv6 only; the kernel relays the
/// channels both ways (its counters move, user space's share, relayed minus kernel, stays at the
/// few datagrams sent before the ChannelBind's events reached the map), the totals equal what was
/// sent; with `--fast-path off` the same totals with no kernel series moving.
#[test]
fn ipv6_channels_are_relayed_by_the_kernel_with_the_same_totals_as_user_space() {
    let Some((pair, _stub)) = setup(true) else { return };
    let (sent, c2p, p2c, k_c2p, k_p2c) = relay_run_at(&pair, "xdp", A_V6, B_V6, &["--family", "ipv6"]);
    assert!(sent > 0);
    assert_eq!((c2p, p2c), (sent, sent), "relayed totals include the kernel's share");
    assert!(
        k_c2p * 10 >= sent * 9 && k_p2c * 10 >= sent * 9,
        "the kernel relayed the IPv6 channels: {k_c2p} {k_p2c} of {sent}"
    );
    assert!(k_c2p <= sent && k_p2c <= sent);

    let (sent_off, c2p_off, p2c_off, k_c2p_off, k_p2c_off) =
        relay_run_at(&pair, "off", A_V6, B_V6, &["--family", "ipv6"]);
    assert_eq!((c2p_off, p2c_off), (sent_off, sent_off), "user space relayed everything");
    assert_eq!((k_c2p_off, k_p2c_off), (0, 0), "no kernel series moved with the fast path off");
}

#[test]
fn auto_stays_in_user_space_when_forwarding_is_off_and_xdp_refuses_to_start() {
    let Some((pair, _stub)) = setup(false) else { return };
    let peer_ip = B_V4.to_string();
    let tk = Turnkey::serve_netns(pair.a.name(), A_V4, &["--allow-peer", &peer_ip, "--fast-path", "auto"]);
    assert!(!xdp_attached(&pair), "auto left the interface alone");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut said = false;
    while !said && Instant::now() < deadline {
        if let Ok(line) = tk.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            said = line.contains("forwarding is off");
        }
    }
    assert!(said, "auto said why it stays in user space");
    let peer = EchoPeer::start(&pair);
    let (code, r) = load_in(&pair, &tk, peer.addr);
    assert_eq!(code, 0, "user space relays: {r}");
    drop(tk);

    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.a.name()])
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--udp", &SocketAddr::new(A_V4, 0).to_string(), "--relay-ip", &A_V4.to_string()])
        .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--fast-path", "xdp"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xdp refuses to start: {text}");
    assert!(text.contains("forwarding is off"), "{text}");
    assert!(!xdp_attached(&pair));
}

/// An interface another live turnkey holds: `auto` leaves it to user space (never replacing the
/// live program) and says why, `xdp` refuses to start; the first process keeps relaying in the
/// kernel.
#[test]
fn a_live_attachment_is_never_replaced() {
    let Some((pair, _stub)) = setup(true) else { return };
    let first = serve_xdp(&pair, &[]);
    let link = |pair: &VethPair| sh(&format!("ip -n {} -d link show dev veth0", pair.a.name()));
    let before = link(&pair);
    assert!(before.contains("prog/xdp"), "{before}");
    let peer_ip = B_V4.to_string();
    let second = Turnkey::serve_netns(pair.a.name(), A_V4, &["--allow-peer", &peer_ip, "--fast-path", "auto"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut said = false;
    while !said && Instant::now() < deadline {
        if let Ok(line) = second.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            said = line.contains("fast path: user space");
        }
    }
    assert!(said, "the second process stays in user space and says so");
    assert_eq!(link(&pair), before, "the first process's program is still the one attached");
    let peer = EchoPeer::start(&pair);
    let (code, r) = load_in(&pair, &second, peer.addr);
    assert_eq!(code, 0, "the second process relays in user space: {r}");
    let (code, r) = load_in(&pair, &first, peer.addr);
    assert_eq!(code, 0, "the first still relays: {r}");
    let sent = r["traffic"]["sent"].as_u64().unwrap();
    let text = settled_metrics(&pair, &first, sent);
    assert!(kernel_packets(&text, "client_to_peer") > 0, "the first relays in the kernel:\n{text}");

    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.a.name()])
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--udp", &SocketAddr::new(A_V4, 0).to_string(), "--relay-ip", &A_V4.to_string()])
        .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--fast-path", "xdp"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(!out.status.success(), "xdp refuses an interface another process holds");
    assert_eq!(link(&pair), before);
}

/// Refresh and expiry with the kernel relaying: an allocation granted 3 s, a channel bound, data
/// both ways in the kernel; a Refresh extends the kernel's deadline (still relayed after the
/// first 3 s); without another Refresh the kernel stops at the deadline (strict, before any
/// sweep can notice) and nothing more is relayed either way.
#[test]
fn refresh_extends_and_expiry_stops_kernel_relaying() {
    let Some((pair, _stub)) = setup(true) else { return };
    let (_dir, config) = turnkey_e2e::config_file("[relay]\nmax_lifetime = 3\n");
    let tk = serve_xdp(&pair, &["--config", config.to_str().unwrap()]);
    let (username, password) = tk.creds("expiry", 600);
    let server = tk.udp();
    let (before_expiry, after_refresh, after_expiry) = pair.b.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let peer = tokio::net::UdpSocket::bind(SocketAddr::new(B_V4, 0)).await.unwrap();
            let target = Target::new(server, Transport::Udp, "", true, None).unwrap();
            let auth = Auth::new(&Credentials { username, password }, None);
            let mut c = TurnClient::connect(&target, auth, Duration::from_secs(5)).await.unwrap();
            let relayed = c.allocate(3).await.unwrap();
            c.channel_bind(0x4000, peer.local_addr().unwrap()).await.unwrap();
            let (mut tx, mut rx, auth) = c.into_parts();
            let first = round(&mut tx, &mut rx, &peer, relayed).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let mut c = TurnClient::from_parts(tx, rx, auth, Duration::from_secs(5));
            c.refresh(3).await.unwrap();
            let (mut tx, mut rx, _) = c.into_parts();
            // Past the first deadline (3 s after the Allocate): relayed thanks to the Refresh.
            tokio::time::sleep(Duration::from_millis(2000)).await;
            let second = round(&mut tx, &mut rx, &peer, relayed).await;
            // Past the refreshed deadline: nothing.
            tokio::time::sleep(Duration::from_millis(3500)).await;
            let third = round(&mut tx, &mut rx, &peer, relayed).await;
            (first, second, third)
        })
    });
    assert_eq!(before_expiry, (10, 10), "relayed both ways");
    assert_eq!(after_refresh, (10, 10), "the Refresh extended relaying past the first deadline");
    assert_eq!(after_expiry, (0, 0), "nothing relayed after the allocation expired");
    let text = settled_metrics(&pair, &tk, 20);
    let (k_c2p, k_p2c) = (kernel_packets(&text, "client_to_peer"), kernel_packets(&text, "peer_to_client"));
    // The ChannelBind's answer leaves before the shard mirrors the event into the map: the first
    // datagram may still be user space's.
    assert!(k_c2p >= 18 && k_p2c >= 18, "the live rounds went through the kernel: {k_c2p} {k_p2c}\n{text}");
    assert_eq!(relayed_packets(&text, "client_to_peer"), 20, "nothing relayed after expiry:\n{text}");
    assert_eq!(relayed_packets(&text, "peer_to_client"), 20, "nothing relayed after expiry:\n{text}");
}

/// A key's monthly cap counts kernel-relayed bytes, and reaching it takes the live allocation's
/// channel out of the kernel: nothing more is relayed either way (enforce_on_relay).
#[test]
fn a_monthly_cap_reached_by_kernel_traffic_stops_kernel_relaying() {
    let Some((pair, _stub)) = setup(true) else { return };
    let (_dir, config) = turnkey_e2e::config_file("[usage]\nflush_interval = 1\nenforce_on_relay = true\n");
    let tk = serve_xdp(&pair, &["--config", config.to_str().unwrap()]);
    let (id, _) = tk.default_key();
    // The cap, as an operator sets it in the key's file; picked up at the next flush tick.
    let path = tk.data_dir.path().join("keys").join(format!("{id}.json"));
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["monthly_bandwidth_bytes"] = serde_json::json!(3000);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric_sum(&metrics(&pair, &tk), "turnkey_usage_monthly_cap_bytes", &[&id]) != 3000.0 {
        assert!(Instant::now() < deadline, "the cap was not loaded");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, _, username, password) = issued(&pair, &tk);
    let server = tk.udp();
    let (first, second, capped) = pair.b.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let peer = tokio::net::UdpSocket::bind(SocketAddr::new(B_V4, 0)).await.unwrap();
            let target = Target::new(server, Transport::Udp, "", true, None).unwrap();
            let auth = Auth::new(&Credentials { username, password }, None);
            let mut c = TurnClient::connect(&target, auth, Duration::from_secs(5)).await.unwrap();
            let relayed = c.allocate(600).await.unwrap();
            c.channel_bind(0x4000, peer.local_addr().unwrap()).await.unwrap();
            let (mut tx, mut rx, _) = c.into_parts();
            // 2,000 bytes per round (10 x 100 each way): the second passes the 3,000-byte cap.
            let first = round(&mut tx, &mut rx, &peer, relayed).await;
            let second = round(&mut tx, &mut rx, &peer, relayed).await;
            // The kernel's counts reach the ledger at the next sweep, the cap the engine at the
            // next flush tick and sweep, and the channel leaves the kernel after that sweep.
            tokio::time::sleep(Duration::from_secs(4)).await;
            let capped = round(&mut tx, &mut rx, &peer, relayed).await;
            (first, second, capped)
        })
    });
    assert_eq!((first, second), ((10, 10), (10, 10)), "relayed before the cap");
    assert_eq!(capped, (0, 0), "nothing relayed once the cap was reached");
    let text = settled_metrics(&pair, &tk, 40);
    let (k_c2p, k_p2c) = (kernel_packets(&text, "client_to_peer"), kernel_packets(&text, "peer_to_client"));
    assert!(k_c2p >= 18 && k_p2c >= 18, "the rounds before the cap went through the kernel: {k_c2p} {k_p2c}");
    assert_eq!(relayed_packets(&text, "client_to_peer"), 20, "nothing relayed after the cap:\n{text}");
    assert!(metric_sum(&text, "turnkey_usage_period_bytes", &[&format!("key=\"{id}\"")]) >= 4000.0, "{text}");
}

/// SIGTERM's drain: a live allocation keeps being relayed by the kernel during the grace period
/// (today's semantics), and once the drain ends it, nothing is relayed and nothing stays attached.
#[test]
fn drain_keeps_live_channels_in_the_kernel_until_it_ends_them() {
    let Some((pair, _stub)) = setup(true) else { return };
    let mut tk = serve_xdp(&pair, &["--drain-grace", "3"]);
    let (username, password) = tk.creds("drain", 600);
    let server = tk.udp();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (peer, mut tx, mut rx, relayed) = pair.b.enter(|| {
        rt.block_on(async {
            let peer = tokio::net::UdpSocket::bind(SocketAddr::new(B_V4, 0)).await.unwrap();
            let target = Target::new(server, Transport::Udp, "", true, None).unwrap();
            let auth = Auth::new(&Credentials { username, password }, None);
            let mut c = TurnClient::connect(&target, auth, Duration::from_secs(5)).await.unwrap();
            let relayed = c.allocate(600).await.unwrap();
            c.channel_bind(0x4000, peer.local_addr().unwrap()).await.unwrap();
            let (tx, rx, _) = c.into_parts();
            (peer, tx, rx, relayed)
        })
    });
    assert_eq!(rt.block_on(round(&mut tx, &mut rx, &peer, relayed)), (10, 10), "relayed before the drain");
    let text = settled_metrics(&pair, &tk, 10);
    assert!(kernel_packets(&text, "client_to_peer") >= 9, "in the kernel:\n{text}");
    turnkey_e2e::signal(&tk.child, "TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.block_on(round(&mut tx, &mut rx, &peer, relayed)), (10, 10), "live channels relayed while draining");
    assert!(xdp_attached(&pair), "still attached during the grace period");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match tk.child.try_wait().unwrap() {
            Some(s) => break s,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("turnkey did not exit after its drain"),
        }
    };
    assert!(status.success(), "{status:?}");
    assert!(!xdp_attached(&pair), "nothing attached after the drain");
    assert_eq!(rt.block_on(round(&mut tx, &mut rx, &peer, relayed)), (0, 0), "nothing relayed after the drain");
}
