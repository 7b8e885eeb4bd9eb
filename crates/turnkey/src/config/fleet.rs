//! `[fleet]`: joining a fleet (many relays and issuers sharing state through Redis). Fleet mode
//! starts only when `redis` is set; without it these keys are unused and turnkey is one process.

use std::path::PathBuf;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use turnkey_fleet::{FleetConfig, KeyPrefix, RedisUrl};
use turnkey_types::{NodeId, Region};

/// `[fleet]`. Each value is parsed into a type that holds only valid ones; the one rule across
/// keys (a CA file needs a TLS URL) is checked at the end of the same deserialization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", default)]
pub struct FleetSettings {
    /// `redis://[:password@]host[:port][/db]`, `rediss://...`, or
    /// `redis+sentinel://[:password@]h1:26379,h2:26379/mymaster` (`rediss+sentinel://`); absent:
    /// no fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisUrl>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: KeyPrefix,
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
            redis_prefix: KeyPrefix::default(),
            redis_ca_file: None,
            node_id: host_node_id(),
            region: None,
        }
    }
}

impl Serialize for FleetSettings {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FleetSettings::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for FleetSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = FleetSettings::deserialize(d)?;
        if s.redis_ca_file.is_some() && !s.redis.as_ref().is_some_and(RedisUrl::is_tls) {
            return Err(D::Error::custom("redis_ca_file needs a rediss:// or rediss+sentinel:// redis url"));
        }
        Ok(s)
    }
}

impl FleetSettings {
    /// The fleet client's configuration, when a Redis URL is given (fleet mode).
    pub fn config(&self) -> Option<FleetConfig> {
        let url = self.redis.as_ref()?;
        let mut cfg = FleetConfig::new(url.clone(), self.node_id.clone());
        cfg.prefix.clone_from(&self.redis_prefix);
        cfg.region.clone_from(&self.region);
        cfg.ca_file.clone_from(&self.redis_ca_file);
        Some(cfg)
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
    }

    #[test]
    fn debug_hides_the_password() {
        let s = FleetSettings { redis: Some("redis://:hunter2@127.0.0.1:6379".parse().unwrap()), ..Default::default() };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
