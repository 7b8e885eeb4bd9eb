//! `turnkey load` against a real coturn `turnserver` on loopback: short, bounded runs over UDP,
//! TCP and TLS, in channel and send modes, with the report checked for consistency and against
//! the per-session packet counts coturn itself logs ("peer usage: ... rp=N ... sp=N").
//!
//! Needs `turnserver` (Debian package `coturn`). Without it these tests fail when `CI=true`
//! and are skipped, with a printed reason, otherwise.

#![allow(clippy::unwrap_used)] // test helpers may panic

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turnkey_load::{LoadArgs, Report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadArgs,
}

fn args(server: &str, extra: &[&str]) -> LoadArgs {
    let mut v = vec!["turnkey-load", "--server", server, "--quiet"];
    v.extend_from_slice(extra);
    Cli::try_parse_from(v).expect("arguments parse").args
}

async fn load(server: &str, extra: &[&str]) -> Report {
    tokio::time::timeout(Duration::from_secs(60), turnkey_load::run(args(server, extra)))
        .await
        .expect("load run is bounded")
        .expect("load run starts")
}

/// Checks what every relay report must satisfy.
fn assert_consistent(r: &Report) {
    let t = &r.traffic;
    assert!(t.delivered <= t.sent, "delivered {} > sent {}", t.delivered, t.sent);
    assert_eq!(t.lost, t.sent - t.delivered);
    let p = &t.rtt_us;
    assert_eq!(p.count, t.delivered);
    assert!(p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max, "{p:?}");
    assert!(t.delivered_pps <= t.offered_pps + 1e-9);
    let a = &r.allocations;
    assert_eq!(a.attempted, a.succeeded + a.failed);
    assert_eq!(a.time_us.count, a.succeeded);
}

/// Checks a run made with `--user <user>` against coturn's own per-allocation counts. Pairs: the
/// near allocations (even numbers) sent to their peers exactly what the tool sent and received
/// what it got back, and the far ones echoed that. Echo peer: every allocation is a near one.
fn assert_coturn_counts(c: &Coturn, user: &str, r: &Report, pairs: bool) {
    let usage = c.peer_usage_of(user, r.allocations.succeeded as usize);
    assert_eq!(usage.len() as u64, r.allocations.succeeded, "{user}: {usage:?}");
    let near = |id: &u64| !pairs || id.is_multiple_of(2);
    let near_sp: u64 = usage.iter().filter(|(id, _)| near(id)).map(|(_, u)| u.1).sum();
    let near_rp: u64 = usage.iter().filter(|(id, _)| near(id)).map(|(_, u)| u.0).sum();
    assert_eq!(near_sp, r.traffic.sent, "{user}: {usage:?}");
    assert_eq!(near_rp, r.traffic.delivered, "{user}: {usage:?}");
    if pairs {
        let far_sp: u64 = usage.iter().filter(|(id, _)| !near(id)).map(|(_, u)| u.1).sum();
        assert_eq!(far_sp, r.traffic.delivered, "{user}: {usage:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_channel_pairs_match_coturn_counts() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    let r = load(&c.addr(), &["--secret", &c.secret, "--flows", "3", "--rate", "200", "--duration", "1"]).await;
    assert_consistent(&r);
    assert_eq!(r.flows_established, 3);
    assert_eq!(r.allocations.succeeded, 6, "two allocations per flow");
    assert!((550..=650).contains(&r.traffic.sent), "{}", r.traffic.sent);
    assert_eq!(r.traffic.loss_pct, 0.0, "{r}");
    assert!(r.verdict.passed);
    // coturn's own per-allocation counts: the near allocations (even ids) sent to their peers
    // exactly what the tool sent, and received from them what it got back.
    let usage = c.peer_usage(6);
    let (mut near_sp, mut near_rp, mut far_sp) = (0, 0, 0);
    for (id, (rp, sp)) in &usage {
        if id % 2 == 0 {
            near_sp += sp;
            near_rp += rp;
        } else {
            far_sp += sp;
        }
    }
    assert_eq!(near_sp, r.traffic.sent, "{usage:?}");
    assert_eq!(near_rp, r.traffic.delivered, "{usage:?}");
    assert_eq!(far_sp, r.traffic.delivered, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_one_way_pairs_match_coturn_counts() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    let extra = ["--secret", &c.secret, "--one-way", "--flows", "3", "--rate", "200", "--count", "200"];
    let r = load(&c.addr(), &extra).await;
    assert_consistent(&r);
    assert_eq!((r.peer.as_str(), r.allocations.succeeded), ("one-way", 6), "{r}");
    assert_eq!((r.traffic.sent, r.traffic.delivered), (600, 600), "{r}");
    // coturn's own counts: the near allocations (even ids) sent every packet to their peers and
    // got nothing back; the far ones received every packet from their peers and sent nothing.
    let usage = c.peer_usage(6);
    let sum = |far: bool, f: fn(&(u64, u64)) -> u64| -> u64 {
        usage.iter().filter(|(id, _)| (*id % 2 == 1) == far).map(|(_, u)| f(u)).sum()
    };
    assert_eq!((sum(false, |u| u.1), sum(false, |u| u.0)), (600, 0), "near sp, rp: {usage:?}");
    assert_eq!((sum(true, |u| u.0), sum(true, |u| u.1)), (600, 0), "far rp, sp: {usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_send_mode_with_json_report() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    let json = c.dir.join("report.json");
    let json_s = json.display().to_string();
    let r = load(
        &c.addr(),
        &[
            "--secret",
            &c.secret,
            "--mode",
            "send",
            "--flows",
            "2",
            "--rate",
            "300",
            "--count",
            "200",
            "--json",
            &json_s,
            "--max-loss",
            "0",
            "--max-p99",
            "500",
        ],
    )
    .await;
    assert_consistent(&r);
    assert_eq!(r.traffic.sent, 400, "--count is per flow");
    assert_eq!(r.traffic.delivered, 400);
    assert!(r.verdict.passed, "{:?}", r.verdict);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["mode"], "send");
    assert_eq!(v["traffic"]["sent"], 400);
    assert_eq!(v["verdict"]["passed"], true);
    for k in ["min", "p50", "p90", "p99", "max"] {
        assert!(v["traffic"]["rtt_us"][k].is_u64(), "{k}");
    }
    let usage = c.peer_usage(4);
    let near_sp: u64 = usage.iter().filter(|(id, _)| *id % 2 == 0).map(|(_, u)| u.1).sum();
    assert_eq!(near_sp, 400, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_channel_and_send_modes() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    for mode in ["channel", "send"] {
        let user = format!("tcp-{mode}");
        let r = load(
            &c.addr(),
            &[
                "--secret",
                &c.secret,
                "--user",
                &user,
                "--transport",
                "tcp",
                "--mode",
                mode,
                "--flows",
                "2",
                "--payload",
                "101",
                "--rate",
                "200",
                "--duration",
                "1",
            ],
        )
        .await;
        assert_consistent(&r);
        assert_eq!(r.flows_established, 2, "{mode}");
        assert_eq!(r.traffic.loss_pct, 0.0, "{mode}: {r}");
        assert_coturn_counts(&c, &user, &r, true);
    }
    // The tool's own echo peer instead of allocation pairs.
    let r = load(
        &c.addr(),
        &[
            "--secret",
            &c.secret,
            "--user",
            "tcp-echo",
            "--transport",
            "tcp",
            "--echo-peer",
            "--flows",
            "2",
            "--rate",
            "100",
            "--duration",
            "1",
        ],
    )
    .await;
    assert_consistent(&r);
    assert_eq!(r.allocations.succeeded, 2, "one allocation per flow");
    assert_eq!(r.traffic.loss_pct, 0.0, "{r}");
    assert_coturn_counts(&c, "tcp-echo", &r, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_insecure_and_with_ca() {
    let Some(c) = Coturn::start(true) else { return };
    let server = format!("127.0.0.1:{}", c.tls_port);
    let ca = c.dir.join("cert.pem").display().to_string();
    for (user, trust) in [("tls-insecure", &["--insecure"][..]), ("tls-ca", &["--ca", &ca, "--sni", "localhost"][..])] {
        let mut extra = vec!["--secret", &c.secret, "--user", user, "--transport", "tls", "--flows", "2"];
        extra.extend_from_slice(&["--rate", "100", "--duration", "1"]);
        extra.extend_from_slice(trust);
        let r = load(&server, &extra).await;
        assert_consistent(&r);
        assert_eq!(r.flows_established, 2, "{trust:?}: {r}");
        assert_eq!(r.traffic.loss_pct, 0.0, "{r}");
        assert_coturn_counts(&c, user, &r, true);
    }
    // Verification against the web PKI roots fails: the certificate is self-signed.
    let r = load(&server, &["--secret", &c.secret, "--transport", "tls", "--duration", "1"]).await;
    assert_eq!(r.flows_established, 0);
    assert!(r.errors.contains_key("tls"), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_storm_counts_and_wrong_password() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    // Unauthenticated Allocates are all answered 401. First, before this coturn has seen any
    // allocation: run after the storm below, one worker's socket was once answered 437 for all
    // its 50 Allocates (a loaded suite run): coturn keeps its sessions by 5-tuple, and a socket
    // the kernel gives a port one of the storm's released clients had used can meet that
    // client's session. The count must not depend on port reuse.
    let r =
        load(&c.addr(), &["--scenario", "allocations", "--unauthenticated", "--count", "100", "--concurrency", "2"])
            .await;
    assert_eq!(r.allocations.attempted, 100);
    assert_eq!(r.errors.get("401"), Some(&100), "{:?}", r.errors);
    let r =
        load(&c.addr(), &["--secret", &c.secret, "--scenario", "allocations", "--count", "60", "--concurrency", "6"])
            .await;
    assert_eq!(r.allocations.attempted, 60, "{r}");
    assert_eq!(r.allocations.succeeded, 60, "{r}");
    assert_eq!(r.allocations.failed, 0);
    assert_eq!(r.allocations.time_us.count, 60);
    assert!(r.allocations.per_sec > 0.0);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.verdict.passed);
    // TCP, holding the allocations before releasing them.
    let r = load(
        &c.addr(),
        &["--secret", &c.secret, "--scenario", "allocations", "--transport", "tcp", "--count", "20", "--hold", "0.2"],
    )
    .await;
    assert_eq!(r.allocations.succeeded, 20, "{r}");

    // A wrong password: every allocation fails with 401.
    let user = format!("{}:someone", unix_now() + 3600);
    let r = load(&c.addr(), &["--user", &user, "--password", "wrong", "--flows", "3", "--duration", "1"]).await;
    assert_eq!(r.flows_established, 0);
    assert_eq!(r.errors.get("401"), Some(&3), "{:?}", r.errors);
    assert_eq!(r.allocations.failed, 3);
    assert!(!r.verdict.passed);
    let r =
        load(&c.addr(), &["--user", &user, "--password", "wrong", "--scenario", "allocations", "--count", "10"]).await;
    assert_eq!(r.errors.get("401"), Some(&10), "{:?}", r.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramp_reports_steps() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    let r = load(
        &c.addr(),
        &[
            "--secret",
            &c.secret,
            "--scenario",
            "ramp",
            "--rate",
            "100",
            "--ramp-step",
            "100",
            "--ramp-steps",
            "3",
            "--duration",
            "0.4",
            "--drain-ms",
            "300",
        ],
    )
    .await;
    let ramp = r.ramp.as_ref().expect("ramp figures");
    assert_eq!(ramp.steps.len(), 3, "{r}");
    assert_eq!(ramp.first_lossy_step, None);
    let rates: Vec<f64> = ramp.steps.iter().map(|s| s.rate_per_flow_pps).collect();
    assert_eq!(rates, vec![100.0, 200.0, 300.0]);
    for s in &ramp.steps {
        assert!(s.traffic.delivered <= s.traffic.sent);
    }
    assert!(ramp.steps[2].traffic.sent > ramp.steps[0].traffic.sent);
    assert_eq!(ramp.max_loss_free_pps, Some(ramp.steps[2].traffic.offered_pps));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_cloudflare_shaped_issuer() {
    let Some(c) = Coturn::start(false) else {
        return;
    };
    // A one-shot issuer on loopback that checks the path and bearer token and answers with a
    // credential minted from coturn's secret.
    let ring = turnkey_auth::SecretRing::new(vec![turnkey_auth::Secret::new(c.secret.as_bytes())]).unwrap();
    let cred = ring.mint("cf-user", turnkey_auth::UnixTime(unix_now()), 600).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/turn", listener.local_addr().unwrap());
    let issuer = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&req).contains("\"ttl\"") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            req.extend_from_slice(&buf[..n]);
        }
        let body = format!(
            r#"{{"iceServers":[{{"urls":["stun:x:3478"]}},{{"urls":["turn:x:3478?transport=udp"],"username":"{}","credential":"{}"}}]}}"#,
            cred.username, cred.password
        );
        let resp = format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    let token = c.dir.join("token");
    std::fs::write(&token, "tok-123\n").unwrap();
    let token_s = token.display().to_string();
    let r = load(
        &c.addr(),
        &["--issuer", &url, "--key-id", "abc", "--token-file", &token_s, "--scenario", "allocations", "--count", "3"],
    )
    .await;
    assert_eq!(r.allocations.succeeded, 3, "{r}");
    let req = issuer.await.unwrap();
    assert!(req.starts_with("POST /v1/turn/keys/abc/credentials/generate-ice-servers HTTP/1.1"), "{req}");
    assert!(req.to_ascii_lowercase().contains("authorization: bearer tok-123"), "{req}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A coturn `turnserver` on loopback, killed on drop.
struct Coturn {
    child: Child,
    port: u16,
    tls_port: u16,
    secret: String,
    dir: PathBuf,
}

impl Coturn {
    /// Starts coturn, or returns `None` (after saying why) when it is not installed and this is
    /// not CI. In CI a missing `turnserver` fails the test.
    fn start(tls: bool) -> Option<Self> {
        if Command::new("turnserver").arg("--version").output().is_err() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("turnserver (Debian package coturn) is required in CI");
            }
            eprintln!("SKIPPED: turnserver not installed (apt-get install coturn)");
            return None;
        }
        let port = turnkey_e2e::fixed_port();
        let tls_port = turnkey_e2e::fixed_port();
        let secret = format!("secret-{:016x}", rand::random::<u64>());
        let dir = std::env::temp_dir().join(format!("turnkey-load-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Relay ports above the ephemeral range (which ends at 60999), apart from the coturn of
        // tests/tests/issuer_e2e.rs (61000-61999).
        let min_port = 62_000 + (rand::random::<u16>() % 10) * 100;
        let mut cmd = Command::new("turnserver");
        cmd.args(["-n", "-v", "--simple-log", "--log-file=stdout", "--no-cli", "--no-dtls"])
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--allow-loopback-peers"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--min-port={min_port}"))
            .arg(format!("--max-port={}", min_port + 99))
            .args(["--use-auth-secret", "--realm=test"])
            .arg(format!("--static-auth-secret={secret}"))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .arg(format!("--pidfile={}", dir.join("pid").display()));
        if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
            cmd.arg(format!("--tls-listening-port={tls_port}"))
                .arg(format!("--cert={}", dir.join("cert.pem").display()))
                .arg(format!("--pkey={}", dir.join("key.pem").display()));
        } else {
            cmd.arg("--no-tls");
        }
        let log = std::fs::File::create(dir.join("turnserver.log")).unwrap();
        let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).stdin(Stdio::null()).spawn().unwrap();
        let c = Self { child, port, tls_port, secret, dir };
        let wait_for = if tls { tls_port } else { port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", wait_for)).is_err() {
            assert!(Instant::now() < deadline, "turnserver did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(c)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Waits for `sessions` "peer usage" lines (logged when allocations end) and returns, per
    /// allocation number `n` (user `...:turnkey-load-<n>`), (packets from peers, packets to peers).
    fn peer_usage(&self, sessions: usize) -> BTreeMap<u64, (u64, u64)> {
        self.peer_usage_of("turnkey-load", sessions)
    }

    /// Like [`Coturn::peer_usage`] for the allocations minted with `--user <user>`.
    fn peer_usage_of(&self, user: &str, sessions: usize) -> BTreeMap<u64, (u64, u64)> {
        let prefix = format!(":{user}-");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut out = BTreeMap::new();
            for line in self.log().lines().filter(|l| l.contains("peer usage:")) {
                let field = |name: &str| -> Option<&str> {
                    let start = line.find(name)? + name.len();
                    let rest = &line[start..];
                    Some(&rest[..rest.find([',', '>']).unwrap_or(rest.len())])
                };
                // The last line may be half written: skip what does not parse.
                let num = |name: &str| field(name).and_then(|s| s.trim().parse::<u64>().ok());
                if let (Some(id), Some(rp), Some(sp), Some(_)) = (num(&prefix), num("rp="), num("sp="), num("sb=")) {
                    out.insert(id, (rp, sp));
                }
            }
            if out.len() >= sessions || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
