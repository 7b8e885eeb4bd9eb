//! [`FleetConfig`]: how to reach Redis and who this process is in the fleet. Its operator-facing
//! values are types checked when parsed ([`RedisUrl`], [`KeyPrefix`], `NodeId`, `Region`), so a
//! `FleetConfig` is valid by construction; the timings are set by code (tests shorten them).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::names::{NodeId, Region, DEFAULT_PREFIX};
use crate::sentinel_url::{is_sentinel_url, SentinelUrl};
use crate::FleetError;

/// Serde of a text newtype through its `FromStr` (deserializing parses) and its text.
macro_rules! serde_as_text {
    ($($t:ident),*) => {$(
        impl TryFrom<String> for $t {
            type Error = FleetError;
            fn try_from(s: String) -> Result<Self, FleetError> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    )*};
}

serde_as_text!(RedisUrl, KeyPrefix);

/// A Redis URL, checked when it is parsed or deserialized: `redis://`, `rediss://` (as redis-rs
/// reads them), or a Sentinel-monitored primary, `redis+sentinel://` / `rediss+sentinel://`
/// ([`SentinelUrl`]). Its `Debug` and errors hide the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL (with its password: never log it, log [`redact_url`] of it).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the connection is TLS (`rediss://`, `rediss+sentinel://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://") || self.0.starts_with("rediss+sentinel://")
    }
}

impl FromStr for RedisUrl {
    type Err = FleetError;

    fn from_str(url: &str) -> Result<Self, FleetError> {
        let why = if is_sentinel_url(url) {
            SentinelUrl::parse(url).err()
        } else if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            Some("must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://".to_owned())
        } else {
            redis::IntoConnectionInfo::into_connection_info(url).err().map(|e| format!("does not parse: {e}"))
        };
        match why {
            None => Ok(Self(url.to_owned())),
            Some(why) => Err(FleetError::Config(vec![format!("redis url {:?}: {why}", redact_url(url))])),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

/// The prefix of every Redis key and channel: 1-64 printable characters without spaces or the
/// glob characters `* ? [ ]` (key scans use it as a pattern); checked when parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// The prefix.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl FromStr for KeyPrefix {
    type Err = FleetError;

    fn from_str(s: &str) -> Result<Self, FleetError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'*' | b'?' | b'[' | b']'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(FleetError::Config(vec![format!(
                "redis prefix {s:?} must be 1-64 printable characters without spaces or * ? [ ]"
            )]))
        }
    }
}

/// The fleet settings of one process (a relay, an issuer, or both).
#[derive(Clone)]
pub struct FleetConfig {
    /// `redis://[:password@]host[:port][/db]` or `rediss://...` (TLS), or a Sentinel-monitored
    /// primary: `redis+sentinel://[:password@]host1:26379,host2:26379/mymaster[/db]`
    /// (`rediss+sentinel://` for TLS). Never logged: its `Debug` hides the password.
    pub url: RedisUrl,
    /// Every key and channel starts with this (default `turnkey:`).
    pub prefix: KeyPrefix,
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
            .field("url", &self.url)
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
    pub fn new(url: RedisUrl, node_id: NodeId) -> Self {
        Self {
            url,
            prefix: KeyPrefix::default(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_redis_and_rediss_urls() {
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://:secret@127.0.0.1:6379/2",
            "rediss://user:secret@redis.example:6380",
            "redis+sentinel://host1:26379,host2:26379/mymaster",
            "rediss+sentinel://:secret@host1,[::1]:26380/mymaster/2",
        ] {
            assert_eq!(ok.parse::<RedisUrl>().unwrap().as_str(), ok);
        }
        let bad = "redis+sentinel://:secret@host1:26379".parse::<RedisUrl>().unwrap_err().to_string();
        assert!(bad.contains("primary") && !bad.contains("secret"), "{bad}");
        let bad = "http://:secret@x".parse::<RedisUrl>().unwrap_err().to_string();
        assert!(bad.contains("redis://") && !bad.contains("secret"), "{bad}");
        assert!(serde_json::from_str::<RedisUrl>("\"redis://\"").is_err(), "deserializing parses");
        assert!(
            "rediss://h".parse::<RedisUrl>().unwrap().is_tls() && !"redis://h".parse::<RedisUrl>().unwrap().is_tls()
        );
    }

    #[test]
    fn prefixes_are_checked_when_parsed() {
        assert_eq!(KeyPrefix::default().as_str(), DEFAULT_PREFIX);
        assert_eq!("tk:".parse::<KeyPrefix>().unwrap().as_str(), "tk:");
        for bad in ["", "a b", "a*", "x?", "[y]", &"p".repeat(65)] {
            assert!(bad.parse::<KeyPrefix>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<KeyPrefix>("\"a*\"").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = FleetConfig::new("redis://:hunter2@127.0.0.1:6379".parse().unwrap(), NodeId::new("n1").unwrap());
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://***@127.0.0.1:6379"), "{s}");
        assert_eq!(redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
    }
}
