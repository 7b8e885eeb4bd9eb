//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol.
//!
//! [`Chromium::launch`] starts the browser with a fresh profile, no background networking and
//! `--remote-debugging-port=0`, reads the port it chose from `<profile>/DevToolsActivePort`, finds
//! the page target with `GET /json/list` and talks CDP (JSON over a websocket) to it. The browser
//! runs in its own process group, which is killed when the value is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// The flags every run uses: headless, no sandbox (tests run as root), nothing fetched from the
/// network by the browser itself, and loopback allowed in WebRTC without mDNS obfuscation.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-domain-reliability",
    "--disable-field-trial-config",
    "--disable-dev-shm-usage",
    "--password-store=basic",
    "--mute-audio",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// What the page tests do with a browser, whichever protocol drives it: Chromium over CDP,
/// Firefox over WebDriver BiDi ([`crate::firefox::Firefox`]).
pub trait Page {
    /// Navigates the page to `url`.
    fn navigate(&mut self, url: &str);
    /// Evaluates `expr` in the page and returns its (primitive) value.
    fn eval(&mut self, expr: &str) -> Value;
    /// Saves a PNG of the page to `path`.
    fn screenshot(&mut self, path: &Path);
    /// The page's console messages and errors, one per line.
    fn console(&self) -> String;
    /// The browser's own output.
    fn log(&self) -> String;

    /// Polls `expr` until it is `true` or `timeout` passes; returns whether it became true.
    fn wait_for(&mut self, expr: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.eval(expr) == json!(true) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }
}

/// A running headless Chromium with one page attached over CDP.
#[derive(Debug)]
pub struct Chromium {
    child: Child,
    profile: tempfile::TempDir,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// CDP events received so far (console messages, exceptions, log entries, ...).
    pub events: Vec<Value>,
}

impl Chromium {
    /// Starts Chromium with [`CHROMIUM_FLAGS`] plus `extra` flags on `about:blank` and attaches to
    /// the page. Panics (with the browser's output) when it does not come up within 30 s.
    pub fn launch(extra: &[&str]) -> Self {
        Self::start(CHROMIUM_FLAGS.iter().copied(), extra)
    }

    /// Like [`Chromium::launch`], with the unpacked extension in `dir` loaded (`--load-extension`,
    /// and without `--disable-extensions`). Its id is [`extension_id`] of `dir`.
    pub fn launch_with_extension(dir: &Path, extra: &[&str]) -> Self {
        let load = format!("--load-extension={}", dir.display());
        let flags = CHROMIUM_FLAGS.iter().copied().filter(|f| *f != "--disable-extensions");
        Self::start(flags.chain(std::iter::once(load.as_str())), extra)
    }

    fn start<'a>(flags: impl Iterator<Item = &'a str>, extra: &[&str]) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let log = File::create(profile.path().join("chromium.log")).unwrap();
        let mut cmd = Command::new("chromium");
        cmd.args(flags)
            .arg(format!("--user-data-dir={}", profile.path().join("profile").display()))
            .args(extra)
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        let mut child = cmd.spawn().expect("spawn chromium");
        let port_file = profile.path().join("profile").join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = wait_for_port(
            &mut child,
            "chromium",
            deadline,
            || {
                std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            },
            || read_log(profile.path()),
        );
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let ws_url = loop {
            let (status, body) = crate::http(devtools, "GET", "/json/list", &[], None);
            let page = serde_json::from_str::<Value>(&body).ok().and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
            });
            if let Some(url) = page {
                break url;
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                panic!("no page target ({status}: {body})");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect_timeout(&devtools, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("CDP websocket handshake");
        ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut me = Self { child, profile, ws, next_id: 0, events: Vec::new() };
        me.call("Runtime.enable", json!({}));
        me.call("Log.enable", json!({}));
        me.call("Page.enable", json!({}));
        me
    }

    /// Sends one CDP command and waits (10 s at most) for its answer; panics on a CDP error.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": method, "params": params});
        let v = ws_call(&mut self.ws, msg, Duration::from_secs(10), &mut self.events);
        if let Some(err) = v.get("error") {
            panic!("CDP {method} failed: {err}");
        }
        v["result"].clone()
    }

    /// Renders like a phone: 412 CSS px wide, touch, mobile viewport rules.
    pub fn phone_viewport(&mut self) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 412, "height": 915, "deviceScaleFactor": 1, "mobile": true}),
        );
    }
}

impl Page for Chromium {
    /// Evaluates `expr` in the page and returns its value (by value).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    /// Navigates the page to `url`.
    fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigation to {url} failed: {r}");
    }

    /// Saves a PNG of the whole page (beyond the viewport) to `path`.
    fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap_or("")).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }

    /// Console messages, uncaught exceptions and browser log entries (CSP violations among them),
    /// one per line, for failure messages.
    fn console(&self) -> String {
        let mut out = String::new();
        for e in &self.events {
            let p = &e["params"];
            let line = match e["method"].as_str() {
                Some("Runtime.consoleAPICalled") => {
                    let args: Vec<String> = p["args"]
                        .as_array()
                        .map(|a| a.iter().map(|x| x["value"].to_string()).collect())
                        .unwrap_or_default();
                    format!("console.{}: {}", p["type"].as_str().unwrap_or("?"), args.join(" "))
                }
                Some("Runtime.exceptionThrown") => format!("exception: {}", p["exceptionDetails"]),
                Some("Log.entryAdded") => {
                    format!("log {}: {}", p["entry"]["level"].as_str().unwrap_or("?"), p["entry"]["text"])
                }
                _ => continue,
            };
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The browser's own stdout/stderr so far.
    fn log(&self) -> String {
        read_log(self.profile.path())
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Ask politely, then end the whole process group (renderer, GPU and utility processes).
        let msg = json!({"id": 0, "method": "Browser.close"}).to_string();
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

/// The id Chromium gives an unpacked extension loaded from `dir` (an absolute path): the first
/// 32 hex digits of SHA-256 of the path, each digit `0`-`f` written as a letter `a`-`p`.
pub fn extension_id(dir: &Path) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    digest[..16].iter().flat_map(|b| [b >> 4, b & 0xf]).map(|n| char::from(b'a' + n)).collect()
}

/// Sends `msg`, a JSON command with an `id` and a `method`, on a CDP or WebDriver BiDi websocket
/// (read timeout set short) and returns the whole answer carrying that id; each protocol checks
/// its own error shape. Events (messages with a `method`) that arrive meanwhile go to `events`.
/// Panics when no answer comes within `timeout`.
pub(crate) fn ws_call(ws: &mut WebSocket<TcpStream>, msg: Value, timeout: Duration, events: &mut Vec<Value>) -> Value {
    let (id, method) = (msg["id"].clone(), msg["method"].as_str().unwrap_or("?").to_owned());
    ws.send(Message::text(msg.to_string())).unwrap_or_else(|e| panic!("send {method}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        assert!(Instant::now() < deadline, "{method}: no answer in {timeout:?}");
        let msg = match ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => panic!("{method}: {e}"),
        };
        let Ok(text) = msg.to_text() else { continue };
        let Ok(v) = serde_json::from_str::<Value>(text) else { continue };
        if v["id"] == id {
            return v;
        }
        if v.get("method").is_some() {
            events.push(v);
        }
    }
}

/// Polls `read` for the remote-debugging port the browser `what` (led by `child`) chose; panics
/// with `log()` when the browser exits first or `deadline` passes.
pub(crate) fn wait_for_port(
    child: &mut Child,
    what: &str,
    deadline: Instant,
    read: impl Fn() -> Option<u16>,
    log: impl Fn() -> String,
) -> u16 {
    loop {
        if let Some(p) = read() {
            return p;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited ({status}) before listening:\n{}", log());
        }
        if Instant::now() > deadline {
            kill_group(child);
            panic!("{what} did not open its remote-debugging port in time:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs the process group led by `child` (started with `process_group(0)`) and reaps it.
pub(crate) fn kill_group(child: &mut Child) {
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(profile: &Path) -> String {
    let text = std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
