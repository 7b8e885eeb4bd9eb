//! [`run`]: starts the shards on sockets the caller already bound, and drains them on shutdown.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::engine::{Engine, EngineConfig, Shared};
use crate::metrics::RelayMetrics;
use crate::types::Now;
use crate::udp::{client_loop, ClientSockets, Ports, RelayAddrs, Reservations, ShardState};
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
}

/// Sockets bound for the relay: for each shard, one socket per UDP listening address.
#[derive(Debug, Default)]
pub struct BoundSockets {
    /// `udp[shard]` holds that shard's client-facing UDP sockets.
    pub udp: Vec<Vec<std::net::UdpSocket>>,
}

impl BoundSockets {
    /// Binds every address in `udp` once per shard with SO_REUSEPORT.
    pub fn bind(udp: &[SocketAddr], shards: usize) -> Result<Self, RelayError> {
        let shards = shards.max(1);
        let mut out = BoundSockets { udp: (0..shards).map(|_| Vec::new()).collect() };
        for addr in udp {
            let socks = crate::udp::bind_udp_shards(*addr, shards)
                .map_err(|source| RelayError::Bind { addr: *addr, source })?;
            for (i, s) in socks.into_iter().enumerate() {
                out.udp[i].push(s);
            }
        }
        Ok(out)
    }

    /// The local addresses of the first shard's UDP sockets (the actual ports when 0 was asked).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.first().map(|v| v.iter().filter_map(|s| s.local_addr().ok()).collect()).unwrap_or_default()
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
    let cfg = Arc::new(cfg);
    let engine_cfg = Arc::new(cfg.engine.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    metrics.shards.set(sockets.udp.len() as i64);
    let mut threads = Vec::new();
    let reservations = Reservations::default();
    for (i, udp) in sockets.udp.into_iter().enumerate() {
        let (engine_cfg, shared, metrics, cfg, stop) =
            (engine_cfg.clone(), shared.clone(), metrics.clone(), cfg.clone(), stop_rx.clone());
        let reservations = reservations.clone();
        let t = std::thread::Builder::new().name(format!("turnkey-shard-{i}")).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &rt,
                shard_main(engine_cfg, shared, metrics, Ports::new(cfg.relay.clone(), reservations), udp, stop),
            )
        })?;
        threads.push(t);
    }
    shutdown.await;
    shared.start_draining();
    tracing::info!(live = shared.allocations(), grace = ?cfg.drain_grace, "draining: no new allocations");
    let deadline = tokio::time::Instant::now() + cfg.drain_grace;
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

async fn shard_main(
    cfg: Arc<EngineConfig>,
    shared: Arc<Shared>,
    metrics: RelayMetrics,
    ports: Ports,
    udp: Vec<std::net::UdpSocket>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let now = Now::system();
    let engine = Engine::new(cfg, shared, metrics, now.mono);
    let state = Rc::new(RefCell::new(ShardState { engine, ports, clients: ClientSockets::default() }));
    state.borrow_mut().ports.set_shard(Rc::downgrade(&state));
    let mut tasks = Vec::new();
    for s in udp {
        let local = s.local_addr()?;
        let s = Rc::new(UdpSocket::from_std(s)?);
        state.borrow_mut().clients.add_udp(local, s.clone());
        tasks.push(tokio::task::spawn_local(client_loop(state.clone(), s, local)));
    }
    loop {
        let deadline = state.borrow().engine.poll_timeout();
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                let st = &mut *state.borrow_mut();
                st.engine.handle_timeout(Now::system(), &mut st.ports);
            }
            _ = stop.changed() => break,
        }
    }
    for t in tasks {
        t.abort();
    }
    let st = &mut *state.borrow_mut();
    st.engine.close_all(&mut st.ports);
    Ok(())
}
