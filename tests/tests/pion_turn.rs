//! turnkey driven by pion/turn's client (the TURN client under pion/webrtc, which LiveKit,
//! Galene and many Go applications use), built from Debian's packages by the test
//! (`turnkey_e2e::pion`), over UDP, TCP and TLS at once, across more than five minutes of
//! pion's own clock: allocation, a permission and a channel from the first write, ChannelData
//! both ways, pion's timers (allocation refresh every lifetime/2; permission refresh every 120 s
//! with CreatePermission to **port 0**, which RFC 8656 §9 says to ignore; channel refresh on the
//! first write after 5 minutes), data both ways after the hold, and release.
//!
//! pion's permission and channel intervals are constants of its internal package (120 s and
//! 5 min on its monotonic clock, which libfaketime cannot reach: Go reads the vDSO directly), so
//! this test holds for real, 305 s; the three transports share that wait. turnkey's allocation
//! lifetime is shortened (`max_lifetime = 40`) so pion refreshes its allocations every 20 s.
//! A relay that refuses port 0 fails it: the refreshes at 120 s and 240 s get 403, the permission
//! lapses at 300 s and the peer's datagram at 305 s is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use turnkey_e2e::{config_file, pion, run_with_timeout, Turnkey};

/// Seconds between the first exchange and the one that needs pion's refreshes (> 300: the RFC
/// permission lifetime, and pion's channel-refresh age).
const HOLD_SECS: u64 = 305;
/// turnkey's allocation lifetime in this test: pion refreshes at half of it.
const LIFETIME_SECS: u64 = 40;

#[test]
fn pion_turn_client_keeps_its_permissions_and_channels_over_udp_tcp_and_tls() {
    let Some(client) = pion::client() else { return };
    let (_dir, config) = config_file(&format!("[relay]\nmax_lifetime = {LIFETIME_SECS}\n"));
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--config", config.to_str().unwrap()]);
    let ca = tk.tls_cert().display().to_string();
    let runs: Vec<_> = [("udp", tk.udp()), ("tcp", tk.tcp()), ("tls", tk.tls())]
        .into_iter()
        .map(|(transport, server)| {
            let (user, pass) = tk.creds(&format!("pion-{transport}"), 3600);
            let mut cmd = Command::new(&client);
            cmd.args(["-transport", transport, "-server", &server.to_string(), "-user", &user, "-password", &pass])
                .args(["-ca", &ca, "-server-name", "localhost", "-hold", &format!("{HOLD_SECS}s")])
                .stdin(Stdio::null());
            std::thread::spawn(move || (transport, run_with_timeout(&mut cmd, Duration::from_secs(HOLD_SECS + 120))))
        })
        .collect();
    for run in runs {
        let (transport, out) = run.join().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{transport}: no JSON result ({e}):\n{stdout}\n{stderr}"));
        let ctx = format!("{transport}: {r}\ndrops: {}\npion's log:\n{stderr}", tk.drops());
        assert_eq!(r["errors"], serde_json::json!([]), "{ctx}");
        assert_eq!((r["early_to_peer"].as_u64(), r["early_to_client"].as_u64()), (Some(10), Some(10)), "{ctx}");
        assert!(r["held_secs"].as_f64().unwrap() >= HOLD_SECS as f64, "{ctx}");
        // pion's permission refreshes (port 0) at 120 s and 240 s were accepted...
        assert!(r["perm_refreshes"].as_u64().unwrap() >= 2, "{ctx}");
        assert_eq!(r["perm_refresh_failures"].as_u64(), Some(0), "{ctx}");
        // ...so the peer reaches the client after the RFC's 300 s permission lifetime.
        assert_eq!(r["late_to_client"], true, "the permission lapsed: {ctx}");
        assert_eq!(r["late_to_peer"].as_u64(), Some(10), "{ctx}");
        // The channel was bound, then refreshed by pion on its first write after 5 minutes.
        assert!(r["channel_binds"].as_u64().unwrap() >= 2, "{ctx}");
        assert_eq!(r["channel_bind_failures"].as_u64(), Some(0), "{ctx}");
        // Allocation refreshes every LIFETIME_SECS / 2 across the hold.
        assert!(r["alloc_refreshes"].as_u64().unwrap() >= HOLD_SECS / LIFETIME_SECS, "{ctx}");
        assert_eq!(r["alloc_refresh_failures"].as_u64(), Some(0), "{ctx}");
        assert_eq!(r["released"], true, "{ctx}");
    }
    assert_eq!(tk.metric("turnkey_relay_peer_denied_total", &[]), 0.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while tk.metric("turnkey_relay_allocations", &[]) != 0.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 0.0, "every allocation was released");
}
