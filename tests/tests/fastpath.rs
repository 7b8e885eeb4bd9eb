//! The relay feeding the kernel fast path, end to end: the real `turnkey serve` in namespace `a`
//! on a veth (forwarding on), `turnkey load` (ChannelBind, then ChannelData) and a UDP echo peer in
//! namespace `b`, whose veth end runs the XDP_PASS stub with TX checksum offload off (the veth
//! traps in docs/fastpath.md). With `--fast-path xdp` the kernel relays the channels: its counters
//! move, the relayed totals still equal what was sent (the kernel's share added at each sweep),
//! and after SIGTERM's drain nothing is left attached. With `--fast-path off` the same run gives the
//! same totals in user space. `auto` on an interface with forwarding off stays in user space and
//! says why; `xdp` refuses to start there. Skipped with a message where namespaces or BPF are
//! missing; required under CI=true.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_e2e::netns::{VethPair, A_V4, B_V4};
use turnkey_e2e::{bin, http, metric_sum, require, root, run_with_timeout, Turnkey};
use turnkey_fastpath::FastPath;
use turnkey_load::client::{Auth, Credentials, TurnClient};
use turnkey_load::transport::{Rx, Target, Tx};
use turnkey_load::TransportKind;

/// A plain UDP echo peer in namespace `b` (stops when dropped).
struct EchoPeer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    fn start(pair: &VethPair) -> Self {
        let socket = pair.b.enter(|| UdpSocket::bind(SocketAddr::new(B_V4, 0)).unwrap());
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
fn setup(forwarding: bool) -> Option<(VethPair, FastPath)> {
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

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `turnkey load` in namespace `b` through the relay to `peer`: its exit code and JSON report.
fn load_in(pair: &VethPair, tk: &Turnkey, peer: SocketAddr) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.b.name()])
        .arg(bin())
        .args(["load", "--server", &tk.udp().to_string(), "--secret", &tk.secret(), "--quiet", "--json"])
        .arg(&json)
        .args(["--flows", "4", "--rate", "200", "--duration", "3", "--max-loss", "0"])
        .args(["--peer-addr", &peer.to_string()]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[turnkey load] {text}");
    assert_ne!(out.status.code(), Some(2), "turnkey load could not start: {text}");
    let report = std::fs::read(&json).map(|b| serde_json::from_slice(&b).unwrap()).unwrap_or_default();
    (out.status.code().unwrap_or(-1), report)
}

fn metrics(pair: &VethPair, tk: &Turnkey) -> String {
    let addr = tk.addr("metrics");
    pair.a.enter(move || http(addr, "GET", "/metrics", &[], None).1)
}

/// The metrics once the shards' sweeps have folded the kernel's counters in: every kernel series
/// at most its relayed total, and the relayed totals at least `min_relayed` each way (polled up to
/// 10 s: a loaded machine can delay a shard's 500 ms sweep).
fn settled_metrics(pair: &VethPair, tk: &Turnkey, min_relayed: u64) -> String {
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

fn xdp_attached(pair: &VethPair) -> bool {
    let link = sh(&format!("ip -n {} -d link show dev veth0", pair.a.name()));
    link.contains("prog/xdp")
}

/// Runs the load through a relay started with `fast_path`; returns (sent, relayed c2p, relayed
/// p2c, kernel c2p packets, kernel p2c packets).
fn relay_run(pair: &VethPair, fast_path: &str) -> (u64, u64, u64, u64, u64) {
    let peer_ip = B_V4.to_string();
    let mut tk = Turnkey::serve_netns(
        pair.a.name(),
        A_V4,
        &["--allow-peer", &peer_ip, "--shards", "2", "--fast-path", fast_path],
    );
    assert_eq!(xdp_attached(pair), fast_path == "xdp", "attached only with the fast path on");
    let peer = EchoPeer::start(pair);
    let (code, r) = load_in(pair, &tk, peer.addr);
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

/// `turnkey serve --fast-path xdp` in namespace `a`, its issuer on the veth address too (so
/// clients in `b` can call it).
fn serve_xdp(pair: &VethPair, extra: &[&str]) -> Turnkey {
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

fn kernel_packets(text: &str, dir: &str) -> u64 {
    metric_sum(text, "turnkey_relay_fastpath_packets_total", &[&format!("direction=\"{dir}\"")]) as u64
}

fn relayed_packets(text: &str, dir: &str) -> u64 {
    metric_sum(text, "turnkey_relay_relayed_packets_total", &[&format!("direction=\"{dir}\"")]) as u64
}

/// aioice (binds a channel) relays through the kernel; revoking its username stops the live
/// allocation within one sweep, kernel path included (the revoke is the allocation's end event).
#[test]
fn aioice_relays_through_the_kernel_and_revocation_stops_it() {
    if !require("aioice") {
        return;
    }
    let Some((pair, _stub)) = setup(true) else { return };
    let tk = serve_xdp(&pair, &[]);
    let (id, token) = tk.default_key();
    let http_addr = tk.addr("http");
    let body = r#"{"ttl": 600}"#.to_string();
    let auth = format!("Bearer {token}");
    let path = format!("/v1/turn/keys/{id}/credentials/generate-ice-servers");
    let (status, body) = pair.a.enter(|| {
        http(http_addr, "POST", &path, &[("Authorization", &auth), ("Content-Type", "application/json")], Some(&body))
    });
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let user = v["iceServers"][1]["username"].as_str().unwrap().to_owned();
    let pass = v["iceServers"][1]["credential"].as_str().unwrap().to_owned();
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
/// binds a channel in the background, the rest as ChannelData, which the kernel relays (the
/// payloads are a multiple of 4 bytes: webrtc-rs pads ChannelData over UDP, and padded
/// ChannelData stays in user space).
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
                // 100 bytes: webrtc-rs pads ChannelData over UDP to a multiple of 4, and the
                // program leaves padded ChannelData to user space (counted as `padded`).
                let msg = format!("{round:04}-{i:05}").repeat(10);
                relay.send_to(msg.as_bytes(), peer.addr).await.unwrap();
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            for _ in 0..20 {
                match tokio::time::timeout_at(deadline, relay.recv_from(&mut buf)).await {
                    Ok(Ok((_, from))) if from == peer.addr => received += 1,
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
            let target = Target::new(server, TransportKind::Udp, "", true, None).unwrap();
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

/// One round: 10 ChannelData to the peer, 10 answers back; counts what arrived.
async fn round(tx: &mut Tx, rx: &mut Rx, peer: &tokio::net::UdpSocket, relayed: SocketAddr) -> (usize, usize) {
    let mut frame = vec![0x40, 0x00, 0x00, 100];
    frame.extend_from_slice(&[7u8; 100]);
    let (mut to_peer, mut to_client) = (0, 0);
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        tx.send(&frame).await.unwrap();
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

/// A key's monthly cap counts kernel-relayed bytes, and reaching it takes the live allocation's
/// channel out of the kernel: nothing more is relayed either way (enforce_on_relay).
#[test]
fn a_monthly_cap_reached_by_kernel_traffic_stops_kernel_relaying() {
    let Some((pair, _stub)) = setup(true) else { return };
    let (_dir, config) = turnkey_e2e::config_file("[usage]\nflush_interval = 1\nenforce_on_relay = true\n");
    let tk = serve_xdp(&pair, &["--config", config.to_str().unwrap()]);
    let (id, token) = tk.default_key();
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
    let http_addr = tk.addr("http");
    let (auth, body) = (format!("Bearer {token}"), r#"{"ttl": 600}"#.to_string());
    let path = format!("/v1/turn/keys/{id}/credentials/generate-ice-servers");
    let (status, body) = pair.a.enter(|| {
        http(http_addr, "POST", &path, &[("Authorization", &auth), ("Content-Type", "application/json")], Some(&body))
    });
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let username = v["iceServers"][1]["username"].as_str().unwrap().to_owned();
    let password = v["iceServers"][1]["credential"].as_str().unwrap().to_owned();
    let server = tk.udp();
    let (first, second, capped) = pair.b.enter(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let peer = tokio::net::UdpSocket::bind(SocketAddr::new(B_V4, 0)).await.unwrap();
            let target = Target::new(server, TransportKind::Udp, "", true, None).unwrap();
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
