//! Headless Firefox (Debian's `firefox-esr`) driven over WebDriver BiDi, its built-in remote
//! protocol (no geckodriver: Debian does not package it).
//!
//! [`Firefox::launch`] makes a fresh profile (its prefs in `user.js`, its NSS certificate store
//! created with `certutil`, test CAs imported there as a user would in the certificate manager),
//! starts the browser with `--remote-debugging-port=0`, reads the port it chose from
//! `<profile>/WebDriverBiDiServer.json`, opens a BiDi session on `ws://127.0.0.1:<port>/session`
//! and attaches to its first tab. The browser runs in its own process group, killed on drop.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::browser::{kill_group, wait_for_port, ws_call, Page};

/// How a test profile is set up.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// PEM files of CAs to trust for TLS (`certutil -t C,,`).
    pub trusted_cas: Vec<PathBuf>,
    /// Host names resolved to loopback (`network.dns.localDomains`), e.g. a `turns:` host name.
    pub local_domains: Vec<String>,
}

/// The relay's DNS name in the Firefox tests: resolved to loopback inside the profile only
/// ([`Profile::local_domains`]), and named by the tests' [`TestCa`] certificates.
pub const TURN_NAME: &str = "turn.turnkey.test";

/// A test CA and a server certificate it issued, as PEM files (kept while the value lives).
#[derive(Debug)]
pub struct TestCa {
    _dir: tempfile::TempDir,
    /// The CA certificate (to import into a browser profile).
    pub ca: PathBuf,
    /// The server certificate followed by the CA's (turnkey's `--tls-cert`).
    pub cert: PathBuf,
    /// The server key (turnkey's `--tls-key`).
    pub key: PathBuf,
}

impl TestCa {
    /// A fresh CA and a certificate for `names` (DNS names or IP addresses) issued by it.
    pub fn issue(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "turnkey browser test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("turnkey"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        let me = Self {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        std::fs::write(&me.ca, ca.pem()).unwrap();
        std::fs::write(&me.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&me.key, key.serialize_pem()).unwrap();
        me
    }

    /// `turnkey serve` flags serving this certificate.
    pub fn tls_args(&self) -> [&str; 4] {
        ["--tls-cert", self.cert.to_str().unwrap(), "--tls-key", self.key.to_str().unwrap()]
    }
}

/// The prefs of every run: no first-run or update noise, nothing fetched from the network by the
/// browser itself, WebRTC allowed on loopback without mDNS host names.
const PREFS: &[(&str, &str)] = &[
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.aboutwelcome.enabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("toolkit.telemetry.reportingpolicy.firstRun", "false"),
    ("app.update.disabledForTesting", "true"),
    ("app.normandy.enabled", "false"),
    ("messaging-system.rsexperimentloader.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.proxy.type", "0"),
    ("network.trr.mode", "5"),
    ("media.peerconnection.ice.loopback", "true"),
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
    ("media.navigator.permission.disabled", "true"),
];

/// A running headless Firefox with a BiDi session on its first tab.
#[derive(Debug)]
pub struct Firefox {
    child: Child,
    dir: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    context: String,
    next_id: u64,
    /// BiDi events received so far (`log.entryAdded`: console messages and errors).
    pub events: Vec<Value>,
}

impl Firefox {
    /// Starts headless Firefox on a fresh `profile` and attaches to its tab. Panics (with the
    /// browser's output) when it does not come up within 60 s.
    pub fn launch(profile: &Profile) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prof = dir.path().join("profile");
        std::fs::create_dir_all(&prof).unwrap();
        let mut prefs: Vec<String> = PREFS.iter().map(|(k, v)| format!("user_pref(\"{k}\", {v});")).collect();
        if !profile.local_domains.is_empty() {
            prefs.push(format!("user_pref(\"network.dns.localDomains\", \"{}\");", profile.local_domains.join(",")));
        }
        std::fs::write(prof.join("user.js"), prefs.join("\n") + "\n").unwrap();
        let db = format!("sql:{}", prof.display());
        certutil(&["-N", "-d", &db, "--empty-password"]);
        for (i, ca) in profile.trusted_cas.iter().enumerate() {
            let name = format!("turnkey test CA {i}");
            certutil(&["-A", "-d", &db, "-n", &name, "-t", "C,,", "-i", &ca.display().to_string()]);
        }

        let log = File::create(dir.path().join("firefox.log")).unwrap();
        let mut cmd = Command::new("firefox-esr");
        cmd.args(["--headless", "--no-remote", "--remote-debugging-port=0", "--profile"])
            .arg(&prof)
            .arg("about:blank")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn firefox-esr");
        let port_file = prof.join("WebDriverBiDiServer.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = wait_for_port(
            &mut child,
            "firefox",
            deadline,
            || {
                std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                    .and_then(|v| v["ws_port"].as_u64())
                    .and_then(|p| u16::try_from(p).ok())
            },
            || read_log(dir.path()),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://127.0.0.1:{port}/session");
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("WebDriver BiDi websocket handshake");
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut me = Self { child, dir, ws, context: String::new(), next_id: 0, events: Vec::new() };
        me.call("session.new", json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": false}}}));
        let tree = me.call("browsingContext.getTree", json!({}));
        me.context = tree["contexts"][0]["context"].as_str().expect("a browsing context").to_owned();
        me.call("session.subscribe", json!({"events": ["log.entryAdded"]}));
        me
    }

    /// Sends one BiDi command and waits (60 s at most) for its answer; panics on an error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": method, "params": params});
        let v = ws_call(&mut self.ws, msg, Duration::from_secs(60), &mut self.events);
        if v["type"] == "error" {
            panic!("BiDi {method} failed: {v}");
        }
        v["result"].clone()
    }

    /// A phone-sized viewport (412 x 915 CSS px).
    pub fn phone_viewport(&mut self) {
        self.call(
            "browsingContext.setViewport",
            json!({"context": self.context, "viewport": {"width": 412, "height": 915}}),
        );
    }
}

impl Page for Firefox {
    /// Navigates the tab to `url` and waits for the load event.
    fn navigate(&mut self, url: &str) {
        self.call("browsingContext.navigate", json!({"context": self.context, "url": url, "wait": "complete"}));
    }

    /// Evaluates `expr` in the page; returns its value when it is a string, number or boolean,
    /// else null (stringify objects with `JSON.stringify`). Panics on an exception.
    fn eval(&mut self, expr: &str) -> Value {
        let target = json!({"context": self.context});
        let r = self.call(
            "script.evaluate",
            json!({"expression": expr, "target": target, "awaitPromise": false, "resultOwnership": "none"}),
        );
        assert_eq!(r["type"], "success", "{expr}: {r}");
        match r["result"]["type"].as_str() {
            Some("string" | "number" | "boolean") => r["result"]["value"].clone(),
            _ => Value::Null,
        }
    }

    /// Saves a PNG of the whole document to `path`.
    fn screenshot(&mut self, path: &Path) {
        let r = self.call("browsingContext.captureScreenshot", json!({"context": self.context, "origin": "document"}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap_or("")).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Console messages and errors, one per line, for failure messages.
    fn console(&self) -> String {
        let mut out = String::new();
        for e in self.events.iter().filter(|e| e["method"] == "log.entryAdded") {
            let p = &e["params"];
            out.push_str(&format!("{} {}: {}\n", p["type"], p["level"], p["text"]));
        }
        out
    }

    /// The browser's own stdout/stderr so far (last 60 lines).
    fn log(&self) -> String {
        read_log(self.dir.path())
    }
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let msg = json!({"id": 0, "method": "browser.close", "params": {}}).to_string();
        let _ = self.ws.send(Message::text(msg));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(&mut self.child);
    }
}

/// Runs NSS's `certutil` (libnss3-tools) on a profile's certificate store.
fn certutil(args: &[&str]) {
    let out = Command::new("certutil").args(args).output().expect("run certutil (libnss3-tools)");
    assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn read_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("firefox.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
