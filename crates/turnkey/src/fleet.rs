//! Fleet mode in the binary: the Redis connection both `serve` and `issuer` share, when a Redis
//! URL is configured (else `None`, and the process is the single-node default).

use anyhow::Context as _;
use prometheus::Registry;
use turnkey_fleet::{Fleet, FleetMetrics};

use crate::config::Settings;

/// Connects to the fleet's Redis when `[fleet] redis` is set. A Redis that is down at start is
/// not an error: the handle starts down and reconnects in the background (calls fail fast
/// meanwhile, and callers keep their local state).
pub async fn connect(s: &Settings, registry: &Registry) -> anyhow::Result<Option<Fleet>> {
    let Some(cfg) = s.fleet.config() else { return Ok(None) };
    let metrics = FleetMetrics::new(registry).context("cannot register the fleet metrics")?;
    let (node, region) = (cfg.node_id.clone(), cfg.region.clone());
    let url = turnkey_fleet::redact_url(cfg.url.as_str());
    let fleet = Fleet::connect(cfg, metrics).await.context("cannot join the fleet")?;
    tracing::info!(%url, node_id = %node, region = region.as_ref().map_or("", |r| r.as_str()), up = fleet.is_up(), "fleet mode");
    Ok(Some(fleet))
}
