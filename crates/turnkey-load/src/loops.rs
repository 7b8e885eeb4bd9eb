//! The data-path threads of a `relay` or `ramp` run: `--threads` single-threaded tokio runtimes,
//! each on a thread of its own pinned to one of the cores this process may run on. A flow lives
//! on one of them from its allocation to its release (round robin by flow id): its sockets are
//! registered with that thread's reactor and its sender, receiver and reflector run there, so a
//! packet never crosses threads and no task is stolen or woken across cores.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The running loops; dropping them stops every loop (tasks still on them are dropped).
#[derive(Debug)]
pub struct Loops {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Loops {
    /// Starts `n` loops (at least one). Loop `k` is pinned to the `k`-th core of the process's
    /// affinity mask (wrapping around when there are more loops than cores); where pinning is
    /// refused the loop runs unpinned.
    pub fn start(n: usize) -> io::Result<Self> {
        let cores = allowed_cores();
        let mut loops = Self { handles: Vec::new(), stops: Vec::new(), threads: Vec::new() };
        for k in 0..n.max(1) {
            let core = (!cores.is_empty()).then(|| cores[k % cores.len()]);
            let (handle_tx, handle_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new().name(format!("load-loop-{k}")).spawn(move || {
                if let Some(core) = core {
                    pin_to(core);
                }
                // The pacer sleeps sub-millisecond gaps on this thread (pacer.rs): 1 µs of timer
                // slack instead of the default 50 µs keeps those sleeps on time.
                let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
                let rt = match Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(rt.handle().clone()));
                // Drives every task spawned onto this loop until the loops are dropped.
                let _ = rt.block_on(stop_rx);
            })?;
            let handle = handle_rx.recv().map_err(|_| io::Error::other("a load loop exited at start"))??;
            loops.handles.push(handle);
            loops.stops.push(stop_tx);
            loops.threads.push(thread);
        }
        Ok(loops)
    }

    /// The loop flow `id` lives on.
    pub fn of(&self, id: u32) -> &Handle {
        &self.handles[id as usize % self.handles.len()]
    }

    /// How many loops run.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there is no loop (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        // Not joined: a drop inside the caller's runtime must not block it; each thread ends
        // as soon as its loop sees the stop.
        self.threads.clear();
    }
}

/// The cores this process may run on (its affinity mask), in order.
fn allowed_cores() -> Vec<usize> {
    match rustix::thread::sched_getaffinity(None) {
        Ok(set) => (0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    }
}

fn pin_to(core: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_spread_round_robin_and_each_loop_runs_its_tasks_on_one_thread() {
        let loops = Loops::start(3).unwrap();
        assert_eq!(loops.len(), 3);
        let rt = Builder::new_current_thread().enable_all().build().unwrap();
        let names: Vec<String> = rt.block_on(async {
            let mut names = Vec::new();
            for id in 0..6u32 {
                let name = loops.of(id).spawn(async { std::thread::current().name().unwrap_or("").to_owned() });
                names.push(name.await.unwrap());
            }
            names
        });
        assert_eq!(names, ["load-loop-0", "load-loop-1", "load-loop-2", "load-loop-0", "load-loop-1", "load-loop-2"]);
    }

    #[test]
    fn a_loop_is_pinned_to_one_allowed_core() {
        let cores = allowed_cores();
        assert!(!cores.is_empty(), "the process runs on some core");
        let loops = Loops::start(1).unwrap();
        let rt = Builder::new_current_thread().enable_all().build().unwrap();
        let mask = rt.block_on(loops.of(0).spawn(async { allowed_cores() })).unwrap();
        assert_eq!(mask, vec![cores[0]]);
    }
}
