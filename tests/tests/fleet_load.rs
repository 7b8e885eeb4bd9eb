//! `turnkey load` against a fleet, end to end: a real redis-server, three relays (`turnkey serve
//! --redis`) and one issuer (`turnkey issuer --redis`) as separate processes on loopback.
//! `turnkey load --issuer URL` without `--server` asks the issuer for ICE servers before every
//! allocation, as apps do, and allocates at the first TURN URL of its transport: the storm is
//! spread over the three relays, and the report's per-server counts must equal what each relay
//! counted in its own Prometheus metrics (over UDP, TCP and TLS).

// Test code: a missing field is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use turnkey_e2e::fleet::{create_key, issuer, relay_with_tls, wait_until};
use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_e2e::{bin, http, run_with_timeout, Turnkey};

/// Allocations of one storm.
const COUNT: u64 = 300;
/// Allocations of the storm over TLS.
const TLS_COUNT: u64 = 90;

/// Successful Allocates a relay counted.
fn successes(r: &Turnkey) -> u64 {
    r.metric("turnkey_relay_allocation_attempts_total", &["result=\"success\""]) as u64
}

/// Relays listed healthy by `GET /v1/fleet`.
fn healthy(iss: &Turnkey, token: &str) -> usize {
    let bearer = format!("Bearer {token}");
    let (status, body) = http(iss.addr("http"), "GET", "/v1/fleet", &[("Authorization", &bearer)], None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["relays"].as_array().unwrap().iter().filter(|r| r["healthy"] == true).count()
}

/// Runs `turnkey load --issuer ... EXTRA` (no `--server`); returns the exit code and the JSON
/// report.
fn load_status(iss: &Turnkey, id: &str, token_file: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let url = format!("http://{}/v1/turn", iss.addr("http"));
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--issuer", &url, "--key-id", id, "--token-file"])
        .arg(token_file)
        .args(["--quiet", "--json"])
        .arg(&json)
        .args(extra);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(90));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("[turnkey load] {text}");
    assert_ne!(out.status.code(), Some(2), "turnkey load could not start: {text}");
    (out.status.code().unwrap_or(-1), serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap())
}

/// [`load_status`] of a run that must pass.
fn load(iss: &Turnkey, id: &str, token_file: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let (code, r) = load_status(iss, id, token_file, extra);
    assert_eq!(code, 0, "turnkey load failed: {r}");
    r
}

#[test]
fn load_through_the_issuer_spreads_a_storm_over_three_relays_and_counts_match_each_relay() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    // Every issued credential has the key's userid: let one user hold the whole storm; over TCP
    // the storm holds all its connections from 127.0.0.1 at once.
    let quota = ["--max-allocations-per-user", "10000", "--max-connections-per-ip", "1000"];
    let relays = ["r1", "r2", "r3"].map(|node| relay_with_tls(&url, node, None, &quota));
    let (id, token) = create_key(&url, &[]);
    let iss = issuer(&url, "issuer-a", None, &[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    assert!(wait_until(Duration::from_secs(10), || healthy(&iss, &token) == 3).is_some(), "three relays listed");

    // TLS: `turns:` URLs, fewer allocations (each is a TLS handshake in a debug build).
    for (transport, count) in [("udp", COUNT), ("tcp", COUNT), ("tls", TLS_COUNT)] {
        let by_addr: BTreeMap<String, &Turnkey> = relays.iter().map(|r| (r.addr(transport).to_string(), r)).collect();
        let before: BTreeMap<String, u64> = by_addr.iter().map(|(a, r)| (a.clone(), successes(r))).collect();
        let n = count.to_string();
        let mut args = vec!["--scenario", "allocations", "--transport", transport, "--count", &n];
        args.extend(["--concurrency", "16", "--hold", "2", "--insecure"]);
        let r = load(&iss, &id, &token_file, &args);
        let a = &r["allocations"];
        assert_eq!((a["attempted"].as_u64(), a["succeeded"].as_u64()), (Some(count), Some(count)), "{r}");
        assert_eq!(r["errors"], serde_json::json!({}), "{r}");
        let i = &r["issuer"];
        assert_eq!(
            (i["fetches"].as_u64(), i["failed"].as_u64()),
            (Some(count), Some(0)),
            "one answer per allocation: {r}"
        );
        assert!(i["p50_ms"].as_f64().unwrap() > 0.0 && i["p99_ms"].as_f64() >= i["p50_ms"].as_f64(), "{i}");

        // Every relay got a share, and the shares add up.
        let servers = r["servers"].as_array().unwrap();
        let named: BTreeSet<String> = servers.iter().map(|s| s["server"].as_str().unwrap().to_owned()).collect();
        assert_eq!(named, by_addr.keys().cloned().collect(), "exactly the three relays' {transport} addresses: {r}");
        let mut sum = 0;
        for s in servers {
            let ok = s["succeeded"].as_u64().unwrap();
            assert_eq!((s["attempted"].as_u64(), s["failed"].as_u64()), (Some(ok), Some(0)), "{s}");
            assert!(ok * 100 >= count * 15, "every relay gets at least 15 % of the storm: {s}");
            assert!(s["p50_ms"].as_f64().unwrap() > 0.0, "{s}");
            sum += ok;
        }
        assert_eq!(sum, count, "{r}");
        assert!(r["server"].as_str().unwrap().split(',').count() == 3, "{r}");

        // Each relay's own count of successful Allocates equals the report's figure for it.
        let want: BTreeMap<String, u64> = servers
            .iter()
            .map(|s| (s["server"].as_str().unwrap().to_owned(), s["succeeded"].as_u64().unwrap()))
            .collect();
        let counted = || -> BTreeMap<String, u64> {
            by_addr.iter().map(|(addr, relay)| (addr.clone(), successes(relay) - before[addr])).collect()
        };
        let same = wait_until(Duration::from_secs(5), || counted() == want);
        assert!(same.is_some(), "{transport}: relays counted {:?}, the report says {want:?}", counted());
        eprintln!("{transport}: per relay {want:?}, issuer p50 {} ms p99 {} ms", i["p50_ms"], i["p99_ms"]);
    }

    // Relay scenario: one issuer answer per flow, both allocations of a flow on its relay.
    let r = load(&iss, &id, &token_file, &["--flows", "6", "--count", "20", "--rate", "100", "--max-loss", "0"]);
    assert_eq!((r["flows_established"].as_u64(), r["traffic"]["delivered"].as_u64()), (Some(6), Some(120)), "{r}");
    assert_eq!(r["issuer"]["fetches"], 6, "{r}");
    let per_server: Vec<u64> =
        r["servers"].as_array().unwrap().iter().map(|s| s["succeeded"].as_u64().unwrap()).collect();
    assert_eq!(per_server.iter().sum::<u64>(), 12, "{r}");
    assert!(per_server.iter().all(|n| n % 2 == 0), "a flow's two allocations share a relay: {r}");

    // An issuer that refuses (a wrong token): every allocation fails as "issuer", no server is
    // tried, the run fails its verdict (exit 1) instead of crashing.
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "not-the-token\n").unwrap();
    let (code, r) = load_status(&iss, &id, &bad, &["--scenario", "allocations", "--count", "5", "--concurrency", "2"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["errors"], serde_json::json!({"issuer": 5}), "{r}");
    assert!(r["first_errors"]["issuer"].as_str().unwrap().contains("HTTP 401"), "{r}");
    assert_eq!((r["issuer"]["fetches"].as_u64(), r["issuer"]["failed"].as_u64()), (Some(5), Some(5)), "{r}");
    assert_eq!((r["allocations"]["failed"].as_u64(), r["servers"].as_array().map(Vec::len)), (Some(5), Some(0)), "{r}");
}
