//! [`run`]: starts the shards on sockets the caller already bound, and drains them on shutdown.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::conn::{ConnLimiter, StreamLimits};
use crate::engine::{Engine, EngineConfig, Shared};
use crate::fastpath::KernelPath;
use crate::metrics::RelayMetrics;
use crate::relay_ports::{Ports, RelayAddrs, Reservations};
use crate::sessions::SessionTable;
use crate::shard::ShardState;
use crate::stream::{accept_loop, StreamCtx};
use crate::tls::TlsConfigs;
use crate::types::Transport;
use crate::udp::client_loop;
use crate::udp_sock::UdpSock;
use crate::RelayError;

/// Everything `run` needs besides sockets.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The engine's decisions.
    pub engine: EngineConfig,
    /// Relay socket addresses and ports.
    pub relay: RelayAddrs,
    /// How long live allocations keep being served after shutdown is requested.
    pub drain_grace: Duration,
    /// Limits and timeouts of TCP/TLS connections.
    pub stream: StreamLimits,
    /// TLS server configuration (required when there are TLS listeners).
    pub tls: Option<TlsConfigs>,
    /// The kernel fast path, loaded and attached by the caller (None: everything in user space).
    pub kernel: Option<Arc<KernelPath>>,
    /// The node-wide live session listing: each shard publishes to it at its sweep and ends the
    /// allocations an operator asked to end.
    pub sessions: Arc<SessionTable>,
    /// How the shard threads are scheduled: ordinary, or SCHED_FIFO at a priority
    /// (`crate::priority::realtime_this_thread`).
    pub shard_rt_priority: crate::priority::ShardPriority,
}

/// Sockets bound for the relay: for each shard, one socket per UDP listening address and one
/// listener per TCP and per TLS listening address.
#[derive(Debug, Default)]
pub struct BoundSockets {
    /// `udp[shard]` holds that shard's client-facing UDP sockets.
    pub udp: Vec<Vec<std::net::UdpSocket>>,
    /// `tcp[shard]` holds that shard's plain TCP listeners.
    pub tcp: Vec<Vec<std::net::TcpListener>>,
    /// `tls[shard]` holds that shard's TLS listeners.
    pub tls: Vec<Vec<std::net::TcpListener>>,
}

fn per_shard<T>(
    addrs: &[SocketAddr],
    shards: usize,
    bind: impl Fn(SocketAddr, usize) -> std::io::Result<Vec<T>>,
) -> Result<Vec<Vec<T>>, RelayError> {
    let mut out: Vec<Vec<T>> = (0..shards).map(|_| Vec::new()).collect();
    for addr in addrs {
        let socks = bind(*addr, shards).map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => RelayError::InUse { addr: *addr, source },
            _ => RelayError::Bind { addr: *addr, source },
        })?;
        for (i, s) in socks.into_iter().enumerate() {
            out[i].push(s);
        }
    }
    Ok(out)
}

impl BoundSockets {
    /// Binds every address once per shard with SO_REUSEPORT; an address another process owns is
    /// refused ([`RelayError::InUse`]).
    pub fn bind(udp: &[SocketAddr], tcp: &[SocketAddr], tls: &[SocketAddr], shards: usize) -> Result<Self, RelayError> {
        let shards = shards.max(1);
        Ok(BoundSockets {
            udp: per_shard(udp, shards, crate::udp::bind_udp_shards)?,
            tcp: per_shard(tcp, shards, crate::stream::bind_tcp_shards)?,
            tls: per_shard(tls, shards, crate::stream::bind_tcp_shards)?,
        })
    }

    /// The local addresses of the first shard's UDP sockets (the actual ports when 0 was asked).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.first().map(|v| v.iter().filter_map(|s| s.local_addr().ok()).collect()).unwrap_or_default()
    }

    /// The local addresses of the TCP listeners.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.first().map(|v| v.iter().filter_map(|s| s.local_addr().ok()).collect()).unwrap_or_default()
    }

    /// The local addresses of the TLS listeners.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls.first().map(|v| v.iter().filter_map(|s| s.local_addr().ok()).collect()).unwrap_or_default()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.udp.len()
    }
}

/// Runs the relay until `shutdown` resolves, then drains: no new allocations, live ones served
/// until they end or `drain_grace` passes. Returns when every shard has stopped.
pub async fn run(
    cfg: RelayConfig,
    sockets: BoundSockets,
    metrics: RelayMetrics,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    if cfg.tls.is_none() && sockets.tls.iter().any(|v| !v.is_empty()) {
        return Err(RelayError::Config("TLS listeners need a certificate".to_owned()));
    }
    // Detect (and log, once) what the kernel offers for UDP GSO and GRO before the shards start.
    crate::batch::offload();
    let limiter = ConnLimiter::new(cfg.stream.max_connections_per_ip, cfg.stream.max_connections);
    let cfg = Arc::new(cfg);
    let engine_cfg = Arc::new(cfg.engine.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    metrics.shards.set(sockets.udp.len() as i64);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cfg.shard_rt_priority.realtime().is_some() && sockets.udp.len() >= cores {
        tracing::warn!(
            shards = sockets.udp.len(),
            cores,
            "shard_rt_priority with a real-time shard on every core: busy shards leave ordinary threads \
             (this relay's control runtime included) only the kernel's real-time throttling share; \
             run fewer shards than cores (docs/relay.md)"
        );
    }
    let mut threads = Vec::new();
    let reservations = Reservations::default();
    let mut tcp = sockets.tcp.into_iter();
    let mut tls = sockets.tls.into_iter();
    for (i, udp) in sockets.udp.into_iter().enumerate() {
        let (engine_cfg, shared, metrics, cfg, stop) =
            (engine_cfg.clone(), shared.clone(), metrics.clone(), cfg.clone(), stop_rx.clone());
        let reservations = reservations.clone();
        let listeners = Listeners {
            udp,
            tcp: tcp.next().unwrap_or_default(),
            tls: tls.next().unwrap_or_default(),
            kernel: (cfg.kernel.clone(), i),
        };
        let limiter = limiter.clone();
        let handshakes = tokio::runtime::Handle::current();
        let t = std::thread::Builder::new().name(format!("turnkey-shard-{i}")).spawn(move || {
            if let Some(priority) = cfg.shard_rt_priority.realtime() {
                match crate::priority::realtime_this_thread(cfg.shard_rt_priority) {
                    Ok(()) => tracing::debug!(shard = i, priority, "shard thread under SCHED_FIFO"),
                    Err(e) => tracing::warn!(
                        shard = i,
                        priority,
                        "shard_rt_priority not applied, the shard runs as an ordinary thread \
                         (needs CAP_SYS_NICE or LimitRTPRIO): {e}"
                    ),
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.spawn_local(metrics.shard_loop.clone().probe(i));
            let turns = metrics.shard_loop.clone();
            let run = local.run_until(shard_main(
                ShardEngine { cfg: engine_cfg, shared, sessions: cfg.sessions.clone() },
                metrics,
                Ports::new(cfg.relay.clone(), reservations),
                listeners,
                StreamSettings { limits: cfg.stream.clone(), limiter, tls: cfg.tls.clone(), handshakes },
                stop,
            ));
            rt.block_on(turns.turns(i, run))
        })?;
        threads.push(t);
    }
    shutdown.await;
    shared.start_draining();
    tracing::info!(live = shared.allocations(), grace = ?cfg.drain_grace, "draining: no new allocations");
    #[allow(clippy::disallowed_methods, reason = "the drain's grace period is the driver's clock")]
    let deadline = tokio::time::Instant::now() + cfg.drain_grace;
    #[allow(clippy::disallowed_methods, reason = "the drain's grace period is the driver's clock")]
    while shared.allocations() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err(std::io::Error::other("shard panicked"))))
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| RelayError::Io(std::io::Error::other(e)))?;
    for r in joined {
        r?;
    }
    tracing::info!("relay stopped");
    Ok(())
}

/// One shard's client-facing sockets.
struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
    tls: Vec<std::net::TcpListener>,
    /// The kernel fast path serving the UDP listeners, and this shard's index in it.
    kernel: (Option<Arc<KernelPath>>, usize),
}

/// What a shard's connections share.
struct StreamSettings {
    limits: StreamLimits,
    limiter: ConnLimiter,
    tls: Option<TlsConfigs>,
    /// The control runtime, where TLS handshakes run (`crate::handshake`).
    handshakes: tokio::runtime::Handle,
}

/// What a shard's engine is built from, and the node-wide session listing it publishes to.
struct ShardEngine {
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    sessions: Arc<SessionTable>,
}

async fn shard_main(
    engine: ShardEngine,
    metrics: RelayMetrics,
    ports: Ports,
    listeners: Listeners,
    streams: StreamSettings,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let now = crate::clock::now();
    let ctx = Rc::new(StreamCtx {
        limits: streams.limits,
        limiter: streams.limiter,
        tls: streams.tls,
        handshakes: Some(streams.handshakes),
        metrics: metrics.clone(),
    });
    let ShardEngine { cfg, shared, sessions } = engine;
    let slot = sessions.register();
    let engine = Engine::new(cfg, shared, now.mono);
    let state = Rc::new(RefCell::new(
        ShardState::new(engine, ports, metrics, (sessions, slot)).with_kernel(listeners.kernel.0, listeners.kernel.1),
    ));
    let mut tasks = Vec::new();
    for s in listeners.udp {
        let local = s.local_addr()?;
        let s = Rc::new(UdpSock::new(s)?);
        let idx = state.borrow_mut().clients.add_udp(local, s.clone());
        tasks.push(tokio::task::spawn_local(client_loop(state.clone(), s, idx)));
    }
    let streams = listeners.tcp.into_iter().map(|l| (l, Transport::Tcp));
    for (l, transport) in streams.chain(listeners.tls.into_iter().map(|l| (l, Transport::Tls))) {
        let l = TcpListener::from_std(l)?;
        tasks.push(tokio::task::spawn_local(accept_loop(state.clone(), ctx.clone(), l, transport)));
    }
    loop {
        let deadline = state.borrow().sweep_due();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                state.borrow_mut().sweep(crate::clock::now());
                // A step of the sweep left work for the next (a round over thousands of
                // allocations, a mass revocation, a snapshot): let the shard's I/O run first.
                tokio::task::yield_now().await;
            }
            _ = stop.changed() => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    crate::stream::close_all(&state, &ctx);
    state.borrow_mut().close_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn an_address_owned_by_another_group_is_refused_and_free_again_after() {
        let first = BoundSockets::bind(&[loopback()], &[loopback()], &[], 2).unwrap();
        let (udp, tcp) = (first.udp_addrs()[0], first.tcp_addrs()[0]);
        for (u, t) in [(vec![udp], vec![]), (vec![], vec![tcp])] {
            match BoundSockets::bind(&u, &t, &[], 2) {
                Err(RelayError::InUse { addr, .. }) => assert!(addr == udp || addr == tcp),
                other => panic!("expected InUse, got {other:?}"),
            }
        }
        let msg = BoundSockets::bind(&[udp], &[], &[], 1).unwrap_err().to_string();
        assert!(msg.contains("already in use by another process"), "{msg}");
        drop(first);
        BoundSockets::bind(&[udp], &[tcp], &[], 2).unwrap();
    }

    #[test]
    fn a_restart_passes_time_wait_connections_of_the_previous_listener() {
        use std::io::Write as _;
        let first = BoundSockets::bind(&[], &[loopback()], &[], 1).unwrap();
        let addr = first.tcp_addrs()[0];
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"x").unwrap();
        let listener = &first.tcp[0][0];
        listener.set_nonblocking(false).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        // Read what was sent (unread data would make the close a reset), then close first, so
        // the server's end of the connection sits in TIME_WAIT.
        std::io::Read::read_exact(&mut accepted, &mut [0u8; 1]).unwrap();
        drop(accepted);
        std::thread::sleep(Duration::from_millis(50));
        drop(client);
        drop(first);
        BoundSockets::bind(&[], &[addr], &[], 2).unwrap();
    }
}
