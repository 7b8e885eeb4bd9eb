//! The TCP and TLS data path of one shard (RFC 8656 §12 framing over a byte stream).
//!
//! Every `--tcp`/`--tls` address is bound once per shard with SO_REUSEPORT, so the kernel spreads
//! connections over the shards; a shard owns its connections and their allocations. Per
//! connection there are two local tasks:
//!
//! - the reader: reads into a fixed buffer, cuts frames with [`StreamDecoder`], hands each to the
//!   engine while the shard is borrowed once per read, and enforces the [`ConnTimers`] decisions
//!   (handshake, never-allocated and idle timeouts);
//! - the writer: drains the connection's bounded outbound queue. Everything sent to the client
//!   (responses, ChannelData, Data indications) goes through [`ClientSockets::send`], which only
//!   `try_send`s into that queue: a slow reader loses its own packets (counted as `queue_full`)
//!   and never stalls the shard.
//!
//! Closing a connection ([`finish`]) ends its allocation at once and counts the reason.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::conn::{CloseReason, ConnLimiter, ConnSlot, ConnTimers, StreamLimits};
use crate::engine::Transmit;
use crate::framing::{Frame, FramingError, StreamDecoder};
use crate::metrics::RelayMetrics;
use crate::tls::TlsConfigs;
use crate::types::{ClientAddr, FiveTuple, Now, Transport};
use crate::udp::ShardState;

/// Bytes read from a connection at once (also the decoder's `max_read`).
const READ_BUF: usize = 16 * 1024;
/// Bytes the writer gathers from the queue into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing connection may take to flush what is queued.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);
/// Listen backlog of TCP/TLS listeners.
const BACKLOG: i32 = 1024;

/// Binds `n` TCP listeners on `addr` with SO_REUSEPORT (the kernel spreads connections over
/// them). With port 0 the first listener picks the port and the rest join it.
pub fn bind_tcp_shards(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_listener(addr)?;
    let actual = first.local_addr()?;
    let mut out = vec![first];
    for _ in 1..n.max(1) {
        out.push(bind_listener(actual)?);
    }
    Ok(out)
}

fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// What every connection of a shard shares.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub limits: StreamLimits,
    pub limiter: ConnLimiter,
    pub tls: Option<TlsConfigs>,
    pub metrics: RelayMetrics,
}

impl StreamCtx {
    fn count_close(&self, transport: Transport, reason: CloseReason) {
        self.metrics.connections_closed.with_label_values(&[transport.as_str(), reason.as_str()]).inc();
    }
}

/// A live connection as the shard sees it.
#[derive(Debug)]
pub(crate) struct StreamConn {
    tx: mpsc::Sender<Vec<u8>>,
    task: AbortHandle,
    _slot: ConnSlot,
}

impl StreamConn {
    /// Queues a frame for the client; `false` if the queue is full or the connection is closing.
    pub fn task(&self) -> AbortHandle {
        self.task.clone()
    }

    #[inline]
    pub fn try_send(&self, data: &[u8]) -> bool {
        self.tx.try_send(data.to_vec()).is_ok()
    }
}

/// Accepts connections on one listener until the shard stops.
pub(crate) async fn accept_loop(
    shard: Rc<RefCell<ShardState>>,
    ctx: Rc<StreamCtx>,
    listener: TcpListener,
    transport: Transport,
) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(error = %e, transport = transport.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match ctx.limiter.acquire(from.ip()) {
            Ok(s) => s,
            Err(reason) => {
                tracing::debug!(client = %from, reason = reason.as_str(), "connection refused");
                ctx.count_close(transport, reason);
                continue;
            }
        };
        let Ok(local) = tcp.local_addr() else { continue };
        let _ = tcp.set_nodelay(true);
        let client = SocketAddr::new(from.ip().to_canonical(), from.port());
        let tuple = FiveTuple { transport, client: ClientAddr(client), server: local };
        let (tx, rx) = mpsc::channel(ctx.limits.outbound_queue.max(1));
        // The task runs only once this loop yields, so the entry exists before it does.
        let task = tokio::task::spawn_local(connection(shard.clone(), ctx.clone(), tcp, tuple, rx));
        shard.borrow_mut().clients.add_stream(tuple, StreamConn { tx, task: task.abort_handle(), _slot: slot });
        ctx.metrics.connections.with_label_values(&[transport.as_str()]).inc();
    }
}

fn mono_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One connection, from accept to close.
async fn connection(
    shard: Rc<RefCell<ShardState>>,
    ctx: Rc<StreamCtx>,
    tcp: TcpStream,
    tuple: FiveTuple,
    rx: mpsc::Receiver<Vec<u8>>,
) {
    let tls = tuple.transport == Transport::Tls;
    let mut timers = ConnTimers::new(&ctx.limits, mono_now(), tls);
    let (reason, writer) = match (tuple.transport, &ctx.tls) {
        (Transport::Tls, Some(configs)) => {
            let deadline = tokio::time::Instant::from_std(timers.deadline());
            let handshake = async {
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(Default::default(), tcp);
                let start = acceptor.await?;
                let config = configs.choose(&start.client_hello());
                start.into_stream(config).await
            };
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
    rx: mpsc::Receiver<Vec<u8>>,
) -> (CloseReason, Option<tokio::task::JoinHandle<()>>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut writer = tokio::task::spawn_local(write_loop(wr, rx, tuple.transport == Transport::Tls));
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
            _ = &mut writer => return (CloseReason::IoError, None),
        }
    };
    (reason, Some(writer))
}

/// Hands every complete frame to the engine and sends what it answers; `Ok(true)` if a STUN
/// message was among them (the allocation may have changed).
fn process(shard: &RefCell<ShardState>, tuple: FiveTuple, decoder: &mut StreamDecoder) -> Result<bool, FramingError> {
    let st = &mut *shard.borrow_mut();
    let ShardState { engine, ports, clients } = st;
    let now = Now::system();
    let mut stun = false;
    while let Some(frame) = decoder.next_frame()? {
        stun |= matches!(frame, Frame::Stun(_));
        let result = match engine.handle_client(now, tuple, frame.as_bytes(), ports) {
            Some(Transmit::Peer { relay, to, data }) => ports.send(relay, to, &data),
            Some(Transmit::Client { to, data }) => clients.send(to, &data),
            None => Ok(()),
        };
        if let Err(reason) = result {
            engine.count_drop(reason);
        }
    }
    Ok(stun)
}

/// Writes queued frames until the queue closes. Over TCP, frames already queued are gathered
/// into one write. Over TLS each frame is written on its own, so each travels in its own TLS
/// record: clients that wait for socket readiness before reading the next message (coturn's
/// uclient, for one) would otherwise leave messages decrypted but unread inside their TLS
/// library when several share one record.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Vec<u8>>, one_record_per_frame: bool) {
    let mut batch: Vec<u8> = Vec::new();
    while let Some(first) = rx.recv().await {
        let ok = if one_record_per_frame {
            let mut ok = wr.write_all(&first).await.is_ok();
            while ok {
                match rx.try_recv() {
                    Ok(f) => ok = wr.write_all(&f).await.is_ok(),
                    Err(_) => break,
                }
            }
            ok
        } else if rx.is_empty() {
            wr.write_all(&first).await.is_ok()
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(f) => batch.extend_from_slice(&f),
                    Err(_) => break,
                }
            }
            wr.write_all(&batch).await.is_ok()
        };
        if !ok || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
