//! turnkey as a drop-in for apps' hand-written TURN endpoints, in a real headless Chromium: pages
//! written the way those apps wrote them (`tests/apps/`) get their servers from turnkey's app
//! endpoints, gather relay candidates over UDP, TCP and TLS with exactly what they got, and make
//! a relay-only call per transport through turnkey.
//!
//! - an object-shape page (Cloudflare's older `/generate` answer, wrapped in an array) on its own
//!   origin, served the object shape by `[issuer.app.shape]`;
//! - an array-shape page (`generate-ice-servers` answer, `POST {"ttl"}`) on its own origin;
//! - a real unpacked Manifest V3 extension (`--load-extension`), whose page calls from its
//!   `chrome-extension://<id>` origin with `?shape=object`;
//! - the array-shape page in Firefox too, with turnkey deployed as Firefox needs for `turns:`.

// Test code: a missing field in the page's JSON is a failure, so unwrap panics on purpose.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use turnkey_e2e::browser::{extension_id, Chromium, Page};
use turnkey_e2e::firefox::{Firefox, Profile, TestCa, TURN_NAME};
use turnkey_e2e::{artifacts, config_file, require, root, Turnkey};

/// How long a page may take from navigation to `appResult.done` (a gather and three calls).
const PAGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Serves the files of `dir` over HTTP on 127.0.0.1:0 (the app's own origin), from a thread
/// that lives as long as the test process; GET only, query strings ignored.
fn serve_site(dir: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65_536 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_owned();
            let path = line.split(' ').nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_owned();
            let name = path.trim_start_matches('/');
            let file = (!name.contains("..") && !name.is_empty()).then(|| dir.join(name));
            let reply = match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let ctype = if name.ends_with(".js") { "text/javascript" } else { "text/html; charset=utf-8" };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    [head.into_bytes(), body].concat()
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = s.write_all(&reply);
        }
    });
    addr
}

/// Starts turnkey with `issuer` appended to its config and the default peer policy: both calling
/// peer connections are in the page and relay to each other's relayed address on 127.0.0.1, which
/// the policy allows as the relay's own (no `--allow-peer`).
fn turnkey(issuer: &str) -> (Turnkey, tempfile::TempDir) {
    let (dir, config) = config_file(issuer);
    let tk = Turnkey::serve(&["--config", config.to_str().unwrap()]);
    (tk, dir)
}

/// Loads `url` in `chrome` (Chromium or Firefox), waits for `appResult.done`, saves a screenshot
/// and returns the result.
fn run_page(chrome: &mut impl Page, url: &str, shot: &str) -> Value {
    chrome.navigate(url);
    let done = chrome.wait_for("!!(window.appResult && window.appResult.done)", PAGE_TIMEOUT);
    let path = artifacts().join(shot);
    chrome.screenshot(&path);
    eprintln!("screenshot: {}", path.display());
    let json = chrome.eval("JSON.stringify(window.appResult || null)");
    assert!(
        done,
        "the page did not finish in {PAGE_TIMEOUT:?}: {json}\nconsole:\n{}\nbrowser log:\n{}",
        chrome.console(),
        chrome.log()
    );
    serde_json::from_str(json.as_str().unwrap_or("null")).unwrap()
}

/// The proof for one page: relay candidates from turnkey over UDP, TCP and TLS, a relay-only
/// call over each that echoed every message, and turnkey's counters showing the relayed bytes.
fn assert_relayed_everywhere(tk: &Turnkey, r: &Value, console: &str) {
    let ctx = format!("appResult = {r:#}\nconsole:\n{console}");
    assert!(r["error"].is_null(), "{ctx}");
    let relays = r["relays"].as_array().unwrap();
    for t in ["udp", "tcp", "tls"] {
        let got: Vec<&Value> = relays.iter().filter(|c| c["protocol"] == t).collect();
        assert!(!got.is_empty(), "no relay candidate over {t}: {ctx}");
        for c in got {
            // turnkey relays on 127.0.0.1.
            assert!(c["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{ctx}");
        }
        let call = &r["calls"][t];
        assert!(call["error"].is_null(), "call over {t}: {ctx}");
        assert_eq!(call["echoed"], 10, "{ctx}");
        assert_eq!(call["localCandidateType"], "relay", "{ctx}");
        assert_eq!(call["relayProtocol"], t, "the call reached turnkey over {t}: {ctx}");
    }
    // Both directions of every transport went through turnkey (flushed every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in ["udp", "tcp", "tls"] {
        let label = format!("transport=\"{t}\"");
        loop {
            let c2p = tk.metric("turnkey_relay_relayed_bytes_total", &["client_to_peer", &label]);
            let p2c = tk.metric("turnkey_relay_relayed_bytes_total", &["peer_to_client", &label]);
            if c2p > 3000.0 && p2c > 3000.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{t}: relayed c2p={c2p} p2c={p2c}\n{}", tk.metrics());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `tests/apps/`.
fn apps() -> PathBuf {
    root().join("tests/apps")
}

/// Runs `page` of the app site (served from its own origin, which turnkey allows) against a
/// turnkey with `shapes` as its `[issuer.app.shape]` table.
fn app_page(page: &str, shapes: &str, shot: &str) -> (Turnkey, Value, String) {
    let site = serve_site(apps());
    let origin = format!("http://{site}");
    let (tk, _dir) =
        turnkey(&format!("[issuer.app]\nallowed_origins = [\"{origin}\"]\n[issuer.app.shape]\n{shapes}\n"));
    // The turns: URL is the test relay's self-signed certificate, on loopback only.
    let mut chrome = Chromium::launch(&["--ignore-certificate-errors"]);
    let url = format!("{origin}/{page}?issuer=http://{}", tk.addr("http"));
    let r = run_page(&mut chrome, &url, shot);
    let console = chrome.console();
    (tk, r, console)
}

#[test]
fn chromium_object_shape_app_relays_over_udp_tcp_and_tls() {
    if !require("chromium") {
        return;
    }
    let (tk, r, console) =
        app_page("object.html", "\"GET /api/turn-credentials\" = \"object\"", "app-object-shape.png");
    assert_relayed_everywhere(&tk, &r, &console);
    // What the page handed to RTCPeerConnection: the one object, every URL in it.
    let servers = r["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{r:#}");
    assert!(servers[0]["urls"].as_array().unwrap().len() >= 4, "{r:#}");
    assert!(servers[0]["username"].is_string() && servers[0]["credential"].is_string());
    // The same page code given the array shape fails the way the issue reports.
    let err = r["arrayAnswerError"].as_str().unwrap_or_default();
    assert!(err.starts_with("TypeError") && err.contains("Malformed RTCIceServer"), "{r:#}");
}

#[test]
fn chromium_array_shape_app_relays_over_udp_tcp_and_tls() {
    if !require("chromium") {
        return;
    }
    let (tk, r, console) = app_page("array.html", "", "app-array-shape.png");
    assert_relayed_everywhere(&tk, &r, &console);
    let servers = r["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "STUN entry, then the TURN entry: {r:#}");
    assert!(servers[1]["username"].is_string());
    // The cross-origin POST with a JSON body went through a preflight and the request itself.
    let ok = tk.metric("turnkey_issuer_requests_total", &["endpoint=\"/api/turn/credentials\"", "status=\"200\""]);
    let preflight =
        tk.metric("turnkey_issuer_requests_total", &["endpoint=\"/api/turn/credentials\"", "status=\"204\""]);
    assert_eq!((ok, preflight), (1.0, 1.0), "{}", tk.metrics());
}

/// The array-shape app in Firefox (Gecko's own ICE stack), with turnkey deployed as Firefox needs
/// for TURN over TLS: a DNS name as `--public-host` and a certificate for it from a CA the
/// profile trusts (see browser_firefox.rs for why, and for the setups Firefox refuses).
#[test]
fn firefox_array_shape_app_relays_over_udp_tcp_and_tls() {
    if !(require("firefox-esr") && require("certutil")) {
        return;
    }
    let site = serve_site(apps());
    let origin = format!("http://{site}");
    let certs = TestCa::issue(&[TURN_NAME]);
    let (_dir, config) = config_file(&format!("[issuer.app]\nallowed_origins = [\"{origin}\"]\n"));
    let args = [&["--config", config.to_str().unwrap(), "--public-host", TURN_NAME][..], &certs.tls_args()].concat();
    let tk = Turnkey::serve(&args);
    let profile = Profile { trusted_cas: vec![certs.ca.clone()], local_domains: vec![TURN_NAME.to_owned()] };
    let mut firefox = Firefox::launch(&profile);
    let url = format!("{origin}/array.html?issuer=http://{}", tk.addr("http"));
    let r = run_page(&mut firefox, &url, "app-array-shape-firefox.png");
    let console = firefox.console();
    assert_relayed_everywhere(&tk, &r, &console);
    let servers = r["iceServers"].as_array().unwrap();
    assert_eq!(servers.len(), 2, "STUN entry, then the TURN entry: {r:#}");
    let urls = servers[1]["urls"].as_array().unwrap();
    assert!(urls.iter().any(|u| u.as_str().unwrap().starts_with(&format!("turns:{TURN_NAME}:"))), "{r:#}");
}

/// Copies the extension and the shared harness into a fresh directory (its path fixes the id).
fn extension_dir(into: &Path) -> PathBuf {
    let dir = into.join("extension");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["manifest.json", "page.html", "extension-app.js"] {
        std::fs::copy(apps().join("extension").join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(apps().join("common.js"), dir.join("common.js")).unwrap();
    dir
}

#[test]
fn chromium_extension_origin_app_relays_over_udp_tcp_and_tls() {
    if !require("chromium") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ext = extension_dir(tmp.path());
    let origin = format!("chrome-extension://{}", extension_id(&ext));
    let (tk, _dir) = turnkey(&format!("[issuer.app]\nallowed_origins = [\"{origin}\"]\n"));
    let mut chrome = Chromium::launch_with_extension(&ext, &["--ignore-certificate-errors"]);
    let url = format!("{origin}/page.html?issuer=http://{}", tk.addr("http"));
    let r = run_page(&mut chrome, &url, "app-extension.png");
    let console = chrome.console();
    assert_eq!(r["origin"], origin.as_str(), "the page ran as the extension: {r:#}\n{console}");
    assert_relayed_everywhere(&tk, &r, &console);
    assert_eq!(r["iceServers"].as_array().unwrap().len(), 1, "object shape, wrapped: {r:#}");
    let ok = tk.metric("turnkey_issuer_requests_total", &["endpoint=\"/api/turn-credentials\"", "status=\"200\""]);
    assert_eq!(ok, 1.0, "{}", tk.metrics());

    // The same extension is refused (403, so the page falls back) when its id is not allowed.
    let (other, _dir2) =
        turnkey("[issuer.app]\nallowed_origins = [\"chrome-extension://aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]\n");
    let url = format!("{origin}/page.html?issuer=http://{}", other.addr("http"));
    let r = run_page(&mut chrome, &url, "app-extension-refused.png");
    let err = r["error"].as_str().unwrap_or_default();
    assert!(err.contains("HTTP 403") || err.contains("Failed to fetch"), "{r:#}");
    let refused =
        other.metric("turnkey_issuer_requests_total", &["endpoint=\"/api/turn-credentials\"", "status=\"403\""]);
    assert!(refused >= 1.0, "{}", other.metrics());
}
