//! Live sessions end to end: aioice clients over UDP, TCP and TLS and coturn's turnutils_uclient
//! hold allocations on `turnkey serve`; `GET /v1/sessions` lists each with its transport,
//! addresses and growing byte counts, scoped per key (an operator token sees all); `DELETE
//! /v1/sessions/{id}` ends exactly one (its client's next Refresh gets 437, its traffic stops);
//! `turnkey sessions` prints the same listing and kills.

// Test code: a missing field is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use turnkey_e2e::fleet::{self, wait_until};
use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_e2e::{bin, http, require, root, run_with_timeout, signal, Turnkey};

/// An aioice client in `session` mode: allocated, relaying to its own echo peer, waiting for
/// commands.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What it printed after allocating (relayed and client addresses).
    hello: Value,
}

impl Client {
    fn start(tk: &Turnkey, transport: &str, user: &str, pass: &str) -> Self {
        let server = match transport {
            "udp" => tk.udp(),
            "tcp" => tk.tcp(),
            _ => tk.tls(),
        };
        Self::start_at(server, tk.tls_cert(), transport, user, pass)
    }

    fn start_at(server: SocketAddr, cert: PathBuf, transport: &str, user: &str, pass: &str) -> Self {
        let mut child = Command::new("python3")
            .arg(root().join("tests/py/turn_client.py"))
            .args(["session", "--server", &server.to_string(), "--user", user, "--password", pass])
            .args(["--transport", transport, "--count", "5"])
            .args(if transport == "tls" { vec!["--ca".into(), cert.into_os_string()] } else { vec![] })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Self { child, stdin, stdout, hello: Value::Null };
        c.hello = c.read();
        assert_eq!(c.hello["received"], 5, "{transport}: {}", c.hello);
        c
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
    }

    fn command(&mut self, cmd: &str) -> Value {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }

    fn relayed(&self) -> &str {
        self.hello["relayed"].as_str().unwrap()
    }

    fn client(&self) -> &str {
        self.hello["client"].as_str().unwrap()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `GET path` with `token`: status and JSON body.
fn get(tk: &Turnkey, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(tk.addr("http"), "GET", path, &[("Authorization", &bearer(token))], None);
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{status} {body}: {e}")))
}

/// The sessions `token` sees on `tk` now (every page of at most 1000).
fn list_now(tk: &Turnkey, token: &str) -> Vec<Value> {
    let (status, body) =
        http(tk.addr("http"), "GET", "/v1/sessions?limit=1000", &[("Authorization", &bearer(token))], None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["sessions"].as_array().unwrap().clone()
}

fn delete(tk: &Turnkey, id: &str, token: &str) -> (u16, String) {
    http(tk.addr("http"), "DELETE", &format!("/v1/sessions/{id}"), &[("Authorization", &bearer(token))], None)
}

/// The sessions `token` sees with `query`, once a sweep listed at least `want` of them.
fn sessions(tk: &Turnkey, query: &str, token: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = get(tk, &format!("/v1/sessions{query}"), token);
        assert_eq!(status, 200, "{v}");
        let list = v["sessions"].as_array().unwrap().clone();
        if list.len() >= want || Instant::now() > deadline {
            return list;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `turnkey keys create` (with `extra` flags) on `tk`'s data directory: (id, token).
fn create_key(tk: &Turnkey, extra: &[&str]) -> (String, String) {
    let out = Command::new(bin()).args(["keys", "create", "--data-dir"]).arg(tk.data_dir.path()).args(extra).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["id"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned())
}

/// A credential of key `id` for `user` (the object shape's `customIdentifier`).
fn credential(tk: &Turnkey, id: &str, token: &str, user: &str) -> (String, String) {
    let (status, body) = http(
        tk.addr("http"),
        "POST",
        &format!("/v1/turn/keys/{id}/credentials/generate"),
        &[("Authorization", &bearer(token)), ("Content-Type", "application/json")],
        Some(&format!("{{\"ttl\": 3600, \"customIdentifier\": \"{user}\"}}")),
    );
    assert_eq!(status, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let s = &v["iceServers"];
    (s["username"].as_str().unwrap().to_owned(), s["credential"].as_str().unwrap().to_owned())
}

fn find<'a>(list: &'a [Value], user: &str) -> &'a Value {
    list.iter().find(|s| s["user"] == user).unwrap_or_else(|| panic!("no session of {user}: {list:?}"))
}

fn counter(s: &Value, name: &str) -> u64 {
    s[name].as_u64().unwrap_or_else(|| panic!("{name} in {s}"))
}

#[test]
fn sessions_list_each_transport_scope_per_key_and_kill_exactly_one() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (a_id, a_token) = tk.default_key();
    let (b_id, b_token) = create_key(&tk, &[]);
    let (_, admin) = create_key(&tk, &["--admin"]);
    let mut clients = Vec::new();
    for transport in ["udp", "tcp", "tls"] {
        let (u, p) = credential(&tk, &a_id, &a_token, &format!("alice-{transport}"));
        clients.push((transport, Client::start(&tk, transport, &u, &p)));
    }
    let (bu, bp) = credential(&tk, &b_id, &b_token, "bob");
    let bob = Client::start(&tk, "udp", &bu, &bp);

    // Key A sees its three sessions, each with its transport, addresses and counts.
    let list = sessions(&tk, "", &a_token, 3);
    assert_eq!(list.len(), 3, "{list:?}");
    for (transport, c) in &clients {
        let s = find(&list, &format!("alice-{transport}"));
        assert_eq!(s["key"], a_id.as_str());
        assert_eq!(s["transport"], *transport);
        assert_eq!(s["client"], c.client(), "{s}");
        assert_eq!(s["relayed"], serde_json::json!([c.relayed()]), "{s}");
        assert_eq!(s["fast_path"], false);
        assert_eq!(s["permissions"], 1, "{s}");
        assert_eq!(s["channels"], 1, "{s}");
        assert!(s["username"].as_str().unwrap().ends_with(&format!(":{a_id}:alice-{transport}")), "{s}");
        assert!(counter(s, "expires") > counter(s, "created"), "{s}");
        assert_eq!(counter(s, "packets_client_to_peer"), 5, "{s}");
        assert_eq!(counter(s, "packets_peer_to_client"), 5, "{s}");
        assert_eq!(counter(s, "bytes_client_to_peer"), 500, "{s}");
        let server = match *transport {
            "udp" => tk.udp(),
            "tcp" => tk.tcp(),
            _ => tk.tls(),
        };
        assert_eq!(s["server"], server.to_string());
    }
    // Filters.
    let one = |q: &str| sessions(&tk, q, &a_token, 1);
    assert_eq!(one("?transport=tcp").len(), 1);
    assert_eq!(one("?transport=tcp")[0]["user"], "alice-tcp");
    assert_eq!(one("?user=alice-tls").len(), 1);
    assert_eq!(one("?client_ip=127.0.0.1").len(), 3);
    assert!(sessions(&tk, "?client_ip=192.0.2.1", &a_token, 0).is_empty());
    let node = list[0]["node"].as_str().unwrap().to_owned();
    assert_eq!(one(&format!("?node={node}")).len(), 3);
    // Pages of one, in id order, cover all three.
    let mut ids = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let (status, page) = get(&tk, &format!("/v1/sessions{query}"), &a_token);
        assert_eq!(status, 200);
        ids.extend(page["sessions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Byte counts grow with traffic (the next sweep publishes them).
    let udp_id = find(&list, "alice-udp")["id"].as_str().unwrap().to_owned();
    let before = counter(find(&list, "alice-udp"), "bytes_peer_to_client");
    assert_eq!(clients[0].1.command("relay 10")["received"], 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = get(&tk, &format!("/v1/sessions/{udp_id}"), &a_token);
        if counter(&s, "bytes_peer_to_client") == before + 1000 {
            assert_eq!(counter(&s, "packets_client_to_peer"), 15);
            break;
        }
        assert!(Instant::now() < deadline, "bytes did not grow: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Tenant scoping: key B sees only bob; A's session is 404 to B, for reading and ending alike.
    let b_list = sessions(&tk, "", &b_token, 1);
    assert_eq!(b_list.len(), 1, "{b_list:?}");
    assert_eq!(b_list[0]["user"], "bob");
    assert!(sessions(&tk, &format!("?key={a_id}"), &b_token, 0).is_empty());
    let (status, body) = get(&tk, &format!("/v1/sessions/{udp_id}"), &b_token);
    assert_eq!((status, body["error"].as_str()), (404, Some("no such session")));
    let (status, body) = delete(&tk, &udp_id, &b_token);
    assert_eq!(status, 404, "{body}");
    assert_eq!(delete(&tk, "0123456789abcdef", &b_token).0, 404);
    assert_eq!(clients[0].1.command("relay 2")["received"], 2, "B's DELETE must not end A's session");
    // The operator sees everyone; no token or a bad one is 401.
    assert_eq!(sessions(&tk, "", &admin, 4).len(), 4);
    assert_eq!(get(&tk, "/v1/sessions", "not-a-token").0, 401);
    assert_eq!(http(tk.addr("http"), "GET", "/v1/sessions", &[], None).0, 401);
    // For one session too, and before the id is looked at: an existing id and a malformed one
    // answer alike, so a caller without a token learns nothing about which sessions exist.
    for id in [udp_id.as_str(), "not-an-id"] {
        let path = format!("/v1/sessions/{id}");
        assert_eq!(get(&tk, &path, "not-a-token").0, 401, "GET {path}");
        assert_eq!(http(tk.addr("http"), "GET", &path, &[], None).0, 401, "GET {path}");
        assert_eq!(delete(&tk, id, "not-a-token").0, 401, "DELETE {path}");
    }
    assert_eq!(get(&tk, "/v1/sessions?limit=0", &a_token).0, 400);
    assert_eq!(get(&tk, "/v1/sessions?transport=sctp", &a_token).0, 400);

    // Key A ends its UDP session: exactly that allocation goes.
    let (status, body) = delete(&tk, &udp_id, &a_token);
    assert_eq!(status, 204, "{body}");
    assert_eq!(delete(&tk, &udp_id, &a_token).0, 404, "already ended");
    let after = sessions(&tk, "", &a_token, 2);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|s| s["id"] != udp_id.as_str()));
    let (_, killed) = &mut clients[0];
    assert_eq!(killed.command("relay 3")["received"], 0, "relayed traffic must stop");
    assert_eq!(killed.command("refresh")["refresh"], 437);
    for (transport, c) in clients.iter_mut().skip(1) {
        assert_eq!(c.command("relay 3")["received"], 3, "{transport} must keep relaying");
        assert_eq!(c.command("refresh")["refresh"], "ok", "{transport}");
    }
    let mut bob = bob;
    assert_eq!(bob.command("relay 3")["received"], 3);
    assert_eq!(tk.metric("turnkey_relay_allocations_ended_total", &["reason=\"killed\""]), 1.0);
}

#[test]
fn uclient_allocations_are_listed_for_the_operator_and_the_cli() {
    if !require("turnutils_uclient") {
        return;
    }
    let tk = Turnkey::serve(&["--rfc5766-channel-numbers"]);
    let (_, admin) = create_key(&tk, &["--admin"]);
    let secret = tk.secret();
    let port = tk.udp().port().to_string();
    // A long uclient run (5 clients, each two allocations relaying to each other), listed while
    // it relays.
    let mut uclient = Command::new("turnutils_uclient")
        .args(["-W", &secret, "-u", "uclient", "-y", "-m", "5", "-n", "3000", "-l", "120", "-p", &port, "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let list = sessions(&tk, "?user=uclient", &admin, 10);
    let _ = uclient.kill();
    let _ = uclient.wait();
    assert_eq!(list.len(), 10, "{list:?}");
    for s in &list {
        assert_eq!(s["key"], Value::Null, "a `turnkey creds`-style username has no key: {s}");
        assert_eq!(s["transport"], "udp");
        assert!(s["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    // The CLI prints the same sessions.
    let base = format!("http://{}", tk.addr("http"));
    let mut cmd = Command::new(bin());
    cmd.args(["sessions", "--issuer", &base, "--token", &admin, "--user", "uclient", "--json"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v.as_array().unwrap().is_empty(), "{v}");
}

/// A TURN REST credential of `key` for `user` minted with the fleet's shared secret (what any
/// issuer of the fleet would hand out for that key and `customIdentifier`).
fn fleet_creds(key: &str, user: &str) -> (String, String) {
    let out = Command::new(bin())
        .args(["creds", "--secret", fleet::SECRET, "--user", &format!("{key}:{user}"), "--ttl", "600"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["username"].as_str().unwrap().to_owned(), v["credential"].as_str().unwrap().to_owned())
}

#[test]
fn fleet_sessions_are_listed_and_ended_by_either_issuer_and_leave_with_a_killed_relay() {
    if !require("aioice") {
        return;
    }
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    let r1 = fleet::relay(&url, "r1", None, &[]);
    let mut r2 = fleet::relay(&url, "r2", None, &[]);
    let a = fleet::issuer(&url, "issuer-a", None, &[]);
    let b = fleet::issuer(&url, "issuer-b", None, &[]);
    let (key, token) = fleet::create_key(&url, &[]);
    let (_, other_token) = fleet::create_key(&url, &[]);
    let (_, admin) = fleet::create_key(&url, &["--admin"]);
    let no_cert = PathBuf::new();
    let (u1, p1) = fleet_creds(&key, "on-r1");
    let mut c1 = Client::start_at(r1.udp(), no_cert.clone(), "udp", &u1, &p1);
    let (u2, p2) = fleet_creds(&key, "on-r2");
    let _c2 = Client::start_at(r2.udp(), no_cert, "udp", &u2, &p2);

    // Both issuers list both sessions with their nodes (keys reach issuers within 2 s).
    for iss in [&a, &b] {
        let both = wait_until(Duration::from_secs(15), || {
            let (status, v) = get(iss, "/v1/sessions", &token);
            status == 200 && v["sessions"].as_array().unwrap().len() == 2
        });
        assert!(both.is_some(), "{:?}", get(iss, "/v1/sessions", &token));
        let list = list_now(iss, &token);
        assert_eq!(find(&list, "on-r1")["node"], "r1");
        assert_eq!(find(&list, "on-r2")["node"], "r2");
        assert_eq!(find(&list, "on-r1")["relayed"], serde_json::json!([c1.relayed()]));
        assert!(list_now(iss, &other_token).is_empty(), "another key sees nothing");
        assert_eq!(list_now(iss, &admin).len(), 2);
    }
    // The CLI reads the same index straight from Redis.
    let mut cmd = Command::new(bin());
    cmd.args(["sessions", "--redis", &url, "--json", "--node", "r2"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["user"], "on-r2");

    // Issuer B ends the session on r1: the relay applies it, the client gets 437.
    let id = find(&list_now(&b, &token), "on-r1")["id"].as_str().unwrap().to_owned();
    let other = list_now(&b, &other_token);
    assert!(other.is_empty());
    assert_eq!(delete(&b, &id, &other_token).0, 404, "another key cannot end it");
    let (status, body) = delete(&b, &id, &token);
    assert_eq!(status, 204, "{body}");
    assert_eq!(c1.command("refresh")["refresh"], 437);
    assert_eq!(list_now(&a, &token).len(), 1);
    let killed = r1.metric("turnkey_relay_allocations_ended_total", &["reason=\"killed\""]);
    assert_eq!(killed, 1.0);

    // SIGKILL r2: its sessions leave both listings with its registry record (3 beats, 6 s).
    let t = Instant::now();
    signal(&r2.child, "KILL");
    let gone =
        wait_until(Duration::from_secs(15), || list_now(&a, &admin).is_empty() && list_now(&b, &admin).is_empty());
    let gone = gone.unwrap_or_else(|| panic!("r2's session still listed: {:?}", list_now(&a, &admin)));
    eprintln!("a SIGKILLed relay's sessions left the listing after {:?}", t.elapsed());
    assert!(gone <= Duration::from_millis(6500), "{gone:?}");
    let _ = r2.child.wait();
}

#[test]
fn the_admin_token_file_sees_sessions_no_key_owns() {
    if !require("aioice") {
        return;
    }
    let token_dir = tempfile::tempdir().unwrap();
    let token_path = token_dir.path().join("admin-token");
    std::fs::write(&token_path, "operator-token-for-the-sessions-test\n").unwrap();
    let conf = format!("[issuer]\nadmin_token_file = {:?}\n", token_path.to_str().unwrap());
    let (_conf_dir, conf) = turnkey_e2e::config_file(&conf);
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--config", conf.to_str().unwrap()]);
    // A `turnkey creds` credential: its username names no key, so only an operator sees it.
    let (u, p) = tk.creds("carol", 600);
    let _carol = Client::start(&tk, "udp", &u, &p);
    let list = sessions(&tk, "", "operator-token-for-the-sessions-test", 1);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((&list[0]["user"], &list[0]["key"]), (&Value::from("carol"), &Value::Null));
    let (_, key_token) = tk.default_key();
    assert!(sessions(&tk, "", &key_token, 0).is_empty(), "a key sees no session it did not issue");
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(delete(&tk, id, &key_token).0, 404);
    assert_eq!(delete(&tk, id, "operator-token-for-the-sessions-test").0, 204);
}

/// The JSON error of a 501 from `path` on `tk`, checked to name `why`.
fn not_served(tk: &Turnkey, method: &str, path: &str, token: &str, why: &str) {
    let (status, body) = http(tk.addr("http"), method, path, &[("Authorization", &bearer(token))], None);
    assert_eq!(status, 501, "{method} {path}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error message: {body}"));
    assert!(msg.contains(why), "{method} {path}: {msg}");
}

#[test]
fn with_the_listing_off_the_relay_relays_lists_nothing_and_writes_no_index() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--no-sessions"]);
    let (u, p) = tk.creds("dave", 600);
    let mut dave = Client::start(&tk, "udp", &u, &p);
    assert_eq!(dave.command("refresh")["refresh"], "ok", "the relay serves the allocation");
    let (_, token) = tk.default_key();
    let why = "turned off on this relay";
    not_served(&tk, "GET", "/v1/sessions", &token, why);
    not_served(&tk, "GET", "/v1/sessions/0000000000000001", &token, why);
    not_served(&tk, "DELETE", "/v1/sessions/0000000000000001", &token, why);

    // In a fleet it writes no index: an issuer lists the relay that keeps one, not this one.
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let url = redis.url();
    let off = fleet::relay(&url, "r-off", None, &["--no-sessions"]);
    let on = fleet::relay(&url, "r-on", None, &[]);
    let issuer = fleet::issuer(&url, "issuer-a", None, &[]);
    let (_, admin) = fleet::create_key(&url, &["--admin"]);
    let no_cert = PathBuf::new();
    let (u1, p1) = fleet_creds("k", "on-off");
    let _c1 = Client::start_at(off.udp(), no_cert.clone(), "udp", &u1, &p1);
    let (u2, p2) = fleet_creds("k", "on-on");
    let _c2 = Client::start_at(on.udp(), no_cert, "udp", &u2, &p2);
    // The admin key reaches the issuer through Redis within about 2 s: until then it is a 401.
    let listed = wait_until(Duration::from_secs(15), || {
        let (status, v) = get(&issuer, "/v1/sessions?limit=1000", &admin);
        status == 200 && v["sessions"].as_array().is_some_and(|l| l.len() == 1)
    });
    assert!(listed.is_some(), "{:?}", get(&issuer, "/v1/sessions?limit=1000", &admin));
    std::thread::sleep(Duration::from_secs(2));
    let list = list_now(&issuer, &admin);
    assert_eq!((list.len(), &list[0]["node"]), (1, &Value::from("r-on")), "{list:?}");
    let keys = redis.cli(&["--raw", "KEYS", "turnkey:session-index:*"]).unwrap();
    assert_eq!(keys.trim(), "turnkey:session-index:r-on", "only the relay with the listing writes one");
}

#[test]
fn the_issuer_alone_says_it_has_no_relay_to_list() {
    let issuer = Turnkey::issuer_in(tempfile::tempdir().unwrap(), &[]);
    let (_, token) = issuer.default_key();
    let why = "without a relay or fleet";
    not_served(&issuer, "GET", "/v1/sessions", &token, why);
    not_served(&issuer, "GET", "/v1/sessions?user=alice", &token, why);
    not_served(&issuer, "DELETE", "/v1/sessions/0000000000000001", &token, why);
    // Still 401 without a token, 400 for a bad parameter: who asks and what is asked come first.
    let (status, _) = http(issuer.addr("http"), "GET", "/v1/sessions", &[], None);
    assert_eq!(status, 401);
    let (status, _) = get(&issuer, "/v1/sessions?limit=0", &token);
    assert_eq!(status, 400);
}
