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
use crate::sentinel_url::{is_sentinel_url, SentinelUrl};
use crate::FleetError;

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
    fn errors_never_show_the_password() {
        let e = RedisTarget::new("redis+sentinel://:hunter2@h1:bad/m", None).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && e.contains("***"), "{e}");
    }
}
