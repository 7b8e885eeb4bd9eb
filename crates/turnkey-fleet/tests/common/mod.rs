//! Helpers shared by the Redis tests (`redis.rs`, `sentinel.rs`).

use std::time::{Duration, Instant};

use turnkey_fleet::UsageBytes;

/// A usage delta.
pub fn bytes(c: u64, p: u64) -> UsageBytes {
    UsageBytes { client_to_peer: c, peer_to_client: p }
}

/// Polls `f` every 20 ms until it returns true or `within` passes; returns the time it took.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
