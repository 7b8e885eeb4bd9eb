//! Browser origins: which entries `app.allowed_origins` may hold, and the same-origin test of the
//! CORS middleware.
//!
//! An allowed origin is compared byte for byte with the request's `Origin` header, so an entry is
//! accepted only in the form a browser sends (anything else could never match, and is a typo):
//! - `https://host[:port]` or `http://host[:port]`: lowercase host name, IPv4 literal or
//!   bracketed IPv6 literal; no path (not even `/`), query, user info or wildcard; port 1-65535;
//! - `chrome-extension://<id>`: a Chromium extension (Chrome, Edge, ...); the id is 32 letters
//!   `a`-`p`;
//! - `moz-extension://<uuid>`: a Firefox extension's per-installation UUID, lowercase
//!   `8-4-4-4-12` hex.

/// Why an `allowed_origins` entry is refused, or `Ok` when a browser could send it as `Origin`.
pub fn check_allowed_origin(origin: &str) -> Result<(), &'static str> {
    if let Some(id) = origin.strip_prefix("chrome-extension://") {
        return if id.len() == 32 && id.bytes().all(|b| (b'a'..=b'p').contains(&b)) {
            Ok(())
        } else {
            Err("a chrome-extension:// origin needs the exact extension id (32 letters a-p), nothing after it")
        };
    }
    if let Some(uuid) = origin.strip_prefix("moz-extension://") {
        return if is_lower_uuid(uuid) {
            Ok(())
        } else {
            Err("a moz-extension:// origin needs the exact lowercase UUID (8-4-4-4-12 hex), nothing after it")
        };
    }
    let Some(authority) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else {
        return Err("an origin must start with https://, http://, chrome-extension:// or moz-extension://");
    };
    let (host, port) = split_port(authority).ok_or("the port must be a number from 1 to 65535")?;
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err("the port must be a number from 1 to 65535");
    }
    if port.and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| p == 0 || p > 65_535) {
        return Err("the port must be a number from 1 to 65535");
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok() && v6.bytes().all(|b| !b.is_ascii_uppercase())
    } else {
        !host.is_empty()
            && !host.starts_with('.')
            && !host.starts_with('-')
            && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    };
    if host_ok {
        Ok(())
    } else {
        Err("an origin is scheme://host[:port] with a lowercase host and no path, '*', '/', query or user")
    }
}

/// `host` and the text after its port colon, if any. `None` for an empty port after a colon.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let after_host = if authority.starts_with('[') { authority.find(']').map_or(0, |i| i + 1) } else { 0 };
    match authority[after_host..].find(':') {
        Some(i) => {
            let (host, port) = authority.split_at(after_host + i);
            let port = &port[1..];
            (!port.is_empty()).then_some((host, Some(port)))
        }
        None => Some((authority, None)),
    }
}

fn is_lower_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Whether `origin` is `http(s)://<host>` for the request's own `Host` header.
pub(crate) fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_origins_are_accepted() {
        for ok in [
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "https://app.example.com:8443",
            "http://[::1]:3000",
            "http://localhost",
            "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb",
            "moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2f",
        ] {
            assert_eq!(check_allowed_origin(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_a_browser_would_not_send_is_refused() {
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://APP.example.com",
            "https://user@app.example.com",
            "https://app.example.com:",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:80a",
            "https://app.example.com?x=1",
            "https://",
            "ftp://app.example.com",
            "app.example.com",
            "null",
            "chrome-extension://",
            "chrome-extension://*",
            "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb/",
            "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcq",
            "chrome-extension://GJIAJDNNDCDBGGGOPKGJIOIFKNKMKLCB",
            "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklc",
            "moz-extension://0F9C0A1E-4B6D-4C1A-9E2F-3A5B7C9D1E2F",
            "moz-extension://0f9c0a1e4b6d4c1a9e2f3a5b7c9d1e2f",
            "moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2f/",
            "moz-extension://*",
        ] {
            assert!(check_allowed_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn same_origin_is_exact() {
        assert!(same_origin("https://issuer.example.com", "issuer.example.com"));
        assert!(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(!same_origin("https://issuer.example.com.evil.net", "issuer.example.com"));
        assert!(!same_origin("https://evil.net", "issuer.example.com"));
        assert!(!same_origin("null", "issuer.example.com"));
        assert!(!same_origin("chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb", "issuer.example.com"));
    }
}
