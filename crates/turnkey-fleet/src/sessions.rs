//! The fleet's live session index: each relay keeps its sessions in the Redis hash
//! `<p>session-index:<node>` (the compact fields of `session_codec.rs`), writing every index
//! period only what changed since its last write (new and changed sessions set, ended ones
//! deleted), the whole hash expiring with its registry record; and it takes the session ends
//! operators queued for it from `<p>session-ends:<node>`. Issuers read the indexes of the relays
//! the registry lists, so a relay that died (its record expired) leaves the listing with its
//! sessions. Nothing here is on the data path.

use std::collections::HashMap;
use std::sync::OnceLock;

use redis::Script;

use crate::registry::millis;
use crate::session_codec::{IndexWritePlan, IndexedSession, SessionIndexWriter, EPOCH_FIELD};
use crate::{Fleet, FleetError, NodeId};

/// Takes every queued id at once (the list is emptied in the same step).
const TAKE_LUA: &str = r"
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
if #ids > 0 then redis.call('DEL', KEYS[1]) end
return ids
";

/// One write of a relay's index, atomic. ARGV: mode (`full` or `delta`), epoch, ttl (ms), the
/// number of fields to set, then field/value pairs, then fields to delete. `full` replaces the
/// hash and tags it with the epoch; `delta` applies only on top of the same epoch's full write
/// (else 0: the hash expired or was lost, the writer then writes in full). Commands take at most
/// 1000 arguments each (Lua's stack).
const WRITE_LUA: &str = r"
local key, epoch = KEYS[1], ARGV[2]
if ARGV[1] == 'full' then
  redis.call('DEL', key)
  redis.call('HSET', key, 'epoch', epoch)
elseif redis.call('HGET', key, 'epoch') ~= epoch then
  return 0
end
local last = 4 + 2 * tonumber(ARGV[4])
local i = 5
while i <= last do
  local j = math.min(i + 999, last)
  redis.call('HSET', key, unpack(ARGV, i, j))
  i = j + 1
end
i = last + 1
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('HDEL', key, unpack(ARGV, i, j))
  i = j + 1
end
redis.call('PEXPIRE', key, ARGV[3])
return 1
";

static TAKE: OnceLock<Script> = OnceLock::new();
static WRITE: OnceLock<Script> = OnceLock::new();

/// What one [`Fleet::write_session_index`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexWrite {
    /// Whether the hash was written in full (the first write, or after a lost one).
    pub full: bool,
    /// Fields set.
    pub set: usize,
    /// Fields deleted.
    pub deleted: usize,
    /// Bytes of field names and values sent (the payload of the write).
    pub bytes: usize,
}

impl Fleet {
    /// Makes this relay's session index hold `sessions`, sending only what changed since the
    /// writer's last applied write (everything when the hash was lost or a write failed); the
    /// hash expires with the relay's registry record (3 missed beats) unless written again.
    pub async fn write_session_index(
        &self,
        writer: &mut SessionIndexWriter,
        sessions: &[IndexedSession],
    ) -> Result<IndexWrite, FleetError> {
        let plan = writer.plan(sessions);
        match self.send_index(writer, &plan).await {
            Ok(true) => {}
            Ok(false) => {
                // The hash is not the one this writer built on (expired, flushed): write it all.
                writer.lost();
                return Box::pin(self.write_session_index(writer, sessions)).await;
            }
            Err(e) => {
                writer.lost();
                return Err(e);
            }
        }
        let sent = IndexWrite {
            full: plan.full,
            set: plan.set.len(),
            deleted: plan.delete.len(),
            bytes: plan.set.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>()
                + plan.delete.iter().map(String::len).sum::<usize>(),
        };
        writer.applied(plan);
        Ok(sent)
    }

    async fn send_index(&self, writer: &SessionIndexWriter, plan: &IndexWritePlan) -> Result<bool, FleetError> {
        let i = &self.inner;
        let key = i.names.session_index(&i.cfg.node_id);
        let mut args: Vec<&str> = Vec::with_capacity(4 + 2 * plan.set.len() + plan.delete.len());
        let ttl = millis(i.cfg.stale_after()).to_string();
        let count = plan.set.len().to_string();
        args.extend([if plan.full { "full" } else { "delta" }, writer.epoch(), &ttl, &count]);
        for (f, v) in &plan.set {
            args.extend([f.as_str(), v.as_str()]);
        }
        args.extend(plan.delete.iter().map(String::as_str));
        let applied: i64 = i
            .call("write session index", |mut c| async move {
                let script = WRITE.get_or_init(|| Script::new(WRITE_LUA));
                script.key(key).arg(args).invoke_async(&mut c).await
            })
            .await?;
        Ok(applied == 1)
    }

    /// Removes this relay's session index (graceful stop).
    pub async fn clear_session_index(&self) -> Result<(), FleetError> {
        let key = self.inner.names.session_index(&self.inner.cfg.node_id);
        self.inner
            .call("clear sessions", |mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
            .await
    }

    /// The sessions of every relay the registry lists now, as `(node, sessions)` (ascending id);
    /// a relay without an index (none written yet, or the listing off) is left out.
    pub async fn session_indexes(&self) -> Result<Vec<(NodeId, Vec<IndexedSession>)>, FleetError> {
        let relays = self.healthy_relays().await?;
        let nodes: Vec<NodeId> = relays.relays.iter().map(|r| r.node_id.clone()).collect();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = nodes.iter().map(|n| self.inner.names.session_index(n)).collect();
        let raw: Vec<HashMap<String, String>> = self
            .inner
            .call("read sessions", |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(nodes
            .into_iter()
            .zip(raw)
            .filter(|(_, h)| h.contains_key(EPOCH_FIELD))
            .map(|(n, h)| (n, crate::session_codec::decode_index(h)))
            .collect())
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
