//! The one rule for the address a client uses to reach this process, shared by everything that
//! names it: the start-up banner, the in-process issuer's answers and the fleet heartbeat. What
//! the banner prints is what the issuer hands out and what the fleet lists.
//!
//! For a listener, in order: the operator's `public_host` (anything but the issuer's default
//! `localhost`); else the external IP of the listener's family (1:1 NAT); else the listener's own
//! IP when it is bound to one; else the relay IP of its family. A wildcard listener (`0.0.0.0`,
//! `::`) takes the other family's address when its own has none (an IPv6 wildcard socket also
//! accepts IPv4). Never an unspecified address.

use std::net::{IpAddr, SocketAddr};

use turnkey_fleet::{AdvertisedUrl, Transport};
use turnkey_issuer::{AdvertiseConfig, Endpoint};
use turnkey_relay::udp::RelayAddrs;
use turnkey_types::TurnUrl;

/// The inputs of the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    public_host: Option<String>,
    external: [Option<IpAddr>; 2],
    relay: [Option<IpAddr>; 2],
}

impl Reach {
    /// From `[issuer] public_host` and the relay's addresses (relay IP, external IP).
    pub fn new(public_host: &str, relay: &RelayAddrs) -> Self {
        let public = public_host.trim();
        let configured = !public.is_empty() && public != turnkey_issuer::IssuerConfig::default().public_host;
        let usable = |ip: Option<IpAddr>| ip.filter(|ip| !ip.is_unspecified());
        Self {
            public_host: configured.then(|| bracket(public)),
            external: [usable(relay.external_v4), usable(relay.external_v6)],
            relay: [usable(relay.v4), usable(relay.v6)],
        }
    }

    /// The host (IPv6 in brackets) a client uses for `listener`, if any.
    pub fn host(&self, listener: SocketAddr) -> Option<String> {
        if let Some(h) = &self.public_host {
            return Some(h.clone());
        }
        let (own, other) = if listener.is_ipv4() { (0, 1) } else { (1, 0) };
        let bound = (!listener.ip().is_unspecified()).then_some(listener.ip());
        let wildcard = bound.is_none();
        self.external[own]
            .or(bound)
            .or(self.relay[own])
            .or(self.external[other].filter(|_| wildcard))
            .or(self.relay[other].filter(|_| wildcard))
            .map(url_host)
    }

    /// `host:port` for `listener`; `localhost` when the rule finds no host (loopback-only hosts).
    pub fn addr(&self, listener: SocketAddr) -> String {
        let host = self.host(listener).unwrap_or_else(|| "localhost".to_owned());
        format!("{host}:{}", listener.port())
    }

    /// The TURN URLs of `udp`, `tcp` and `tls` listeners, one per distinct URL, in that order.
    pub fn urls(&self, udp: &[SocketAddr], tcp: &[SocketAddr], tls: &[SocketAddr]) -> Vec<AdvertisedUrl> {
        let groups = [(Transport::Udp, udp), (Transport::Tcp, tcp), (Transport::Tls, tls)];
        let mut out: Vec<AdvertisedUrl> = Vec::new();
        for (transport, addrs) in groups {
            for a in addrs {
                let Some(h) = self.host(*a) else { continue };
                let url = TurnUrl::turn(transport, &h, a.port()).to_string();
                if !out.iter().any(|u| u.url == url) {
                    out.push(AdvertisedUrl { transport, url });
                }
            }
        }
        out
    }

    /// What the in-process issuer advertises: every listener on the host of this rule (STUN on
    /// the UDP listeners).
    pub fn issuer_endpoints(&self, udp: &[SocketAddr], tcp: &[SocketAddr], tls: &[SocketAddr]) -> AdvertiseConfig {
        let endpoints = |addrs: &[SocketAddr]| -> Vec<Endpoint> {
            let mut out: Vec<Endpoint> = Vec::new();
            for a in addrs {
                let Some(host) = self.host(*a) else { continue };
                let e = Endpoint { host: Some(host), port: a.port() };
                if !out.contains(&e) {
                    out.push(e);
                }
            }
            out
        };
        let udp = endpoints(udp);
        AdvertiseConfig { stun: udp.clone(), turn_udp: udp, turn_tcp: endpoints(tcp), turns_tls: endpoints(tls) }
    }
}

/// `ip` as the host part of a URL (IPv6 in brackets).
fn url_host(ip: IpAddr) -> String {
    bracket(&ip.to_string())
}

fn bracket(host: &str) -> String {
    turnkey_types::bracketed(host).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn relay(v4: Option<&str>, v6: Option<&str>, ext4: Option<&str>) -> RelayAddrs {
        let ip = |s: Option<&str>| s.map(|s| s.parse().unwrap());
        RelayAddrs { v4: ip(v4), v6: ip(v6), external_v4: ip(ext4), external_v6: None, ports: 49152..=65535 }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn public_host_then_external_then_listener_then_relay() {
        let r = relay(Some("10.0.0.2"), None, Some("203.0.113.9"));
        assert_eq!(Reach::new("turn.example.com", &r).addr(a("127.0.0.1:3478")), "turn.example.com:3478");
        assert_eq!(Reach::new("localhost", &r).addr(a("0.0.0.0:3478")), "203.0.113.9:3478");
        assert_eq!(Reach::new("localhost", &r).addr(a("10.0.0.2:3478")), "203.0.113.9:3478");
        let r = relay(Some("10.0.0.2"), None, None);
        assert_eq!(Reach::new("localhost", &r).addr(a("127.0.0.1:40000")), "127.0.0.1:40000");
        assert_eq!(Reach::new("localhost", &r).addr(a("0.0.0.0:3478")), "10.0.0.2:3478");
        assert_eq!(Reach::new("", &r).addr(a("[::]:3478")), "10.0.0.2:3478", "a v6 wildcard also takes v4");
        let r6 = relay(None, Some("2001:db8::5"), None);
        assert_eq!(Reach::new("localhost", &r6).addr(a("[::]:3478")), "[2001:db8::5]:3478");
        assert_eq!(Reach::new("2001:db8::7", &r6).addr(a("[::]:3478")), "[2001:db8::7]:3478");
        let none = relay(Some("0.0.0.0"), None, None);
        assert_eq!(Reach::new("localhost", &none).host(a("0.0.0.0:3478")), None);
        assert_eq!(Reach::new("localhost", &none).addr(a("0.0.0.0:3478")), "localhost:3478");
    }

    #[test]
    fn banner_urls_and_issuer_endpoints_name_the_same_hosts() {
        let r = Reach::new("localhost", &relay(Some("192.168.1.20"), None, None));
        let udp = [a("0.0.0.0:3478"), a("[::]:3478")];
        let tls = [a("[::]:5349")];
        let urls: Vec<String> = r.urls(&udp, &udp, &tls).into_iter().map(|u| u.url).collect();
        assert_eq!(
            urls,
            [
                "turn:192.168.1.20:3478?transport=udp",
                "turn:192.168.1.20:3478?transport=tcp",
                "turns:192.168.1.20:5349?transport=tcp"
            ]
        );
        let adv = r.issuer_endpoints(&udp, &udp, &tls);
        assert_eq!(adv.turn_udp, vec![Endpoint { host: Some("192.168.1.20".into()), port: 3478 }]);
        assert_eq!(adv.turns_tls, vec![Endpoint { host: Some("192.168.1.20".into()), port: 5349 }]);
    }
}
