//! Fleet mode behind Redis Sentinel, end to end: Debian's `redis-server` and `redis-sentinel`
//! (one primary, one replica, three sentinels), two relays and two issuers (the real binary,
//! `--redis redis+sentinel://...`), aioice calls running. The primary is SIGKILLed and the
//! sentinels promote the replica: the calls never stop, a revocation issued during the failover
//! (503 until the new primary answers, then 204) ends its allocation, the usage totals in Redis
//! equal the relays' own counters, `turnkey fleet` lists the relays from the new primary, and a
//! key created after the failover works on both issuers.

// Test code: a missing field is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use turnkey_e2e::fleet::{create_key, generate, issuer, relay, turn_entry, wait_until};
use turnkey_e2e::sentinel::SentinelSet;
use turnkey_e2e::{aioice, aioice_revoke, metric_sum, require, Turnkey};

/// A credential from `iss` whose answer names `url` (one relay per answer; issuers spread
/// equally loaded relays, so one of the next answers names it).
fn credential_on(iss: &Turnkey, id: &str, token: &str, url: &str) -> (String, String) {
    for _ in 0..50 {
        let (status, v) = generate(iss.addr("http"), id, token, "");
        assert_eq!(status, 201, "{v}");
        let (urls, user, pass) = turn_entry(&v);
        if urls.iter().any(|u| u == url) {
            return (user, pass);
        }
    }
    panic!("{url} never handed out in 50 answers");
}

/// The bytes Redis (the current primary) holds for `key`, every period, both directions.
fn redis_usage(set: &SentinelSet, key: &str) -> Option<u64> {
    let primary = set.primary()?;
    let hashes = primary.cli(&["KEYS", &format!("turnkey:usage:*:{key}")])?;
    let mut total = 0;
    for h in hashes.lines().map(str::trim).filter(|h| !h.is_empty()) {
        for dir in ["c2p", "p2c"] {
            total += primary.cli(&["HGET", h, dir])?.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Some(total)
}

#[test]
fn a_sentinel_failover_loses_no_call_no_usage_and_no_revocation() {
    if !require("aioice") {
        return;
    }
    let Some(mut set) = SentinelSet::start(Some("fleet-pw")) else { return };
    let url = set.url();
    let r1 = relay(&url, "r1", None, &[]);
    let r2 = relay(&url, "r2", None, &[]);
    let (id, token) = create_key(&url, &[]);
    let a = issuer(&url, "issuer-a", None, &["--relays-per-answer", "1"]);
    let b = issuer(&url, "issuer-b", None, &["--relays-per-answer", "1"]);
    for iss in [&a, &b] {
        let ok = wait_until(Duration::from_secs(10), || generate(iss.addr("http"), &id, &token, "").0 == 201);
        assert!(ok.is_some(), "the key works on every issuer");
    }

    // Two calls that last through the failover (a message every 100 ms for 15 s, each echo
    // awaited): UDP through r1 as issuer A hands it out, TCP through r2 as issuer B does.
    let calls: Vec<_> = [(&a, "udp", &r1), (&b, "tcp", &r2)]
        .into_iter()
        .map(|(iss, transport, target)| {
            let server = target.addr(transport).to_string();
            let (user, pass) = credential_on(iss, &id, &token, &format!("turn:{server}?transport={transport}"));
            std::thread::spawn(move || {
                let args = ["relay", "--server", &server, "--transport", transport, "--user", &user];
                let mut args = args.to_vec();
                args.extend(["--password", &pass, "--count", "150", "--interval", "0.1"]);
                (server.clone(), aioice(&args))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    // SIGKILL the primary while the calls run.
    let old = set.primary_port().unwrap();
    let killed = Instant::now();
    let primary = set.servers.iter_mut().find(|s| s.port() == old).unwrap();
    primary.kill();

    // During the failover: a call on r2 (credential from issuer B) is revoked through issuer A;
    // the issuer answers 503 until the new primary takes the write, and the script retries.
    let on_r2 = r2.udp().to_string();
    let (user, pass) = credential_on(&b, &id, &token, &format!("turn:{on_r2}?transport=udp"));
    let revoke_url = format!("http://{}/v1/turn/keys/{id}/credentials/{user}/revoke", a.addr("http"));
    let revoker =
        std::thread::spawn(move || aioice_revoke(&on_r2, &user, &pass, &revoke_url, &token, &["--revoke-retry", "30"]));

    let promoted = set.wait_failover(old, Duration::from_secs(30));
    eprintln!("the sentinels promoted the replica {:?} after the SIGKILL", promoted - killed);

    let r = revoker.join().unwrap();
    assert_eq!(r["received"], 5, "{r}");
    assert!(r["revoke_503s"].as_u64().unwrap() >= 1, "the revocation was made during the failover: {r}");
    assert_eq!(r["revoke_status"], 204, "{r}");
    assert_eq!(r["after_revoke_echo_seen"], 0, "the revoked allocation on r2 stops relaying: {r}");
    assert_eq!(r["reallocate"], 401, "{r}");

    for call in calls {
        let (server, r) = call.join().unwrap();
        assert_eq!(r["received"], 150, "the call through {server} never stopped: {r}");
        assert_eq!(r["missing"], serde_json::json!([]), "{r}");
    }

    // Every process found the new primary by itself.
    for (name, tk) in [("r1", &r1), ("r2", &r2), ("issuer-a", &a), ("issuer-b", &b)] {
        let up = wait_until(Duration::from_secs(5), || metric_sum(&tk.metrics(), "turnkey_fleet_redis_up", &[]) == 1.0);
        assert!(up.is_some(), "{name} reconnected to the new primary");
        assert!(metric_sum(&tk.metrics(), "turnkey_fleet_redis_reconnects_total", &[]) >= 1.0, "{name}");
    }

    // Usage: what both relays counted for the key is what the new primary holds, exactly.
    let relays = || -> u64 {
        [&r1, &r2]
            .iter()
            .map(|r| r.metric("turnkey_usage_relayed_bytes_total", &[&format!("key=\"{id}\"")]))
            .sum::<f64>() as u64
    };
    let same = wait_until(Duration::from_secs(15), || relays() > 0 && redis_usage(&set, &id) == Some(relays()));
    assert!(same.is_some(), "relays counted {} bytes, the new primary holds {:?}", relays(), redis_usage(&set, &id));

    // `turnkey fleet --redis` (TURNKEY_REDIS here) reads the relay table from the new primary.
    let listed = wait_until(Duration::from_secs(10), || {
        let out = std::process::Command::new(turnkey_e2e::bin())
            .args(["fleet", "--json"])
            .env("TURNKEY_REDIS", &url)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let nodes: Vec<&str> = v["relays"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["node_id"].as_str()).collect())
            .unwrap_or_default();
        nodes.contains(&"r1") && nodes.contains(&"r2")
    });
    assert!(listed.is_some(), "turnkey fleet lists both relays from the new primary");

    // A key created after the failover works on both issuers.
    let (id2, token2) = create_key(&url, &[]);
    for iss in [&a, &b] {
        let ok = wait_until(Duration::from_secs(5), || generate(iss.addr("http"), &id2, &token2, "").0 == 201);
        assert!(ok.is_some(), "a key created after the failover works on every issuer");
    }
}
