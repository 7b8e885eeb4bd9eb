//! The soak in the test command: `scripts/soak.sh` for 2 minutes (the binary under test, 10 % of
//! the full rates, UDP, TCP and TLS loads at once with allocation churn, revocations through the
//! issuer API and certificate reloads). Passes only with zero loss on every load, every
//! revocation and reload as expected, and RSS and descriptors within their bounds; on failure the
//! script's summary (drops by reason and second, the longest shard stall) is in the message.
//! The 10-minute full-rate run is in docs/benchmarks.md.

use std::process::Command;
use std::time::Duration;

use turnkey_e2e::{bin, require, root, run_with_timeout};

#[test]
fn a_two_minute_soak_loses_nothing() {
    for tool in ["openssl", "curl", "python3"] {
        if !require(tool) {
            return;
        }
    }
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/soak.sh"))
        .env("DURATION", "120")
        .env("WARMUP", "45")
        .env("SCALE", "0.1")
        .env("TURNKEY_BIN", bin())
        .env("OUT", out.path());
    let run = run_with_timeout(&mut cmd, Duration::from_secs(300));
    let text = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("{text}");
    assert!(run.status.success(), "the soak failed:\n{text}");
    assert!(text.lines().any(|l| l == "PASS"), "{text}");
    for t in ["udp", "tcp", "tls"] {
        let line = text.lines().find(|l| l.starts_with(&format!("{t}: sent "))).unwrap_or_else(|| panic!("{text}"));
        assert!(line.ends_with("lost 0") && !line.starts_with(&format!("{t}: sent 0,")), "{line}");
    }
}
