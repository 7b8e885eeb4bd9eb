//! Fleet mode, issuer side, end to end: a real redis-server, relays (`turnkey serve --http off
//! --redis`) and issuers (`turnkey issuer --redis`) as separate processes on loopback.
//!
//! - handout: answers name only healthy relays, the requested (or the issuer's) region first,
//!   the least loaded by their measured load first (a relay holding allocations goes last, or is
//!   left out, until it releases them),
//!   equally loaded relays spread; a SIGKILLed relay leaves answers within 6 s of its death, a
//!   SIGTERMed one at once (within 500 ms); with none left: 503 and the app fallback;
//! - aioice (UDP and TCP) relays through relays handed out by either issuer; a key created
//!   with `turnkey keys create --redis` works on both issuers within 2 s, a deleted one stops
//!   working on both; the app rate limit holds across both issuers; usage through two relays adds
//!   up in `/api/bandwidth-status` on either issuer.

// Test code: a missing field is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use turnkey_e2e::fleet::{create_key, delete_key, generate, issuer, relay, turn_entry, udp_servers, wait_until};
use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_e2e::{aioice, aioice_revoke, config_file, http, metric_sum, require, signal, Turnkey};

/// `GET /v1/fleet` with `token`: the relays listed.
fn fleet_relays(issuer: &Turnkey, token: &str) -> Vec<serde_json::Value> {
    let bearer = format!("Bearer {token}");
    let (status, body) = http(issuer.addr("http"), "GET", "/v1/fleet", &[("Authorization", &bearer)], None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["relays"].as_array().unwrap().clone()
}

/// `GET /v1/fleet` with `token`: the relays listed healthy.
fn healthy(issuer: &Turnkey, token: &str) -> BTreeSet<String> {
    fleet_relays(issuer, token)
        .iter()
        .filter(|r| r["healthy"] == true)
        .map(|r| r["node_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A credential from `iss` whose answer names `url` (asked up to 50 times: issuers spread
/// equally loaded relays, so one of the next answers names it).
fn credential_on(iss: &Turnkey, id: &str, token: &str, url: &str) -> (String, String) {
    for _ in 0..50 {
        let (status, v) = generate(iss.addr("http"), id, token, "");
        assert_eq!(status, 201, "{v}");
        let (urls, user, pass) = turn_entry(&v);
        assert_eq!(urls.len(), 2, "one relay per answer, UDP and TCP URLs: {urls:?}");
        if urls.iter().any(|u| u == url) {
            return (user, pass);
        }
    }
    panic!("{url} never handed out in 50 answers");
}

/// Which relays (by their UDP address) an answer names, in order.
fn named(issuer: &Turnkey, id: &str, token: &str, query: &str) -> Vec<String> {
    let (status, v) = generate(issuer.addr("http"), id, token, query);
    assert_eq!(status, 201, "{v}");
    udp_servers(&turn_entry(&v).0)
}

#[test]
fn handout_prefers_region_spreads_and_drops_dead_relays() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    let mut eu1 = relay(&url, "eu1", Some("eu"), &[]);
    let mut eu2 = relay(&url, "eu2", Some("eu"), &[]);
    let mut us1 = relay(&url, "us1", Some("us"), &[]);
    let a = issuer(&url, "issuer-a", Some("eu"), &[]);
    let b = issuer(&url, "issuer-b", Some("us"), &[]);
    let (id, token) = create_key(&url, &[]);
    let all: BTreeSet<String> = ["eu1", "eu2", "us1"].map(String::from).into();
    for iss in [&a, &b] {
        let seen = wait_until(Duration::from_secs(10), || {
            generate(iss.addr("http"), &id, &token, "").0 == 201 && healthy(iss, &token) == all
        });
        assert!(seen.is_some(), "every relay listed healthy: {:?}", healthy(iss, &token));
    }
    let (e1, e2, u1) = (eu1.udp().to_string(), eu2.udp().to_string(), us1.udp().to_string());

    // Issuer A (eu): both eu relays, never the us one while they are healthy; equally loaded,
    // each comes first for some requests.
    let mut first = BTreeSet::new();
    for _ in 0..24 {
        let got = named(&a, &id, &token, "");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), [e1.clone(), e2.clone()].into(), "{got:?}");
        first.insert(got[0].clone());
    }
    assert_eq!(first.len(), 2, "equally loaded relays are spread: {first:?}");
    // Issuer B (us): its region first, then one eu relay; the region parameter wins over the
    // issuer's own.
    for _ in 0..5 {
        let got = named(&b, &id, &token, "");
        assert_eq!((got.len(), &got[0]), (2, &u1), "{got:?}");
        assert_ne!(got[1], u1);
        assert_eq!(named(&a, &id, &token, "?region=us")[0], u1);
        assert_ne!(named(&b, &id, &token, "?region=eu")[0], u1);
    }

    // SIGKILL eu2: no goodbye, its heartbeat expires 3 beats (6 s) after the last one.
    signal(&eu2.child, "KILL");
    let killed = Instant::now();
    let _ = eu2.child.wait();
    let gone = wait_until(Duration::from_secs(10), || !named(&a, &id, &token, "").contains(&e2)).unwrap();
    let gone_b = killed.elapsed();
    eprintln!("SIGKILLed relay left issuer A's answers after {gone:?}");
    assert!(gone <= Duration::from_millis(6300), "a SIGKILLed relay must leave answers within 6 s: {gone:?}");
    assert!(!named(&b, &id, &token, "?region=eu").contains(&e2), "gone on issuer B as well ({gone_b:?})");
    assert_eq!(named(&a, &id, &token, ""), vec![e1.clone(), u1.clone()], "eu1 first, then the other region");

    // SIGTERM eu1: it announces draining at once (a draining beat, published on
    // `<p>relay-changes`); issuers re-read their listing when they hear it, not at their next
    // periodic refresh (every 2 s).
    signal(&eu1.child, "TERM");
    let gone = wait_until(Duration::from_secs(5), || !named(&a, &id, &token, "").contains(&e1)).unwrap();
    eprintln!("SIGTERMed relay left issuer A's answers after {gone:?}");
    assert!(gone <= Duration::from_millis(500), "a SIGTERMed relay must leave answers at once: {gone:?}");
    assert_eq!(named(&a, &id, &token, ""), vec![u1.clone()]);

    // No healthy relay left: 503 on the API, the fallback shape on the app endpoints.
    signal(&us1.child, "TERM");
    let none = wait_until(Duration::from_secs(5), || generate(a.addr("http"), &id, &token, "").0 == 503);
    assert!(none.is_some(), "no relay: 503");
    let (status, body) = http(b.addr("http"), "GET", "/api/turn-credentials", &[], None);
    let none_b =
        wait_until(Duration::from_secs(5), || http(b.addr("http"), "GET", "/api/turn-credentials", &[], None).0 == 503);
    assert!(none_b.is_some(), "{status} {body}");
    let (_, body) = http(b.addr("http"), "GET", "/api/turn-credentials", &[], None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["fallback"].as_bool(), v["error"].as_str()), (Some(true), Some("no relay available")));
    for t in [&mut eu1, &mut us1] {
        assert!(t.signal_and_wait("TERM", Duration::from_secs(40)).is_some());
    }
}

#[test]
fn relays_from_either_issuer_carry_traffic_and_keys_limits_usage_are_shared() {
    if !require("aioice") {
        return;
    }
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    let r1 = relay(&url, "r1", None, &[]);
    let r2 = relay(&url, "r2", None, &[]);
    // The app key: the fleet's oldest key (created before any issuer, so none creates a default
    // key). Its cap makes the bandwidth status exact to the byte: percentage = bytes / 10,000.
    let (app_id, app_token) = create_key(&url, &["--monthly-bandwidth-bytes", "1000000"]);
    std::thread::sleep(Duration::from_millis(1100));
    // The app endpoints' limit: 4 per window per client, across both issuers.
    let (_conf_dir, conf) = config_file("[issuer.app.rate_limit]\nrequests = 4\nwindow_secs = 300\n");
    let conf = conf.to_str().unwrap();
    let a = issuer(&url, "issuer-a", None, &["--config", conf, "--relays-per-answer", "1"]);
    let b = issuer(&url, "issuer-b", None, &["--config", conf, "--relays-per-answer", "1"]);

    // A key created in the fleet while the issuers run works on both within 2 s.
    let (id, token) = create_key(&url, &[]);
    let created = Instant::now();
    for iss in [&a, &b] {
        let took = wait_until(Duration::from_secs(5), || generate(iss.addr("http"), &id, &token, "").0 == 201);
        assert!(created.elapsed() <= Duration::from_secs(2), "key usable on every issuer within 2 s ({took:?})");
    }

    // aioice, UDP and TCP, through each relay as each issuer hands it out (issuers spread
    // equally loaded relays, so asking again soon names the other), with app-key credentials.
    let mut runs = 0u64;
    let plan = [(&a, "udp", &r1), (&b, "udp", &r2), (&a, "tcp", &r2), (&b, "tcp", &r1)];
    for (iss, transport, target) in plan {
        let want = target.addr(transport).to_string();
        let (user, pass) = credential_on(iss, &app_id, &app_token, &format!("turn:{want}?transport={transport}"));
        let r = aioice(&["relay", "--server", &want, "--transport", transport, "--user", &user, "--password", &pass]);
        assert_eq!(r["received"], 20, "{r} via {want} ({transport})");
        runs += 1;
    }

    // Usage: the bytes both relays counted for the key, summed in Redis, on either issuer.
    let relay_bytes = || -> f64 {
        [&r1, &r2].iter().map(|r| r.metric("turnkey_usage_relayed_bytes_total", &[&format!("key=\"{app_id}\"")])).sum()
    };
    let status_bytes = |iss: &Turnkey| -> f64 {
        let (s, body) = http(iss.addr("http"), "GET", "/api/bandwidth-status", &[], None);
        assert_eq!(s, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (v["percentage"].as_f64().unwrap() * 10_000.0).round()
    };
    let expected = (runs * 20 * 100 * 2) as f64;
    let converged = wait_until(Duration::from_secs(15), || {
        let local = relay_bytes();
        local >= expected && status_bytes(&a) == local && status_bytes(&b) == local
    });
    assert!(
        converged.is_some(),
        "relays counted {} bytes (at least {expected}); issuer A shows {}, B {}; in redis: {:?}",
        relay_bytes(),
        status_bytes(&a),
        status_bytes(&b),
        redis.cli(&["KEYS", "*usage*"]),
    );

    // A revocation through issuer A ends an allocation held on relay r2 with a credential from
    // issuer B, and the username cannot allocate again there.
    let on_r2 = r2.udp().to_string();
    let (user, pass) = credential_on(&b, &app_id, &app_token, &format!("turn:{on_r2}?transport=udp"));
    let revoke_url = format!("http://{}/v1/turn/keys/{app_id}/credentials/{user}/revoke", a.addr("http"));
    let r = aioice_revoke(&on_r2, &user, &pass, &revoke_url, &app_token, &[]);
    assert_eq!((r["received"].as_u64(), r["revoke_status"].as_u64()), (Some(5), Some(204)), "{r}");
    assert_eq!(r["after_revoke_echo_seen"], 0, "the allocation on r2 stops relaying: {r}");
    assert_eq!(r["reallocate"], 401, "{r}");

    // The app rate limit holds across the issuers: 4 in total, then 429 on both.
    let app = |iss: &Turnkey| http(iss.addr("http"), "GET", "/api/turn-credentials", &[], None).0;
    assert_eq!([app(&a), app(&b), app(&a), app(&b)], [200; 4]);
    assert_eq!([app(&a), app(&b)], [429, 429]);

    // Deleting the key revokes it on both issuers.
    delete_key(&url, &id);
    for iss in [&a, &b] {
        let took = wait_until(Duration::from_secs(5), || generate(iss.addr("http"), &id, &token, "").0 == 401);
        assert!(took.is_some(), "a deleted key stops working on every issuer");
    }
    let listed = metric_sum(&a.metrics(), "turnkey_fleet_redis_up", &[]);
    assert_eq!(listed, 1.0, "the issuer reports Redis up");
}

#[test]
fn redis_outage_keeps_the_last_relays_for_a_bounded_time_then_falls_back() {
    // Append-only with fsync always: the keys survive Redis's restart.
    let Some(mut redis) = RedisServer::start(RedisOptions { appendonly: true, ..RedisOptions::default() }) else {
        return;
    };
    let url = redis.url();
    let _r1 = relay(&url, "r1", None, &[]);
    let _r2 = relay(&url, "r2", None, &[]);
    let (id, token) = create_key(&url, &[]);
    let (_conf_dir, conf) = config_file("[issuer]\nlisting_max_stale_secs = 4\n");
    let a = issuer(&url, "issuer-a", None, &["--config", conf.to_str().unwrap()]);
    let two: BTreeSet<String> = ["r1", "r2"].map(String::from).into();
    assert!(wait_until(Duration::from_secs(10), || healthy(&a, &token) == two).is_some());

    redis.kill();
    let down = Instant::now();
    // The last listing is still handed out while it is at most 4 s old...
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(named(&a, &id, &token, "").len(), 2, "last known relays kept while Redis is down");
    // ...then the issuer falls back (no upstream: 503; the app endpoints' fallback shape).
    let gone = wait_until(Duration::from_secs(10), || generate(a.addr("http"), &id, &token, "").0 == 503).unwrap();
    let after = down.elapsed();
    assert!(after <= Duration::from_secs(7), "fallback within max_stale + one listing interval: {after:?} ({gone:?})");
    assert!(after >= Duration::from_millis(1900), "not before the listing is max_stale old: {after:?}");
    let (status, body) = http(a.addr("http"), "GET", "/api/turn-credentials", &[], None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, v["fallback"].as_bool()), (503, Some(true)), "{body}");
    let bearer = format!("Bearer {token}");
    let (_, body) = http(a.addr("http"), "GET", "/v1/fleet", &[("Authorization", &bearer)], None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["redis_up"], false, "{v}");

    // Redis back: relays beat again, the issuer hands them out again.
    redis.restart();
    let back = wait_until(Duration::from_secs(10), || {
        generate(a.addr("http"), &id, &token, "").0 == 201 && healthy(&a, &token) == two
    });
    assert!(back.is_some(), "state converges after Redis restarts");
}

/// `GET /v1/fleet` with `token`: each relay's live allocations as its last heartbeat reported.
fn allocations(issuer: &Turnkey, token: &str) -> std::collections::BTreeMap<String, u64> {
    fleet_relays(issuer, token)
        .iter()
        .map(|r| (r["node_id"].as_str().unwrap().to_owned(), r["allocations"].as_u64().unwrap()))
        .collect()
}

#[test]
fn handout_steers_by_measured_load_and_a_released_relay_comes_back() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    // Capacity 100: 30 held allocations are a load of 30 % (6 steps of 5 %) on r1.
    let cap = ["--max-allocations", "100"];
    let (r1, r2, r3) = (relay(&url, "r1", None, &cap), relay(&url, "r2", None, &cap), relay(&url, "r3", None, &cap));
    let (id, token) = create_key(&url, &[]);
    let all3 = issuer(&url, "issuer-a", None, &["--relays-per-answer", "3"]);
    let two = issuer(&url, "issuer-b", None, &["--relays-per-answer", "2"]);
    let three: BTreeSet<String> = ["r1", "r2", "r3"].map(String::from).into();
    for iss in [&all3, &two] {
        assert!(wait_until(Duration::from_secs(10), || healthy(iss, &token) == three).is_some());
    }
    let (u1, u2, u3) = (r1.udp().to_string(), r2.udp().to_string(), r3.udp().to_string());
    // Idle and equal: r1 comes first for some answers.
    let firsts: BTreeSet<String> = (0..12).map(|_| named(&all3, &id, &token, "")[0].clone()).collect();
    assert!(firsts.contains(&u1), "idle r1 is handed out first sometimes: {firsts:?}");

    // Hold 30 allocations on r1 for 8 s (turnkey load with the fleet's secret, straight at r1).
    let mut hold = std::process::Command::new(turnkey_e2e::bin())
        .args(["load", "--server", &u1, "--secret", turnkey_e2e::fleet::SECRET, "--scenario", "allocations"])
        .args(["--count", "30", "--concurrency", "10", "--hold", "8", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let carried = wait_until(Duration::from_secs(10), || allocations(&all3, &token).get("r1") == Some(&30));
    assert!(carried.is_some(), "r1's heartbeat carries its 30 allocations: {:?}", allocations(&all3, &token));
    assert!(wait_until(Duration::from_secs(5), || allocations(&two, &token).get("r1") == Some(&30)).is_some());
    // Every answer now puts r1 last, or (two per answer) leaves it out.
    for _ in 0..10 {
        let got = named(&all3, &id, &token, "");
        assert_eq!((got.len(), &got[2]), (3, &u1), "loaded r1 last: {got:?}");
        let got = named(&two, &id, &token, "");
        assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), [u2.clone(), u3.clone()].into(), "{got:?}");
    }

    // Released (the load ends after its hold): r1's next beat shows it idle, and it is handed
    // out again.
    let mut status = None;
    let ended = wait_until(Duration::from_secs(30), || {
        status = hold.try_wait().unwrap();
        status.is_some()
    });
    if ended.is_none() {
        let _ = hold.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the holding load run passed");
    let back = wait_until(Duration::from_secs(6), || {
        allocations(&two, &token).get("r1") == Some(&0) && named(&two, &id, &token, "").contains(&u1)
    });
    assert!(back.is_some(), "released r1 comes back: {:?}", allocations(&two, &token));
    // Each issuer refreshes its own copy of the listing (every heartbeat interval): the other one
    // may see r1's idle beat up to one interval later.
    let seen = wait_until(Duration::from_secs(6), || allocations(&all3, &token).get("r1") == Some(&0));
    assert!(seen.is_some(), "issuer-a sees r1 idle: {:?}", allocations(&all3, &token));
    let firsts: BTreeSet<String> = (0..12).map(|_| named(&all3, &id, &token, "")[0].clone()).collect();
    assert!(firsts.contains(&u1), "r1 first again for some answers: {firsts:?}");
}
