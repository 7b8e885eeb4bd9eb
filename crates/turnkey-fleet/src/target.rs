//! [`RedisTarget`]: where the fleet's Redis primary is. Either one server
//! (`redis://[:password@]host[:port][/db]`, `rediss://` for TLS) or a Sentinel-monitored primary
//! (`redis+sentinel://[:password@]host1:26379,host2:26379/mymaster[/db]`, `rediss+sentinel://`
//! for TLS to the sentinels and the primary).
//!
//! redis-rs 0.32's `sentinel` module resolves a primary once (`Sentinel::async_master_for`) but
//! has no connection manager or pub/sub that follows a failover, so the handle asks the
//! sentinels itself (`SENTINEL get-master-addr-by-name`, one round trip to a cached sentinel
//! connection) at every health check and moves its connection when the answer changes
//! (`client.rs`). The password (and user) of the URL is sent to the primary and to the
//! sentinels; a sentinel that has no password configured is asked again without it.

use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};

use crate::config::redact_url;
use crate::FleetError;

/// The default port of a sentinel (`host` alone in a sentinel URL).
pub const SENTINEL_PORT: u16 = 26379;

/// A sentinel URL taken apart: pure, no I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    /// TLS (`rediss+sentinel://`) to the sentinels and the primary.
    pub tls: bool,
    /// `user:password` or `:password` exactly as written (percent-encoded), if any.
    pub userinfo: Option<String>,
    /// The sentinels, in the order given (host without brackets, port).
    pub sentinels: Vec<(String, u16)>,
    /// The monitored primary's name (`mymaster`).
    pub service: String,
    /// The database number on the primary.
    pub db: u32,
}

/// Whether `url` is a sentinel URL (by its scheme).
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

fn host_url(tls: bool, userinfo: Option<&str>, host: &str, port: u16, db: u32) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{host}:{port}/{db}"),
        None => format!("{scheme}://{host}:{port}/{db}"),
    }
}

impl SentinelUrl {
    /// Parses `redis+sentinel://[userinfo@]h1[:p1],h2[:p2],.../service[/db]`; the error says
    /// what is wrong (without the password).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else {
            return Err("must start with redis+sentinel:// or rediss+sentinel://".to_owned());
        };
        let (authority, path) = rest.split_once('/').ok_or("names no primary (…/mymaster)")?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let mut sentinels = Vec::new();
        for h in hosts.split(',') {
            sentinels.push(parse_host(h)?);
        }
        let mut parts = path.split('/');
        let service = parts.next().unwrap_or_default().to_owned();
        let service_ok = !service.is_empty()
            && service.len() <= 64
            && service.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !service_ok {
            return Err(format!("primary name {service:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"));
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(d) => d.parse().map_err(|_| format!("database {d:?} is not a number"))?,
        };
        if parts.next().is_some() {
            return Err("has more than /primary/db after the hosts".to_owned());
        }
        let parsed = Self { tls, userinfo, sentinels, service, db };
        // Every URL built from it must be one redis-rs reads (percent-encoding, ports).
        for (h, p) in &parsed.sentinels {
            redis::IntoConnectionInfo::into_connection_info(parsed.node_url(h, *p, true).as_str())
                .map_err(|e| format!("sentinel {h}:{p}: {e}"))?;
        }
        Ok(parsed)
    }

    /// The URL of one node (a sentinel, or the primary when `db` applies).
    fn node_url(&self, host: &str, port: u16, with_auth: bool) -> String {
        host_url(self.tls, self.userinfo.as_deref().filter(|_| with_auth), host, port, self.db)
    }
}

fn parse_host(h: &str) -> Result<(String, u16), String> {
    let bad = || format!("sentinel address {h:?} is not host[:port]");
    if h.is_empty() {
        return Err("an empty sentinel address".to_owned());
    }
    let (host, port) = if let Some(r) = h.strip_prefix('[') {
        let (host, after) = r.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match h.split_once(':') {
            Some((host, p)) => (host, Some(p)),
            None => (h, None),
        }
    };
    if host.is_empty() || host.contains(['@', '/', '?', '#', ' ']) {
        return Err(bad());
    }
    let port = match port {
        None => SENTINEL_PORT,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
    };
    Ok((host.to_owned(), port))
}

/// The primary as resolved now: its address (for comparing) and a client for it.
pub(crate) struct Resolved {
    pub(crate) addr: String,
    pub(crate) client: redis::Client,
}

/// How to reach the primary.
pub struct RedisTarget {
    kind: Kind,
    ca_pem: Option<Vec<u8>>,
    url: String,
}

enum Kind {
    Direct(redis::Client),
    Sentinel { url: SentinelUrl, cached: tokio::sync::Mutex<Option<(usize, MultiplexedConnection)>> },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget").field("url", &redact_url(&self.url)).finish()
    }
}

impl RedisTarget {
    /// A target from a fleet URL and the CA file for TLS (`None`: the system's roots).
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Self, FleetError> {
        let tls = url.starts_with("rediss://") || url.starts_with("rediss+sentinel://");
        if tls {
            // rustls needs a process-wide crypto provider; turnkey uses ring everywhere. Already
            // installed (by this or another component) is fine.
            let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        }
        let ca_pem = match ca_file {
            None => None,
            Some(path) => {
                Some(std::fs::read(path).map_err(|source| FleetError::CaFile { path: path.to_owned(), source })?)
            }
        };
        let bad = |e: String| FleetError::Config(vec![format!("redis url {:?}: {e}", redact_url(url))]);
        let kind = if is_sentinel_url(url) {
            let parsed = SentinelUrl::parse(url).map_err(bad)?;
            Kind::Sentinel { url: parsed, cached: tokio::sync::Mutex::new(None) }
        } else {
            Kind::Direct(open(url, ca_pem.as_deref()).map_err(|e| bad(e.to_string()))?)
        };
        Ok(Self { kind, ca_pem, url: url.to_owned() })
    }

    /// Whether the primary is found through sentinels (and may move).
    pub fn is_sentinel(&self) -> bool {
        matches!(self.kind, Kind::Sentinel { .. })
    }

    /// A client for the primary as it is now (asking the sentinels, each call bounded by
    /// `timeout`): for callers that want their own connection (the load coordinator).
    pub async fn primary_client(&self, timeout: Duration) -> Result<redis::Client, FleetError> {
        self.resolve(timeout)
            .await
            .map(|r| r.client)
            .map_err(|e| FleetError::Unavailable { op: "find the primary", reason: e.to_string() })
    }

    /// The primary now: the one URL, or the address the sentinels report.
    pub(crate) async fn resolve(&self, timeout: Duration) -> RedisResult<Resolved> {
        match &self.kind {
            Kind::Direct(c) => Ok(Resolved { addr: self.url.clone(), client: c.clone() }),
            Kind::Sentinel { url, cached } => {
                let (host, port) = self.ask_sentinels(url, cached, timeout).await?;
                let node = url.node_url(&host, port, true);
                let client = open(&node, self.ca_pem.as_deref())?;
                Ok(Resolved { addr: format!("{host}:{port}"), client })
            }
        }
    }

    /// `SENTINEL get-master-addr-by-name`: the cached sentinel first, then each in turn.
    async fn ask_sentinels(
        &self,
        url: &SentinelUrl,
        cached: &tokio::sync::Mutex<Option<(usize, MultiplexedConnection)>>,
        timeout: Duration,
    ) -> RedisResult<(String, u16)> {
        let mut cache = cached.lock().await;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("get-master-addr-by-name").arg(&url.service);
        if let Some((_, conn)) = cache.as_mut() {
            match ask(conn, &cmd, timeout).await {
                Ok(addr) => return Ok(addr),
                Err(_) => *cache = None,
            }
        }
        let mut last: Option<RedisError> = None;
        for (i, (host, port)) in url.sentinels.iter().enumerate() {
            let conn = match self.sentinel_conn(url, host, *port, timeout).await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let mut conn = conn;
            match ask(&mut conn, &cmd, timeout).await {
                Ok(addr) => {
                    *cache = Some((i, conn));
                    return Ok(addr);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| (redis::ErrorKind::IoError, "no sentinel").into()))
    }

    /// A connection to one sentinel: with the URL's password, else without (sentinels often
    /// run without one while the primary has one).
    async fn sentinel_conn(
        &self,
        url: &SentinelUrl,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
        let mut first_err = None;
        for with_auth in [true, false] {
            if !with_auth && url.userinfo.is_none() {
                break;
            }
            let mut node = url.node_url(host, port, with_auth);
            // Sentinels have no databases: SELECT would fail.
            node.truncate(node.rfind('/').unwrap_or(node.len()));
            let client = open(&node, self.ca_pem.as_deref())?;
            match client.get_multiplexed_async_connection_with_config(&cfg).await {
                Ok(c) => return Ok(c),
                Err(e) if e.is_io_error() || e.is_timeout() => return Err(e),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        Err(first_err.unwrap_or_else(|| (redis::ErrorKind::IoError, "sentinel unreachable").into()))
    }
}

async fn ask(conn: &mut MultiplexedConnection, cmd: &redis::Cmd, timeout: Duration) -> RedisResult<(String, u16)> {
    let answer: Option<(String, u16)> = tokio::time::timeout(timeout, cmd.query_async(conn))
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::IoError, "sentinel timed out")))??;
    answer.ok_or_else(|| (redis::ErrorKind::ResponseError, "the sentinel does not know this primary").into())
}

fn open(url: &str, ca_pem: Option<&[u8]>) -> RedisResult<redis::Client> {
    match ca_pem {
        Some(pem) if url.starts_with("rediss://") => {
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) };
            redis::Client::build_with_tls(url, certs)
        }
        _ => redis::Client::open(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sentinel_forms() {
        let u = SentinelUrl::parse("redis+sentinel://host1:26379,host2:26380/mymaster").unwrap();
        assert!(!u.tls);
        assert_eq!(u.sentinels, vec![("host1".to_owned(), 26379), ("host2".to_owned(), 26380)]);
        assert_eq!((u.service.as_str(), u.db, u.userinfo.as_deref()), ("mymaster", 0, None));

        let u = SentinelUrl::parse("rediss+sentinel://:p%40ss@[::1]:1,10.0.0.2,[fe80::1]/m-1/3").unwrap();
        assert!(u.tls);
        assert_eq!(u.userinfo.as_deref(), Some(":p%40ss"));
        assert_eq!(
            u.sentinels,
            vec![("::1".to_owned(), 1), ("10.0.0.2".to_owned(), SENTINEL_PORT), ("fe80::1".to_owned(), SENTINEL_PORT)]
        );
        assert_eq!((u.service.as_str(), u.db), ("m-1", 3));
        assert_eq!(u.node_url("::1", 1, true), "rediss://:p%40ss@[::1]:1/3");
        assert_eq!(u.node_url("h", 2, false), "rediss://h:2/3");
    }

    #[test]
    fn refuses_what_is_not_the_form() {
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel:///mymaster",
            "redis+sentinel://h1:26379,/mymaster",
            "redis+sentinel://h1:0/mymaster",
            "redis+sentinel://h1:x/mymaster",
            "redis+sentinel://h1/",
            "redis+sentinel://h1/my master",
            "redis+sentinel://h1/m/x",
            "redis+sentinel://h1/m/1/2",
            "redis+sentinel://[::1/m",
            "redis://h1/m",
        ] {
            assert!(SentinelUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn errors_never_show_the_password() {
        let e = RedisTarget::new("redis+sentinel://:hunter2@h1:bad/m", None).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
    }
}
