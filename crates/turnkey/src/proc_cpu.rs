//! The process metrics: the `prometheus` crate's process collector, except its
//! `process_cpu_seconds_total`, which that crate truncates to whole seconds (an `IntCounter` of
//! `(utime + stime) / CLK_TCK`): a relay that used 0.9 s of CPU read 0, and a minute's `rate()`
//! moved in steps of a whole core-second. Here the counter is the process's CPU clock
//! (`CLOCK_PROCESS_CPUTIME_ID`, every thread, nanoseconds), as Go's and Python's clients report it.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

/// The name both collectors would export; this one keeps the precise one.
const CPU: &str = "process_cpu_seconds_total";

/// [`ProcessCollector`] with a precise `process_cpu_seconds_total`.
pub(crate) struct ProcessMetrics {
    inner: ProcessCollector,
    cpu: Counter,
    descs: Vec<Desc>,
}

impl ProcessMetrics {
    /// For this process.
    pub(crate) fn for_self() -> prometheus::Result<Self> {
        let inner = ProcessCollector::for_self();
        let cpu = Counter::with_opts(Opts::new(CPU, "Total user and system CPU time spent in seconds."))?;
        let mut descs: Vec<Desc> = inner.desc().into_iter().filter(|d| d.fq_name != CPU).cloned().collect();
        descs.extend(cpu.desc().into_iter().cloned());
        Ok(Self { inner, cpu, descs })
    }
}

/// The CPU time of every thread of this process so far, in seconds.
fn process_cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out: Vec<MetricFamily> = self.inner.collect().into_iter().filter(|m| m.name() != CPU).collect();
        // A counter only moves up: the clock never goes back, and concurrent scrapes add the
        // difference once between them.
        let now = process_cpu_seconds();
        let past = self.cpu.get();
        if now > past {
            self.cpu.inc_by(now - past);
        }
        out.extend(self.cpu.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_of(registry: &prometheus::Registry) -> (f64, usize) {
        let families = registry.gather();
        let cpu: Vec<_> = families.iter().filter(|m| m.name() == CPU).collect();
        (cpu.first().map_or(-1.0, |m| m.get_metric()[0].get_counter().get_value()), cpu.len())
    }

    #[test]
    fn cpu_seconds_are_fractional_and_exported_once() {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(ProcessMetrics::for_self().unwrap())).unwrap();
        // Burn a known sliver of CPU: well under a second, which the truncating counter shows as 0.
        let (before, n) = cpu_of(&registry);
        assert_eq!(n, 1, "one process_cpu_seconds_total family");
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let (after, _) = cpu_of(&registry);
        let used = after - before;
        assert!(used > 0.05 && used < 1.0, "150 ms of spinning read as {used} s");
        assert!(after.fract() != 0.0, "not whole seconds: {after}");
        // The other process metrics are still there.
        let names: Vec<String> = registry.gather().iter().map(|m| m.name().to_owned()).collect();
        for name in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
    }
}
