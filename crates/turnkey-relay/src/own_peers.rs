//! Which of the relay process's own addresses clients may reach as peers: the one rule the
//! binary composes its [`PeerPolicy`] with (security.md, "the relay's own addresses").
//!
//! - Every service socket of the process (the UDP/TCP/TLS listeners, the issuer's HTTP and the
//!   `/metrics` listener) is denied as a peer; a wildcard bind (`0.0.0.0`, `[::]`) denies its port
//!   on every address.
//! - The relay's relayed addresses (its relay IPs and the external IPs advertised for them,
//!   inside the relay port range) are allowed, even on a private network, so two allocations of
//!   this relay can reach each other. Service sockets and operator deny rules still win.
//! - Everything else is the operator's rules over the special-purpose ranges ([`PeerPolicy`]).

use std::net::{IpAddr, SocketAddr};

use crate::policy::{PeerPolicy, PeerRule, ServiceAddr};
use crate::udp::RelayAddrs;

/// The peer policy of a relay serving `relay`, with the operator's `allow` and `deny` rules and
/// the process's own service sockets `services` (bound addresses, ports resolved).
#[must_use]
pub fn relay_peer_policy(
    allow: Vec<PeerRule>,
    deny: Vec<PeerRule>,
    services: impl IntoIterator<Item = SocketAddr>,
    relay: &RelayAddrs,
) -> PeerPolicy {
    let service = services.into_iter().map(ServiceAddr::from).collect();
    PeerPolicy::new(allow, deny, service).with_own_relays(own_ips(relay), relay.ports.clone())
}

/// The relay's relayed IPs: where relay sockets bind and what is advertised for them.
fn own_ips(relay: &RelayAddrs) -> impl Iterator<Item = IpAddr> {
    [relay.v4, relay.v6, relay.external_v4, relay.external_v6].into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use crate::policy::{DenyReason, Verdict};

    use super::*;

    const RELAY: &str = "10.0.0.5";
    const PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

    fn relay(v4: &str) -> RelayAddrs {
        RelayAddrs { v4: Some(v4.parse().unwrap()), v6: None, external_v4: None, external_v6: None, ports: PORTS }
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rules(v: &[&str]) -> Vec<PeerRule> {
        v.iter().map(|r| r.parse().unwrap()).collect()
    }

    fn deny(reason: DenyReason) -> Verdict {
        Verdict::Deny(reason)
    }

    #[test]
    fn the_relays_own_addresses_inside_the_relay_ports_are_reachable() {
        let p = relay_peer_policy(vec![], vec![], [], &relay(RELAY));
        // Two allocations of this relay on a private network reach each other.
        assert_eq!(p.check(at("10.0.0.5:50000")), Verdict::Allow);
        assert_eq!(p.check(at("[::ffff:10.0.0.5]:50000")), Verdict::Allow, "the IPv4-mapped form too");
        // Outside the relay port range, and other private addresses: special-purpose, denied.
        assert_eq!(p.check(at("10.0.0.5:22")), deny(DenyReason::SpecialPurpose));
        assert_eq!(p.check(at("10.0.0.6:50000")), deny(DenyReason::SpecialPurpose));
        assert_eq!(p.check(at("127.0.0.1:50000")), deny(DenyReason::SpecialPurpose));
        // Public peers are allowed as always; other special-purpose ranges stay denied.
        assert_eq!(p.check(at("8.8.8.8:53")), Verdict::Allow);
        assert_eq!(p.check(at("203.0.113.9:50000")), deny(DenyReason::SpecialPurpose));
    }

    #[test]
    fn external_and_ipv6_relay_addresses_count_as_own() {
        let r = RelayAddrs {
            v4: Some("10.0.0.5".parse().unwrap()),
            v6: Some("fd00::5".parse().unwrap()),
            external_v4: Some("192.168.1.20".parse().unwrap()),
            external_v6: Some("fd00::99".parse().unwrap()),
            ports: 40000..=40100,
        };
        let p = relay_peer_policy(vec![], vec![], [], &r);
        for own in ["10.0.0.5:40000", "[fd00::5]:40100", "192.168.1.20:40050", "[fd00::99]:40001"] {
            assert_eq!(p.check(at(own)), Verdict::Allow, "{own}");
        }
        assert_eq!(p.check(at("[fd00::5]:40101")), deny(DenyReason::SpecialPurpose));
        assert_eq!(p.own_relays().0.len(), 4);
    }

    #[test]
    fn a_wildcard_relay_address_allows_nothing_as_own() {
        let p = relay_peer_policy(vec![], vec![], [], &relay("0.0.0.0"));
        assert!(p.own_relays().0.is_empty());
        assert_eq!(p.check(at("10.0.0.5:50000")), deny(DenyReason::SpecialPurpose));
        assert_eq!(p.check(at("0.0.0.0:50000")), deny(DenyReason::SpecialPurpose));
    }

    #[test]
    fn service_sockets_are_never_peers_and_a_wildcard_bind_closes_its_port_everywhere() {
        // A UDP listener on every address, the issuer on the relay IP inside the relay port
        // range, /metrics on loopback.
        let services = [at("0.0.0.0:3478"), at("10.0.0.5:50080"), at("127.0.0.1:9090")];
        let p = relay_peer_policy(vec![], vec![], services, &relay(RELAY));
        assert_eq!(p.check(at("10.0.0.5:3478")), deny(DenyReason::ServicePort));
        assert_eq!(p.check(at("8.8.8.8:3478")), deny(DenyReason::ServicePort), "a wildcard bind: every address");
        assert_eq!(p.check(at("[2001:4860::8888]:3478")), deny(DenyReason::ServicePort));
        // A service socket inside the relay port range wins over the own-address allowance, on
        // its own address only.
        assert_eq!(p.check(at("10.0.0.5:50080")), deny(DenyReason::ServicePort));
        assert_eq!(p.check(at("10.0.0.5:50081")), Verdict::Allow);
        assert_eq!(p.check(at("8.8.8.8:50080")), Verdict::Allow);
        // A service bound to one address closes that address's port only.
        assert_eq!(p.check(at("127.0.0.1:9090")), deny(DenyReason::ServicePort));
        assert_eq!(p.check(at("8.8.8.8:9090")), Verdict::Allow);
    }

    #[test]
    fn operator_rules_reopen_other_addresses_and_close_own_ones() {
        let allow = rules(&["10.0.0.0/8"]);
        let p = relay_peer_policy(allow, vec![], [at("[::]:3478")], &relay(RELAY));
        // The allow rule reopens the private range, on any port but the service port.
        assert_eq!(p.check(at("10.0.0.6:22")), Verdict::Allow);
        assert_eq!(p.check(at("10.0.0.6:3478")), deny(DenyReason::ServicePort));
        // A deny rule closes even the relay's own relayed addresses.
        let deny_rules = rules(&["10.0.0.5/32"]);
        let p = relay_peer_policy(vec![], deny_rules, [], &relay(RELAY));
        assert_eq!(p.check(at("10.0.0.5:50000")), deny(DenyReason::OperatorRule));
        assert_eq!(p.check_permission("10.0.0.5".parse().unwrap()), deny(DenyReason::OperatorRule));
    }
}
