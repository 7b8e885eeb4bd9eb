//! The start-up banner: the lines a newcomer copies. Every address in it is one a client can use,
//! named by the rule the issuer's answers and the fleet heartbeat share ([`Reach`],
//! `advertise.rs`); never a wildcard such as `0.0.0.0` or `::` that a listener happens to be
//! bound to.

use std::net::SocketAddr;

use crate::advertise::Reach;

/// What `turnkey serve` bound, for [`lines`].
#[derive(Debug, Clone, Copy)]
pub struct Bound<'a> {
    /// How clients reach each listener (the one rule).
    pub reach: &'a Reach,
    /// UDP listeners.
    pub udp: &'a [SocketAddr],
    /// TCP listeners.
    pub tcp: &'a [SocketAddr],
    /// TLS listeners.
    pub tls: &'a [SocketAddr],
    /// The issuer's listener.
    pub http: Option<SocketAddr>,
    /// The `turnkey creds` command minting with this process's secret (`secret::creds_command`).
    pub creds: &'a str,
}

/// The human part of the banner (after the machine-readable `turnkey listening ...` line).
pub fn lines(b: &Bound<'_>) -> Vec<String> {
    let first = |addrs: &[SocketAddr]| addrs.first().copied().into_iter().collect::<Vec<_>>();
    let urls: Vec<String> =
        b.reach.urls(&first(b.udp), &first(b.tcp), &first(b.tls)).into_iter().map(|u| u.url).collect();
    let mut out = Vec::new();
    if !urls.is_empty() {
        out.push(format!("turnkey: TURN URLs: {}", urls.join(" ")));
    }
    out.push(format!("turnkey: get a credential with `{}`", b.creds));
    if let Some(h) = b.http {
        out.push(format!("turnkey: self-test page: http://{}/test", b.reach.addr(h)));
    }
    out
}

/// The `curl` line that mints ICE servers from the issuer at `base` (`http://host:port`).
pub fn issuer_hint(base: &str, token: &str, key_id: &str) -> String {
    let ttl = turnkey_issuer::DEFAULT_TTL;
    format!(
        "curl -X POST -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' -d '{{\"ttl\": {ttl}}}' {base}/v1/turn/keys/{key_id}/credentials/generate-ice-servers"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn reach(public_host: &str, relay_ip: &str) -> Reach {
        let relay = turnkey_relay::udp::RelayAddrs {
            v4: Some(relay_ip.parse().unwrap()),
            v6: None,
            external_v4: None,
            external_v6: None,
            ports: 49152..=65535,
        };
        Reach::new(public_host, &relay)
    }

    #[test]
    fn banner_never_names_a_wildcard() {
        let wild: Vec<SocketAddr> = vec!["0.0.0.0:3478".parse().unwrap(), "[::]:3478".parse().unwrap()];
        let tls: Vec<SocketAddr> = vec!["[::]:5349".parse().unwrap()];
        let reach = reach("localhost", "192.168.1.20");
        let b = Bound {
            reach: &reach,
            udp: &wild,
            tcp: &wild,
            tls: &tls,
            http: Some("0.0.0.0:8080".parse().unwrap()),
            creds: "turnkey creds --data-dir ./turnkey-data --user alice",
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
        let reach = reach("localhost", "10.0.0.2");
        let b = Bound {
            reach: &reach,
            udp: &udp,
            tcp: &[],
            tls: &[],
            http: Some("127.0.0.1:8081".parse().unwrap()),
            creds: "turnkey creds --data-dir /var/lib/turnkey --user alice",
        };
        let l = lines(&b);
        assert_eq!(l[0], "turnkey: TURN URLs: turn:127.0.0.1:40000?transport=udp");
        assert_eq!(l[1], "turnkey: get a credential with `turnkey creds --data-dir /var/lib/turnkey --user alice`");
        assert_eq!(l[2], "turnkey: self-test page: http://127.0.0.1:8081/test");
    }
}
