//! Bytes a relay sends to Redis per second for its session index, per 1,000 sessions, on a real
//! `redis-server` (its `INFO stats` `total_net_input_bytes` before and after): the compact,
//! incremental index ([`Fleet::write_session_index`]) against the full JSON rewrite it replaced
//! (the same sessions as `/v1/sessions` objects, `SET ... PX` every second).
//!
//! `cargo run --release -p turnkey-fleet --example session_index_bench [--sessions N]
//! [--seconds S]` (default 1000 sessions, 10 s). Each second every active session's counters move
//! (a call relaying both ways); the figures are given for 0 %, 10 % and 100 % of the sessions
//! active, plus one session started and one ended per second at each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_fleet::{
    Fleet, FleetConfig, FleetMetrics, IndexedSession, LiveCounts, NodeId, SessionIndexWriter, Transport,
};

fn session(id: u64) -> IndexedSession {
    IndexedSession {
        id: 0x8d1f_2c3a_0000_0000 | id,
        transport: Transport::Udp,
        client: format!("198.51.{}.{}:{}", (id >> 8) % 256, id % 256, 40_000 + id % 20_000).parse().unwrap(),
        server: "203.0.113.5:3478".parse().unwrap(),
        relayed: format!("203.0.113.5:{}", 50_000 + id % 10_000).parse().unwrap(),
        created: 1_767_225_600,
        username: format!("1767312000:0123456789abcdef0123456789abcdef:user-{}", id % 5_000),
        live: LiveCounts { expires: 1_767_226_200, permissions: 1, channels: 1, ..LiveCounts::default() },
    }
}

/// The `/v1/sessions` object the old index held for `s` (docs/api/openapi.yaml `Session`).
fn api_json(s: &IndexedSession) -> serde_json::Value {
    let l = &s.live;
    serde_json::json!({
        "id": format!("{:016x}", s.id), "node": "relay-1", "key": "0123456789abcdef0123456789abcdef",
        "user": s.username.rsplit(':').next().unwrap(), "username": s.username, "transport": "udp",
        "client": s.client, "server": s.server, "relayed": [s.relayed], "permissions": l.permissions,
        "channels": l.channels, "created": s.created, "expires": l.expires,
        "bytes_client_to_peer": l.bytes_client_to_peer, "bytes_peer_to_client": l.bytes_peer_to_client,
        "packets_client_to_peer": l.packets_client_to_peer, "packets_peer_to_client": l.packets_peer_to_client,
        "fast_path": l.fast_path,
    })
}

async fn net_input(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(c).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("total_net_input_bytes:")).unwrap().trim().parse().unwrap()
}

/// One second of traffic: the first `active` sessions relay 50 packets of 1,000 bytes each way,
/// one session ends and a new one starts.
fn tick(sessions: &mut Vec<IndexedSession>, active: usize, next_id: &mut u64) {
    for s in sessions.iter_mut().take(active) {
        s.live.bytes_client_to_peer += 50_000;
        s.live.bytes_peer_to_client += 50_000;
        s.live.packets_client_to_peer += 50;
        s.live.packets_peer_to_client += 50;
    }
    sessions.pop();
    sessions.insert(0, session(*next_id));
    *next_id += 1;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n, mut seconds) = (1000u64, 10u64);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sessions" => n = args.next().and_then(|s| s.parse().ok()).expect("--sessions N"),
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).expect("--seconds S"),
            other => panic!("unknown argument {other}"),
        }
    }
    let redis = RedisServer::start(RedisOptions::default()).expect("redis-server (apt-get install redis-server)");
    let node = NodeId::new("relay-1").unwrap();
    let fleet = Fleet::connect(FleetConfig::new(redis.url().parse().unwrap(), node), FleetMetrics::unregistered())
        .await
        .unwrap();
    assert!(fleet.wait_up(Duration::from_secs(5)).await);
    let mut c = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let per_k = |bytes: u64| bytes as f64 / seconds as f64 * 1000.0 / n as f64;
    println!("{{\"sessions\": {n}, \"seconds\": {seconds}, \"bytes_per_second_per_1000_sessions\": [");
    for (i, pct) in [0usize, 10, 100].into_iter().enumerate() {
        let active = n as usize * pct / 100;
        // Before: the whole index as JSON, rewritten every second.
        let mut sessions: Vec<IndexedSession> = (0..n).map(session).collect();
        let mut next_id = n;
        let before0 = net_input(&mut c).await;
        for _ in 0..seconds {
            tick(&mut sessions, active, &mut next_id);
            let json = serde_json::to_string(&sessions.iter().map(api_json).collect::<Vec<_>>()).unwrap();
            redis::cmd("SET")
                .arg("old:sessions:relay-1")
                .arg(json)
                .arg("PX")
                .arg(6000)
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
        let before = net_input(&mut c).await - before0;
        // After: the compact hash, changes only (its first full write is not counted: it happens
        // once when the relay starts).
        let mut sessions: Vec<IndexedSession> = (0..n).map(session).collect();
        let mut next_id = n;
        let mut w = SessionIndexWriter::new(1 + i as u64);
        let first = fleet.write_session_index(&mut w, &sessions).await.unwrap();
        let after0 = net_input(&mut c).await;
        for _ in 0..seconds {
            tick(&mut sessions, active, &mut next_id);
            let wrote = fleet.write_session_index(&mut w, &sessions).await.unwrap();
            assert!(!wrote.full);
        }
        let after = net_input(&mut c).await - after0;
        println!(
            "  {{\"active_pct\": {pct}, \"full_json_rewrite\": {:.0}, \"compact_delta\": {:.0}, \
             \"compact_full_write_once\": {:.0}, \"ratio\": {:.3}}}{}",
            per_k(before),
            per_k(after),
            first.bytes as f64 * 1000.0 / n as f64,
            after as f64 / before as f64,
            if pct == 100 { "" } else { "," }
        );
    }
    println!("]}}");
}
