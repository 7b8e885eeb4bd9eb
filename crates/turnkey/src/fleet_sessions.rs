//! Live sessions in fleet mode: each relay writes what changed in its session index to Redis and
//! takes the ends queued for it (a loop next to its heartbeat, never per packet); issuers and
//! `turnkey sessions --redis` read every listed relay's index and route an end to the owning relay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_fleet::{Fleet, IndexedSession, NodeId, SessionIndexWriter};
use turnkey_issuer::{FleetFuture, Session, SessionSource, SessionsFailure};
use turnkey_relay::engine::AllocationId;
use turnkey_relay::sessions::SessionTable;

use crate::sessions::{from_indexed, to_indexed};

/// How often a relay takes queued ends and writes its index's changes.
pub(crate) const INDEX_PERIOD: Duration = Duration::from_secs(1);
/// How long an end waits for the owning relay's index to drop the session (its next ends poll,
/// its shard's sweep, its next index write, and headroom for a loaded host).
pub(crate) const END_TIMEOUT: Duration = Duration::from_secs(10);

/// The relay's loop: every [`INDEX_PERIOD`], queued ends go to the session table (applied at
/// each shard's next sweep) and the index gets what changed. Runs until aborted.
pub(crate) async fn run_relay_index(fleet: Fleet, table: Arc<SessionTable>) {
    let mut writer = SessionIndexWriter::new(rand::random());
    let mut tick = tokio::time::interval(INDEX_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match fleet.take_session_ends().await {
            Ok(ids) => {
                for id in ids.iter().filter_map(|s| AllocationId::parse(s)) {
                    table.request_end(id);
                }
            }
            Err(e) => tracing::debug!(error = %e, "taking queued session ends failed"),
        }
        let snaps = table.snapshots();
        let sessions: Vec<IndexedSession> = snaps.iter().flat_map(|v| v.iter()).map(to_indexed).collect();
        drop(snaps);
        if let Err(e) = fleet.write_session_index(&mut writer, &sessions).await {
            tracing::debug!(error = %e, "writing the session index failed");
        }
    }
}

/// Every listed relay's sessions.
pub(crate) async fn read_index(fleet: &Fleet) -> Result<Vec<Session>, turnkey_fleet::FleetError> {
    let mut all = Vec::new();
    for (node, sessions) in fleet.session_indexes().await? {
        all.extend(sessions.into_iter().map(|s| from_indexed(s, node.as_str())));
    }
    Ok(all)
}

/// Queues the end of `session` for its relay and waits until that relay's index drops it.
pub(crate) async fn end(fleet: &Fleet, session: &Session) -> anyhow::Result<bool> {
    end_routed(fleet, session).await.map_err(|f| anyhow::anyhow!("{}", turnkey_issuer::ApiError::from(f).message()))
}

async fn end_routed(fleet: &Fleet, session: &Session) -> Result<bool, SessionsFailure> {
    let node = NodeId::new(session.node.clone()).map_err(|_| SessionsFailure::Unavailable)?;
    fleet.request_session_end(&node, &session.id).await.map_err(|_| SessionsFailure::Unavailable)?;
    let deadline = Instant::now() + END_TIMEOUT;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let all = read_index(fleet).await.map_err(|_| SessionsFailure::Unavailable)?;
        if !all.iter().any(|s| s.id == session.id) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Err(SessionsFailure::NotConfirmed);
        }
    }
}

/// The issuer's sessions in fleet mode: the whole fleet's.
pub(crate) struct FleetSessions(pub(crate) Fleet);

impl SessionSource for FleetSessions {
    fn list(&self) -> FleetFuture<'_, Result<Vec<Session>, SessionsFailure>> {
        Box::pin(async move { read_index(&self.0).await.map_err(|_| SessionsFailure::Unavailable) })
    }

    fn end<'a>(&'a self, session: &'a Session) -> FleetFuture<'a, Result<bool, SessionsFailure>> {
        Box::pin(end_routed(&self.0, session))
    }
}
