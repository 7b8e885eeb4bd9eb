//! What the fast path's end-to-end tests share: the veth pair prepared for the kernel path
//! (forwarding on the relay's end; the XDP_PASS stub and TX checksum offload off on the clients'
//! end), a UDP echo peer, `turnkey serve --fast-path xdp`, `turnkey load`, the relay's metrics once
//! the shards' sweeps have folded the kernel's counters in, and one ChannelData round of
//! turnkey-load's client.

#![allow(dead_code, reason = "each test binary uses its own share of these helpers")]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_e2e::netns::{VethPair, A_V4, B_V4};
use turnkey_e2e::{bin, http, metric_sum, run_with_timeout, Turnkey};
use turnkey_fastpath::FastPath;
use turnkey_load::transport::{Rx, Tx};

/// A plain UDP echo peer in namespace `b` (stops when dropped).
pub struct EchoPeer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    pub fn start(pair: &VethPair) -> Self {
        Self::start_at(pair, B_V4)
    }

    /// An echo peer on `ip` (an address of namespace `b`: B_V4 or B_V6).
    pub fn start_at(pair: &VethPair, ip: IpAddr) -> Self {
        let socket = pair.b.enter(|| UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap());
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
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

/// The pair with the fast path's prerequisites: forwarding on in `a` (unless `forwarding` is
/// false), TX checksum offload off and the XDP_PASS stub on `b`'s end. None: skip.
pub fn setup(forwarding: bool) -> Option<(VethPair, FastPath)> {
    let pair = VethPair::new()?;
    let stub = match pair.b.enter(FastPath::load) {
        Ok(fp) => fp,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("the fast path cannot load under CI: {e}"),
        Err(e) => {
            eprintln!("SKIP: the fast path cannot load here: {e}");
            return None;
        }
    };
    let mut stub = stub;
    pair.b.enter(|| stub.attach_pass_stub("veth0")).unwrap();
    sh(&format!("ip netns exec {} ethtool -K veth0 tx off >/dev/null", pair.b.name()));
    if forwarding {
        sh(&format!(
            "ip netns exec {} sh -c 'echo 1 > /proc/sys/net/ipv4/conf/veth0/forwarding; echo 1 > /proc/sys/net/ipv6/conf/veth0/forwarding'",
            pair.a.name()
        ));
    }
    Some((pair, stub))
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `turnkey load` in namespace `b` through the relay to `peer`: its exit code and JSON report.
pub fn load_in(pair: &VethPair, tk: &Turnkey, peer: SocketAddr) -> (i32, serde_json::Value) {
    load_in_with(pair, tk, peer, &[])
}

/// [`load_in`] with more `turnkey load` arguments (e.g. `--family ipv6`).
pub fn load_in_with(pair: &VethPair, tk: &Turnkey, peer: SocketAddr, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.b.name()])
        .arg(bin())
        .args(["load", "--server", &tk.udp().to_string(), "--secret", &tk.secret(), "--quiet", "--json"])
        .arg(&json)
        .args(["--flows", "4", "--rate", "200", "--duration", "3", "--max-loss", "0"])
        .args(["--peer-addr", &peer.to_string()])
        .args(extra);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[turnkey load] {text}");
    assert_ne!(out.status.code(), Some(2), "turnkey load could not start: {text}");
    let report = std::fs::read(&json).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    (out.status.code().unwrap_or(-1), report)
}

pub fn metrics(pair: &VethPair, tk: &Turnkey) -> String {
    let addr = tk.addr("metrics");
    pair.a.enter(move || http(addr, "GET", "/metrics", &[], None).1)
}

/// The metrics once the shards' sweeps have folded the kernel's counters in: every kernel series
/// at most its relayed total, and the relayed totals at least `min_relayed` each way (polled up to
/// 10 s: a loaded machine can delay a shard's 500 ms sweep).
pub fn settled_metrics(pair: &VethPair, tk: &Turnkey, min_relayed: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(600));
        let text = metrics(pair, tk);
        let settled = ["client_to_peer", "peer_to_client"].iter().all(|d| {
            let relayed = metric_sum(&text, "turnkey_relay_relayed_packets_total", &[&format!("direction=\"{d}\"")]);
            let kernel = metric_sum(&text, "turnkey_relay_fastpath_packets_total", &[&format!("direction=\"{d}\"")]);
            relayed as u64 >= min_relayed && kernel <= relayed
        });
        if settled || Instant::now() > deadline {
            return text;
        }
    }
}

pub fn xdp_attached(pair: &VethPair) -> bool {
    let link = sh(&format!("ip -n {} -d link show dev veth0", pair.a.name()));
    link.contains("prog/xdp")
}

/// `turnkey serve --fast-path xdp` in namespace `a`, its issuer on the veth address too (so
/// clients in `b` can call it).
pub fn serve_xdp(pair: &VethPair, extra: &[&str]) -> Turnkey {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.a.name()])
        .arg(bin())
        .args(["serve", "--data-dir"])
        .arg(data.path())
        .args(["--udp", &SocketAddr::new(A_V4, 0).to_string(), "--relay-ip", &A_V4.to_string()])
        .args(["--public-host", &A_V4.to_string(), "--http", &SocketAddr::new(A_V4, 0).to_string()])
        .args(["--metrics", "127.0.0.1:0", "--allow-peer", &B_V4.to_string(), "--fast-path", "xdp"])
        .args(["--tcp", &SocketAddr::new(A_V4, 0).to_string(), "--tls", &SocketAddr::new(A_V4, 0).to_string()])
        .args(extra);
    Turnkey::launch(cmd, data, "turnkey listening ")
}

pub fn kernel_packets(text: &str, dir: &str) -> u64 {
    metric_sum(text, "turnkey_relay_fastpath_packets_total", &[&format!("direction=\"{dir}\"")]) as u64
}

pub fn relayed_packets(text: &str, dir: &str) -> u64 {
    metric_sum(text, "turnkey_relay_relayed_packets_total", &[&format!("direction=\"{dir}\"")]) as u64
}

/// One round: 10 ChannelData to the peer, 10 answers back; counts what arrived.
pub async fn round(tx: &mut Tx, rx: &mut Rx, peer: &tokio::net::UdpSocket, relayed: SocketAddr) -> (usize, usize) {
    let mut frame = vec![0x40, 0x00, 0x00, 100];
    frame.extend_from_slice(&[7u8; 100]);
    let (mut to_peer, mut to_client) = (0, 0);
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        // After the relay exits, the ICMP port unreachable of an earlier datagram makes the next
        // send on the connected socket fail (ECONNREFUSED): that datagram was not relayed either.
        if tx.send(&frame).await.is_err() {
            continue;
        }
        if let Ok(Ok((n, from))) = tokio::time::timeout(Duration::from_millis(300), peer.recv_from(&mut buf)).await {
            assert_eq!((n, from), (100, relayed), "the payload alone, from the relayed address");
            to_peer += 1;
        }
        peer.send_to(&[9u8; 100], relayed).await.unwrap();
        if let Ok(Ok(got)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            if got.len() == 104 && got[..4] == [0x40, 0x00, 0x00, 100] {
                to_client += 1;
            }
        }
    }
    (to_peer, to_client)
}

/// Mints app credentials through the issuer of `tk` (inside namespace `a`): (key id, its bearer
/// token, username, password).
pub fn issued(pair: &VethPair, tk: &Turnkey) -> (String, String, String, String) {
    let (id, token) = tk.default_key();
    let http_addr = tk.addr("http");
    let (auth, body) = (format!("Bearer {token}"), r#"{"ttl": 600}"#.to_string());
    let path = format!("/v1/turn/keys/{id}/credentials/generate-ice-servers");
    let (status, body) = pair.a.enter(|| {
        http(http_addr, "POST", &path, &[("Authorization", &auth), ("Content-Type", "application/json")], Some(&body))
    });
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let user = v["iceServers"][1]["username"].as_str().unwrap().to_owned();
    let pass = v["iceServers"][1]["credential"].as_str().unwrap().to_owned();
    (id, token, user, pass)
}
