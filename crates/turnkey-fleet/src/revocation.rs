//! Revocations across the fleet: a persisted set plus pub/sub.
//!
//! `<p>revoked` (username -> natural expiry) and `<p>revoked-keys` (key id -> until when) are
//! the truth; `<p>revocations` carries each new entry to subscribers at once. A subscriber
//! replays both sets every time it (re)connects, so a relay that was down or cut off learns what
//! it missed; applying an event twice is harmless (revocation is idempotent).

use std::sync::OnceLock;

use futures_util::StreamExt as _;
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::client::{Ended, Inner};
use crate::{Fleet, FleetError};

/// One revocation event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Revocation {
    /// A TURN username: refuse it and end its allocations until `expiry` (Unix seconds), when
    /// it could not authenticate anyway.
    Username {
        /// The username, e.g. `1700000000:alice`.
        username: String,
        /// Its natural expiry.
        expiry: u64,
    },
    /// A deleted TURN key: refuse every username it issued and end their allocations, until
    /// `until` (Unix seconds; the deletion time plus the longest credential lifetime).
    Key {
        /// The key id.
        id: String,
        /// Until when.
        until: u64,
    },
}

/// Revocations as they arrive (and the persisted sets replayed at every (re)connect).
#[derive(Debug)]
pub struct RevocationSubscription {
    rx: mpsc::Receiver<Revocation>,
}

impl RevocationSubscription {
    /// The next revocation; `None` once the [`Fleet`] is dropped.
    pub async fn recv(&mut self) -> Option<Revocation> {
        self.rx.recv().await
    }

    /// A revocation if one is waiting.
    pub fn try_recv(&mut self) -> Option<Revocation> {
        self.rx.try_recv().ok()
    }
}

const REVOKE_LUA: &str = r"
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. t[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
";

const LIVE_LUA: &str = r"
local t = redis.call('TIME')
return {
  redis.call('ZRANGEBYSCORE', KEYS[1], t[1], '+inf', 'WITHSCORES'),
  redis.call('ZRANGEBYSCORE', KEYS[2], t[1], '+inf', 'WITHSCORES'),
}
";

/// `ZRANGEBYSCORE ... WITHSCORES`: member and score pairs.
type Scored = Vec<(String, u64)>;

static REVOKE: OnceLock<Script> = OnceLock::new();
static LIVE: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Revokes `username` on every relay until `expiry` (Unix seconds): persisted, then
    /// published. Entries already expired (by Redis's clock) are trimmed from the set.
    pub async fn revoke(&self, username: &str, expiry: u64) -> Result<(), FleetError> {
        let ev = Revocation::Username { username: username.to_owned(), expiry };
        self.inner.publish_revocation("revoke", self.inner.names.revoked(), expiry, username, &ev).await
    }

    /// Every revocation still in force (both sets), by Redis's clock.
    pub async fn revocations(&self) -> Result<Vec<Revocation>, FleetError> {
        self.inner.live_revocations().await
    }

    /// Subscribes to revocations. The subscription first receives every entry in force, then
    /// each new one as it is published; after a lost connection it resubscribes and receives
    /// the sets again. Events wait in a bounded queue (4096): a consumer that does not keep up
    /// slows the subscriber down, it loses nothing.
    pub fn subscribe_revocations(&self) -> RevocationSubscription {
        let (tx, rx) = mpsc::channel(4096);
        self.inner.spawn_resubscribing("revocations", move |inner, mut epoch| {
            let tx = tx.clone();
            async move { (inner.subscribe_once(&tx, &mut epoch).await, epoch) }
        });
        RevocationSubscription { rx }
    }
}

impl Inner {
    pub(crate) async fn publish_revocation(
        &self,
        op: &'static str,
        set: String,
        score: u64,
        member: &str,
        ev: &Revocation,
    ) -> Result<(), FleetError> {
        let payload = serde_json::to_string(ev).map_err(|e| FleetError::Data { op, detail: e.to_string() })?;
        let channel = self.names.revocations_channel();
        let _: i64 = self
            .call(op, |mut c| async move {
                let mut inv = REVOKE.get_or_init(|| Script::new(REVOKE_LUA)).prepare_invoke();
                inv.key(set).key(channel).arg(score).arg(member).arg(payload);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(())
    }

    async fn live_revocations(&self) -> Result<Vec<Revocation>, FleetError> {
        let keys = (self.names.revoked(), self.names.revoked_keys());
        let (users, keyids): (Scored, Scored) = self
            .call("read revocations", |mut c| async move {
                let mut inv = LIVE.get_or_init(|| Script::new(LIVE_LUA)).prepare_invoke();
                inv.key(keys.0).key(keys.1);
                inv.invoke_async(&mut c).await
            })
            .await?;
        let mut out: Vec<Revocation> =
            users.into_iter().map(|(username, expiry)| Revocation::Username { username, expiry }).collect();
        out.extend(keyids.into_iter().map(|(id, until)| Revocation::Key { id, until }));
        Ok(out)
    }

    /// One subscription: subscribe, replay the sets, forward messages until the connection ends,
    /// Redis is seen to reconnect, or the receiver is dropped.
    async fn subscribe_once(
        &self,
        tx: &mpsc::Sender<Revocation>,
        epoch: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Ended {
        let mut ps = match self.subscribed(&self.names.revocations_channel()).await {
            Ok(ps) => ps,
            Err(why) => return Ended::Lost(why),
        };
        // Subscribed first, then replayed: nothing published in between is missed.
        let live = match self.live_revocations().await {
            Ok(live) => live,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        for ev in live {
            self.metrics.revocations_received.inc();
            if tx.send(ev).await.is_err() {
                return Ended::ReceiverGone;
            }
        }
        let mut stream = ps.on_message();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ended::Lost("connection closed".to_owned()) };
                    let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                    match serde_json::from_slice::<Revocation>(&payload) {
                        Ok(ev) => {
                            self.metrics.revocations_received.inc();
                            if tx.send(ev).await.is_err() {
                                return Ended::ReceiverGone;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "fleet: ignoring an unreadable revocation message"),
                    }
                }
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return Ended::ReceiverGone;
                    }
                    // Redis went away and came back: this connection may be a dead one.
                    return Ended::Reconnected;
                }
            }
        }
    }
}
