//! Fleet processes for end-to-end tests: `turnkey serve` relays (`--http off`) and `turnkey
//! issuer` processes joined to one redis-server, all on loopback, sharing one secret.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{bin, http, Turnkey};

/// The TURN REST secret every process of a test fleet shares.
pub const SECRET: &str = "fleet-e2e-shared-secret";

/// Starts a relay: UDP and TCP on 127.0.0.1 port 0, no TLS, no issuer, metrics on port 0,
/// relaying to 127.0.0.1 (the tests' echo peers), joined to `redis`.
pub fn relay(redis: &str, node: &str, region: Option<&str>, extra: &[&str]) -> Turnkey {
    relay_on(redis, node, region, "off", extra)
}

/// [`relay`] with a TLS listener on 127.0.0.1 port 0 too (`addr("tls")`, the data directory's
/// generated self-signed certificate).
pub fn relay_with_tls(redis: &str, node: &str, region: Option<&str>, extra: &[&str]) -> Turnkey {
    relay_on(redis, node, region, "127.0.0.1:0", extra)
}

fn relay_on(redis: &str, node: &str, region: Option<&str>, tls: &str, extra: &[&str]) -> Turnkey {
    let mut args: Vec<String> =
        ["serve", "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--tls", tls, "--http", "off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(
        ["--metrics", "127.0.0.1:0", "--relay-ip", "127.0.0.1", "--public-host", "127.0.0.1", "--shards", "1"]
            .map(String::from),
    );
    args.extend(["--allow-peer", "127.0.0.1"].map(String::from));
    spawn(args, redis, node, region, extra, "turnkey listening ")
}

/// Starts an issuer on 127.0.0.1 port 0 (`addr("http")`), metrics on port 0, joined to `redis`.
pub fn issuer(redis: &str, node: &str, region: Option<&str>, extra: &[&str]) -> Turnkey {
    let args = ["issuer", "--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0"].map(String::from).to_vec();
    spawn(args, redis, node, region, extra, "turnkey issuer listening ")
}

fn spawn(mut args: Vec<String>, redis: &str, node: &str, region: Option<&str>, extra: &[&str], ready: &str) -> Turnkey {
    let data_dir = tempfile::tempdir().unwrap();
    args.extend(["--redis", redis, "--node-id", node, "--secret", SECRET].map(String::from));
    if let Some(r) = region {
        args.extend(["--region".to_owned(), r.to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut child = Command::new(bin())
        .args(&args)
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("TURNKEY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnkey");
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, erx) = mpsc::channel();
    let tag = node.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            let _ = etx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut addrs = HashMap::new();
    while Instant::now() < deadline && addrs.is_empty() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.starts_with(ready) => {
                for kv in line[ready.len()..].split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        addrs.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    assert!(!addrs.is_empty(), "{node} did not report its listeners; status {:?}", child.try_wait());
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Turnkey { child, data_dir, addrs, stderr_lines: erx }
}

/// `turnkey keys create --redis URL [extra]`: the new key's id and token.
pub fn create_key(redis: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new(bin()).args(["keys", "create", "--redis", redis]).args(extra).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

/// `turnkey keys delete ID --redis URL`.
pub fn delete_key(redis: &str, id: &str) {
    let out = Command::new(bin()).args(["keys", "delete", id, "--redis", redis]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `POST .../generate-ice-servers[?query]` on an issuer: status and body.
pub fn generate(issuer: SocketAddr, id: &str, token: &str, query: &str) -> (u16, serde_json::Value) {
    let path = format!("/v1/turn/keys/{id}/credentials/generate-ice-servers{query}");
    let bearer = format!("Bearer {token}");
    let (status, body) = http(
        issuer,
        "POST",
        &path,
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        Some("{\"ttl\": 600}"),
    );
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// The TURN URLs and credential of an array-shape answer.
pub fn turn_entry(v: &serde_json::Value) -> (Vec<String>, String, String) {
    let e = &v["iceServers"][1];
    let urls = e["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    (urls, e["username"].as_str().unwrap().to_owned(), e["credential"].as_str().unwrap().to_owned())
}

/// The `host:port` of every `turn:...?transport=udp` URL, in answer order.
pub fn udp_servers(urls: &[String]) -> Vec<String> {
    urls.iter().filter_map(|u| u.strip_prefix("turn:")?.strip_suffix("?transport=udp").map(str::to_owned)).collect()
}

/// Polls `f` every 100 ms until it is true or `timeout` passes; returns the time it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
