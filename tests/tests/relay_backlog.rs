//! A relay held up for a moment (descheduled on a busy machine, a long step) loses nothing it
//! accepted: the backlog its relay sockets gathered meanwhile reaches TCP clients that read at
//! full speed. Before the relay drained a backlog one batch per loop turn, a backlog larger than a
//! connection's outbound queue (256 frames) was dropped as `queue_full` in one go: the soak's
//! TCP drops (docs/benchmarks.md, "Soak"). The hold-up is a real one: the whole relay process is
//! stopped (SIGSTOP) while `turnkey load` keeps sending.
//!
//! And what an operator can do against the hold-ups of a busy machine: `--shard-rt-priority`
//! puts the shard threads, and only them, under SCHED_FIFO.

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

/// Each thread of process `pid`: (name, scheduling policy, real-time priority), from
/// `/proc/<pid>/task/<tid>/stat` (fields 41 and 40; `0` SCHED_OTHER, `1` SCHED_FIFO).
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat")))
        else {
            continue; // a thread that just ended
        };
        // After the name's closing parenthesis the fields start at field 3 (state).
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        out.push((comm.trim().to_owned(), fields[41 - 3].parse().unwrap(), fields[40 - 3].parse().unwrap()));
    }
    out
}

/// Needs root (CAP_SYS_NICE), as the test command runs: without it the relay only warns, and this
/// test fails.
#[test]
fn shard_rt_priority_puts_the_shard_threads_and_only_them_under_sched_fifo() {
    let tk = Turnkey::serve(&["--shards", "2", "--shard-rt-priority", "7"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let threads = loop {
        let threads = thread_policies(tk.child.id());
        let fifo = threads.iter().filter(|(name, policy, _)| name.starts_with("turnkey-shard") && *policy == 1).count();
        if fifo == 2 || std::time::Instant::now() > deadline {
            break threads;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let shards: Vec<_> = threads.iter().filter(|(name, ..)| name.starts_with("turnkey-shard")).collect();
    assert_eq!(shards.len(), 2, "{threads:?}");
    for (name, policy, priority) in &threads {
        if name.starts_with("turnkey-shard") {
            assert_eq!((*policy, *priority), (1, 7), "{name}: {threads:?}");
        } else {
            assert_eq!((*policy, *priority), (0, 0), "{name} is an ordinary thread: {threads:?}");
        }
    }

    // Without the flag every thread is an ordinary one.
    let plain = Turnkey::serve(&["--shards", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let threads = thread_policies(plain.child.id());
    assert!(threads.iter().all(|(_, policy, _)| *policy == 0), "{threads:?}");
}
