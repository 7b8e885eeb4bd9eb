//! Background loops the binary starts: a relay's heartbeat, an issuer's copies of the relay
//! listing and of the keys. Each runs on the runtime that starts it and stops when the last
//! [`Fleet`] clone is dropped; failures while Redis is down are logged once by the health state.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{Fleet, KeysSnapshot, RelayBeat, RelaySnapshot};

impl Fleet {
    /// Publishes `beat()` every heartbeat interval (the first at once).
    pub fn spawn_heartbeat<F>(&self, beat: F)
    where
        F: Fn() -> RelayBeat + Send + 'static,
    {
        let weak = Arc::downgrade(&self.inner);
        let every = self.inner.cfg.beat_interval;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (Fleet { inner }).heartbeat(&beat()).await {
                    if !e.is_unavailable() {
                        tracing::warn!(error = %e, "fleet: heartbeat failed");
                    }
                }
            }
        });
        self.inner.spawned(task);
    }

    /// A copy of the healthy-relay listing refreshed every `every` (the heartbeat interval is
    /// right): handouts read it without touching Redis. While Redis is unreachable it keeps the
    /// last listing up to `max_stale` (marked `cached`), then becomes empty (the caller falls
    /// back). Starts empty until the first listing.
    pub fn watch_relays(&self, every: Duration, max_stale: Duration) -> watch::Receiver<Arc<RelaySnapshot>> {
        let empty = Arc::new(RelaySnapshot { server_time_ms: 0, relays: Vec::new(), cached: false });
        let (tx, rx) = watch::channel(empty.clone());
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let snap = match (Fleet { inner }).healthy_relays_or_cached(max_stale).await {
                    Ok(s) => Arc::new(s),
                    Err(_) => empty.clone(),
                };
                if tx.send(snap).is_err() {
                    return;
                }
            }
        });
        self.inner.spawned(task);
        rx
    }

    /// A copy of every TURN key, refreshed when `<p>keys:version` changes (checked every
    /// `every`; 1 s makes a key created on any issuer usable everywhere within 2 s). While Redis
    /// is unreachable the last copy stays. `None` until the first successful read.
    pub fn watch_keys(&self, every: Duration) -> watch::Receiver<Option<Arc<KeysSnapshot>>> {
        let (tx, rx) = watch::channel(None);
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut known: Option<u64> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                match (Fleet { inner }).keys_if_changed(known).await {
                    Ok(Some(snap)) => {
                        known = Some(snap.version);
                        if tx.send(Some(Arc::new(snap))).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) if e.is_unavailable() => {}
                    Err(e) => tracing::warn!(error = %e, "fleet: reading keys failed"),
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        self.inner.spawned(task);
        rx
    }

    /// The userids at their allocation limit anywhere in the fleet, re-read when
    /// `<p>quota-full:version` changes (checked every `every`). A relay refuses them (486) on
    /// Allocate without a Redis call. While Redis is unreachable the set is empty: relays fall
    /// back to their local limits.
    pub fn watch_quota_full(&self, every: Duration) -> watch::Receiver<Arc<HashSet<String>>> {
        let (tx, rx) = watch::channel(Arc::new(HashSet::new()));
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut known: Option<u64> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                match (Fleet { inner }).quota_full_if_changed(known).await {
                    Ok(Some((version, users))) => {
                        known = Some(version);
                        if tx.send(Arc::new(users)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if !e.is_unavailable() {
                            tracing::warn!(error = %e, "fleet: reading quota marks failed");
                        }
                        known = None;
                        if !tx.borrow().is_empty() && tx.send(Arc::new(HashSet::new())).is_err() {
                            return;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        self.inner.spawned(task);
        rx
    }
}
