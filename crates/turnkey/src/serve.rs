//! `turnkey serve` and `turnkey creds`: wiring only.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prometheus::Registry;
use turnkey_auth::{RevocationSet, SecretRing, UnixTime};
use turnkey_fleet::Fleet;
use turnkey_relay::engine::{EngineConfig, Shared};
use turnkey_relay::metrics::RelayMetrics;
use turnkey_relay::own_peers::relay_peer_policy;
use turnkey_relay::policy::PeerPolicy;
use turnkey_relay::sessions::SessionTable;
use turnkey_relay::tls::{CertResolver, TlsConfigs};
use turnkey_relay::udp::RelayAddrs;
use turnkey_relay::{BoundSockets, RelayConfig};

use turnkey_issuer::{FixedRelayStatus, HttpLimits, RelayStatus, SessionSource};

use crate::addrs::{detect_ipv4, relay_addrs, Listening};
use crate::advertise::Reach;
use crate::banner;
use crate::cli::{CredsArgs, IssuerArgs, ServeArgs};
use crate::config::values::ListenList;
use crate::config::Settings;
use crate::datadir;
use crate::fdlimit;
use crate::fleet;
use crate::fleet_relay::{self, FleetRelay, FleetUsage};
use crate::fleet_sessions::FleetSessions;
use crate::issuer::{advertised, start_issuer, LocalRelay, RunningIssuer};
use crate::obs;
use crate::preflight::{self, Role};
use crate::process::{
    bind_metrics, init_logging, new_registry, runtime, serve_metrics, shutdown_signal, spawn_sighup, HttpRun,
};
use crate::secret;
use crate::sessions::{LocalSessions, SessionsOff};

/// Runs the relay until SIGTERM/SIGINT, then drains.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = args.load()?;
    init_logging(settings.node.log_format);
    let nofile = fdlimit::raise_nofile();
    let http = fdlimit::http_limits(&settings.http_limits, nofile);
    let caps = fdlimit::relay_limits(&mut settings.engine, &mut settings.stream, nofile);
    fdlimit::presize_fd_table(caps, nofile);
    runtime()?.block_on(run(settings, http))
}

/// `turnkey issuer`: the issuer alone, for deployments with separate relay processes.
pub fn issuer(args: IssuerArgs) -> anyhow::Result<()> {
    let settings = args.load()?;
    init_logging(settings.node.log_format);
    let http = fdlimit::http_limits(&settings.http_limits, fdlimit::raise_nofile());
    runtime()?.block_on(run_issuer(settings, http))
}

/// Prints a credential minted with the configured secret.
pub fn creds(args: CredsArgs) -> anyhow::Result<()> {
    let settings = args.common.load()?;
    let (ring, _, _) = secret::ring(&settings, secret::Create::Never)?;
    let now = UnixTime(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
    let c = ring.mint(&args.user, now, args.ttl)?;
    let out = serde_json::json!({
        "username": c.username,
        "credential": c.password,
        "ttl": args.ttl,
        "realm": settings.node.realm.as_str(),
    });
    println!("{out}");
    Ok(())
}

async fn run(s: Settings, http: HttpLimits) -> anyhow::Result<()> {
    let sockets = bind_listeners(&s)?;
    let (ring, secret_source) = open_data_dir(&s)?;
    let listening = Listening::of(&sockets);
    let tls = start_tls(&s, &listening)?;
    let mut obs = Observability::start(&s).await?;
    let fleet = fleet::connect(&s, &obs.registry).await?;
    if let Some(f) = &fleet {
        fleet_relay::ensure_node_id_free(f).await?;
    }
    let mut relay_cfg = relay_config(&s, ring.clone(), &listening, &obs, tls);
    relay_cfg.kernel = crate::fastpath::start(s.relay.fast_path, &listening.udp, &relay_cfg.relay, &obs.registry)?;
    let revocations = RevocationSet::new();
    watch_revocations(&s, &revocations)?;
    let relayed = Arc::new(AtomicU64::new(0));
    // A random allocation id prefix per process: session ids of two relays of a fleet do not
    // collide.
    let sessions = relay_cfg.sessions.clone();
    let mut shared = Shared::new(revocations.clone())
        .with_usage(usage_sink(&s, &obs, fleet.as_ref(), &relayed))
        .with_id_prefix(rand::random());
    if let Some(f) = &fleet {
        shared = shared.with_fleet(fleet_relay::view(f, s.engine.max_allocations_per_user));
    }
    let shared = Arc::new(shared);
    let fleet_relay = join_fleet(fleet.clone(), &s, &listening, &relay_cfg, &shared, relayed);
    let usage_task = tokio::spawn(obs::run_flusher(obs.usage.clone(), s.node.data_dir.clone(), s.usage.flush_interval));
    let (stop_http, stop_http_rx) = tokio::sync::watch::channel(false);
    let metrics_task = obs.serve_metrics(HttpRun::new(&http, &stop_http_rx));
    let status: Arc<dyn RelayStatus> = Arc::new(LocalRelay {
        shared: shared.clone(),
        max_allocations: s.engine.max_allocations,
        usage: obs.usage.clone(),
    });
    let issuer = start_issuer(
        &s,
        advertised(&s, &listening, &relay_cfg.relay),
        ring,
        revocations,
        status,
        session_source(&s, fleet.as_ref(), &sessions),
        fleet.clone(),
        &obs.registry,
        HttpRun::new(&http, &stop_http_rx),
    )
    .await?;
    print_banner(&s, &listening, &relay_cfg, issuer.as_ref(), obs.metrics_addr, sockets.shards(), &secret_source);

    let shutdown = async {
        shutdown_signal().await;
        if let Some(f) = &fleet_relay {
            f.announce_draining().await;
        }
    };
    let relayed = turnkey_relay::run(relay_cfg, sockets, obs.relay_metrics, shared, shutdown).await;
    usage_task.abort();
    obs::final_flush(&obs.usage, &s.node.data_dir);
    if let Some(f) = fleet_relay {
        f.leave().await;
    }
    relayed?;
    stop_http_services(stop_http, metrics_task, issuer).await;
    Ok(())
}

/// `/v1/sessions` of `turnkey serve`: this relay's sessions, or in fleet mode the whole fleet's
/// (this relay then also writes its session index to Redis and takes the ends queued for it);
/// with `[relay] sessions = false`, neither (501, and nothing written to Redis).
fn session_source(s: &Settings, fleet: Option<&Fleet>, table: &Arc<SessionTable>) -> Option<Arc<dyn SessionSource>> {
    let node = s.fleet.node_id.as_str().to_owned();
    if !table.is_on() {
        return Some(Arc::new(SessionsOff));
    }
    Some(match fleet {
        None => Arc::new(LocalSessions { table: table.clone(), node }),
        Some(f) => {
            tokio::spawn(crate::fleet_sessions::run_relay_index(f.clone(), table.clone()));
            Arc::new(FleetSessions(f.clone()))
        }
    })
}

/// The relay's usage sink: the local ledger, and in fleet mode the fleet's totals too.
fn usage_sink(
    s: &Settings,
    obs: &Observability,
    fleet: Option<&Fleet>,
    relayed: &Arc<AtomicU64>,
) -> Arc<dyn turnkey_relay::usage::UsageSink> {
    let local = obs::RelayUsage(obs.usage.clone()).sink();
    match fleet {
        None => local,
        Some(f) => {
            Arc::new(FleetUsage { local, fleet: f.clone(), reset_day: s.usage.reset_day, relayed: relayed.clone() })
        }
    }
}

/// In fleet mode: the heartbeat, revocations and usage flushing of this relay.
fn join_fleet(
    fleet: Option<Fleet>,
    s: &Settings,
    listening: &Listening,
    relay_cfg: &RelayConfig,
    shared: &Arc<Shared>,
    relayed: Arc<AtomicU64>,
) -> Option<FleetRelay> {
    fleet.map(|f| FleetRelay::start(f, s, listening, &relay_cfg.relay, shared.clone(), relayed))
}

async fn run_issuer(s: Settings, http: HttpLimits) -> anyhow::Result<()> {
    preflight::check(&service_addrs(&s))?;
    let (ring, _) = open_data_dir(&s)?;
    let registry = new_registry()?;
    let metrics = bind_metrics(&s).await?;
    let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
    let fleet = fleet::connect(&s, &registry).await?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics.map(|l| tokio::spawn(serve_metrics(l, registry.clone(), HttpRun::new(&http, &stop_rx))));
    let status: Arc<dyn RelayStatus> = Arc::new(FixedRelayStatus(true));
    let http_run = HttpRun::new(&http, &stop_rx);
    let sessions: Option<Arc<dyn SessionSource>> =
        fleet.as_ref().map(|f| Arc::new(FleetSessions(f.clone())) as Arc<dyn SessionSource>);
    let issuer =
        start_issuer(&s, s.issuer.clone(), ring, RevocationSet::new(), status, sessions, fleet, &registry, http_run)
            .await?
            .context("`turnkey issuer` needs an HTTP listener (--http)")?;
    let metrics_addr = metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!("turnkey issuer listening http={} metrics={metrics_addr}", issuer.addr);
    let here = RelayAddrs { v4: Some(detect_ipv4()), v6: None, external_v4: None, external_v6: None, ports: 0..=0 };
    println!("turnkey: {}", issuer.hint(&Reach::new(&s.issuer.public_host, &here)));
    shutdown_signal().await;
    stop_http_services(stop, metrics_task, Some(issuer)).await;
    Ok(())
}

/// Stops `/metrics` and the issuer gracefully, and waits for both.
async fn stop_http_services(
    stop: tokio::sync::watch::Sender<bool>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    issuer: Option<RunningIssuer>,
) {
    let _ = stop.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(i) = issuer {
        i.stop().await;
    }
}

/// Creates the data directory, makes sure it is writable (usage, revocations and keys are saved
/// there) and reads (or, on the first start, generates) the secret ring.
fn open_data_dir(s: &Settings) -> anyhow::Result<(SecretRing, secret::Source)> {
    datadir::ensure(&s.node.data_dir)?;
    datadir::check_writable(&s.node.data_dir)?;
    let (ring, source, generated) = secret::ring(s, secret::Create::OnFirstStart)?;
    if generated {
        tracing::info!(path = %s.node.data_dir.join(datadir::SECRET_FILE).display(), "generated a new secret");
    }
    Ok((ring, source))
}

/// Loads `<data_dir>/revocations.json` into the relay's set and keeps merging it as issuers in
/// other processes (`turnkey issuer` on the same data directory) revoke.
fn watch_revocations(s: &Settings, set: &RevocationSet) -> anyhow::Result<()> {
    let clock = turnkey_issuer::system_clock();
    let watch = turnkey_issuer::RevocationWatch::start(&s.node.data_dir, set.clone(), clock())
        .context("cannot load the revocation list")?;
    tokio::spawn(watch.run(turnkey_issuer::WATCH_INTERVAL, clock));
    Ok(())
}

/// With TLS listeners: the certificate, reloaded on SIGHUP and when its files change.
fn start_tls(s: &Settings, listening: &Listening) -> anyhow::Result<Option<TlsConfigs>> {
    let cert = if listening.tls.is_empty() { None } else { Some(tls_certificate(s)?) };
    let tls = cert.clone().map(TlsConfigs::new).transpose()?;
    // SIGHUP reloads the certificate (and never terminates the process).
    spawn_sighup(cert.clone());
    if let Some(c) = cert {
        tokio::spawn(c.watch(turnkey_relay::tls::DEFAULT_RELOAD_INTERVAL));
    }
    Ok(tls)
}

/// The registry, the relay's metrics, the usage ledger and the bound `/metrics` listener.
struct Observability {
    registry: Registry,
    relay_metrics: RelayMetrics,
    usage: turnkey_usage::Usage,
    metrics: Option<tokio::net::TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

impl Observability {
    async fn start(s: &Settings) -> anyhow::Result<Self> {
        let registry = new_registry()?;
        let relay_metrics = RelayMetrics::new(&registry)?;
        let usage = obs::start_usage(s, &registry)?;
        let metrics = bind_metrics(s).await?;
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        Ok(Self { registry, relay_metrics, usage, metrics, metrics_addr })
    }

    fn serve_metrics(&mut self, http: HttpRun) -> Option<tokio::task::JoinHandle<()>> {
        let registry = self.registry.clone();
        self.metrics.take().map(|l| tokio::spawn(serve_metrics(l, registry, http)))
    }
}

/// The relay's configuration: the engine's settings with the peer policy and relay addresses.
fn relay_config(
    s: &Settings,
    ring: SecretRing,
    listening: &Listening,
    obs: &Observability,
    tls: Option<TlsConfigs>,
) -> RelayConfig {
    let relay = relay_addrs(s);
    let policy = peer_policy(s, listening, obs, &relay);
    let mut engine = EngineConfig::from_settings(s.node.realm.as_str(), ring, policy, s.engine.clone());
    engine.relay_v4 = relay.v4.is_some();
    engine.relay_v6 = relay.v6.is_some();
    RelayConfig {
        engine,
        relay,
        drain_grace: s.relay.drain_grace,
        stream: s.stream.clone(),
        tls,
        kernel: None,
        sessions: Arc::new(if s.relay.sessions { SessionTable::default() } else { SessionTable::off() }),
        shard_rt_priority: s.relay.shard_rt_priority,
    }
}

/// The operator's peer rules with this process's own service addresses (never relayed to) and
/// the relay's own relayed addresses allowed (the rule: `turnkey_relay::own_peers`).
fn peer_policy(s: &Settings, listening: &Listening, obs: &Observability, relay: &RelayAddrs) -> PeerPolicy {
    let services = listening.all().copied().chain(obs.metrics_addr).chain(s.node.http.0);
    relay_peer_policy(s.relay.allow_peer.clone(), s.relay.deny_peer.clone(), services, relay)
}

fn print_banner(
    s: &Settings,
    listening: &Listening,
    relay_cfg: &RelayConfig,
    issuer: Option<&RunningIssuer>,
    metrics_addr: Option<SocketAddr>,
    shards: usize,
    secret_source: &secret::Source,
) {
    let list = |addrs: &[SocketAddr]| -> String {
        if addrs.is_empty() {
            "off".to_owned()
        } else {
            addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    };
    println!(
        "turnkey listening udp={} tcp={} tls={} http={} metrics={} relay={} shards={}",
        list(&listening.udp),
        list(&listening.tcp),
        list(&listening.tls),
        issuer.map_or_else(|| "off".to_owned(), |i| i.addr.to_string()),
        metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        relay_cfg.relay.v4.or(relay_cfg.relay.v6).map_or_else(|| "none".to_owned(), |a| a.to_string()),
        shards,
    );
    let reach = Reach::new(&s.issuer.public_host, &relay_cfg.relay);
    let bound = banner::Bound {
        reach: &reach,
        udp: &listening.udp,
        tcp: &listening.tcp,
        tls: &listening.tls,
        http: issuer.map(|i| i.addr),
        creds: &secret::creds_command(secret_source),
    };
    for line in banner::lines(&bound) {
        println!("{line}");
    }
    let tls_host = listening.tls.first().map(|tls| reach.host(*tls).unwrap_or_else(|| "localhost".to_owned()));
    for line in crate::turns::banner_warnings(s, tls_host.as_deref().unwrap_or_default(), &listening.tls) {
        println!("{line}");
    }
    if let Some(i) = issuer {
        println!("turnkey: or ask the issuer: {}", i.hint(&reach));
    }
}

fn bind_listeners(s: &Settings) -> anyhow::Result<BoundSockets> {
    // The default [::] listeners are skipped on hosts without IPv6; explicit addresses must bind.
    let usable = |list: &ListenList| -> Vec<SocketAddr> {
        list.addrs
            .iter()
            .copied()
            .filter(|a| {
                let ok = !(list.is_default && a.is_ipv6()) || UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok();
                if !ok {
                    tracing::warn!(addr = %a, "IPv6 unavailable, not listening on it");
                }
                ok
            })
            .collect()
    };
    let (udp, tcp, tls) = (usable(&s.relay.udp), usable(&s.relay.tcp), usable(&s.relay.tls));
    let mut wanted = service_addrs(s);
    for (role, list) in [(Role::Udp, &udp), (Role::Tcp, &tcp), (Role::Tls, &tls)] {
        wanted.extend(list.iter().map(|a| (role, *a)));
    }
    preflight::check(&wanted)?;
    Ok(BoundSockets::bind(&udp, &tcp, &tls, s.node.shards())?)
}

/// The issuer's and `/metrics`' listening addresses, for [`preflight::check`].
fn service_addrs(s: &Settings) -> Vec<(Role, SocketAddr)> {
    let http = s.node.http.0.map(|a| (Role::Http, a));
    http.into_iter().chain(s.metrics.listen.0.map(|a| (Role::Metrics, a))).collect()
}

/// The TLS certificate: the configured files, else a self-signed one kept in the data directory.
fn tls_certificate(s: &Settings) -> anyhow::Result<Arc<CertResolver>> {
    let (cert, key) = match (&s.relay.tls_cert, &s.relay.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let mut names = vec!["localhost".to_owned()];
            if !s.issuer.public_host.is_empty() && s.issuer.public_host != "localhost" {
                names.push(s.issuer.public_host.clone());
            }
            let (c, k, generated) = datadir::self_signed_tls(&s.node.data_dir, names)?;
            if generated {
                tracing::info!(cert = %c.display(), "generated a self-signed TLS certificate");
            }
            tracing::warn!(
                cert = %c.display(),
                "TLS uses a self-signed certificate (clients must trust it explicitly); set tls_cert and tls_key for a real one"
            );
            (c, k)
        }
    };
    let resolver = CertResolver::load(&cert, &key)
        .with_context(|| format!("cannot load TLS certificate {} / key {}", cert.display(), key.display()))?;
    tracing::info!(cert = %cert.display(), "TLS certificate loaded (reloaded when the files change or on SIGHUP)");
    Ok(resolver)
}
