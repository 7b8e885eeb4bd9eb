//! [`serve`]: the bounded HTTP/1.1 server under the issuer's router (and the binary's `/metrics`).
//!
//! An HTTP port must never be able to take the relay down with it, so every connection is bounded
//! ([`HttpLimits`]):
//! - the request head must arrive within `header_timeout`, counted from the accept and again
//!   while a kept-alive connection waits for its next request (slowloris, idle keep-alive);
//! - a connection on which no byte moves in either direction for `idle_timeout` is closed (a
//!   body sent byte by byte, a client that stops reading);
//! - at most `max_connections` connections at once, and `max_connections_per_ip` per client IP
//!   (IPv6: per /64); a connection past a cap is closed at once, so it holds no descriptor.
//!
//! Failing accepts (EMFILE, ENFILE) back off up to one second and are logged at most once per
//! second with a count of the ones suppressed.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bounds of every HTTP connection (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time allowed for a request head (request line and headers).
    pub header_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Connections held at once by one listener.
    pub max_connections: u32,
    /// Connections held at once by one client IP (IPv6: one /64) on one listener.
    pub max_connections_per_ip: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

/// How long in-flight requests may finish after `shutdown` completes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest pause after a failed accept.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets in-flight
/// requests finish (at most 5 s). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve<F>(listener: TcpListener, router: Router, limits: HttpLimits, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let caps = ConnCaps::new(limits.max_connections, limits.max_connections_per_ip);
    let local = listener.local_addr()?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff.reset();
                x
            }
            Err(e) => {
                backoff.failed(&e, local).await;
                continue;
            }
        };
        let Some(slot) = caps.acquire(peer.ip()) else {
            tracing::debug!(client = %peer, listener = %local, "HTTP connection over the cap closed");
            continue;
        };
        tokio::spawn(connection(tcp, peer, router.clone(), limits.clone(), stop_rx.clone(), slot));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while caps.total() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One connection, from accept to close.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    _slot: Slot,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(Tracked { inner: tcp, activity: activity.clone() });
    let svc = tower::ServiceExt::map_request(router, move |mut req: axum::extract::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(svc));
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_at = tokio::time::Instant::from_std(activity.last() + limits.idle_timeout);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %peer, error = %e, "HTTP connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_at) => {
                if activity.last().elapsed() >= limits.idle_timeout {
                    tracing::debug!(client = %peer, "HTTP connection idle, closed");
                    return;
                }
            }
            _ = stop.wait_for(|v| *v), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a byte last moved on a connection.
#[derive(Debug, Clone)]
struct Activity {
    base: Instant,
    millis: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self { base: Instant::now(), millis: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// A stream that records every read or write that moved bytes.
struct Tracked<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection caps of one listener: a total and a per-IP count (IPv6 per /64).
#[derive(Debug, Clone)]
struct ConnCaps {
    inner: Arc<CapsInner>,
}

#[derive(Debug)]
struct CapsInner {
    max_total: u32,
    max_per_ip: u32,
    counts: Mutex<(u32, HashMap<IpAddr, u32>)>,
}

/// A held connection slot, released on drop.
#[derive(Debug)]
struct Slot {
    caps: ConnCaps,
    ip: IpAddr,
}

impl ConnCaps {
    fn new(max_total: u32, max_per_ip: u32) -> Self {
        Self { inner: Arc::new(CapsInner { max_total, max_per_ip, counts: Mutex::new((0, HashMap::new())) }) }
    }

    fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        let ip = ip_key(ip);
        let mut g = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *g;
        let n = per_ip.get(&ip).copied().unwrap_or(0);
        if *total >= self.inner.max_total || n >= self.inner.max_per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(ip, n + 1);
        Some(Slot { caps: self.clone(), ip })
    }

    fn total(&self) -> u32 {
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.caps.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per_ip) = &mut *g;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// IPv4 (and IPv4-mapped IPv6) as is; IPv6 by its /64.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
        v4 => v4,
    }
}

/// Pauses after failed accepts (10 ms doubling to 1 s) and logs at most once per second.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    fn reset(&mut self) {
        self.delay = None;
    }

    async fn failed(&mut self, e: &std::io::Error, listener: SocketAddr) {
        let delay = self.delay.map_or(Duration::from_millis(10), |d| (d * 2).min(MAX_ACCEPT_BACKOFF));
        self.delay = Some(delay);
        if self.last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.last_log = Some(Instant::now());
            let suppressed = std::mem::take(&mut self.suppressed);
            tracing::warn!(error = %e, %listener, suppressed, retry_in = ?delay, "HTTP accept failed");
        } else {
            self.suppressed += 1;
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_total_and_per_ip_and_release_on_drop() {
        let caps = ConnCaps::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let a1 = caps.acquire(a).unwrap();
        let _a2 = caps.acquire(a).unwrap();
        assert!(caps.acquire(a).is_none(), "per-IP cap");
        let _b1 = caps.acquire(b).unwrap();
        assert!(caps.acquire(b_same64).is_none(), "total cap");
        drop(a1);
        let _b2 = caps.acquire(b_same64).unwrap();
        assert!(caps.acquire(b).is_none(), "IPv6 counted per /64");
        assert_eq!(caps.total(), 3);
        // The mapped form of an IPv4 address is the same client.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), a);
    }

    #[test]
    fn activity_moves_forward() {
        let a = Activity::new();
        let t0 = a.last();
        std::thread::sleep(Duration::from_millis(5));
        a.touch();
        assert!(a.last() > t0);
    }
}
