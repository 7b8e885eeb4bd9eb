//! turnkey-fleet behind Redis Sentinel (Debian's `redis-server` and `redis-sentinel`: one
//! primary, one replica, three sentinels on loopback): the primary is SIGKILLed, the sentinels
//! promote the replica, and every handle follows by itself. A usage batch the old primary
//! acknowledged but never replicated is applied again on the new primary, exactly once; a
//! revocation made during the failover reaches a relay's subscription; rate limits and quotas
//! work again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{bytes, eventually};

use turnkey_e2e::redis::{RedisOptions, RedisServer, RedisTls};
use turnkey_e2e::sentinel::SentinelSet;
use turnkey_fleet::{
    AdvertisedUrl, Fleet, FleetConfig, FleetMetrics, NodeId, RateVerdict, RelayBeat, Revocation, Transport,
};

const PERIOD: u64 = 1_700_000_000;

/// Default timings (health check 1 s, operation timeout 500 ms): what a deployment runs with.
async fn join(url: &str, node: &str) -> Fleet {
    let c = FleetConfig::new(url.parse().unwrap(), NodeId::new(node).unwrap());
    let f = Fleet::connect(c, FleetMetrics::unregistered()).await.unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await, "{node} did not reach the primary");
    f
}

fn beat() -> RelayBeat {
    RelayBeat {
        region: None,
        urls: vec![AdvertisedUrl { transport: Transport::Udp, url: "turn:127.0.0.1:3478?transport=udp".into() }],
        allocations: 1,
        allocation_capacity: 100,
        relayed_bps: 0,
        bandwidth_capacity_bps: None,
        draining: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_is_followed_and_an_unreplicated_usage_batch_counts_once() {
    let Some(mut set) = tokio::task::block_in_place(|| SentinelSet::start(Some("s3nt-pw"))) else { return };
    let url = set.url();
    assert!(url.starts_with("redis+sentinel://:s3nt-pw@127.0.0.1:") && url.ends_with("/mymaster"), "{url}");
    let relay = join(&url, "relay-1").await;
    let issuer = join(&url, "issuer-1").await;
    let far = 4_000_000_000u64;
    let mut sub = relay.subscribe_revocations();
    issuer.revoke("1:before", far).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();

    relay.heartbeat(&beat()).await.unwrap();
    // Batch 1 is applied and confirmed on the replica (it reports its offset every second).
    relay.add_usage(PERIOD, "k1", None, bytes(100, 200)).unwrap();
    assert_eq!(relay.flush_usage().await.unwrap(), 1);
    eventually(Duration::from_secs(5), "batch 1 confirmed by the replica", || {
        let relay = relay.clone();
        async move {
            relay.flush_usage().await.unwrap();
            relay.unconfirmed_usage_batches().is_empty()
        }
    })
    .await;

    // Batch 2 is acknowledged by the primary and never reaches the replica: the replica is
    // frozen and its link cut before the write, and the primary dies before the replica runs.
    let (old, new) = (set.servers[0].port(), set.servers[1].port());
    assert_eq!(set.primary_port(), Some(old));
    set.servers[1].signal("STOP");
    set.servers[0].cli(&["CLIENT", "KILL", "TYPE", "replica"]).unwrap();
    relay.add_usage(PERIOD, "k1", None, bytes(1000, 2000)).unwrap();
    assert_eq!(relay.flush_usage().await.unwrap(), 1, "the old primary acknowledged batch 2");
    assert_eq!(relay.unconfirmed_usage_batches(), vec![2]);
    // An allocation reserved in the same unreplicated moment.
    assert!(relay.reserve_allocation("1:bob", 5).await.unwrap());
    tokio::task::block_in_place(|| set.servers[0].kill());
    set.servers[1].signal("CONT");

    // While the sentinels fail over: calls fail fast, the relay keeps its state.
    let failed_over = tokio::task::block_in_place(|| set.wait_failover(old, Duration::from_secs(30)));
    assert_eq!(set.primary_port(), Some(new));

    // A revocation made as soon as the issuer can write reaches the relay within 1 s of the new
    // primary answering (the issuer retries, as the revoke endpoint's callers do on 503).
    eventually(Duration::from_secs(5), "revocation accepted by the new primary", || {
        let issuer = issuer.clone();
        async move { issuer.revoke("1:during-failover", far).await.is_ok() }
    })
    .await;
    eventually(Duration::from_secs(5), "revocation reaches the relay", || {
        let hit = std::iter::from_fn(|| sub.try_recv())
            .any(|e| matches!(e, Revocation::Username { username, .. } if username == "1:during-failover"));
        async move { hit }
    })
    .await;
    let reached = failed_over.elapsed();
    eprintln!("revocation reached the relay {reached:?} after the promotion");
    assert!(reached < Duration::from_secs(1), "revocation reached the relay {reached:?} after the promotion");

    // The new primary lacks batch 2 (the negative control: the write was really lost)...
    let totals = issuer.usage(PERIOD, "k1").await.unwrap();
    assert_eq!(totals.bytes, bytes(100, 200), "the new primary has only the replicated batch");
    // ...until the relay's next flush sends what it could not confirm: counted once.
    assert!(relay.wait_up(Duration::from_secs(3)).await);
    relay.add_usage(PERIOD, "k1", None, bytes(1, 2)).unwrap();
    assert_eq!(relay.flush_usage().await.unwrap(), 2, "batch 2 again, then batch 3");
    for _ in 0..3 {
        relay.flush_usage().await.unwrap();
    }
    assert_eq!(issuer.usage(PERIOD, "k1").await.unwrap().bytes, bytes(1101, 2202));

    // The reserve the old primary never replicated: the relay's next beat republishes its own
    // counts (a reconnect makes them suspect), so the fleet-wide count is right again.
    assert_eq!(issuer.fleet_allocations("1:bob").await.unwrap(), 0, "lost with the old primary");
    relay.heartbeat(&beat()).await.unwrap();
    assert_eq!(issuer.fleet_allocations("1:bob").await.unwrap(), 1, "republished at the next beat");

    // Rate limits and quotas work on the new primary.
    assert!(matches!(issuer.rate_limit("198.51.100.7", 2, 300).await.unwrap(), RateVerdict::Allow));
    assert!(relay.reserve_allocation("1:alice", 5).await.unwrap());
    assert_eq!(issuer.fleet_allocations("1:alice").await.unwrap(), 1);
    assert!(relay.metrics().reconnects.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_url_with_no_reachable_sentinel_starts_degraded() {
    let port = turnkey_e2e::fixed_port();
    let f = Fleet::connect(
        FleetConfig::new(
            format!("redis+sentinel://127.0.0.1:{port}/mymaster").parse().unwrap(),
            NodeId::new("n").unwrap(),
        ),
        FleetMetrics::unregistered(),
    )
    .await
    .unwrap();
    assert!(!f.is_up());
    assert!(f.revoke("1:x", 4_000_000_000).await.unwrap_err().is_unavailable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_without_a_good_replica_refuses_writes_as_an_outage() {
    // `min-replicas-to-write 1` with no replica: Redis answers NOREPLICAS; the handle treats it
    // as "Redis cannot take this now" (the caller keeps its state and retries), not as a bug.
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let f = Fleet::connect(
        FleetConfig::new(redis.url().parse().unwrap(), NodeId::new("n").unwrap()),
        FleetMetrics::unregistered(),
    )
    .await
    .unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await);
    redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]).unwrap();
    let e = f.revoke("1:x", 4_000_000_000).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    f.add_usage(PERIOD, "k1", None, bytes(5, 5)).unwrap();
    assert!(f.flush_usage().await.unwrap_err().is_unavailable());
    redis.cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]).unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await);
    eventually(Duration::from_secs(5), "the kept batch is applied once writes are taken", || {
        let f = f.clone();
        async move { f.flush_usage().await.is_ok() && f.usage(PERIOD, "k1").await.is_ok_and(|t| t.bytes == bytes(5, 5)) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_over_tls_is_followed() {
    // rediss+sentinel://: TLS to the sentinels and the primary, the servers' CA from the CA file.
    let tls = RedisTls::private_ca();
    let Some(mut set) = tokio::task::block_in_place(|| SentinelSet::start_with(Some("tls-pw"), Some(tls))) else {
        return;
    };
    let url = set.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let mut c = FleetConfig::new(url.parse().unwrap(), NodeId::new("tls-relay").unwrap());
    c.ca_file = set.ca_file();
    let f = Fleet::connect(c, FleetMetrics::unregistered()).await.unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await, "connected over TLS through the sentinels");
    f.revoke("1:before", 4_000_000_000).await.unwrap();
    // Without the CA nothing is trusted.
    let untrusted =
        Fleet::connect(FleetConfig::new(url.parse().unwrap(), NodeId::new("n").unwrap()), FleetMetrics::unregistered())
            .await
            .unwrap();
    assert!(!untrusted.is_up());

    let old = set.primary_port().unwrap();
    let primary = set.servers.iter_mut().find(|s| s.port() == old).unwrap();
    tokio::task::block_in_place(|| primary.kill());
    tokio::task::block_in_place(|| set.wait_failover(old, Duration::from_secs(30)));
    eventually(Duration::from_secs(5), "a write on the new primary over TLS", || {
        let f = f.clone();
        async move { f.revoke("1:after", 4_000_000_000).await.is_ok() }
    })
    .await;
    let all = f.revocations().await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
}
