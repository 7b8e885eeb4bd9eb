//! The start-up banner: the lines a newcomer copies. Every address in it is one a client can use:
//! the configured public host, else the external IP, else the relay IP; never a wildcard such as
//! `0.0.0.0` or `::` that a listener happens to be bound to.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The host a client should use: the operator's `public_host` when one is configured (anything
/// but the default `localhost`), else the external IP (1:1 NAT), else the relay IP.
pub fn usable_host(public_host: &str, external: Option<IpAddr>, relay: Option<IpAddr>) -> String {
    if !public_host.is_empty() && public_host != "localhost" {
        return public_host.to_owned();
    }
    match external.or(relay).filter(|ip| !ip.is_unspecified()) {
        Some(ip) => url_host(ip),
        None => public_host.to_owned(),
    }
}

/// `ip` as the host part of a URL (IPv6 in brackets).
fn url_host(ip: IpAddr) -> String {
    turnkey_types::bracketed(&ip.to_string()).into_owned()
}

/// `host:port` of a listener as a client reaches it: a wildcard listener is reached on `host`,
/// one bound to a specific address on that address.
pub fn reach(host: &str, addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("{host}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

/// What `turnkey serve` bound, for [`lines`].
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// The usable host ([`usable_host`]).
    pub host: &'a str,
    /// UDP listeners.
    pub udp: &'a [SocketAddr],
    /// TCP listeners.
    pub tcp: &'a [SocketAddr],
    /// TLS listeners.
    pub tls: &'a [SocketAddr],
    /// The issuer's listener.
    pub http: Option<SocketAddr>,
    /// The data directory.
    pub data_dir: &'a Path,
}

/// The human part of the banner (after the machine-readable `turnkey listening ...` line).
pub fn lines(b: &Bound<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    if let Some(a) = b.udp.first() {
        urls.push(format!("turn:{}?transport=udp", reach(b.host, *a)));
    }
    if let Some(a) = b.tcp.first() {
        urls.push(format!("turn:{}?transport=tcp", reach(b.host, *a)));
    }
    if let Some(a) = b.tls.first() {
        urls.push(format!("turns:{}?transport=tcp", reach(b.host, *a)));
    }
    let mut out = Vec::new();
    if !urls.is_empty() {
        out.push(format!("turnkey: TURN URLs: {}", urls.join(" ")));
    }
    out.push(format!(
        "turnkey: get a credential with `turnkey creds --data-dir {} --user alice`",
        b.data_dir.display()
    ));
    if let Some(h) = b.http {
        out.push(format!("turnkey: self-test page: http://{}/test", reach(b.host, h)));
    }
    out
}

/// The `curl` line that mints ICE servers from the issuer at `base` (`http://host:port`).
pub fn issuer_hint(base: &str, token: &str, key_id: &str) -> String {
    format!(
        "curl -X POST -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' -d '{{\"ttl\": 86400}}' {base}/v1/turn/keys/{key_id}/credentials/generate-ice-servers"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn host_prefers_public_host_then_external_then_relay() {
        assert_eq!(usable_host("turn.example.com", ip("203.0.113.9"), ip("10.0.0.2")), "turn.example.com");
        assert_eq!(usable_host("localhost", ip("203.0.113.9"), ip("10.0.0.2")), "203.0.113.9");
        assert_eq!(usable_host("localhost", None, ip("10.0.0.2")), "10.0.0.2");
        assert_eq!(usable_host("localhost", None, ip("2001:db8::5")), "[2001:db8::5]");
        assert_eq!(usable_host("localhost", None, ip("0.0.0.0")), "localhost");
        assert_eq!(usable_host("localhost", None, None), "localhost");
    }

    #[test]
    fn banner_never_names_a_wildcard() {
        let wild: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()];
        let tls: Vec<SocketAddr> = vec!["[::]:5349".parse().unwrap()];
        let b = Bound {
            host: "192.168.1.20",
            udp: &wild,
            tcp: &wild,
            tls: &tls,
            http: Some("0.0.0.0:8080".parse().unwrap()),
            data_dir: Path::new("./turnkey-data"),
        };
        let text = lines(&b).join("\n");
        assert!(text.contains(
            "turn:192.168.1.20:3478?transport=udp turn:192.168.1.20:3478?transport=tcp turns:192.168.1.20:5349?transport=tcp"
        ));
        assert!(text.contains("http://192.168.1.20:8080/test"));
        assert!(!text.contains("0.0.0.0") && !text.contains("[::]"), "{text}");
    }

    #[test]
    fn specific_listeners_are_named_as_bound() {
        let udp: Vec<SocketAddr> = vec!["127.0.0.1:40000".parse().unwrap()];
        let b = Bound {
            host: "10.0.0.2",
            udp: &udp,
            tcp: &[],
            tls: &[],
            http: Some("127.0.0.1:8081".parse().unwrap()),
            data_dir: Path::new("/var/lib/turnkey"),
        };
        let l = lines(&b);
        assert_eq!(l[0], "turnkey: TURN URLs: turn:127.0.0.1:40000?transport=udp");
        assert_eq!(l[1], "turnkey: get a credential with `turnkey creds --data-dir /var/lib/turnkey --user alice`");
        assert_eq!(l[2], "turnkey: self-test page: http://127.0.0.1:8081/test");
        assert_eq!(reach("h", "[::1]:80".parse().unwrap()), "[::1]:80");
    }
}
