//! [`TurnUrl`]: a `stun:` / `turn:` / `turns:` URI (RFC 7064, RFC 7065) as this project writes and
//! reads them: `turn:host:port?transport=udp`, `turn:host:port?transport=tcp`,
//! `turns:host:port?transport=tcp`, `stun:host:port`; an IPv6 host in brackets.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::{Transport, TypeError};

/// The default STUN/TURN port (`stun:`, `turn:`; RFC 8489, RFC 8656).
pub const DEFAULT_PORT: u16 = 3478;
/// The default TURN-over-TLS port (`turns:`).
pub const DEFAULT_TLS_PORT: u16 = 5349;

/// What a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlKind {
    /// `stun:` (Binding only).
    Stun,
    /// `turn:` (UDP or TCP) or `turns:` (TLS) for a client of that transport.
    Turn(Transport),
}

/// One STUN or TURN URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TurnUrl {
    /// What it is for.
    pub kind: UrlKind,
    /// A host name, an IPv4 literal or an IPv6 literal (stored without its brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// `host` as the host part of a URL: an IPv6 literal in brackets (once), anything else as is.
pub fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

impl TurnUrl {
    /// A URL of `kind` for `host` (an IPv6 literal with or without brackets) and `port`.
    pub fn new(kind: UrlKind, host: &str, port: u16) -> Self {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Self { kind, host: host.to_owned(), port }
    }

    /// A `turn:`/`turns:` URL for clients over `transport`.
    pub fn turn(transport: Transport, host: &str, port: u16) -> Self {
        Self::new(UrlKind::Turn(transport), host, port)
    }

    /// The scheme: `stun`, `turn` or `turns`.
    pub fn scheme(&self) -> &'static str {
        match self.kind {
            UrlKind::Stun => "stun",
            UrlKind::Turn(Transport::Tls) => "turns",
            UrlKind::Turn(_) => "turn",
        }
    }

    /// The transport of a TURN URL (`None` for `stun:`).
    pub fn transport(&self) -> Option<Transport> {
        match self.kind {
            UrlKind::Stun => None,
            UrlKind::Turn(t) => Some(t),
        }
    }

    /// `host:port` for resolution (an IPv6 literal in brackets).
    pub fn host_port(&self) -> String {
        format!("{}:{}", bracketed(&self.host), self.port)
    }
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scheme(), self.host_port())?;
        match self.kind {
            UrlKind::Stun => Ok(()),
            UrlKind::Turn(Transport::Udp) => f.write_str("?transport=udp"),
            UrlKind::Turn(_) => f.write_str("?transport=tcp"),
        }
    }
}

impl FromStr for TurnUrl {
    type Err = TypeError;

    /// Parses `stun:host[:port]`, `turn:host[:port][?transport=udp|tcp]` (default UDP) or
    /// `turns:host[:port][?transport=tcp]`; default ports 3478 and 5349 (`turns:`). Refused: an
    /// unknown scheme or transport, `turns:` over UDP, a transport on `stun:`, a bad host or
    /// port 0.
    fn from_str(url: &str) -> Result<Self, TypeError> {
        let bad = || TypeError::Url(url.to_owned());
        let (scheme, rest) = url.split_once(':').ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut transport = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            if k.eq_ignore_ascii_case("transport") {
                transport = Some(v.to_ascii_lowercase());
            }
        }
        let kind = match (scheme.as_str(), transport.as_deref()) {
            ("stun", None) => UrlKind::Stun,
            ("turn", None | Some("udp")) => UrlKind::Turn(Transport::Udp),
            ("turn", Some("tcp")) => UrlKind::Turn(Transport::Tcp),
            ("turns", None | Some("tcp")) => UrlKind::Turn(Transport::Tls),
            _ => return Err(bad()),
        };
        let default_port = if kind == UrlKind::Turn(Transport::Tls) { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            host.parse::<Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => default_port,
                p => p.strip_prefix(':').and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
                None => (hostport, default_port),
            }
        };
        let host_ok = !host.is_empty()
            && (host.contains(':')
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
        if !host_ok || port == 0 {
            return Err(bad());
        }
        Ok(Self { kind, host: host.to_owned(), port })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_forms_this_project_writes() {
        let cases = [
            (UrlKind::Stun, "turn.example.com", 3478, "stun:turn.example.com:3478"),
            (UrlKind::Turn(Transport::Udp), "192.0.2.1", 3478, "turn:192.0.2.1:3478?transport=udp"),
            (UrlKind::Turn(Transport::Tcp), "2001:db8::1", 3478, "turn:[2001:db8::1]:3478?transport=tcp"),
            (UrlKind::Turn(Transport::Tls), "[2001:db8::1]", 5349, "turns:[2001:db8::1]:5349?transport=tcp"),
        ];
        for (kind, host, port, text) in cases {
            let u = TurnUrl::new(kind, host, port);
            assert_eq!(u.to_string(), text);
            assert_eq!(text.parse::<TurnUrl>(), Ok(u));
        }
    }

    #[test]
    fn defaults_and_refusals() {
        let u: TurnUrl = "turns:relay.example.com".parse().unwrap();
        assert_eq!((u.kind, u.port), (UrlKind::Turn(Transport::Tls), 5349));
        let u: TurnUrl = "TURN:[::1]?transport=TCP".parse().unwrap();
        assert_eq!(
            (u.transport(), u.host.as_str(), u.port, u.host_port()),
            (Some(Transport::Tcp), "::1", 3478, "[::1]:3478".into())
        );
        for bad in [
            "turns:h?transport=udp",
            "stun:h?transport=udp",
            "turn:h?transport=sctp",
            "http://h",
            "turn:",
            "turn:h:0",
            "turn:h:x",
            "turn:[nothex]:3478",
            "turn:[::1",
            "turn:a b:3478",
        ] {
            assert!(bad.parse::<TurnUrl>().is_err(), "{bad}");
        }
        assert_eq!(bracketed("::1"), "[::1]");
        assert_eq!(bracketed("[::1]"), "[::1]");
        assert_eq!(bracketed("h.example"), "h.example");
    }

    proptest! {
        #[test]
        fn every_url_reads_back_as_written(
            v6 in any::<[u16; 8]>(),
            name in "[a-z0-9][a-z0-9.-]{0,20}",
            use_v6 in any::<bool>(),
            port in 1u16..,
            kind in 0usize..4,
        ) {
            let host = if use_v6 { Ipv6Addr::from(v6).to_string() } else { name };
            let kind = [UrlKind::Stun, UrlKind::Turn(Transport::Udp), UrlKind::Turn(Transport::Tcp), UrlKind::Turn(Transport::Tls)][kind];
            let u = TurnUrl::new(kind, &host, port);
            prop_assert_eq!(u.to_string().parse::<TurnUrl>(), Ok(u));
        }
    }
}
