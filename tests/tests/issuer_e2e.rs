//! The issuer end to end: credentials minted through the Cloudflare-compatible API work on
//! turnkey's relay (driven by aioice) and on coturn's turnserver with the same secret; revocation
//! ends live allocations and survives a restart; keys created by `turnkey keys create` are picked
//! up by a running server.

// Test code: a missing field is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use turnkey_e2e::{aioice, aioice_revoke, bin, http, require, Turnkey};

fn generate(tk: &Turnkey, id: &str, token: &str, ttl: u64) -> serde_json::Value {
    let (status, body) = http(
        tk.addr("http"),
        "POST",
        &format!("/v1/turn/keys/{id}/credentials/generate-ice-servers"),
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        Some(&format!("{{\"ttl\": {ttl}}}")),
    );
    assert_eq!(status, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn turn_entry(v: &serde_json::Value) -> (String, String, Vec<String>) {
    let e = &v["iceServers"][1];
    let urls = e["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    (e["username"].as_str().unwrap().to_owned(), e["credential"].as_str().unwrap().to_owned(), urls)
}

#[test]
fn issued_credentials_relay_through_turnkey() {
    if !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (id, token) = tk.default_key();
    let v = generate(&tk, &id, &token, 600);
    assert_eq!(v["iceServers"][0]["urls"][0], format!("stun:{}", tk.udp()));
    let (user, pass, urls) = turn_entry(&v);
    let expected = [
        format!("turn:{}?transport=udp", tk.udp()),
        format!("turn:{}?transport=tcp", tk.tcp()),
        format!("turns:{}?transport=tcp", tk.tls()),
    ];
    assert_eq!(urls, expected);
    let r = aioice(&["relay", "--server", &tk.udp().to_string(), "--user", &user, "--password", &pass]);
    assert_eq!(r["received"], 20, "{r}\ndrops: {}", tk.drops());
}

#[test]
fn revocation_ends_live_allocations_and_survives_restart() {
    if !require("aioice") {
        return;
    }
    let mut tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (id, token) = tk.default_key();
    let (user, pass, _) = turn_entry(&generate(&tk, &id, &token, 600));
    let revoke_url = format!("http://{}/v1/turn/keys/{id}/credentials/{user}/revoke", tk.addr("http"));
    let server = tk.udp().to_string();
    let r = aioice_revoke(&server, &user, &pass, &revoke_url, &token, &[]);
    assert_eq!(r["received"], 5, "{r}\ndrops: {}", tk.drops());
    assert_eq!(r["revoke_status"], 204, "{r}");
    assert_eq!(r["after_revoke_echo_seen"], 0, "the live allocation must stop relaying: {r}");
    assert_eq!(r["reallocate"], 401, "{r}");
    assert!(tk.metric("turnkey_relay_auth_failures_total", &["revoked"]) >= 1.0);

    // Restart on the same data directory: the revocation is still in force.
    let status = tk.signal_and_wait("TERM", Duration::from_secs(40)).expect("clean exit");
    assert!(status.success());
    let data_dir = std::mem::replace(&mut tk.data_dir, tempfile::tempdir().unwrap());
    drop(tk);
    let tk = Turnkey::serve_in(data_dir, &["--allow-peer", "127.0.0.1"]);
    let r = aioice(&["authfail", "--server", &tk.udp().to_string(), "--user", &user, "--password", &pass]);
    assert_eq!(r["error"], 401, "revocation must survive a restart: {r}");
}

#[test]
fn keys_created_by_the_cli_work_without_restart() {
    let tk = Turnkey::serve(&[]);
    let out = Command::new(bin()).args(["keys", "create", "--data-dir"]).arg(tk.data_dir.path()).output().unwrap();
    assert!(out.status.success());
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(id.len(), 32);
    // Before the server has seen the new key at all, its token on the default key's path is
    // another key's token: 403, as docs/issuer.md says (not 401).
    let (default_id, _) = tk.default_key();
    let (s, body) = http(
        tk.addr("http"),
        "POST",
        &format!("/v1/turn/keys/{default_id}/credentials/generate-ice-servers"),
        &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
        Some("{}"),
    );
    assert_eq!((s, body.as_str()), (403, r#"{"error":"token is not valid for this key"}"#));
    let v = generate(&tk, id, token, 60);
    assert!(turn_entry(&v).0.contains(id));
    // A wrong token is 401, another key's token 403, a token in the query string never works.
    let (_, default_token) = tk.default_key();
    let path = format!("/v1/turn/keys/{id}/credentials/generate-ice-servers");
    let json = ("Content-Type", "application/json");
    let (s, _) = http(tk.addr("http"), "POST", &path, &[("Authorization", "Bearer nope"), json], Some("{}"));
    assert_eq!(s, 401);
    let bearer = format!("Bearer {default_token}");
    let (s, _) = http(tk.addr("http"), "POST", &path, &[("Authorization", &bearer), json], Some("{}"));
    assert_eq!(s, 403);
    let (s, _) = http(tk.addr("http"), "POST", &format!("{path}?token={token}"), &[json], Some("{}"));
    assert_ne!(s, 201);
    let out = Command::new(bin()).args(["keys", "delete", id, "--data-dir"]).arg(tk.data_dir.path()).output().unwrap();
    assert!(out.status.success());
    let (s, _) =
        http(tk.addr("http"), "POST", &path, &[("Authorization", &format!("Bearer {token}")), json], Some("{}"));
    assert_eq!(s, 401, "a deleted key stops working without restart");
}

struct Coturn(Child);

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn issued_credentials_work_on_coturn_with_the_same_secret() {
    if !require("turnserver") || !require("aioice") {
        return;
    }
    let tk = Turnkey::serve(&[]);
    let (id, token) = tk.default_key();
    let (user, pass, _) = turn_entry(&generate(&tk, &id, &token, 600));
    let port = turnkey_e2e::fixed_port();
    let coturn = Coturn(
        Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string(), "--min-port", "61000", "--max-port", "61999"])
            .args(["--use-auth-secret", "--static-auth-secret", &tk.secret(), "--realm", "turnkey"])
            .args(["--allow-loopback-peers", "--log-file", "stdout", "--simple-log", "--no-stdout-log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait (bounded) until coturn answers.
    let server = format!("127.0.0.1:{port}");
    let mut last = serde_json::Value::Null;
    for _ in 0..20 {
        last = aioice(&["relay", "--server", &server, "--user", &user, "--password", &pass, "--count", "10"]);
        if last["received"] == 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(last["received"], 10, "coturn must accept turnkey's credential: {last}");
    drop(coturn);
}

/// `turnkey check-config` validates the app endpoints' settings: extension origins by exact id,
/// and the per-endpoint shapes.
#[test]
fn check_config_validates_app_origins_and_shapes() {
    let check = |toml: &str| {
        let (_dir, path) = turnkey_e2e::config_file(toml);
        let out = Command::new(bin()).arg("check-config").arg(&path).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let good = "[issuer.app]\nallowed_origins = [\"https://app.example.com\", \
                \"chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb\", \
                \"moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2f\"]\n\
                [issuer.app.shape]\n\"GET /api/turn-credentials\" = \"object\"\n";
    assert_eq!(check(good).0, Some(0), "{}", check(good).1);
    for (bad, says) in [
        ("[issuer.app]\nallowed_origins = [\"chrome-extension://*\"]\n", "chrome-extension://*"),
        ("[issuer.app]\nallowed_origins = [\"moz-extension://ABC\"]\n", "moz-extension://ABC"),
        ("[issuer.app]\nallowed_origins = [\"https://app.example.com/\"]\n", "https://app.example.com/"),
        ("[issuer.app.shape]\n\"GET /api/turn-credentials\" = \"objects\"\n", "objects"),
        ("[issuer.app.shape]\n\"GET /api/turn/credentials\" = \"object\"\n", "GET /api/turn/credentials"),
    ] {
        let (code, stderr) = check(bad);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(stderr.contains(says), "{bad}: {stderr}");
    }
}
