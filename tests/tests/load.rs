//! `turnkey load` (the binary's subcommand) against turnkey itself over UDP, TCP and TLS: the
//! report's counts must equal what the relay counted in its Prometheus metrics, its verdict must
//! gate the exit status, and it must agree with coturn's `turnutils_uclient` driving the same
//! server. Every run is bounded by `--count` and a wall-clock timeout.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use turnkey_e2e::{bin, require, run_with_timeout, Turnkey};

const ALLOW_LOOPBACK: &[&str] = &["--allow-peer", "127.0.0.1"];

/// Runs `turnkey load --server ADDR --secret S --quiet --json F EXTRA...`; returns the exit code
/// and the JSON report.
fn load(tk: &Turnkey, server: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let secret = tk.secret();
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--server", server, "--secret", &secret, "--quiet", "--json"]).arg(&json).args(extra);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[turnkey load] {text}");
    assert_ne!(out.status.code(), Some(2), "turnkey load could not start: {text}");
    let report = std::fs::read(&json).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    (out.status.code().unwrap_or(-1), report)
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Relayed packets and payload bytes the server counted for one direction and transport.
fn relayed(tk: &Turnkey, direction: &str, transport: &str) -> (u64, u64) {
    let text = tk.metrics();
    let label = format!("transport=\"{transport}\"");
    let dir = format!("direction=\"{direction}\"");
    let p = turnkey_e2e::metric_sum(&text, "turnkey_relay_relayed_packets_total", &[&dir, &label]);
    let b = turnkey_e2e::metric_sum(&text, "turnkey_relay_relayed_bytes_total", &[&dir, &label]);
    (p as u64, b as u64)
}

/// Waits (bounded) until every allocation of the run is released, then for the shards' next
/// once-a-second flush of their data-path counters, so the metrics are final.
fn settle(tk: &Turnkey) {
    let mut released = false;
    for _ in 0..50 {
        if tk.metric("turnkey_relay_allocations", &[]) == 0.0 {
            released = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(released, "allocations still live after the load ended");
    flushed();
}

/// Waits for the shards' next flush of their data-path counters.
fn flushed() {
    std::thread::sleep(Duration::from_millis(1300));
}

#[test]
fn udp_channel_pairs_match_the_relay_counters() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    let (code, r) = load(&tk, &server, &["--flows", "4", "--rate", "200", "--count", "200", "--max-loss", "0"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["flows_established"], 4, "{r}");
    assert_eq!(u(&r["traffic"]["sent"]), 800, "{r}");
    assert_eq!(u(&r["traffic"]["delivered"]), 800, "{r}");
    assert_eq!(u(&r["traffic"]["rtt_us"]["count"]), 800, "{r}");
    assert!(r["verdict"]["passed"].as_bool().unwrap(), "{r}");
    settle(&tk);
    // Pairs: every packet crosses the relay twice (near → far, far → near), in both directions.
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (1600, 160_000));
    assert_eq!(relayed(&tk, "peer_to_client", "udp"), (1600, 160_000));
    // Eight allocations (a pair per flow), each granted once and released.
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &["result=\"success\""]), 8.0);
}

#[test]
fn one_way_pairs_cross_the_relay_once_and_measure_every_packet_at_the_far_side() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    let (code, r) =
        load(&tk, &server, &["--one-way", "--flows", "4", "--rate", "200", "--count", "200", "--max-loss", "0"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["peer"], "one-way", "{r}");
    assert_eq!((u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"])), (800, 800), "{r}");
    // Every packet's one-way delay, read at the far allocation's socket.
    let d = &r["traffic"]["rtt_us"];
    assert_eq!(u(&d["count"]), 800, "{r}");
    assert!(u(&d["min"]) >= 1 && u(&d["p50"]) < 1_000_000, "{r}");
    settle(&tk);
    // One crossing per packet: the near allocation's client → peer, the far one's peer → client.
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (800, 80_000));
    assert_eq!(relayed(&tk, "peer_to_client", "udp"), (800, 80_000));
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &["result=\"success\""]), 8.0);

    // Over TCP with Send indications: the far side reads Data indications off the stream.
    let tcp = tk.tcp().to_string();
    let extra =
        ["--one-way", "--transport", "tcp", "--mode", "send", "--flows", "2", "--rate", "100", "--count", "100"];
    let (code, r) = load(&tk, &tcp, &[&extra[..], &["--max-loss", "0"]].concat());
    assert_eq!(code, 0, "{r}");
    assert_eq!((u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"])), (200, 200), "{r}");
    settle(&tk);
    assert_eq!(relayed(&tk, "client_to_peer", "tcp").0, 200);
}

#[test]
fn a_loop_paced_finer_than_the_timer_tick_keeps_its_rate_and_matches_the_relay_counters() {
    // 4 flows at 9,000 packets/s on one loop: 36 packets per 1 ms tick, above --pace-burst 32,
    // so the loop paces in sub-millisecond gaps (crates/turnkey-load/src/pacer.rs).
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    let extra = ["--threads", "1", "--pace-burst", "32", "--flows", "4", "--rate", "9000", "--count", "2700"];
    let extra = [&extra[..], &["--max-loss", "0"]].concat();
    let (code, r) = load(&tk, &server, &extra);
    assert_eq!(code, 0, "{r}");
    assert_eq!((u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"])), (10_800, 10_800), "{r}");
    // 2,700 packets at 9,000/s: the last leaves 0.3 s after the first, never earlier.
    let secs = r["traffic"]["elapsed_secs"].as_f64().unwrap();
    assert!((0.299..1.5).contains(&secs), "paced at 9,000 packets/s per flow: {secs} s");
    settle(&tk);
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (21_600, 21_600 * 100));
    assert_eq!(relayed(&tk, "peer_to_client", "udp"), (21_600, 21_600 * 100));
}

#[test]
fn audio_profile_sends_fifty_160_byte_packets_a_second_per_flow() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    let (code, r) = load(&tk, &server, &["--profile", "audio", "--flows", "3", "--count", "100", "--max-loss", "0"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!((r["profile"].as_str(), r["payload_bytes"].as_u64()), (Some("audio"), Some(160)), "{r}");
    assert_eq!(r["rate_per_flow_pps"].as_f64(), Some(50.0), "{r}");
    assert_eq!((u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"])), (300, 300), "{r}");
    // 100 packets at 50/s: the last leaves 1.98 s after the first, never earlier.
    let secs = r["traffic"]["elapsed_secs"].as_f64().unwrap();
    assert!((1.97..4.0).contains(&secs), "paced at 50 packets/s: {secs} s");
    settle(&tk);
    // Pairs: each packet crosses the relay twice each way, 160 B of payload each time.
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (600, 600 * 160));
    assert_eq!(relayed(&tk, "peer_to_client", "udp"), (600, 600 * 160));
}

#[test]
fn video_profile_sends_thirty_trains_a_second_sized_to_the_bitrate() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    // 500 kbit/s at 30 frames/s is 2,083 bytes a frame: trains of two 1200 B packets.
    let extra = ["--profile", "video", "--bitrate", "500k", "--echo-peer", "--flows", "2", "--count", "60"];
    let (code, r) = load(&tk, &server, &[&extra[..], &["--max-loss", "0"]].concat());
    assert_eq!(code, 0, "{r}");
    assert_eq!((r["profile"].as_str(), r["frame_packets"].as_u64()), (Some("video"), Some(2)), "{r}");
    assert_eq!((r["payload_bytes"].as_u64(), r["rate_per_flow_pps"].as_f64()), (Some(1200), Some(60.0)), "{r}");
    assert_eq!((u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"])), (120, 120), "{r}");
    // 30 trains at 30/s: the last leaves 29/30 s after the first, never earlier.
    let secs = r["traffic"]["elapsed_secs"].as_f64().unwrap();
    assert!((0.96..3.0).contains(&secs), "30 frames a second: {secs} s");
    settle(&tk);
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (120, 120 * 1200));
    assert_eq!(relayed(&tk, "peer_to_client", "udp"), (120, 120 * 1200));
}

#[test]
fn tcp_send_indications_to_the_own_echo_peer_match_the_relay_counters() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.tcp().to_string();
    let extra = ["--transport", "tcp", "--mode", "send", "--echo-peer", "--flows", "3", "--rate", "100"];
    let (code, r) = load(&tk, &server, &[&extra[..], &["--count", "150", "--payload", "200"]].concat());
    assert_eq!(code, 0, "{r}");
    assert_eq!(
        (r["transport"].as_str(), r["mode"].as_str(), r["peer"].as_str()),
        (Some("tcp"), Some("send"), Some("echo"))
    );
    assert_eq!(u(&r["traffic"]["sent"]), 450, "{r}");
    assert_eq!(u(&r["traffic"]["delivered"]), 450, "{r}");
    settle(&tk);
    // An echo peer: each packet crosses the relay once each way.
    assert_eq!(relayed(&tk, "client_to_peer", "tcp"), (450, 90_000));
    assert_eq!(relayed(&tk, "peer_to_client", "tcp"), (450, 90_000));
    assert_eq!(relayed(&tk, "client_to_peer", "udp"), (0, 0), "nothing counted on the wrong transport");
    assert_eq!(tk.metric("turnkey_relay_connections", &[]), 0.0, "every connection closed");
}

#[test]
fn tls_channels_trusting_the_generated_certificate_match_the_relay_counters() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.tls().to_string();
    let ca = tk.tls_cert().display().to_string();
    let extra =
        ["--transport", "tls", "--ca", &ca, "--sni", "localhost", "--flows", "2", "--rate", "100", "--count", "100"];
    let (code, r) = load(&tk, &server, &extra);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r["traffic"]["sent"]), 200, "{r}");
    assert_eq!(u(&r["traffic"]["delivered"]), 200, "{r}");
    settle(&tk);
    assert_eq!(relayed(&tk, "client_to_peer", "tls"), (400, 40_000));
    assert_eq!(relayed(&tk, "peer_to_client", "tls"), (400, 40_000));
}

#[test]
fn tls_refuses_an_untrusted_certificate() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.tls().to_string();
    // Default trust is the web PKI: a self-signed certificate fails the handshake.
    let (code, r) = load(&tk, &server, &["--transport", "tls", "--flows", "1", "--count", "10", "--timeout", "2"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["flows_established"], 0, "{r}");
    assert!(r["errors"].as_object().unwrap().keys().any(|k| k == "tls"), "{r}");
    let why = r["first_errors"]["tls"].as_str().unwrap_or_default();
    assert!(why.contains("UnknownIssuer"), "the report says why: {r}");
}

#[test]
fn loss_over_the_threshold_fails_the_run_and_equals_the_relay_drops() {
    // A 20 kB/s per-allocation cap against 1200-byte packets at 100 pkt/s per flow (120 kB/s).
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--bandwidth-limit", "20000"]);
    let server = tk.udp().to_string();
    let extra =
        ["--echo-peer", "--flows", "2", "--rate", "100", "--count", "200", "--payload", "1200", "--max-loss", "5"];
    let (code, r) = load(&tk, &server, &extra);
    assert_eq!(code, 1, "loss above --max-loss must fail the run: {r}");
    assert!(!r["verdict"]["passed"].as_bool().unwrap(), "{r}");
    assert!(!r["verdict"]["violations"].as_array().unwrap().is_empty(), "{r}");
    let (sent, delivered, lost) = (u(&r["traffic"]["sent"]), u(&r["traffic"]["delivered"]), u(&r["traffic"]["lost"]));
    assert_eq!(sent, 400, "{r}");
    assert_eq!(sent - delivered, lost);
    assert!(lost > 200, "the cap must drop most packets: {r}");
    settle(&tk);
    // Every packet the tool lost is one the relay dropped for the cap (on either leg).
    let dropped = tk.metric("turnkey_relay_dropped_packets_total", &["reason=\"rate_cap\""]) as u64;
    assert_eq!(dropped, lost, "{r}");
}

#[test]
fn exit_status_distinguishes_failed_runs_from_bad_arguments() {
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    let server = tk.udp().to_string();
    // Credentials from another secret: every allocation gets 401, nothing can be measured.
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--server", &server, "--secret", "not-the-secret", "--quiet", "--count", "5", "--flows", "2"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("401"), "failures are reported by code: {text}");
    let m = tk.metrics();
    let failures = turnkey_e2e::metric_sum(&m, "turnkey_relay_auth_failures_total", &["reason=\"bad_credential\""]);
    assert!(failures >= 2.0, "{m}");
    // Arguments clap accepts but the run cannot: exit 2, nothing sent.
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--server", &server, "--secret", "x", "--payload", "8", "--count", "1"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload"));
}

#[test]
fn allocation_storm_and_unauthenticated_allocates_match_the_relay_counters() {
    // Every allocation starts with an unauthenticated Allocate; from one IP the default reply
    // limit (50/s) would pace the storm, so this server lifts it.
    let tk = Turnkey::serve(&["--unauth-replies-per-sec", "0"]);
    let server = tk.udp().to_string();
    let (code, r) = load(&tk, &server, &["--scenario", "allocations", "--count", "300", "--concurrency", "8"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r["allocations"]["succeeded"]), 300, "{r}");
    assert_eq!(u(&r["allocations"]["failed"]), 0, "{r}");
    assert!(r["allocations"]["per_sec"].as_f64().unwrap() > 0.0);
    settle(&tk);
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &["result=\"success\""]), 300.0);

    // With the default limit, the relay answers a burst and then 50/s, counting what it withholds.
    let tk = Turnkey::serve(&[]);
    let server = tk.udp().to_string();
    let (code, r) = load(
        &tk,
        &server,
        &["--scenario", "allocations", "--unauthenticated", "--count", "2000", "--concurrency", "2"],
    );
    assert_eq!(code, 0, "{r}");
    let answered = r["errors"]["401"].as_u64().unwrap_or(0);
    let unanswered = r["errors"]["no answer"].as_u64().unwrap_or(0);
    assert_eq!(answered + unanswered, 2000, "{r}");
    assert!(answered > 0, "{r}");
    // The relay created no state for them, and any reply it withheld it counted.
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 0.0);
    let limited = tk.metric("turnkey_relay_dropped_packets_total", &["reason=\"reply_limited\""]) as u64;
    assert_eq!(limited, unanswered, "{r}");
}

/// `turnutils_uclient -y` and `turnkey load` in pair mode drive the same server with the same
/// number of messages; both must report zero loss, and the relay must count exactly the messages
/// each tool says it sent.
#[test]
fn uclient_and_turnkey_load_agree_on_the_same_server() {
    if !require("turnutils_uclient") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--rfc5766-channel-numbers"]);
    let port = tk.udp().port().to_string();
    let secret = tk.secret();
    // uclient: 10 clients in 5 pairs, 200 messages of 100 bytes each, every 10 ms.
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args([
        "-W",
        &secret,
        "-u",
        "uclient",
        "-y",
        "-c",
        "-m",
        "10",
        "-n",
        "200",
        "-l",
        "100",
        "-z",
        "10",
        "-p",
        &port,
        "127.0.0.1",
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let line = text.lines().find(|l| l.contains("Total lost packets")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("Total lost packets 0 (0.000000%)"), "{line}");
    // uclient never releases its allocations (they expire), so only wait for the counters.
    flushed();
    let by_uclient = relayed(&tk, "client_to_peer", "udp");
    assert_eq!(by_uclient.0, 2000, "10 clients × 200 messages, as uclient claims: {line}");

    // turnkey load: 5 flows in pairs, 200 round trips each = 2000 messages client → peer.
    let (code, r) =
        load(&tk, &tk.udp().to_string(), &["--flows", "5", "--rate", "100", "--count", "200", "--max-loss", "0"]);
    assert_eq!(code, 0, "{r}");
    flushed();
    let total = relayed(&tk, "client_to_peer", "udp");
    assert_eq!(total.0 - by_uclient.0, 2 * u(&r["traffic"]["sent"]), "{r}");
    assert_eq!(total.0 - by_uclient.0, by_uclient.0, "the same load by both tools");
    assert_eq!(total.1 - by_uclient.1, by_uclient.1, "the same bytes by both tools");
}
