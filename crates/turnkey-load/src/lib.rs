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
//! MESSAGE-INTEGRITY (its HMAC-SHA1).
//!
//! Entry points: [`LoadArgs`] (a `clap::Args`, embedded by the binary as `turnkey load ...`),
//! [`run`] (returns the [`Report`]) and [`run_cli`] (prints it and says whether it passed).

pub mod args;
pub mod client;
pub mod creds;
mod error;
pub mod flow;
pub mod framing;
pub mod packet;
pub mod progress;
pub mod proto;
pub mod report;
pub mod transport;

mod allocations;
mod relay;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use args::{LoadArgs, Mode, Profile, Scenario, TransportKind};
pub use error::LoadError;
pub use report::{Allocations, Percentiles, Ramp, RampStep, Report, Traffic, Verdict};

use client::{Auth, TurnClient};
use creds::CredentialSource;
use progress::Progress;
use relay::PeerKind;
use transport::Target;

/// Runs the load the arguments describe and returns its report (also written to `--json`).
/// Failures of single allocations are counted in [`Report::errors`]; an `Err` means the run
/// could not start (bad arguments, unresolvable server, TLS setup, issuer unreachable).
pub async fn run(args: LoadArgs) -> Result<Report, LoadError> {
    args.bound()?;
    let server = resolve(&args.server).await?;
    let sni = args.sni.clone().unwrap_or_else(|| args.server_host().to_string());
    let target = Target::new(server, args.transport, &sni, args.insecure, args.ca.as_deref())?;
    let peer = match (&args.peer_addr, args.echo_peer) {
        (Some(p), _) => PeerKind::External(resolve(p).await?),
        (None, true) => PeerKind::OwnEcho,
        (None, false) => PeerKind::Pair,
    };
    let creds = CredentialSource::from_args(&args).await?;
    let mut report = Report {
        scenario: name(args.scenario),
        transport: name(args.transport),
        mode: name(args.mode),
        server: server.to_string(),
        peer: match peer {
            PeerKind::Pair => "pair".into(),
            PeerKind::OwnEcho => "echo".into(),
            PeerKind::External(a) => a.to_string(),
        },
        flows_requested: args.flows,
        payload_bytes: args.payload(),
        rate_per_flow_pps: args.flow_rate(),
        profile: name(args.profile),
        frame_packets: (args.profile == args::Profile::Video).then(|| args.pace().train),
        ..Report::default()
    };
    let ctx = Ctx {
        timeout: Duration::from_secs_f64(args.timeout),
        args: Arc::new(args),
        target,
        creds: Arc::new(creds),
        progress: Arc::default(),
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
    report.judge(ctx.args.max_loss, ctx.args.max_p99);
    if let Some(path) = &ctx.args.json {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| LoadError::Report(e.to_string()))?;
        std::fs::write(path, json)
            .map_err(|source| LoadError::Io { context: format!("write {}", path.display()), source })?;
    }
    Ok(report)
}

/// Runs the load, prints the human summary on stdout, and returns whether the run passed (the
/// binary exits non-zero when it did not).
pub async fn run_cli(args: LoadArgs) -> Result<bool, LoadError> {
    let report = run(args).await?;
    print!("{report}");
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

/// What every task of a run shares.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) args: Arc<LoadArgs>,
    pub(crate) target: Target,
    pub(crate) creds: Arc<CredentialSource>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) epoch: std::time::Instant,
    pub(crate) timeout: Duration,
}

impl Ctx {
    /// Connects and allocates with the credentials of allocation `n`; pushes the time taken
    /// (connection set-up and the 401 round included, microseconds) to `times` on success.
    pub(crate) async fn allocate(&self, n: u64, times: &mut Vec<u64>) -> Result<TurnClient, LoadError> {
        let t0 = Instant::now();
        let r = async {
            let creds = self.creds.for_allocation(n)?;
            let auth = Auth::new(&creds, self.args.realm.clone());
            let mut c = TurnClient::connect(&self.target, auth.clone(), self.timeout).await?;
            match c.allocate(self.args.lifetime).await {
                // 437: the server already holds an allocation on this 5-tuple. Either our own
                // retransmitted Allocate was granted first (coturn answers the retransmission
                // with 437), or the kernel handed us the source port of an allocation released a
                // moment ago. RFC 8656 §7.2: retry once from a different client address (and
                // release ours in the first case).
                Err(LoadError::Stun { code: 437, .. }) => {
                    if c.retransmitted() {
                        let _ = c.refresh(0).await;
                    }
                    let mut c = TurnClient::connect(&self.target, auth, self.timeout).await?;
                    c.allocate(self.args.lifetime).await?;
                    Ok(c)
                }
                Err(e) => Err(e),
                Ok(_) => Ok(c),
            }
        }
        .await;
        match &r {
            Ok(_) => {
                times.push((t0.elapsed().as_micros() as u64).max(1));
                self.progress.alloc_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.progress.alloc_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        r
    }
}
