//! TURN over TCP and TLS (RFC 8656 §12), driven by clients nobody here wrote (aioice, coturn's
//! turnutils_uclient, Python's ssl module) and by raw sockets for the bad-input cases.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use turnkey_e2e::{
    aioice, assert_uclient_zero_loss, pem_body, require, root, run_with_timeout, served_cert, uclient, Turnkey,
};

const ALLOW_LOOPBACK: &[&str] = &["--allow-peer", "127.0.0.1"];

fn creds(tk: &Turnkey) -> (String, String) {
    tk.creds("alice", 600)
}

fn relay_over(tk: &Turnkey, transport: &str, server: SocketAddr) -> serde_json::Value {
    let (user, pass) = creds(tk);
    let server = server.to_string();
    let ca = tk.tls_cert().display().to_string();
    let mut args = vec!["relay", "--server", &server, "--user", &user, "--password", &pass, "--count", "30"];
    args.extend(["--transport", transport]);
    if transport == "tls" {
        args.extend(["--ca", &ca]);
    }
    aioice(&args)
}

fn assert_relayed_both_ways(tk: &Turnkey, transport: &str, server: SocketAddr) {
    let r = relay_over(tk, transport, server);
    assert_eq!(r["received"], 30, "{r}\ndrops: {}", tk.drops());
    assert_eq!(r["echo_seen"], 30, "{r}");
    assert_eq!(r["echo_peers"][0], r["relayed"], "the UDP peer sees the relayed address: {r}");
    std::thread::sleep(Duration::from_millis(1200));
    let label = format!("transport=\"{transport}\"");
    let c2p = tk.metric("turnkey_relay_relayed_bytes_total", &["client_to_peer", &label]);
    let p2c = tk.metric("turnkey_relay_relayed_bytes_total", &["peer_to_client", &label]);
    assert_eq!((c2p, p2c), (3000.0, 3000.0), "{transport}");
    // The client closed its connection: nothing is left behind.
    assert_eq!(tk.metric("turnkey_relay_allocations", &[]), 0.0);
    assert_eq!(tk.metric("turnkey_relay_connections", &[]), 0.0);
}

#[test]
fn aioice_relays_both_ways_over_tcp() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    assert_relayed_both_ways(&tk, "tcp", tk.tcp());
}

#[test]
fn aioice_relays_both_ways_over_tls_trusting_the_generated_certificate() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    assert!(tk.tls_cert().exists(), "the embedded default generates a certificate");
    assert_relayed_both_ways(&tk, "tls", tk.tls());
}

#[test]
fn uclient_over_tcp_client_to_client_zero_loss() {
    if !require("turnutils_uclient") {
        return;
    }
    // Debian's uclient (coturn 4.6) picks RFC 5766 channel numbers, so this test opts in.
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--rfc5766-channel-numbers"]);
    let text = uclient(&tk, tk.tcp().port(), &["-t"]);
    assert_uclient_zero_loss(&text);
    std::thread::sleep(Duration::from_millis(1200));
    let packets = tk.metric("turnkey_relay_relayed_packets_total", &["client_to_peer", "transport=\"tcp\""]);
    assert!(packets >= 1000.0, "relay saw {packets} TCP packets");
}

#[test]
fn uclient_over_tls_client_to_client_zero_loss() {
    if !require("turnutils_uclient") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--rfc5766-channel-numbers"]);
    let text = uclient(&tk, tk.tls().port(), &["-t", "-S"]);
    assert_uclient_zero_loss(&text);
    std::thread::sleep(Duration::from_millis(1200));
    let packets = tk.metric("turnkey_relay_relayed_packets_total", &["client_to_peer", "transport=\"tls\""]);
    assert!(packets >= 1000.0, "relay saw {packets} TLS packets");
}

// ---------------------------------------------------------------------------------------------
// Raw-socket helpers

fn binding_request(tx: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[tx; 12]);
    m
}

/// Sends a Binding request on `s` and waits for its success response.
fn binding_works(s: &mut TcpStream, tx: u8) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    if s.write_all(&binding_request(tx)).is_err() {
        return false;
    }
    let mut hdr = [0u8; 20];
    if s.read_exact(&mut hdr).is_err() {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).is_ok() && hdr[0..2] == [0x01, 0x01] && hdr[8..20] == [tx; 12]
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap()
}

/// Whether the server closes `s` within `within` (EOF or reset), discarding anything it sends.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn closed_count(tk: &Turnkey, transport: &str, reason: &str) -> f64 {
    tk.metric(
        "turnkey_relay_connections_closed_total",
        &[&format!("transport=\"{transport}\""), &format!("reason=\"{reason}\"")],
    )
}

#[test]
fn bad_input_closes_only_that_connection() {
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--idle-timeout", "2"]);
    let tcp = tk.tcp();
    // A healthy client, connected before and checked after.
    let mut healthy = connect(tcp);
    assert!(binding_works(&mut healthy, 1));

    let cases: [(&str, Vec<u8>); 5] = [
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        // The start of a TLS 1.2 ClientHello record.
        ("tls_on_plain", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0, 0, 0, 0, 0]),
        // A STUN header whose length is not a multiple of 4.
        ("malformed", vec![0x00, 0x01, 0x00, 0x05, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
        ("malformed", vec![0xFF; 32]),
        // Bad magic cookie.
        ("malformed", vec![0x00, 0x01, 0x00, 0x00, 0xDE, 0xAD, 0xBE, 0xEF, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]),
    ];
    for (reason, bytes) in &cases {
        let mut s = connect(tcp);
        s.write_all(bytes).unwrap();
        let t = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(1)), "{reason}: {bytes:02x?} not closed");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    // A ChannelData header announcing 65535 bytes, then silence: closed by the idle timeout (2 s).
    let mut silent = connect(tcp);
    silent.write_all(&[0x40, 0x00, 0xFF, 0xFF, 1, 2, 3, 4]).unwrap();
    assert!(!closed_within(&mut silent, Duration::from_millis(1000)), "closed before the idle timeout");
    // Meanwhile other clients are served, over TCP and UDP.
    let mut other = connect(tcp);
    assert!(binding_works(&mut other, 2));
    let (user, pass) = creds(&tk);
    let udp = tk.udp().to_string();
    let r = aioice(&["relay", "--server", &udp, "--user", &user, "--password", &pass, "--count", "5"]);
    assert_eq!(r["received"], 5, "{r}\ndrops: {}", tk.drops());
    assert!(closed_within(&mut silent, Duration::from_secs(4)), "a silent partial frame is closed");
    // The healthy connection sent nothing for 2 s too: it is idle now, which is the point of the timer.
    assert!(closed_within(&mut healthy, Duration::from_secs(2)));

    // Bad bytes on the TLS port fail the handshake.
    let mut s = connect(tk.tls());
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(2)));

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(closed_count(&tk, "tcp", "http"), 1.0);
    assert_eq!(closed_count(&tk, "tcp", "tls_on_plain"), 1.0);
    assert_eq!(closed_count(&tk, "tcp", "malformed"), 3.0);
    assert!(closed_count(&tk, "tcp", "idle") >= 2.0);
    assert_eq!(closed_count(&tk, "tls", "handshake_failed"), 1.0);
    let mut fresh = connect(tcp);
    assert!(binding_works(&mut fresh, 3), "the listener still serves");
}

#[test]
fn per_ip_connection_cap() {
    let tk = Turnkey::serve(&["--max-connections-per-ip", "3"]);
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(tk.tcp())).collect();
    for (i, s) in held.iter_mut().enumerate() {
        assert!(binding_works(s, i as u8 + 1), "connection {i} within the cap");
    }
    // The cap counts TCP and TLS together.
    let mut over = connect(tk.tls());
    assert!(closed_within(&mut over, Duration::from_secs(2)), "TLS connection past the cap must be closed");
    let mut over = connect(tk.tcp());
    assert!(!binding_works(&mut over, 9), "a connection past the cap is not served");
    assert_eq!(closed_count(&tk, "tcp", "per_ip_cap"), 1.0);
    assert_eq!(closed_count(&tk, "tls", "per_ip_cap"), 1.0);
    assert_eq!(tk.metric("turnkey_relay_connections", &["transport=\"tcp\""]), 3.0);
    // Closing one frees its slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut s = connect(tk.tcp());
        if binding_works(&mut s, 7) {
            break;
        }
        assert!(Instant::now() < deadline, "slot not released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts turn_client.py in `abandon` mode and returns it after it printed its relayed address.
fn abandon(tk: &Turnkey, transport: &str, server: SocketAddr, hold: &str) -> std::process::Child {
    let (user, pass) = creds(tk);
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/py/turn_client.py"))
        .args(["abandon", "--server", &server.to_string(), "--user", &user, "--password", &pass])
        .args(["--transport", transport, "--hold", hold])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if transport == "tls" {
        cmd.arg("--ca").arg(tk.tls_cert());
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("relayed"), "no allocation: {line:?}");
    child
}

fn wait_exit(child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_closed_connection_frees_its_allocation_at_once() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(ALLOW_LOOPBACK);
    for (transport, server) in [("tcp", tk.tcp()), ("tls", tk.tls())] {
        let label = format!("transport=\"{transport}\"");
        let mut child = abandon(&tk, transport, server, "1");
        assert_eq!(tk.metric("turnkey_relay_allocations", &[&label]), 1.0, "{transport}");
        assert_eq!(tk.metric("turnkey_relay_connections", &[&label]), 1.0, "{transport}");
        // The client exits without Refresh(0): only the connection's close can end the allocation
        // (its lifetime is 600 s).
        wait_exit(&mut child);
        let deadline = Instant::now() + Duration::from_millis(1000);
        while tk.metric("turnkey_relay_allocations", &[&label]) != 0.0 {
            assert!(Instant::now() < deadline, "{transport} allocation outlived its connection");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tk.metric("turnkey_relay_connections", &[&label]), 0.0);
        // A FIN, or a reset when the client exits with unread data: either way the client left.
        let left = closed_count(&tk, transport, "client_closed") + closed_count(&tk, transport, "io_error");
        assert_eq!(left, 1.0, "{transport}");
    }
}

#[test]
fn a_connection_that_never_allocates_is_closed() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--allocate-timeout", "1", "--tls-handshake-timeout", "1"]);
    // An allocated connection is not subject to the allocate timeout.
    let mut allocated = abandon(&tk, "tcp", tk.tcp(), "2.5");
    let mut s = connect(tk.tcp());
    assert!(binding_works(&mut s, 1), "Binding works, but it is not an allocation");
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)));
    assert!(t.elapsed() >= Duration::from_millis(700), "closed too early: {:?}", t.elapsed());
    // TLS: the timer starts after the handshake; a handshake that never starts is closed too.
    let mut t2 = connect(tk.tls());
    assert!(closed_within(&mut t2, Duration::from_secs(3)));
    assert_eq!(closed_count(&tk, "tcp", "never_allocated"), 1.0);
    assert_eq!(closed_count(&tk, "tls", "handshake_timeout"), 1.0);
    assert_eq!(tk.metric("turnkey_relay_allocations", &["transport=\"tcp\""]), 1.0, "the allocated one lives");
    wait_exit(&mut allocated);
}

fn write_pair(dir: &Path) -> String {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    // Replace atomically, as certificate tools do.
    std::fs::write(dir.join("cert.tmp"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.tmp"), ck.key_pair.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.tmp"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.tmp"), dir.join("cert.pem")).unwrap();
    pem_body(&ck.cert.pem())
}

#[test]
fn certificate_is_reloaded_on_sighup_and_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_pair(dir.path());
    let cert = dir.path().join("cert.pem").display().to_string();
    let key = dir.path().join("key.pem").display().to_string();
    let tk = Turnkey::serve(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(!tk.tls_cert().exists(), "no self-signed certificate when one is configured");
    assert_eq!(served_cert(tk.tls()), first);

    let second = write_pair(dir.path());
    turnkey_e2e::signal(&tk.child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(3);
    while served_cert(tk.tls()) != second {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the certificate");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Without a signal: the files are watched.
    let third = write_pair(dir.path());
    let deadline = Instant::now() + Duration::from_secs(15);
    while served_cert(tk.tls()) != third {
        assert!(Instant::now() < deadline, "a changed certificate file was not picked up");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(tk.child.id() > 0);
}

#[test]
fn tls_versions_and_alpn() {
    let tk = Turnkey::serve(&[]);
    let code = r#"
import json, socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
for name, ver, alpn in [("tls13", ssl.TLSVersion.TLSv1_3, ["stun.turn"]),
                        ("tls12", ssl.TLSVersion.TLSv1_2, ["stun.turn"]),
                        ("other_alpn", None, ["h2"]),
                        ("no_alpn", None, None)]:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    if ver:
        ctx.minimum_version = ver
        ctx.maximum_version = ver
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection((host, port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            out[name] = [t.version(), t.selected_alpn_protocol()]
print(json.dumps(out))
"#;
    let tls = tk.tls();
    let out = run_with_timeout(
        Command::new("python3").args(["-c", code, &tls.ip().to_string(), &tls.port().to_string()]).arg(tk.tls_cert()),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tls13"], serde_json::json!(["TLSv1.3", "stun.turn"]), "{v}");
    assert_eq!(v["tls12"], serde_json::json!(["TLSv1.2", "stun.turn"]), "{v}");
    assert_eq!(v["other_alpn"][1], serde_json::Value::Null, "{v}");
    assert_eq!(v["no_alpn"][1], serde_json::Value::Null, "{v}");
}

#[test]
fn the_issuer_advertises_the_tcp_and_tls_listeners() {
    let tk = Turnkey::serve(&[]);
    let (id, token) = tk.default_key();
    let auth = format!("Bearer {token}");
    let (status, body) = turnkey_e2e::http(
        tk.addr("http"),
        "POST",
        &format!("/v1/turn/keys/{id}/credentials/generate-ice-servers"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        Some("{\"ttl\": 600}"),
    );
    assert_eq!(status, 201, "{body}");
    let tcp = format!("turn:127.0.0.1:{}?transport=tcp", tk.tcp().port());
    let tls = format!("turns:127.0.0.1:{}?transport=tcp", tk.tls().port());
    assert!(body.contains(&tcp), "{tcp} missing in {body}");
    assert!(body.contains(&tls), "{tls} missing in {body}");
}
