//! Worker mode: N `turnkey load` processes, on any machines, run one scenario together through a
//! Redis (`--coordinate redis://… --run-id ID --workers N`), and `turnkey load report` (or the
//! first worker, with `--merge-report`) merges their results exactly ([`crate::merge`]).
//!
//! Keys, all under `turnkey-load:{run-id}:` and expiring a day after the run:
//!
//! | key | what |
//! |---|---|
//! | `workers` | N, set by the first worker to join (a worker given another N is refused) |
//! | `joined` | counter: each worker's `INCR` is its index + 1, its `alive` key set in the same script (a worker past N is refused) |
//! | `alive:{i}` | present while worker `i` runs: set with a 5 s expiry, renewed every second |
//! | `start` | the barrier's outcome, written once (`SET NX`): `go`, or `abort: why` |
//! | `result:{i}` | worker `i`'s JSON report |
//! | `progress:{i}` | worker `i`'s live counters (`sent delivered allocations-ok failed`), renewed every second: each worker's progress line shows the whole run |
//!
//! The barrier opens when all N have joined and every `alive:{i}` is present; whoever sees that
//! first writes `go`. A worker that never arrives within `--barrier-timeout`, or that joined and
//! died before the barrier opened (its `alive` key expired), makes the first worker to notice
//! write `abort: …`: every worker then fails with that reason, and so does `report`; nothing
//! partial is published. After the barrier, a worker whose `alive` key expires without a
//! result died during the run: `report` merges the others and names it in `missing_workers`
//! (a verdict violation).
//!
//! Disjoint user names: with `--secret`, worker `i` mints user ids `{user}-w{i}-{n}`; an issuer
//! hands out its own per request. (`--user/--password` is one user for every worker.)
//!
//! The Redis is any URL the fleet takes ([`turnkey_fleet::RedisTarget`]): `redis://`,
//! `rediss://`, or a Sentinel-monitored primary (`redis+sentinel://h1:26379,h2:26379/mymaster`,
//! `rediss+sentinel://`). A command that fails for want of the primary (connection lost or
//! refused, timed out, or `READONLY` from a demoted one) asks the sentinels again, reconnects and
//! is sent again, for up to [`FAILOVER_WAIT`]: a failover during a run delays the workers'
//! heartbeats and results, it does not end the run. Every command is safe to send twice (joining
//! carries the worker's token, so a join the old primary took is not counted again), and over
//! Sentinel a published result waits for a replica's acknowledgement (`WAIT`) before the worker
//! exits, so a failover right after it does not lose it.

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use turnkey_fleet::RedisTarget;

use crate::progress::Progress;
use crate::report::Report;
use crate::LoadError;

/// How long an `alive` key lives without renewal, and how often it is renewed.
const ALIVE_TTL_MS: u64 = 5_000;
const ALIVE_EVERY: Duration = Duration::from_secs(1);
/// Every key of a run expires this long after it was last written.
const KEEP_SECS: u64 = 86_400;
/// How often the barrier and `report` look again.
const POLL: Duration = Duration::from_millis(100);

/// Joining: the counter's next value is the worker's index + 1; its `alive` key is set with it.
/// The worker's token (ARGV[4]) maps to its number (KEYS[2]), so a join sent again after a lost
/// reply returns the same number instead of counting the worker twice.
const JOIN: &str = r"
local known = redis.call('HGET', KEYS[2], ARGV[4])
if known then return tonumber(known) end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[4], n)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('SET', ARGV[2] .. (n - 1), '1', 'PX', ARGV[3])
return n
";

fn redis_err(what: &str) -> impl Fn(redis::RedisError) -> LoadError + '_ {
    move |e| LoadError::Coordinate(format!("{what}: {e}"))
}

/// How long a command waits for the primary to come back (a Sentinel failover takes a few
/// seconds: `down-after-milliseconds` plus the election).
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);
/// How long one command or connection attempt may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a lost primary is looked for again.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);

/// The primary and a connection to it, renewed when it is lost.
struct Primary {
    target: RedisTarget,
    con: tokio::sync::Mutex<MultiplexedConnection>,
}

impl Primary {
    async fn connect(target: &RedisTarget) -> Result<MultiplexedConnection, LoadError> {
        let client = target.primary_client(COMMAND_TIMEOUT).await.map_err(|e| LoadError::Coordinate(e.to_string()))?;
        tokio::time::timeout(COMMAND_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| LoadError::Coordinate("connecting to Redis timed out".into()))?
            .map_err(redis_err("connecting to Redis"))
    }

    /// Runs `op` on the current connection; when the primary is lost, finds it again (asking the
    /// sentinels), reconnects and runs `op` again, for up to [`FAILOVER_WAIT`].
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, LoadError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + FAILOVER_WAIT;
        loop {
            let con = self.con.lock().await.clone();
            let err = match tokio::time::timeout(COMMAND_TIMEOUT, op(con)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !primary_lost(&e) => return Err(redis_err(what)(e)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            // Reconnect (the sentinels may name a new primary), then send again.
            loop {
                if Instant::now() >= deadline {
                    return Err(LoadError::Coordinate(format!(
                        "{what}: no Redis primary within {} s ({err})",
                        FAILOVER_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(RECONNECT_EVERY).await;
                if let Ok(con) = Self::connect(&self.target).await {
                    *self.con.lock().await = con;
                    break;
                }
            }
        }
    }
}

/// Whether `e` says the primary is gone (or no longer the primary), not that the command failed.
fn primary_lost(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::ReadOnly
}

/// One run's keys in one Redis.
#[derive(Clone)]
pub struct RunKeys {
    primary: Arc<Primary>,
    prefix: String,
}

impl std::fmt::Debug for RunKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunKeys").field("prefix", &self.prefix).finish()
    }
}

impl RunKeys {
    /// Connects to `url` (never printed whole: it may hold a password) for run `run_id`,
    /// trusting the servers' certificates from `ca_file` (TLS; `None`: the system's roots).
    pub async fn connect(url: &str, ca_file: Option<&Path>, run_id: &str) -> Result<Self, LoadError> {
        let target = RedisTarget::new(url, ca_file).map_err(|e| LoadError::Coordinate(format!("Redis URL: {e}")))?;
        let con = Primary::connect(&target).await?;
        let primary = Arc::new(Primary { target, con: tokio::sync::Mutex::new(con) });
        Ok(Self { primary, prefix: format!("turnkey-load:{run_id}:") })
    }

    /// Sends `cmd`, following the primary through a failover.
    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: redis::Cmd) -> Result<T, LoadError> {
        self.primary
            .run(what, |mut con| {
                let cmd = cmd.clone();
                async move { cmd.query_async(&mut con).await }
            })
            .await
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn get(&self, name: &str) -> Result<Option<String>, LoadError> {
        self.query("GET", redis::cmd("GET").arg(self.key(name)).clone()).await
    }

    async fn exists(&self, name: &str) -> Result<bool, LoadError> {
        self.query("EXISTS", redis::cmd("EXISTS").arg(self.key(name)).clone()).await
    }

    /// `SET NX` with the run's expiry; whether this call wrote it.
    async fn set_nx(&self, name: &str, value: &str) -> Result<bool, LoadError> {
        let cmd = redis::cmd("SET").arg(self.key(name)).arg(value).arg("NX").arg("EX").arg(KEEP_SECS).clone();
        Ok(self.query::<Option<String>>("SET", cmd).await?.is_some())
    }

    async fn set_px(&self, name: &str, value: &str, ms: u64) -> Result<(), LoadError> {
        self.query("SET", redis::cmd("SET").arg(self.key(name)).arg(value).arg("PX").arg(ms).clone()).await
    }

    /// The number of workers the run was started with (`None`: nobody joined yet).
    pub async fn workers(&self) -> Result<Option<u32>, LoadError> {
        Ok(self.get("workers").await?.and_then(|v| v.parse().ok()))
    }

    /// The barrier's outcome: `Ok(true)` open, `Ok(false)` not decided yet, `Err` aborted.
    async fn started(&self) -> Result<bool, LoadError> {
        match self.get("start").await?.as_deref() {
            None => Ok(false),
            Some("go") => Ok(true),
            Some(why) => Err(LoadError::Coordinate(format!("run aborted before the start: {why}"))),
        }
    }

    /// Decides the barrier (first writer wins) and returns the outcome everyone will see.
    async fn decide(&self, outcome: &str) -> Result<bool, LoadError> {
        self.set_nx("start", outcome).await?;
        self.started().await
    }
}

/// A worker that joined a run: its index, and the task keeping its `alive` key.
#[derive(Debug)]
pub struct Worker {
    keys: RunKeys,
    /// This worker's index, 0 to N-1.
    pub index: u32,
    /// The run's worker count.
    pub workers: u32,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Joins run `run_id` of `workers` workers and waits at the start barrier (at most
    /// `barrier`). Returns once every worker is there; fails, with the reason, when the run
    /// was aborted (a worker missing or dead before the start).
    /// While it runs, the worker publishes its `progress` counters every second (`progress:{i}`,
    /// expiring with `alive`) and reads the others', so its progress line shows the whole run.
    pub async fn join(
        url: &str,
        ca_file: Option<&Path>,
        run_id: &str,
        workers: u32,
        barrier: Duration,
        progress: Arc<Progress>,
    ) -> Result<Self, LoadError> {
        let keys = RunKeys::connect(url, ca_file, run_id).await?;
        keys.set_nx("workers", &workers.to_string()).await?;
        if let Some(n) = keys.workers().await? {
            if n != workers {
                return Err(LoadError::Coordinate(format!("run {run_id} has {n} workers, not --workers {workers}")));
            }
        }
        keys.started().await?;
        // The index and the `alive` key in one step: a worker looking at the barrier never sees
        // a joined worker without its heartbeat (it would take it for dead).
        let token = format!("{:016x}", rand::random::<u64>());
        let (joined_key, tokens_key, alive_prefix) = (keys.key("joined"), keys.key("tokens"), keys.key("alive:"));
        let script = redis::Script::new(JOIN);
        let joined: i64 = keys
            .primary
            .run("join", |mut con| {
                let (script, joined_key, tokens_key, alive_prefix, token) =
                    (&script, &joined_key, &tokens_key, &alive_prefix, &token);
                async move {
                    let mut join = script.key(joined_key);
                    join.key(tokens_key).arg(KEEP_SECS).arg(alive_prefix).arg(ALIVE_TTL_MS).arg(token);
                    join.invoke_async(&mut con).await
                }
            })
            .await?;
        if joined < 1 || joined > i64::from(workers) {
            return Err(LoadError::Coordinate(format!(
                "run {run_id} already has its {workers} workers (this would be number {joined}); use a new --run-id"
            )));
        }
        let index = (joined - 1) as u32;
        let alive = format!("alive:{index}");
        let heartbeat = {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mine = format!("progress:{index}");
                let theirs: Vec<String> =
                    (0..workers).filter(|&j| j != index).map(|j| keys.key(&format!("progress:{j}"))).collect();
                loop {
                    tokio::time::sleep(ALIVE_EVERY).await;
                    let _ = keys.set_px(&alive, "1", ALIVE_TTL_MS).await;
                    let local = progress.local().map(|n| n.to_string()).join(" ");
                    let _ = keys.set_px(&mine, &local, ALIVE_TTL_MS).await;
                    if theirs.is_empty() {
                        continue;
                    }
                    let got: Result<Vec<Option<String>>, _> =
                        keys.query("MGET", redis::cmd("MGET").arg(&theirs).clone()).await;
                    if let Ok(got) = got {
                        let mut sum = [0u64; 4];
                        for v in got.iter().flatten() {
                            for (s, n) in sum.iter_mut().zip(v.split(' ')) {
                                *s += n.parse::<u64>().unwrap_or(0);
                            }
                        }
                        progress.set_others(sum);
                    }
                }
            })
        };
        let worker = Self { keys, index, workers, heartbeat };
        match worker.barrier(barrier).await {
            Ok(()) => Ok(worker),
            Err(e) => {
                worker.heartbeat.abort();
                Err(e)
            }
        }
    }

    async fn barrier(&self, wait: Duration) -> Result<(), LoadError> {
        let deadline = Instant::now() + wait;
        loop {
            if self.keys.started().await? {
                return Ok(());
            }
            let joined: u32 = self.keys.get("joined").await?.and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut dead = None;
            for i in 0..joined.min(self.workers) {
                if !self.keys.exists(&format!("alive:{i}")).await? {
                    dead = Some(i);
                    break;
                }
            }
            let outcome = match dead {
                Some(i) => Some(format!("worker {i} of {} joined, then died before the start barrier", self.workers)),
                None if joined >= self.workers => Some("go".to_string()),
                None if Instant::now() >= deadline => Some(format!(
                    "only {joined} of {} workers reached the start barrier within {:.0} s",
                    self.workers,
                    wait.as_secs_f64()
                )),
                None => None,
            };
            if let Some(outcome) = outcome {
                self.keys.decide(&outcome).await?;
                continue;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Publishes this worker's report and stops its heartbeat.
    pub async fn publish(self, report: &Report) -> Result<RunKeys, LoadError> {
        let json = serde_json::to_string(report).map_err(|e| LoadError::Report(e.to_string()))?;
        self.keys.set_nx(&format!("result:{}", self.index), &json).await?;
        if self.keys.primary.target.is_sentinel() {
            // A replica holds the result before the worker goes (none within 2 s: a lone
            // primary; the result stands as written).
            let _: Result<i64, _> = self.keys.query("WAIT", redis::cmd("WAIT").arg(1).arg(2000).clone()).await;
        }
        self.heartbeat.abort();
        let alive = self.keys.key(&format!("alive:{}", self.index));
        let _: Result<(), _> = self.keys.query("DEL", redis::cmd("DEL").arg(alive).clone()).await;
        Ok(self.keys)
    }
}

/// Waits (at most `wait`) until every worker of the run has published its result or is found
/// dead, and merges what was published. An aborted run is an error.
pub async fn collect(keys: &RunKeys, wait: Duration) -> Result<Report, LoadError> {
    let deadline = Instant::now() + wait;
    let workers =
        keys.workers().await?.ok_or_else(|| LoadError::Coordinate("no worker of this run ever joined".into()))?;
    loop {
        let started = keys.started().await?;
        if started {
            let mut reports = Vec::new();
            let mut missing = Vec::new();
            let mut pending = 0;
            for i in 0..workers {
                if let Some(json) = keys.get(&format!("result:{i}")).await? {
                    let r: Report = serde_json::from_str(&json)
                        .map_err(|e| LoadError::Report(format!("worker {i}'s result: {e}")))?;
                    reports.push(r);
                } else if keys.exists(&format!("alive:{i}")).await? {
                    pending += 1;
                } else {
                    missing.push(format!("worker {i} died during the run (no result)"));
                }
            }
            if pending == 0 || Instant::now() >= deadline {
                if pending > 0 {
                    missing.push(format!("{pending} worker(s) still running when the wait ended"));
                }
                if reports.is_empty() {
                    return Err(LoadError::Coordinate(format!("no worker published a result: {}", missing.join("; "))));
                }
                return crate::merge::merge(&reports, missing);
            }
        } else if Instant::now() >= deadline {
            return Err(LoadError::Coordinate("the run never started (the start barrier is still closed)".into()));
        }
        tokio::time::sleep(POLL).await;
    }
}
