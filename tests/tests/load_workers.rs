//! `turnkey load` split over several worker processes, coordinated through a real redis-server,
//! merged exactly (`turnkey load report` from Redis, `turnkey load merge` from the JSON files):
//!
//! - three workers, each in its own network namespace, against one turnkey in a fourth (joined
//!   by a bridge): the merged counts equal the relay's own counters, and the merged percentiles
//!   equal those of the pooled samples of the three workers;
//! - a worker that never reaches the start barrier, or joins and dies before it opens, fails
//!   the run with a clear error (nothing partial is published);
//! - a worker killed during the run is reported as missing, with the others' results kept.
//!
//! The namespace test is skipped with a message where namespaces cannot be made (required under
//! CI=true); the others run on loopback.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use turnkey_e2e::redis::{RedisOptions, RedisServer, RedisTls};
use turnkey_e2e::sentinel::SentinelSet;
use turnkey_e2e::{bin, http, metric_sum, require, run_with_timeout, Turnkey};
use turnkey_load::merge::decode_histogram;

/// The bridge's address in the hub namespace (turnkey and redis listen there).
const HUB: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 79, 0, 1));
/// Inside the hub namespace nothing else listens: redis can have its usual port.
const REDIS_PORT: u16 = 6379;

/// A hub namespace with a bridge and `n` worker namespaces, each joined to it by a veth, all
/// named after this process; deleted on drop.
struct Star {
    hub: String,
    workers: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Star {
    fn new(n: usize) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = format!("tkld-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let hub = format!("{base}-hub");
        if let Err(why) = ip(&["netns", "add", &hub]) {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "network namespaces are required under CI: {why}");
            eprintln!("SKIP: cannot create a network namespace (needs root / CAP_SYS_ADMIN): {why}");
            return None;
        }
        let mut star = Self { hub, workers: Vec::new() };
        let must = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("{e}"));
        let h = star.hub.clone();
        must(&["-n", &h, "link", "set", "lo", "up"]);
        must(&["-n", &h, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &h, "addr", "add", &format!("{HUB}/24"), "dev", "br0"]);
        must(&["-n", &h, "link", "set", "br0", "up"]);
        for i in 0..n {
            let w = format!("{base}-w{i}");
            must(&["netns", "add", &w]);
            star.workers.push(w.clone());
            let port = format!("p{i}");
            must(&["-n", &h, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &w]);
            must(&["-n", &h, "link", "set", &port, "master", "br0"]);
            must(&["-n", &h, "link", "set", &port, "up"]);
            must(&["-n", &w, "addr", "add", &format!("10.79.0.{}/24", i + 2), "dev", "eth0"]);
            must(&["-n", &w, "link", "set", "lo", "up"]);
            must(&["-n", &w, "link", "set", "eth0", "up"]);
        }
        Some(star)
    }

    /// Runs `f` on a thread inside namespace `ns`.
    fn enter<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Star {
    fn drop(&mut self) {
        for ns in self.workers.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `turnkey load ARGS` as a child (inside namespace `ns` when given), output captured.
fn spawn_load(ns: Option<&str>, args: &[&str]) -> Proc {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("load").args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    Proc(cmd.spawn().unwrap())
}

/// Waits (bounded) for a child and returns its output.
fn finish(mut p: Proc, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if p.0.try_wait().unwrap().is_some() {
            let child = std::mem::replace(&mut p.0, Command::new("true").spawn().unwrap());
            let out = child.wait_with_output().unwrap();
            eprintln!(
                "[turnkey load] exit {:?}\n{}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("turnkey load did not finish within {timeout:?}");
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// `rtt_us` of the pooled samples of `reports`: every worker's histogram decoded and added into
/// one, its percentiles computed afresh.
fn pooled_rtt(reports: &[&serde_json::Value]) -> serde_json::Value {
    let mut all = decode_histogram("").unwrap();
    for r in reports {
        let h = decode_histogram(r["traffic"]["rtt_hist"].as_str().unwrap()).unwrap();
        assert_eq!(h.len(), u(&r["traffic"]["rtt_us"]["count"]), "the histogram holds every sample");
        for v in h.iter_recorded() {
            all.record_n(v.value_iterated_to(), v.count_at_value()).unwrap();
        }
    }
    let p = turnkey_load::Percentiles::from_histogram(&all);
    serde_json::to_value(p).unwrap()
}

/// Asserts two `rtt_us` objects are equal: the integer percentiles exactly, the mean to within
/// rounding (serde_json's default float parsing may differ from the written value by one ulp).
fn assert_same_percentiles(a: &serde_json::Value, b: &serde_json::Value, context: &str) {
    for k in ["count", "min", "p50", "p90", "p99", "max"] {
        assert_eq!(a[k], b[k], "{k}: {a} vs {b} ({context})");
    }
    let (x, y) = (a["mean"].as_f64().unwrap(), b["mean"].as_f64().unwrap());
    assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "mean: {a} vs {b} ({context})");
}

/// Waits until every allocation is released and the shards flushed their counters.
/// `turnkey load report` of run `run_id` through `url`, waiting up to 30 s for the workers, the
/// merged report written to `json`.
fn merged_report(url: &str, run_id: &str, json: &Path) -> Output {
    run_with_timeout(
        Command::new(bin())
            .args(["load", "report", "--coordinate", url, "--run-id", run_id, "--wait", "30", "--json"])
            .arg(json),
        Duration::from_secs(60),
    )
}

fn settle(metrics: impl Fn() -> String) {
    for _ in 0..100 {
        if metric_sum(&metrics(), "turnkey_relay_allocations", &[]) == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1300));
}

#[test]
fn three_workers_in_three_namespaces_merge_to_the_relays_own_counts() {
    if !require("redis-server") {
        return;
    }
    let Some(star) = Star::new(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    // redis-server in the hub, on the bridge's address.
    let _redis = Proc(
        Command::new("ip")
            .args(["netns", "exec", &star.hub, "redis-server", "--bind", &HUB.to_string()])
            .args([
                "--port",
                &REDIS_PORT.to_string(),
                "--protected-mode",
                "no",
                "--save",
                "",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let redis_url = format!("redis://{HUB}:{REDIS_PORT}");
    let up = Instant::now();
    while Star::enter(&star.hub, || std::net::TcpStream::connect((HUB, REDIS_PORT)).is_err()) {
        assert!(up.elapsed() < Duration::from_secs(10), "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let tk = Turnkey::serve_netns(&star.hub, HUB, &["--shards", "2"]);
    let server = tk.udp().to_string();
    let metrics_addr = tk.addr("metrics");
    let metrics = || Star::enter(&star.hub, || http(metrics_addr, "GET", "/metrics", &[], None).1);
    let secret = tk.secret();
    let run_id = format!("ns-{}", std::process::id());
    let files: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("w{i}.json"))).collect();
    let workers: Vec<Proc> = (0..3)
        .map(|i| {
            let json = files[i].to_str().unwrap();
            let args = [
                "--server",
                &server,
                "--secret",
                &secret,
                "--flows",
                "2",
                "--rate",
                "100",
                "--count",
                "150",
                "--quiet",
                "--json",
                json,
                "--coordinate",
                &redis_url,
                "--run-id",
                &run_id,
                "--workers",
                "3",
                "--barrier-timeout",
                "60",
            ];
            spawn_load(Some(&star.workers[i]), &args)
        })
        .collect();
    for w in workers {
        let out = finish(w, Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(0), "every worker passes");
    }
    let parts: Vec<serde_json::Value> = files.iter().map(|f| read_json(f)).collect();
    // Disjoint user names: each worker minted its own user ids (visible in nothing but the
    // relay's success count per allocation: 3 workers × 2 flows × 2 allocations).
    let merged_json = dir.path().join("report.json");
    let out = finish(
        spawn_load(
            Some(&star.workers[0]),
            &["report", "--coordinate", &redis_url, "--run-id", &run_id, "--json", merged_json.to_str().unwrap()],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("merged from 3 worker(s)"));
    let merged = read_json(&merged_json);
    assert_eq!(merged["workers"], 3, "{merged}");
    assert_eq!(merged["flows_established"], 6);
    let sent = u(&merged["traffic"]["sent"]);
    assert_eq!(sent, parts.iter().map(|p| u(&p["traffic"]["sent"])).sum::<u64>());
    assert_eq!(sent, 3 * 2 * 150, "{merged}");
    // The relay's own counters: pairs cross it twice each way.
    settle(metrics);
    let text = metrics();
    let relayed = |dir: &str| metric_sum(&text, "turnkey_relay_relayed_packets_total", &[dir]) as u64;
    assert_eq!(relayed("direction=\"client_to_peer\""), 2 * sent, "relay counted every packet sent");
    assert_eq!(relayed("direction=\"peer_to_client\""), 2 * u(&merged["traffic"]["delivered"]));
    let granted = metric_sum(&text, "turnkey_relay_allocation_attempts_total", &["result=\"success\""]) as u64;
    assert_eq!(granted, u(&merged["allocations"]["succeeded"]));
    assert_eq!(granted, 12);
    // Percentiles equal those of the pooled samples (not an average of the workers').
    let refs: Vec<&serde_json::Value> = parts.iter().collect();
    assert_same_percentiles(&merged["traffic"]["rtt_us"], &pooled_rtt(&refs), "merged vs pooled");
    assert_eq!(u(&merged["traffic"]["rtt_us"]["count"]), u(&merged["traffic"]["delivered"]));
    // One server row, the sum of the workers' rows.
    assert_eq!(merged["servers"].as_array().unwrap().len(), 1, "{merged}");
    assert_eq!(u(&merged["servers"][0]["succeeded"]), 12);
    // The JSON files merged without Redis give the same report.
    let file_json = dir.path().join("files.json");
    let mut args = vec!["merge".to_string()];
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    args.extend(["--json".into(), file_json.to_str().unwrap().into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = finish(spawn_load(None, &args), Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
    let from_files = read_json(&file_json);
    for key in ["servers", "workers", "flows_established", "errors", "verdict"] {
        assert_eq!(from_files[key], merged[key], "{key}");
    }
    for key in ["sent", "delivered", "lost", "reordered", "rtt_hist"] {
        assert_eq!(from_files["traffic"][key], merged["traffic"][key], "traffic.{key}");
    }
    assert_same_percentiles(&from_files["traffic"]["rtt_us"], &merged["traffic"]["rtt_us"], "files vs Redis");
    assert_eq!(from_files["allocations"]["time_hist"], merged["allocations"]["time_hist"]);
    assert_same_percentiles(&from_files["allocations"]["time_us"], &merged["allocations"]["time_us"], "allocations");
}

/// A turnkey on loopback and a redis-server for the failure cases.
fn loopback() -> Option<(Turnkey, RedisServer)> {
    let redis = RedisServer::start(RedisOptions::default())?;
    Some((Turnkey::serve(&["--allow-peer", "127.0.0.1"]), redis))
}

fn worker_args<'a>(tk: &'a str, secret: &'a str, redis: &'a str, run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v =
        vec!["--server", tk, "--secret", secret, "--quiet", "--coordinate", redis, "--run-id", run, "--workers", "3"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn a_worker_missing_at_the_barrier_fails_the_run_with_a_clear_error() {
    let Some((tk, redis)) = loopback() else { return };
    let (server, secret, url) = (tk.udp().to_string(), tk.secret(), redis.url());
    // Two of three arrive; the third never does.
    let extra = ["--flows", "1", "--count", "20", "--barrier-timeout", "3"];
    let a = spawn_load(None, &worker_args(&server, &secret, &url, "never", &extra));
    let b = spawn_load(None, &worker_args(&server, &secret, &url, "never", &extra));
    for p in [a, b] {
        let out = finish(p, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("only 2 of 3 workers reached the start barrier"), "{err}");
    }
    // Nothing was relayed, and `report` says why the run has no result.
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &[]), 0.0);
    let out = run_with_timeout(
        Command::new(bin()).args(["load", "report", "--coordinate", &url, "--run-id", "never", "--wait", "5"]),
        Duration::from_secs(30),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("aborted before the start"), "{err}");

    // One joins and is killed before the others come: its heartbeat expires and the run aborts
    // (waiting for its 5 s expiry), instead of starting without it.
    let first = spawn_load(None, &worker_args(&server, &secret, &url, "died", &["--flows", "1", "--count", "20"]));
    let joined = Instant::now();
    while redis.cli(&["GET", "turnkey-load:died:joined"]).map(|v| v.trim() == "1") != Some(true) {
        assert!(joined.elapsed() < Duration::from_secs(20), "the first worker never joined");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(first);
    std::thread::sleep(Duration::from_secs(6));
    let extra = ["--flows", "1", "--count", "20", "--barrier-timeout", "30"];
    let rest: Vec<Proc> =
        (0..2).map(|_| spawn_load(None, &worker_args(&server, &secret, &url, "died", &extra))).collect();
    for p in rest {
        let out = finish(p, Duration::from_secs(60));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("worker 0 of 3 joined, then died before the start barrier"), "{err}");
    }
    assert_eq!(tk.metric("turnkey_relay_allocation_attempts_total", &[]), 0.0, "no worker ran");
}

#[test]
fn a_worker_dying_during_the_run_is_reported_and_the_others_kept() {
    let Some((tk, redis)) = loopback() else { return };
    let (server, secret, url) = (tk.udp().to_string(), tk.secret(), redis.url());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("w{i}.json"))).collect();
    let mut procs: Vec<Option<Proc>> = files
        .iter()
        .map(|f| {
            let extra = ["--flows", "1", "--rate", "50", "--duration", "6", "--json", f.to_str().unwrap()];
            Some(spawn_load(None, &worker_args(&server, &secret, &url, "during", &extra)))
        })
        .collect();
    // Kill the last one once the run is under way.
    let started = Instant::now();
    loop {
        let start = redis.cli(&["GET", "turnkey-load:during:start"]).unwrap_or_default();
        match start.trim() {
            "go" => break,
            "" => {}
            other => panic!("the run did not start: {other}"),
        }
        for p in procs.iter_mut() {
            if p.as_mut().is_some_and(|p| p.0.try_wait().unwrap().is_some()) {
                let out = finish(p.take().unwrap(), Duration::from_secs(1));
                panic!("a worker ended before the start: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        assert!(started.elapsed() < Duration::from_secs(90), "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(procs[2].take());
    let mut kept = Vec::new();
    for (i, p) in procs.iter_mut().enumerate().take(2) {
        let out = finish(p.take().unwrap(), Duration::from_secs(90));
        assert_eq!(out.status.code(), Some(0));
        kept.push(read_json(&files[i]));
    }
    assert!(!files[2].exists(), "the killed worker wrote nothing");
    let merged_json = dir.path().join("report.json");
    let out = merged_report(&url, "during", &merged_json);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a missing worker fails the verdict: {text}");
    let merged = read_json(&merged_json);
    assert_eq!(merged["workers"], 2, "{merged}");
    let missing = merged["missing_workers"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{merged}");
    assert!(missing[0].as_str().unwrap().contains("died during the run"), "{merged}");
    let sent: u64 = kept.iter().map(|r| u(&r["traffic"]["sent"])).sum();
    assert_eq!(u(&merged["traffic"]["sent"]), sent, "the others' results are kept");
    let refs: Vec<&serde_json::Value> = kept.iter().collect();
    let kept_traffic: Vec<&serde_json::Value> = kept.iter().map(|r| &r["traffic"]).collect();
    let context = format!("merged {} from {kept_traffic:?}", merged["traffic"]);
    assert_same_percentiles(&merged["traffic"]["rtt_us"], &pooled_rtt(&refs), &context);
    assert!(text.contains("missing: worker"), "{text}");
}

/// `--coordinate redis+sentinel://…`: two workers and `report` find the primary through the
/// sentinels; the primary is SIGKILLed while the workers run, the sentinels promote the replica,
/// and the workers' heartbeats and results follow it: both results are on the new primary and
/// `report` merges them, nobody counted as dead.
#[test]
fn workers_coordinated_through_sentinel_keep_their_results_across_a_failover() {
    let Some(mut set) = SentinelSet::start(Some("load-pw")) else { return };
    let url = set.url();
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (server, secret) = (tk.udp().to_string(), tk.secret());
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("w{i}.json"))).collect();
    let procs: Vec<Proc> = files
        .iter()
        .map(|f| {
            let mut args = vec!["--server", &server, "--secret", &secret, "--quiet", "--coordinate", &url];
            args.extend(["--run-id", "failover", "--workers", "2", "--flows", "1", "--rate", "50", "--duration", "10"]);
            args.extend(["--json", f.to_str().unwrap()]);
            spawn_load(None, &args)
        })
        .collect();
    let started = Instant::now();
    while set.primary().and_then(|p| p.cli(&["GET", "turnkey-load:failover:start"])).map(|v| v.trim().to_owned())
        != Some("go".to_owned())
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the run never started:\n{}", set.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let old = set.primary_port().unwrap();
    set.servers.iter_mut().find(|s| s.port() == old).unwrap().kill();
    let promoted = set.wait_failover(old, Duration::from_secs(30));
    eprintln!("promoted {:?} after the start", promoted - started);

    let mut reports = Vec::new();
    for (i, p) in procs.into_iter().enumerate() {
        let out = finish(p, Duration::from_secs(120));
        assert_eq!(out.status.code(), Some(0), "worker {i}: {}", String::from_utf8_lossy(&out.stderr));
        reports.push(read_json(&files[i]));
    }
    let primary = set.primary().unwrap();
    for i in 0..2 {
        let r = primary.cli(&["GET", &format!("turnkey-load:failover:result:{i}")]).unwrap_or_default();
        assert!(r.trim().starts_with('{'), "worker {i}'s result is on the new primary: {r:?}");
    }
    let merged_json = dir.path().join("report.json");
    let out = merged_report(&url, "failover", &merged_json);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let merged = read_json(&merged_json);
    assert_eq!(merged["workers"], 2, "{merged}");
    assert!(merged["missing_workers"].as_array().is_none_or(|m| m.is_empty()), "{merged}");
    let sent: u64 = reports.iter().map(|r| u(&r["traffic"]["sent"])).sum();
    assert!(sent > 0);
    assert_eq!(u(&merged["traffic"]["sent"]), sent, "{merged}");
}

/// `rediss+sentinel://` with a private CA: the worker and `report` trust the servers through
/// `--coordinate-ca-file`; without it the same `report` is refused (nothing is trusted).
#[test]
fn a_private_ca_is_trusted_for_rediss_sentinel_coordination() {
    let tls = RedisTls::private_ca();
    let Some(set) = SentinelSet::start_with(Some("tls-pw"), Some(tls)) else { return };
    let (url, ca_file) = (set.url(), set.ca_file().unwrap());
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let ca_file = ca_file.to_str().unwrap();
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (server, secret) = (tk.udp().to_string(), tk.secret());
    let mut args = vec!["--server", &server, "--secret", &secret, "--quiet", "--coordinate", &url];
    args.extend([
        "--coordinate-ca-file",
        ca_file,
        "--run-id",
        "tls",
        "--workers",
        "1",
        "--flows",
        "1",
        "--count",
        "20",
    ]);
    let out = finish(spawn_load(None, &args), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = |ca: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.args(["load", "report", "--coordinate", &url, "--run-id", "tls", "--wait", "10"]);
        if let Some(ca) = ca {
            cmd.args(["--coordinate-ca-file", ca]);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    };
    let trusted = report(Some(ca_file));
    let text = String::from_utf8_lossy(&trusted.stdout);
    assert_eq!(trusted.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(text.contains("20"), "{text}");
    let untrusted = report(None);
    let err = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(2), "without the CA nothing is trusted: {err}");
}

/// `deploy/kubernetes/load/` renders (render.py) into a Job that passes `kubernetes-validate
/// --strict`, runs all its workers at once as an Indexed Job (parallelism = completions =
/// `--workers`, never retried: a restarted worker would be an extra one), in worker mode, with
/// a run id unique to the Job.
#[test]
fn kubernetes_load_job_validates_and_runs_every_worker_at_once() {
    if !require("kubernetes-validate") {
        return;
    }
    let root = turnkey_e2e::root();
    let out = run_with_timeout(
        Command::new("python3").arg(root.join("deploy/kubernetes/render.py")).arg(root.join("deploy/kubernetes/load")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "render.py: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("load.yaml");
    std::fs::write(&all, &out.stdout).unwrap();
    let v = run_with_timeout(Command::new("kubernetes-validate").arg("--strict").arg(&all), Duration::from_secs(60));
    assert!(
        v.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let to_json = "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let j = run_with_timeout(Command::new("python3").args(["-c", to_json]).arg(&all), Duration::from_secs(30));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["parallelism"], spec["completions"], "every worker runs at once");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let after = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
    assert_eq!(args[0], "load");
    assert_eq!(after("--workers").unwrap().parse::<u64>().unwrap(), spec["completions"].as_u64().unwrap());
    assert!(after("--coordinate").unwrap().starts_with("redis://"));
    assert_eq!(after("--run-id"), Some("$(RUN_ID)"));
    assert!(args.contains(&"--merge-report"));
    let env = c["env"].as_array().unwrap();
    let run_id = env.iter().find(|e| e["name"] == "RUN_ID").unwrap();
    assert_eq!(run_id["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['batch.kubernetes.io/controller-uid']");
    assert_eq!(job["metadata"]["labels"]["app.kubernetes.io/part-of"], "turnkey");
    // The arguments are ones `turnkey load` accepts (values substituted, no server contacted:
    // an unknown flag or a bad value fails the parse before any connection, with exit 2 and
    // clap's message; a good parse fails only on the unresolvable example host).
    let real: Vec<String> = args
        .iter()
        .map(|a| match *a {
            "$(TARGET)" => "unresolvable.invalid:3478".to_string(),
            "$(TURN_SECRET)" => "s3cret".to_string(),
            "$(RUN_ID)" => "k8s-check".to_string(),
            a => a.replace("redis://turnkey-redis:6379", "redis://127.0.0.1:1"),
        })
        .collect();
    let out = run_with_timeout(Command::new(bin()).args(&real), Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("coordination: connecting to Redis"), "the flags parse; only Redis is missing: {err}");
}

/// `--server-metrics`: the relay's own CPU and relayed-packet counter, scraped before and after,
/// give its CPU per relayed message beside the load figures; in a ramp, per step.
#[test]
fn server_metrics_report_the_relays_cpu_per_relayed_message() {
    let tk = Turnkey::serve(&["--allow-peer", "127.0.0.1"]);
    let (server, secret) = (tk.udp().to_string(), tk.secret());
    let url = format!("http://{}/metrics", tk.addr("metrics"));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let args = ["--server", &server, "--secret", &secret, "--quiet", "--server-metrics", &url, "--json"];
    let extra = ["--flows", "2", "--rate", "200", "--count", "200", "--max-loss", "0"];
    let out =
        finish(spawn_load(None, &[&args[..], &[json.to_str().unwrap()], &extra[..]].concat()), Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0));
    let r = read_json(&json);
    let c = &r["server_cost"];
    assert_eq!(c["relayed_from"], "server", "{r}");
    // Pairs: each packet crosses both allocations each way (the drain outlasts the relay's
    // 500 ms counter flush, so the second scrape sees every packet).
    assert_eq!(u(&c["relayed_messages"]), 4 * u(&r["traffic"]["delivered"]), "{r}");
    // turnkey's process_cpu_seconds_total is the process's CPU clock, not whole seconds (the
    // prometheus crate's own collector read 0 for a run like this one).
    let cpu = c["cpu_seconds"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu < 2.0, "{r}");
    let per = c["cpu_us_per_message"].as_f64().unwrap();
    assert!((per - cpu * 1e6 / 1600.0).abs() < 1e-6, "{r}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("messages relayed (counted by the server)"));
    // A ramp reports the server's CPU per step.
    let ramp = ["--scenario", "ramp", "--flows", "2", "--rate", "100", "--ramp-steps", "2", "--duration", "1"];
    let out =
        finish(spawn_load(None, &[&args[..], &[json.to_str().unwrap()], &ramp[..]].concat()), Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0));
    let r = read_json(&json);
    let steps = r["ramp"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r}");
    assert!(steps.iter().all(|s| s["server_cost"]["relayed_messages"].as_u64().unwrap() > 0), "{r}");
    // An endpoint without process_cpu_seconds_total is refused at the start.
    let bad = format!("http://{}/healthz", tk.addr("http"));
    let out = finish(
        spawn_load(
            None,
            &["--server", &server, "--secret", &secret, "--quiet", "--count", "5", "--server-metrics", &bad],
        ),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server metrics"));
}
