//! The binary's command line: `--help` shows the defaults the library types define, and
//! `check-config` reports unknown keys together with every bad value.

use std::process::Command;

use turnkey_relay::conn::StreamLimits;
use turnkey_relay::engine::EngineSettings;

fn turnkey(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_turnkey")).args(args).env_clear().output().expect("run turnkey")
}

/// The help paragraph of `flag` (clap's long help: the flag line, then its indented text).
fn help_of(help: &str, flag: &str) -> String {
    let mut lines = help.lines().skip_while(|l| !l.trim_start().starts_with(&format!("{flag} ")) && l.trim() != flag);
    let mut out = lines.next().unwrap_or_else(|| panic!("{flag} missing in {help}")).to_owned();
    for l in lines.take_while(|l| !l.trim_start().starts_with('-')) {
        out.push(' ');
        out.push_str(l.trim());
    }
    out
}

#[test]
fn serve_help_shows_the_defaults_the_engine_and_streams_use() {
    let out = turnkey(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let (e, st) = (EngineSettings::default(), StreamLimits::default());
    for (flag, default) in [
        ("--max-allocations", e.max_allocations.to_string()),
        ("--max-allocations-per-user", e.max_allocations_per_user.to_string()),
        ("--bandwidth-limit", e.bandwidth_limit.to_string()),
        ("--unauth-replies-per-sec", e.unauth_replies_per_sec.to_string()),
        ("--max-connections-per-ip", st.max_connections_per_ip.to_string()),
        ("--max-connections", st.max_connections.to_string()),
        ("--tls-handshake-timeout", st.tls_handshake_timeout.as_secs().to_string()),
        ("--allocate-timeout", st.allocate_timeout.as_secs().to_string()),
        ("--idle-timeout", st.idle_timeout.as_secs().to_string()),
        ("--outbound-queue-bytes", st.outbound_queue_bytes.to_string()),
        ("--write-timeout", st.write_timeout.as_secs().to_string()),
    ] {
        let text = help_of(&help, flag);
        assert!(text.contains(&format!("[default: {default}]")), "{flag}: {text}");
    }
    let text = help_of(&help, "--public-host");
    assert!(text.contains(&format!("[default: {}]", turnkey_issuer::IssuerConfig::default().public_host)), "{text}");
}

#[test]
fn http_limit_flags_show_the_defaults_of_http_limits_on_serve_and_issuer() {
    for cmd in ["serve", "issuer"] {
        let out = turnkey(&[cmd, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        for (flag, default) in [
            ("--http-header-timeout", "10"),
            ("--http-idle-timeout", "60"),
            ("--http-max-connections", "auto"),
            ("--http-max-connections-per-ip", "64"),
        ] {
            let text = help_of(&help, flag);
            assert!(text.contains(&format!("[default: {default}]")), "{cmd} {flag}: {text}");
        }
    }
}

#[test]
fn check_config_reports_unknown_keys_and_bad_values_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[relay]\nudpp = [\"127.0.0.1:1\"]\nidle_timeout = 0\nrelay_ports = \"9-1\"\n[usage]\nreset_day = 40\n",
    )
    .unwrap();
    let out = turnkey(&["check-config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    for part in ["unknown key `relay.udpp`", "relay.idle_timeout", "relay.relay_ports", "usage.reset_day"] {
        assert!(err.contains(part), "{part} missing in {err}");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[relay]\nudp = [\"127.0.0.1:3478\"]\n").unwrap();
    let out = turnkey(&["check-config", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fast_path_flag_shows_its_default_and_xdp_refuses_to_start_while_it_cannot_attach() {
    let out = turnkey(&["serve", "--help"]);
    let help = String::from_utf8(out.stdout).unwrap();
    let text = help_of(&help, "--fast-path");
    assert!(text.contains(&format!("[default: {}]", turnkey_fastpath::FastPathMode::default())), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = turnkey(&[
        "serve",
        "--data-dir",
        data,
        "--fast-path",
        "xdp",
        "--udp",
        "127.0.0.1:0",
        "--tcp",
        "off",
        "--tls",
        "off",
        "--http",
        "off",
        "--metrics",
        "off",
        "--relay-ip",
        "127.0.0.1",
    ]);
    assert!(!out.status.success(), "xdp must fail at start when it cannot attach");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fast_path = xdp"), "{err}");
    let out = turnkey(&["serve", "--data-dir", data, "--fast-path", "sometimes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auto, xdp or off"));
}
