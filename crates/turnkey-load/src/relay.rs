//! The `relay` and `ramp` scenarios: set up N flows (an allocation and its peer: a second
//! allocation that reflects, the tool's own echo socket, or `--peer-addr`), run sending phases
//! through them, and release every allocation at the end. Each flow lives on one of the run's
//! data-path loops ([`Loops`], `--threads`) from its allocation to its release.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::{Mode, Scenario};
use crate::client::{Auth, TurnClient};
use crate::flow::{self, FlowCounters, Keepalive, PacketTemplate, SendPlan, Wire, CHANNEL};
use crate::loops::Loops;
use crate::pacer::{self, FlowSend, Waiting};
use crate::report::{new_histogram, Ramp, RampStep, Report, Traffic};
use crate::servercost::{self, ServerCost};
use crate::transport::{Rx, Tx};
use crate::{Ctx, LoadError};

/// Where each flow's packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A second allocation of the tool, reflecting through the relay.
    Pair,
    /// A second allocation of the tool that only receives (`--one-way`): each packet crosses
    /// the relay once and its one-way delay is measured.
    OneWay,
    /// The tool's own UDP echo socket on loopback.
    OwnEcho,
    /// An external UDP echo peer.
    External(SocketAddr),
}

impl PeerKind {
    /// Messages the relay relayed for `sent` packets of which `delivered` came back (or, one
    /// way, arrived): each crossing of the relay is a client → peer and a peer → client
    /// message, and a pair's round trip crosses it twice, an echo peer's once.
    pub fn relayed_messages(self, sent: u64, delivered: u64) -> u64 {
        match self {
            PeerKind::Pair => (sent + delivered) * 2,
            PeerKind::OneWay | PeerKind::OwnEcho | PeerKind::External(_) => sent + delivered,
        }
    }
}

/// A one-way flow's far allocation, kept between phases: its receiver reads the flow's packets
/// and sends its keep-alives.
type Far = (Tx, Rx, Keepalive);

/// Runs the `relay` or `ramp` scenario into `report`.
pub async fn run(ctx: &Ctx, peer: PeerKind, report: &mut Report) -> Result<(), LoadError> {
    let args = &ctx.args;
    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let loops =
        Loops::start(threads).map_err(|source| LoadError::Io { context: "start load threads".into(), source })?;
    let mut flows = setup_flows(ctx, &loops, peer, stop_rx, report).await?;
    report.flows_established = flows.len() as u32;
    let bound = args.bound()?;
    if !flows.is_empty() {
        if args.scenario == Scenario::Ramp {
            ramp(ctx, &loops, peer, &mut flows, bound.duration, report).await;
        } else {
            let pace = args.pace();
            let plan =
                SendPlan { rate: pace.trains_per_sec, train: pace.train, duration: bound.duration, count: bound.count };
            report.traffic = run_phase(ctx, &loops, &mut flows, 1, plan, report).await?;
        }
    }
    let _ = stop_tx.send(true);
    release(ctx, &loops, flows).await;
    Ok(())
}

/// One established flow.
struct Flow {
    id: u32,
    conn: Option<(Tx, Rx)>,
    auth: Auth,
    peer: SocketAddr,
    tpl: PacketTemplate,
    counters: Arc<FlowCounters>,
    far: Option<tokio::task::JoinHandle<Far>>,
    /// One way: the far allocation, whose receiver measures the flow.
    far_conn: Option<Far>,
}

async fn setup_flows(
    ctx: &Ctx,
    loops: &Loops,
    peer: PeerKind,
    stop: watch::Receiver<bool>,
    report: &mut Report,
) -> Result<Vec<Flow>, LoadError> {
    let sem = Arc::new(Semaphore::new(ctx.args.concurrency as usize));
    let mut set = JoinSet::new();
    for id in 0..ctx.args.flows {
        let (ctx, sem, stop) = (ctx.clone(), sem.clone(), stop.clone());
        // On the flow's loop: its sockets (and reflector, echo peer) belong to that thread.
        let setup = async move {
            let _permit = sem.acquire_owned().await;
            setup_flow(&ctx, id, peer, stop).await
        };
        set.spawn_on(setup, loops.of(id));
    }
    let mut flows = Vec::new();
    let mut alloc_times = new_histogram()?;
    while let Some(r) = set.join_next().await {
        let (result, times) = match r {
            Ok(r) => r,
            Err(e) => (Err(LoadError::Protocol(format!("setup task: {e}"))), Vec::new()),
        };
        for t in &times {
            alloc_times.saturating_record(*t);
        }
        match result {
            Ok(f) => {
                ctx.progress.add_flow(f.counters.clone());
                flows.push(f);
            }
            Err(e) => report.count_failure(&e),
        }
    }
    flows.sort_by_key(|f| f.id);
    let ok = ctx.progress.alloc_ok.load(Ordering::Relaxed);
    let failed = ctx.progress.alloc_failed.load(Ordering::Relaxed);
    report.allocations.succeeded = ok;
    report.allocations.failed = failed;
    report.allocations.attempted = ok + failed;
    report.allocations.set_times(&alloc_times);
    Ok(flows)
}

/// Sets up flow `id`; returns it (or the error) and the allocation times in microseconds.
async fn setup_flow(
    ctx: &Ctx,
    id: u32,
    peer: PeerKind,
    stop: watch::Receiver<bool>,
) -> (Result<Flow, LoadError>, Vec<u64>) {
    let mut times = Vec::new();
    let r = setup_flow_inner(ctx, id, peer, stop, &mut times).await;
    (r, times)
}

async fn setup_flow_inner(
    ctx: &Ctx,
    id: u32,
    peer: PeerKind,
    stop: watch::Receiver<bool>,
    times: &mut Vec<u64>,
) -> Result<Flow, LoadError> {
    let channel = ctx.args.mode == Mode::Channel;
    // Issuer mode: one answer per flow (as one app asks once per call), both allocations there.
    let lease = ctx.lease(u64::from(id) * 2).await?;
    let server = lease.target.server;
    let mut near = ctx.allocate_at(&lease, times).await?;
    let near_relayed = near.relayed().unwrap_or(server);
    let (peer_addr, far) = match peer {
        PeerKind::External(a) => (a, None),
        PeerKind::OwnEcho => {
            let ip = flow::echo_ip(server);
            let sock =
                flow::bind_echo(ip).map_err(|source| LoadError::Io { context: "bind echo peer".into(), source })?;
            crate::transport::set_buffers(&sock);
            let addr =
                sock.local_addr().map_err(|source| LoadError::Io { context: "echo peer address".into(), source })?;
            tokio::spawn(flow::echo_loop(sock, stop.clone()));
            (addr, None)
        }
        PeerKind::Pair | PeerKind::OneWay => {
            let far_lease = ctx.pair_lease(&lease, u64::from(id) * 2 + 1)?;
            let mut far = ctx.allocate_at(&far_lease, times).await?;
            let far_relayed = far.relayed().unwrap_or(server);
            bind(&mut far, channel, near_relayed).await?;
            (far_relayed, Some(far))
        }
    };
    bind(&mut near, channel, peer_addr).await?;
    let far = far.map(|far| {
        let (tx, rx, auth) = far.into_parts();
        (tx, rx, Keepalive::new(auth, near_relayed, channel, ctx.args.lifetime))
    });
    let (far, far_conn) = match far {
        Some(far) if peer == PeerKind::OneWay => (None, Some(far)),
        Some((tx, rx, ka)) => (Some(tokio::spawn(flow::reflect_loop(tx, rx, ka, stop, ctx.epoch))), None),
        None => (None, None),
    };
    let (tx, rx, auth) = near.into_parts();
    let wire = if channel { Wire::Channel } else { Wire::Send(peer_addr) };
    Ok(Flow {
        id,
        tpl: PacketTemplate::new(wire, ctx.args.payload(), tx.is_stream()),
        conn: Some((tx, rx)),
        auth,
        peer: peer_addr,
        counters: Arc::default(),
        far,
        far_conn,
    })
}

async fn bind(c: &mut TurnClient, channel: bool, peer: SocketAddr) -> Result<(), LoadError> {
    if channel {
        c.channel_bind(CHANNEL, peer).await
    } else {
        c.create_permission(peer).await
    }
}

/// Runs one sending phase on every flow at once and returns its figures.
async fn run_phase(
    ctx: &Ctx,
    loops: &Loops,
    flows: &mut [Flow],
    phase: u32,
    plan: SendPlan,
    report: &mut Report,
) -> Result<Traffic, LoadError> {
    ctx.progress.reset_flows();
    let hist = new_histogram()?;
    let drain = Duration::from_millis(ctx.args.drain_ms);
    let channel = ctx.args.mode == Mode::Channel;
    let start = Instant::now();
    let epoch = ctx.epoch;
    // One pacer per loop sends for all of that loop's UDP flows; each flow has its own
    // receiver. A TCP or TLS flow has a pacer of its own: a write that waits for a full stream
    // must not hold back the other flows.
    let mut groups: Vec<Vec<FlowSend>> = (0..loops.len()).map(|_| Vec::new()).collect();
    let mut alone = Vec::new();
    let mut receivers = Vec::new();
    for f in flows.iter_mut() {
        let Some((tx, rx)) = f.conn.take() else {
            continue;
        };
        let far = f.far_conn.take();
        let (done_tx, done_rx) = watch::channel(None);
        let ka = Keepalive::new(f.auth.clone(), f.peer, channel, ctx.args.lifetime);
        let nonce = ka.fresh_nonce.clone();
        let ids = (f.id, phase);
        let send = FlowSend::new(tx, f.tpl.clone(), ka, ids, f.counters.clone(), done_tx);
        if send.tx.is_stream() {
            alone.push((f.id, vec![send]));
        } else {
            groups[f.id as usize % loops.len()].push(send);
        }
        let (counters, h) = (f.counters.clone(), hist.clone());
        let receiver = loops.of(f.id).spawn(async move {
            let Some((mut far_tx, mut far_rx, mut far_ka)) = far else {
                let mut rx = rx;
                let out = flow::recv_loop(&mut rx, ids, epoch, done_rx, drain, &counters, h, &nonce, None).await;
                return (rx, None, out);
            };
            // One way: the far allocation's receiver measures the flow (and sends the far
            // side's keep-alives); the near side only gets answers to its own keep-alives.
            let mut near_rx = rx;
            let (stop_tx, stop_rx) = watch::channel(false);
            let far_nonce = far_ka.fresh_nonce.clone();
            let data = async {
                let keep = Some((&mut far_tx, &mut far_ka));
                let out =
                    flow::recv_loop(&mut far_rx, ids, epoch, done_rx, drain, &counters, h, &far_nonce, keep).await;
                let _ = stop_tx.send(true);
                out
            };
            let control = flow::control_loop(&mut near_rx, epoch, stop_rx, &nonce);
            let (mut out, codes) = tokio::join!(data, control);
            out.error_codes.extend(codes);
            (near_rx, Some((far_tx, far_rx, far_ka)), out)
        });
        receivers.push((f.id, receiver));
    }
    let mut pacers = Vec::new();
    let groups = groups.into_iter().enumerate().map(|(k, g)| (k as u32, g)).chain(alone);
    for (on, mut group) in groups.filter(|(_, g)| !g.is_empty()) {
        // The loop's one UDP pacer sleeps its gaps on the loop's thread (all of them by default,
        // so arrivals are read at its wake-ups; only sub-tick ones with --recv-readiness); a
        // stream flow's pacer shares its loop with others and waits on the timer wheel.
        let stream = group.iter().any(|f| f.tx.is_stream());
        let waiting = match (stream, ctx.args.recv_readiness) {
            (true, _) => Waiting::Timer,
            (false, true) => Waiting::Fine(ctx.args.pace_burst),
            (false, false) => Waiting::Wakeups(ctx.args.pace_burst),
        };
        pacers.push(loops.of(on).spawn(async move {
            pacer::send_group(&mut group, plan, epoch, waiting).await;
            group
        }));
    }
    let mut senders = BTreeMap::new();
    for pacer in pacers {
        match pacer.await {
            Ok(group) => senders.extend(group.into_iter().map(|f| (f.ids.0, f))),
            Err(_) => report.count_error("task"),
        }
    }
    let (mut sent, mut delivered, mut reordered) = (0u64, 0u64, 0u64);
    let mut rtt = hist;
    let mut last_end = start;
    for (id, receiver) in receivers {
        let (Some(send), Ok((rx, far, out))) = (senders.remove(&id), receiver.await) else {
            report.count_error("task");
            continue;
        };
        sent += send.sent;
        delivered += out.delivered;
        reordered += out.reordered;
        last_end = last_end.max(send.ended.unwrap_or(start));
        let _ = rtt.add(&out.rtt);
        for code in out.error_codes {
            report.count_error(code.to_string());
        }
        if send.error.is_some() || out.error.is_some() {
            report.count_error("io");
        }
        if let Some(f) = flows.iter_mut().find(|f| f.id == id) {
            f.conn = Some((send.tx, rx));
            f.far_conn = far;
        }
    }
    Ok(Traffic::compute(sent, delivered, reordered, ctx.args.payload(), last_end - start, &rtt))
}

async fn ramp(ctx: &Ctx, loops: &Loops, peer: PeerKind, flows: &mut [Flow], step_time: Duration, report: &mut Report) {
    let args = &ctx.args;
    let http = reqwest::Client::new();
    let start = args.rate.unwrap_or(100.0);
    let step = args.ramp_step.unwrap_or(start);
    let mut ramp = Ramp { threshold_pct: args.ramp_loss, ..Ramp::default() };
    for i in 0..args.ramp_steps {
        let rate = start + step * f64::from(i);
        let plan = SendPlan { rate: Some(rate), train: 1, duration: step_time, count: None };
        let before = match &args.server_metrics {
            Some(url) => servercost::scrape(&http, url).await.ok().map(|b| (url, b, Instant::now())),
            None => None,
        };
        let Ok(traffic) = run_phase(ctx, loops, flows, i + 1, plan, report).await else {
            break;
        };
        let mut server_cost = None;
        if let Some((url, b, t0)) = before {
            if let Ok(a) = servercost::scrape(&http, url).await {
                let load = peer.relayed_messages(traffic.sent, traffic.delivered);
                server_cost = Some(ServerCost::between(url, b, a, t0.elapsed(), load));
            }
        }
        let lossy = traffic.loss_pct > args.ramp_loss;
        if !lossy {
            ramp.max_loss_free_pps = Some(traffic.offered_pps);
            report.traffic = traffic.clone();
            report.rate_per_flow_pps = Some(rate);
        }
        ramp.steps.push(RampStep { rate_per_flow_pps: rate, traffic, server_cost });
        if lossy {
            ramp.first_lossy_step = Some(i as usize);
            break;
        }
    }
    if ramp.max_loss_free_pps.is_none() {
        if let Some(first) = ramp.steps.first() {
            report.traffic = first.traffic.clone();
            report.rate_per_flow_pps = Some(first.rate_per_flow_pps);
        }
    }
    report.ramp = Some(ramp);
}

/// Stops the reflectors and releases every allocation (Refresh with LIFETIME 0).
async fn release(ctx: &Ctx, loops: &Loops, flows: Vec<Flow>) {
    let timeout = Duration::from_secs_f64(ctx.args.timeout.min(2.0));
    let mut set = JoinSet::new();
    for f in flows {
        let on = loops.of(f.id).clone();
        let auth = f.auth;
        let near = f.conn;
        let far = f.far;
        let far_conn = f.far_conn;
        set.spawn_on(
            async move {
                if let Some((tx, rx)) = near {
                    let _ = TurnClient::from_parts(tx, rx, auth, timeout).refresh(0).await;
                }
                let far = match (far, far_conn) {
                    (Some(h), _) => h.await.ok(),
                    (None, far) => far,
                };
                if let Some((tx, rx, ka)) = far {
                    let _ = TurnClient::from_parts(tx, rx, ka.into_auth(), timeout).refresh(0).await;
                }
            },
            &on,
        );
    }
    while set.join_next().await.is_some() {}
}
