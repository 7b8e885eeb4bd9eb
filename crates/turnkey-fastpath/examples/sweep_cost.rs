//! What a shard's sweep pays per allocation held in the kernel: one read of its per-CPU counters
//! (a `bpf()` map lookup), as `KernelPath::collect` makes for each one it visits:
//! `cargo run --release -p turnkey-fastpath --example sweep_cost [ALLOCATIONS]` (root; default
//! 10,000). Prints the median of 5 rounds over every allocation, in total and per allocation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use turnkey_fastpath::{AllocKey, AllocationEntry, KernelClock};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let Some(mut fp) = common::load_or_skip() else { std::process::exit(2) };
    let deadline = KernelClock::new().deadline(Instant::now() + Duration::from_secs(3600));
    let keys: Vec<AllocKey> =
        (0..n).map(|_| fp.add_allocation(AllocationEntry { deadline, budget_bytes: None }).unwrap().unwrap()).collect();
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for k in &keys {
            std::hint::black_box(fp.sweep(*k).unwrap());
        }
        rounds.push(t.elapsed());
    }
    rounds.sort();
    let med = rounds[rounds.len() / 2];
    println!(
        "{n} allocations: one sweep round {:.2} ms, {:.0} ns per allocation (median of 5)",
        med.as_secs_f64() * 1e3,
        med.as_nanos() as f64 / n as f64
    );
}
