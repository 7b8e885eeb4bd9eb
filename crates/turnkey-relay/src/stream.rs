//! The TCP and TLS data path of one shard (RFC 8656 §12 framing over a byte stream).
//!
//! Every `--tcp`/`--tls` address is bound once per shard with SO_REUSEPORT, so the kernel spreads
//! connections over the shards; a shard owns its connections and their allocations. Per
//! connection there are two local tasks:
//!
//! - the reader: reads into a fixed buffer, cuts frames with [`StreamDecoder`], hands each to the
//!   engine while the shard is borrowed once per read, and enforces the [`ConnTimers`] decisions
//!   (handshake, never-allocated and idle timeouts);
//! - the writer: drains the connection's outbound queue ([`crate::outq`], bounded in bytes and
//!   frames). Everything sent to the client (responses, ChannelData, Data indications) goes
//!   through `clients::ClientSockets::send`, which only copies the frame into that queue if it
//!   fits: a slow reader loses its own packets (counted as `queue_full`) and never stalls the
//!   shard. A write that makes no progress for `write_timeout` closes the connection
//!   (`write_timeout`): a client that stopped reading holds at most one queue of memory, and only
//!   for that long.
//!
//! Closing a connection ([`finish`]) ends its allocation at once and counts the reason.

use std::cell::RefCell;
use std::future::{poll_fn, Future as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

pub use crate::bind::bind_tcp_shards;
use crate::conn::{AcceptBackoff, CloseReason, ConnLimiter, ConnTimers, StreamLimits};
use crate::framing::{Frame, FramingError, StreamDecoder};
use crate::metrics::RelayMetrics;
use crate::outq::{out_queue, OutReceiver};
use crate::shard::ShardState;
use crate::stream_conn::StreamConn;
use crate::tls::TlsConfigs;
use crate::types::{ClientAddr, FiveTuple, Transport};

/// Bytes read from a connection at once (also the decoder's `max_read`).
const READ_BUF: usize = 16 * 1024;
/// How long a closing connection may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// What every connection of a shard shares.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub limits: StreamLimits,
    pub limiter: ConnLimiter,
    pub tls: Option<TlsConfigs>,
    /// Where TLS handshakes run ([`crate::handshake`]): the relay's control runtime (`None`:
    /// the shard's own, as in tests that build a context by hand).
    pub handshakes: Option<tokio::runtime::Handle>,
    pub metrics: RelayMetrics,
}

impl StreamCtx {
    fn count_close(&self, transport: Transport, reason: CloseReason) {
        self.metrics.connections_closed.with_label_values(&[transport.as_str(), reason.as_str()]).inc();
    }
}

/// Accepts connections on one listener until the shard stops.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<ShardState>>,
    ctx: Rc<StreamCtx>,
    listener: TcpListener,
    transport: Transport,
) {
    // EMFILE and the like: back off (10 ms doubling to 1 s) and log at most once a second.
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => {
                backoff.accepted();
                x
            }
            Err(e) => {
                let pause = backoff.failed(mono_now());
                if let Some(suppressed) = pause.log {
                    tracing::warn!(error = %e, transport = transport.as_str(), suppressed, retry_in = ?pause.delay, "accept failed");
                }
                tokio::time::sleep(pause.delay).await;
                continue;
            }
        };
        let slot = match ctx.limiter.acquire(from.ip()) {
            Ok(s) => s,
            Err(refusal) => {
                let reason = CloseReason::from(refusal);
                tracing::debug!(client = %from, reason = reason.as_str(), "connection refused");
                ctx.count_close(transport, reason);
                continue;
            }
        };
        let Ok(local) = tcp.local_addr() else { continue };
        let _ = tcp.set_nodelay(true);
        let client = SocketAddr::new(from.ip().to_canonical(), from.port());
        let tuple = FiveTuple { transport, client: ClientAddr(client), server: local };
        let (tx, rx) = out_queue(ctx.limits.outbound_queue_bytes, ctx.limits.outbound_queue);
        // The task runs only once this loop yields, so the entry exists before it does.
        let task = tokio::task::spawn_local(connection(shard.clone(), ctx.clone(), tcp, tuple, rx));
        shard.borrow_mut().clients.add_stream(tuple, StreamConn::new(tx, task.abort_handle(), slot));
        ctx.metrics.connections.with_label_values(&[transport.as_str()]).inc();
    }
}

#[allow(clippy::disallowed_methods, reason = "the stream driver's clock (tokio's, so tests can pause it)")]
fn mono_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One connection, from accept to close.
async fn connection(
    shard: Rc<RefCell<ShardState>>,
    ctx: Rc<StreamCtx>,
    tcp: TcpStream,
    tuple: FiveTuple,
    rx: OutReceiver,
) {
    let tls = tuple.transport == Transport::Tls;
    let mut timers = ConnTimers::new(&ctx.limits, mono_now(), tls);
    let (reason, writer) = match (tuple.transport, &ctx.tls) {
        (Transport::Tls, Some(configs)) => {
            let deadline = tokio::time::Instant::from_std(timers.deadline());
            // Off the shard's thread: the handshake's crypto would hold every socket of the
            // shard unread meanwhile.
            let on = ctx.handshakes.clone().unwrap_or_else(tokio::runtime::Handle::current);
            let handshake = crate::handshake::accept_tls(&on, tcp, configs);
            match tokio::time::timeout_at(deadline, handshake).await {
                Err(_) => (CloseReason::HandshakeTimeout, None),
                Ok(Err(e)) => {
                    tracing::debug!(client = %tuple.client, error = %e, "TLS handshake failed");
                    (CloseReason::HandshakeFailed, None)
                }
                Ok(Ok(stream)) => {
                    timers.handshake_done(mono_now());
                    serve(&shard, &ctx, stream, tuple, &mut timers, rx).await
                }
            }
        }
        (Transport::Tls, None) => (CloseReason::HandshakeFailed, None),
        _ => serve(&shard, &ctx, tcp, tuple, &mut timers, rx).await,
    };
    finish(&shard, &ctx, tuple, reason);
    if let Some(mut w) = writer {
        // The queue's sender is gone: the writer flushes what is queued and closes (TLS: close_notify).
        if tokio::time::timeout(CLOSE_FLUSH, &mut w).await.is_err() {
            w.abort();
        }
    }
}

/// Removes a connection from its shard, ends its allocation at once and counts why it closed.
/// Does nothing if it was already removed.
fn finish(shard: &RefCell<ShardState>, ctx: &StreamCtx, tuple: FiveTuple, reason: CloseReason) {
    let st = &mut *shard.borrow_mut();
    let Some(conn) = st.clients.remove_stream(&tuple) else { return };
    drop(conn);
    st.engine.client_closed(tuple, &mut st.ports);
    st.settle();
    ctx.metrics.connections.with_label_values(&[tuple.transport.as_str()]).dec();
    ctx.count_close(tuple.transport, reason);
    tracing::debug!(client = %tuple.client, transport = tuple.transport.as_str(), reason = reason.as_str(), "connection closed");
}

/// Closes every connection of a shard that stops (their allocations end with the engine).
pub(crate) fn close_all(shard: &RefCell<ShardState>, ctx: &StreamCtx) {
    let tuples: Vec<FiveTuple> = shard.borrow().clients.stream_tuples().collect();
    for tuple in tuples {
        if let Some(task) = shard.borrow().clients.stream_task(&tuple) {
            task.abort();
        }
        finish(shard, ctx, tuple, CloseReason::Shutdown);
    }
}

/// Moves messages between a connection and the engine until the connection must close.
/// Returns why, and the writer task if it is still draining the queue.
async fn serve<S>(
    shard: &Rc<RefCell<ShardState>>,
    ctx: &StreamCtx,
    stream: S,
    tuple: FiveTuple,
    timers: &mut ConnTimers,
    rx: OutReceiver,
) -> (CloseReason, Option<tokio::task::JoinHandle<Option<CloseReason>>>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let tls = tuple.transport == Transport::Tls;
    let mut writer = tokio::task::spawn_local(write_loop(wr, rx, tls, ctx.limits.write_timeout));
    let mut decoder = StreamDecoder::with_max_read(ctx.limits.max_frame, READ_BUF);
    let mut buf = vec![0u8; READ_BUF];
    let reason = loop {
        let deadline = tokio::time::Instant::from_std(timers.deadline());
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break CloseReason::ClientClosed,
                Err(_) => break CloseReason::IoError,
                Ok(n) => {
                    let now = mono_now();
                    timers.client_data(now);
                    let processed = decoder.push(&buf[..n]).and_then(|()| process(shard, tuple, &mut decoder));
                    match processed {
                        Ok(false) => {}
                        Ok(true) => timers.set_allocated(now, shard.borrow().engine.has_allocation(&tuple)),
                        Err(e) => {
                            tracing::debug!(client = %tuple.client, error = %e, "closing a stream with bad framing");
                            break CloseReason::from_framing(e);
                        }
                    }
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let now = mono_now();
                timers.set_allocated(now, shard.borrow().engine.has_allocation(&tuple));
                if let Some(reason) = timers.check(now) {
                    break reason;
                }
            }
            r = &mut writer => return (r.ok().flatten().unwrap_or(CloseReason::IoError), None),
        }
    };
    (reason, Some(writer))
}

/// Hands every complete frame to the engine and sends what it answers; `Ok(true)` if a STUN
/// message was among them (the allocation may have changed).
fn process(
    shard: &Rc<RefCell<ShardState>>,
    tuple: FiveTuple,
    decoder: &mut StreamDecoder,
) -> Result<bool, FramingError> {
    let result = (|| {
        let st = &mut *shard.borrow_mut();
        let now = crate::clock::now();
        let mut stun = false;
        while let Some(frame) = decoder.next_frame()? {
            stun |= matches!(frame, Frame::Stun(_));
            st.client_input(now, tuple, frame.as_bytes());
        }
        Ok(stun)
    })();
    crate::udp::start_relays(shard);
    result
}

/// Writes queued frames until the queue closes; returns why the connection must close if a write
/// failed (`IoError`) or made no progress for `timeout` (`WriteTimeout`), `None` once the closed
/// queue is flushed. Over TCP every queued byte the socket takes goes in one write. Over TLS each
/// frame is written on its own, so each travels in its own TLS record: clients that wait for
/// socket readiness before reading the next message (coturn's uclient, for one) would otherwise
/// leave messages decrypted but unread inside their TLS library when several share one record.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    rx: OutReceiver,
    one_record_per_frame: bool,
    timeout: Duration,
) -> Option<CloseReason> {
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    while poll_fn(|cx| rx.poll_ready(cx)).await {
        while !rx.is_empty() {
            let wrote = stalls_within(sleep.as_mut(), timeout, |cx| {
                rx.with_chunk(one_record_per_frame, |chunk| Pin::new(&mut wr).poll_write(cx, chunk))
            })
            .await;
            match wrote {
                None => return Some(CloseReason::WriteTimeout),
                Some(Ok(0) | Err(_)) => return Some(CloseReason::IoError),
                Some(Ok(n)) => rx.consume(n),
            }
        }
        match stalls_within(sleep.as_mut(), timeout, |cx| Pin::new(&mut wr).poll_flush(cx)).await {
            None => return Some(CloseReason::WriteTimeout),
            Some(Err(_)) => return Some(CloseReason::IoError),
            Some(Ok(())) => {}
        }
    }
    let _ = stalls_within(sleep.as_mut(), timeout, |cx| Pin::new(&mut wr).poll_shutdown(cx)).await;
    None
}

/// Polls `op` to completion; `None` if it stays pending for `limit`. The timer is armed only
/// once `op` is pending, so a write the socket takes at once costs no timer.
async fn stalls_within<T>(
    mut sleep: Pin<&mut Sleep>,
    limit: Duration,
    mut op: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Option<T> {
    let mut armed = false;
    poll_fn(|cx| {
        if let Poll::Ready(v) = op(cx) {
            return Poll::Ready(Some(v));
        }
        if !armed {
            #[allow(clippy::disallowed_methods, reason = "the write timeout runs on the driver's clock")]
            sleep.as_mut().reset(tokio::time::Instant::now() + limit);
            armed = true;
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests start from an arbitrary instant and drive time by hand")]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use turnkey_auth::{Secret, SecretRing};

    use super::*;
    use crate::engine::{Engine, EngineConfig, Shared};
    use crate::policy::PeerPolicy;
    use crate::relay_ports::{Ports, RelayAddrs, Reservations};

    fn shard(metrics: &RelayMetrics) -> Rc<RefCell<ShardState>> {
        let ring = SecretRing::new(vec![Secret::new("s")]).unwrap();
        let cfg = EngineConfig::new("r", ring, PeerPolicy::new(vec![], vec![], vec![]));
        let engine = Engine::new(Arc::new(cfg), Arc::new(Shared::default()), Instant::now());
        let addrs = RelayAddrs { v4: None, v6: None, external_v4: None, external_v6: None, ports: 49152..=65535 };
        let ports = Ports::new(addrs, Reservations::default());
        let sessions = Arc::new(crate::sessions::SessionTable::default());
        let slot = sessions.register();
        Rc::new(RefCell::new(ShardState::new(engine, ports, metrics.clone(), (sessions, slot))))
    }

    /// A shard serving plain TCP on a loopback port with `limits` (call inside a `LocalSet`).
    fn serve_tcp(metrics: &RelayMetrics, limits: StreamLimits) -> (SocketAddr, Rc<RefCell<ShardState>>, Rc<StreamCtx>) {
        let ctx = Rc::new(StreamCtx {
            limits,
            limiter: ConnLimiter::new(64, 100),
            tls: None,
            handshakes: None,
            metrics: metrics.clone(),
        });
        let std_listener = bind_tcp_shards("127.0.0.1:0".parse().unwrap(), 1).unwrap().remove(0);
        let addr = std_listener.local_addr().unwrap();
        let listener = TcpListener::from_std(std_listener).unwrap();
        let state = shard(metrics);
        tokio::task::spawn_local(accept_loop(state.clone(), ctx.clone(), listener, Transport::Tcp));
        (addr, state, ctx)
    }

    /// The real driver on a paused clock: a connection that never allocates is closed when the
    /// default 60 s allocate timeout passes, and not before, without the test waiting 60 s.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn never_allocating_connection_closes_at_the_timeout_on_a_paused_clock() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let metrics = RelayMetrics::unregistered();
                let limits = StreamLimits::default();
                assert_eq!(limits.allocate_timeout, Duration::from_secs(60));
                let (addr, _state, ctx) = serve_tcp(&metrics, limits);

                let start = tokio::time::Instant::now();
                let real = Instant::now();
                let mut c = TcpStream::connect(addr).await.unwrap();
                // A Binding request is answered, but is no allocation.
                let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
                req.extend_from_slice(&[9; 12]);
                c.write_all(&req).await.unwrap();
                let mut hdr = [0u8; 20];
                c.read_exact(&mut hdr).await.unwrap();
                assert_eq!(hdr[0..2], [0x01, 0x01]);
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([hdr[2], hdr[3]]))];
                c.read_exact(&mut body).await.unwrap();
                assert_eq!(metrics.connections.with_label_values(&["tcp"]).get(), 1);

                let mut rest = [0u8; 64];
                // Bounded: on the paused clock a missing close fails at 120 s instead of hanging.
                let n = tokio::time::timeout(Duration::from_secs(120), c.read(&mut rest))
                    .await
                    .expect("the connection must be closed before 120 s")
                    .unwrap_or(0);
                assert_eq!(n, 0, "the server closes the connection");
                let waited = start.elapsed();
                assert!(waited >= Duration::from_secs(60), "closed after {waited:?}");
                assert!(waited < Duration::from_secs(61), "closed after {waited:?}");
                assert!(real.elapsed() < Duration::from_secs(10), "the clock was not paused");
                let closed = metrics.connections_closed.with_label_values(&["tcp", "never_allocated"]).get();
                assert_eq!(closed, 1);
                assert_eq!(metrics.connections.with_label_values(&["tcp"]).get(), 0);
                assert_eq!(ctx.limiter.total(), 0, "the connection slot is released");
            })
            .await;
    }

    /// A frame larger than the read buffer, split over many writes, and several frames in one
    /// write all reach the engine (each Binding is answered once, in order).
    #[tokio::test(flavor = "current_thread")]
    async fn frames_split_and_coalesced_across_reads() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let metrics = RelayMetrics::unregistered();
                let (addr, _state, _ctx) = serve_tcp(&metrics, StreamLimits::default());
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.set_nodelay(true).unwrap();
                let binding = |tx: u8| {
                    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
                    m.extend_from_slice(&[tx; 12]);
                    m
                };
                // Three requests in one write, then one split byte by byte.
                let mut burst = Vec::new();
                for tx in 1..=3 {
                    burst.extend(binding(tx));
                }
                c.write_all(&burst).await.unwrap();
                for b in binding(4) {
                    c.write_all(&[b]).await.unwrap();
                    tokio::task::yield_now().await;
                }
                for tx in 1..=4u8 {
                    let mut hdr = [0u8; 20];
                    c.read_exact(&mut hdr).await.unwrap();
                    assert_eq!(hdr[0..2], [0x01, 0x01]);
                    assert_eq!(hdr[8..20], [tx; 12]);
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes([hdr[2], hdr[3]]))];
                    c.read_exact(&mut body).await.unwrap();
                }
            })
            .await;
    }

    /// A client that does not read loses its own packets once its queue is full; sending never
    /// waits, and other connections are unaffected.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_outbound_queue_drops_instead_of_waiting() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let metrics = RelayMetrics::unregistered();
                let limits = StreamLimits { outbound_queue: 4, ..StreamLimits::default() };
                let (addr, state, _ctx) = serve_tcp(&metrics, limits);
                let _slow = TcpStream::connect(addr).await.unwrap();
                let _other = TcpStream::connect(addr).await.unwrap();
                while state.borrow().clients.stream_tuples().count() < 2 {
                    tokio::task::yield_now().await;
                }
                let tuples: Vec<FiveTuple> = state.borrow().clients.stream_tuples().collect();
                let st = state.borrow();
                let frame = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4];
                // Without yielding, the writer cannot drain: the queue takes 4, then drops.
                let results: Vec<_> = (0..10).map(|_| st.clients.send(tuples[0], &frame)).collect();
                assert!(results[..4].iter().all(Result::is_ok), "{results:?}");
                assert!(results[4..].iter().all(|r| *r == Err(crate::metrics::DropReason::QueueFull)), "{results:?}");
                assert!(st.clients.send(tuples[1], &frame).is_ok(), "the other connection has its own queue");
            })
            .await;
    }
    /// A client that never reads: its queue stays within `outbound_queue_bytes`, the stalled
    /// write closes the connection after `write_timeout` (not before), and everything it held is
    /// released. Paused clock: the test does not wait the timeout.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_client_that_never_reads_is_closed_by_the_write_timeout() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let metrics = RelayMetrics::unregistered();
                let limits = StreamLimits {
                    write_timeout: Duration::from_secs(5),
                    outbound_queue_bytes: 128 * 1024,
                    ..StreamLimits::default()
                };
                let (addr, state, ctx) = serve_tcp(&metrics, limits);
                let _stuck = TcpStream::connect(addr).await.unwrap();
                while state.borrow().clients.stream_tuples().count() < 1 {
                    tokio::task::yield_now().await;
                }
                let tuple = state.borrow().clients.stream_tuples().next().unwrap();
                let frame = vec![0x40; 60_000];
                // Fill the kernel's buffers, then the queue: sends start failing, never waiting.
                let mut full_in_a_row = 0;
                for _ in 0..10_000 {
                    let sent = state.borrow().clients.send(tuple, &frame);
                    full_in_a_row = if sent.is_err() { full_in_a_row + 1 } else { 0 };
                    if full_in_a_row == 100 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                assert_eq!(full_in_a_row, 100, "the queue never filled");
                let queued = state.borrow().clients.queued_bytes(&tuple).unwrap();
                assert!(queued <= 128 * 1024, "{queued}");
                tokio::time::sleep(Duration::from_secs(4)).await;
                assert_eq!(state.borrow().clients.stream_tuples().count(), 1, "closed before the timeout");
                tokio::time::sleep(Duration::from_secs(2)).await;
                assert_eq!(state.borrow().clients.stream_tuples().count(), 0, "not closed by the timeout");
                assert_eq!(metrics.connections_closed.with_label_values(&["tcp", "write_timeout"]).get(), 1);
                assert_eq!(ctx.limiter.total(), 0, "the connection slot is released");
            })
            .await;
    }
}
