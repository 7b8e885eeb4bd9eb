//! Live progress: once a second, on a terminal only, one line with the send and delivery rates,
//! the loss so far and the allocation counts. Silent when stdout is not a terminal.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::flow::FlowCounters;

/// Counters the load loops update and the display reads.
#[derive(Debug, Default)]
pub struct Progress {
    flows: Mutex<Vec<Arc<FlowCounters>>>,
    /// Allocations granted.
    pub alloc_ok: AtomicU64,
    /// Allocations refused or timed out.
    pub alloc_failed: AtomicU64,
    /// Worker mode: the other workers' published counters (sent, delivered, allocations ok,
    /// failed), added to this process's in the line so it shows the whole run.
    others: Mutex<[u64; 4]>,
}

impl Progress {
    /// Registers a flow's counters.
    pub fn add_flow(&self, c: Arc<FlowCounters>) {
        if let Ok(mut v) = self.flows.lock() {
            v.push(c);
        }
    }

    /// Resets the flow counters (a new ramp step).
    pub fn reset_flows(&self) {
        if let Ok(v) = self.flows.lock() {
            for c in v.iter() {
                c.sent.store(0, Ordering::Relaxed);
                c.delivered.store(0, Ordering::Relaxed);
            }
        }
    }

    /// This process's counters: sent, delivered, allocations ok, failed (what a worker
    /// publishes for the others' progress lines).
    pub fn local(&self) -> [u64; 4] {
        let (sent, delivered) = self.totals();
        [sent, delivered, self.alloc_ok.load(Ordering::Relaxed), self.alloc_failed.load(Ordering::Relaxed)]
    }

    /// Worker mode: the sum of the other workers' [`Progress::local`] counters.
    pub fn set_others(&self, others: [u64; 4]) {
        if let Ok(mut o) = self.others.lock() {
            *o = others;
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.flows.lock().map_or((0, 0), |v| {
            v.iter()
                .fold((0, 0), |(s, d), c| (s + c.sent.load(Ordering::Relaxed), d + c.delivered.load(Ordering::Relaxed)))
        })
    }

    /// One status line.
    fn line(&self, secs: u64, last: &mut (u64, u64)) -> String {
        let others = self.others.lock().map_or([0; 4], |o| *o);
        let (sent, delivered) = self.totals();
        let (sent, delivered) = (sent + others[0], delivered + others[1]);
        // Counters reset between ramp steps: treat a drop as a fresh start.
        let ds = sent.saturating_sub(last.0.min(sent));
        let dd = delivered.saturating_sub(last.1.min(delivered));
        *last = (sent, delivered);
        let loss = if sent > 0 { sent.saturating_sub(delivered) as f64 * 100.0 / sent as f64 } else { 0.0 };
        format!(
            "\r[{secs:>4}s] send {ds:>8} pkt/s  recv {dd:>8} pkt/s  sent {sent:>10}  in flight/lost {loss:>6.2}%  allocations {} ok {} failed ",
            self.alloc_ok.load(Ordering::Relaxed) + others[2],
            self.alloc_failed.load(Ordering::Relaxed) + others[3],
        )
    }
}

/// Prints progress every second until `stop` changes, if stdout is a terminal and `enabled`.
pub async fn display(progress: Arc<Progress>, enabled: bool, mut stop: watch::Receiver<bool>) {
    if !enabled || !std::io::stdout().is_terminal() {
        let _ = stop.changed().await;
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut secs = 0;
    let mut last = (0, 0);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {
                secs += 1;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(progress.line(secs, &mut last).as_bytes());
                let _ = out.flush();
            }
        }
    }
    let _ = writeln!(std::io::stdout());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_rates_from_deltas() {
        let p = Progress::default();
        let c = Arc::new(FlowCounters::default());
        p.add_flow(c.clone());
        c.sent.store(100, Ordering::Relaxed);
        c.delivered.store(90, Ordering::Relaxed);
        let mut last = (0, 0);
        let l = p.line(1, &mut last);
        assert!(l.contains("send      100"), "{l}");
        assert!(l.contains("10.00%"), "{l}");
        p.reset_flows();
        let l = p.line(2, &mut last);
        assert!(l.contains("send        0"), "{l}");
        // Worker mode: the other workers' counters join the line.
        c.sent.store(100, Ordering::Relaxed);
        p.set_others([300, 200, 4, 1]);
        assert_eq!(p.local(), [100, 0, 0, 0]);
        let l = p.line(3, &mut last);
        assert!(l.contains("sent        400") && l.contains("50.00%") && l.contains("4 ok 1 failed"), "{l}");
    }
}
