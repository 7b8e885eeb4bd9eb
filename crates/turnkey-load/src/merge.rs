//! Exact merging of reports from several processes (threads of one run need none: they share
//! one report). Every latency histogram travels in the JSON report as its HdrHistogram V2
//! serialization, base64-encoded (`rtt_hist`, `time_hist`), so a merge adds histograms, never
//! averages percentiles: counts are summed, histograms merged, per-relay rows kept (rows of the
//! same relay from several workers become one).

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::histogram::new_histogram;
pub use crate::histogram::{decode_histogram, encode_histogram};
use crate::report::{Allocations, IssuerReport, Percentiles, Ramp, RampStep, Report, ServerReport, Traffic};
use crate::LoadError;

/// Adds the histogram serialized in `s` to `into`. A report that counted samples but carries no
/// histogram (written by an older `turnkey load`) cannot be merged exactly: refused.
fn add(into: &mut Histogram<u64>, s: &str, count: u64, what: &str) -> Result<(), LoadError> {
    if s.is_empty() && count > 0 {
        return Err(LoadError::Report(format!(
            "{what}: {count} samples but no serialized histogram (report of an older turnkey load?)"
        )));
    }
    let h = decode_histogram(s)?;
    into.add(&h).map_err(|e| LoadError::Report(format!("{what}: histograms do not add: {e:?}")))
}

/// The traffic of several concurrent windows: counts summed, the window the longest of them,
/// round trips merged.
pub fn merge_traffic<'a>(parts: impl IntoIterator<Item = &'a Traffic>, payload: usize) -> Result<Traffic, LoadError> {
    let mut h = new_histogram()?;
    let (mut sent, mut delivered, mut reordered, mut secs) = (0u64, 0u64, 0u64, 0f64);
    for t in parts {
        add(&mut h, &t.rtt_hist, t.rtt_us.count, "traffic.rtt_hist")?;
        sent += t.sent;
        delivered += t.delivered;
        reordered += t.reordered;
        secs = secs.max(t.elapsed_secs);
    }
    Ok(Traffic::compute(sent, delivered, reordered, payload, Duration::from_secs_f64(secs), &h))
}

/// Merges the reports of one scenario run by several workers into one. They must agree on what
/// was run (scenario, transport, mode, payload, profile); `missing` names workers whose results
/// never came (each becomes a verdict violation). The verdict is judged again on the merged
/// figures with the thresholds of the first report.
pub fn merge(reports: &[Report], missing: Vec<String>) -> Result<Report, LoadError> {
    let Some(first) = reports.first() else {
        return Err(LoadError::Report("no report to merge".into()));
    };
    for r in &reports[1..] {
        // One-way delays and round trips are not one histogram.
        let same = (&r.scenario, &r.transport, &r.mode, r.payload_bytes, &r.profile, r.one_way())
            == (&first.scenario, &first.transport, &first.mode, first.payload_bytes, &first.profile, first.one_way());
        if !same {
            return Err(LoadError::Report(format!(
                "reports of different runs: {} over {} ({}, {} B, {}, peer {}) and {} over {} ({}, {} B, {}, peer {})",
                first.scenario,
                first.transport,
                first.mode,
                first.payload_bytes,
                first.profile,
                first.peer,
                r.scenario,
                r.transport,
                r.mode,
                r.payload_bytes,
                r.profile,
                r.peer
            )));
        }
    }
    let payload = first.payload_bytes;
    let mut out = Report {
        scenario: first.scenario.clone(),
        transport: first.transport.clone(),
        mode: first.mode.clone(),
        peer: first.peer.clone(),
        payload_bytes: payload,
        rate_per_flow_pps: first.rate_per_flow_pps,
        profile: first.profile.clone(),
        frame_packets: first.frame_packets,
        workers: reports.iter().map(|r| r.workers.max(1)).sum(),
        missing_workers: reports.iter().flat_map(|r| r.missing_workers.iter().cloned()).chain(missing).collect(),
        ..Report::default()
    };
    for r in reports {
        out.flows_requested += r.flows_requested;
        out.flows_established += r.flows_established;
        for (k, v) in &r.errors {
            *out.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.first_errors {
            out.first_errors.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out.traffic = merge_traffic(reports.iter().map(|r| &r.traffic), payload)?;
    out.allocations = merge_allocations(reports)?;
    out.servers = merge_servers(reports)?;
    out.issuer = merge_issuer(reports)?;
    let mut servers: Vec<&str> = out.servers.iter().map(|s| s.server.as_str()).collect();
    if servers.is_empty() {
        servers = reports.iter().map(|r| r.server.as_str()).collect();
        servers.dedup();
    }
    out.server = servers.join(",");
    // Every worker scraped the same server over nearly the same window: the widest scrape
    // stands for the run (summing would count the server's CPU once per worker).
    out.server_cost =
        reports.iter().filter_map(|r| r.server_cost.clone()).max_by(|a, b| a.window_secs.total_cmp(&b.window_secs));
    if reports.iter().all(|r| r.ramp.is_some()) {
        out.ramp = merge_ramp(reports, payload, &mut out)?;
    }
    out.judge(first.verdict.max_loss_pct, first.verdict.max_p99_ms, first.verdict.unauthenticated);
    Ok(out)
}

fn merge_allocations(reports: &[Report]) -> Result<Allocations, LoadError> {
    let mut h = new_histogram()?;
    let mut a = Allocations::default();
    for r in reports {
        let x = &r.allocations;
        add(&mut h, &x.time_hist, x.time_us.count, "allocations.time_hist")?;
        a.attempted += x.attempted;
        a.succeeded += x.succeeded;
        a.failed += x.failed;
        // Concurrent workers: their rates add up.
        a.per_sec += x.per_sec;
    }
    a.time_us = Percentiles::from_histogram(&h);
    a.time_hist = encode_histogram(&h);
    Ok(a)
}

fn merge_servers(reports: &[Report]) -> Result<Vec<ServerReport>, LoadError> {
    let mut rows: BTreeMap<&str, (ServerReport, Histogram<u64>)> = BTreeMap::new();
    for s in reports.iter().flat_map(|r| &r.servers) {
        let (row, h) = match rows.entry(s.server.as_str()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((ServerReport { server: s.server.clone(), ..ServerReport::default() }, new_histogram()?))
            }
        };
        add(h, &s.time_hist, s.succeeded, &format!("servers[{}].time_hist", s.server))?;
        row.attempted += s.attempted;
        row.succeeded += s.succeeded;
        row.failed += s.failed;
    }
    Ok(rows
        .into_values()
        .map(|(mut row, h)| {
            row.set_times(&h);
            row
        })
        .collect())
}

fn merge_issuer(reports: &[Report]) -> Result<Option<IssuerReport>, LoadError> {
    let mut out: Option<(IssuerReport, Histogram<u64>)> = None;
    for i in reports.iter().filter_map(|r| r.issuer.as_ref()) {
        let (o, h) = match &mut out {
            Some(x) => x,
            None => out.insert((IssuerReport { url: i.url.clone(), ..IssuerReport::default() }, new_histogram()?)),
        };
        add(h, &i.time_hist, i.fetches - i.failed.min(i.fetches), "issuer.time_hist")?;
        o.fetches += i.fetches;
        o.failed += i.failed;
    }
    Ok(out.map(|(mut o, h)| {
        o.set_times(&h);
        o
    }))
}

/// Steps run by every worker are merged index by index; the threshold is judged again on the
/// merged steps, and the top-level traffic becomes that of the last merged step under it.
fn merge_ramp(reports: &[Report], payload: usize, out: &mut Report) -> Result<Option<Ramp>, LoadError> {
    let ramps: Vec<&Ramp> = reports.iter().filter_map(|r| r.ramp.as_ref()).collect();
    let threshold = ramps[0].threshold_pct;
    let common = ramps.iter().map(|r| r.steps.len()).min().unwrap_or(0);
    let mut ramp = Ramp { threshold_pct: threshold, ..Ramp::default() };
    for i in 0..common {
        let traffic = merge_traffic(ramps.iter().map(|r| &r.steps[i].traffic), payload)?;
        let rate = ramps[0].steps[i].rate_per_flow_pps;
        let lossy = traffic.loss_pct > threshold;
        if !lossy {
            ramp.max_loss_free_pps = Some(traffic.offered_pps);
            out.traffic = traffic.clone();
            out.rate_per_flow_pps = Some(rate);
        }
        // The widest scrape of the step stands for it (see `server_cost` in `merge`).
        let server_cost = ramps
            .iter()
            .filter_map(|r| r.steps[i].server_cost.clone())
            .max_by(|a, b| a.window_secs.total_cmp(&b.window_secs));
        ramp.steps.push(RampStep { rate_per_flow_pps: rate, traffic, server_cost });
        if lossy {
            ramp.first_lossy_step = Some(i);
            break;
        }
    }
    if ramp.max_loss_free_pps.is_none() {
        if let Some(s) = ramp.steps.first() {
            out.traffic = s.traffic.clone();
            out.rate_per_flow_pps = Some(s.rate_per_flow_pps);
        }
    }
    Ok(Some(ramp))
}

/// Reads the JSON reports `paths` and merges them.
pub fn merge_files(paths: &[std::path::PathBuf]) -> Result<Report, LoadError> {
    let mut reports = Vec::new();
    for p in paths {
        let bytes =
            std::fs::read(p).map_err(|source| LoadError::Io { context: format!("read {}", p.display()), source })?;
        let r: Report = serde_json::from_slice(&bytes)
            .map_err(|e| LoadError::Report(format!("{} is not a turnkey load report: {e}", p.display())))?;
        reports.push(r);
    }
    merge(&reports, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn traffic(samples: &[u64], sent: u64, secs: f64) -> Traffic {
        let mut h = new_histogram().unwrap();
        for &s in samples {
            h.record(s).unwrap();
        }
        Traffic::compute(sent, samples.len() as u64, 0, 100, Duration::from_secs_f64(secs), &h)
    }

    /// Percentiles of merged reports equal those of all raw samples in one histogram, which
    /// averaging the workers' percentiles would not give.
    #[test]
    fn merged_percentiles_equal_those_of_the_pooled_samples() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Three workers with very different latencies.
        let parts: Vec<Vec<u64>> = [(100u64, 300u64, 5000usize), (1000, 5000, 300), (20_000, 90_000, 40)]
            .iter()
            .map(|&(lo, hi, n)| (0..n).map(|_| rng.gen_range(lo..hi)).collect())
            .collect();
        let reports: Vec<Report> = parts
            .iter()
            .map(|s| Report {
                scenario: "relay".into(),
                flows_established: 1,
                payload_bytes: 100,
                traffic: traffic(s, s.len() as u64 + 3, 2.0),
                ..Report::default()
            })
            .collect();
        let json: Vec<Report> =
            reports.iter().map(|r| serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap()).collect();
        let merged = merge(&json, Vec::new()).unwrap();
        let all: Vec<u64> = parts.concat();
        let pooled = traffic(&all, all.len() as u64 + 9, 2.0);
        assert_eq!(merged.traffic.rtt_us, pooled.rtt_us);
        assert_eq!((merged.traffic.sent, merged.traffic.delivered, merged.traffic.lost), (5349, 5340, 9));
        assert_eq!(merged.workers, 3);
        assert!(merged.verdict.passed, "{:?}", merged.verdict);
    }

    #[test]
    fn per_server_rows_are_kept_and_joined() {
        let row = |server: &str, times: &[u64], failed: u64| {
            let mut h = new_histogram().unwrap();
            times.iter().for_each(|&t| h.record(t).unwrap());
            let mut r = ServerReport {
                server: server.into(),
                attempted: times.len() as u64 + failed,
                succeeded: times.len() as u64,
                failed,
                ..ServerReport::default()
            };
            r.set_times(&h);
            r
        };
        let a = Report {
            scenario: "allocations".into(),
            servers: vec![row("10.0.0.1:3478", &[1000, 2000], 1), row("10.0.0.2:3478", &[5000], 0)],
            ..Report::default()
        };
        let b = Report {
            scenario: "allocations".into(),
            servers: vec![row("10.0.0.2:3478", &[7000, 9000], 2)],
            ..a.clone()
        };
        let m = merge(&[a, b], vec!["worker 2: no result".into()]).unwrap();
        assert_eq!(m.servers.len(), 2);
        assert_eq!(m.servers[1], row("10.0.0.2:3478", &[5000, 7000, 9000], 2));
        assert_eq!(m.server, "10.0.0.1:3478,10.0.0.2:3478");
        assert!(!m.verdict.passed, "a missing worker fails the verdict");
        assert!(m.verdict.violations.iter().any(|v| v.contains("worker 2")), "{:?}", m.verdict);
    }

    #[test]
    fn different_runs_and_old_reports_are_refused() {
        let a = Report { scenario: "relay".into(), payload_bytes: 100, ..Report::default() };
        let b = Report { payload_bytes: 200, ..a.clone() };
        assert!(merge(&[a.clone(), b], Vec::new()).is_err());
        // One-way delays do not merge with round trips.
        let pair = Report { peer: "pair".into(), ..a.clone() };
        let one_way = Report { peer: "one-way".into(), ..a.clone() };
        let e = merge(&[pair.clone(), one_way.clone()], Vec::new()).unwrap_err().to_string();
        assert!(e.contains("peer pair") && e.contains("peer one-way"), "{e}");
        assert!(merge(&[one_way.clone(), one_way], Vec::new()).is_ok());
        assert!(merge(&[pair.clone(), Report { peer: "echo".into(), ..a.clone() }], Vec::new()).is_ok());
        let mut old = Report { traffic: traffic(&[10, 20], 2, 1.0), ..a.clone() };
        old.traffic.rtt_hist.clear();
        let e = merge(&[a, old], Vec::new()).unwrap_err().to_string();
        assert!(e.contains("no serialized histogram"), "{e}");
    }
}
