//! `--server-metrics URL`: the target's own cost. Its Prometheus endpoint (turnkey's, or any
//! exporter with `process_cpu_seconds_total`) is scraped before and after the run; the report
//! gives the server's CPU seconds over the run and per relayed message. A relayed message is
//! one packet forwarded by one allocation (client to peer, or peer to client): a round trip in
//! pair mode is 4 (each packet crosses both allocations each way), with an echo peer 2. They
//! come from the server's own counter where it has one (turnkey's
//! `turnkey_relay_relayed_packets_total`, every label summed), else from the load's own counts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::LoadError;

/// How long after the run the second scrape waits, so the server's counters include its last
/// packets (turnkey flushes its data-path counters every 500 ms).
pub const SETTLE: Duration = Duration::from_secs(1);

/// The counter turnkey counts relayed packets in (both directions, every transport).
pub const RELAYED_COUNTER: &str = "turnkey_relay_relayed_packets_total";
/// The standard process CPU counter.
pub const CPU_COUNTER: &str = "process_cpu_seconds_total";

/// One scrape: the sums of the counters of interest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// `process_cpu_seconds_total` (every series summed).
    pub cpu_seconds: f64,
    /// [`RELAYED_COUNTER`], when the server has it.
    pub relayed: Option<f64>,
}

/// The server's cost over the run, in the report (`server_cost`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerCost {
    /// The endpoint scraped.
    pub url: String,
    /// Server CPU seconds (user + system) between the two scrapes.
    pub cpu_seconds: f64,
    /// Messages the server relayed meanwhile.
    pub relayed_messages: u64,
    /// `server` (its own counter) or `load` (the generator's counts: (sent + delivered) × 2 in
    /// pair mode, sent + delivered with an echo peer).
    pub relayed_from: String,
    /// `cpu_seconds / relayed_messages`, microseconds (0 when nothing was relayed).
    pub cpu_us_per_message: f64,
    /// Average server CPU use over the scrapes' window, percent of one core.
    pub cpu_pct: f64,
    /// The run's window in seconds (from the first scrape to the end of the run; the second
    /// scrape comes [`SETTLE`] later). turnkey's counter is its CPU clock (fractional); other
    /// exporters may count in clock ticks (10 ms), coarse for runs under a few seconds.
    pub window_secs: f64,
}

/// Sums every sample of `name` in a Prometheus text exposition (`None`: no such series).
pub fn sum_metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        // The name must end here: a label set or a space follows (not `name_bucket`, ...).
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rfind('}').map(|i| &rest[i + 1..]),
            Some(b' ' | b'\t') => Some(rest),
            _ => None,
        };
        let Some(v) = value.and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

/// Reads a [`Sample`] from an exposition; an endpoint without the CPU counter is refused.
pub fn parse(text: &str) -> Result<Sample, LoadError> {
    let cpu_seconds = sum_metric(text, CPU_COUNTER)
        .ok_or_else(|| LoadError::Metrics(format!("the endpoint has no {CPU_COUNTER}")))?;
    Ok(Sample { cpu_seconds, relayed: sum_metric(text, RELAYED_COUNTER) })
}

/// Scrapes `url` once.
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Sample, LoadError> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| LoadError::Metrics(format!("GET {url}: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(LoadError::Metrics(format!("GET {url}: HTTP {}", resp.status())));
    }
    let text = resp.text().await.map_err(|e| LoadError::Metrics(format!("GET {url}: {}", e.without_url())))?;
    parse(&text)
}

impl ServerCost {
    /// The cost between `before` and `after`, `window` apart; `load_messages` (the load's own
    /// count of relayed messages) stands in for servers without a relayed counter.
    pub fn between(url: &str, before: Sample, after: Sample, window: Duration, load_messages: u64) -> Self {
        let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let (relayed, from) = match (before.relayed, after.relayed) {
            (Some(b), Some(a)) => ((a - b).max(0.0) as u64, "server"),
            _ => (load_messages, "load"),
        };
        let secs = window.as_secs_f64();
        Self {
            url: url.to_string(),
            cpu_seconds: cpu,
            relayed_messages: relayed,
            relayed_from: from.into(),
            cpu_us_per_message: if relayed > 0 { cpu * 1e6 / relayed as f64 } else { 0.0 },
            cpu_pct: if secs > 0.0 { cpu * 100.0 / secs } else { 0.0 },
            window_secs: secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
turnkey_relay_relayed_packets_total{direction=\"to_peer\",transport=\"udp\"} 1000
turnkey_relay_relayed_packets_total{direction=\"to_client\",transport=\"udp\"} 990
turnkey_relay_relayed_packets_total_other 5
turnkey_relay_relayed_bytes_total{direction=\"to_peer\",transport=\"udp\"} 7
";

    #[test]
    fn sums_every_series_of_a_name_and_nothing_else() {
        let s = parse(TEXT).unwrap();
        assert_eq!(s, Sample { cpu_seconds: 12.5, relayed: Some(1990.0) });
        assert!(parse("node_cpu_seconds_total 3\n").is_err());
        assert_eq!(parse("process_cpu_seconds_total 1e1\n").unwrap().relayed, None);
    }

    #[test]
    fn cost_per_message_from_the_server_counter_or_the_load() {
        let a = Sample { cpu_seconds: 10.0, relayed: Some(1000.0) };
        let b = Sample { cpu_seconds: 12.0, relayed: Some(501_000.0) };
        let c = ServerCost::between("u", a, b, Duration::from_secs(4), 7);
        assert_eq!((c.relayed_messages, c.relayed_from.as_str()), (500_000, "server"));
        assert!((c.cpu_us_per_message - 4.0).abs() < 1e-9 && (c.cpu_pct - 50.0).abs() < 1e-9, "{c:?}");
        let c = ServerCost::between(
            "u",
            Sample { relayed: None, ..a },
            Sample { relayed: None, ..b },
            Duration::ZERO,
            1000,
        );
        assert_eq!((c.relayed_messages, c.relayed_from.as_str(), c.cpu_pct), (1000, "load", 0.0));
        assert!((c.cpu_us_per_message - 2000.0).abs() < 1e-9);
    }
}
