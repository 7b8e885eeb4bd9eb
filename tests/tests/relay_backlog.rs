//! A relay held up for a moment (descheduled on a busy machine, a long step) loses nothing it
//! accepted: the backlog its relay sockets gathered meanwhile reaches TCP clients that read at
//! full speed. Before the relay drained a backlog one batch per loop turn, a backlog larger than a
//! connection's outbound queue (256 frames) was dropped as `queue_full` in one go: the soak's
//! TCP drops (docs/benchmarks.md, "Soak"). The hold-up is a real one: the whole relay process is
//! stopped (SIGSTOP) while `turnkey load` keeps sending.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use turnkey_e2e::{bin, run_with_timeout, signal, Turnkey};

#[test]
fn a_relay_held_up_for_500_ms_delivers_its_whole_backlog_over_tcp() {
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1", "--unauth-replies-per-sec", "0"]);
    let server = tk.tcp().to_string();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let secret = tk.secret();
    // 4 flows at 2,000 packets/s: a 500 ms hold-up leaves about 1,000 packets per flow
    // queued on each relay socket, more than twice a connection's outbound queue.
    let mut cmd = Command::new(bin());
    cmd.args(["load", "--server", &server, "--transport", "tcp", "--secret", &secret, "--flows", "4"])
        .args(["--rate", "2000", "--duration", "10", "--max-loss", "0", "--quiet", "--json"])
        .arg(&json);
    let load = std::thread::spawn(move || run_with_timeout(&mut cmd, Duration::from_secs(120)));
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..3 {
        signal(&tk.child, "STOP");
        std::thread::sleep(Duration::from_millis(500));
        signal(&tk.child, "CONT");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let out = load.join().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let t = &report["traffic"];
    let traffic = format!("sent {}, delivered {}, lost {}", t["sent"], t["delivered"], t["lost"]);
    let queue_full = tk.metric("turnkey_relay_dropped_packets_total", &["reason=\"queue_full\""]);
    assert_eq!(queue_full, 0.0, "the relay dropped its backlog: {traffic}\n{}\n{text}", tk.drops());
    assert!(t["sent"].as_u64().unwrap() > 40_000, "{traffic}");
    assert_eq!(t["lost"], 0, "{traffic}\n{}\n{text}", tk.drops());
    assert!(out.status.success(), "{text}");
}
