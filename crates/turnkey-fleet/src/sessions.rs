//! The fleet's live session index: each relay writes its sessions (an opaque JSON document the
//! binary builds) to `<p>sessions:<node>` every index period, expiring with its registry record,
//! and takes the session ends operators queued for it from `<p>session-ends:<node>`. Issuers read
//! the indexes of the relays the registry lists, so a relay that died (its record expired) leaves
//! the listing with its sessions. Nothing here is on the data path.

use std::sync::OnceLock;

use redis::Script;

use crate::registry::millis;
use crate::{Fleet, FleetError, NodeId};

/// Takes every queued id at once (the list is emptied in the same step).
const TAKE_LUA: &str = r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids > 0 then redis.call('DEL', KEYS[1]) end
return ids
";

static TAKE: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Replaces this relay's session index with `index`; it expires with the relay's registry
    /// record (3 missed beats) unless written again.
    pub async fn put_sessions(&self, index: String) -> Result<(), FleetError> {
        let i = &self.inner;
        let key = i.names.sessions(&i.cfg.node_id);
        let ttl = millis(i.cfg.stale_after());
        i.call("put sessions", |mut c| async move {
            redis::cmd("SET").arg(key).arg(index).arg("PX").arg(ttl).query_async::<()>(&mut c).await
        })
        .await
    }

    /// Removes this relay's session index (graceful stop).
    pub async fn clear_sessions(&self) -> Result<(), FleetError> {
        let key = self.inner.names.sessions(&self.inner.cfg.node_id);
        self.inner
            .call("clear sessions", |mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
            .await
    }

    /// The session index of every relay the registry lists now, as `(node, index)`; a relay
    /// without an index (none written yet) is left out.
    pub async fn session_indexes(&self) -> Result<Vec<(NodeId, String)>, FleetError> {
        let relays = self.healthy_relays().await?;
        let nodes: Vec<NodeId> = relays.relays.iter().map(|r| r.node_id.clone()).collect();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.inner.names.sessions(n)).collect();
        let raw: Vec<Option<String>> = self
            .inner
            .call("read sessions", |mut c| async move { redis::cmd("MGET").arg(keys).query_async(&mut c).await })
            .await?;
        Ok(nodes.into_iter().zip(raw).filter_map(|(n, r)| r.map(|r| (n, r))).collect())
    }

    /// Queues the end of session `id` for relay `node` (it takes it within its index period).
    pub async fn request_session_end(&self, node: &NodeId, id: &str) -> Result<(), FleetError> {
        let key = self.inner.names.session_ends(node);
        let ttl = millis(self.inner.cfg.stale_after());
        let id = id.to_owned();
        self.inner
            .call("end session", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("RPUSH")
                    .arg(&key)
                    .arg(id)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Takes the session ends queued for this relay.
    pub async fn take_session_ends(&self) -> Result<Vec<String>, FleetError> {
        let key = self.inner.names.session_ends(&self.inner.cfg.node_id);
        self.inner
            .call("take session ends", |mut c| async move {
                let script = TAKE.get_or_init(|| Script::new(TAKE_LUA));
                script.key(key).invoke_async(&mut c).await
            })
            .await
    }
}
