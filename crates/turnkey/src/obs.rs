//! Observability wiring: the usage ledger between the relay (its [`UsageSink`]) and the issuer
//! (`bandwidth_exhausted`, `/api/bandwidth-status`), its periodic persistence, and
//! `turnkey_build_info`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntGaugeVec, Opts, Registry};
use turnkey_relay::usage::{UsageDelta, UsageSink};
use turnkey_usage::{Bytes, Usage, UsageMetrics};

use crate::config::Settings;

/// The version this binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (`build.rs`; "unknown" outside a git checkout).
pub const COMMIT: &str = env!("TURNKEY_GIT_COMMIT");
/// `turnkey --version`: the same version and commit as `turnkey_build_info`.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TURNKEY_GIT_COMMIT"), ")");

/// `turnkey_build_info{version, commit}` = 1.
pub fn register_build_info(registry: &Registry) -> anyhow::Result<()> {
    let g = IntGaugeVec::new(
        Opts::new("turnkey_build_info", "Build information; the value is always 1."),
        &["version", "commit"],
    )?;
    g.with_label_values(&[VERSION, COMMIT]).set(1);
    registry.register(Box::new(g))?;
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Loads `<data_dir>/usage.json` into a ledger registered into `registry`, with the caps of the
/// key files.
pub fn start_usage(s: &Settings, registry: &Registry) -> anyhow::Result<Usage> {
    let data_dir = &s.node.data_dir;
    let store = turnkey_usage::load(data_dir, s.usage.reset_day, now_unix())?;
    let usage = Usage::new(store, UsageMetrics::new(registry)?, s.usage.enforce_on_relay);
    usage.set_caps(read_caps(data_dir));
    Ok(usage)
}

/// The monthly caps of the key files in `<data_dir>/keys`.
fn read_caps(data_dir: &Path) -> HashMap<String, u64> {
    match turnkey_issuer::KeyStore::open(data_dir).and_then(|k| k.list()) {
        Ok(keys) => keys.into_iter().filter_map(|k| Some((k.id, k.monthly_bandwidth_bytes?))).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read key caps");
            HashMap::new()
        }
    }
}

/// Every `interval`: starts a new period when due, picks up changed caps and writes
/// `usage.json` if it changed. Runs until aborted; [`final_flush`] writes the last state.
pub async fn run_flusher(usage: Usage, data_dir: PathBuf, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (u, dir) = (usage.clone(), data_dir.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let now = now_unix();
            u.roll(now);
            u.set_caps(read_caps(&dir));
            if let Err(e) = u.persist(&dir, now) {
                tracing::error!(error = %e, "cannot persist usage");
            }
        })
        .await;
    }
}

/// Writes the ledger one last time (after the relay stopped, so nothing relayed is lost).
pub fn final_flush(usage: &Usage, data_dir: &Path) {
    match usage.persist(data_dir, now_unix()) {
        Ok(_) => tracing::info!("usage persisted"),
        Err(e) => tracing::error!(error = %e, "cannot persist usage"),
    }
}

/// The relay's view of the ledger.
#[derive(Debug, Clone)]
pub struct RelayUsage(pub Usage);

impl RelayUsage {
    /// As the relay's sink.
    pub fn sink(&self) -> Arc<dyn UsageSink> {
        Arc::new(self.clone())
    }
}

impl UsageSink for RelayUsage {
    fn record(&self, batch: &[(Arc<str>, UsageDelta)]) {
        self.0.record(
            batch
                .iter()
                .map(|(u, d)| (&**u, Bytes { client_to_peer: d.client_to_peer, peer_to_client: d.peer_to_client })),
        );
    }

    fn blocked(&self, userid: &str) -> bool {
        self.0.relay_blocked(userid)
    }

    fn generation(&self) -> u64 {
        self.0.generation()
    }
}
