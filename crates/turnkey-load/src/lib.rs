//! # turnkey-load: a load generator for any TURN server
//!
//! `turnkey load` drives a TURN server (turnkey, coturn, Cloudflare, ...) over UDP, TCP or TLS
//! and measures it: offered and delivered packets and bits per second, loss, round-trip time
//! percentiles (HDR histogram; every payload carries its flow, phase, sequence number and send
//! time), allocation times and failures by STUN error code. Scenarios: `relay` (N flows at a
//! fixed rate or flooding), `allocations` (an allocation storm), `ramp` (raise the rate until
//! loss exceeds a threshold).
//!
//! This crate owns its own compact TURN client ([`client`], on a hand-rolled codec in [`proto`]
//! and RFC 8656 §12 stream framing in [`framing`]), the packets ([`packet`]), the load loops ([`flow`]), the scenarios, the
//! credential sources ([`creds`]: `--user/--password`, a TURN REST `--secret`, or an issuer in
//! Cloudflare's API shape) and the report ([`report`]: human summary, JSON, pass/fail verdict).
//!
//! It must not import the relay's or the issuer's internals (`turnkey-relay`,
//! `turnkey-issuer`): it talks to servers only over the wire, as any client would. It uses
//! `turnkey-auth` only to mint TURN REST credentials, derive long-term keys and compute
//! MESSAGE-INTEGRITY (its HMAC-SHA1), and `turnkey-fleet` only for `RedisTarget` (the worker
//! mode's Redis URL, in every form the fleet takes: Sentinel too).
//!
//! Entry points: [`LoadArgs`] (a `clap::Args`, embedded by the binary as `turnkey load ...`),
//! [`run`] (returns the [`Report`]) and [`run_cli`] (prints it and says whether it passed).

pub mod args;
pub mod client;
pub mod coordinate;
pub mod creds;
mod error;
pub mod flow;
pub mod framing;
pub mod hints;
pub mod histogram;
pub mod ice;
pub mod issuer;
pub mod loops;
pub mod merge;
pub mod pacer;
pub mod packet;
pub mod progress;
pub mod proto;
pub mod report;
pub mod rxstamp;
pub mod servercost;
pub mod transport;

mod allocations;
mod relay;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use args::{AddressFamily, LoadAction, LoadArgs, MergeArgs, Mode, Profile, ReportArgs, Scenario};
pub use error::LoadError;
pub use report::{Allocations, IssuerReport, Percentiles, Ramp, RampStep, Report, ServerReport, Traffic, Verdict};
pub use turnkey_types::{Transport, TurnUrl};

use client::{Auth, Credentials, TurnClient};
use creds::CredentialSource;
use issuer::IssuerClient;
use progress::Progress;
use relay::PeerKind;
use report::ServerTally;
use transport::Target;

/// The whole command for a binary (`turnkey load`, `turnkey-load`): builds the runtime with
/// `--threads` workers (default: every core), runs the load or `merge` / `report`, prints the
/// summary. Exit 0: passed; 1: a gate failed; 2: could not run (`prog` prefixes the error).
pub fn main(args: LoadArgs, prog: &str) -> std::process::ExitCode {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{prog}: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run_cli(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("{prog}: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs the load the arguments describe and returns its report (also written to `--json`).
/// Failures of single allocations are counted in [`Report::errors`]; an `Err` means the run
/// could not start (bad arguments, unresolvable server, TLS setup, issuer unreachable).
pub async fn run(args: LoadArgs) -> Result<Report, LoadError> {
    run_as(args, None, Arc::default()).await
}

/// A coordinated worker's run: joins the run's start barrier, runs the load with user names of
/// its own, publishes its report. With `--merge-report` the first worker then waits for the
/// others and returns (and writes to `--json`) the merged report.
pub async fn run_worker(args: LoadArgs) -> Result<Report, LoadError> {
    let bound = args.bound()?;
    let (Some(url), Some(run_id), Some(workers)) = (args.coordinate.clone(), args.run_id.clone(), args.workers) else {
        return Err(LoadError::Args("--coordinate needs --run-id and --workers".into()));
    };
    let barrier = Duration::from_secs_f64(args.barrier_timeout);
    let progress = Arc::new(Progress::default());
    let ca_file = args.coordinate_ca_file.clone();
    let worker =
        coordinate::Worker::join(&url, ca_file.as_deref(), &run_id, workers, barrier, progress.clone()).await?;
    let index = worker.index;
    let merge = args.merge_report && index == 0;
    let json = args.json.clone();
    let wait = bound.duration + Duration::from_secs_f64(args.timeout * 4.0 + args.drain_ms as f64 / 1e3 + 60.0);
    let report = run_as(args, Some(index), progress).await?;
    let keys = worker.publish(&report).await?;
    if !merge {
        return Ok(report);
    }
    let merged = coordinate::collect(&keys, wait).await?;
    write_json(&merged, json.as_deref())?;
    Ok(merged)
}

fn write_json(report: &Report, path: Option<&std::path::Path>) -> Result<(), LoadError> {
    let Some(path) = path else { return Ok(()) };
    let json = serde_json::to_vec_pretty(report).map_err(|e| LoadError::Report(e.to_string()))?;
    std::fs::write(path, json).map_err(|source| LoadError::Io { context: format!("write {}", path.display()), source })
}

async fn run_as(args: LoadArgs, worker: Option<u32>, progress: Arc<Progress>) -> Result<Report, LoadError> {
    args.bound()?;
    let issuer = match (&args.issuer, &args.key_id, &args.token_file) {
        (Some(url), Some(key_id), Some(token_file)) => {
            let token = std::fs::read_to_string(token_file).map_err(|source| LoadError::Io {
                context: format!("read token file {}", token_file.display()),
                source,
            })?;
            // Asked once (with --server), or per allocation or flow within --timeout.
            let timeout = if args.server.is_some() { 15.0 } else { args.timeout };
            let connections = args.concurrency as usize;
            let ttl = args.credential_ttl;
            let c = IssuerClient::new(url, key_id, token.trim(), ttl, Duration::from_secs_f64(timeout), connections)?;
            Some(Arc::new(c))
        }
        _ => None,
    };
    let (route, server) = match (&args.server, &issuer) {
        (Some(s), _) => {
            let server = resolve(s).await?;
            let sni = args.sni.clone().or_else(|| args.server_host().map(str::to_owned)).unwrap_or_default();
            (Route::Fixed(Target::new(server, args.transport, &sni, args.insecure, args.ca.as_deref())?), server)
        }
        (None, Some(issuer)) => {
            // The TLS settings every handed-out server shares; the name to verify is --sni or
            // the host of the URL each answer names.
            let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            let sni = args.sni.as_deref().unwrap_or("localhost");
            let template = Target::new(unspecified, args.transport, sni, args.insecure, args.ca.as_deref())?;
            (Route::Issuer { template, issuer: issuer.clone() }, unspecified)
        }
        (None, None) => return Err(LoadError::Args("--server or --issuer is needed".into())),
    };
    let peer = match (&args.peer_addr, args.echo_peer) {
        (Some(p), _) => PeerKind::External(resolve(p).await?),
        (None, true) => PeerKind::OwnEcho,
        (None, false) if args.one_way => PeerKind::OneWay,
        (None, false) => PeerKind::Pair,
    };
    let mut creds = match route {
        Route::Fixed(_) => CredentialSource::from_args(&args, issuer.as_deref()).await?,
        Route::Issuer { .. } => CredentialSource::None,
    };
    if let (Some(i), CredentialSource::Secret { user, .. }) = (worker, &mut creds) {
        // Worker mode: user ids no other worker mints.
        *user = format!("{user}-w{i}");
    }
    let metrics = match &args.server_metrics {
        Some(url) => {
            let client = reqwest::Client::new();
            let before = servercost::scrape(&client, url).await?;
            Some((client, url.clone(), before, Instant::now()))
        }
        None => None,
    };
    let mut report = Report {
        scenario: name(args.scenario),
        transport: args.transport.as_str().to_owned(),
        mode: name(args.mode),
        server: server.to_string(),
        peer: match peer {
            PeerKind::Pair => "pair".into(),
            PeerKind::OneWay => "one-way".into(),
            PeerKind::OwnEcho => "echo".into(),
            PeerKind::External(a) => a.to_string(),
        },
        flows_requested: args.flows,
        payload_bytes: args.payload(),
        rate_per_flow_pps: args.flow_rate(),
        profile: name(args.profile),
        frame_packets: (args.profile == args::Profile::Video).then(|| args.pace().train),
        workers: 1,
        ..Report::default()
    };
    let ctx = Ctx {
        timeout: Duration::from_secs_f64(args.timeout),
        args: Arc::new(args),
        route,
        creds: Arc::new(creds),
        servers: Arc::default(),
        progress,
        epoch: std::time::Instant::now(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let display = tokio::spawn(progress::display(ctx.progress.clone(), !ctx.args.quiet, stop_rx));
    let result = match ctx.args.scenario {
        Scenario::Relay | Scenario::Ramp => relay::run(&ctx, peer, &mut report).await,
        Scenario::Allocations => allocations::run(&ctx, &mut report).await,
    };
    let _ = stop_tx.send(true);
    let _ = display.await;
    result?;
    report.servers = ctx.servers.report();
    if let Route::Issuer { .. } = ctx.route {
        report.server = report.servers.iter().map(|s| s.server.as_str()).collect::<Vec<_>>().join(",");
    }
    report.issuer = issuer.map(|i| i.report());
    if let Some((client, url, before, t0)) = metrics {
        let window = t0.elapsed();
        // The server's counters may lag its last packets (turnkey flushes its data-path counts
        // every 500 ms): scrape again after a settling second.
        tokio::time::sleep(servercost::SETTLE).await;
        let after = servercost::scrape(&client, &url).await?;
        let t = &report.traffic;
        let load_messages = peer.relayed_messages(t.sent, t.delivered);
        report.server_cost = Some(servercost::ServerCost::between(&url, before, after, window, load_messages));
    }
    report.judge(ctx.args.max_loss, ctx.args.max_p99, ctx.args.unauthenticated);
    write_json(&report, ctx.args.json.as_deref())?;
    Ok(report)
}

/// Runs the load (a worker's with `--coordinate`), or `merge` / `report`; prints the human
/// summary on stdout, and returns whether the run passed (the binary exits non-zero when it
/// did not).
pub async fn run_cli(args: LoadArgs) -> Result<bool, LoadError> {
    let unauthenticated = args.unauthenticated;
    let report = match &args.action {
        Some(LoadAction::Merge(m)) => {
            let r = merge::merge_files(&m.files)?;
            write_json(&r, m.json.as_deref())?;
            r
        }
        Some(LoadAction::Report(a)) => {
            if !(a.wait.is_finite() && a.wait >= 0.0) {
                return Err(LoadError::Args("--wait must be a number of seconds".into()));
            }
            let keys = coordinate::RunKeys::connect(&a.coordinate, a.coordinate_ca_file.as_deref(), &a.run_id).await?;
            let r = coordinate::collect(&keys, Duration::from_secs_f64(a.wait)).await?;
            write_json(&r, a.json.as_deref())?;
            r
        }
        None if args.coordinate.is_some() => run_worker(args).await?,
        None => run(args).await?,
    };
    print!("{report}");
    for hint in hints::of(&report, unauthenticated) {
        println!("  hint: {hint}");
    }
    Ok(report.verdict.passed)
}

fn name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

async fn resolve(addr: &str) -> Result<std::net::SocketAddr, LoadError> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| LoadError::Resolve(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| LoadError::Resolve(addr.to_string()))
}

/// Where allocations go: one server, or the first URL of each fresh issuer answer.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// `--server`.
    Fixed(Target),
    /// `--issuer` without `--server`: `template` holds the transport and TLS settings.
    Issuer { template: Target, issuer: Arc<IssuerClient> },
}

/// Where one allocation (or every allocation of a flow) goes, and with which credentials.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) target: Target,
    creds: Credentials,
}

/// What every task of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) args: Arc<LoadArgs>,
    pub(crate) route: Route,
    pub(crate) creds: Arc<CredentialSource>,
    pub(crate) servers: Arc<ServerTally>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) epoch: std::time::Instant,
    pub(crate) timeout: Duration,
}

impl Ctx {
    /// Where allocation `n` goes: `--server` with the credentials of allocation `n`, or (issuer
    /// mode) the first TURN URL of `--transport` in a fresh issuer answer, with its credential.
    /// A failure counts as a failed allocation.
    pub(crate) async fn lease(&self, n: u64) -> Result<Lease, LoadError> {
        let r = async {
            match &self.route {
                Route::Fixed(target) => Ok(Lease { target: target.clone(), creds: self.creds.for_allocation(n)? }),
                Route::Issuer { template, issuer } => {
                    let body = issuer.fetch().await?;
                    let pick = ice::pick(&body, self.args.transport)?;
                    let addr = match pick.url.host.parse::<std::net::IpAddr>() {
                        Ok(ip) => std::net::SocketAddr::new(ip, pick.url.port),
                        Err(_) => resolve(&pick.url.host_port()).await?,
                    };
                    let sni = self.args.sni.as_deref().unwrap_or(&pick.url.host);
                    Ok(Lease { target: template.with_server(addr, Some(sni))?, creds: pick.credentials })
                }
            }
        }
        .await;
        if r.is_err() {
            self.progress.alloc_failed.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Where the second allocation of a flow whose first went to `first` goes: the same server
    /// and credential in issuer mode (one answer per flow, like one app), else allocation `n`'s.
    pub(crate) fn pair_lease(&self, first: &Lease, n: u64) -> Result<Lease, LoadError> {
        match &self.route {
            Route::Fixed(_) => Ok(Lease { target: first.target.clone(), creds: self.creds.for_allocation(n)? }),
            Route::Issuer { .. } => Ok(first.clone()),
        }
    }

    /// Allocation `n`: [`Ctx::lease`], then [`Ctx::allocate_at`].
    pub(crate) async fn allocate(&self, n: u64, times: &mut Vec<u64>) -> Result<TurnClient, LoadError> {
        let lease = self.lease(n).await?;
        self.allocate_at(&lease, times).await
    }

    /// Connects and allocates as `lease` says; pushes the time taken (connection set-up and the
    /// 401 round included, microseconds) to `times` on success, and counts the outcome for the
    /// lease's server.
    pub(crate) async fn allocate_at(&self, lease: &Lease, times: &mut Vec<u64>) -> Result<TurnClient, LoadError> {
        let t0 = Instant::now();
        let target = &lease.target;
        let r = async {
            let auth = Auth::new(&lease.creds, self.args.realm.clone());
            let mut c = TurnClient::connect(target, auth.clone(), self.timeout).await?;
            match c.allocate_family(self.args.lifetime, self.args.family).await {
                // 437: the server already holds an allocation on this 5-tuple. Either our own
                // retransmitted Allocate was granted first (coturn answers the retransmission
                // with 437), or the kernel handed us the source port of an allocation released a
                // moment ago. RFC 8656 §7.2: retry once from a different client address (and
                // release ours in the first case).
                Err(LoadError::Stun { code: 437, .. }) => {
                    if c.retransmitted() {
                        let _ = c.refresh(0).await;
                    }
                    let mut c = TurnClient::connect(target, auth, self.timeout).await?;
                    c.allocate_family(self.args.lifetime, self.args.family).await?;
                    Ok(c)
                }
                Err(e) => Err(e),
                Ok(_) => Ok(c),
            }
        }
        .await;
        match &r {
            Ok(_) => {
                let us = (t0.elapsed().as_micros() as u64).max(1);
                times.push(us);
                self.servers.record(target.server, Some(us));
                self.progress.alloc_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.servers.record(target.server, None);
                self.progress.alloc_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }
}
