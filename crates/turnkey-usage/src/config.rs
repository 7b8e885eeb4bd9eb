//! [`UsageConfig`]: the `[usage]` table of the config file, each default defined here once and
//! each value checked while it is parsed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Usage accounting settings (`[usage]`, see docs/observability.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Day of the month (1-28, UTC) on which monthly totals reset.
    #[serde(deserialize_with = "reset_day")]
    pub reset_day: u32,
    /// Seconds between writes of `<data_dir>/usage.json` (1-10).
    #[serde(with = "flush_interval")]
    pub flush_interval: Duration,
    /// Stop relaying for a key at its monthly cap, not only stop issuing.
    pub enforce_on_relay: bool,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self { reset_day: 1, flush_interval: Duration::from_secs(5), enforce_on_relay: false }
    }
}

fn bounded<'de, D: serde::Deserializer<'de>>(d: D, lo: u64, hi: u64, unit: &str) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!("must be {lo} to {hi}{unit}, not {v}")))
    }
}

fn reset_day<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    bounded(d, 1, 28, "").map(|v| v as u32)
}

mod flush_interval {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::bounded(d, 1, 10, " seconds").map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let c: UsageConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, UsageConfig::default());
        let c: UsageConfig =
            serde_json::from_str(r#"{"reset_day": 15, "flush_interval": 2, "enforce_on_relay": true}"#).unwrap();
        assert_eq!((c.reset_day, c.flush_interval, c.enforce_on_relay), (15, Duration::from_secs(2), true));
        for bad in [r#"{"reset_day": 31}"#, r#"{"reset_day": 0}"#, r#"{"flush_interval": 60}"#, r#"{"resetday": 1}"#] {
            assert!(serde_json::from_str::<UsageConfig>(bad).is_err(), "{bad}");
        }
    }
}
