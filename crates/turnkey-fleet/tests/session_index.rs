//! The fleet's session index on a real `redis-server`: a relay's writes carry only what changed,
//! readers see exactly the relay's sessions, a lost hash is rewritten in full, and the index
//! expires with the relay's registry record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use turnkey_e2e::redis::{RedisOptions, RedisServer};
use turnkey_fleet::{
    AdvertisedUrl, Fleet, FleetConfig, FleetMetrics, IndexedSession, LiveCounts, NodeId, RelayBeat, SessionIndexWriter,
    Transport,
};

const BEAT: Duration = Duration::from_millis(200);

async fn join(server: &RedisServer, node: &str) -> Fleet {
    let mut c = FleetConfig::new(server.url().parse().unwrap(), NodeId::new(node).unwrap());
    c.beat_interval = BEAT;
    c.op_timeout = Duration::from_secs(2);
    c.health_interval = Duration::from_millis(100);
    let f = Fleet::connect(c, FleetMetrics::unregistered()).await.unwrap();
    assert!(f.wait_up(Duration::from_secs(5)).await, "{node} did not reach redis");
    f
}

fn beat() -> RelayBeat {
    RelayBeat {
        region: None,
        urls: vec![AdvertisedUrl { transport: Transport::Udp, url: "turn:127.0.0.1:3478?transport=udp".into() }],
        allocations: 0,
        allocation_capacity: 100,
        relayed_bps: 0,
        bandwidth_capacity_bps: None,
        draining: false,
    }
}

fn session(id: u64) -> IndexedSession {
    IndexedSession {
        id,
        transport: Transport::Udp,
        client: format!("198.51.100.7:{}", 40_000 + id).parse().unwrap(),
        server: "203.0.113.5:3478".parse().unwrap(),
        relayed: format!("203.0.113.5:{}", 50_000 + id).parse().unwrap(),
        created: 1_767_225_600,
        username: format!("1767312000:0123456789abcdef0123456789abcdef:user {id}"),
        live: LiveCounts { expires: 1_767_226_200, permissions: 1, ..LiveCounts::default() },
    }
}

async fn listed(issuer: &Fleet, node: &str) -> Option<Vec<IndexedSession>> {
    issuer.session_indexes().await.unwrap().into_iter().find(|(n, _)| n.as_str() == node).map(|(_, s)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_writes_only_what_changed_and_readers_see_its_sessions() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let relay = join(&redis, "r1").await;
    let issuer = join(&redis, "issuer").await;
    relay.heartbeat(&beat()).await.unwrap();
    let mut w = SessionIndexWriter::new(7);
    let mut now: Vec<IndexedSession> = (1..=1000).map(session).collect();

    let first = relay.write_session_index(&mut w, &now).await.unwrap();
    assert!(first.full && first.set == 2000 && first.deleted == 0, "{first:?}");
    assert_eq!(listed(&issuer, "r1").await.unwrap(), now);
    let ttl: i64 = redis.cli(&["PTTL", "turnkey:session-index:r1"]).unwrap().trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 3 * BEAT.as_millis() as i64, "expires with the record: {ttl}");

    // Nothing moved: an empty write (the expiry renewed).
    let idle = relay.write_session_index(&mut w, &now).await.unwrap();
    assert_eq!((idle.full, idle.set, idle.deleted, idle.bytes), (false, 0, 0, 0));

    // Ten relayed, one ended, one started.
    for s in now.iter_mut().take(10) {
        s.live.bytes_client_to_peer += 1200;
        s.live.packets_client_to_peer += 1;
    }
    now.retain(|s| s.id != 500);
    now.push(session(5000));
    let delta = relay.write_session_index(&mut w, &now).await.unwrap();
    assert_eq!((delta.full, delta.set, delta.deleted), (false, 12, 2), "{delta:?}");
    assert!(delta.bytes * 20 < first.bytes, "a delta is small: {delta:?} against {first:?}");
    let mut want = now.clone();
    want.sort_by_key(|s| s.id);
    assert_eq!(listed(&issuer, "r1").await.unwrap(), want);

    // The hash lost (e.g. expired while the relay stalled): the next write notices and rewrites it.
    redis.cli(&["DEL", "turnkey:session-index:r1"]).unwrap();
    assert!(listed(&issuer, "r1").await.is_none(), "no index, no sessions");
    let again = relay.write_session_index(&mut w, &now).await.unwrap();
    assert!(again.full && again.set == 2 * now.len(), "{again:?}");
    assert_eq!(listed(&issuer, "r1").await.unwrap(), want);

    // Another writer of the same node (a restarted relay) never builds on this hash.
    let mut other = SessionIndexWriter::new(8);
    let restarted = relay.write_session_index(&mut other, &now[..1]).await.unwrap();
    assert!(restarted.full);
    assert_eq!(listed(&issuer, "r1").await.unwrap().len(), 1);
    let after = relay.write_session_index(&mut w, &now).await.unwrap();
    assert!(after.full, "the first writer's delta was refused: {after:?}");
    assert_eq!(listed(&issuer, "r1").await.unwrap(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_writing_leaves_the_listing_with_its_record() {
    let Some(redis) = RedisServer::start(RedisOptions::default()) else { return };
    let relay = join(&redis, "r2").await;
    let issuer = join(&redis, "issuer").await;
    relay.heartbeat(&beat()).await.unwrap();
    let mut w = SessionIndexWriter::new(1);
    relay.write_session_index(&mut w, &[session(1), session(2)]).await.unwrap();
    assert_eq!(listed(&issuer, "r2").await.unwrap().len(), 2);
    // No more beats or writes: both the record and the index expire (3 beats).
    let start = Instant::now();
    while listed(&issuer, "r2").await.is_some() {
        assert!(start.elapsed() < Duration::from_secs(5), "r2's sessions still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exists = redis.cli(&["EXISTS", "turnkey:session-index:r2"]).unwrap();
    assert_eq!(exists.trim(), "0", "the hash itself expired");
}
