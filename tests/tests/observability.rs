//! Observability end to end: a real Prometheus scrapes turnkey while aioice relays known traffic;
//! promtool checks the shipped rules; the dashboard and rules name only exported metrics; usage
//! survives restarts and crashes; a monthly cap reached by relayed traffic stops issuing.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use turnkey_e2e::{aioice, http, require, root, run_with_timeout, Turnkey};

/// A credential from the app endpoint: minted for the default TURN key, so usage is billed to it.
fn app_credentials(tk: &Turnkey) -> (String, String) {
    let (status, body) = http(tk.addr("http"), "GET", "/api/turn-credentials", &[], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let turn = &v["iceServers"][1];
    (turn["username"].as_str().unwrap().to_owned(), turn["credential"].as_str().unwrap().to_owned())
}

fn relay(tk: &Turnkey, user: &str, pass: &str, count: u32, size: u32) -> Value {
    let server = tk.udp().to_string();
    let (c, s) = (count.to_string(), size.to_string());
    let r = aioice(&["relay", "--server", &server, "--user", user, "--password", pass, "--count", &c, "--size", &s]);
    assert_eq!(r["received"], count, "{r}\ndrops: {}", tk.drops());
    r
}

/// A config file with `[usage]` settings (kept alive by the returned TempDir).
fn usage_config(body: &str) -> (tempfile::TempDir, PathBuf) {
    turnkey_e2e::config_file(&format!("[usage]\n{body}"))
}

/// Sets `monthly_bandwidth_bytes` in the default key's file (as an operator would).
fn set_default_cap(tk: &Turnkey, cap: u64) -> String {
    let (id, _) = tk.default_key();
    let path = tk.data_dir.path().join("keys").join(format!("{id}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["monthly_bandwidth_bytes"] = serde_json::json!(cap);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    // The relay side picks caps up at its next flush tick.
    wait_for("the cap to be loaded", Duration::from_secs(15), || {
        tk.metric("turnkey_usage_monthly_cap_bytes", &[&id]) == cap as f64
    });
    id
}

/// Total bytes of `key` in `<data_dir>/usage.json` (0 when absent).
fn persisted(data_dir: &Path, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(data_dir.join("usage.json")) else { return 0 };
    let v: Value = serde_json::from_str(&text).unwrap();
    let k = &v["keys"][key];
    k["client_to_peer"].as_u64().unwrap_or(0) + k["peer_to_client"].as_u64().unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: turnkey\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", turnkey_e2e::fixed_port()).parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        let p = Self { child, addr, _dir: dir };
        wait_for("prometheus to be ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && http(addr, "GET", "/-/ready", &[], None).0 == 200
        });
        p
    }

    /// The value of an instant query that returns one sample, if any.
    fn query(&self, q: &str) -> Option<f64> {
        let (status, body) = http(self.addr, "GET", &format!("/api/v1/query?query={}", urlencode(q)), &[], None);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let result = v["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_sees_the_relayed_bytes_aioice_sent() {
    if !require("aioice") || !require("prometheus") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let prom = Prometheus::start(tk.addr("metrics"));
    let (key, _) = tk.default_key();
    let (user, pass) = app_credentials(&tk);
    let (count, size) = (40u32, 250u32);
    let r = relay(&tk, &user, &pass, count, size);
    let sent = f64::from(count * size);
    assert_eq!(r["payload_bytes"], count * size, "{r}");
    wait_for("prometheus to scrape turnkey", Duration::from_secs(30), || {
        prom.query("up{job=\"turnkey\"}") == Some(1.0)
            && prom.query("sum(turnkey_relay_relayed_bytes_total{direction=\"peer_to_client\"})") == Some(sent)
    });
    // Payload bytes, both directions: what aioice sent and what came back (no framing counted;
    // allow the ChannelData header per packet as the most the overhead could be).
    let overhead = f64::from(count * 4);
    for dir in ["client_to_peer", "peer_to_client"] {
        let v = prom
            .query(&format!("sum(turnkey_relay_relayed_bytes_total{{direction=\"{dir}\",transport=\"udp\"}})"))
            .unwrap();
        assert!(v >= sent && v <= sent + overhead, "{dir}: {v} vs {sent}");
        let p = prom.query(&format!("sum(turnkey_relay_relayed_packets_total{{direction=\"{dir}\"}})")).unwrap();
        assert_eq!(p, f64::from(count), "{dir} packets");
    }
    wait_for("per-key usage in prometheus", Duration::from_secs(20), || {
        prom.query(&format!("sum(turnkey_usage_relayed_bytes_total{{key=\"{key}\"}})")) == Some(2.0 * sent)
    });
    assert_eq!(prom.query(&format!("turnkey_usage_period_bytes{{key=\"{key}\"}}")), Some(2.0 * sent));
    assert_eq!(prom.query("turnkey_build_info"), Some(1.0));
    assert!(prom.query("process_resident_memory_bytes{job=\"turnkey\"}").is_some_and(|v| v > 0.0));
}

#[test]
fn promtool_accepts_the_shipped_config_rules_and_rule_tests() {
    if !require("promtool") {
        return;
    }
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "config", "prometheus.yml"][..],
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = run_with_timeout(Command::new("promtool").args(args).current_dir(&dir), Duration::from_secs(60));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
    }
    // Every alert in alerts.yml has a test in alerts_test.yml.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 7, "{alerts:?}");
    for a in alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "alert {a} has no promtool test");
    }
}

/// Metric names (`turnkey_*`, `process_*`) in a PromQL-bearing text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = text[i..].starts_with("turnkey_") || text[i..].starts_with("process_");
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if starts && boundary {
            let end = text[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(text.len(), |e| i + e);
            out.push(text[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn dashboard_and_alert_rules_reference_only_exported_metrics() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    set_default_cap(&tk, 1_000_000_000);
    // Traffic billed to the key (usage series), an authentication failure and a revocation path.
    let (user, pass) = app_credentials(&tk);
    relay(&tk, &user, &pass, 5, 100);
    let server = tk.udp().to_string();
    aioice(&["authfail", "--server", &server, "--user", &user, "--password", "wrong"]);
    // A TCP connection that sends garbage and is closed: creates the connection-close series.
    {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(tk.tcp()).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let _ = std::io::Read::read(&mut c, &mut [0u8; 64]);
    }
    let exported = || {
        let text = tk.metrics();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
            .collect::<std::collections::BTreeSet<String>>()
    };
    let mut names = metric_names(&std::fs::read_to_string(root().join("deploy/grafana/turnkey.json")).unwrap());
    names.extend(metric_names(&std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap()));
    names.sort();
    names.dedup();
    assert!(names.len() >= 25, "{names:?}");
    wait_for("usage, cap and connection-close series", Duration::from_secs(20), || {
        let e = exported();
        e.contains("turnkey_usage_monthly_cap_bytes")
            && e.contains("turnkey_usage_period_bytes")
            && e.contains("turnkey_relay_connections_closed_total")
    });
    let have = exported();
    let missing: Vec<&String> = names.iter().filter(|n| !have.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "referenced but not exported: {missing:?}\nexported: {have:?}");
}

#[test]
fn usage_survives_a_clean_restart_and_a_crash() {
    if !require("aioice") {
        return;
    }
    let (_cfg_dir, cfg) = usage_config("flush_interval = 1\n");
    let cfg = cfg.to_str().unwrap().to_owned();
    let args = ["--allow-peer", "127.0.0.1", "--drain-grace", "1", "--config", cfg.as_str()];
    let mut tk = Turnkey::serve(&args);
    let (key, _) = tk.default_key();
    let (user, pass) = app_credentials(&tk);
    relay(&tk, &user, &pass, 20, 100);
    // SIGTERM right away: the shutdown flush must not lose a byte.
    let st = tk.signal_and_wait("TERM", Duration::from_secs(15)).expect("exits");
    assert!(st.success(), "{st:?}");
    assert_eq!(persisted(tk.data_dir.path(), &key), 4000, "clean stop loses nothing");

    let dir = std::mem::replace(&mut tk.data_dir, tempfile::tempdir().unwrap());
    let mut tk = Turnkey::serve_in(dir, &args);
    assert_eq!(tk.metric("turnkey_usage_period_bytes", &[&key]), 4000.0, "restart restores the totals");
    let (user, pass) = app_credentials(&tk);
    relay(&tk, &user, &pass, 10, 100);
    // Wait past one sweep (500 ms) and one flush interval (1 s), then crash.
    std::thread::sleep(Duration::from_millis(2500));
    tk.signal_and_wait("KILL", Duration::from_secs(10)).expect("killed");
    let after_crash = persisted(tk.data_dir.path(), &key);
    assert_eq!(after_crash, 6000, "a crash loses at most the last flush interval");

    let dir = std::mem::replace(&mut tk.data_dir, tempfile::tempdir().unwrap());
    let tk = Turnkey::serve_in(dir, &args);
    assert_eq!(tk.metric("turnkey_usage_period_bytes", &[&key]), 6000.0);
    let (status, body) = http(tk.addr("http"), "GET", "/api/bandwidth-status", &[], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bandwidthUsedGB"], "0.00");
    assert!(v["resetDate"].as_str().unwrap().ends_with("T00:00:00.000Z"), "{v}");
}

#[test]
fn a_monthly_cap_reached_by_relayed_traffic_stops_issuing_and_relaying() {
    if !require("aioice") {
        return;
    }
    let (_cfg_dir, cfg) = usage_config("flush_interval = 1\nenforce_on_relay = true\n");
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--config", cfg.to_str().unwrap()]);
    let key = set_default_cap(&tk, 3000);
    let (user, pass) = app_credentials(&tk);
    let (status, body) = http(tk.addr("http"), "GET", "/api/bandwidth-status", &[], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "OK", "{v}");
    assert_eq!(v["bandwidthLimitGB"], 3e-6, "{v}");
    // 20 x 100 bytes each way = 4000 bytes relayed: past the 3000-byte cap.
    relay(&tk, &user, &pass, 20, 100);
    wait_for("the cap to be reached", Duration::from_secs(10), || {
        let (_, body) = http(tk.addr("http"), "GET", "/api/bandwidth-status", &[], None);
        body.contains("LIMIT_REACHED")
    });
    let (status, body) = http(tk.addr("http"), "GET", "/api/turn-credentials", &[], None);
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::json!({"error": "Bandwidth limit reached", "fallback": true}));
    let (status, _) = http(
        tk.addr("http"),
        "POST",
        "/api/turn/credentials",
        &[("Content-Type", "application/json")],
        Some("{\"ttl\": 600}"),
    );
    assert_eq!(status, 429);
    // enforce_on_relay: the relay refuses new allocations for the key (486).
    let server = tk.udp().to_string();
    let r = aioice(&["authfail", "--server", &server, "--user", &user, "--password", &pass]);
    assert_eq!(r["error"], 486, "{r}");
    assert!(tk.metric("turnkey_usage_period_bytes", &[&key]) >= 3000.0);
}
