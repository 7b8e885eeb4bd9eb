//! [`Fleet`]: the handle, its Redis connection, fail-fast calls and the background health check.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::redact_url;
use crate::names::Names;
use crate::quota::QuotaMirror;
use crate::registry::RelaySnapshot;
use crate::target::RedisTarget;
use crate::usage::UsageBuffer;
use crate::{FleetConfig, FleetError, FleetMetrics};

/// The fleet state of one process. Cloning shares it; background tasks stop when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.inner.cfg)
            .field("up", &self.is_up())
            .field("incarnation", &self.inner.incarnation)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: FleetConfig,
    pub(crate) names: Names,
    pub(crate) metrics: FleetMetrics,
    /// Random per process: usage sequence numbers are scoped by it.
    pub(crate) incarnation: String,
    target: RedisTarget,
    /// The primary's connection, its client (pub/sub connections) and its address (under
    /// Sentinel: the address the sentinels reported, compared at every health check).
    conn: RwLock<Option<Primary>>,
    up: AtomicBool,
    ever_up: AtomicBool,
    /// Bumped every time Redis becomes reachable (subscribers resubscribe and replay).
    pub(crate) epoch: watch::Sender<u64>,
    pub(crate) quota: tokio::sync::Mutex<QuotaMirror>,
    pub(crate) usage: Mutex<UsageBuffer>,
    pub(crate) usage_flush: tokio::sync::Mutex<()>,
    /// Heartbeats and deregistration take turns: once deregistered (true), no beat that was
    /// already under way or comes later registers the relay again.
    pub(crate) registration: tokio::sync::Mutex<bool>,
    pub(crate) relays_cache: Mutex<Option<(Instant, RelaySnapshot)>>,
    /// Wakes the health check at once after a call lost the connection (Redis restarted: the
    /// next PING reconnects, so one failed call costs one reconnect, not a health interval).
    recheck: Arc<Notify>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Clone)]
struct Primary {
    conn: ConnectionManager,
    client: redis::Client,
    addr: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl Fleet {
    /// Connects to Redis and starts the health check. Must be called within a
    /// tokio runtime, which then runs the connection and the background tasks.
    ///
    /// A Redis that is down at start is not an error: the handle starts in the down state
    /// (calls fail fast with [`FleetError::Unavailable`]) and connects when Redis appears.
    pub async fn connect(cfg: FleetConfig, metrics: FleetMetrics) -> Result<Fleet, FleetError> {
        let target = RedisTarget::new(cfg.url.as_str(), cfg.ca_file.as_deref())?;
        let mut inc = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut inc);
        let incarnation = inc.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let usage = UsageBuffer::new(cfg.usage_buffer_entries);
        metrics.redis_up.set(0);
        let inner = Arc::new(Inner {
            names: Names::new(cfg.prefix.as_str()),
            metrics,
            incarnation,
            target,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            epoch: watch::channel(0).0,
            quota: tokio::sync::Mutex::new(QuotaMirror::default()),
            usage: Mutex::new(usage),
            usage_flush: tokio::sync::Mutex::new(()),
            registration: tokio::sync::Mutex::new(false),
            relays_cache: Mutex::new(None),
            recheck: Arc::new(Notify::new()),
            tasks: Mutex::new(Vec::new()),
            cfg,
        });
        inner.check_health().await;
        if !inner.up.load(Ordering::Acquire) {
            tracing::warn!(url = %redact_url(inner.cfg.url.as_str()), "fleet: redis not reachable at start; retrying in the background");
        }
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(health_loop(weak, inner.recheck.clone()));
        inner.spawned(task);
        Ok(Fleet { inner })
    }

    /// The configuration this handle runs with.
    pub fn config(&self) -> &FleetConfig {
        &self.inner.cfg
    }

    /// Whether Redis answered the last call or health check.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The metrics this handle updates.
    pub fn metrics(&self) -> &FleetMetrics {
        &self.inner.metrics
    }

    /// Waits until Redis is reachable or `timeout` passes; returns [`Fleet::is_up`].
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.epoch.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_up() {
            if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                return self.is_up();
            }
        }
        true
    }

    /// Runs the health check now (tests, and callers that want a fresh [`Fleet::is_up`]).
    pub async fn check_health(&self) -> bool {
        self.inner.check_health().await;
        self.is_up()
    }
}

/// Whether a client error means "Redis is not there" rather than "Redis said no".
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        // `min-replicas-to-write`: the primary has no replica good enough to take a write.
        || e.code() == Some("NOREPLICAS")
        || matches!(
            e.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
                | ErrorKind::AuthenticationFailed
                | ErrorKind::ClientError
        )
}

async fn health_loop(weak: Weak<Inner>, recheck: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        // Under Sentinel a lost primary is looked for 4 times as often: the sentinels' answer
        // changes the moment they promote a replica, and every subscription waits for it.
        let interval = if inner.target.is_sentinel() && !inner.is_up_now() {
            inner.cfg.health_interval / 4
        } else {
            inner.cfg.health_interval
        };
        inner.check_health().await;
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = recheck.notified() => {}
        }
    }
}

/// Why one subscription of a [`Inner::spawn_resubscribing`] subscriber ended.
pub(crate) enum Ended {
    /// The consumer is gone (or the fleet is).
    ReceiverGone,
    /// Redis came back after an outage: subscribe again at once.
    Reconnected,
    /// The connection failed or closed.
    Lost(String),
}

impl Inner {
    pub(crate) fn spawned(&self, task: JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub(crate) fn is_up_now(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A dedicated pub/sub connection (not bounded here; the caller bounds it).
    pub(crate) async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        let client = self.current().map(|p| p.client).ok_or((ErrorKind::IoError, "no primary yet"))?;
        client.get_async_pubsub().await
    }

    /// Spawns a subscriber that runs `once` (one subscription, until it ends) over and over: at
    /// once after Redis reconnected, and after a lost connection when Redis is back or one
    /// health interval later. It stops when `once` reports the receiver gone or the fleet is
    /// dropped. `once` gets the reconnect epoch to watch and hands it back.
    pub(crate) fn spawn_resubscribing<F, Fut>(self: &Arc<Self>, what: &'static str, mut once: F)
    where
        F: FnMut(Arc<Inner>, watch::Receiver<u64>) -> Fut + Send + 'static,
        Fut: Future<Output = (Ended, watch::Receiver<u64>)> + Send,
    {
        let weak = Arc::downgrade(self);
        let mut epoch = self.epoch.subscribe();
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let retry = inner.cfg.health_interval;
                epoch.mark_unchanged();
                let (ended, back) = once(inner, epoch).await;
                epoch = back;
                match ended {
                    Ended::ReceiverGone => return,
                    Ended::Reconnected => {}
                    Ended::Lost(reason) => {
                        tracing::debug!(subscription = what, reason, "fleet: subscription lost; resubscribing");
                        let _ = tokio::time::timeout(retry, epoch.changed()).await;
                    }
                }
            }
        });
        self.spawned(task);
    }

    /// A pub/sub connection subscribed to `channel`, within twice the operation timeout; the
    /// error says why not (Redis down, refused, timed out). Every subscriber starts here.
    pub(crate) async fn subscribed(&self, channel: &str) -> Result<redis::aio::PubSub, String> {
        if !self.is_up_now() {
            return Err("redis down".to_owned());
        }
        let connect = async {
            let mut ps = self.pubsub().await?;
            ps.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(self.cfg.op_timeout * 2, connect).await {
            Ok(Ok(ps)) => Ok(ps),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("subscribe timed out".to_owned()),
        }
    }

    fn current(&self) -> Option<Primary> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn current_conn(&self) -> Option<ConnectionManager> {
        self.current().map(|p| p.conn)
    }

    /// Finds the primary (under Sentinel: asks the sentinels), connects to it if it is new or
    /// there is no connection yet, then checks it answers as a primary; flips the up state
    /// accordingly. A primary that moved bumps the reconnect epoch even if the old one still
    /// answered (subscribers resubscribe, unconfirmed usage is sent again).
    async fn check_health(&self) {
        let current = self.current();
        let resolved = match self.target.resolve(self.cfg.op_timeout).await {
            Ok(r) => Some(r),
            // No sentinel answered: keep using the primary we know, if any.
            Err(e) if current.is_none() => return self.mark_down("find the primary", &e.to_string()),
            Err(e) => {
                tracing::debug!(error = %e, "fleet: no sentinel answered; keeping the known primary");
                None
            }
        };
        let (primary, moved) = match (current, resolved) {
            (Some(cur), None) => (cur, false),
            (Some(cur), Some(r)) if cur.addr == r.addr => (cur, false),
            (cur, Some(r)) => match self.connect_primary(r.client, r.addr).await {
                Ok(p) => {
                    let moved = cur.is_some();
                    if let Some(old) = cur {
                        tracing::warn!(from = %redact_url(&old.addr), to = %redact_url(&p.addr), "fleet: the redis primary moved; reconnected to the new one");
                    }
                    *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
                    (p, moved)
                }
                Err(e) => return self.mark_down("connect", &e),
            },
            (None, None) => return self.mark_down("connect", "no primary"),
        };
        let mut c = primary.conn;
        let check = async {
            if self.target.is_sentinel() {
                // A demoted primary still answers PING; ROLE tells.
                let role: redis::Value = redis::cmd("ROLE").query_async(&mut c).await?;
                match role {
                    redis::Value::Array(v) if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master") => {
                        Ok(())
                    }
                    _ => Err(RedisError::from((ErrorKind::ReadOnly, "not the primary (any more)"))),
                }
            } else {
                redis::cmd("PING").query_async::<String>(&mut c).await.map(drop)
            }
        };
        match tokio::time::timeout(self.cfg.op_timeout, check).await {
            Ok(Ok(())) => {
                if moved {
                    // Reconnected somewhere else: everyone re-reads as after an outage.
                    self.up.store(false, Ordering::Release);
                }
                self.mark_up()
            }
            Ok(Err(e)) => self.mark_down("ping", &e.to_string()),
            Err(_) => self.mark_down("ping", "timed out"),
        }
    }

    async fn connect_primary(&self, client: redis::Client, addr: String) -> Result<Primary, String> {
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.cfg.op_timeout)
            .set_response_timeout(self.cfg.op_timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let made =
            tokio::time::timeout(self.cfg.op_timeout * 2, ConnectionManager::new_with_config(client.clone(), mcfg))
                .await;
        match made {
            Ok(Ok(conn)) => Ok(Primary { conn, client, addr }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            self.metrics.redis_up.set(1);
            if self.ever_up.swap(true, Ordering::AcqRel) {
                self.metrics.reconnects.inc();
                tracing::info!(url = %redact_url(self.cfg.url.as_str()), "fleet: redis reachable again");
            } else {
                tracing::info!(url = %redact_url(self.cfg.url.as_str()), "fleet: connected to redis");
            }
            self.epoch.send_modify(|e| *e += 1);
        }
    }

    pub(crate) fn mark_down(&self, op: &str, reason: &str) {
        self.metrics.errors.inc();
        self.metrics.redis_up.set(0);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(op, reason, "fleet: redis unreachable; keeping local state until it is back");
        }
    }

    /// Runs one Redis operation: fails at once while Redis is down, bounds it by the operation
    /// timeout, and classifies its error.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = match self.current_conn() {
            Some(c) if self.up.load(Ordering::Acquire) => c,
            _ => {
                self.metrics.errors.inc();
                return Err(FleetError::Unavailable { op, reason: "down".to_owned() });
            }
        };
        match tokio::time::timeout(self.cfg.op_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_outage(&e) => {
                let reason = e.to_string();
                self.mark_down(op, &reason);
                self.recheck.notify_one();
                Err(FleetError::Unavailable { op, reason })
            }
            Ok(Err(source)) => {
                self.metrics.errors.inc();
                Err(FleetError::Redis { op, source })
            }
            Err(_) => {
                let reason = format!("no answer within {:?}", self.cfg.op_timeout);
                self.mark_down(op, &reason);
                self.recheck.notify_one();
                Err(FleetError::Unavailable { op, reason })
            }
        }
    }
}
