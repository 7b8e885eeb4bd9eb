//! TURN keys (tenants) shared by every issuer.
//!
//! `<p>keys` maps a key id to its record (JSON, the SHA-256 of its token, never the token);
//! `<p>keys:version` changes with every create, update and delete, so an issuer keeps a local
//! copy and refreshes it with one cheap call ([`Fleet::keys_if_changed`], e.g. every second).
//! Deleting a key also revokes it everywhere (`<p>revoked-keys` and the revocation channel).

use std::sync::OnceLock;

use redis::Script;
use serde::{Deserialize, Serialize};

use crate::revocation::Revocation;
use crate::{Fleet, FleetError};

/// A TURN key as the fleet stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key id (the issuer's 32 lowercase hex characters).
    pub id: String,
    /// SHA-256 of the key's API token, 64 lowercase hex characters.
    pub token_sha256: String,
    /// Lowers the issuer's `max_ttl` for this key.
    #[serde(default)]
    pub max_ttl: Option<u64>,
    /// Monthly relayed-bytes cap.
    #[serde(default)]
    pub monthly_bandwidth_bytes: Option<u64>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// An operator key (sees every key's live sessions).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

impl KeyRecord {
    fn validate(&self) -> Result<(), FleetError> {
        if !turnkey_types::KeyId::is_valid(&self.id) {
            return Err(FleetError::InvalidName { what: "key id", value: self.id.clone() });
        }
        let ok_hash =
            self.token_sha256.len() == 64 && self.token_sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok_hash {
            return Err(FleetError::InvalidName { what: "token hash", value: "<not 64 lowercase hex>".to_owned() });
        }
        Ok(())
    }
}

/// Every key, at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysSnapshot {
    /// `<p>keys:version` when read (0 before any change).
    pub version: u64,
    /// The keys, by id.
    pub keys: Vec<KeyRecord>,
}

const PUT_LUA: &str = r"
if ARGV[3] == 'nx' then
  if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('INCR', KEYS[2])
return 1
";

const DELETE_LUA: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. t[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('PUBLISH', KEYS[4], ARGV[3])
return 1
";

const SNAPSHOT_LUA: &str = r"
local v = redis.call('GET', KEYS[2]) or '0'
if v == ARGV[1] then return {v} end
local out = {v}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do out[#out + 1] = all[i] end
return out
";

static PUT: OnceLock<Script> = OnceLock::new();
static DELETE: OnceLock<Script> = OnceLock::new();
static SNAPSHOT: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Adds a key; `Ok(false)` if a key with that id exists (nothing changed).
    pub async fn create_key(&self, key: &KeyRecord) -> Result<bool, FleetError> {
        self.put(key, "nx").await
    }

    /// Adds or replaces a key (an issuer publishing the keys it has on disk when it joins).
    pub async fn put_key(&self, key: &KeyRecord) -> Result<(), FleetError> {
        self.put(key, "set").await.map(|_| ())
    }

    async fn put(&self, key: &KeyRecord, mode: &'static str) -> Result<bool, FleetError> {
        key.validate()?;
        let json = serde_json::to_string(key).map_err(|e| FleetError::Data { op: "put key", detail: e.to_string() })?;
        let keys = (self.inner.names.keys(), self.inner.names.keys_version());
        let id = key.id.as_str();
        let n: i64 = self
            .inner
            .call("put key", |mut c| async move {
                let mut inv = PUT.get_or_init(|| Script::new(PUT_LUA)).prepare_invoke();
                inv.key(keys.0).key(keys.1).arg(id).arg(json).arg(mode);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(n == 1)
    }

    /// One key, if it exists.
    pub async fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, FleetError> {
        let hash = self.inner.names.keys();
        let json: Option<String> = self
            .inner
            .call("get key", |mut c| async move { redis::cmd("HGET").arg(hash).arg(id).query_async(&mut c).await })
            .await?;
        json.map(|j| parse_key("get key", &j)).transpose()
    }

    /// Every key (fresh).
    pub async fn list_keys(&self) -> Result<KeysSnapshot, FleetError> {
        match self.keys_if_changed(None).await? {
            Some(s) => Ok(s),
            None => Err(FleetError::Data { op: "list keys", detail: "no snapshot".to_owned() }),
        }
    }

    /// Every key if the version differs from `known` (`None`: always), else `None`: one round
    /// trip, and only a version number while nothing changed.
    pub async fn keys_if_changed(&self, known: Option<u64>) -> Result<Option<KeysSnapshot>, FleetError> {
        let keys = (self.inner.names.keys(), self.inner.names.keys_version());
        let known_arg = known.map(|v| v.to_string()).unwrap_or_default();
        let raw: Vec<String> = self
            .inner
            .call("read keys", |mut c| async move {
                let mut inv = SNAPSHOT.get_or_init(|| Script::new(SNAPSHOT_LUA)).prepare_invoke();
                inv.key(keys.0).key(keys.1).arg(known_arg);
                inv.invoke_async(&mut c).await
            })
            .await?;
        let bad = |detail: String| FleetError::Data { op: "read keys", detail };
        let (v, rest) = raw.split_first().ok_or_else(|| bad("empty answer".to_owned()))?;
        let version: u64 = v.parse().map_err(|_| bad(format!("version {v:?}")))?;
        if known == Some(version) {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks(2) {
            let [_, json] = pair else { return Err(bad("truncated key list".to_owned())) };
            match parse_key("read keys", json) {
                Ok(k) => out.push(k),
                Err(e) => tracing::warn!(error = %e, "fleet: skipping an unreadable key record"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some(KeysSnapshot { version, keys: out }))
    }

    /// Deletes a key and revokes it on every relay and issuer until `until` (Unix seconds: now
    /// plus the longest credential lifetime). `Ok(false)` if no such key.
    pub async fn delete_key(&self, id: &str, until: u64) -> Result<bool, FleetError> {
        let n = &self.inner.names;
        let keys = [n.keys(), n.keys_version(), n.revoked_keys(), n.revocations_channel()];
        let payload = serde_json::to_string(&Revocation::Key { id: id.to_owned(), until })
            .map_err(|e| FleetError::Data { op: "delete key", detail: e.to_string() })?;
        let r: i64 = self
            .inner
            .call("delete key", |mut c| async move {
                let mut inv = DELETE.get_or_init(|| Script::new(DELETE_LUA)).prepare_invoke();
                for k in keys {
                    inv.key(k);
                }
                inv.arg(id).arg(until).arg(payload);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(r == 1)
    }
}

const KEY_ALLOCS_LUA: &str = r"
local sum, cursor = 0, '0'
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = r[1]
  for i = 2, #r[2], 2 do sum = sum + tonumber(r[2][i]) end
until cursor == '0'
return sum
";

static KEY_ALLOCS: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Live allocations on all relays of every userid minted for key `id` (`<id>:<label>`): a
    /// scan of `<p>quota`, so O(users with live allocations); for the bandwidth status, not per
    /// request.
    pub async fn key_allocations(&self, id: &str) -> Result<u64, FleetError> {
        let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(FleetError::InvalidName { what: "key id", value: id.to_owned() });
        }
        let (quota, pattern) = (self.inner.names.quota(), format!("{id}:*"));
        self.inner
            .call("key allocations", |mut c| async move {
                let mut inv = KEY_ALLOCS.get_or_init(|| Script::new(KEY_ALLOCS_LUA)).prepare_invoke();
                inv.key(quota).arg(pattern);
                inv.invoke_async(&mut c).await
            })
            .await
    }
}

fn parse_key(op: &'static str, json: &str) -> Result<KeyRecord, FleetError> {
    serde_json::from_str(json).map_err(|e| FleetError::Data { op, detail: format!("key record: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked() {
        let mut k = KeyRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            token_sha256: "a".repeat(64),
            max_ttl: None,
            monthly_bandwidth_bytes: Some(10),
            created: 1,
            admin: false,
        };
        k.validate().unwrap();
        k.token_sha256 = "A".repeat(64);
        assert!(k.validate().is_err());
        k.token_sha256 = "a".repeat(64);
        k.id = "a:b".into();
        assert!(k.validate().is_err());
    }
}
