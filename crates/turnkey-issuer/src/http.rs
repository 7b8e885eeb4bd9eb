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
//! second with a count of the ones suppressed. The caps and the backoff are the relay's stream
//! listeners' too (`turnkey_types::conn_limit`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use turnkey_types::conn_limit::{AcceptBackoff, ConnLimiter, ConnSlot};

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

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets in-flight
/// requests finish (at most 5 s). Handlers see the peer as `ConnectInfo<SocketAddr>`.
pub async fn serve<F>(listener: TcpListener, router: Router, limits: HttpLimits, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let caps = ConnLimiter::new(limits.max_connections_per_ip, limits.max_connections);
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
                backoff.accepted();
                x
            }
            Err(e) => {
                let pause = backoff.failed(Instant::now());
                if let Some(suppressed) = pause.log {
                    tracing::warn!(error = %e, listener = %local, suppressed, retry_in = ?pause.delay, "HTTP accept failed");
                }
                tokio::time::sleep(pause.delay).await;
                continue;
            }
        };
        let slot = match caps.acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                tracing::debug!(client = %peer, listener = %local, ?cap, "HTTP connection over the cap closed");
                continue;
            }
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
    _slot: ConnSlot,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_moves_forward() {
        let a = Activity::new();
        let t0 = a.last();
        std::thread::sleep(Duration::from_millis(5));
        a.touch();
        assert!(a.last() > t0);
    }
}
