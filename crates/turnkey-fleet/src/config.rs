//! [`FleetConfig`]: how to reach Redis and who this process is in the fleet.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::names::{NodeId, Region, DEFAULT_PREFIX};
use crate::sentinel_url::{is_sentinel_url, SentinelUrl};
use crate::FleetError;

/// The fleet settings of one process (a relay, an issuer, or both).
#[derive(Clone)]
pub struct FleetConfig {
    /// `redis://[:password@]host[:port][/db]` or `rediss://...` (TLS), or a Sentinel-monitored
    /// primary: `redis+sentinel://[:password@]host1:26379,host2:26379/mymaster[/db]`
    /// (`rediss+sentinel://` for TLS). Never logged: its `Debug` hides the password.
    pub url: String,
    /// Every key and channel starts with this (default `turnkey:`).
    pub prefix: String,
    /// This process's node id (relays: the name in the registry; also scopes quota counts and
    /// usage sequence numbers).
    pub node_id: NodeId,
    /// This process's region, if any.
    pub region: Option<Region>,
    /// PEM file with the CA certificate(s) that sign the Redis server's certificate for
    /// `rediss://` or `rediss+sentinel://` (default: the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// Heartbeat interval (default 2 s); a relay is stale after 3 missed beats.
    pub beat_interval: Duration,
    /// Upper bound on one Redis operation, connection included (default 500 ms). A call that
    /// takes longer fails with [`FleetError::Unavailable`].
    pub op_timeout: Duration,
    /// How often the background health check pings Redis (default 1 s). While Redis is down,
    /// calls fail at once and this check is what notices it is back.
    pub health_interval: Duration,
    /// At most this many distinct (period, key, label) usage entries wait to be flushed;
    /// deltas for new entries past it are dropped and counted (default 100,000).
    pub usage_buffer_entries: usize,
}

impl fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("node_id", &self.node_id)
            .field("region", &self.region)
            .field("ca_file", &self.ca_file)
            .field("beat_interval", &self.beat_interval)
            .field("op_timeout", &self.op_timeout)
            .field("health_interval", &self.health_interval)
            .field("usage_buffer_entries", &self.usage_buffer_entries)
            .finish()
    }
}

/// `url` with the password (anything between `//` and `@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl FleetConfig {
    /// Defaults around a URL and a node id.
    pub fn new(url: impl Into<String>, node_id: NodeId) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            node_id,
            region: None,
            ca_file: None,
            beat_interval: Duration::from_secs(2),
            op_timeout: Duration::from_millis(500),
            health_interval: Duration::from_secs(1),
            usage_buffer_entries: 100_000,
        }
    }

    /// A relay is stale (and its record expires) after 3 missed beats.
    pub fn stale_after(&self) -> Duration {
        self.beat_interval * 3
    }

    /// Checks every setting and reports all problems at once.
    pub fn validate(&self) -> Result<(), FleetError> {
        let mut errs = Vec::new();
        let scheme_ok = self.url.starts_with("redis://") || self.url.starts_with("rediss://");
        if is_sentinel_url(&self.url) {
            if let Err(e) = SentinelUrl::parse(&self.url) {
                errs.push(format!("redis url {:?}: {e}", redact_url(&self.url)));
            }
        } else if !scheme_ok {
            errs.push(format!(
                "redis url {:?} must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://",
                redact_url(&self.url)
            ));
        } else if let Err(e) = redis::IntoConnectionInfo::into_connection_info(self.url.as_str()) {
            errs.push(format!("redis url {:?} does not parse: {e}", redact_url(&self.url)));
        }
        let tls = self.url.starts_with("rediss://") || self.url.starts_with("rediss+sentinel://");
        if self.ca_file.is_some() && !tls {
            errs.push("a redis CA file needs a rediss:// or rediss+sentinel:// url".to_owned());
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 64
            && self.prefix.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'*' | b'?' | b'[' | b']'));
        if !prefix_ok {
            errs.push(format!(
                "redis prefix {:?} must be 1-64 printable characters without spaces or * ? [ ]",
                self.prefix
            ));
        }
        if self.beat_interval < Duration::from_millis(100) || self.beat_interval > Duration::from_secs(60) {
            errs.push(format!("heartbeat interval {:?} must be within 100 ms..60 s", self.beat_interval));
        }
        if self.op_timeout < Duration::from_millis(10) || self.op_timeout > Duration::from_secs(30) {
            errs.push(format!("redis operation timeout {:?} must be within 10 ms..30 s", self.op_timeout));
        }
        if self.health_interval < Duration::from_millis(50) || self.health_interval > Duration::from_secs(60) {
            errs.push(format!("redis health interval {:?} must be within 50 ms..60 s", self.health_interval));
        }
        if self.usage_buffer_entries == 0 {
            errs.push("usage buffer must hold at least one entry".to_owned());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(FleetError::Config(errs))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> FleetConfig {
        FleetConfig::new(url, NodeId::new("n1").unwrap())
    }

    #[test]
    fn accepts_redis_and_rediss_urls() {
        cfg("redis://127.0.0.1:6379").validate().unwrap();
        cfg("redis://:secret@127.0.0.1:6379/2").validate().unwrap();
        cfg("rediss://user:secret@redis.example:6380").validate().unwrap();
        cfg("redis+sentinel://host1:26379,host2:26379/mymaster").validate().unwrap();
        cfg("rediss+sentinel://:secret@host1,[::1]:26380/mymaster/2").validate().unwrap();
        let bad = cfg("redis+sentinel://:secret@host1:26379").validate().unwrap_err().to_string();
        assert!(bad.contains("primary") && !bad.contains("secret"), "{bad}");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let mut c = cfg("http://x");
        c.prefix = String::new();
        c.beat_interval = Duration::from_millis(1);
        c.usage_buffer_entries = 0;
        let msg = c.validate().unwrap_err().to_string();
        for part in ["redis://", "prefix", "heartbeat", "usage buffer"] {
            assert!(msg.contains(part), "{part} missing from {msg}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let c = cfg("redis://:hunter2@127.0.0.1:6379");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://***@127.0.0.1:6379"), "{s}");
        assert_eq!(redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
    }
}
