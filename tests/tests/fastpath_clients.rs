//! Third-party TURN clients through the kernel fast path (see fastpath.rs for the setup): aioice
//! (binds a channel; revoking its username stops the live allocation), coturn's
//! `turnutils_uclient -y` (client to client: the hairpin case) and webrtc-rs's `turn::client`.
//! Skipped with a message where namespaces, BPF or the client are missing; required under CI=true.

#![allow(clippy::unwrap_used)]

mod fastpath_support;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fastpath_support::*;
use turnkey_e2e::netns::{A_V4, B_V4};
use turnkey_e2e::{metric_sum, require, root, run_with_timeout};

/// aioice (binds a channel) relays through the kernel; revoking its username stops the live
/// allocation within one sweep, kernel path included (the revoke is the allocation's end event).
#[test]
fn aioice_relays_through_the_kernel_and_revocation_stops_it() {
    if !require("aioice") {
        return;
    }
    let Some((pair, _stub)) = setup(true) else { return };
    let tk = serve_xdp(&pair, &[]);
    let (id, token, user, pass) = issued(&pair, &tk);
    let http_addr = tk.addr("http");
    let revoke_url = format!("http://{http_addr}/v1/turn/keys/{id}/credentials/{user}/revoke");
    let script = root().join("tests/py/turn_client.py");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.b.name(), "python3"])
        .arg(script)
        .args(["revoke", "--server", &tk.udp().to_string(), "--user", &user, "--password", &pass])
        .args(["--count", "20", "--echo-host", &B_V4.to_string(), "--revoke-url", &revoke_url])
        .arg(format!("--token={token}"))
        .args(["--revoke-wait", "1.5"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "aioice: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(r["received"], 20, "{r}");
    assert_eq!(r["revoke_status"], 204, "{r}");
    assert_eq!(r["after_revoke_echo_seen"], 0, "the revoked allocation stopped relaying: {r}");
    let text = settled_metrics(&pair, &tk, 20);
    let (k_c2p, k_p2c) = (kernel_packets(&text, "client_to_peer"), kernel_packets(&text, "peer_to_client"));
    eprintln!("aioice: kernel relayed {k_c2p} / {k_p2c} of 20 each way");
    assert!(k_c2p >= 15 && k_p2c >= 15, "aioice's channel was relayed by the kernel: {k_c2p} {k_p2c}\n{text}");
    assert_eq!(relayed_packets(&text, "client_to_peer"), 20, "nothing relayed after the revocation:\n{text}");
}

/// coturn's turnutils_uclient -y: clients in `b` talk to each other through their allocations
/// (the peer is another allocation's relayed address: hairpin), over channels, in the kernel.
#[test]
fn uclient_client_to_client_relays_hairpin_in_the_kernel() {
    if !require("turnutils_uclient") {
        return;
    }
    let Some((pair, _stub)) = setup(true) else { return };
    // Debian's uclient (coturn 4.6) picks RFC 5766 channel numbers (the kernel relays them too).
    let tk = serve_xdp(&pair, &["--rfc5766-channel-numbers"]);
    let secret = tk.secret();
    let port = tk.udp().port().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.b.name(), "turnutils_uclient"])
        .args(["-W", &secret, "-u", "uclient", "-y", "-m", "4", "-n", "200", "-l", "120", "-p", &port])
        .arg(A_V4.to_string());
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    turnkey_e2e::assert_uclient_zero_loss(&text);
    let m = settled_metrics(&pair, &tk, 1);
    let (k_c2p, relayed) = (kernel_packets(&m, "client_to_peer"), relayed_packets(&m, "client_to_peer"));
    eprintln!("uclient -y: kernel {k_c2p} of {relayed} client to peer");
    assert!(k_c2p > 0 && k_c2p * 10 >= relayed * 9, "hairpin relayed in the kernel: {k_c2p} of {relayed}\n{m}");
}

/// webrtc-rs's `turn::client` in namespace `b`: the first sends go as Send indications while it
/// binds a channel in the background, the rest as ChannelData, which the kernel relays. The
/// payloads are 102 bytes: webrtc-rs pads ChannelData over UDP to a multiple of 4 (RFC 8656
/// §12.5), and the program trims the padding (the peer echoes exactly what it received).
#[test]
fn webrtc_rs_turn_client_relays_through_the_kernel() {
    use turn::client::{Client, ClientConfig};
    use webrtc_util::Conn;

    let Some((pair, _stub)) = setup(true) else { return };
    let tk = serve_xdp(&pair, &[]);
    let peer = EchoPeer::start(&pair);
    let (user, pass) = tk.creds("webrtc-rs", 600);
    let std_socket = pair.b.enter(|| UdpSocket::bind(SocketAddr::new(B_V4, 0)).unwrap());
    std_socket.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let received = rt.block_on(async {
        let conn: Arc<dyn Conn + Send + Sync> = Arc::new(tokio::net::UdpSocket::from_std(std_socket).unwrap());
        let server = tk.udp().to_string();
        let config = ClientConfig {
            stun_serv_addr: server.clone(),
            turn_serv_addr: server,
            username: user,
            password: pass,
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            conn,
            vnet: None,
        };
        let client = Client::new(config).await.unwrap();
        client.listen().await.unwrap();
        let relay = client.allocate().await.expect("allocate through turnkey");
        let mut received = 0;
        let mut buf = vec![0u8; 2048];
        for round in 0..10 {
            for i in 0..20 {
                // 102 bytes, sent as 104 bytes of padded ChannelData.
                let msg = format!("{}!!", format!("{round:04}-{i:05}").repeat(10));
                assert_eq!(msg.len(), 102);
                relay.send_to(msg.as_bytes(), peer.addr).await.unwrap();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            for _ in 0..20 {
                match tokio::time::timeout_at(deadline, relay.recv_from(&mut buf)).await {
                    Ok(Ok((n, from))) if from == peer.addr => {
                        assert_eq!(n, 102, "the echo is the payload without the padding");
                        received += 1
                    }
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.close().await.unwrap();
        received
    });
    assert_eq!(received, 200, "every echo came back");
    let text = settled_metrics(&pair, &tk, 200);
    let (k_c2p, relayed) = (kernel_packets(&text, "client_to_peer"), relayed_packets(&text, "client_to_peer"));
    eprintln!("webrtc-rs: kernel {k_c2p} of {relayed} client to peer");
    assert_eq!(relayed, 200, "{text}");
    assert!(k_c2p >= 100, "once the channel is bound the kernel relays: {k_c2p} of 200\n{text}");
    assert_eq!(metric_sum(&text, "turnkey_relay_fastpath_passes_total", &["reason=\"padded\""]), 0.0);
}
