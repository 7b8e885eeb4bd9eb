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

use std::time::Duration;

use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

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
const JOIN: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SET', ARGV[2] .. (n - 1), '1', 'PX', ARGV[3])
return n
";

fn redis_err(what: &str) -> impl Fn(redis::RedisError) -> LoadError + '_ {
    move |e| LoadError::Coordinate(format!("{what}: {e}"))
}

/// One run's keys in one Redis.
#[derive(Clone)]
pub struct RunKeys {
    con: MultiplexedConnection,
    prefix: String,
}

impl std::fmt::Debug for RunKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunKeys").field("prefix", &self.prefix).finish()
    }
}

impl RunKeys {
    /// Connects to `url` (never printed: it may hold a password) for run `run_id`.
    pub async fn connect(url: &str, run_id: &str) -> Result<Self, LoadError> {
        let client = redis::Client::open(url).map_err(|e| LoadError::Coordinate(format!("Redis URL: {e}")))?;
        let con = tokio::time::timeout(Duration::from_secs(10), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| LoadError::Coordinate("connecting to Redis timed out".into()))?
            .map_err(redis_err("connecting to Redis"))?;
        Ok(Self { con, prefix: format!("turnkey-load:{run_id}:") })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn get(&self, name: &str) -> Result<Option<String>, LoadError> {
        redis::cmd("GET").arg(self.key(name)).query_async(&mut self.con.clone()).await.map_err(redis_err("GET"))
    }

    async fn exists(&self, name: &str) -> Result<bool, LoadError> {
        redis::cmd("EXISTS").arg(self.key(name)).query_async(&mut self.con.clone()).await.map_err(redis_err("EXISTS"))
    }

    /// `SET NX` with the run's expiry; whether this call wrote it.
    async fn set_nx(&self, name: &str, value: &str) -> Result<bool, LoadError> {
        let r: Option<String> = redis::cmd("SET")
            .arg(self.key(name))
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(KEEP_SECS)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err("SET"))?;
        Ok(r.is_some())
    }

    async fn set_px(&self, name: &str, value: &str, ms: u64) -> Result<(), LoadError> {
        redis::cmd("SET")
            .arg(self.key(name))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err("SET"))
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
        run_id: &str,
        workers: u32,
        barrier: Duration,
        progress: Arc<Progress>,
    ) -> Result<Self, LoadError> {
        let keys = RunKeys::connect(url, run_id).await?;
        keys.set_nx("workers", &workers.to_string()).await?;
        if let Some(n) = keys.workers().await? {
            if n != workers {
                return Err(LoadError::Coordinate(format!("run {run_id} has {n} workers, not --workers {workers}")));
            }
        }
        keys.started().await?;
        // The index and the `alive` key in one step: a worker looking at the barrier never sees
        // a joined worker without its heartbeat (it would take it for dead).
        let joined: i64 = redis::Script::new(JOIN)
            .key(keys.key("joined"))
            .arg(KEEP_SECS)
            .arg(keys.key("alive:"))
            .arg(ALIVE_TTL_MS)
            .invoke_async(&mut keys.con.clone())
            .await
            .map_err(redis_err("join"))?;
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
                        redis::cmd("MGET").arg(&theirs).query_async(&mut keys.con.clone()).await;
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
        self.heartbeat.abort();
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(self.keys.key(&format!("alive:{}", self.index)))
            .query_async(&mut self.keys.con.clone())
            .await;
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
