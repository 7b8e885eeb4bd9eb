//! `[fleet]`: joining a fleet (many relays and issuers sharing state through Redis). Fleet mode
//! starts only when `redis` is set; without it these keys are unused and turnkey is one process.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use turnkey_fleet::{FleetConfig, DEFAULT_PREFIX};
use turnkey_types::{NodeId, Region};

/// `[fleet]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetSettings {
    /// `redis://[:password@]host[:port][/db]`, `rediss://...`, or
    /// `redis+sentinel://[:password@]h1:26379,h2:26379/mymaster` (`rediss+sentinel://`); absent:
    /// no fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisUrl>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// PEM file with the CA certificate(s) of the Redis server (`rediss://`, `rediss+sentinel://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// This process's name in the fleet (default: the host name).
    pub node_id: NodeId,
    /// This process's region label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            redis: None,
            redis_prefix: DEFAULT_PREFIX.to_owned(),
            redis_ca_file: None,
            node_id: host_node_id(),
            region: None,
        }
    }
}

impl FleetSettings {
    /// The fleet client's configuration, when a Redis URL is given (fleet mode).
    pub fn config(&self) -> Option<FleetConfig> {
        let url = self.redis.as_ref()?;
        let mut cfg = FleetConfig::new(url.0.clone(), self.node_id.clone());
        cfg.prefix.clone_from(&self.redis_prefix);
        cfg.region.clone_from(&self.region);
        cfg.ca_file.clone_from(&self.redis_ca_file);
        Some(cfg)
    }

    /// Every problem of the fleet keys (the URL, the prefix, the CA file), for the config report.
    pub fn errors(&self) -> Option<String> {
        self.config()?.validate().err().map(|e| format!("fleet: {e}"))
    }
}

/// A Redis URL. Its `Debug` hides the password (settings are logged and printed in errors).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", turnkey_fleet::redact_url(&self.0))
    }
}

/// The host name as a node id: characters a node id may not hold become `-`, at most 64 of
/// them; `turnkey` when the host name cannot be read.
fn host_node_id() -> NodeId {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(64)
        .collect();
    NodeId::new(name).or_else(|_| NodeId::new("turnkey")).unwrap_or_else(|_| unreachable!("a valid literal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_node_id_is_the_host_name() {
        let id = FleetSettings::default().node_id;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if !host.trim().is_empty() && host.trim().len() <= 64 {
            assert_eq!(id.as_str(), host.trim());
        }
    }

    #[test]
    fn no_url_means_no_fleet() {
        assert!(FleetSettings::default().config().is_none());
        assert!(FleetSettings::default().errors().is_none());
    }

    #[test]
    fn debug_hides_the_password() {
        let s = FleetSettings { redis: Some(RedisUrl("redis://:hunter2@127.0.0.1:6379".into())), ..Default::default() };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
