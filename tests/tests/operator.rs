//! The operator paths of issue 27, each as a new operator follows the docs: `turnkey creds` never
//! invents a secret and the banner names the command that matches this process's secret; a
//! second relay under a live node id is refused; the issuer hands out what the banner prints;
//! every unavailable listening address is reported at once; `turnkey load` names a 401 storm, a
//! 403 (`--allow-peer`) and the unauthenticated reply limit.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_e2e::{bin, http, require, run_with_timeout, Turnkey};

/// A `turnkey serve` whose every stdout line (the banner) is kept.
struct Banner {
    child: Child,
    lines: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Banner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Banner {
    /// Starts `turnkey serve ARGS` in a fresh directory (its working directory) and reads stdout
    /// until the banner's credential line.
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut child = Command::new(bin())
            .arg("serve")
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // The banner ends with the credential line, or (with an issuer) the issuer's line.
        let mut deadline = Instant::now() + Duration::from_secs(30);
        let mut lines: Vec<String> = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let last = l.starts_with("turnkey: or ask the issuer");
                    if l.contains("get a credential") {
                        deadline = Instant::now() + Duration::from_secs(2);
                    }
                    lines.push(l);
                    if last {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        assert!(lines.iter().any(|l| l.contains("get a credential")), "no banner: {lines:?}");
        Self { child, lines, _dir: dir }
    }

    fn line(&self, prefix: &str) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {:?}", self.lines))
    }

    /// `key=addr` of the ready line.
    fn addr(&self, key: &str) -> std::net::SocketAddr {
        let ready = self.line("turnkey listening ");
        let v = ready.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap();
        v.split(',').next().unwrap().parse().unwrap()
    }

    /// The command between backquotes on the "get a credential" line.
    fn creds_command(&self) -> String {
        let l = self.line("turnkey: get a credential with `");
        l.trim_end_matches('`').to_owned()
    }
}

fn turnkey(args: &[&str], cwd: &Path) -> Output {
    run_with_timeout(Command::new(bin()).args(args).current_dir(cwd), Duration::from_secs(120))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// One allocation with a minted username/credential pair, by `turnkey load`.
fn allocates(server: std::net::SocketAddr, user: &str, password: &str) -> bool {
    let o = turnkey(
        &["load", "--server", &server.to_string(), "--user", user, "--password", password]
            .iter()
            .chain(&["--scenario", "allocations", "--count", "1", "--quiet"])
            .copied()
            .collect::<Vec<_>>(),
        Path::new("/"),
    );
    o.status.success()
}

#[test]
fn creds_without_a_secret_refuses_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["creds", "--user", "alice"][..], &["creds", "--user", "alice", "--data-dir", "r1-data"]] {
        let o = turnkey(args, dir.path());
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} minted without a secret: {t}");
        assert!(t.contains("--secret-file") && t.contains("--secret") && t.contains("--data-dir"), "{t}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{args:?} created files");
    }
}

#[test]
fn the_banner_prints_the_creds_command_matching_the_secret_source() {
    // A relay started with --secret-file: its banner's command mints credentials it accepts.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let o = turnkey(&["secret", "generate", "--out", secret.to_str().unwrap()], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let args = ["--secret-file", "secret", "--data-dir", "./r1-data", "--udp", "127.0.0.1:0", "--tcp", "off"];
    let args = [&args[..], &["--tls", "off", "--http", "off", "--metrics", "off", "--relay-ip", "127.0.0.1"]].concat();
    let tk = Banner::start_in(dir, &args);
    let cmd = tk.creds_command();
    assert_eq!(cmd, "turnkey creds --secret-file secret --user alice");
    let argv: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    let o = turnkey(&argv, tk._dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (user, pass) = (v["username"].as_str().unwrap(), v["credential"].as_str().unwrap());
    assert!(allocates(tk.addr("udp"), user, pass), "the banner's command minted a credential the relay refuses");
    assert!(!tk._dir.path().join("r1-data/secret").exists(), "a secret was generated beside --secret-file");
    // The default start: the data directory's generated secret.
    let tk =
        Banner::start(&["--udp", "127.0.0.1:0", "--tcp", "off", "--tls", "off", "--http", "off", "--metrics", "off"]);
    assert_eq!(tk.creds_command(), "turnkey creds --data-dir ./turnkey-data --user alice");
}

#[test]
fn the_issuer_hands_out_the_host_the_banner_prints() {
    // The default start (wildcard listeners, no --public-host), ports 0.
    let tk = Banner::start(&[
        "--udp",
        "0.0.0.0:0",
        "--tcp",
        "0.0.0.0:0",
        "--tls",
        "0.0.0.0:0",
        "--http",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let banner: Vec<String> = tk.line("turnkey: TURN URLs: ").split_whitespace().map(str::to_owned).collect();
    assert_eq!(banner.len(), 3, "{banner:?}");
    assert!(banner.iter().all(|u| !u.contains("localhost") && !u.contains("0.0.0.0")), "{banner:?}");
    let keys = tk._dir.path().join("turnkey-data/keys");
    let token_file = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "token"))
        .unwrap();
    let id = token_file.file_stem().unwrap().to_string_lossy().into_owned();
    let token = std::fs::read_to_string(&token_file).unwrap();
    let (status, body) = http(
        tk.addr("http"),
        "POST",
        &format!("/v1/turn/keys/{id}/credentials/generate-ice-servers"),
        &[("Authorization", &format!("Bearer {}", token.trim())), ("Content-Type", "application/json")],
        Some(r#"{"ttl": 600}"#),
    );
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut issued: Vec<String> = Vec::new();
    let mut stun: Vec<String> = Vec::new();
    for entry in v["iceServers"].as_array().unwrap() {
        for u in entry["urls"].as_array().unwrap() {
            let u = u.as_str().unwrap().to_owned();
            if u.starts_with("stun:") {
                stun.push(u);
            } else {
                issued.push(u);
            }
        }
    }
    assert_eq!(issued, banner, "the issuer's answer differs from the banner");
    let host = banner[0].trim_start_matches("turn:").rsplit_once(':').unwrap().0.to_owned();
    assert_eq!(stun, [format!("stun:{host}:{}", tk.addr("udp").port())]);
}

#[test]
fn a_second_relay_under_a_live_node_id_is_refused() {
    if !require("redis-server") {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).expect("redis-server");
    let url = redis.url();
    let first = Turnkey::serve(&["--http", "off", "--redis", &url, "--node-id", "same-host"]);
    let mut second = Command::new(bin());
    let dir = tempfile::tempdir().unwrap();
    second.args(Turnkey::serve_args(dir.path(), &["--http", "off", "--redis", &url, "--node-id", "same-host"]));
    let o = run_with_timeout(&mut second, Duration::from_secs(60));
    let t = text(&o);
    assert!(!o.status.success(), "a second relay under a live node id started: {t}");
    assert!(t.contains("node id \"same-host\" is held by another live relay") && t.contains("--node-id"), "{t}");
    assert!(!t.contains("turnkey listening"), "it served before refusing: {t}");
    let listed = redis.cli(&["--scan", "--pattern", "*relay:*"]).unwrap_or_default();
    assert!(listed.contains("same-host"), "the first relay's record is gone: {listed}");
    drop(first);
    // A dead holder's record (SIGKILL: no leave) does not block a restart under the same id.
    let mut a = Turnkey::serve(&["--http", "off", "--redis", &url, "--node-id", "crashed"]);
    a.child.kill().unwrap();
    let _ = a.child.wait();
    let _b = Turnkey::serve(&["--http", "off", "--redis", &url, "--node-id", "crashed"]);
}

#[test]
fn every_unavailable_listening_address_is_reported_at_once() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (u, t, h) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap(), web.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let args = Turnkey::serve_args(
        dir.path(),
        &["--udp", &u.to_string(), "--tcp", &t.to_string(), "--http", &h.to_string(), "--redis", "redis://127.0.0.1:1"],
    );
    let o = run_with_timeout(Command::new(bin()).args(args).env("TURNKEY_LOG", "info"), Duration::from_secs(60));
    let t_out = text(&o);
    assert!(!o.status.success(), "{t_out}");
    for part in [format!("udp {u}"), format!("tcp {t}"), format!("http {h}")] {
        assert!(t_out.contains(&part), "{part} not named: {t_out}");
    }
    assert!(!t_out.to_lowercase().contains("redis unreachable"), "a port clash logged Redis trouble: {t_out}");
}

#[test]
fn a_storm_refused_with_401_exits_1_naming_it() {
    let tk = Turnkey::serve(&[]);
    let o = turnkey(
        &["load", "--server", &tk.udp().to_string(), "--secret", "not-the-relays-secret"]
            .iter()
            .chain(&["--scenario", "allocations", "--count", "20", "--quiet"])
            .copied()
            .collect::<Vec<_>>(),
        Path::new("/"),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL: no allocation succeeded (20 refused with 401"), "{t}");
    assert!(t.contains("hint: 20 refused with 401 Unauthorized"), "{t}");
}

#[test]
fn a_loopback_echo_peer_refused_with_403_hints_at_allow_peer() {
    // Relay ports below the ephemeral range the echo peer binds in: an echo port inside the relay
    // range would be one of the relay's own relayed addresses, which the default policy allows.
    let tk = Turnkey::serve(&["--relay-ports", "20000-29999"]);
    let secret = tk.secret();
    let base = ["load", "--server", &tk.tcp().to_string(), "--transport", "tcp", "--mode", "send", "--echo-peer"];
    let args = [&base[..], &["--secret", &secret, "--duration", "1", "--quiet"]].concat();
    let o = turnkey(&args, Path::new("/"));
    let t = text(&o);
    // The relay IP is 127.0.0.1 here, so the permission is granted (its own relay ports are
    // reachable) and each Send to the echo port is dropped without an answer.
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("nothing was delivered") && t.contains("--allow-peer 127.0.0.1"), "{t}");
    // In channel mode the ChannelBind itself is refused with 403.
    let base = ["load", "--server", &tk.tcp().to_string(), "--transport", "tcp", "--echo-peer"];
    let o = turnkey(&[&base[..], &["--secret", &secret, "--duration", "1", "--quiet"]].concat(), Path::new("/"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("403") && t.contains("--allow-peer 127.0.0.1"), "{t}");
    // The relay the example describes (loopback peers allowed) passes.
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let secret = tk.secret();
    let base = ["load", "--server", &tk.tcp().to_string(), "--transport", "tcp", "--mode", "send", "--echo-peer"];
    let o = turnkey(&[&base[..], &["--secret", &secret, "--duration", "1", "--quiet"]].concat(), Path::new("/"));
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_storm_from_one_host_names_the_unauthenticated_reply_limit() {
    let limited = Turnkey::serve(&["--shards", "1"]);
    let storm = |tk: &Turnkey| {
        let server = tk.udp().to_string();
        let secret = tk.secret();
        turnkey(
            &["load", "--server", &server, "--secret", &secret, "--scenario", "allocations"]
                .iter()
                .chain(&["--count", "800", "--concurrency", "64", "--timeout", "3", "--quiet"])
                .copied()
                .collect::<Vec<_>>(),
            Path::new("/"),
        )
    };
    let t = text(&storm(&limited));
    assert!(t.contains("hint: answers went missing") && t.contains("--unauth-replies-per-sec 0"), "{t}");
    drop(limited);
    let lifted = Turnkey::serve(&["--shards", "1", "--unauth-replies-per-sec", "0"]);
    let o = storm(&lifted);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(!t.contains("hint: answers went missing"), "the lifted limit still loses answers: {t}");
}

/// The relay DaemonSet as rendered (`deploy/kubernetes/render.py`): its relay.toml and each env
/// variable of the relay container as `NAME=value` or `NAME=fieldRef:PATH`.
fn rendered_relay_pod() -> (String, Vec<(String, String)>) {
    let script = r#"
import json, subprocess, sys, yaml
docs = list(yaml.safe_load_all(subprocess.check_output([sys.executable, sys.argv[1]])))
conf = [d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["relay.toml"]
ds = [d for d in docs if d["kind"] == "DaemonSet"][0]
env = []
for e in ds["spec"]["template"]["spec"]["containers"][0].get("env", []):
    if "value" in e:
        env.append([e["name"], e["value"]])
    else:
        env.append([e["name"], "fieldRef:" + e["valueFrom"]["fieldRef"]["fieldPath"]])
print(json.dumps({"conf": conf, "env": env}))
"#;
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(turnkey_e2e::root().join("deploy/kubernetes/render.py"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let env = v["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_str().unwrap().to_owned()))
        .collect();
    (v["conf"].as_str().unwrap().to_owned(), env)
}

#[test]
fn kubernetes_relay_pods_advertise_their_own_node() {
    // PyYAML comes with kubernetes-validate (the test command installs it).
    if !require("kubernetes-validate") {
        return;
    }
    let (conf, env) = rendered_relay_pod();
    let from_node = env
        .iter()
        .filter(|(k, _)| k == "TURNKEY_EXTERNAL_IP" || k == "TURNKEY_PUBLIC_HOST")
        .any(|(_, v)| v == "fieldRef:status.hostIP" || v == "fieldRef:spec.nodeName");
    assert!(from_node, "no per-node address from the downward API: {env:?}");
    // Two pods on two nodes, as the kubelet would start them (the config file of the ConfigMap,
    // the env resolved for each node), with listeners moved to loopback port 0 and without the
    // fleet's Redis: each must advertise its own node's address, in the banner and the issuer.
    let mut seen = Vec::new();
    for (node, host_ip) in [("node-a", "127.0.0.2"), ("node-b", "127.0.0.3")] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("relay.toml");
        std::fs::write(&cfg, &conf).unwrap();
        std::fs::write(dir.path().join("secret"), "k8s-test-secret\n").unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("--config").arg(&cfg).current_dir(dir.path());
        for (k, v) in &env {
            let value = match v.as_str() {
                "fieldRef:status.hostIP" => host_ip.to_owned(),
                "fieldRef:spec.nodeName" => node.to_owned(),
                other => other.to_owned(),
            };
            if k != "TURNKEY_REDIS" {
                cmd.env(k, value);
            }
        }
        cmd.arg("--data-dir").arg(dir.path());
        cmd.args(["--secret-file", "secret", "--udp", "0.0.0.0:0", "--tcp", "0.0.0.0:0"]).args([
            "--tls",
            "off",
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--relay-ip",
            "127.0.0.1",
        ]);
        let tk = Turnkey::launch(cmd, dir, "turnkey listening ");
        let (id, token) = tk.default_key();
        let (status, body) = http(
            tk.addr("http"),
            "POST",
            &format!("/v1/turn/keys/{id}/credentials/generate-ice-servers"),
            &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
            Some(r#"{"ttl": 600}"#),
        );
        assert_eq!(status, 201, "{body}");
        let want = format!("turn:{host_ip}:{}?transport=udp", tk.udp().port());
        assert!(body.contains(&want), "the pod on {node} does not advertise its node ({want}): {body}");
        seen.push(want);
    }
    assert_ne!(seen[0], seen[1]);
}
