//! Fleet mode, the relay side: several `turnkey serve` processes sharing a real `redis-server`
//! on loopback. Heartbeats (what a relay advertises, draining on SIGTERM, leaving), revocations
//! published to Redis ending live allocations on every relay, usage from two relays adding up
//! in Redis, driven by aioice.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_e2e::{aioice, bin, require, root, signal, Turnkey};

const SECRET: &str = "fleet-test-secret";
/// A userid the usage ledger bills to a key (32 hex digits) with a label.
const KEY: &str = "0123456789abcdef0123456789abcdef";

fn redis() -> Option<RedisServer> {
    if !require("aioice") {
        return None;
    }
    RedisServer::start(RedisOptions::default())
}

/// A relay in the fleet of `redis` as `node`, with the shared secret.
fn relay(redis: &RedisServer, node: &str, extra: &[&str]) -> Turnkey {
    let url = redis.url();
    let mut args = vec!["--redis", &url, "--node-id", node, "--secret", SECRET, "--allow-peer", "127.0.0.1"];
    args.extend_from_slice(extra);
    Turnkey::serve(&args)
}

/// A TURN REST credential for `user`, minted with the fleet's secret.
fn creds(user: &str) -> (String, String) {
    let out = Command::new(bin())
        .args(["creds", "--secret", SECRET, "--user", user, "--ttl", "600"])
        .output()
        .expect("run turnkey creds");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("creds JSON");
    let field = |k: &str| v[k].as_str().expect("a string field").to_owned();
    (field("username"), field("credential"))
}

/// Polls `f` every 20 ms until it is true or `limit` passes; returns the time it took.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn record(redis: &RedisServer, node: &str) -> Option<serde_json::Value> {
    let text = redis.cli(&["GET", &format!("turnkey:relay:{node}")])?;
    serde_json::from_str(text.trim()).ok()
}

/// aioice holding an allocation (mode `abandon`) on `server` for `hold` seconds.
fn hold_allocation(server: &str, user: &str, password: &str, hold: u32) -> Child {
    let mut child = Command::new("python3")
        .arg(root().join("tests/py/turn_client.py"))
        .args(["abandon", "--server", server, "--user", user, "--password", password, "--hold", &hold.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start aioice");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line).expect("read aioice");
    assert!(line.contains("relayed"), "aioice did not allocate: {line:?}");
    child
}

fn allocations(tk: &Turnkey) -> f64 {
    tk.metric("turnkey_relay_allocations", &[])
}

#[test]
fn relays_beat_what_they_advertise_and_announce_draining_at_once() {
    let Some(redis) = redis() else { return };
    let mut a = relay(&redis, "relay-a", &["--drain-grace", "3"]);
    let b = relay(&redis, "relay-b", &["--region", "eu"]);
    let both = wait_until(Duration::from_secs(5), || {
        record(&redis, "relay-a").is_some() && record(&redis, "relay-b").is_some()
    });
    assert!(both.is_some(), "relays did not register: {:?}", redis.cli(&["KEYS", "*"]));
    let index = redis.cli(&["ZRANGE", "turnkey:relays", "0", "-1"]).unwrap();
    assert!(index.contains("relay-a") && index.contains("relay-b"), "{index}");

    let ra = record(&redis, "relay-a").unwrap();
    let urls: Vec<String> =
        ra["urls"].as_array().unwrap().iter().map(|u| u["url"].as_str().unwrap().to_owned()).collect();
    for want in [
        format!("turn:127.0.0.1:{}?transport=udp", a.udp().port()),
        format!("turn:127.0.0.1:{}?transport=tcp", a.tcp().port()),
        format!("turns:127.0.0.1:{}?transport=tcp", a.tls().port()),
    ] {
        assert!(urls.contains(&want), "{want} missing in {urls:?}");
    }
    assert!(!ra.to_string().contains("0.0.0.0"), "{ra}");
    assert_eq!(ra["draining"], false);
    assert!(ra["allocation_capacity"].as_u64().unwrap() > 0, "{ra}");
    assert_eq!(ra["region"], serde_json::Value::Null);
    assert_eq!(record(&redis, "relay-b").unwrap()["region"], "eu");

    // A live allocation keeps relay A draining (3 s grace) after SIGTERM: the fleet sees it
    // draining at once, and the record is gone when A exits.
    let (user, pw) = creds("drainer");
    let mut holder = hold_allocation(&a.udp().to_string(), &user, &pw, 20);
    assert!(wait_until(Duration::from_secs(3), || allocations(&a) == 1.0).is_some());
    let shown = wait_until(Duration::from_secs(3), || record(&redis, "relay-a").is_some_and(|r| r["allocations"] == 1));
    assert!(shown.is_some(), "the beat did not count the allocation: {:?}", record(&redis, "relay-a"));
    signal(&a.child, "TERM");
    let took = wait_until(Duration::from_secs(2), || record(&redis, "relay-a").is_some_and(|r| r["draining"] == true));
    let took = took.unwrap_or_else(|| panic!("draining not announced: {:?}", record(&redis, "relay-a")));
    assert!(took < Duration::from_millis(500), "draining announced after {took:?} (the beat interval is 2 s)");
    let exited = wait_until(Duration::from_secs(10), || a.child.try_wait().unwrap().is_some());
    assert!(exited.is_some(), "relay A did not exit");
    assert!(record(&redis, "relay-a").is_none(), "relay A did not deregister");
    let index = redis.cli(&["ZRANGE", "turnkey:relays", "0", "-1"]).unwrap();
    assert!(!index.contains("relay-a") && index.contains("relay-b"), "{index}");
    let _ = holder.kill();
    let _ = holder.wait();
    drop(b);
}

#[test]
fn a_revocation_in_redis_ends_allocations_on_every_relay_within_1s() {
    let Some(redis) = redis() else { return };
    let a = relay(&redis, "rev-a", &[]);
    let b = relay(&redis, "rev-b", &[]);
    let (user, pw) = creds("mallory");
    let mut holder = hold_allocation(&b.udp().to_string(), &user, &pw, 30);
    assert!(wait_until(Duration::from_secs(3), || allocations(&b) == 1.0).is_some());

    // What an issuer's revoke does (docs/fleet.md's contract): add to the set, publish.
    let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
    let event = serde_json::json!({"kind": "username", "username": user, "expiry": expiry}).to_string();
    assert!(redis.cli(&["ZADD", "turnkey:revoked", &expiry.to_string(), &user]).is_some());
    assert!(redis.cli(&["PUBLISH", "turnkey:revocations", &event]).is_some());
    let took = wait_until(Duration::from_secs(3), || allocations(&b) == 0.0);
    let took = took.unwrap_or_else(|| panic!("the allocation on B outlived its revocation"));
    assert!(took < Duration::from_secs(1), "ended after {took:?}");
    let _ = holder.kill();
    let _ = holder.wait();

    // Refused on every relay, including one that joins after the revocation (the persisted set
    // is replayed at subscription).
    let c = relay(&redis, "rev-c", &[]);
    std::thread::sleep(Duration::from_millis(500));
    for tk in [&a, &b, &c] {
        let r = aioice(&["authfail", "--server", &tk.udp().to_string(), "--user", &user, "--password", &pw]);
        assert_eq!(r["error"], 401, "{r}");
    }
    // Another user is unaffected.
    let (u2, p2) = creds("alice");
    let r = aioice(&["relay", "--server", &c.udp().to_string(), "--user", &u2, "--password", &p2, "--count", "5"]);
    assert_eq!(r["received"], 5, "{r}");
}

#[test]
fn usage_through_two_relays_adds_up_once_in_redis() {
    let Some(redis) = redis() else { return };
    let mut a = relay(&redis, "use-a", &[]);
    let b = relay(&redis, "use-b", &[]);
    let (user, pw) = creds(&format!("{KEY}:room1"));
    let mut c2p = 0;
    let mut p2c = 0;
    for tk in [&a, &b] {
        let r =
            aioice(&["relay", "--server", &tk.udp().to_string(), "--user", &user, "--password", &pw, "--count", "20"]);
        assert_eq!(r["received"], 20, "{r}");
        c2p += 20 * 100;
        p2c += r["payload_bytes"].as_u64().unwrap();
    }
    let field = |f: &str| -> u64 {
        let keys = redis.cli(&["--scan", "--pattern", &format!("turnkey:usage:*:{KEY}")]).unwrap_or_default();
        let Some(key) = keys.lines().next() else { return 0 };
        redis.cli(&["HGET", key, f]).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let arrived = wait_until(Duration::from_secs(5), || field("c2p") == c2p && field("p2c") == p2c);
    assert!(arrived.is_some(), "usage in redis c2p={} p2c={} (want {c2p}, {p2c})", field("c2p"), field("p2c"));
    assert_eq!(field("c2p:room1"), c2p);
    // The period key is the usage ledger's: the current month's start (reset day 1, UTC).
    let keys = redis.cli(&["--scan", "--pattern", &format!("turnkey:usage:*:{KEY}")]).unwrap();
    let period: u64 = keys.trim().split(':').nth(2).unwrap().parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(period <= now && now - period < 31 * 86_400, "period {period}");

    // A graceful stop flushes and leaves; nothing is counted twice.
    assert!(a.signal_and_wait("TERM", Duration::from_secs(10)).is_some());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!((field("c2p"), field("p2c")), (c2p, p2c));
    drop(b);
}

#[test]
fn the_per_user_quota_holds_across_relays() {
    let Some(redis) = redis() else { return };
    let a = relay(&redis, "quota-a", &["--max-allocations-per-user", "1"]);
    let b = relay(&redis, "quota-b", &["--max-allocations-per-user", "1"]);
    let (user, pw) = creds("quota-user");
    let userid = user.split_once(':').unwrap().1.to_owned();
    let mut holder = hold_allocation(&a.udp().to_string(), &user, &pw, 20);
    let marked = wait_until(Duration::from_secs(3), || {
        redis.cli(&["HEXISTS", "turnkey:quota-full", &userid]).is_some_and(|v| v.trim() == "1")
    });
    assert!(marked.is_some(), "not marked full: {:?}", redis.cli(&["HGETALL", "turnkey:quota"]));
    assert_eq!(redis.cli(&["HGET", "turnkey:quota", &userid]).unwrap().trim(), "1");
    // Relay B refuses the same userid (it reads the marks every 250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let r = aioice(&["authfail", "--server", &b.udp().to_string(), "--user", &user, "--password", &pw]);
    assert_eq!(r["error"], 486, "{r}");
    // Another userid allocates on B.
    let (u2, p2) = creds("quota-other");
    let r = aioice(&["relay", "--server", &b.udp().to_string(), "--user", &u2, "--password", &p2, "--count", "3"]);
    assert_eq!(r["received"], 3, "{r}");
    let _ = holder.kill();
    let _ = holder.wait();
    drop(a);
}

#[test]
fn redis_down_mid_call_loses_nothing_and_state_converges_on_restart() {
    let Some(mut redis) = redis() else { return };
    let a = relay(&redis, "chaos-a", &["--max-allocations-per-user", "1"]);
    assert!(wait_until(Duration::from_secs(5), || record(&redis, "chaos-a").is_some()).is_some());
    let (user, pw) = creds("chaos-caller");
    let server = a.udp().to_string();
    let call = {
        let (server, user, pw) = (server.clone(), user.clone(), pw.clone());
        std::thread::spawn(move || {
            aioice(&[
                "relay",
                "--server",
                &server,
                "--user",
                &user,
                "--password",
                &pw,
                "--count",
                "400",
                "--size",
                "200",
            ])
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    redis.kill();
    let r = call.join().unwrap();
    assert_eq!(r["received"], 400, "the live exchange lost messages while Redis went away: {r}");
    // New allocations still succeed under the local limits.
    let (u2, p2) = creds("chaos-new");
    let mut holder = hold_allocation(&server, &u2, &p2, 20);
    assert!(wait_until(Duration::from_secs(3), || allocations(&a) >= 1.0).is_some());
    let r = aioice(&["authfail", "--server", &server, "--user", &u2, "--password", &p2]);
    assert_eq!(r["error"], 486, "the local per-user limit still holds: {r}");
    let m = a.metric("turnkey_fleet_redis_up", &[]);
    assert_eq!(m, 0.0);

    // Redis comes back empty: the relay re-registers and republishes its counts within a beat
    // or two, and the usage it buffered arrives.
    redis.restart();
    let userid = u2.split_once(':').unwrap().1.to_owned();
    let converged = wait_until(Duration::from_secs(8), || {
        record(&redis, "chaos-a").is_some()
            && redis.cli(&["HGET", "turnkey:quota", &userid]).is_some_and(|v| v.trim() == "1")
    });
    assert!(converged.is_some(), "state did not converge: {:?}", redis.cli(&["KEYS", "*"]));
    let c2p = |_: ()| -> u64 {
        let keys = redis.cli(&["--scan", "--pattern", "turnkey:usage:*:unkeyed"]).unwrap_or_default();
        let Some(key) = keys.lines().next() else { return 0 };
        redis.cli(&["HGET", key, "c2p"]).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let arrived = wait_until(Duration::from_secs(5), || c2p(()) >= 400 * 200);
    assert!(arrived.is_some(), "buffered usage did not arrive: {}", c2p(()));
    assert_eq!(a.metric("turnkey_fleet_redis_up", &[]), 1.0);
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn a_draining_relay_redirects_to_a_healthy_peer_and_the_client_allocates_there() {
    let Some(redis) = redis() else { return };
    let mut a = relay(&redis, "drain-a", &["--drain-grace", "15"]);
    let b = relay(&redis, "drain-b", &[]);
    assert!(wait_until(Duration::from_secs(5), || record(&redis, "drain-b").is_some()).is_some());
    let (user, pw) = creds("redirected");
    // A live allocation keeps A draining after SIGTERM.
    let mut holder = hold_allocation(&a.udp().to_string(), &user, &pw, 30);
    assert!(wait_until(Duration::from_secs(3), || allocations(&a) == 1.0).is_some());
    signal(&a.child, "TERM");
    assert!(wait_until(Duration::from_secs(2), || record(&redis, "drain-a").is_some_and(|r| r["draining"] == true))
        .is_some());
    let (u2, p2) = creds("newcomer");
    let r = aioice(&["authfail", "--server", &a.udp().to_string(), "--user", &u2, "--password", &p2]);
    assert_eq!(r["error"], 300, "{r}");
    assert_eq!(r["alternate"], b.udp().to_string(), "{r}");
    // Over TCP the alternate is B's TCP listener.
    let r2 =
        aioice(&["authfail", "--server", &a.tcp().to_string(), "--transport", "tcp", "--user", &u2, "--password", &p2]);
    assert_eq!(
        (r2["error"].as_u64(), r2["alternate"].as_str()),
        (Some(300), Some(b.tcp().to_string().as_str())),
        "{r2}"
    );
    // The client follows it.
    let alt = r2["alternate"].as_str().unwrap().to_owned();
    let r =
        aioice(&["relay", "--server", &alt, "--transport", "tcp", "--user", &u2, "--password", &p2, "--count", "5"]);
    assert_eq!(r["received"], 5, "{r}");
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = a.signal_and_wait("KILL", Duration::from_secs(5));
}

#[test]
fn a_sigkilled_relay_loses_at_most_its_unflushed_usage_and_never_doubles() {
    let Some(redis) = redis() else { return };
    let mut a = relay(&redis, "kill-a", &[]);
    let (user, pw) = creds(&format!("{KEY}:killed"));
    let field = |f: &str| -> u64 {
        let keys = redis.cli(&["--scan", "--pattern", &format!("turnkey:usage:*:{KEY}")]).unwrap_or_default();
        let Some(key) = keys.lines().next() else { return 0 };
        redis.cli(&["HGET", key, f]).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    // A first exchange, then time for it to be flushed: all of it arrives.
    let r = aioice(&["relay", "--server", &a.udp().to_string(), "--user", &user, "--password", &pw, "--count", "20"]);
    assert_eq!(r["received"], 20, "{r}");
    assert!(wait_until(Duration::from_secs(5), || field("c2p") == 2000).is_some(), "c2p={}", field("c2p"));
    // A second one, then SIGKILL at once: what was not flushed yet is lost, nothing is doubled.
    let r = aioice(&["relay", "--server", &a.udp().to_string(), "--user", &user, "--password", &pw, "--count", "20"]);
    assert_eq!(r["received"], 20, "{r}");
    let _ = a.signal_and_wait("KILL", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));
    let (c2p, p2c) = (field("c2p"), field("p2c"));
    eprintln!("SIGKILL right after the second exchange: c2p {c2p} of 4000, p2c {p2c} of 4000 bytes in Redis");
    assert!((2000..=4000).contains(&c2p) && (2000..=4000).contains(&p2c), "c2p={c2p} p2c={p2c}");
}
