//! turnkey-fleet against a real `redis-server` (Debian's package; each test starts its own on a
//! loopback port with a temp directory and stops it): every feature, Redis outages and restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{bytes, eventually};

use turnkey_e2e::redis::{RedisOptions, RedisServer, RedisTls};
use turnkey_fleet::handout;
use turnkey_fleet::{
    AdvertisedUrl, Change, Fleet, FleetConfig, FleetError, FleetMetrics, KeyRecord, NodeId, RateVerdict, Region,
    RelayBeat, RelayChange, RelayChangeEvent, Revocation, Transport,
};

const BEAT: Duration = Duration::from_millis(200);

fn cfg(server: &RedisServer, node: &str) -> FleetConfig {
    let mut c = FleetConfig::new(server.url().parse().unwrap(), NodeId::new(node).unwrap());
    c.beat_interval = BEAT;
    c.op_timeout = Duration::from_millis(300);
    c.health_interval = Duration::from_millis(100);
    c.ca_file = server.ca_file();
    c
}

async fn join(server: &RedisServer, node: &str) -> Fleet {
    let f = Fleet::connect(cfg(server, node), FleetMetrics::unregistered()).await.unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await, "{node} did not reach redis");
    f
}

/// Waits until `f` has a working connection again after a Redis restart (its first PING on the
/// old connection may fail; the next one reconnects).
async fn back(f: &Fleet) {
    eventually(Duration::from_secs(5), "reconnect", || f.check_health()).await;
}

fn beat(region: Option<&str>, allocations: u64, draining: bool) -> RelayBeat {
    RelayBeat {
        region: region.map(|r| Region::new(r).unwrap()),
        urls: vec![AdvertisedUrl { transport: Transport::Udp, url: "turn:127.0.0.1:3478?transport=udp".into() }],
        allocations,
        allocation_capacity: 100,
        relayed_bps: 0,
        bandwidth_capacity_bps: None,
        draining,
    }
}

fn names(f: &turnkey_fleet::RelaySnapshot) -> Vec<String> {
    f.relays.iter().map(|r| r.node_id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_lists_live_relays_and_forgets_dead_ones() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (r1, r2, r3) = (join(&redis, "r1").await, join(&redis, "r2").await, join(&redis, "r3").await);
    let issuer = join(&redis, "issuer1").await;
    r1.heartbeat(&beat(Some("eu"), 80, false)).await.unwrap();
    r2.heartbeat(&beat(Some("us"), 10, false)).await.unwrap();
    let r2_last_beat = Instant::now();
    r3.heartbeat(&beat(Some("eu"), 5, true)).await.unwrap();

    let snap = issuer.healthy_relays().await.unwrap();
    assert_eq!(names(&snap), ["r1", "r2", "r3"]);
    assert!(snap.relays.iter().all(|r| r.age_ms < 1000), "{snap:?}");
    assert_eq!(snap.relays[0].beat, beat(Some("eu"), 80, false));
    assert_eq!(issuer.metrics().relays_healthy.get(), 3);
    assert!(issuer.metrics().heartbeat_age.with_label_values(&["r2"]).get() < 1.0);

    // The handout never names the draining r3; it prefers the region, then the lighter relay.
    let stale_ms = 3 * BEAT.as_millis() as u64;
    let eu = Region::new("eu").unwrap();
    let pick = handout::choose(&snap.relays, Some(&eu), 2, stale_ms, 1);
    assert_eq!(pick.iter().map(|r| r.node_id.as_str()).collect::<Vec<_>>(), ["r1", "r2"]);
    let alt = handout::alternate(&snap.relays, &NodeId::new("r3").unwrap(), Transport::Udp, Some(&eu), stale_ms);
    assert_eq!(alt.unwrap().node_id.as_str(), "r1");

    // A graceful stop leaves at once.
    r3.deregister().await.unwrap();
    assert_eq!(names(&issuer.healthy_relays().await.unwrap()), ["r1", "r2"]);
    // A beat after leaving (its loop still running until the process exits) does not return it.
    r3.heartbeat(&beat(None, 0, true)).await.unwrap();
    assert_eq!(names(&issuer.healthy_relays().await.unwrap()), ["r1", "r2"]);

    // r2 stops beating (as if SIGKILLed): gone after 3 missed beats, while r1 keeps beating.
    eventually(Duration::from_secs(5), "r2 expires", || async {
        r1.heartbeat(&beat(Some("eu"), 80, false)).await.unwrap();
        names(&issuer.healthy_relays().await.unwrap()) == ["r1"]
    })
    .await;
    // Its record lives 3 beats from its last one (less the reply's way back to the test).
    let gone = r2_last_beat.elapsed();
    assert!(gone >= BEAT * 2, "r2 vanished {gone:?} after its last beat, before its record could expire");
    assert!(issuer.metrics().heartbeat_age.get_metric_with_label_values(&["r2"]).is_ok());
    assert_eq!(issuer.metrics().relays_healthy.get(), 1);
    // r2 is reaped from the index too (by one of r1's beats), not just hidden. The listing above
    // can drop r2 just after r1's beat of that round ran, so a later beat reaps it: within a beat
    // or two, not at once.
    eventually(Duration::from_secs(2), "r2 reaped from the index by r1's beats", || async {
        r1.heartbeat(&beat(Some("eu"), 80, false)).await.unwrap();
        redis.cli(&["ZRANGE", "turnkey:relays", "0", "-1"]).unwrap().trim() == "r1"
    })
    .await;
    drop(r2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_across_relays_and_leaves_with_a_dead_relay() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (r1, r2) = (join(&redis, "r1").await, join(&redis, "r2").await);
    for r in [&r1, &r2] {
        r.heartbeat(&beat(None, 0, false)).await.unwrap();
    }
    assert!(r1.reserve_allocation("1700000000:alice", 2).await.unwrap());
    assert!(r2.reserve_allocation("1700000000:alice", 2).await.unwrap());
    assert!(!r2.reserve_allocation("1700000000:alice", 2).await.unwrap(), "the quota is fleet-wide");
    assert!(!r1.reserve_allocation("1700000000:alice", 2).await.unwrap());
    assert!(r1.reserve_allocation("1700000000:bob", 2).await.unwrap(), "other users are unaffected");
    assert_eq!(r1.fleet_allocations("1700000000:alice").await.unwrap(), 2);
    // alice is marked full (what relays refuse without asking Redis); bob is not.
    let (v1, full) = r1.quota_full_if_changed(None).await.unwrap().unwrap();
    assert_eq!(full.into_iter().collect::<Vec<_>>(), ["1700000000:alice"]);
    assert!(r2.quota_full_if_changed(Some(v1)).await.unwrap().is_none(), "unchanged");

    r1.release_allocation("1700000000:alice").await.unwrap();
    r1.release_allocation("1700000000:alice").await.unwrap(); // a second release of nothing changes nothing
    assert_eq!(r2.fleet_allocations("1700000000:alice").await.unwrap(), 1);
    let (v2, full) = r2.quota_full_if_changed(Some(v1)).await.unwrap().unwrap();
    assert!(full.is_empty() && v2 > v1, "a release below the limit unmarks");
    assert!(r2.reserve_allocation("1700000000:alice", 2).await.unwrap());
    assert_eq!(r2.local_allocations("1700000000:alice").await, 2);

    // r2 dies with 2 of alice's allocations: they leave the fleet total when its record expires.
    assert!(r2.quota_full_if_changed(Some(v2)).await.unwrap().is_some_and(|(_, f)| f.contains("1700000000:alice")));
    drop(r2);
    eventually(Duration::from_secs(5), "r2's counts are reaped", || async {
        r1.heartbeat(&beat(None, 0, false)).await.unwrap();
        r1.fleet_allocations("1700000000:alice").await.unwrap() == 0
    })
    .await;
    assert!(r1.quota_full_if_changed(None).await.unwrap().is_some_and(|(_, f)| f.is_empty()), "reaping unmarks");
    assert_eq!(r1.fleet_allocations("1700000000:bob").await.unwrap(), 1, "r1's own counts stay");

    // r1 restarts (same node id, a new process with no allocations): its first beat replaces
    // what the previous process left.
    drop(r1);
    let r1b = join(&redis, "r1").await;
    r1b.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(r1b.fleet_allocations("1700000000:bob").await.unwrap(), 0);
    // Unlimited (0) still counts.
    assert!(r1b.reserve_allocation("1700000000:carol", 0).await.unwrap());
    assert_eq!(r1b.fleet_allocations("1700000000:carol").await.unwrap(), 1);

    // A relay that dies before its first heartbeat still has its counts reaped.
    let early = join(&redis, "early").await;
    assert!(early.reserve_allocation("1700000000:dave", 0).await.unwrap());
    drop(early);
    eventually(Duration::from_secs(5), "counts of a relay that never beat are reaped", || async {
        r1b.heartbeat(&beat(None, 0, false)).await.unwrap();
        r1b.fleet_allocations("1700000000:dave").await.unwrap() == 0
    })
    .await;

    // A graceful stop (leave) takes its counts and its usage along at once.
    r1b.add_usage(9, "k", None, bytes(4, 4)).unwrap();
    r1b.leave().await.unwrap();
    assert_eq!(r1b.fleet_allocations("1700000000:carol").await.unwrap(), 0);
    assert_eq!(r1b.usage(9, "k").await.unwrap().bytes, bytes(4, 4));
    assert!(r1b.healthy_relays().await.unwrap().relays.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_reach_subscribers_live_and_on_reconnect() {
    let Some(mut redis) = RedisServer::start(RedisOptions { appendonly: true, ..Default::default() }) else { return };
    let issuer = join(&redis, "issuer1").await;
    let relay = join(&redis, "relay1").await;
    let far = 4_000_000_000u64; // expiry far in the future
    issuer.revoke("1:early", far).await.unwrap();
    issuer.revoke("1:expired", 1).await.unwrap(); // already expired: kept out of replays

    let mut sub = relay.subscribe_revocations();
    // The persisted set first.
    let first = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();
    assert_eq!(first, Revocation::Username { username: "1:early".into(), expiry: far });
    // Then live events, well within 1 s.
    let t = Instant::now();
    issuer.revoke("1:live", far).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await.unwrap().unwrap();
    assert_eq!(ev, Revocation::Username { username: "1:live".into(), expiry: far });
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(sub.try_recv().is_none());

    // The subscriber's connection is killed: it resubscribes and replays, missing nothing.
    redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).unwrap();
    issuer.revoke("1:while-cut-off", far).await.unwrap();
    let mut seen = Vec::new();
    eventually(Duration::from_secs(3), "revocation made while cut off arrives", || {
        while let Some(ev) = sub.try_recv() {
            seen.push(ev);
        }
        let hit =
            seen.iter().any(|e| matches!(e, Revocation::Username { username, .. } if username == "1:while-cut-off"));
        async move { hit }
    })
    .await;

    // Redis restarts (append-only file): the subscriber comes back, replays the set, and live
    // events flow again.
    tokio::task::block_in_place(|| redis.kill());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!relay.is_up());
    tokio::task::block_in_place(|| redis.restart());
    back(&relay).await;
    let mut replay = Vec::new();
    eventually(Duration::from_secs(3), "replay after redis restart", || {
        while let Some(ev) = sub.try_recv() {
            replay.push(ev);
        }
        let n = replay.len();
        async move { n >= 3 }
    })
    .await;
    for name in ["1:early", "1:live", "1:while-cut-off"] {
        assert!(
            replay.iter().any(|e| matches!(e, Revocation::Username { username, .. } if username == name)),
            "{name}: {replay:?}"
        );
    }
    back(&issuer).await;
    eventually(Duration::from_secs(3), "live after restart", || {
        let issuer = issuer.clone();
        async move { issuer.revoke("1:after", far).await.is_ok() }
    })
    .await;
    let after = eventually(Duration::from_secs(3), "live event after restart", || {
        let hit = std::iter::from_fn(|| sub.try_recv())
            .any(|e| matches!(e, Revocation::Username { username, .. } if username == "1:after"));
        async move { hit }
    })
    .await;
    assert!(after < Duration::from_secs(1), "{after:?}");
    let all = issuer.revocations().await.unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(relay.metrics().revocations_received.get() >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shared_and_deleting_one_revokes_it() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (a, b) = (join(&redis, "issuer-a").await, join(&redis, "issuer-b").await);
    let v0 = b.keys_if_changed(None).await.unwrap().unwrap();
    assert!(v0.keys.is_empty());
    assert!(b.keys_if_changed(Some(v0.version)).await.unwrap().is_none(), "nothing changed");

    let key = KeyRecord {
        id: "0123456789abcdef0123456789abcdef".into(),
        token_sha256: "ab".repeat(32),
        max_ttl: Some(3600),
        monthly_bandwidth_bytes: Some(1 << 30),
        created: 1_700_000_000,
        admin: false,
    };
    assert!(a.create_key(&key).await.unwrap());
    assert!(!a.create_key(&key).await.unwrap(), "ids are unique");
    let v1 = b.keys_if_changed(Some(v0.version)).await.unwrap().unwrap();
    assert_eq!(v1.keys, vec![key.clone()]);
    assert_eq!(b.get_key(&key.id).await.unwrap(), Some(key.clone()));

    let mut changed = key.clone();
    changed.monthly_bandwidth_bytes = None;
    b.put_key(&changed).await.unwrap();
    assert_eq!(a.list_keys().await.unwrap().keys, vec![changed]);

    let mut sub = b.subscribe_revocations();
    tokio::time::sleep(Duration::from_millis(200)).await; // subscribed
    assert!(a.delete_key(&key.id, 4_000_000_000).await.unwrap());
    assert!(!a.delete_key(&key.id, 4_000_000_000).await.unwrap());
    let ev = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await.unwrap().unwrap();
    assert_eq!(ev, Revocation::Key { id: key.id.clone(), until: 4_000_000_000 });
    let v2 = b.keys_if_changed(Some(v1.version)).await.unwrap().unwrap();
    assert!(v2.keys.is_empty());
    assert_eq!(b.get_key(&key.id).await.unwrap(), None);
    assert!(b.revocations().await.unwrap().contains(&Revocation::Key { id: key.id.clone(), until: 4_000_000_000 }));

    let bad = KeyRecord { id: "x:y".into(), ..key };
    assert!(matches!(a.create_key(&bad).await, Err(FleetError::InvalidName { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_exactly_once_across_relays_and_a_redis_restart() {
    let Some(mut redis) = RedisServer::start(RedisOptions { appendonly: true, ..Default::default() }) else { return };
    let (r1, r2) = (join(&redis, "r1").await, join(&redis, "r2").await);
    let issuer = join(&redis, "issuer1").await;
    let (period, key) = (1_700_000_000u64, "0123456789abcdef0123456789abcdef");

    r1.add_usage(period, key, None, bytes(100, 200)).unwrap();
    r1.add_usage(period, key, None, bytes(1, 2)).unwrap();
    r2.add_usage(period, key, Some("room:7"), bytes(50, 0)).unwrap();
    assert_eq!(r1.metrics().usage_buffered.get(), 1);
    assert_eq!(r1.flush_usage().await.unwrap(), 1);
    assert_eq!(r2.flush_usage().await.unwrap(), 1);
    assert_eq!(r1.flush_usage().await.unwrap(), 0, "nothing left");
    assert_eq!(r1.metrics().usage_buffered.get(), 0);
    let t = issuer.usage(period, key).await.unwrap();
    assert_eq!(t.bytes, bytes(151, 202), "labelled traffic counts in the key's total");
    assert_eq!(t.labels["room:7"], bytes(50, 0));

    // Redis goes away: deltas keep buffering, the flush fails fast and keeps its batch.
    tokio::task::block_in_place(|| redis.kill());
    r1.add_usage(period, key, None, bytes(1000, 0)).unwrap();
    let t0 = Instant::now();
    let err = r1.flush_usage().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(t0.elapsed() < Duration::from_millis(700), "flush took {:?}", t0.elapsed());
    let in_flight = r1.pending_usage_batch().expect("the failed batch is kept");
    r1.add_usage(period, key, None, bytes(0, 7)).unwrap();
    assert_eq!(r1.metrics().usage_buffered.get(), 2);

    tokio::task::block_in_place(|| redis.restart());
    back(&r1).await;
    back(&issuer).await;
    assert_eq!(r1.flush_usage().await.unwrap(), 1, "the kept batch");
    assert_eq!(r1.flush_usage().await.unwrap(), 1, "what came during the outage");
    // The same batch again (an answer lost after Redis applied it): counted once.
    assert!(!r1.apply_usage_batch(&in_flight).await.unwrap());
    let t = issuer.usage(period, key).await.unwrap();
    assert_eq!(t.bytes, bytes(1151, 209), "acknowledged usage survived the SIGKILL, the outage's arrived once");

    // A second relay process under the same node id (a restart) numbers from 1 again, and is
    // not mistaken for the first.
    drop(r2);
    let r2b = join(&redis, "r2").await;
    r2b.add_usage(period, key, Some("room:7"), bytes(5, 5)).unwrap();
    assert_eq!(r2b.flush_usage().await.unwrap(), 1);
    assert_eq!(issuer.usage(period, key).await.unwrap().labels["room:7"], bytes(55, 5));
    assert_eq!(issuer.usage(period + 1, key).await.unwrap().bytes, bytes(0, 0), "periods are separate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_buffer_is_bounded_and_counts_what_it_drops() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let mut c = cfg(&redis, "r1");
    c.usage_buffer_entries = 2;
    let r1 = Fleet::connect(c, FleetMetrics::unregistered()).await.unwrap();
    assert!(r1.add_usage(1, "k1", None, bytes(1, 1)).unwrap());
    assert!(r1.add_usage(1, "k2", None, bytes(1, 1)).unwrap());
    assert!(!r1.add_usage(1, "k3", None, bytes(10, 5)).unwrap());
    assert!(r1.add_usage(1, "k1", None, bytes(1, 1)).unwrap(), "known entries still merge");
    assert_eq!(r1.metrics().usage_dropped.get(), 1);
    assert_eq!(r1.metrics().usage_dropped_bytes.get(), 15);
    assert!(r1.add_usage(1, "bad key", None, bytes(1, 1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_issuers() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (a, b) = (join(&redis, "issuer-a").await, join(&redis, "issuer-b").await);
    // A day-long window: the test cannot straddle a window boundary in practice.
    let window = 86_400;
    let mut allowed = 0;
    for i in 0..12 {
        let f = if i % 2 == 0 { &a } else { &b };
        match f.rate_limit("198.51.100.7", 5, window).await.unwrap() {
            RateVerdict::Allow => allowed += 1,
            RateVerdict::Limited { retry_after } => assert!((1..=window).contains(&retry_after)),
        }
    }
    assert_eq!(allowed, 5, "5 per window across both issuers");
    assert_eq!(b.rate_limit("198.51.100.8", 5, window).await.unwrap(), RateVerdict::Allow);
    assert_eq!(b.rate_limit("198.51.100.7", 0, window).await.unwrap(), RateVerdict::Allow, "0: no limit");
    // A short window ends and lets the client in again.
    for _ in 0..2 {
        a.rate_limit("203.0.113.1", 1, 1).await.unwrap();
    }
    assert!(matches!(a.rate_limit("203.0.113.1", 1, 1).await.unwrap(), RateVerdict::Limited { retry_after: 1 }));
    eventually(Duration::from_secs(3), "next window", || async {
        b.rate_limit("203.0.113.1", 1, 1).await.unwrap() == RateVerdict::Allow
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fails_fast_then_reconnects() {
    let Some(mut redis) = RedisServer::start(RedisOptions::default()) else { return };
    let registry = prometheus::Registry::new();
    let metrics = FleetMetrics::new(&registry).unwrap();
    let relay = Fleet::connect(cfg(&redis, "r1"), metrics).await.unwrap();
    back(&relay).await;
    relay.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(relay.metrics().redis_up.get(), 1);

    tokio::task::block_in_place(|| redis.kill());
    let t = Instant::now();
    let e = relay.heartbeat(&beat(None, 0, false)).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(t.elapsed() < Duration::from_millis(700), "{:?}", t.elapsed());
    assert!(!relay.is_up());
    assert_eq!(relay.metrics().redis_up.get(), 0);
    // While down, calls fail without waiting.
    let t = Instant::now();
    for _ in 0..100 {
        assert!(relay.reserve_allocation("1:u", 5).await.unwrap_err().is_unavailable());
    }
    assert!(t.elapsed() < Duration::from_millis(100), "100 calls took {:?}", t.elapsed());

    tokio::task::block_in_place(|| redis.restart());
    back(&relay).await;
    relay.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(relay.metrics().reconnects.get(), 1);
    assert_eq!(relay.metrics().redis_up.get(), 1);
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    for name in
        ["turnkey_fleet_redis_up 1", "turnkey_fleet_redis_reconnects_total 1", "turnkey_fleet_usage_buffered_entries"]
    {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_while_redis_is_down_connects_when_it_appears() {
    let Some(mut redis) = RedisServer::start(RedisOptions::default()) else { return };
    tokio::task::block_in_place(|| redis.kill());
    let relay = Fleet::connect(cfg(&redis, "r1"), FleetMetrics::unregistered()).await.unwrap();
    assert!(!relay.is_up());
    assert!(relay.healthy_relays().await.unwrap_err().is_unavailable());
    tokio::task::block_in_place(|| redis.restart());
    back(&relay).await;
    relay.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(names(&relay.healthy_relays().await.unwrap()), ["r1"]);
    assert_eq!(relay.metrics().reconnects.get(), 0, "the first connection is not a reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_midway_converges() {
    // Redis without persistence restarts empty in the middle: relays re-register, quota counts
    // are re-published from each relay's own truth (including what was admitted locally during
    // the outage), the issuer's cached listing bridges the gap, and buffered usage arrives once.
    let Some(mut redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (r1, r2) = (join(&redis, "r1").await, join(&redis, "r2").await);
    let issuer = join(&redis, "issuer1").await;
    for r in [&r1, &r2] {
        r.heartbeat(&beat(None, 1, false)).await.unwrap();
    }
    assert!(r1.reserve_allocation("1:u", 10).await.unwrap());
    assert!(r2.reserve_allocation("1:u", 10).await.unwrap());
    assert_eq!(names(&issuer.healthy_relays().await.unwrap()), ["r1", "r2"]);
    r1.add_usage(5, "k", None, bytes(10, 10)).unwrap();
    r1.flush_usage().await.unwrap();

    tokio::task::block_in_place(|| redis.kill());
    // Outage: the relay admits under its local limits and says so; usage keeps buffering.
    assert!(r1.reserve_allocation("1:u", 10).await.unwrap_err().is_unavailable());
    r1.admit_local("1:u").await;
    r1.release_allocation("1:u").await.unwrap_err();
    r1.admit_local("1:u").await;
    r2.add_usage(5, "k", None, bytes(1, 1)).unwrap();
    r1.add_usage(5, "k", None, bytes(2, 2)).unwrap();
    assert!(r1.flush_usage().await.is_err());
    assert!(r2.flush_usage().await.is_err());
    let cached = issuer.healthy_relays_or_cached(Duration::from_secs(10)).await.unwrap();
    assert!(cached.cached);
    assert_eq!(names(&cached), ["r1", "r2"]);
    assert!(issuer.healthy_relays_or_cached(Duration::ZERO).await.is_err(), "bounded staleness");

    tokio::task::block_in_place(|| redis.restart());
    for f in [&r1, &r2, &issuer] {
        back(f).await;
    }
    for r in [&r1, &r2] {
        r.heartbeat(&beat(None, 1, false)).await.unwrap();
        r.flush_usage().await.unwrap();
    }
    assert_eq!(names(&issuer.healthy_relays().await.unwrap()), ["r1", "r2"]);
    // r1 holds 2 (1 reserved + 2 admitted locally - 1 released), r2 holds 1.
    assert_eq!(r1.local_allocations("1:u").await, 2);
    assert_eq!(issuer.fleet_allocations("1:u").await.unwrap(), 3);
    // The first batch was acknowledged before the restart and lost with Redis's memory (this
    // Redis keeps no append-only file): no replica ever confirmed it, so r1 sent it again after
    // the reconnect; what was buffered during the outage arrives too, each exactly once.
    assert_eq!(r1.unconfirmed_usage_batches(), vec![1, 2], "no replica: nothing is ever confirmed");
    assert_eq!(issuer.usage(5, "k").await.unwrap().bytes, bytes(13, 13));
    assert_eq!(r1.flush_usage().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_tls() {
    let Some(redis) = RedisServer::start(RedisOptions { password: Some("s3cret-pw".into()), ..Default::default() })
    else {
        return;
    };
    let ok = join(&redis, "r1").await;
    ok.heartbeat(&beat(None, 0, false)).await.unwrap();
    let mut wrong = cfg(&redis, "r2");
    wrong.url = redis.url().replace("s3cret-pw", "wrong").parse().unwrap();
    let f = Fleet::connect(wrong, FleetMetrics::unregistered()).await.unwrap();
    assert!(!f.is_up(), "a wrong password never counts as up");
    assert!(f.heartbeat(&beat(None, 0, false)).await.unwrap_err().is_unavailable());

    // rediss:// with the server's CA.
    let tls = RedisTls::private_ca();
    let Some(tls_redis) =
        RedisServer::start(RedisOptions { password: Some("tls-pw".into()), tls: Some(tls), ..Default::default() })
    else {
        return;
    };
    assert!(tls_redis.url().starts_with("rediss://"));
    let over_tls = join(&tls_redis, "r1").await;
    over_tls.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(names(&over_tls.healthy_relays().await.unwrap()), ["r1"]);
    // Without the CA the server's certificate is not trusted.
    let mut untrusted = cfg(&tls_redis, "r2");
    untrusted.ca_file = None;
    let f = Fleet::connect(untrusted, FleetMetrics::unregistered()).await.unwrap();
    assert!(!f.is_up());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_loops_keep_issuers_current() {
    let Some(mut redis) = RedisServer::start(RedisOptions::default()) else { return };
    let relay = join(&redis, "r1").await;
    let (a, b) = (join(&redis, "issuer-a").await, join(&redis, "issuer-b").await);
    relay.spawn_heartbeat(|| beat(Some("eu"), 3, false));
    let mut relays = b.watch_relays(BEAT, Duration::from_secs(1));
    let mut keys = b.watch_keys(Duration::from_millis(100));

    eventually(Duration::from_secs(3), "relay listed", || {
        let n = relays.borrow_and_update().relays.len();
        async move { n == 1 }
    })
    .await;
    // A key created on issuer A is in issuer B's copy well within 2 s.
    let key = KeyRecord {
        id: "fedcba9876543210fedcba9876543210".into(),
        token_sha256: "cd".repeat(32),
        max_ttl: None,
        monthly_bandwidth_bytes: None,
        created: 1,
        admin: false,
    };
    let t = Instant::now();
    assert!(a.create_key(&key).await.unwrap());
    let seen = eventually(Duration::from_secs(2), "key visible on issuer B", || {
        let has = keys.borrow_and_update().as_ref().is_some_and(|s| s.keys.contains(&key));
        async move { has }
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(2), "{seen:?}");

    // Redis goes away: the listing is kept for max_stale (1 s), then emptied; keys stay.
    tokio::task::block_in_place(|| redis.kill());
    eventually(Duration::from_secs(2), "cached listing", || {
        let s = relays.borrow_and_update().clone();
        async move { s.cached && s.relays.len() == 1 }
    })
    .await;
    eventually(Duration::from_secs(4), "listing dropped after max_stale", || {
        let n = relays.borrow_and_update().relays.len();
        async move { n == 0 }
    })
    .await;
    assert!(keys.borrow().as_ref().is_some_and(|s| s.keys.contains(&key)));

    // Back: the heartbeat loop re-registers the relay by itself.
    tokio::task::block_in_place(|| redis.restart());
    eventually(Duration::from_secs(5), "relay listed again", || {
        let s = relays.borrow_and_update().clone();
        async move { !s.cached && s.relays.len() == 1 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_allocations_sum_a_keys_userids_on_every_relay() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (r1, r2) = (join(&redis, "r1").await, join(&redis, "r2").await);
    let (k, other) = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210");
    for (relay, userid) in [(&r1, format!("{k}:alice")), (&r2, format!("{k}:alice")), (&r2, format!("{k}:~00ff"))] {
        assert!(relay.reserve_allocation(&userid, 0).await.unwrap());
    }
    assert!(r1.reserve_allocation(&format!("{other}:alice"), 0).await.unwrap());
    assert_eq!(r1.key_allocations(k).await.unwrap(), 3);
    assert_eq!(r2.key_allocations(other).await.unwrap(), 1);
    r2.release_allocation(&format!("{k}:~00ff")).await.unwrap();
    assert_eq!(r1.key_allocations(k).await.unwrap(), 2);
    assert_eq!(r1.key_allocations("0000").await.unwrap(), 0);
    assert!(r1.key_allocations("a*").await.is_err(), "no glob characters reach the scan");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_state_changes_are_announced_and_resubscribed_after_a_restart() {
    let Some(mut redis) = RedisServer::start(RedisOptions::default()) else { return };
    let (r1, issuer) = (join(&redis, "r1").await, join(&redis, "issuer1").await);
    let mut changes = issuer.relay_changes();
    assert_eq!(next(&mut changes, 5000).await, Some(RelayChangeEvent::Subscribed));
    // Joined, draining, resumed, left: each announced; a beat that changes nothing is not.
    let r1_did = |change| Some(RelayChangeEvent::Changed(RelayChange { node_id: NodeId::new("r1").unwrap(), change }));
    r1.heartbeat(&beat(None, 0, false)).await.unwrap();
    assert_eq!(next(&mut changes, 2000).await, r1_did(Change::Joined));
    r1.heartbeat(&beat(None, 5, false)).await.unwrap();
    assert_eq!(next(&mut changes, 300).await, None, "an ordinary beat is not a change");
    r1.heartbeat(&beat(None, 5, true)).await.unwrap();
    assert_eq!(next(&mut changes, 2000).await, r1_did(Change::Draining));
    r1.heartbeat(&beat(None, 5, true)).await.unwrap();
    assert_eq!(next(&mut changes, 300).await, None, "still draining is not a change");
    r1.heartbeat(&beat(None, 5, false)).await.unwrap();
    assert_eq!(next(&mut changes, 2000).await, r1_did(Change::Resumed));
    r1.deregister().await.unwrap();
    assert_eq!(next(&mut changes, 2000).await, r1_did(Change::Left));

    // A listing kept by watch_relays follows a change at once, not at its next refresh (10 s).
    let r2 = join(&redis, "r2").await;
    r2.heartbeat(&beat(None, 0, false)).await.unwrap();
    let mut listing = issuer.watch_relays(Duration::from_secs(10), Duration::from_secs(30));
    let first = tokio::time::timeout(Duration::from_secs(2), listing.wait_for(|s| s.relays.len() == 1)).await.is_ok();
    assert!(first, "first listing");
    let t = Instant::now();
    r2.heartbeat(&beat(None, 0, true)).await.unwrap();
    let drained = tokio::time::timeout(
        Duration::from_secs(2),
        listing.wait_for(|s| s.relays.iter().any(|r| r.node_id.as_str() == "r2" && r.beat.draining)),
    )
    .await
    .is_ok();
    assert!(drained, "the listing shows r2 draining at once");
    let r3 = join(&redis, "r3").await;
    r3.heartbeat(&beat(None, 0, false)).await.unwrap();
    r2.deregister().await.unwrap();
    let updated = tokio::time::timeout(
        Duration::from_secs(2),
        listing.wait_for(|s| s.relays.iter().map(|r| r.node_id.as_str()).collect::<Vec<_>>() == ["r3"]),
    )
    .await
    .is_ok();
    assert!(updated, "r2 left and r3 joined: {:?}", names(&listing.borrow()));
    assert!(t.elapsed() < Duration::from_secs(2), "all before the periodic refresh: {:?}", t.elapsed());

    // Redis restarts: the subscription comes back by itself.
    while next(&mut changes, 100).await.is_some() {}
    redis.kill();
    redis.restart();
    back(&issuer).await;
    back(&r3).await;
    assert_eq!(next(&mut changes, 5000).await, Some(RelayChangeEvent::Subscribed), "resubscribed");
    r3.heartbeat(&beat(None, 0, false)).await.unwrap();
    let r3_joined =
        RelayChangeEvent::Changed(RelayChange { node_id: NodeId::new("r3").unwrap(), change: Change::Joined });
    assert_eq!(next(&mut changes, 2000).await, Some(r3_joined), "Redis came back empty: r3 joins again");
}

/// The next event of `changes` within `ms` milliseconds.
async fn next(changes: &mut tokio::sync::mpsc::Receiver<RelayChangeEvent>, ms: u64) -> Option<RelayChangeEvent> {
    tokio::time::timeout(Duration::from_millis(ms), changes.recv()).await.ok().flatten()
}
