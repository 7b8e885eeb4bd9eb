//! turnkey driven by webrtc-rs's own TURN client (`turn::client::Client` over a `webrtc-util`
//! `Conn`, here a tokio UDP socket), as a Rust WebRTC application uses a TURN server: allocate,
//! permission (installed by the first send), relay both ways to a UDP echo peer, refresh, release;
//! and a wrong password that must fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use turnkey_e2e::{config_file, Turnkey};
use webrtc_util::Conn;

/// The allocation lifetime turnkey grants (its `max_lifetime`): the client refreshes at half of
/// it, so an allocation alive after twice this long was refreshed.
const LIFETIME_SECS: u64 = 3;
const MESSAGES: usize = 20;

/// A turnkey whose allocations live `LIFETIME_SECS` unless refreshed, relaying to loopback peers.
fn turnkey() -> (Turnkey, tempfile::TempDir) {
    let (dir, config) = config_file(&format!("[relay]\nmax_lifetime = {LIFETIME_SECS}\n"));
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--config", config.to_str().unwrap()]);
    (tk, dir)
}

/// A listening webrtc-rs TURN client of `tk`'s UDP listener.
async fn client(tk: &Turnkey, username: String, password: String) -> Client {
    let conn: Arc<dyn Conn + Send + Sync> = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let server = tk.udp().to_string();
    let config = ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    };
    let client = Client::new(config).await.unwrap();
    client.listen().await.unwrap();
    client
}

/// A UDP peer on loopback that echoes every datagram and records who sent it.
async fn echo_peer() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let socket = turnkey_e2e::udp_peer();
    socket.set_nonblocking(true).unwrap();
    let socket = UdpSocket::from_std(socket).unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            log.lock().unwrap().push(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

/// Sends `MESSAGES` datagrams tagged `round` through the relay to `peer` and returns the echoes
/// that came back within 5 s, as text.
async fn exchange(relay: &impl Conn, peer: SocketAddr, round: &str) -> BTreeSet<String> {
    for i in 0..MESSAGES {
        relay.send_to(format!("{round}-{i}").as_bytes(), peer).await.unwrap();
    }
    let mut got = BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.len() < MESSAGES {
        match tokio::time::timeout_at(deadline, relay.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                assert_eq!(from, peer, "data comes from the peer it was sent to");
                got.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Ok(Err(e)) => panic!("relay recv: {e}"),
            Err(_) => break,
        }
    }
    got
}

fn expected(round: &str) -> BTreeSet<String> {
    (0..MESSAGES).map(|i| format!("{round}-{i}")).collect()
}

/// Polls `tk`'s live allocation gauge until it equals `n` (at most 5 s); returns the last value.
fn allocations_become(tk: &Turnkey, n: f64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let live = tk.metric("turnkey_relay_allocations", &[]);
        if live == n || std::time::Instant::now() > deadline {
            return live;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_allocates_relays_refreshes_and_releases() {
    let (tk, _config) = turnkey();
    let (user, pass) = tk.creds("webrtc-rs", 600);
    let client = client(&tk, user, pass).await;
    let relay = client.allocate().await.expect("allocate through turnkey");
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "relayed on --relay-ip");
    assert_eq!(allocations_become(&tk, 1.0), 1.0);
    let (peer, seen) = echo_peer().await;

    // The first send installs the permission (CreatePermission); later ones may use a channel.
    assert_eq!(exchange(&relay, peer, "first").await, expected("first"), "drops: {}", tk.drops());
    assert!(seen.lock().unwrap().iter().all(|from| *from == relayed), "the peer sees only the relayed address");

    // Past twice the granted lifetime: only the client's Refreshes kept the allocation.
    tokio::time::sleep(Duration::from_secs(2 * LIFETIME_SECS + 1)).await;
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 1.0, "the refreshed allocation lives on");
    assert_eq!(exchange(&relay, peer, "refreshed").await, expected("refreshed"), "drops: {}", tk.drops());
    assert_eq!(seen.lock().unwrap().len(), 2 * MESSAGES);

    // Release: close sends Refresh with LIFETIME 0.
    relay.close().await.unwrap();
    assert_eq!(allocations_become(&tk, 0.0), 0.0, "the released allocation is gone");
    client.close().await.unwrap();
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &["result=\"success\""]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_with_a_wrong_password_is_refused() {
    let (tk, _config) = turnkey();
    let (user, _) = tk.creds("webrtc-rs", 600);
    let client = client(&tk, user, "not-the-password".to_owned()).await;
    let err = client.allocate().await.err().expect("a wrong password must not allocate").to_string();
    assert!(err.contains("401"), "{err}");
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 0.0);
    assert!(tk.metric("turnkey_relay_auth_failures_total", &["bad_credential"]) >= 1.0);
    client.close().await.unwrap();
}
