//! Operators are told when browsers will not use their `turns:` URL: the start-up banner and
//! `check-config` warn when the advertised TLS host is an IP address or the certificate is
//! self-signed (Firefox refuses both), and say how to fix it; a DNS name with a CA-issued
//! certificate gets no warning.

// Test code: a failed setup step is a failure, so unwrap panics on purpose.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WARNING: &str = "Firefox will not use TURN over TLS";

fn turnkey(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_turnkey")).args(args).env_clear().output().expect("run turnkey")
}

/// A certificate for `turn.example.com` issued by a test CA, in `dir`: (chain, key).
fn issued_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "turnkey test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["turn.example.com".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn check_config(dir: &Path, name: &str, toml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, toml).unwrap();
    let out = turnkey(&["check-config", path.to_str().unwrap()]);
    assert!(out.status.success(), "warnings never fail check-config: {}", String::from_utf8_lossy(&out.stderr));
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert_eq!(stdout.trim(), format!("{}: ok", path.display()), "stdout is the one ok line");
    stderr
}

#[test]
fn check_config_warns_about_ip_addresses_and_self_signed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let text = check_config(dir.path(), "ip.toml", "[issuer]\npublic_host = \"203.0.113.7\"\n");
    assert!(text.contains(&format!("{WARNING}: the turns: URL names the IP address 203.0.113.7")), "{text}");
    assert!(text.contains("turnkey's self-signed one"), "{text}");
    assert!(text.contains("--public-host <a DNS name") && text.contains("--tls-cert/--tls-key"), "{text}");
    // No public_host: the banner would advertise the host's own IP address.
    let text = check_config(dir.path(), "none.toml", "[relay]\nudp = [\"127.0.0.1:3478\"]\n");
    assert!(text.contains("names this host's IP address (no public_host is set)"), "{text}");
    // A self-signed certificate of the operator's own.
    let own = rcgen::generate_simple_self_signed(vec!["turn.example.com".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("own.pem"), dir.path().join("own.key"));
    std::fs::write(&cert, own.cert.pem()).unwrap();
    std::fs::write(&key, own.key_pair.serialize_pem()).unwrap();
    let toml = format!(
        "[issuer]\npublic_host = \"turn.example.com\"\n[relay]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let text = check_config(dir.path(), "own.toml", &toml);
    assert!(text.contains(&format!("the certificate {} is self-signed", cert.display())), "{text}");
    assert!(!text.contains("IP address"), "{text}");
}

#[test]
fn check_config_is_quiet_for_a_dns_name_with_an_issued_certificate_or_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issued_certificate(dir.path());
    let toml = format!(
        "[issuer]\npublic_host = \"turn.example.com\"\n[relay]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let text = check_config(dir.path(), "named.toml", &toml);
    assert!(text.is_empty(), "no warning on stderr: {text}");
    let text =
        check_config(dir.path(), "notls.toml", "[issuer]\npublic_host = \"203.0.113.7\"\n[relay]\ntls = [\"off\"]\n");
    assert!(!text.contains(WARNING), "{text}");
}

/// `turnkey serve` on loopback with `args`; returns its banner (stdout until the issuer hint).
fn banner(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnkey"))
        .args(["serve", "--data-dir", data.path().to_str().unwrap()])
        .args(["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--tls", "127.0.0.1:0"])
        .args(["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--relay-ip", "127.0.0.1", "--shards", "1"])
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnkey serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        text.push_str(&line);
        text.push('\n');
        if line.starts_with("turnkey: or ask the issuer") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("turnkey: or ask the issuer"), "no complete banner:\n{text}");
    text
}

#[test]
fn the_banner_warns_when_firefox_will_not_use_turns() {
    let text = banner(&["--public-host", "127.0.0.1"]);
    assert!(text.contains(&format!("{WARNING}: the turns: URL names the IP address 127.0.0.1")), "{text}");
    assert!(text.contains("turnkey's self-signed one"), "{text}");
    assert!(text.contains("docs/deploy.md#tls-for-browsers"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = issued_certificate(dir.path());
    let text = banner(&[
        "--public-host",
        "turn.example.com",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(text.contains("turns:127.0.0.1:") || text.contains("turns:turn.example.com:"), "{text}");
    assert!(!text.contains(WARNING), "{text}");
}
