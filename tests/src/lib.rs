//! Harness for end-to-end tests: starts the real `turnkey` binary on loopback with port 0,
//! reads the addresses it bound from its ready line, and finds the external tools the tests drive
//! (coturn's `turnutils_uclient`, Python with `aioice`, ...).
//!
//! A test that needs a tool calls [`require`]: when the tool is missing it fails under `CI=true`
//! (the test command installs every tool) and is skipped with a printed reason elsewhere.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod browser;
pub mod doctest;
pub mod firefox;
pub mod fleet;
pub mod netns;
pub mod ops;
pub mod pion;
pub mod redis;
pub mod sentinel;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `tests/artifacts/` (gitignored): screenshots and other files tests leave for people to look at.
pub fn artifacts() -> PathBuf {
    let dir = root().join("tests").join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `turnkey` binary built next to this test (`cargo build` runs before the tests).
pub fn bin() -> PathBuf {
    if let Ok(p) = std::env::var("TURNKEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/turnkey
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let p = profile_dir.join("turnkey");
    assert!(p.exists(), "{} missing: build it first (`cargo build -p turnkey`)", p.display());
    p
}

/// Whether `tool` is runnable; fails under CI=true when it is not, else prints why the test skips.
pub fn require(tool: &str) -> bool {
    let found = match tool {
        "aioice" | "schemathesis" => {
            Command::new("python3").args(["-c", &format!("import {tool}")]).output().is_ok_and(|o| o.status.success())
        }
        t => Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success()),
    };
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("required tool `{tool}` is missing (the test command installs it; CI must not skip)");
        }
        eprintln!("SKIP: `{tool}` not installed (run the README's test command to install it)");
    }
    found
}

/// A loopback port, free for both UDP and TCP, for a tool that must be told its port in advance
/// (coturn's turnserver, Prometheus). It is taken below the kernel's ephemeral range, where no
/// port-0 bind lands and turnkey's relay ports (49152-65535) never are: between this probe and the
/// tool's own bind nothing else in the suite can take it, and a tool that binds with SO_REUSEPORT
/// (coturn does) cannot join the group of a turnkey started on port 0.
pub fn fixed_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // Ports handed out by this process: the probe below only sees ports already bound, and a tool
    // binds its port some time after it was chosen, so two calls before the first tool is up
    // (three sentinels in a row) must not draw the same number.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (low.saturating_sub(12_000).max(1024), low.saturating_sub(1));
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        // A fresh random draw each time (RandomState is seeded per instance), so concurrent test
        // processes do not walk the same sequence.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = lo + (h.finish() % u64::from(hi - lo)) as u16;
        if given.contains(&port) {
            continue;
        }
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// A UDP socket on 127.0.0.1 for a test's peer, on a port no local TCP listener holds: the relay
/// under test refuses its own service ports as peers whatever the protocol (security.md), so a
/// peer that drew the number of the relay's TCP, issuer or metrics listener would be refused by
/// chance (turn_client.py's `echo_socket` and the pion client's peer do the same).
pub fn udp_peer() -> std::net::UdpSocket {
    let mut held = Vec::new();
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => return udp,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => held.push(udp),
            Err(e) => panic!("probing TCP port {port}: {e}"),
        }
    }
    panic!("no UDP port without a TCP listener on the same number");
}

/// A `turnkey.toml` holding `toml` in a fresh directory, for `--config`; the returned directory
/// keeps it alive.
pub fn config_file(toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnkey.toml");
    std::fs::write(&path, toml).unwrap();
    (dir, path)
}

/// A running `turnkey serve`.
#[derive(Debug)]
pub struct Turnkey {
    pub child: Child,
    pub data_dir: tempfile::TempDir,
    pub addrs: HashMap<String, String>,
    pub stderr_lines: mpsc::Receiver<String>,
}

impl Turnkey {
    /// Starts `turnkey serve` on loopback with port 0 everywhere, relaying on 127.0.0.1, and the
    /// extra `args` (tests that relay to a loopback echo peer pass `--allow-peer 127.0.0.1`).
    pub fn serve(args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        Self::serve_in(data_dir, args)
    }

    /// Like [`Turnkey::serve`] with a given data directory (restart tests).
    pub fn serve_in(data_dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(Self::serve_args(data_dir.path(), args));
        Self::launch(cmd, data_dir, "turnkey listening ")
    }

    /// The arguments of `turnkey serve` as [`Turnkey::serve`] runs it: loopback, port 0 everywhere,
    /// relaying on 127.0.0.1, then `args`; a default flag that `args` gives itself (e.g.
    /// `--http off`, or `--data-dir` of another process) is left out.
    pub fn serve_args(data_dir: &Path, args: &[&str]) -> Vec<std::ffi::OsString> {
        let defaults = [
            ("--udp", "127.0.0.1:0"),
            ("--http", "127.0.0.1:0"),
            ("--metrics", "127.0.0.1:0"),
            ("--tcp", "127.0.0.1:0"),
            ("--tls", "127.0.0.1:0"),
            ("--relay-ip", "127.0.0.1"),
            ("--public-host", "127.0.0.1"),
            ("--shards", "2"),
        ];
        let mut out: Vec<std::ffi::OsString> = vec!["serve".into()];
        if !args.contains(&"--data-dir") {
            out.extend(["--data-dir".into(), data_dir.into()]);
        }
        for (flag, value) in defaults {
            if !args.contains(&flag) {
                out.extend([flag.into(), value.into()]);
            }
        }
        out.extend(args.iter().map(Into::into));
        out
    }

    /// Starts `turnkey issuer` alone on `data_dir` (HTTP and metrics on loopback port 0).
    pub fn issuer_in(data_dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.arg("issuer")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--public-host", "127.0.0.1"])
            .args(args);
        Self::launch(cmd, data_dir, "turnkey issuer listening ")
    }

    /// Starts `turnkey serve` inside network namespace `netns` (`ip netns exec`, which keeps the
    /// process id): UDP listening and relaying on `ip`, HTTP and metrics on the namespace's own
    /// loopback (reach them from a thread inside it, e.g. [`netns::Netns::enter`]).
    pub fn serve_netns(netns: &str, ip: std::net::IpAddr, args: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--udp", &SocketAddr::new(ip, 0).to_string()])
            .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
            .args(["--relay-ip", &ip.to_string(), "--public-host", &ip.to_string()])
            .args(args);
        Self::launch(cmd, data_dir, "turnkey listening ")
    }

    /// Spawns `cmd` (a turnkey command line, possibly behind a wrapper such as `prlimit`) and
    /// waits for its ready line, which starts with `ready` and lists `key=addr` pairs.
    pub fn launch(mut cmd: Command, data_dir: tempfile::TempDir, ready: &str) -> Self {
        cmd.env("TURNKEY_LOG", "info").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn turnkey");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[turnkey] {line}");
                let _ = etx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addrs = HashMap::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with(ready) => {
                    for kv in line[ready.len()..].split_whitespace() {
                        if let Some((k, v)) = kv.split_once('=') {
                            addrs.insert(k.to_owned(), v.to_owned());
                        }
                    }
                    break;
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        assert!(!addrs.is_empty(), "turnkey did not report its listeners; status {:?}", child.try_wait());
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Self { child, data_dir, addrs, stderr_lines: erx }
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs[key].split(',').next().unwrap().parse().unwrap()
    }

    pub fn udp(&self) -> SocketAddr {
        self.addr("udp")
    }

    /// The TURN-over-TCP listener.
    pub fn tcp(&self) -> SocketAddr {
        self.addr("tcp")
    }

    /// The TURN-over-TLS listener.
    pub fn tls(&self) -> SocketAddr {
        self.addr("tls")
    }

    /// The self-signed certificate `turnkey serve` generated in its data directory.
    pub fn tls_cert(&self) -> PathBuf {
        self.data_dir.path().join("tls/cert.pem")
    }

    /// The generated secret.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("secret")).unwrap().trim().to_owned()
    }

    /// `turnkey creds` against this instance's data directory.
    pub fn creds(&self, user: &str, ttl: u64) -> (String, String) {
        let out = Command::new(bin())
            .args(["creds", "--user", user, "--ttl", &ttl.to_string(), "--data-dir"])
            .arg(self.data_dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["username"].as_str().unwrap().to_owned(), v["credential"].as_str().unwrap().to_owned())
    }

    /// GET http://<metrics>/metrics.
    pub fn metrics(&self) -> String {
        http(self.addr("metrics"), "GET", "/metrics", &[], None).1
    }

    /// The sum of a metric's samples whose labels contain every `label="value"` given.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// `turnkey_relay_relayed_bytes_total{transport}` (client_to_peer, peer_to_client), polled
    /// until both exceed `at_least` or 5 s have passed (counters are flushed every 500 ms, so a
    /// call's bytes can arrive in more than one update).
    pub fn relayed_bytes(&self, transport: &str, at_least: f64) -> (f64, f64) {
        let label = format!("transport=\"{transport}\"");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c2p = self.metric("turnkey_relay_relayed_bytes_total", &["client_to_peer", &label]);
            let p2c = self.metric("turnkey_relay_relayed_bytes_total", &["peer_to_client", &label]);
            if (c2p > at_least && p2c > at_least) || Instant::now() > deadline {
                return (c2p, p2c);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The relay's non-zero drop counters, one per line (context for a failed delivery assert).
    pub fn drops(&self) -> String {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("turnkey_relay_dropped_packets_total") && !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The default TURN key's id and token.
    pub fn default_key(&self) -> (String, String) {
        let dir = self.data_dir.path().join("keys");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "token") {
                let id = p.file_stem().unwrap().to_string_lossy().into_owned();
                return (id, std::fs::read_to_string(&p).unwrap().trim().to_owned());
            }
        }
        panic!("no default key in {}", dir.display());
    }

    /// Sends a signal and waits for exit (bounded).
    pub fn signal_and_wait(&mut self, sig: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        signal(&self.child, sig);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The child's resident memory in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Turnkey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `sig` (e.g. "TERM", "KILL") with kill(1).
pub fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(st.success());
}

/// The sum of matching samples in Prometheus text.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A minimal HTTP/1.1 client for loopback tests: returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let b = body.unwrap_or("");
    if body.is_some() {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(b);
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs a command with a timeout; returns its output (the child is killed at the deadline).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The PEM certificate a TLS server at `addr` presents (fetched with Python's ssl module, no
/// verification), normalised to its base64 body.
pub fn served_cert(addr: SocketAddr) -> String {
    let code = format!("import ssl; print(ssl.get_server_certificate(('{}', {})))", addr.ip(), addr.port());
    let out = run_with_timeout(Command::new("python3").args(["-c", &code]), Duration::from_secs(20));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pem_body(&String::from_utf8_lossy(&out.stdout))
}

/// The base64 body of a PEM text (first block), whitespace removed.
pub fn pem_body(pem: &str) -> String {
    pem.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect()
}

/// Runs `tests/py/turn_client.py` with `args`; returns its JSON output.
pub fn aioice(args: &[&str]) -> serde_json::Value {
    let script = root().join("tests/py/turn_client.py");
    let out = run_with_timeout(Command::new("python3").arg(script).args(args), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "aioice failed: {}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("bad JSON {stdout}: {e}"))
}

/// aioice's `revoke` run: allocates on `server` with `user`/`pass`, relays 5 messages, revokes
/// the username with `POST revoke_url` (bearer `token`), then checks the live allocation and a
/// fresh Allocate; `extra` adds flags such as `--revoke-wait`.
pub fn aioice_revoke(
    server: &str,
    user: &str,
    pass: &str,
    revoke_url: &str,
    token: &str,
    extra: &[&str],
) -> serde_json::Value {
    // `--token=T`, not `--token T`: a token may start with `-`, which argparse takes for a flag.
    let token = format!("--token={token}");
    let mut args = vec!["revoke", "--server", server, "--user", user, "--password", pass, "--count", "5"];
    args.extend(["--revoke-url", revoke_url, &token]);
    args.extend_from_slice(extra);
    aioice(&args)
}

/// Runs coturn's `turnutils_uclient` against `port` on 127.0.0.1 with TURN REST credentials from
/// `tk`'s secret: 5 clients, 200 messages of 120 bytes each, plus `extra` flags (`-t` for TCP,
/// `-S` for TLS, `-s` for Send indications). Asserts it exits successfully; returns its output.
pub fn uclient(tk: &Turnkey, port: u16, extra: &[&str]) -> String {
    let secret = tk.secret();
    let port = port.to_string();
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(["-W", &secret, "-u", "uclient", "-y", "-m", "5", "-n", "200", "-l", "120", "-p", &port])
        .args(extra)
        .arg("127.0.0.1");
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// Asserts a `turnutils_uclient` run lost nothing and saw no 4xx/5xx answer.
pub fn assert_uclient_zero_loss(text: &str) {
    let line = text.lines().find(|l| l.contains("Total lost packets")).unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(line.contains("Total lost packets 0 (0.000000%)"), "{line}");
    assert!(line.contains("total send dropped 0 "), "{line}");
    assert!(!text.contains("error 4") && !text.contains("error 5"), "{text}");
}
