//! The relay over UDP, driven by clients nobody here wrote: aioice and coturn's turnutils_uclient.

use std::process::Command;
use std::time::Duration;

use turnkey_e2e::{aioice, assert_uclient_zero_loss, fixed_port, require, run_with_timeout, uclient, Turnkey};

const ALLOW_LOOPBACK: &[&str] = &["--allow-peer", "127.0.0.1"];

#[test]
fn aioice_relays_both_ways_over_udp() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let (user, pass) = tk.creds("alice", 600);
    let server = tk.udp().to_string();
    let r = aioice(&["relay", "--server", &server, "--user", &user, "--password", &pass, "--count", "30"]);
    assert_eq!(r["received"], 30, "{r}\ndrops: {}", tk.drops());
    assert_eq!(r["echo_seen"], 30, "{r}");
    // The echo peer saw the relayed address, not the client.
    assert_eq!(r["echo_peers"][0], r["relayed"], "{r}");
    std::thread::sleep(Duration::from_millis(1200));
    let c2p = tk.metric("turnkey_relay_relayed_bytes_total", &["client_to_peer", "transport=\"udp\""]);
    let p2c = tk.metric("turnkey_relay_relayed_bytes_total", &["peer_to_client", "transport=\"udp\""]);
    assert_eq!((c2p, p2c), (3000.0, 3000.0));
}

#[test]
fn aioice_wrong_password_is_refused_with_401() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let (user, _) = tk.creds("alice", 600);
    let server = tk.udp().to_string();
    let r = aioice(&["authfail", "--server", &server, "--user", &user, "--password", "not-the-password"]);
    assert_eq!(r["allocated"], false);
    assert_eq!(r["error"], 401);
    assert!(tk.metric("turnkey_relay_auth_failures_total", &["bad_credential"]) >= 1.0);
}

/// Runs aioice's relay mode against `tk` with its echo peer on `echo_host:echo_port`.
fn relay_to_echo(tk: &Turnkey, echo_host: &str, echo_port: u16) -> serde_json::Value {
    let (user, pass) = tk.creds("alice", 600);
    let server = tk.udp().to_string();
    let port = echo_port.to_string();
    aioice(&[
        "relay",
        "--server",
        &server,
        "--user",
        &user,
        "--password",
        &pass,
        "--count",
        "3",
        "--echo-host",
        echo_host,
        "--echo-port",
        &port,
    ])
}

/// The default policy refuses a loopback peer that is not one of the relay's own relayed
/// addresses: another loopback host (127.0.0.2, the relay is on 127.0.0.1).
#[test]
fn default_policy_refuses_another_private_host() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&[]);
    let r = relay_to_echo(&tk, "127.0.0.2", 0);
    assert_eq!(r["received"], 0, "{r}");
    assert_eq!(r["echo_seen"], 0, "nothing may reach 127.0.0.2 by default: {r}");
    assert!(tk.metric("turnkey_relay_peer_denied_total", &[]) >= 1.0, "{}", tk.metrics());
}

/// The relay's own IP one port outside its relay port range is not a relayed address: refused.
/// The same peer port inside the range is the self-peer rule's case and is allowed (with the
/// echo peer standing in for another allocation), so the range, not the IP, decides.
#[test]
fn default_policy_refuses_the_relay_ip_one_port_outside_the_relay_range() {
    if !require("aioice") {
        return;
    }
    // `echo` is free and below the ephemeral range; the relay range starts right after it.
    let echo = fixed_port();
    let outside = format!("{}-{}", echo + 1, echo + 8);
    let tk = Turnkey::serve(&["--relay-ports", &outside]);
    let r = relay_to_echo(&tk, "127.0.0.1", echo);
    assert_eq!(r["received"], 0, "{r}");
    assert_eq!(r["echo_seen"], 0, "127.0.0.1:{echo} is outside the relay range {outside}: {r}");
    assert!(tk.metric("turnkey_relay_peer_denied_total", &[]) >= 1.0, "{}", tk.metrics());
    drop(tk);

    let inside = format!("{echo}-{}", echo + 8);
    let tk = Turnkey::serve(&["--relay-ports", &inside]);
    let r = relay_to_echo(&tk, "127.0.0.1", echo);
    assert_eq!(r["received"], 3, "{r}\ndrops: {}", tk.drops());
    assert_eq!(r["echo_seen"], 3, "127.0.0.1:{echo} is inside the relay range {inside}: {r}");
    assert_eq!(tk.metric("turnkey_relay_peer_denied_total", &[]), 0.0, "{}", tk.metrics());
}

#[test]
fn uclient_client_to_client_channels_zero_loss() {
    if !require("turnutils_uclient") {
        return;
    }
    // Debian's uclient (coturn 4.6) picks RFC 5766 channel numbers, so this test opts in. No
    // `--allow-peer`: uclient's two allocations relay to each other's relayed address on
    // 127.0.0.1, which the default policy allows (the relay's own relayed addresses).
    let tk = Turnkey::serve(&["--rfc5766-channel-numbers"]);
    let text = uclient(&tk, tk.udp().port(), &[]);
    assert_uclient_zero_loss(&text);
    std::thread::sleep(Duration::from_millis(1200));
    let packets = tk.metric("turnkey_relay_relayed_packets_total", &["client_to_peer", "transport=\"udp\""]);
    assert!(packets >= 1000.0, "relay saw {packets} packets");
}

#[test]
fn uclient_send_indications_zero_loss() {
    if !require("turnutils_uclient") {
        return;
    }
    // The default policy: Send indications between uclient's two allocations (self-peers).
    let tk = Turnkey::serve(&[]);
    let text = uclient(&tk, tk.udp().port(), &["-s"]);
    assert_uclient_zero_loss(&text);
}

#[test]
fn uclient_channel_numbers_outside_rfc8656_are_refused_by_default() {
    if !require("turnutils_uclient") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let port = tk.udp().port().to_string();
    let secret = tk.secret();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-W", &secret, "-u", "uclient", "-y", "-m", "1", "-n", "5", "-l", "120", "-p", &port, "127.0.0.1"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("channel bind: error 400"), "{text}");
}

#[test]
fn sigterm_drains_then_exits_zero() {
    if !require("aioice") {
        return;
    }
    let mut tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--drain-grace", "2"]);
    let (user, pass) = tk.creds("alice", 600);
    let server = tk.udp().to_string();
    let r = aioice(&["relay", "--server", &server, "--user", &user, "--password", &pass, "--count", "3"]);
    assert_eq!(r["received"], 3);
    let status = tk.signal_and_wait("TERM", Duration::from_secs(10)).expect("exits within the grace period");
    assert!(status.success(), "{status:?}");
}

#[test]
fn unauthenticated_flood_does_not_grow_memory() {
    let tk = Turnkey::serve(&[]);
    let server = tk.udp();
    // A minimal Allocate request without credentials.
    let mut req = vec![0x00, 0x03, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    req.extend_from_slice(&[0x00, 0x19, 0x00, 0x04, 17, 0, 0, 0]);
    let sockets: Vec<std::net::UdpSocket> =
        (0..200).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut send_round = |n: usize| {
        for i in 0..n {
            let s = &sockets[i % sockets.len()];
            req[8] = (i >> 16) as u8;
            req[9] = (i >> 8) as u8;
            req[10] = i as u8;
            let _ = s.send_to(&req, server);
            if i % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    send_round(20_000); // warm up allocator arenas and the reply limiter
    std::thread::sleep(Duration::from_millis(500));
    let before = tk.rss_kib();
    send_round(200_000);
    std::thread::sleep(Duration::from_millis(500));
    let after = tk.rss_kib();
    eprintln!("RSS before {before} KiB, after 200000 unauthenticated Allocates {after} KiB");
    assert!(after <= before + 1024, "resident memory grew from {before} KiB to {after} KiB");
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 0.0);
}
