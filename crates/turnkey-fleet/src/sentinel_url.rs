//! A Sentinel URL taken apart (`redis+sentinel://[:password@]host1:26379,host2:26379/mymaster[/db]`,
//! `rediss+sentinel://` for TLS): pure parsing, no I/O. A leaf: the settings check it
//! ([`crate::config`]) and the connection follows it ([`crate::target`]).

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
    pub(crate) fn node_url(&self, host: &str, port: u16, with_auth: bool) -> String {
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
}
