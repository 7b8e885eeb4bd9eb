//! The issuer inside the binary: its configuration (advertising this process's listeners unless
//! configured), the relay's readiness as it sees it, starting and stopping it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use prometheus::Registry;
use turnkey_auth::{RevocationSet, SecretRing};
use turnkey_fleet::Fleet;
use turnkey_issuer::{IssuerConfig, IssuerDeps, IssuerState, RelayStatus, SessionSource};
use turnkey_relay::engine::Shared;
use turnkey_relay::udp::RelayAddrs;

use crate::addrs::Listening;
use crate::advertise::Reach;
use crate::banner;
use crate::config::Settings;
use crate::process::HttpRun;

/// The issuer's configuration; unless `[issuer.advertise]` is set, it advertises exactly the
/// listeners this process has, on the hosts the banner prints (the one rule, [`Reach`]).
pub(crate) fn advertised(s: &Settings, listening: &Listening, relay: &RelayAddrs) -> IssuerConfig {
    let mut cfg = s.issuer.clone();
    if !s.advertise_explicit() {
        let reach = Reach::new(&s.issuer.public_host, relay);
        cfg.advertise = reach.issuer_endpoints(&listening.udp, &listening.tcp, &listening.tls);
    }
    cfg
}

/// The relay's readiness as the issuer sees it: up, not draining, below capacity.
pub(crate) struct LocalRelay {
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_allocations: u32,
    pub(crate) usage: turnkey_usage::Usage,
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
pub(crate) struct RunningIssuer {
    pub(crate) addr: SocketAddr,
    /// The default key's id and how to read its token, for the banner's `curl` line.
    key_id: String,
    token: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl RunningIssuer {
    /// The `curl` line minting ICE servers, with the issuer reached as `reach` says.
    pub(crate) fn hint(&self, reach: &Reach) -> String {
        banner::issuer_hint(&format!("http://{}", reach.addr(self.addr)), &self.token, &self.key_id)
    }

    pub(crate) async fn stop(self) {
        self.maintenance.abort();
        match self.server.await {
            Ok(Err(e)) => tracing::error!(error = %e, "issuer failed"),
            Err(e) => tracing::error!(error = %e, "issuer task failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// Starts the issuer when an HTTP listener is configured. In fleet mode (`fleet`) it hands out
/// the fleet's healthy relays, uses the fleet's keys, usage, rate limit and revocations
/// (`issuer_fleet.rs`), and creates no local default key.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_issuer(
    s: &Settings,
    config: IssuerConfig,
    secrets: SecretRing,
    revocations: RevocationSet,
    relay: Arc<dyn RelayStatus>,
    sessions: Option<Arc<dyn SessionSource>>,
    fleet: Option<Fleet>,
    registry: &Registry,
    http: HttpRun,
) -> anyhow::Result<Option<RunningIssuer>> {
    let Some(addr) = s.node.http.0 else { return Ok(None) };
    let (default_key, relay, fleet) = match fleet {
        Some(f) => {
            let parts = crate::issuer_fleet::start(&f, s).await;
            let default_key = crate::issuer_fleet::ensure_default_key(&f, &parts.deps.keys, &s.node.data_dir).await?;
            (default_key, parts.status.clone(), Some(parts.deps))
        }
        None => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let default_key = turnkey_issuer::ensure_default_key(&s.node.data_dir, now)?;
            if default_key.created {
                tracing::info!(key_id = %default_key.id, "created the default TURN key");
            }
            (Some(default_key), relay, None)
        }
    };
    let state = IssuerState::new(IssuerDeps {
        config,
        data_dir: s.node.data_dir.clone(),
        secrets,
        revocations,
        relay,
        registry: registry.clone(),
        clock: turnkey_issuer::system_clock(),
        // Fleet mode: the configured app key, else the fleet's oldest key.
        app_key: default_key.as_ref().filter(|_| fleet.is_none()).map(|k| k.id.clone()),
        fleet,
        sessions,
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind issuer {addr}"))?;
    let addr = listener.local_addr()?;
    let maintenance = tokio::spawn(turnkey_issuer::run_maintenance(state.clone(), Duration::from_secs(5)));
    let server = tokio::spawn(http.serve(listener, turnkey_issuer::router(state)));
    let key_id = default_key.as_ref().map_or_else(|| "<key id>".to_owned(), |k| k.id.clone());
    let token = default_key
        .and_then(|k| k.token_path)
        .map_or_else(|| "<token>".to_owned(), |p| format!("$(cat {})", p.display()));
    Ok(Some(RunningIssuer { addr, key_id, token, server, maintenance }))
}
