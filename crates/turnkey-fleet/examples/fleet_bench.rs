//! Cost of each fleet operation on a real `redis-server`: Redis CPU per operation (from
//! `INFO cpu` before and after) and the rate one client process reached. The figures behind the
//! capacity model in `docs/fleet.md`.
//!
//! `cargo run --release -p turnkey-fleet --example fleet_bench [ops-per-phase]` (default 20000,
//! at most 1,000,000; 32 concurrent callers on one multiplexed connection).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_fleet::{AdvertisedUrl, Fleet, FleetConfig, FleetMetrics, NodeId, RelayBeat, Transport, UsageBytes};

const CALLERS: usize = 32;

fn beat(i: u64) -> RelayBeat {
    RelayBeat {
        region: None,
        urls: vec![
            AdvertisedUrl { transport: Transport::Udp, url: format!("turn:relay{i}.example.net:3478?transport=udp") },
            AdvertisedUrl { transport: Transport::Tcp, url: format!("turn:relay{i}.example.net:3478?transport=tcp") },
            AdvertisedUrl { transport: Transport::Tls, url: format!("turns:relay{i}.example.net:5349?transport=tcp") },
        ],
        allocations: i % 500,
        allocation_capacity: 10_000,
        relayed_bps: 123_456_789,
        bandwidth_capacity_bps: Some(1_000_000_000),
        draining: false,
    }
}

async fn redis_cpu(url: &str) -> f64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut c).await.unwrap();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

async fn phase<F, Fut>(name: &str, url: &str, ops: usize, per_call: usize, f: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let cpu0 = redis_cpu(url).await;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..CALLERS {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = caller;
            while i < ops {
                f(i).await;
                i += CALLERS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = redis_cpu(url).await - cpu0;
    println!(
        "{name:<44} {ops:>8} calls {:>9.0} calls/s   redis CPU {:>7.1} µs/call{}",
        ops as f64 / secs,
        cpu * 1e6 / ops as f64,
        if per_call > 1 { format!(" ({per_call} items each)") } else { String::new() }
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ops: usize = std::env::args().nth(1).map(|s| s.parse().expect("ops")).unwrap_or(20_000).min(1_000_000);
    let mut redis = RedisServer::start(RedisOptions::default()).expect("redis-server is installed");
    let url = redis.url();
    let mut cfg = FleetConfig::new(url.parse().unwrap(), NodeId::new("bench-relay").unwrap());
    cfg.op_timeout = Duration::from_secs(5);
    let fleet = Fleet::connect(cfg, FleetMetrics::unregistered()).await.unwrap();
    assert!(fleet.wait_up(Duration::from_secs(5)).await);

    register_relays(&url).await;
    println!("redis-server {} on 127.0.0.1, {CALLERS} concurrent callers, one connection", redis_version());

    let f = fleet.clone();
    phase("heartbeat (1000 relays registered)", &url, ops, 1, move |i| {
        let f = f.clone();
        async move { f.heartbeat(&beat(i as u64)).await.unwrap() }
    })
    .await;
    let f = fleet.clone();
    phase("rate_limit (per app credential request)", &url, ops, 1, move |i| {
        let f = f.clone();
        async move {
            f.rate_limit(&format!("198.51.{}.{}", (i / 256) % 256, i % 256), 10, 300).await.unwrap();
        }
    })
    .await;
    let f = fleet.clone();
    phase("reserve_allocation + release_allocation", &url, ops, 1, move |i| {
        let f = f.clone();
        async move {
            let user = format!("1700000000:user{}", i % 5000);
            f.reserve_allocation(&user, 0).await.unwrap();
            f.release_allocation(&user).await.unwrap();
        }
    })
    .await;
    let f = fleet.clone();
    phase("keys_if_changed (unchanged)", &url, ops, 1, move |_| {
        let f = f.clone();
        async move {
            f.keys_if_changed(Some(0)).await.unwrap();
        }
    })
    .await;
    let f = fleet.clone();
    phase("revoke", &url, ops, 1, move |i| {
        let f = f.clone();
        async move { f.revoke(&format!("4000000000:user{i}"), 4_000_000_000).await.unwrap() }
    })
    .await;
    let batches = (ops / 100).max(10);
    let f = fleet.clone();
    phase("add_usage x100 keys + flush_usage", &url, batches, 100, move |i| {
        let f = f.clone();
        async move {
            for k in 0..100 {
                let key = format!("{:032x}", k);
                f.add_usage(1_700_000_000, &key, None, UsageBytes { client_to_peer: i as u64, peer_to_client: 1 })
                    .unwrap();
            }
            f.flush_usage().await.unwrap();
        }
    })
    .await;
    let lists = (ops / 400).max(10);
    register_relays(&url).await; // fresh beats: listing counts only relays beaten within 6 s
    let f = fleet.clone();
    phase("healthy_relays (1000 relays)", &url, lists, 1000, move |_| {
        let f = f.clone();
        async move {
            let s = f.healthy_relays().await.unwrap();
            assert!(s.relays.len() >= 1000, "{} relays listed", s.relays.len());
        }
    })
    .await;
    let mem = redis.cli(&["INFO", "memory"]).unwrap_or_default();
    let used = mem.lines().find(|l| l.starts_with("used_memory_human:")).unwrap_or("").trim().to_owned();
    let keys = redis.cli(&["DBSIZE"]).unwrap_or_default();
    println!("after the run: {used}, {} keys", keys.trim());
    redis.shutdown();
}

/// 1000 relays' records, written directly (as 1000 relays' beats would), with a beat time of now.
async fn register_relays(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut pipe = redis::pipe();
    for i in 0..1000u64 {
        let mut v = serde_json::to_value(beat(i)).unwrap();
        v["node_id"] = format!("relay{i}").into();
        pipe.cmd("SET").arg(format!("turnkey:relay:relay{i}")).arg(v.to_string()).arg("PX").arg(600_000).ignore();
        pipe.cmd("ZADD").arg("turnkey:relays").arg(now_ms).arg(format!("relay{i}")).ignore();
    }
    let () = pipe.query_async(&mut c).await.unwrap();
    let n: u64 = c.zcard("turnkey:relays").await.unwrap();
    assert!(n >= 1000);
}

fn redis_version() -> String {
    let out = std::process::Command::new("redis-server").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().find(|w| w.starts_with("v=")).unwrap_or("v=?").to_owned()
}
