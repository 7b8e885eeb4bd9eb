//! The relay's batched UDP data path over a veth pair between two network namespaces the test
//! creates (a 1500-byte MTU and NAPI GRO, as on a NIC; loopback hides both): turnkey runs in
//! namespace `a`, `turnkey load` and a UDP echo peer in namespace `b`, so every relayed packet
//! crosses the veth twice each way. Video-profile trains must arrive without loss, and the
//! relay's metrics must show that it batched (GRO trains received, GSO trains sent). Skipped
//! with a message where namespaces cannot be made; required under CI=true.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_e2e::netns::{VethPair, A_V4, B_V4};
use turnkey_e2e::{bin, http, metric_sum, run_with_timeout, Turnkey};
use turnkey_relay::batch::{offload, RecvBatch, SendBatch, Sockets, UdpIo};

/// A UDP echo peer in namespace `b` that answers through the batching layer, as a real media
/// server does: what one receive brings back is echoed with one flush (a train that arrived as
/// one GRO buffer leaves as one GSO send). Stops when dropped (bounded by a 60 s deadline).
struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl EchoPeer {
    fn start(pair: &VethPair) -> Self {
        let (io, socket) = pair.b.enter(|| {
            let s = UdpSocket::bind(SocketAddr::new(B_V4, 0)).unwrap();
            (UdpIo::new(&s).unwrap(), s)
        });
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut rx = RecvBatch::new(32);
            let mut tx = SendBatch::new(offload().gso_segments);
            let mut echoed = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match io.recv(&socket, &mut rx) {
                    Ok(_) => {
                        for d in rx.datagrams() {
                            tx.push(0u8, d.from, None, d.data);
                        }
                        let stats = tx.flush(&mut Sockets::new(|_: u8| Some((&io, &socket))));
                        echoed += stats.sent as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err(e) => panic!("echo peer: {e}"),
                }
            }
            echoed
        });
        Self { addr, stop, thread: Some(thread) }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `turnkey load` run inside namespace `b`; returns its exit code and JSON report.
fn load_in(pair: &VethPair, tk: &Turnkey, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let server = tk.udp().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.b.name()])
        .arg(bin())
        .args(["load", "--server", &server, "--secret", &tk.secret(), "--quiet", "--json"])
        .arg(&json)
        .args(extra);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[turnkey load] {text}");
    assert_ne!(out.status.code(), Some(2), "turnkey load could not start: {text}");
    let report = std::fs::read(&json).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    (out.status.code().unwrap_or(-1), report)
}

/// The relay's metrics, fetched from inside namespace `a`.
fn metrics(pair: &VethPair, tk: &Turnkey) -> String {
    let addr = tk.addr("metrics");
    pair.a.enter(move || http(addr, "GET", "/metrics", &[], None).1)
}

#[test]
fn video_trains_cross_the_relay_over_a_veth_without_loss_in_gro_and_gso_trains() {
    let Some(pair) = VethPair::new() else { return };
    let off = offload();
    assert!(off.gso_segments > 1 && off.gro, "this kernel offers GSO and GRO (Linux 5+): {off:?}");
    let peer_ip = B_V4.to_string();
    let tk = Turnkey::serve_netns(pair.a.name(), A_V4, &["--allow-peer", &peer_ip, "--shards", "1"]);
    let peer = EchoPeer::start(&pair);
    let peer_addr = peer.addr.to_string();
    // Four calls' video (2 Mbit/s: 30 frames/s of seven 1200 B packets back to back) for 3 s.
    let (code, r) = load_in(
        &pair,
        &tk,
        &[
            "--profile",
            "video",
            "--bitrate",
            "2M",
            "--flows",
            "4",
            "--duration",
            "3",
            "--peer-addr",
            &peer_addr,
            "--max-loss",
            "0",
        ],
    );
    assert_eq!(code, 0, "{r}");
    let sent = r["traffic"]["sent"].as_u64().unwrap();
    assert!(sent >= 4 * 7 * 80, "about 4 flows x 90 frames x 7 packets were sent: {r}");
    assert_eq!(r["traffic"]["delivered"].as_u64(), Some(sent), "zero loss: {r}");
    drop(peer);

    // The counters reach Prometheus at the shard's next sweep (every 500 ms).
    std::thread::sleep(Duration::from_millis(1300));
    let text = metrics(&pair, &tk);
    let m = |name: &str| metric_sum(&text, name, &[]) as u64;
    let relayed =
        |dir: &str| metric_sum(&text, "turnkey_relay_relayed_packets_total", &[&format!("direction=\"{dir}\"")]) as u64;
    assert_eq!((relayed("client_to_peer"), relayed("peer_to_client")), (sent, sent), "{text}");
    assert_eq!(m("turnkey_relay_dropped_packets_total"), 0, "{text}");
    let (gso, gso_datagrams, gro) = (
        m("turnkey_relay_udp_gso_sends_total"),
        m("turnkey_relay_udp_gso_datagrams_total"),
        m("turnkey_relay_udp_gro_datagrams_total"),
    );
    eprintln!("relay batching: {gso} GSO sends carrying {gso_datagrams} datagrams, {gro} datagrams received by GRO");
    assert!(gso > 0 && gso_datagrams >= 2 * gso, "the relay sent GSO trains:\n{text}");
    assert!(gro > 0, "the relay received GRO trains (the echo peer answers trains with GSO):\n{text}");
    assert!(gso_datagrams + gro <= 4 * sent, "counts are of relayed datagrams only");
    assert_eq!(m("turnkey_relay_udp_gso_fallbacks_total"), 0, "the veth accepts every GSO train");
}
