//! The `allocations` scenario: an allocation storm. Workers (`--concurrency`) each open a fresh
//! connection, allocate (401 round included), and release with Refresh LIFETIME 0, or hold every
//! allocation for `--hold` seconds first. `--unauthenticated` instead pipelines bare Allocates,
//! each answered 401, to measure what unauthenticated floods cost the server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use crate::args::Bound;
use crate::client::{new_tid, TurnClient};
use crate::flow::{data_of, Received};
use crate::proto::{attr, class, method, MessageWriter};
use crate::report::{new_histogram, Report};
use crate::{Ctx, LoadError, Route};

/// Unauthenticated Allocates sent between reads when flooding.
const WORKER_BATCH: u64 = 64;

/// Runs the storm into `report`.
pub async fn run(ctx: &Ctx, report: &mut Report) -> Result<(), LoadError> {
    let bound = ctx.args.bound()?;
    if ctx.args.unauthenticated {
        return unauthenticated(ctx, bound, report).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..ctx.args.concurrency {
        let (ctx, next) = (ctx.clone(), next.clone());
        set.spawn(async move { worker(&ctx, &next, start, bound).await });
    }
    let mut times = new_histogram()?;
    let mut held = Vec::new();
    let mut window_end = start;
    while let Some(r) = set.join_next().await {
        let Ok(w) = r else {
            report.count_error("task");
            continue;
        };
        for t in w.times {
            times.saturating_record(t);
        }
        for (label, n) in w.errors {
            *report.errors.entry(label).or_insert(0) += n;
        }
        for (label, message) in w.first_errors {
            report.first_errors.entry(label).or_insert(message);
        }
        held.extend(w.held);
        window_end = window_end.max(w.ended);
    }
    let elapsed = (window_end - start).as_secs_f64();
    let a = &mut report.allocations;
    a.succeeded = ctx.progress.alloc_ok.load(Ordering::Relaxed);
    a.failed = ctx.progress.alloc_failed.load(Ordering::Relaxed);
    a.attempted = a.succeeded + a.failed;
    a.per_sec = if elapsed > 0.0 { a.succeeded as f64 / elapsed } else { 0.0 };
    a.set_times(&times);
    report.traffic.elapsed_secs = elapsed;
    if let Some(hold) = ctx.args.hold {
        tokio::time::sleep(Duration::from_secs_f64(hold)).await;
        release_all(ctx, held).await;
    }
    Ok(())
}

struct WorkerResult {
    times: Vec<u64>,
    errors: BTreeMap<String, u64>,
    first_errors: BTreeMap<String, String>,
    held: Vec<TurnClient>,
    ended: Instant,
}

async fn worker(ctx: &Ctx, next: &AtomicU64, start: Instant, bound: Bound) -> WorkerResult {
    let end = start + bound.duration;
    let max = bound.count.unwrap_or(u64::MAX);
    let mut out = WorkerResult {
        times: Vec::new(),
        errors: BTreeMap::new(),
        first_errors: BTreeMap::new(),
        held: Vec::new(),
        ended: start,
    };
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= max || Instant::now() >= end {
            break;
        }
        if let Some(rate) = ctx.args.rate {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            if at >= end {
                break;
            }
            sleep_until(at).await;
        }
        match ctx.allocate(i, &mut out.times).await {
            Ok(mut c) => {
                if ctx.args.hold.is_some() {
                    out.held.push(c);
                } else if let Err(e) = c.refresh(0).await {
                    *out.errors.entry(format!("release {}", e.label())).or_insert(0) += 1;
                }
            }
            Err(e) => {
                out.first_errors.entry(e.label()).or_insert_with(|| e.to_string());
                *out.errors.entry(e.label()).or_insert(0) += 1;
            }
        }
        out.ended = Instant::now();
    }
    out
}

async fn release_all(ctx: &Ctx, held: Vec<TurnClient>) {
    let sem = Arc::new(Semaphore::new(ctx.args.concurrency as usize));
    let mut set = JoinSet::new();
    for mut c in held {
        let sem = sem.clone();
        set.spawn(async move {
            let _p = sem.acquire_owned().await;
            let _ = c.refresh(0).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// Pipelines unauthenticated Allocates over `--concurrency` connections and counts the answers
/// by error code; what never got an answer is counted as `"no answer"`.
async fn unauthenticated(ctx: &Ctx, bound: Bound, report: &mut Report) -> Result<(), LoadError> {
    let Route::Fixed(target) = &ctx.route else {
        return Err(LoadError::Args("--unauthenticated needs --server".into()));
    };
    let start = Instant::now();
    let per_worker_rate = ctx.args.rate.map(|r| r / f64::from(ctx.args.concurrency));
    let per_worker_count = bound.count.map(|c| c.div_ceil(u64::from(ctx.args.concurrency)));
    let mut set = JoinSet::new();
    for _ in 0..ctx.args.concurrency {
        let (ctx, target) = (ctx.clone(), target.clone());
        set.spawn(async move {
            let (mut tx, mut rx) = target.connect().await?;
            let drain = Duration::from_millis(ctx.args.drain_ms);
            let mut codes: BTreeMap<String, u64> = BTreeMap::new();
            let mut buf = Vec::with_capacity(64);
            let mut sent = 0u64;
            let end = start + bound.duration;
            let max = per_worker_count.unwrap_or(u64::MAX);
            let mut answered = 0u64;
            while sent < max && Instant::now() < end {
                let burst = match per_worker_rate {
                    Some(r) => {
                        let due = ((Instant::now() - start).as_secs_f64() * r) as u64 + 1;
                        due.min(max).saturating_sub(sent)
                    }
                    None => WORKER_BATCH.min(max - sent),
                };
                for _ in 0..burst {
                    MessageWriter::new(&mut buf, method::ALLOCATE | class::REQUEST, new_tid())
                        .attr_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
                    tx.send(&buf)
                        .await
                        .map_err(|source| LoadError::Io { context: "unauthenticated Allocate".into(), source })?;
                    sent += 1;
                }
                // Read what has arrived without waiting.
                let until = match per_worker_rate {
                    Some(r) => start + Duration::from_secs_f64(sent as f64 / r),
                    None => Instant::now(),
                };
                answered += read_answers(&mut rx, until.min(end), &mut codes).await;
            }
            let deadline = Instant::now() + drain;
            while answered < sent && Instant::now() < deadline {
                answered += read_answers(&mut rx, deadline, &mut codes).await;
            }
            Ok::<_, LoadError>((sent, answered, codes, Instant::now()))
        });
    }
    let (mut sent, mut answered, mut last) = (0, 0, start);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok((s, a, codes, ended))) => {
                sent += s;
                answered += a;
                last = last.max(ended);
                for (k, v) in codes {
                    *report.errors.entry(k).or_insert(0) += v;
                }
            }
            Ok(Err(e)) => report.count_failure(&e),
            Err(_) => report.count_error("task"),
        }
    }
    if sent > answered {
        *report.errors.entry("no answer".into()).or_insert(0) += sent - answered;
    }
    ctx.servers.record_failures(target.server, sent);
    let elapsed = (last - start).as_secs_f64();
    let a = &mut report.allocations;
    a.attempted = sent;
    a.failed = sent;
    a.per_sec = if elapsed > 0.0 { sent as f64 / elapsed } else { 0.0 };
    report.traffic.elapsed_secs = elapsed;
    Ok(())
}

/// Reads error answers until `until` (at least whatever is ready now); returns how many.
async fn read_answers(rx: &mut crate::transport::Rx, until: Instant, codes: &mut BTreeMap<String, u64>) -> u64 {
    let mut n = 0;
    loop {
        let at = until.max(Instant::now() + Duration::from_micros(1));
        match tokio::time::timeout_at(at, rx.recv()).await {
            Ok(Ok(frame)) => {
                if let Received::Error(code, _) = data_of(frame) {
                    *codes.entry(code.to_string()).or_insert(0) += 1;
                    n += 1;
                }
            }
            Ok(Err(_)) | Err(_) => return n,
        }
    }
}
