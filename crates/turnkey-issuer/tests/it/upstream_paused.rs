//! The upstream client's timing in tokio's paused clock: against an upstream whose port accepts
//! connections (the kernel's backlog) but never answers, the runtime jumps from timer to timer,
//! so the fetch budget is checked to the millisecond without waiting for it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use turnkey_auth::UnixTime;
use turnkey_issuer::{IssuerMetrics, UpstreamClient, UpstreamConfig, UpstreamFailure, UpstreamMode};

/// A listening socket nobody accepts on, and the client pointed at it with the default timings.
fn hanging_upstream(mode: UpstreamMode) -> (std::net::TcpListener, UpstreamClient, prometheus::Registry) {
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = UpstreamConfig {
        mode,
        base_url: format!("http://{}/v1/turn", hang.local_addr().unwrap()),
        key_id: "cfcfcfcfcfcfcfcfcfcfcfcfcfcfcfcf".into(),
        circuit_failure_threshold: 2,
        ..UpstreamConfig::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = IssuerMetrics::register(&registry).unwrap();
    let clock = Arc::new(|| UnixTime(1_700_000_000));
    let client = UpstreamClient::with_token(cfg, "token".into(), metrics, clock).unwrap();
    (hang, client, registry)
}

fn counter(registry: &prometheus::Registry, result: &str) -> f64 {
    let fam = registry.gather().into_iter().find(|f| f.name() == "turnkey_issuer_upstream_requests_total").unwrap();
    fam.get_metric()
        .iter()
        .find(|m| m.get_label().iter().any(|l| l.value() == result))
        .map_or(0.0, |m| m.get_counter().get_value())
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_wait_for_one_fetch_of_exactly_the_default_budget() {
    let (_hang, client, registry) = hanging_upstream(UpstreamMode::Fallback);
    let start = Instant::now();
    let (a, b, c) = tokio::join!(client.ice_servers(600), client.ice_servers(600), client.ice_servers(600));
    let took = start.elapsed();
    for r in [a, b, c] {
        assert_eq!(r.unwrap_err(), UpstreamFailure::Timeout);
    }
    // 1200 ms try + 300 ms backoff + 1200 ms try, once for all three.
    assert!(took >= Duration::from_millis(2700) && took < Duration::from_millis(2750), "{took:?}");
    assert_eq!((counter(&registry, "timeout"), counter(&registry, "shared")), (1.0, 2.0));
}

#[tokio::test(start_paused = true)]
async fn merge_waits_one_timeout_while_healthy_then_never() {
    let (_hang, client, registry) = hanging_upstream(UpstreamMode::Merge);
    let start = Instant::now();
    assert_eq!(client.merge_servers(600).await, None);
    let first = start.elapsed();
    assert!(first >= Duration::from_millis(1200) && first < Duration::from_millis(1250), "{first:?}");
    // The fetch goes on without its waiter and records its failure at 2700 ms.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(counter(&registry, "timeout"), 1.0);
    // Unhealthy now: no wait, but a background fetch that counts (threshold 2 opens the circuit).
    let start = Instant::now();
    assert_eq!(client.merge_servers(600).await, None);
    assert_eq!(start.elapsed(), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(counter(&registry, "timeout"), 2.0);
    assert!(client.circuit_is_open());
    let start = Instant::now();
    assert_eq!(client.merge_servers(600).await, None);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(counter(&registry, "circuit_open"), 1.0);
}
