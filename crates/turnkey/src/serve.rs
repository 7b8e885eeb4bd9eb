//! `turnkey serve` and `turnkey creds`: wiring only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prometheus::{Encoder as _, Registry, TextEncoder};
use turnkey_auth::{RevocationSet, Secret, SecretRing, UnixTime};
use turnkey_relay::engine::{EngineConfig, Shared};
use turnkey_relay::metrics::RelayMetrics;
use turnkey_relay::policy::{PeerPolicy, ServiceAddr};
use turnkey_relay::tls::{CertResolver, TlsConfigs};
use turnkey_relay::udp::RelayAddrs;
use turnkey_relay::{BoundSockets, RelayConfig};

use turnkey_issuer::{AdvertiseConfig, Endpoint, FixedRelayStatus, IssuerConfig, IssuerDeps, IssuerState, RelayStatus};

use crate::banner;
use crate::cli::{CredsArgs, IssuerArgs, ServeArgs};
use crate::config::{self, Settings};
use crate::datadir;
use crate::obs;

/// Runs the relay until SIGTERM/SIGINT, then drains.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = config::validate(&args.load()?)?;
    init_logging(settings.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(settings))
}

/// Prints a credential minted with the configured secret.
pub fn creds(args: CredsArgs) -> anyhow::Result<()> {
    let settings = config::validate(&args.common.load()?)?;
    let (ring, _) = secret_ring(&settings)?;
    let now = UnixTime(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs());
    let c = ring.mint(&args.user, now, args.ttl)?;
    let out = serde_json::json!({
        "username": c.username,
        "credential": c.password,
        "ttl": args.ttl,
        "realm": settings.realm,
    });
    println!("{out}");
    Ok(())
}

async fn run(s: Settings) -> anyhow::Result<()> {
    datadir::ensure(&s.data_dir)?;
    let (ring, generated) = secret_ring(&s)?;
    let ring_for_issuer = ring.clone();
    if generated {
        tracing::info!(path = %s.data_dir.join(datadir::SECRET_FILE).display(), "generated a new secret");
    }
    let sockets = bind_listeners(&s)?;
    let udp_addrs = sockets.udp_addrs();
    let tcp_addrs = sockets.tcp_addrs();
    let tls_addrs = sockets.tls_addrs();
    let cert = if tls_addrs.is_empty() { None } else { Some(tls_certificate(&s)?) };
    let tls = cert.clone().map(TlsConfigs::new).transpose()?;
    // SIGHUP reloads the certificate (and never terminates the process).
    spawn_sighup(cert.clone());
    if let Some(c) = &cert {
        tokio::spawn(c.clone().watch(turnkey_relay::tls::DEFAULT_RELOAD_INTERVAL));
    }

    let registry = Registry::new();
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    obs::register_build_info(&registry)?;
    let relay_metrics = RelayMetrics::new(&registry)?;
    let usage = obs::start_usage(&s, &registry)?;
    let metrics_listener = match s.metrics {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics {addr}"))?)
        }
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

    let mut service: Vec<ServiceAddr> =
        udp_addrs.iter().chain(&tcp_addrs).chain(&tls_addrs).map(|a| ServiceAddr::from(*a)).collect();
    service.extend(metrics_addr.map(ServiceAddr::from));
    service.extend(s.http.map(ServiceAddr::from));
    let relay_v4 = match (s.relay_v4, s.relay_v6) {
        (None, None) => Some(detect_ipv4()),
        (v4, _) => v4,
    };
    let policy = peer_policy(&s, service, relay_v4);
    let mut engine = EngineConfig::new(s.realm.clone(), ring, policy);
    engine.max_lifetime = s.max_lifetime;
    engine.nonce_lifetime = s.nonce_lifetime;
    engine.max_allocations_per_user = s.max_allocations_per_user;
    engine.max_allocations = s.max_allocations;
    engine.max_permissions = s.max_permissions;
    engine.max_channels = s.max_channels;
    engine.bandwidth_limit = s.bandwidth_limit;
    engine.rfc5766_channel_numbers = s.rfc5766_channel_numbers;
    engine.unauth_replies_per_sec = s.unauth_replies_per_sec;
    engine.software.clone_from(&s.software);
    engine.relay_v4 = relay_v4.is_some();
    engine.relay_v6 = s.relay_v6.is_some();
    let relay_cfg = RelayConfig {
        engine,
        relay: RelayAddrs {
            v4: relay_v4,
            v6: s.relay_v6,
            external_v4: s.external_v4,
            external_v6: s.external_v6,
            ports: s.relay_ports.clone(),
        },
        drain_grace: s.drain_grace,
        stream: s.stream.clone(),
        tls,
    };
    let revocations = RevocationSet::new();
    let shared = Arc::new(Shared::new(revocations.clone()).with_usage(obs::RelayUsage(usage.clone()).sink()));
    let usage_task = tokio::spawn(obs::run_flusher(usage.clone(), s.data_dir.clone(), s.usage_flush_interval));
    let max_allocations = s.max_allocations;

    let (stop_http_tx, stop_http_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| tokio::spawn(serve_metrics(l, registry.clone(), stop_http_rx.clone())));
    let mut issuer_cfg = s.issuer.clone();
    if !s.advertise_explicit {
        // Advertise exactly the listeners this process has.
        let endpoints = |addrs: &[SocketAddr]| -> Vec<Endpoint> {
            let mut ports: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
            ports.dedup();
            ports.into_iter().map(Endpoint::port).collect()
        };
        let eps = endpoints(&udp_addrs);
        issuer_cfg.advertise = AdvertiseConfig {
            stun: eps.clone(),
            turn_udp: eps,
            turn_tcp: endpoints(&tcp_addrs),
            turns_tls: endpoints(&tls_addrs),
        };
    }
    let relay_status: Arc<dyn RelayStatus> =
        Arc::new(LocalRelay { shared: shared.clone(), max_allocations, usage: usage.clone() });
    let issuer =
        start_issuer(&s, issuer_cfg, ring_for_issuer, revocations, relay_status, &registry, stop_http_rx.clone())
            .await?;

    let list = |addrs: &[SocketAddr]| -> String {
        if addrs.is_empty() {
            "off".to_owned()
        } else {
            addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        }
    };
    println!(
        "turnkey listening udp={} tcp={} tls={} http={} metrics={} relay={} shards={}",
        list(&udp_addrs),
        list(&tcp_addrs),
        list(&tls_addrs),
        issuer.as_ref().map_or_else(|| "off".to_owned(), |i| i.addr.to_string()),
        metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
        relay_v4.or(s.relay_v6).map_or_else(|| "none".to_owned(), |a| a.to_string()),
        sockets.shards(),
    );
    let host = banner::usable_host(&s.issuer.public_host, s.external_v4.or(s.external_v6), relay_v4.or(s.relay_v6));
    let bound = banner::Bound {
        host: &host,
        udp: &udp_addrs,
        tcp: &tcp_addrs,
        tls: &tls_addrs,
        http: issuer.as_ref().map(|i| i.addr),
        data_dir: &s.data_dir,
    };
    for line in banner::lines(&bound) {
        println!("{line}");
    }
    if let Some(i) = &issuer {
        println!("turnkey: or ask the issuer: {}", i.hint(&host));
    }

    let relayed = turnkey_relay::run(relay_cfg, sockets, relay_metrics, shared, shutdown_signal()).await;
    usage_task.abort();
    obs::final_flush(&usage, &s.data_dir);
    relayed?;
    let _ = stop_http_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(i) = issuer {
        i.stop().await;
    }
    Ok(())
}

/// The peer policy: the operator's rules, the relay's own service sockets always denied, and the
/// relay's own relayed addresses (relay and external IPs inside the relay port range) allowed, so
/// two allocations of this relay can reach each other even on a private network (security.md).
fn peer_policy(s: &Settings, service: Vec<ServiceAddr>, relay_v4: Option<IpAddr>) -> PeerPolicy {
    let own = [relay_v4, s.relay_v6, s.external_v4, s.external_v6].into_iter().flatten();
    PeerPolicy::new(s.allow_peer.clone(), s.deny_peer.clone(), service).with_own_relays(own, s.relay_ports.clone())
}

/// `turnkey issuer`: the issuer alone, for deployments with separate relay processes.
pub fn issuer(args: IssuerArgs) -> anyhow::Result<()> {
    let s = config::validate(&args.load()?)?;
    init_logging(s.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        datadir::ensure(&s.data_dir)?;
        let (ring, _) = secret_ring(&s)?;
        let registry = Registry::new();
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        obs::register_build_info(&registry)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let metrics_task = match s.metrics {
            Some(addr) => {
                let l =
                    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind metrics {addr}"))?;
                Some(tokio::spawn(serve_metrics(l, registry.clone(), stop_rx.clone())))
            }
            None => None,
        };
        let status: Arc<dyn RelayStatus> = Arc::new(FixedRelayStatus(true));
        let issuer = start_issuer(&s, s.issuer.clone(), ring, RevocationSet::new(), status, &registry, stop_rx)
            .await?
            .context("`turnkey issuer` needs an HTTP listener (--http)")?;
        println!("turnkey issuer listening http={}", issuer.addr);
        let host = banner::usable_host(&s.issuer.public_host, None, Some(detect_ipv4()));
        println!("turnkey: {}", issuer.hint(&host));
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        issuer.stop().await;
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        Ok(())
    })
}

/// The relay's readiness as the issuer sees it: up, not draining, below capacity.
struct LocalRelay {
    shared: Arc<Shared>,
    max_allocations: u32,
    usage: turnkey_usage::Usage,
}

impl RelayStatus for LocalRelay {
    fn ready(&self) -> bool {
        !self.shared.is_draining() && self.shared.allocations() < self.max_allocations
    }

    fn bandwidth_exhausted(&self, key_id: &str) -> bool {
        self.usage.exhausted(key_id)
    }

    fn bandwidth(&self, key_id: &str) -> Option<turnkey_issuer::BandwidthUsage> {
        let st = self.usage.status(key_id);
        let live = self.shared.allocations_where(|u| u.split(':').next() == Some(key_id));
        Some(turnkey_issuer::BandwidthUsage {
            used_bytes: st.used,
            reset_at: st.reset_at,
            active_allocations: u64::from(live),
        })
    }
}

/// A running issuer.
struct RunningIssuer {
    addr: SocketAddr,
    /// The default key's id and how to read its token, for the banner's `curl` line.
    key_id: String,
    token: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl RunningIssuer {
    /// The `curl` line minting ICE servers, with the issuer reached on `host`.
    fn hint(&self, host: &str) -> String {
        banner::issuer_hint(&format!("http://{}", banner::reach(host, self.addr)), &self.token, &self.key_id)
    }

    async fn stop(self) {
        self.maintenance.abort();
        match self.server.await {
            Ok(Err(e)) => tracing::error!(error = %e, "issuer failed"),
            Err(e) => tracing::error!(error = %e, "issuer task failed"),
            Ok(Ok(())) => {}
        }
    }
}

async fn start_issuer(
    s: &Settings,
    config: IssuerConfig,
    secrets: SecretRing,
    revocations: RevocationSet,
    relay: Arc<dyn RelayStatus>,
    registry: &Registry,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Option<RunningIssuer>> {
    let Some(addr) = s.http else { return Ok(None) };
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let default_key = turnkey_issuer::ensure_default_key(&s.data_dir, now)?;
    if default_key.created {
        tracing::info!(key_id = %default_key.id, "created the default TURN key");
    }
    let state = IssuerState::new(IssuerDeps {
        config,
        data_dir: s.data_dir.clone(),
        secrets,
        revocations,
        relay,
        registry: registry.clone(),
        clock: turnkey_issuer::system_clock(),
        app_key: Some(default_key.id.clone()),
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind issuer {addr}"))?;
    let addr = listener.local_addr()?;
    let maintenance = tokio::spawn(turnkey_issuer::run_maintenance(state.clone(), Duration::from_secs(5)));
    let server = tokio::spawn(turnkey_issuer::serve(listener, turnkey_issuer::router(state), async move {
        let _ = stop.wait_for(|v| *v).await;
    }));
    let token = default_key.token_path.map_or_else(|| "<token>".to_owned(), |p| format!("$(cat {})", p.display()));
    Ok(Some(RunningIssuer { addr, key_id: default_key.id, token, server, maintenance }))
}

fn bind_listeners(s: &Settings) -> anyhow::Result<BoundSockets> {
    // The default [::] listeners are skipped on hosts without IPv6; explicit addresses must bind.
    let usable = |list: &[SocketAddr], is_default: bool| -> Vec<SocketAddr> {
        list.iter()
            .copied()
            .filter(|a| {
                let ok = !(is_default && a.is_ipv6()) || UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok();
                if !ok {
                    tracing::warn!(addr = %a, "IPv6 unavailable, not listening on it");
                }
                ok
            })
            .collect()
    };
    Ok(BoundSockets::bind(
        &usable(&s.udp, s.udp_is_default),
        &usable(&s.tcp, s.tcp_is_default),
        &usable(&s.tls, s.tls_is_default),
        s.shards,
    )?)
}

/// The TLS certificate: the configured files, else a self-signed one kept in the data directory.
fn tls_certificate(s: &Settings) -> anyhow::Result<Arc<CertResolver>> {
    let (cert, key) = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let mut names = vec!["localhost".to_owned()];
            if !s.issuer.public_host.is_empty() && s.issuer.public_host != "localhost" {
                names.push(s.issuer.public_host.clone());
            }
            let (c, k, generated) = datadir::self_signed_tls(&s.data_dir, names)?;
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

fn spawn_sighup(cert: Option<Arc<CertResolver>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot install SIGHUP handler");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match &cert {
                    Some(c) => match c.reload() {
                        Ok(()) => tracing::info!(cert = %c.cert_path().display(), "SIGHUP: TLS certificate reloaded"),
                        Err(e) => {
                            tracing::warn!(error = %e, "SIGHUP: cannot reload the TLS certificate; keeping the old one")
                        }
                    },
                    None => tracing::info!("SIGHUP: nothing to reload"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = cert;
}

/// The secret ring: inline secrets, else the secret file, else the data directory's generated one.
fn secret_ring(s: &Settings) -> anyhow::Result<(SecretRing, bool)> {
    let (secrets, generated) = if !s.secrets.is_empty() {
        (s.secrets.clone(), false)
    } else if let Some(path) = &s.secret_file {
        (datadir::read_secrets(path)?, false)
    } else {
        let (one, generated) = datadir::secret(&s.data_dir)?;
        (vec![one], generated)
    };
    let ring = SecretRing::new(secrets.iter().map(|x| Secret::new(x.trim().as_bytes())).collect())?;
    Ok((ring, generated))
}

/// The address the kernel would use to reach the internet (no packet is sent), else loopback.
fn detect_ipv4() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect("203.0.113.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut buf = Vec::new();
                let enc = TextEncoder::new();
                if enc.encode(&registry.gather(), &mut buf).is_err() {
                    return (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/plain")],
                        Vec::new(),
                    );
                }
                (axum::http::StatusCode::OK, [("content-type", prometheus::TEXT_FORMAT)], buf)
            }
        }),
    );
    let res = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "metrics server failed");
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGTERM handler");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    // Give the log line a moment; the drain itself is bounded by drain_grace.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TURNKEY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
