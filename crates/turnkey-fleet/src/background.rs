//! Background loops the binary starts: a relay's heartbeat, an issuer's copies of the relay
//! listing and of the keys. Each runs on the runtime that starts it and stops when the last
//! [`Fleet`] clone is dropped; failures while Redis is down are logged once by the health state.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::changes::RelayChangeEvent;
use crate::names::NodeId;
use crate::{Fleet, KeysSnapshot, RelayBeat, RelaySnapshot, RelayStatus};

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
    ///
    /// Besides the periodic refresh, a relay that joins, starts or stops draining, or leaves
    /// (announced on `<p>relay-changes`, [`Fleet::relay_changes`]) is updated in the copy at once:
    /// one `GET` of its record ([`Fleet::relay`]), not a whole listing, so a burst of changes
    /// (a fleet restarting) costs one small read per change per issuer.
    pub fn watch_relays(&self, every: Duration, max_stale: Duration) -> watch::Receiver<Arc<RelaySnapshot>> {
        let empty = Arc::new(RelaySnapshot { server_time_ms: 0, relays: Vec::new(), cached: false });
        let (tx, rx) = watch::channel(empty.clone());
        let weak = Arc::downgrade(&self.inner);
        let mut changes = Some(self.relay_changes());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The copy as last read in full or patched, and when.
            let mut read_at = Instant::now();
            loop {
                let event = match &mut changes {
                    Some(c) => tokio::select! {
                        _ = tick.tick() => None,
                        ev = c.recv() => match ev {
                            Some(ev) => Some(ev),
                            None => {
                                // The subscription ended (the fleet is going away).
                                changes = None;
                                continue;
                            }
                        },
                    },
                    None => {
                        tick.tick().await;
                        None
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                let fleet = Fleet { inner };
                if let Some(RelayChangeEvent::Changed(c)) = &event {
                    let current = tx.borrow().clone();
                    if !current.cached && current.server_time_ms != 0 {
                        if let Ok(now) = fleet.relay(&c.node_id).await {
                            let patched = Arc::new(patch(&current, read_at.elapsed(), &c.node_id, now));
                            read_at = Instant::now();
                            // The patched copy is now the newest listing: it is what a read
                            // failing next (Redis gone) falls back to, not the older full read.
                            fleet.remember_listing(&patched);
                            if tx.send(patched).is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
                // A tick, a (re)subscription, an unreadable message, or a change the copy could
                // not take: read the whole listing.
                let snap = match fleet.healthy_relays_or_cached(max_stale).await {
                    Ok(s) => Arc::new(s),
                    Err(_) => empty.clone(),
                };
                read_at = Instant::now();
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

/// `snap` read `elapsed` ago, with every heartbeat age advanced by `elapsed` (so ages stay true
/// whenever the copy is read) and `node`'s entry replaced by `now` (its current record, age 0),
/// or removed when it has none.
fn patch(snap: &RelaySnapshot, elapsed: Duration, node: &NodeId, now: Option<RelayStatus>) -> RelaySnapshot {
    let extra = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    let mut relays: Vec<RelayStatus> = snap
        .relays
        .iter()
        .filter(|r| &r.node_id != node)
        .map(|r| RelayStatus { age_ms: r.age_ms.saturating_add(extra), ..r.clone() })
        .collect();
    relays.extend(now);
    relays.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    RelaySnapshot { server_time_ms: snap.server_time_ms.saturating_add(extra), relays, cached: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdvertisedUrl, Transport};

    fn relay(id: &str, age_ms: u64, draining: bool) -> RelayStatus {
        RelayStatus {
            node_id: NodeId::new(id).unwrap(),
            beat: RelayBeat {
                region: None,
                urls: vec![AdvertisedUrl { transport: Transport::Udp, url: format!("turn:{id}:3478") }],
                allocations: 0,
                allocation_capacity: 10,
                relayed_bps: 0,
                bandwidth_capacity_bps: None,
                draining,
            },
            age_ms,
        }
    }

    #[test]
    fn a_change_patches_one_relay_and_ages_the_rest() {
        let snap = RelaySnapshot {
            server_time_ms: 10_000,
            relays: vec![relay("a", 100, false), relay("b", 1500, false)],
            cached: false,
        };
        let b = NodeId::new("b").unwrap();
        let p = patch(&snap, Duration::from_millis(700), &b, Some(relay("b", 0, true)));
        assert_eq!(p.server_time_ms, 10_700);
        assert_eq!(p.relays, vec![relay("a", 800, false), relay("b", 0, true)]);
        let gone = patch(&snap, Duration::ZERO, &b, None);
        assert_eq!(gone.relays, vec![relay("a", 100, false)]);
        let c = NodeId::new("c").unwrap();
        let joined = patch(&snap, Duration::ZERO, &c, Some(relay("c", 0, false)));
        assert_eq!(joined.relays.iter().map(|r| r.node_id.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
    }
}
