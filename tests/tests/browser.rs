//! The self-test page (`GET /test`) in a real headless Chromium: the browser fetches credentials
//! from the issuer, gathers relay candidates from turnkey and makes a relay-only WebRTC call
//! between two peer connections in the page, so every data-channel byte goes through turnkey.
//! The negative cases prove the same check fails when the relay does not answer and when the
//! credential request fails. A phone-sized screenshot of each run is left in `tests/artifacts/`.

// Test code: a missing field in the page's JSON is a failure, so unwrap panics on purpose.
#![allow(clippy::unwrap_used)]

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::Value;
use turnkey_e2e::browser::{Chromium, Page as _};
use turnkey_e2e::{artifacts, config_file, require, Turnkey};

/// How long the page may take from navigation to `turnkeyResult.done`.
const PAGE_TIMEOUT: Duration = Duration::from_secs(40);

/// The outcome of one page run.
struct Run {
    result: Value,
    console: String,
}

/// Loads `/test?transport=<transport>` from `tk` in a fresh headless Chromium, waits for the page
/// to finish, saves `tests/artifacts/<shot>` and returns `window.turnkeyResult`.
fn run_page(tk: &Turnkey, transport: &str, shot: &str) -> Run {
    // Loopback only: the test relay's self-signed certificate is accepted for turns: here.
    let extra: &[&str] = if transport == "tls" { &["--ignore-certificate-errors"] } else { &[] };
    let mut chrome = Chromium::launch(extra);
    chrome.phone_viewport();
    let url = format!("http://{}/test?transport={transport}", tk.addr("http"));
    chrome.navigate(&url);
    let done = chrome.wait_for("!!(window.turnkeyResult && window.turnkeyResult.done)", PAGE_TIMEOUT);
    let path = artifacts().join(shot);
    chrome.screenshot(&path);
    eprintln!("screenshot: {}", path.display());
    let console = chrome.console();
    let json = chrome.eval("JSON.stringify(window.turnkeyResult || null)");
    assert!(
        done,
        "the page did not finish in {PAGE_TIMEOUT:?}; turnkeyResult = {json}\nconsole:\n{console}\nbrowser log:\n{}",
        chrome.log()
    );
    let result: Value = serde_json::from_str(json.as_str().unwrap_or("null")).unwrap();
    Run { result, console }
}

/// The whole proof for one transport: relay candidates on every advertised URL of `transport`,
/// then two relay-only peer connections in the page exchanging data-channel messages through
/// turnkey, and turnkey's metrics counting the relayed bytes. `args` are extra `turnkey serve`
/// flags (the listener of that transport).
fn browser_call_through_turnkey(transport: &str, args: &[&str]) {
    if !require("chromium") {
        return;
    }
    // The default peer policy (no `--allow-peer`): the two peer connections' relayed addresses
    // are both on 127.0.0.1, the relay IP, inside the relay port range, so each is the other's
    // self-peer and relaying between them is allowed, while every other loopback peer is not.
    let tk = Turnkey::serve(args);
    let Run { result: r, console } = run_page(&tk, transport, &format!("selftest-{transport}.png"));
    let ctx = format!("turnkeyResult = {r:#}\nconsole:\n{console}");

    assert_eq!(r["done"], true, "{ctx}");
    assert_eq!(r["credentials"]["ok"], true, "{ctx}");
    let urls = r["urls"].as_array().unwrap();
    assert!(!urls.is_empty(), "the issuer advertised no {transport} URL: {ctx}");
    for u in urls {
        assert_eq!(u["transport"], transport, "{ctx}");
        assert_eq!(u["relayCandidate"], true, "{ctx}");
        assert!(u["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ctx}");
        assert!(u["error"].is_null(), "{ctx}");
        // The relayed address turnkey allocated (it relays on 127.0.0.1).
        assert!(u["relayAddress"].as_str().unwrap().starts_with("127.0.0.1:"), "{ctx}");
    }
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{ctx}");
    let call = &calls[0];
    assert_eq!(call["transport"], transport, "{ctx}");
    assert_eq!(call["connected"], true, "{ctx}");
    assert_eq!(call["messages"], 10, "{ctx}");
    assert_eq!(call["rttMs"].as_array().unwrap().len(), 10, "{ctx}");
    assert_eq!(call["localCandidateType"], "relay", "{ctx}");
    assert_eq!(call["relayProtocol"], transport, "the browser reached turnkey over {transport}: {ctx}");
    assert_eq!(r["call"]["connected"], true, "{ctx}");
    assert_eq!(r["call"]["messages"], 10, "{ctx}");
    assert_eq!(r["pass"], true, "{ctx}");

    // 10 echoed messages of ~150 bytes each way, plus DTLS and SCTP: both directions of both
    // allocations went through the relay.
    let (c2p, p2c) = tk.relayed_bytes(transport, 3000.0);
    assert!(c2p > 3000.0 && p2c > 3000.0, "relayed bytes c2p={c2p} p2c={p2c}\n{}", tk.metrics());
}

#[test]
fn chromium_relay_only_call_over_udp() {
    browser_call_through_turnkey("udp", &[]);
}

#[test]
fn chromium_relay_only_call_over_tcp() {
    browser_call_through_turnkey("tcp", &[]);
}

#[test]
fn chromium_relay_only_call_over_tls() {
    browser_call_through_turnkey("tls", &[]);
}

/// The same page and checks fail when the advertised relay does not answer: the issuer advertises
/// a UDP port that this test holds and never answers on (as if the relay were stopped or the port
/// blocked). The test also sees the browser's Allocate requests arrive there, so the page really
/// tried the advertised URL.
#[test]
fn chromium_selftest_fails_when_the_relay_does_not_answer() {
    if !require("chromium") {
        return;
    }
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (_dir, config) = config_file(&format!(
        "[issuer.advertise]\nstun = [{{ port = {port} }}]\nturn_udp = [{{ port = {port} }}]\n\
         turn_tcp = []\nturns_tls = []\n"
    ));
    let tk = Turnkey::serve(&["--config", config.to_str().unwrap()]);
    let Run { result: r, console } = run_page(&tk, "udp", "selftest-udp-relay-down.png");
    let ctx = format!("turnkeyResult = {r:#}\nconsole:\n{console}");

    assert_eq!(r["done"], true, "{ctx}");
    assert_eq!(r["pass"], false, "must not pass without a relay: {ctx}");
    assert_eq!(r["credentials"]["ok"], true, "{ctx}");
    let urls = r["urls"].as_array().unwrap();
    assert_eq!(urls.len(), 1, "{ctx}");
    assert_eq!(urls[0]["url"], format!("turn:127.0.0.1:{port}?transport=udp"), "{ctx}");
    assert_eq!(urls[0]["relayCandidate"], false, "{ctx}");
    let err = urls[0]["error"].as_str().unwrap_or_default();
    assert!(err.starts_with("no relay candidate") && err.contains("port is blocked"), "{ctx}");
    assert!(r["calls"].as_array().unwrap().is_empty(), "no call without relay candidates: {ctx}");
    assert_eq!(r["call"]["connected"], false, "{ctx}");
    assert!(r["errors"][0].as_str().unwrap().contains("no relay candidate"), "{ctx}");

    // The browser did send its Allocate requests to the advertised (silent) port.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1500];
    let mut stun_requests = 0;
    while let Ok((n, _)) = silent.recv_from(&mut buf) {
        // A STUN message: first two bits zero and the magic cookie at bytes 4..8.
        if n >= 20 && buf[0] & 0xc0 == 0 && buf[4..8] == [0x21, 0x12, 0xa4, 0x42] {
            stun_requests += 1;
        }
    }
    assert!(stun_requests > 0, "the browser never contacted the advertised relay: {ctx}");
    assert_eq!(tk.metric("turnkey_relay_relayed_bytes_total", &[]), 0.0);
}

/// The call step really goes through turnkey: when the peer policy refuses the relay's own
/// address (an operator deny rule, which beats the self-peer rule), relay candidates are still
/// gathered but the two relay-only peer connections cannot reach each other, and the page fails
/// with the likely cause.
#[test]
fn chromium_call_fails_when_the_peer_policy_refuses_relaying() {
    if !require("chromium") {
        return;
    }
    let tk = Turnkey::serve(&["--deny-peer", "127.0.0.1"]);
    let Run { result: r, console } = run_page(&tk, "udp", "selftest-udp-peer-denied.png");
    let ctx = format!("turnkeyResult = {r:#}\nconsole:\n{console}");
    assert_eq!(r["done"], true, "{ctx}");
    assert_eq!(r["pass"], false, "{ctx}");
    assert_eq!(r["urls"][0]["relayCandidate"], true, "{ctx}");
    let call = &r["calls"][0];
    assert_eq!(call["connected"], false, "{ctx}");
    assert_eq!(call["messages"], 0, "{ctx}");
    assert!(call["error"].as_str().unwrap().contains("could not reach each other"), "{ctx}");
    assert!(tk.metric("turnkey_relay_peer_denied_total", &[]) >= 1.0, "{}", tk.metrics());
}

/// A failed credential request is reported with its HTTP status: the app key names no key, so the
/// issuer answers 503.
#[test]
fn chromium_selftest_reports_a_failed_credential_request() {
    if !require("chromium") {
        return;
    }
    let (_dir, config) = config_file("[issuer.app]\nkey = \"00000000000000000000000000000000\"\n");
    let tk = Turnkey::serve(&["--config", config.to_str().unwrap()]);
    let Run { result: r, console } = run_page(&tk, "udp", "selftest-credentials-failed.png");
    let ctx = format!("turnkeyResult = {r:#}\nconsole:\n{console}");
    assert_eq!(r["done"], true, "{ctx}");
    assert_eq!(r["pass"], false, "{ctx}");
    assert_eq!(r["credentials"]["ok"], false, "{ctx}");
    assert_eq!(r["credentials"]["status"], 503, "{ctx}");
    let err = r["credentials"]["error"].as_str().unwrap();
    assert!(err.starts_with("credential fetch failed: HTTP 503"), "{ctx}");
    assert!(r["urls"].as_array().unwrap().is_empty(), "{ctx}");
}
