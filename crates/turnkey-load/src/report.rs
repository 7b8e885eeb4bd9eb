//! The report: every figure of a run, its JSON form, the human summary, and the pass/fail verdict
//! against `--max-loss` and `--max-p99`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    /// `relay`, `allocations` or `ramp`.
    pub scenario: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    /// `channel` or `send`.
    pub mode: String,
    /// The server address used (`--server`, resolved); with `--issuer` and no `--server`, every
    /// server the issuer handed out, comma-separated (see `servers`).
    pub server: String,
    /// `pair` (two allocations per flow), `one-way` (two allocations per flow, the far one only
    /// receiving: `traffic.rtt_us` holds one-way delays), `echo` (own echo peer) or the
    /// `--peer-addr`.
    pub peer: String,
    /// Flows asked for.
    pub flows_requested: u32,
    /// Flows whose allocations, permissions and channels were all set up.
    pub flows_established: u32,
    /// Payload bytes per packet.
    pub payload_bytes: usize,
    /// Packets per second per flow asked for (`null`: flood).
    pub rate_per_flow_pps: Option<f64>,
    /// Traffic shape: `smooth`, `audio` or `video`.
    pub profile: String,
    /// Video: packets sent back to back per frame (`null` for the other profiles).
    pub frame_packets: Option<u64>,
    /// Packet figures (relay; ramp: the last step at or under the loss threshold).
    pub traffic: Traffic,
    /// Allocation figures (every scenario).
    pub allocations: Allocations,
    /// Allocations per TURN server, by address (one entry for a `--server` run).
    pub servers: Vec<ServerReport>,
    /// The credential issuer's fetches (`null` without `--issuer`).
    pub issuer: Option<IssuerReport>,
    /// Failures by STUN error code (`"401"`, `"438"`, ...) or kind (`"timeout"`, `"io"`, ...).
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error kind (e.g. why a TLS handshake failed).
    pub first_errors: BTreeMap<String, String>,
    /// Ramp steps, when the scenario is `ramp`.
    pub ramp: Option<Ramp>,
    /// Whether the run met `--max-loss` and `--max-p99`.
    pub verdict: Verdict,
    /// Processes whose results this report holds (1 for a single run; `merge` sums them).
    pub workers: u32,
    /// Workers of a coordinated run whose results are missing, and why (each fails the verdict).
    pub missing_workers: Vec<String>,
    /// The target's CPU over the run (`--server-metrics`; `null` without).
    pub server_cost: Option<crate::servercost::ServerCost>,
}

/// Packet counts and rates of a sending window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Traffic {
    /// Length of the sending window in seconds.
    pub elapsed_secs: f64,
    /// Packets sent by the measuring side.
    pub sent: u64,
    /// Packets that came back through the relay.
    pub delivered: u64,
    /// `sent - delivered` (never negative).
    pub lost: u64,
    /// `lost / sent` in percent.
    pub loss_pct: f64,
    /// Packets that arrived after a later one of their flow.
    pub reordered: u64,
    /// Packets per second offered (sent / window).
    pub offered_pps: f64,
    /// Payload bits per second offered.
    pub offered_bps: f64,
    /// Packets per second delivered.
    pub delivered_pps: f64,
    /// Payload bits per second delivered.
    pub delivered_bps: f64,
    /// Round-trip time (client → relay → peer → relay → client), microseconds; with `peer`
    /// `one-way` (`--one-way`), the one-way delay (client → relay → the far allocation's client).
    pub rtt_us: Percentiles,
    /// The round trips' HDR histogram: V2 serialization, base64 (empty: no samples); what
    /// `turnkey load merge` adds up.
    pub rtt_hist: String,
}

/// Allocation outcomes and times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Allocations {
    /// Allocations tried.
    pub attempted: u64,
    /// Allocations granted.
    pub succeeded: u64,
    /// Allocations refused or timed out.
    pub failed: u64,
    /// Successful allocations per second over the storm's window (allocations scenario).
    pub per_sec: f64,
    /// Time from the first Allocate to the success answer (401 round included), microseconds.
    pub time_us: Percentiles,
    /// `time_us`'s HDR histogram: V2 serialization, base64 (empty: no samples).
    pub time_hist: String,
}

impl Allocations {
    /// Sets `time_us` and `time_hist` from the histogram of allocation times.
    pub fn set_times(&mut self, h: &Histogram<u64>) {
        self.time_us = Percentiles::from_histogram(h);
        self.time_hist = crate::histogram::encode_histogram(h);
    }
}

/// The allocations one TURN server got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerReport {
    /// Its address, `host:port` (IPv6 in brackets).
    pub server: String,
    /// Allocations tried there.
    pub attempted: u64,
    /// Allocations it granted.
    pub succeeded: u64,
    /// Allocations it refused, or that failed on the way (connection, timeout).
    pub failed: u64,
    /// Median time to allocate there (successes), milliseconds.
    pub p50_ms: f64,
    /// 99th percentile time to allocate there (successes), milliseconds.
    pub p99_ms: f64,
    /// The successes' times to allocate (µs): V2 serialization, base64 (empty: none).
    pub time_hist: String,
}

impl ServerReport {
    /// Sets the percentiles and `time_hist` from the histogram of allocation times (µs).
    pub fn set_times(&mut self, h: &Histogram<u64>) {
        (self.p50_ms, self.p99_ms) = p50_p99_ms(h);
        self.time_hist = crate::histogram::encode_histogram(h);
    }
}

/// The median and 99th percentile of a histogram of µs, in milliseconds (0 when empty).
fn p50_p99_ms(h: &Histogram<u64>) -> (f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0);
    }
    (h.value_at_quantile(0.50) as f64 / 1e3, h.value_at_quantile(0.99) as f64 / 1e3)
}

/// The credential issuer's fetches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IssuerReport {
    /// The issuer's base URL.
    pub url: String,
    /// POSTs to `generate-ice-servers` made.
    pub fetches: u64,
    /// Those that failed (HTTP error, unreachable, timed out), also counted in `errors.issuer`.
    pub failed: u64,
    /// Median time of a successful fetch, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile time of a successful fetch, milliseconds.
    pub p99_ms: f64,
    /// The successful fetches' times (µs): V2 serialization, base64 (empty: none).
    pub time_hist: String,
}

impl IssuerReport {
    /// Sets the percentiles and `time_hist` from the histogram of fetch times (µs).
    pub fn set_times(&mut self, h: &Histogram<u64>) {
        (self.p50_ms, self.p99_ms) = p50_p99_ms(h);
        self.time_hist = crate::histogram::encode_histogram(h);
    }
}

/// Per-server allocation counts and times, shared by the tasks of a run.
#[derive(Debug, Default)]
pub struct ServerTally {
    servers: std::sync::Mutex<BTreeMap<std::net::SocketAddr, Tally>>,
}

/// One server's counts: attempted, succeeded, the successes' times (µs).
#[derive(Debug, Default)]
struct Tally {
    attempted: u64,
    succeeded: u64,
    times_us: Option<Histogram<u64>>,
}

impl ServerTally {
    /// Counts one allocation tried at `server`: `Some(µs)` when it succeeded in that time.
    pub fn record(&self, server: std::net::SocketAddr, success_us: Option<u64>) {
        let Ok(mut m) = self.servers.lock() else { return };
        let t = m.entry(server).or_default();
        t.attempted += 1;
        if let Some(us) = success_us {
            t.succeeded += 1;
            if t.times_us.is_none() {
                t.times_us = new_histogram().ok();
            }
            if let Some(h) = &mut t.times_us {
                h.saturating_record(us.max(1));
            }
        }
    }

    /// Counts `n` attempts at `server` that all failed (the unauthenticated storm).
    pub fn record_failures(&self, server: std::net::SocketAddr, n: u64) {
        if let Ok(mut m) = self.servers.lock() {
            m.entry(server).or_default().attempted += n;
        }
    }

    /// Every server, by address.
    pub fn report(&self) -> Vec<ServerReport> {
        let Ok(m) = self.servers.lock() else { return Vec::new() };
        m.iter()
            .map(|(addr, t)| {
                let mut r = ServerReport {
                    server: addr.to_string(),
                    attempted: t.attempted,
                    succeeded: t.succeeded,
                    failed: t.attempted - t.succeeded,
                    ..ServerReport::default()
                };
                if let Some(h) = &t.times_us {
                    r.set_times(h);
                }
                r
            })
            .collect()
    }
}

/// Percentiles of a histogram of microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// The ramp's steps and where loss first crossed the threshold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Ramp {
    /// Loss percentage that ends the ramp.
    pub threshold_pct: f64,
    /// Every step run, in order.
    pub steps: Vec<RampStep>,
    /// Index of the first step whose loss exceeded the threshold.
    pub first_lossy_step: Option<usize>,
    /// Offered packets per second of the last step at or under the threshold.
    pub max_loss_free_pps: Option<f64>,
}

/// One ramp step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RampStep {
    /// Packets per second per flow asked for.
    pub rate_per_flow_pps: f64,
    /// The step's figures.
    pub traffic: Traffic,
    /// The target's CPU during the step (`--server-metrics`; `null` without): where a ramp
    /// ends on the server's core, its last steps show `cpu_pct` near 100.
    pub server_cost: Option<crate::servercost::ServerCost>,
}

/// The thresholds and whether they were met.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    /// `--max-loss`.
    pub max_loss_pct: Option<f64>,
    /// `--max-p99`.
    pub max_p99_ms: Option<f64>,
    /// `--unauthenticated`: bare Allocates, a 401 is the expected answer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unauthenticated: bool,
    /// No threshold exceeded and the run did what was asked.
    pub passed: bool,
    /// Why it failed.
    pub violations: Vec<String>,
}

pub use crate::histogram::new_histogram;

impl Percentiles {
    /// The percentiles of `h` (all zero when empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

impl Traffic {
    /// Figures from raw counts over a window of `elapsed`.
    pub fn compute(
        sent: u64,
        delivered: u64,
        reordered: u64,
        payload: usize,
        elapsed: Duration,
        rtt: &Histogram<u64>,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let lost = sent.saturating_sub(delivered);
        let bits = (payload * 8) as f64;
        Self {
            elapsed_secs: secs,
            sent,
            delivered,
            lost,
            loss_pct: if sent > 0 { lost as f64 * 100.0 / sent as f64 } else { 0.0 },
            reordered,
            offered_pps: per_sec(sent),
            offered_bps: per_sec(sent) * bits,
            delivered_pps: per_sec(delivered),
            delivered_bps: per_sec(delivered) * bits,
            rtt_us: Percentiles::from_histogram(rtt),
            rtt_hist: crate::histogram::encode_histogram(rtt),
        }
    }
}

impl Report {
    /// Whether `traffic.rtt_us` holds one-way delays (`--one-way`) rather than round trips.
    pub fn one_way(&self) -> bool {
        self.peer == "one-way"
    }

    /// Counts one failure under `label`.
    pub fn count_error(&mut self, label: impl Into<String>) {
        *self.errors.entry(label.into()).or_insert(0) += 1;
    }

    /// Counts a failed operation under its kind, keeping the first message of each kind.
    pub fn count_failure(&mut self, e: &crate::LoadError) {
        let label = e.label();
        self.first_errors.entry(label.clone()).or_insert_with(|| e.to_string());
        self.count_error(label);
    }

    /// Fills the verdict: thresholds, and the run having done what was asked. Only an
    /// `--unauthenticated` storm (bare Allocates, a 401 is its expected answer) passes with no
    /// allocation granted; a storm refused with 401 fails naming it (a wrong or expired secret).
    pub fn judge(&mut self, max_loss_pct: Option<f64>, max_p99_ms: Option<f64>, unauthenticated: bool) {
        let mut v = Verdict { max_loss_pct, max_p99_ms, unauthenticated, ..Verdict::default() };
        let t = &self.traffic;
        if self.scenario == "allocations" {
            if self.allocations.succeeded == 0 && !unauthenticated {
                v.violations.push(match self.errors.get("401") {
                    Some(n) => format!(
                        "no allocation succeeded ({n} refused with 401 Unauthorized: wrong or expired credentials)"
                    ),
                    None => "no allocation succeeded".into(),
                });
            }
        } else if self.flows_established == 0 {
            v.violations.push("no flow could be set up".into());
        } else if t.sent == 0 {
            v.violations.push("nothing was sent".into());
        } else if t.delivered == 0 {
            v.violations.push(format!("nothing was delivered (all {} sent were lost)", t.sent));
        }
        if let Some(max) = max_loss_pct {
            if t.loss_pct > max {
                v.violations.push(format!("loss {:.3}% exceeds --max-loss {max}%", t.loss_pct));
            }
        }
        if let Some(max) = max_p99_ms {
            let p99_ms = t.rtt_us.p99 as f64 / 1000.0;
            if p99_ms > max {
                let what = if self.one_way() { "one-way delay" } else { "round trip" };
                v.violations.push(format!("p99 {what} {p99_ms:.3} ms exceeds --max-p99 {max} ms"));
            }
        }
        for w in &self.missing_workers {
            v.violations.push(format!("missing worker: {w}"));
        }
        v.passed = v.violations.is_empty();
        self.verdict = v;
    }
}

fn rate(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2} G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.2} k", x / 1e3)
    } else {
        format!("{x:.1} ")
    }
}

fn write_traffic(f: &mut fmt::Formatter<'_>, t: &Traffic, one_way: bool) -> fmt::Result {
    writeln!(
        f,
        "  sent {} delivered {} lost {} ({:.3}%) reordered {} in {:.2} s",
        t.sent, t.delivered, t.lost, t.loss_pct, t.reordered, t.elapsed_secs
    )?;
    writeln!(f, "  offered   {}pkt/s {}bit/s", rate(t.offered_pps), rate(t.offered_bps))?;
    writeln!(f, "  delivered {}pkt/s {}bit/s", rate(t.delivered_pps), rate(t.delivered_bps))?;
    let r = &t.rtt_us;
    writeln!(
        f,
        "  {} min {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        if one_way { "delay ms" } else { "rtt ms  " },
        r.min as f64 / 1e3,
        r.p50 as f64 / 1e3,
        r.p90 as f64 / 1e3,
        r.p99 as f64 / 1e3,
        r.max as f64 / 1e3
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "turnkey load: {} over {} ({} mode) against {}, peer {}",
            self.scenario, self.transport, self.mode, self.server, self.peer
        )?;
        if self.scenario != "allocations" {
            let rate = self.rate_per_flow_pps.map_or("flood".to_string(), |r| format!("{r} pkt/s"));
            let shape = match self.frame_packets {
                Some(n) => format!(" ({} profile: 30 frames/s of {n} packets)", self.profile),
                None if self.profile.is_empty() => String::new(),
                None => format!(" ({} profile)", self.profile),
            };
            writeln!(
                f,
                "  flows {}/{} established, payload {} B, rate per flow {}{}",
                self.flows_established, self.flows_requested, self.payload_bytes, rate, shape
            )?;
            write_traffic(f, &self.traffic, self.one_way())?;
        }
        let a = &self.allocations;
        writeln!(
            f,
            "  allocations {} ok / {} tried ({} failed){}",
            a.succeeded,
            a.attempted,
            a.failed,
            if self.scenario == "allocations" { format!(", {:.1}/s", a.per_sec) } else { String::new() }
        )?;
        let t = &a.time_us;
        writeln!(
            f,
            "  allocate ms min {:.3} p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
            t.min as f64 / 1e3,
            t.p50 as f64 / 1e3,
            t.p90 as f64 / 1e3,
            t.p99 as f64 / 1e3,
            t.max as f64 / 1e3
        )?;
        if self.servers.len() > 1 || self.issuer.is_some() {
            writeln!(f, "  per server:")?;
            for sv in &self.servers {
                writeln!(
                    f,
                    "    {}: {} ok / {} tried ({} failed), allocate ms p50 {:.3} p99 {:.3}",
                    sv.server, sv.succeeded, sv.attempted, sv.failed, sv.p50_ms, sv.p99_ms
                )?;
            }
        }
        if let Some(i) = &self.issuer {
            writeln!(
                f,
                "  issuer {}: {} fetches ({} failed), ms p50 {:.3} p99 {:.3}",
                i.url, i.fetches, i.failed, i.p50_ms, i.p99_ms
            )?;
        }
        if let Some(ramp) = &self.ramp {
            writeln!(f, "  ramp (threshold {}% loss):", ramp.threshold_pct)?;
            for (i, s) in ramp.steps.iter().enumerate() {
                let cpu = s.server_cost.as_ref().map_or(String::new(), |c| {
                    format!(", server CPU {:.1}% ({:.3} us/message)", c.cpu_pct, c.cpu_us_per_message)
                });
                writeln!(
                    f,
                    "    step {i}: {} pkt/s per flow, offered {}pkt/s, delivered {}pkt/s, loss {:.3}%, p99 {:.3} ms{cpu}{}",
                    s.rate_per_flow_pps,
                    rate(s.traffic.offered_pps),
                    rate(s.traffic.delivered_pps),
                    s.traffic.loss_pct,
                    s.traffic.rtt_us.p99 as f64 / 1e3,
                    if ramp.first_lossy_step == Some(i) { "  <- loss threshold exceeded" } else { "" }
                )?;
            }
            match ramp.max_loss_free_pps {
                Some(p) => writeln!(f, "  capacity under threshold: {}pkt/s", rate(p))?,
                None => writeln!(f, "  no step stayed under the threshold")?,
            }
        }
        if let Some(c) = &self.server_cost {
            writeln!(
                f,
                "  server CPU {:.3} s over {:.2} s ({:.1}% of a core), {} messages relayed (counted by the {}): {:.3} us/message",
                c.cpu_seconds, c.window_secs, c.cpu_pct, c.relayed_messages, c.relayed_from, c.cpu_us_per_message
            )?;
        }
        if self.workers > 1 || !self.missing_workers.is_empty() {
            writeln!(f, "  merged from {} worker(s)", self.workers)?;
            for w in &self.missing_workers {
                writeln!(f, "  missing: {w}")?;
            }
        }
        if !self.errors.is_empty() {
            let list: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            writeln!(f, "  errors {}", list.join(", "))?;
            for (kind, message) in &self.first_errors {
                writeln!(f, "  first {kind} error: {message}")?;
            }
        }
        if self.verdict.passed {
            writeln!(f, "  PASS")
        } else {
            writeln!(f, "  FAIL: {}", self.verdict.violations.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_math() {
        let mut h = new_histogram().unwrap();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let t = Traffic::compute(1000, 990, 3, 100, Duration::from_secs(2), &h);
        assert_eq!(t.lost, 10);
        assert!((t.loss_pct - 1.0).abs() < 1e-9);
        assert!((t.offered_pps - 500.0).abs() < 1e-9);
        assert!((t.offered_bps - 400_000.0).abs() < 1e-6);
        assert!((t.delivered_pps - 495.0).abs() < 1e-9);
        let r = t.rtt_us;
        assert_eq!(r.count, 1000);
        assert_eq!(r.min, 1);
        assert!(r.min <= r.p50 && r.p50 <= r.p90 && r.p90 <= r.p99 && r.p99 <= r.max);
        assert!((499..=501).contains(&r.p50), "{r:?}");
        assert!((989..=991).contains(&r.p99), "{r:?}");
    }

    #[test]
    fn delivered_above_sent_is_not_negative_loss() {
        let t = Traffic::compute(5, 7, 0, 100, Duration::ZERO, &new_histogram().unwrap());
        assert_eq!(t.lost, 0);
        assert_eq!(t.loss_pct, 0.0);
        assert_eq!(t.offered_pps, 0.0);
        assert_eq!(t.rtt_us, Percentiles::default());
    }

    #[test]
    fn verdict_checks_thresholds() {
        let mut h = new_histogram().unwrap();
        h.record(30_000).unwrap();
        let mut r = Report {
            scenario: "relay".into(),
            flows_established: 1,
            traffic: Traffic::compute(100, 98, 0, 100, Duration::from_secs(1), &h),
            ..Report::default()
        };
        r.judge(Some(5.0), Some(50.0), false);
        assert!(r.verdict.passed, "{:?}", r.verdict);
        r.judge(Some(1.0), Some(10.0), false);
        assert!(!r.verdict.passed);
        assert_eq!(r.verdict.violations.len(), 2);
        r.flows_established = 0;
        r.judge(None, None, false);
        assert!(!r.verdict.passed);
        let text = r.to_string();
        assert!(text.contains("FAIL"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["traffic"]["sent"], 100);
        assert_eq!(json["verdict"]["passed"], false);
        assert_eq!((json["servers"].as_array().map(Vec::len), &json["issuer"]), (Some(0), &serde_json::Value::Null));
    }

    #[test]
    fn a_storm_refused_with_401_fails_unless_unauthenticated() {
        let mut r = Report { scenario: "allocations".into(), ..Report::default() };
        r.errors.insert("401".into(), 20);
        r.judge(None, None, false);
        assert!(!r.verdict.passed);
        assert!(r.verdict.violations[0].contains("20 refused with 401"), "{:?}", r.verdict);
        r.judge(None, None, true);
        assert!(r.verdict.passed, "{:?}", r.verdict);
    }

    #[test]
    fn server_tally_counts_per_server() {
        let t = ServerTally::default();
        let (a, b): (std::net::SocketAddr, std::net::SocketAddr) =
            ("127.0.0.1:40002".parse().unwrap(), "[::1]:40001".parse().unwrap());
        for us in [1000, 2000, 3000] {
            t.record(a, Some(us));
        }
        t.record(a, None);
        t.record(b, None);
        t.record_failures(b, 2);
        let r = t.report();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].server.as_str(), r[0].attempted, r[0].succeeded, r[0].failed), ("127.0.0.1:40002", 4, 3, 1));
        assert!((r[0].p50_ms - 2.0).abs() < 0.01 && (r[0].p99_ms - 3.0).abs() < 0.01, "{:?}", r[0]);
        assert_eq!(
            r[1],
            ServerReport {
                server: "[::1]:40001".into(),
                attempted: 3,
                succeeded: 0,
                failed: 3,
                p50_ms: 0.0,
                p99_ms: 0.0,
                time_hist: String::new(),
            }
        );
        let report = Report { scenario: "allocations".into(), servers: r, ..Report::default() };
        let text = report.to_string();
        assert!(text.contains("127.0.0.1:40002: 3 ok / 4 tried (1 failed)"), "{text}");
    }
}
