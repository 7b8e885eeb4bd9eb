//! # Peer policy: where the relay may send
//!
//! A TURN relay sends packets wherever its clients ask. [`PeerPolicy`] decides, for a peer
//! transport address from CreatePermission, ChannelBind, a Send indication or the relay socket,
//! whether the relay may talk to it. It is pure (no I/O, no clock), built once at startup and
//! read-only afterwards (`Clone + Send + Sync`, cheap to clone); [`PeerPolicy::check`] does not
//! allocate.
//!
//! ## Decision order
//!
//! For a peer `ip:port`, [`PeerPolicy::check`] answers, in this order:
//!
//! 1. **Port 0** is always denied ([`DenyReason::Port0`]).
//! 2. **The relay's own service addresses** ([`ServiceAddr`]: its listening, issuer and metrics
//!    sockets) are always denied ([`DenyReason::ServicePort`]), whatever the allow rules say. A
//!    service bound to a wildcard address (`0.0.0.0`, `[::]`, or `ip: None`) denies its port on
//!    **every** peer address: the relay cannot know every address that reaches it (loopback,
//!    every interface, NAT hairpins), so the safe reading is to close the port everywhere.
//! 3. **Operator deny rules** ([`DenyReason::OperatorRule`]) beat everything below.
//! 4. **The relay's own relayed addresses** ([`PeerPolicy::with_own_relays`]: its relay and
//!    external IPs, inside its relay port range) are allowed, even where the IP is private or
//!    loopback. Such a peer is only ever another allocation of this same relay, and that
//!    allocation must itself have granted a permission before any packet reaches its client:
//!    this is what lets two callers on the relay's own network (the on-prem case, and the
//!    self-test page's relay-only call) talk through it. The match is exact: the address itself
//!    (or its IPv4-mapped form), never a re-encoded IPv6 form of it, a neighbouring address or a
//!    port one outside the range.
//! 5. **Special-purpose ranges** ([`SPECIAL_PURPOSE_V4`], [`SPECIAL_PURPOSE_V6`]; the lists of
//!    `security.md`) are denied by default ([`DenyReason::SpecialPurpose`]); an operator allow
//!    rule (CIDR, optionally with ports) covering the address reopens it. This is how tests and
//!    demos relay over loopback: an explicit allow rule for `127.0.0.1`.
//! 6. Anything else is allowed.
//!
//! A permission (CreatePermission) is for an IP, never a port (RFC 8656 §9):
//! [`PeerPolicy::check_permission`] allows an IP when `check` allows it on at least one port,
//! whatever port (0 included) the request carried. ChannelBind and Send name a port and go
//! through `check` itself, so service ports and port-limited rules still hold for every packet
//! the relay sends.
//!
//! ## IPv4 hidden in IPv6
//!
//! The classic bypass is to re-encode a private IPv4 address as IPv6. Before checking, the peer
//! address is normalised:
//!
//! - **IPv4-mapped** `::ffff:a.b.c.d` (`::ffff:0:0/96`) *is* the IPv4 address (a dual-stack
//!   socket sends it as IPv4), so it is replaced by `a.b.c.d` entirely and gets exactly the
//!   verdict of `a.b.c.d`. Rules written in mapped form (`::ffff:10.0.0.0/104`) are converted to
//!   IPv4 rules likewise; other IPv6 rules never match a mapped peer.
//! - Every other IPv4-in-IPv6 form keeps its IPv6 address **and** yields one or more embedded
//!   IPv4 addresses. Both are checked: the IPv6 address against the IPv6 list and rules, each
//!   embedded IPv4 address against the IPv4 list and rules. The peer is denied if any of them is
//!   denied ([`DenyReason::EmbeddedSpecialPurpose`] when only an embedded address is). So an
//!   allow rule for `2002::/16` reopens 6to4 in general but never `2002:c0a8:101::` (which
//!   carries 192.168.1.1) unless 192.168.1.1 is itself allowed. The forms:
//!   - IPv4-compatible `::/96`: the last 32 bits (so `::` is `0.0.0.0`, `::1` is `0.0.0.1`);
//!   - NAT64 well-known prefix `64:ff9b::/96` (RFC 6052): the last 32 bits;
//!   - NAT64 local-use prefix `64:ff9b:1::/48` (RFC 8215). A network may use any RFC 6052
//!     prefix length inside this /48, and the relay cannot know which, so **every** placement
//!     that fits is extracted: /48 (bits 48..64 and 72..88, skipping the u-octet), /56, /64 and
//!     /96. Checking only the /48 placement would let `64:ff9b:1:abcd:7f:0:1::` through under an
//!     allow rule for the prefix on a /64 translator: `64:ff9b:1:abcd:7f:0:100:0` reads as
//!     171.205.127.0 under /48 but is translated to 127.0.0.1 by a /64 translator. The price: to use this prefix at all, an operator must
//!     allow it *and* every placement must decode to a permitted IPv4 address;
//!   - 6to4 `2002::/16` (RFC 3056): bits 16..48;
//!   - Teredo `2001::/32` (RFC 4380): the server (bits 32..64) and the client (the bitwise NOT
//!     of the last 32 bits);
//!   - IPv4-translated `::ffff:0:0:0/96` (RFC 2765 SIIT): the last 32 bits. This form is not in
//!     the IPv6 deny list; extracting it only ever denies more.
//!
//! Operator deny rules and service addresses are matched against every form too.
//!
//! ## Rule syntax ([`PeerRule`])
//!
//! ```text
//! 203.0.113.0/24            an IPv4 network, all ports
//! 127.0.0.1                 a single IPv4 address (= /32), all ports
//! 10.0.0.0/8:53             port 53 only
//! 127.0.0.1:4000-5000       an inclusive port range
//! 2001:db8::/32             an IPv6 network, all ports (no brackets needed without ports)
//! ::1                       a single IPv6 address (= /128)
//! [::1]:4000-5000           IPv6 with ports: brackets required
//! [2001:db8::]/32:443       the prefix length after the bracket...
//! [2001:db8::/32]:443       ...or inside it
//! ```
//!
//! A network with host bits set (`10.0.0.1/8`) is rejected rather than silently truncated: it
//! is usually a typo. An IPv6 rule with ports must use brackets: `::1:80` is the IPv6 address
//! `::1:80`, not port 80.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// IPv4 special-purpose ranges denied by default (security.md, "Peer policy").
/// `255.255.255.255` is inside `240.0.0.0/4`.
pub const SPECIAL_PURPOSE_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 31, 196, 0), 24),
    (Ipv4Addr::new(192, 52, 193, 0), 24),
    (Ipv4Addr::new(192, 88, 99, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(192, 175, 48, 0), 24),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 special-purpose ranges denied by default (security.md, "Peer policy").
pub const SPECIAL_PURPOSE_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

/// An operator allow or deny rule: a network and an optional inclusive port range.
///
/// Parse one with [`str::parse`] (syntax in the [module docs](self)) or build one with
/// [`PeerRule::new`]. [`Display`](fmt::Display) prints the canonical form, which parses back
/// to the same rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerRule {
    net: IpNet,
    ports: Option<(u16, u16)>,
}

impl PeerRule {
    /// A rule for `net` (host bits are cleared) and, if given, the inclusive port range
    /// `first..=last`. Fails if `first > last`.
    pub fn new(net: IpNet, ports: Option<(u16, u16)>) -> Result<Self, PolicyError> {
        if let Some((first, last)) = ports {
            if first > last {
                return Err(PolicyError::EmptyPortRange { rule: format!("{net}:{first}-{last}"), first, last });
            }
        }
        Ok(Self { net: net.trunc(), ports })
    }

    /// The network this rule covers.
    #[must_use]
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The inclusive port range, or `None` for every port.
    #[must_use]
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }

    /// Whether the rule covers `ip:port`. `ip` must already be normalised (no IPv4-mapped).
    #[inline]
    fn matches(&self, ip: IpAddr, port: u16) -> bool {
        let port_ok = match self.ports {
            None => true,
            Some((first, last)) => first <= port && port <= last,
        };
        port_ok && self.net.contains(&ip)
    }

    /// Rules written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`) become IPv4 rules, because
    /// mapped peers are checked as IPv4.
    fn canonical(self) -> Self {
        if let IpNet::V6(v6) = self.net {
            if v6.prefix_len() >= 96 {
                if let Some(v4) = v6.network().to_ipv4_mapped() {
                    if let Ok(net) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                        return Self { net: IpNet::V4(net), ports: self.ports };
                    }
                }
            }
        }
        self
    }
}

impl FromStr for PeerRule {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rule = s.trim();
        if rule.is_empty() {
            return Err(PolicyError::Empty);
        }
        let (net, port_part) = if let Some(rest) = rule.strip_prefix('[') {
            let Some(close) = rest.find(']') else {
                return Err(PolicyError::UnclosedBracket { rule: rule.into() });
            };
            let inside = &rest[..close];
            let after = &rest[close + 1..];
            // `[addr]/len:ports`, `[addr/len]:ports`, `[addr]:ports`, `[addr]/len`, `[addr]`.
            let (len_part, port_part) = match after.find(':') {
                Some(colon) => (&after[..colon], Some(&after[colon + 1..])),
                None => (after, None),
            };
            let net = match len_part {
                "" => parse_net(rule, inside)?,
                _ => match len_part.strip_prefix('/') {
                    Some(len) if !inside.contains('/') => parse_net_parts(rule, inside, Some(len))?,
                    _ => return Err(PolicyError::Malformed { rule: rule.into(), detail: "unexpected text after `]`" }),
                },
            };
            if !net.addr().is_ipv6() {
                return Err(PolicyError::Malformed {
                    rule: rule.into(),
                    detail: "brackets are only for IPv6; write IPv4 rules as `a.b.c.d/len:ports`",
                });
            }
            (net, port_part)
        } else {
            match rule.matches(':').count() {
                // An IPv4 network, or an IPv6 network without ports.
                0 => (parse_net(rule, rule)?, None),
                1 => {
                    let (net, ports) = rule.split_once(':').unwrap_or((rule, ""));
                    let net = parse_net(rule, net)?;
                    if !net.addr().is_ipv4() {
                        return Err(PolicyError::Malformed {
                            rule: rule.into(),
                            detail: "IPv6 rules with ports need brackets: `[addr]/len:ports`",
                        });
                    }
                    (net, Some(ports))
                }
                _ => (parse_net(rule, rule)?, None),
            }
        };
        let ports = match port_part {
            None => None,
            Some(p) => Some(parse_ports(rule, p)?),
        };
        PeerRule::new(net, ports)
    }
}

impl fmt::Display for PeerRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.net, self.ports) {
            (net, None) => write!(f, "{net}"),
            (IpNet::V4(net), Some(ports)) => write!(f, "{net}:{}", DisplayPorts(ports)),
            (IpNet::V6(net), Some(ports)) => write!(f, "[{}]/{}:{}", net.addr(), net.prefix_len(), DisplayPorts(ports)),
        }
    }
}

/// One of the relay's own service sockets (client listener, issuer, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceAddr {
    /// The bound address; `None` (or an unspecified address) means a wildcard listener, whose
    /// port is then denied on every peer address.
    pub ip: Option<IpAddr>,
    /// The bound port.
    pub port: u16,
}

impl From<SocketAddr> for ServiceAddr {
    /// A bound socket address; `0.0.0.0` and `[::]` become wildcards.
    fn from(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_canonical();
        Self { ip: (!ip.is_unspecified()).then_some(ip), port: addr.port() }
    }
}

/// Why a peer was denied. [`DenyReason::as_str`] is a stable metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// Port 0 is never a valid peer port.
    Port0,
    /// The relay's own listening, issuer or metrics address.
    ServicePort,
    /// An operator deny rule matched.
    OperatorRule,
    /// The address is in a special-purpose range and no allow rule reopens it.
    SpecialPurpose,
    /// An IPv4 address embedded in the IPv6 peer address (NAT64, 6to4, Teredo, ...) is in a
    /// special-purpose range and no allow rule reopens it.
    EmbeddedSpecialPurpose,
}

impl DenyReason {
    /// Every reason, e.g. to pre-register metric label values.
    pub const ALL: [DenyReason; 5] = [
        DenyReason::Port0,
        DenyReason::ServicePort,
        DenyReason::OperatorRule,
        DenyReason::SpecialPurpose,
        DenyReason::EmbeddedSpecialPurpose,
    ];

    /// A stable, lowercase label for metrics and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::Port0 => "port_0",
            DenyReason::ServicePort => "service_port",
            DenyReason::OperatorRule => "operator_rule",
            DenyReason::SpecialPurpose => "special_purpose",
            DenyReason::EmbeddedSpecialPurpose => "embedded_special_purpose",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`PeerPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The relay may exchange packets with this peer.
    Allow,
    /// The relay must not; the reason is for metrics and logs, never for the client.
    Deny(DenyReason),
}

impl Verdict {
    /// `true` for [`Verdict::Allow`].
    #[must_use]
    pub fn is_allowed(self) -> bool {
        matches!(self, Verdict::Allow)
    }
}

/// The relay's peer policy. See the [module docs](self) for the semantics.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone)]
struct Inner {
    allow: Vec<PeerRule>,
    deny: Vec<PeerRule>,
    /// Normalised: `ip` is `None` for wildcards, never unspecified or IPv4-mapped.
    service: Vec<ServiceAddr>,
    /// The relay's own relayed IPs (canonical, never unspecified or multicast).
    own_ips: Vec<IpAddr>,
    /// The relay port range of `own_ips`.
    own_ports: (u16, u16),
}

impl PeerPolicy {
    /// Builds the policy. `allow` rules reopen special-purpose ranges, `deny` rules close
    /// anything, `service` lists the relay's own sockets (always denied).
    #[must_use]
    pub fn new(allow: Vec<PeerRule>, deny: Vec<PeerRule>, service: Vec<ServiceAddr>) -> Self {
        let service = service
            .into_iter()
            .map(|s| {
                let ip = s.ip.map(|ip| ip.to_canonical()).filter(|ip| !ip.is_unspecified());
                ServiceAddr { ip, port: s.port }
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                allow: allow.into_iter().map(PeerRule::canonical).collect(),
                deny: deny.into_iter().map(PeerRule::canonical).collect(),
                service,
                own_ips: Vec::new(),
                own_ports: (1, 0),
            }),
        }
    }

    /// Allows the relay's own relayed addresses by default: `ips` (the relay and external IPs)
    /// on a port inside `ports` (the relay port range), even where the IP is special-purpose.
    /// Service addresses and operator deny rules still win. Unspecified, multicast and broadcast
    /// IPs are ignored: they are never a relayed address.
    #[must_use]
    pub fn with_own_relays(mut self, ips: impl IntoIterator<Item = IpAddr>, ports: RangeInclusive<u16>) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        let usable = |ip: &IpAddr| {
            !ip.is_unspecified() && !ip.is_multicast() && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        };
        inner.own_ips = ips.into_iter().map(|ip| ip.to_canonical()).filter(usable).collect();
        inner.own_ips.dedup();
        inner.own_ports = (*ports.start(), *ports.end());
        self
    }

    /// The relay's own relayed IPs allowed by [`with_own_relays`](Self::with_own_relays), and
    /// their port range.
    #[must_use]
    pub fn own_relays(&self) -> (&[IpAddr], RangeInclusive<u16>) {
        (&self.inner.own_ips, self.inner.own_ports.0..=self.inner.own_ports.1)
    }

    /// The default policy: special-purpose ranges denied, no operator rules, no services.
    #[must_use]
    pub fn deny_special_purpose() -> Self {
        Self::new(Vec::new(), Vec::new(), Vec::new())
    }

    /// Decides whether the relay may talk to `peer`. Does not allocate.
    #[must_use]
    pub fn check(&self, peer: SocketAddr) -> Verdict {
        let port = peer.port();
        if port == 0 {
            return Verdict::Deny(DenyReason::Port0);
        }
        let forms = Forms::of(peer.ip());
        let inner = &*self.inner;

        let is_service = inner.service.iter().any(|s| {
            s.port == port
                && match s.ip {
                    None => true,
                    Some(ip) => forms.iter().any(|f| f == ip),
                }
        });
        if is_service {
            return Verdict::Deny(DenyReason::ServicePort);
        }
        if forms.iter().any(|ip| inner.deny.iter().any(|r| r.matches(ip, port))) {
            return Verdict::Deny(DenyReason::OperatorRule);
        }
        let (lo, hi) = inner.own_ports;
        if lo <= port && port <= hi && inner.own_ips.contains(&forms.primary) {
            return Verdict::Allow;
        }
        let allowed = |ip: IpAddr| inner.allow.iter().any(|r| r.matches(ip, port));
        if is_special_purpose(forms.primary) && !allowed(forms.primary) {
            return Verdict::Deny(DenyReason::SpecialPurpose);
        }
        for &v4 in forms.embedded() {
            if is_special_purpose_v4(v4) && !allowed(IpAddr::V4(v4)) {
                return Verdict::Deny(DenyReason::EmbeddedSpecialPurpose);
            }
        }
        Verdict::Allow
    }

    /// Decides whether a permission for `ip` may be installed (CreatePermission). RFC 8656 §9
    /// keys a permission on the IP alone and ignores the port of the request's
    /// XOR-PEER-ADDRESS (pion/turn sends port 0 on every permission refresh), so the answer
    /// is: allowed when [`check`](Self::check) allows `ip` on at least one port. The rules that
    /// depend on a port (service ports, rules with ports, the own-relays port range) still
    /// decide every ChannelBind and Send, which carry one. A denial carries the reason `check` gives
    /// on a port that is not a service port. Does not allocate.
    #[must_use]
    pub fn check_permission(&self, ip: IpAddr) -> Verdict {
        let inner = &*self.inner;
        // `check` is constant between the edges of its port-dependent rules, so the first port
        // of every such stretch stands for all of its ports.
        let rule_edges = inner.allow.iter().chain(&inner.deny).filter_map(|r| r.ports);
        let edges = rule_edges
            .chain(inner.service.iter().map(|s| (s.port, s.port)))
            .chain(std::iter::once(inner.own_ports))
            .flat_map(|(first, last)| [first, last.saturating_add(1)]);
        let mut denied = DenyReason::ServicePort;
        for port in std::iter::once(1).chain(edges).filter(|&p| p != 0) {
            match self.check(SocketAddr::new(ip, port)) {
                Verdict::Allow => return Verdict::Allow,
                Verdict::Deny(reason) if denied == DenyReason::ServicePort => denied = reason,
                Verdict::Deny(_) => {}
            }
        }
        Verdict::Deny(denied)
    }

    /// `true` if [`check`](Self::check) allows `peer`.
    #[must_use]
    pub fn permits(&self, peer: SocketAddr) -> bool {
        self.check(peer).is_allowed()
    }

    /// The allow rules, after normalisation (IPv4-mapped rules become IPv4).
    #[must_use]
    pub fn allow_rules(&self) -> &[PeerRule] {
        &self.inner.allow
    }

    /// The deny rules, after normalisation.
    #[must_use]
    pub fn deny_rules(&self) -> &[PeerRule] {
        &self.inner.deny
    }
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self::deny_special_purpose()
    }
}

/// `true` if `ip` is in [`SPECIAL_PURPOSE_V4`] or [`SPECIAL_PURPOSE_V6`] as given (no
/// normalisation: `::ffff:8.8.8.8` is special-purpose here, unlike in [`PeerPolicy::check`]).
#[must_use]
pub fn is_special_purpose(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_purpose_v4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            SPECIAL_PURPOSE_V6.iter().any(|&(net, len)| (bits ^ u128::from(net)) & mask128(len) == 0)
        }
    }
}

/// Errors from parsing a [`PeerRule`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The rule is empty.
    #[error("empty peer rule")]
    Empty,
    /// The address part is not an IP address.
    #[error("peer rule `{rule}`: `{addr}` is not an IPv4 or IPv6 address")]
    InvalidAddress {
        /// The whole rule.
        rule: String,
        /// The offending part.
        addr: String,
    },
    /// The prefix length is not a number in range.
    #[error("peer rule `{rule}`: invalid prefix length `/{len}` (IPv4: 0-32, IPv6: 0-128)")]
    InvalidPrefixLength {
        /// The whole rule.
        rule: String,
        /// The offending part.
        len: String,
    },
    /// The network has bits set after the prefix length.
    #[error("peer rule `{rule}`: host bits are set after the prefix; did you mean `{network}`?")]
    HostBitsSet {
        /// The whole rule.
        rule: String,
        /// The network the rule probably meant.
        network: String,
    },
    /// A port is not a number 0-65535.
    #[error("peer rule `{rule}`: invalid port `{port}` (expected PORT or FIRST-LAST, 0-65535)")]
    InvalidPort {
        /// The whole rule.
        rule: String,
        /// The offending part.
        port: String,
    },
    /// `first > last` in a port range.
    #[error("peer rule `{rule}`: empty port range {first}-{last} (first port after last)")]
    EmptyPortRange {
        /// The whole rule.
        rule: String,
        /// The first port.
        first: u16,
        /// The last port.
        last: u16,
    },
    /// `[` without `]`.
    #[error("peer rule `{rule}`: missing `]` after a bracketed IPv6 address")]
    UnclosedBracket {
        /// The whole rule.
        rule: String,
    },
    /// Any other syntax error.
    #[error("peer rule `{rule}`: {detail}")]
    Malformed {
        /// The whole rule.
        rule: String,
        /// What is wrong.
        detail: &'static str,
    },
}

// ---------------------------------------------------------------------------------------------
// Internals

/// A normalised peer address and the IPv4 addresses embedded in it.
struct Forms {
    primary: IpAddr,
    embedded: [Ipv4Addr; 4],
    n: usize,
}

impl Forms {
    fn of(ip: IpAddr) -> Self {
        let mut forms = Forms { primary: ip, embedded: [Ipv4Addr::UNSPECIFIED; 4], n: 0 };
        let v6 = match ip {
            IpAddr::V4(_) => return forms,
            IpAddr::V6(v6) => v6,
        };
        if let Some(v4) = v6.to_ipv4_mapped() {
            forms.primary = IpAddr::V4(v4);
            return forms;
        }
        let b = u128::from(v6);
        let low32 = b as u32;
        if b >> 32 == 0 {
            // IPv4-compatible ::/96 (includes :: and ::1).
            forms.push(low32);
        } else if b >> 32 == 0xffff_0000 {
            // IPv4-translated ::ffff:0:0:0/96 (SIIT).
            forms.push(low32);
        } else if b >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
            // NAT64 well-known prefix, always /96.
            forms.push(low32);
        } else if b >> 80 == 0x0064_ff9b_0001 {
            // NAT64 local-use prefix: every RFC 6052 placement inside the /48.
            let pl48 = (((b >> 64) as u32 & 0xffff) << 16) | ((b >> 40) as u32 & 0xffff);
            let pl56 = (((b >> 64) as u32 & 0xff) << 24) | ((b >> 32) as u32 & 0x00ff_ffff);
            let pl64 = (b >> 24) as u32;
            forms.push(pl48);
            forms.push(pl56);
            forms.push(pl64);
            forms.push(low32);
        } else if b >> 112 == 0x2002 {
            // 6to4: bits 16..48.
            forms.push((b >> 80) as u32);
        } else if b >> 96 == 0x2001_0000 {
            // Teredo: server in bits 32..64, client obfuscated (inverted) in the last 32.
            forms.push((b >> 64) as u32);
            forms.push(!low32);
        }
        forms
    }

    fn push(&mut self, v4: u32) {
        if let Some(slot) = self.embedded.get_mut(self.n) {
            *slot = Ipv4Addr::from(v4);
            self.n += 1;
        }
    }

    fn embedded(&self) -> &[Ipv4Addr] {
        &self.embedded[..self.n]
    }

    fn iter(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.primary).chain(self.embedded().iter().map(|&v4| IpAddr::V4(v4)))
    }
}

fn is_special_purpose_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    SPECIAL_PURPOSE_V4.iter().any(|&(net, len)| (bits ^ u32::from(net)) & mask32(len) == 0)
}

#[inline]
fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

#[inline]
fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0)
}

struct DisplayPorts((u16, u16));

impl fmt::Display for DisplayPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (first, last) = self.0;
        if first == last {
            write!(f, "{first}")
        } else {
            write!(f, "{first}-{last}")
        }
    }
}

/// Parses `addr` or `addr/len`.
fn parse_net(rule: &str, s: &str) -> Result<IpNet, PolicyError> {
    match s.split_once('/') {
        Some((addr, len)) => parse_net_parts(rule, addr, Some(len)),
        None => parse_net_parts(rule, s, None),
    }
}

fn parse_net_parts(rule: &str, addr: &str, len: Option<&str>) -> Result<IpNet, PolicyError> {
    let ip: IpAddr = addr.parse().map_err(|_| PolicyError::InvalidAddress { rule: rule.into(), addr: addr.into() })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max && !len.starts_with('+'))
            .ok_or_else(|| PolicyError::InvalidPrefixLength { rule: rule.into(), len: len.into() })?,
    };
    let net = match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, len).map(IpNet::V4),
        IpAddr::V6(v6) => Ipv6Net::new(v6, len).map(IpNet::V6),
    }
    .map_err(|_| PolicyError::InvalidPrefixLength { rule: rule.into(), len: len.to_string() })?;
    if net.trunc() != net {
        return Err(PolicyError::HostBitsSet { rule: rule.into(), network: net.trunc().to_string() });
    }
    Ok(net)
}

/// Parses `port` or `first-last`.
fn parse_ports(rule: &str, s: &str) -> Result<(u16, u16), PolicyError> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|_| !p.starts_with('+'))
            .ok_or_else(|| PolicyError::InvalidPort { rule: rule.into(), port: p.into() })
    };
    let (first, last) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if first > last {
        return Err(PolicyError::EmptyPortRange { rule: rule.into(), first, last });
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn rule(s: &str) -> PeerRule {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn policy(allow: &[&str], deny: &[&str], service: &[&str]) -> PeerPolicy {
        PeerPolicy::new(
            allow.iter().map(|s| rule(s)).collect(),
            deny.iter().map(|s| rule(s)).collect(),
            service.iter().map(|s| ServiceAddr::from(sa(s))).collect(),
        )
    }

    const DENY_SPECIAL: Verdict = Verdict::Deny(DenyReason::SpecialPurpose);
    const DENY_EMBEDDED: Verdict = Verdict::Deny(DenyReason::EmbeddedSpecialPurpose);

    /// The lists exactly as security.md writes them.
    const SECURITY_MD_V4: &str = "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, \
        169.254.0.0/16, 172.16.0.0/12, 192.0.0.0/24, 192.0.2.0/24, 192.31.196.0/24, \
        192.52.193.0/24, 192.88.99.0/24, 192.168.0.0/16, 192.175.48.0/24, 198.18.0.0/15, \
        198.51.100.0/24, 203.0.113.0/24, 224.0.0.0/4, 240.0.0.0/4";
    const SECURITY_MD_V6: &str = "::/128, ::1/128, ::ffff:0:0/96, ::/96, 64:ff9b::/96, \
        64:ff9b:1::/48, 100::/64, 2001::/23, 2001:db8::/32, 2002::/16, 2620:4f:8000::/48, \
        3fff::/20, 5f00::/16, fc00::/7, fe80::/10, fec0::/10, ff00::/8";

    #[test]
    fn lists_match_security_md() {
        let v4: Vec<IpNet> = SECURITY_MD_V4.split(", ").map(|s| s.parse().unwrap()).collect();
        let ours: Vec<IpNet> =
            SPECIAL_PURPOSE_V4.iter().map(|&(a, l)| IpNet::V4(Ipv4Net::new(a, l).unwrap())).collect();
        assert_eq!(v4, ours);
        let v6: Vec<IpNet> = SECURITY_MD_V6.split(", ").map(|s| s.parse().unwrap()).collect();
        let ours: Vec<IpNet> =
            SPECIAL_PURPOSE_V6.iter().map(|&(a, l)| IpNet::V6(Ipv6Net::new(a, l).unwrap())).collect();
        assert_eq!(v6, ours);
        for net in v4.iter().chain(&v6) {
            assert_eq!(net.trunc(), *net, "{net} has host bits set");
        }
    }

    #[test]
    fn every_v4_range_first_and_last_denied() {
        let p = PeerPolicy::default();
        for &(addr, len) in SPECIAL_PURPOSE_V4 {
            let net = Ipv4Net::new(addr, len).unwrap();
            for ip in [net.network(), net.broadcast()] {
                let peer = SocketAddr::new(IpAddr::V4(ip), 3478);
                assert_eq!(p.check(peer), DENY_SPECIAL, "{peer}");
                // The same address IPv4-mapped gets the same verdict.
                let mapped = SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), 3478);
                assert_eq!(p.check(mapped), DENY_SPECIAL, "{mapped}");
            }
            // Just outside (where that is public) is allowed.
            let after = u32::from(net.broadcast()).wrapping_add(1);
            let after = Ipv4Addr::from(after);
            if !is_special_purpose_v4(after) {
                assert!(p.permits(SocketAddr::new(IpAddr::V4(after), 3478)), "{after}");
            }
        }
    }

    #[test]
    fn every_v6_range_first_and_last_denied() {
        let p = PeerPolicy::default();
        for &(addr, len) in SPECIAL_PURPOSE_V6 {
            let net = Ipv6Net::new(addr, len).unwrap();
            for ip in [net.network(), net.broadcast()] {
                let peer = SocketAddr::new(IpAddr::V6(ip), 3478);
                assert!(!p.permits(peer), "{peer}");
                // Without mapping normalisation, the raw address is in the list.
                assert!(is_special_purpose(IpAddr::V6(ip)), "{ip}");
            }
            let after = u128::from(net.broadcast()).wrapping_add(1);
            let after = Ipv6Addr::from(after);
            let mapped_or_embedded = after.to_ipv4_mapped().is_some();
            if !is_special_purpose(IpAddr::V6(after)) && !mapped_or_embedded {
                assert!(p.permits(SocketAddr::new(IpAddr::V6(after), 3478)), "{after}");
            }
        }
    }

    #[test]
    fn default_policy_table() {
        let p = PeerPolicy::default();
        let cases: &[(&str, Verdict)] = &[
            // Re-encoded forms from security.md.
            ("0.0.0.0:80", DENY_SPECIAL),
            ("[::]:80", DENY_SPECIAL),
            ("[::ffff:127.0.0.1]:80", DENY_SPECIAL),
            ("[::127.0.0.1]:80", DENY_SPECIAL),
            ("[64:ff9b::a00:1]:80", DENY_SPECIAL),
            ("[64:ff9b::7f00:1]:80", DENY_SPECIAL),
            ("[64:ff9b:1::7f00:1]:80", DENY_SPECIAL),
            ("[2002:7f00:1::]:80", DENY_SPECIAL),
            ("[2002:c0a8:101::1]:80", DENY_SPECIAL),
            // Teredo, client 10.0.0.1 obfuscated: !0x0a000001 = 0xf5fffffe.
            ("[2001:0:4136:e378:8000:63bf:f5ff:fffe]:80", DENY_SPECIAL),
            ("[::ffff:169.254.169.254]:80", DENY_SPECIAL),
            ("169.254.169.254:80", DENY_SPECIAL),
            ("[fe80::1]:80", DENY_SPECIAL),
            ("[fe80::1%2]:80", DENY_SPECIAL),
            ("[ff02::1]:80", DENY_SPECIAL),
            ("[::1]:80", DENY_SPECIAL),
            ("255.255.255.255:80", DENY_SPECIAL),
            ("[::ffff:0:10.0.0.1]:80", DENY_EMBEDDED),
            // Public.
            ("8.8.8.8:53", Verdict::Allow),
            ("1.1.1.1:443", Verdict::Allow),
            ("[2606:4700::1111]:443", Verdict::Allow),
            ("[::ffff:8.8.8.8]:53", Verdict::Allow),
            ("[::ffff:0:8.8.8.8]:53", Verdict::Allow),
            ("8.8.8.8:0", Verdict::Deny(DenyReason::Port0)),
            ("[2606:4700::1111]:0", Verdict::Deny(DenyReason::Port0)),
        ];
        for &(peer, want) in cases {
            assert_eq!(p.check(sa(peer)), want, "{peer}");
        }
    }

    #[test]
    fn embedded_extraction() {
        let v4 = |s: &str| -> Vec<Ipv4Addr> { Forms::of(s.parse::<IpAddr>().unwrap()).embedded().to_vec() };
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(v4("::127.0.0.1"), [a("127.0.0.1")]);
        assert_eq!(v4("::"), [a("0.0.0.0")]);
        assert_eq!(v4("64:ff9b::a00:1"), [a("10.0.0.1")]);
        assert_eq!(v4("2002:c0a8:101::1"), [a("192.168.1.1")]);
        assert_eq!(v4("2001:0:4136:e378:8000:63bf:f5ff:fffe"), [a("65.54.227.120"), a("10.0.0.1")]);
        // RFC 6052 §2.4 examples, transplanted into 64:ff9b:1::/48 (192.0.2.33 = c000:221).
        // /48: 64:ff9b:1:c000:2:2100:: ; /56 64:ff9b:1:00c0:0:221:: ; /64 64:ff9b:1:0:c0:2:2100:0
        assert_eq!(v4("64:ff9b:1:c000:2:2100::")[0], a("192.0.2.33"));
        assert_eq!(v4("64:ff9b:1:c0:0:221::")[1], a("192.0.2.33"));
        assert_eq!(v4("64:ff9b:1:0:c0:2:2100:0")[2], a("192.0.2.33"));
        assert_eq!(v4("64:ff9b:1::c000:221")[3], a("192.0.2.33"));
        assert_eq!(v4("::ffff:10.0.0.1"), [] as [Ipv4Addr; 0]);
        assert_eq!(v4("2606:4700::1111"), [] as [Ipv4Addr; 0]);
    }

    #[test]
    fn allow_rule_reopens_loopback_but_not_service_port() {
        let p = policy(&["127.0.0.1"], &[], &["127.0.0.1:3478", "0.0.0.0:9090"]);
        assert!(p.permits(sa("127.0.0.1:5000")));
        assert!(p.permits(sa("[::ffff:127.0.0.1]:5000")));
        assert!(!p.permits(sa("127.0.0.2:5000")), "only the /32 is reopened");
        assert_eq!(p.check(sa("127.0.0.1:3478")), Verdict::Deny(DenyReason::ServicePort));
        assert_eq!(p.check(sa("[::ffff:127.0.0.1]:3478")), Verdict::Deny(DenyReason::ServicePort));
        // Wildcard service port: denied on every address, public ones included.
        for peer in ["127.0.0.1:9090", "8.8.8.8:9090", "[2606:4700::1111]:9090"] {
            assert_eq!(p.check(sa(peer)), Verdict::Deny(DenyReason::ServicePort), "{peer}");
        }
        // The allow rule does not reopen re-encoded loopback: those IPv6 forms stay denied.
        for peer in ["[::127.0.0.1]:5000", "[64:ff9b::7f00:1]:5000", "[2002:7f00:1::]:5000"] {
            assert!(!p.permits(sa(peer)), "{peer}");
        }
    }

    #[test]
    fn own_relayed_addresses_are_allowed_by_default() {
        // Relay IP 127.0.0.1 (loopback), external IP 10.1.2.3 (private), relay ports 50000-50100.
        let ips = ["127.0.0.1", "10.1.2.3", "fd00::7"].map(|s| s.parse::<IpAddr>().unwrap());
        let p =
            policy(&[], &["10.1.2.3:50050"], &["127.0.0.1:50099", "0.0.0.0:9641"]).with_own_relays(ips, 50000..=50100);
        let cases: &[(&str, Verdict)] = &[
            // The self-peer: another allocation of this relay.
            ("127.0.0.1:50000", Verdict::Allow),
            ("127.0.0.1:50100", Verdict::Allow),
            ("[::ffff:127.0.0.1]:50042", Verdict::Allow),
            ("10.1.2.3:50001", Verdict::Allow),
            ("[fd00::7]:50001", Verdict::Allow),
            // One port outside the range, either side.
            ("127.0.0.1:49999", DENY_SPECIAL),
            ("127.0.0.1:50101", DENY_SPECIAL),
            ("10.1.2.3:50101", DENY_SPECIAL),
            // Another private host, even next door or in the same network.
            ("127.0.0.2:50000", DENY_SPECIAL),
            ("10.1.2.4:50000", DENY_SPECIAL),
            ("[fd00::8]:50001", DENY_SPECIAL),
            // Re-encoded forms of the relay IP are not the relay IP.
            ("[::127.0.0.1]:50000", DENY_SPECIAL),
            ("[64:ff9b::7f00:1]:50000", DENY_SPECIAL),
            ("[2002:7f00:1::]:50000", DENY_SPECIAL),
            // Service ports and operator deny rules still win.
            ("127.0.0.1:50099", Verdict::Deny(DenyReason::ServicePort)),
            ("10.1.2.3:50050", Verdict::Deny(DenyReason::OperatorRule)),
            ("127.0.0.1:0", Verdict::Deny(DenyReason::Port0)),
        ];
        for &(peer, want) in cases {
            assert_eq!(p.check(sa(peer)), want, "{peer}");
        }
        // Without own relays (the constructor alone) the same peer is refused.
        assert_eq!(PeerPolicy::default().check(sa("127.0.0.1:50000")), DENY_SPECIAL);
    }

    #[test]
    fn own_relays_ignore_wildcard_multicast_and_broadcast() {
        let ips = ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1", "::ffff:192.168.1.5"]
            .map(|s| s.parse::<IpAddr>().unwrap());
        let p = PeerPolicy::default().with_own_relays(ips, 1..=65535);
        assert_eq!(p.own_relays().0, ["192.168.1.5".parse::<IpAddr>().unwrap()]);
        for peer in ["0.0.0.0:5000", "[::]:5000", "224.0.0.1:5000", "255.255.255.255:5000", "[ff02::1]:5000"] {
            assert!(!p.permits(sa(peer)), "{peer}");
        }
        assert!(p.permits(sa("192.168.1.5:5000")));
    }

    #[test]
    fn service_matched_through_embedded_forms() {
        // A public service address reached via 6to4 while the operator allows 6to4.
        let p = policy(&["2002::/16"], &[], &["198.51.100.7:3478"]);
        let six_to_four = "[2002:c633:6407::1]:3478"; // 198.51.100.7
        assert_eq!(p.check(sa(six_to_four)), Verdict::Deny(DenyReason::ServicePort));
        let p = policy(&[], &[], &["[::]:443"]);
        assert_eq!(p.check(sa("1.1.1.1:443")), Verdict::Deny(DenyReason::ServicePort));
        let p = policy(&[], &[], &[]);
        let wildcard = PeerPolicy::new(vec![], vec![], vec![ServiceAddr { ip: None, port: 3478 }]);
        assert!(p.permits(sa("1.1.1.1:3478")));
        assert!(!wildcard.permits(sa("1.1.1.1:3478")));
    }

    #[test]
    fn allow_with_port_range() {
        let p = policy(&["10.0.0.0/8:4000-5000", "[fd00::]/8:443"], &[], &[]);
        let cases = [
            ("10.1.2.3:3999", false),
            ("10.1.2.3:4000", true),
            ("10.1.2.3:5000", true),
            ("10.1.2.3:5001", false),
            ("[::ffff:10.1.2.3]:4500", true),
            ("[fd12::1]:443", true),
            ("[fd12::1]:444", false),
            ("[fc00::1]:443", false),
        ];
        for (peer, want) in cases {
            assert_eq!(p.permits(sa(peer)), want, "{peer}");
        }
    }

    #[test]
    fn deny_beats_allow() {
        let p = policy(&["10.0.0.0/8", "127.0.0.1"], &["10.9.0.0/16", "8.8.8.8:53", "[2606:4700::]/32"], &[]);
        let cases = [
            ("10.1.0.1:80", Verdict::Allow),
            ("10.9.0.1:80", Verdict::Deny(DenyReason::OperatorRule)),
            ("[::ffff:10.9.0.1]:80", Verdict::Deny(DenyReason::OperatorRule)),
            ("8.8.8.8:53", Verdict::Deny(DenyReason::OperatorRule)),
            ("8.8.8.8:54", Verdict::Allow),
            ("[2606:4700::1111]:443", Verdict::Deny(DenyReason::OperatorRule)),
            // Deny rules see embedded addresses too (6to4 of 8.8.8.8 with port 53).
            ("[2002:808:808::]:53", Verdict::Deny(DenyReason::OperatorRule)),
        ];
        for (peer, want) in cases {
            assert_eq!(p.check(sa(peer)), want, "{peer}");
        }
    }

    #[test]
    fn wrapper_allow_does_not_reopen_embedded_private() {
        let p = policy(&["2002::/16", "64:ff9b::/96", "2001::/32", "::/96"], &[], &[]);
        let cases = [
            ("[2002:808:808::1]:80", Verdict::Allow),
            ("[2002:c0a8:101::1]:80", DENY_EMBEDDED),
            ("[2002:7f00:1::]:80", DENY_EMBEDDED),
            ("[64:ff9b::808:808]:80", Verdict::Allow),
            ("[64:ff9b::a00:1]:80", DENY_EMBEDDED),
            ("[64:ff9b::a9fe:a9fe]:80", DENY_EMBEDDED),
            ("[2001:0:4136:e378:8000:63bf:f5ff:fffe]:80", DENY_EMBEDDED),
            // Teredo with a public server and public client (8.8.8.8 -> f7f7:f7f7).
            ("[2001:0:4136:e378:8000:63bf:f7f7:f7f7]:80", Verdict::Allow),
            // Teredo with a private server.
            ("[2001:0:a00:1:8000:63bf:f7f7:f7f7]:80", DENY_EMBEDDED),
            ("[::127.0.0.1]:80", DENY_EMBEDDED),
            // ::1 is reopened as IPv6 by the ::/96 rule, but its embedded 0.0.0.1 stays denied.
            ("[::1]:80", DENY_EMBEDDED),
        ];
        for (peer, want) in cases {
            assert_eq!(p.check(sa(peer)), want, "{peer}");
        }
        // Allowing the embedded address too reopens it.
        let p = policy(&["2002::/16", "192.168.1.1"], &[], &[]);
        assert!(p.permits(sa("[2002:c0a8:101::1]:80")));
        assert!(!p.permits(sa("[2002:c0a8:102::1]:80")));
    }

    #[test]
    fn nat64_local_use_checks_every_placement() {
        let p = policy(&["64:ff9b:1::/48"], &[], &[]);
        // /64 translator: 127.0.0.1 at bits 72..104 would read as 171.205.0.127 under /48.
        assert!(!p.permits(sa("[64:ff9b:1:abcd:7f:0:100:0]:80")));
        // /96 translator: the /48 placement decodes to 0.0.0.0, which stays denied.
        assert!(!p.permits(sa("[64:ff9b:1::808:808]:80")));
        // A /48 placement whose other placements decode to public addresses too.
        assert!(p.permits(sa("[64:ff9b:1:808:8:808:808:808]:80")));
    }

    #[test]
    fn mapped_rules_become_v4() {
        let p = policy(&["::ffff:10.0.0.0/104"], &["[::ffff:10.1.0.0/112]:53"], &[]);
        assert_eq!(p.allow_rules()[0], rule("10.0.0.0/8"));
        assert_eq!(p.deny_rules()[0], rule("10.1.0.0/16:53"));
        assert!(p.permits(sa("10.2.0.1:80")));
        assert!(!p.permits(sa("10.1.0.1:53")));
    }

    #[test]
    fn parse_rules() {
        type Case = (&'static str, &'static str, Option<(u16, u16)>);
        let cases: &[Case] = &[
            ("203.0.113.0/24", "203.0.113.0/24", None),
            ("127.0.0.1", "127.0.0.1/32", None),
            ("  127.0.0.1 ", "127.0.0.1/32", None),
            ("::1", "::1/128", None),
            ("2001:db8::/32", "2001:db8::/32", None),
            ("127.0.0.1/32:4000-5000", "127.0.0.1/32", Some((4000, 5000))),
            ("127.0.0.1:4000", "127.0.0.1/32", Some((4000, 4000))),
            ("[::1]/128:4000-5000", "::1/128", Some((4000, 5000))),
            ("[::1/128]:4000-5000", "::1/128", Some((4000, 5000))),
            ("[::1]:443", "::1/128", Some((443, 443))),
            ("[2001:db8::]/32", "2001:db8::/32", None),
            ("[2001:db8::]", "2001:db8::/128", None),
            ("0.0.0.0/0:0-65535", "0.0.0.0/0", Some((0, 65535))),
            ("::1:80", "::1:80/128", None),
        ];
        for &(input, net, ports) in cases {
            let r = rule(input);
            assert_eq!(r.net(), net.parse::<IpNet>().unwrap(), "{input}");
            assert_eq!(r.ports(), ports, "{input}");
            // Display round-trips.
            assert_eq!(rule(&r.to_string()), r, "{input} -> {r}");
        }
    }

    #[test]
    fn parse_errors() {
        let err = |s: &str| s.parse::<PeerRule>().unwrap_err();
        assert_eq!(err(""), PolicyError::Empty);
        assert_eq!(err("   "), PolicyError::Empty);
        assert!(matches!(err("10.0.0.256"), PolicyError::InvalidAddress { .. }));
        assert!(matches!(err("localhost"), PolicyError::InvalidAddress { .. }));
        assert!(matches!(err("10.0.0.0/33"), PolicyError::InvalidPrefixLength { .. }));
        assert!(matches!(err("10.0.0.0/"), PolicyError::InvalidPrefixLength { .. }));
        assert!(matches!(err("10.0.0.0/+8"), PolicyError::InvalidPrefixLength { .. }));
        assert!(matches!(err("::/129"), PolicyError::InvalidPrefixLength { .. }));
        assert!(matches!(err("10.0.0.0:"), PolicyError::InvalidPort { .. }));
        assert!(matches!(err("10.0.0.0:65536"), PolicyError::InvalidPort { .. }));
        assert!(matches!(err("10.0.0.0:1-"), PolicyError::InvalidPort { .. }));
        assert!(matches!(err("10.0.0.0:+1"), PolicyError::InvalidPort { .. }));
        assert!(matches!(err("10.0.0.0:5-4"), PolicyError::EmptyPortRange { first: 5, last: 4, .. }));
        assert!(matches!(err("[::1"), PolicyError::UnclosedBracket { .. }));
        assert!(matches!(err("[::1]x"), PolicyError::Malformed { .. }));
        assert!(matches!(err("[::1/64]/64"), PolicyError::Malformed { .. }));
        assert!(matches!(err("[10.0.0.1]:80"), PolicyError::Malformed { .. }));
        assert!(matches!(err("[::1]:80:90"), PolicyError::InvalidPort { .. }));
        let e = err("10.0.0.1/8");
        assert_eq!(e, PolicyError::HostBitsSet { rule: "10.0.0.1/8".into(), network: "10.0.0.0/8".into() });
        assert_eq!(
            e.to_string(),
            "peer rule `10.0.0.1/8`: host bits are set after the prefix; did you mean `10.0.0.0/8`?"
        );
    }

    #[test]
    fn deny_reason_labels_are_stable() {
        let labels: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["port_0", "service_port", "operator_rule", "special_purpose", "embedded_special_purpose"]);
    }

    #[test]
    fn permissions_ignore_the_port() {
        // Relay IP 127.0.0.1 with relay ports 50000-50100; listener on 127.0.0.1:3478, metrics
        // on every address's 9641; 10.0.0.0/8 reopened on 4000-5000 only; 8.8.8.8:53 closed.
        let p = policy(&["10.0.0.0/8:4000-5000"], &["8.8.8.8:53", "9.9.9.0/24"], &["127.0.0.1:3478", "0.0.0.0:9641"])
            .with_own_relays(["127.0.0.1".parse().unwrap()], 50000..=50100);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: &[(&str, Verdict)] = &[
            ("8.8.8.8", Verdict::Allow),
            ("2606:4700::1111", Verdict::Allow),
            // Reachable on some port: the relay's own relayed range, the reopened range.
            ("127.0.0.1", Verdict::Allow),
            ("::ffff:127.0.0.1", Verdict::Allow),
            ("10.1.2.3", Verdict::Allow),
            // Reachable on no port.
            ("127.0.0.2", DENY_SPECIAL),
            ("192.168.1.1", DENY_SPECIAL),
            ("169.254.169.254", DENY_SPECIAL),
            ("0.0.0.0", DENY_SPECIAL),
            ("9.9.9.9", Verdict::Deny(DenyReason::OperatorRule)),
            ("2002:a01:203::", DENY_SPECIAL),
        ];
        for &(peer, want) in cases {
            assert_eq!(p.check_permission(ip(peer)), want, "{peer}");
        }
        // The port-dependent rules still hold where a port is named (ChannelBind, Send).
        for (peer, want) in [
            ("127.0.0.1:3478", Verdict::Deny(DenyReason::ServicePort)),
            ("127.0.0.1:9641", Verdict::Deny(DenyReason::ServicePort)),
            ("8.8.8.8:9641", Verdict::Deny(DenyReason::ServicePort)),
            ("127.0.0.1:6379", DENY_SPECIAL),
            ("10.1.2.3:22", DENY_SPECIAL),
            ("8.8.8.8:53", Verdict::Deny(DenyReason::OperatorRule)),
            ("8.8.8.8:0", Verdict::Deny(DenyReason::Port0)),
        ] {
            assert_eq!(p.check(sa(peer)), want, "{peer}");
        }
        // An IP whose only allowed ports are service ports is refused, for its other reason.
        let p = policy(&["127.0.0.1:3478"], &[], &["127.0.0.1:3478"]);
        assert_eq!(p.check_permission(ip("127.0.0.1")), DENY_SPECIAL);
        let p = policy(&[], &[], &["[::]:1", "0.0.0.0:2"]);
        assert_eq!(p.check_permission(ip("8.8.8.8")), Verdict::Allow);
    }

    #[test]
    fn policy_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<PeerPolicy>();
    }

    fn arb_rule() -> impl Strategy<Value = PeerRule> {
        let net = prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(a, l)| { IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()) }),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(a, l)| { IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc()) }),
            // Rules written in IPv4-mapped form.
            (any::<u32>(), 96u8..=128).prop_map(|(a, l)| {
                let mapped = Ipv4Addr::from(a).to_ipv6_mapped();
                IpNet::V6(Ipv6Net::new(mapped, l).unwrap().trunc())
            }),
        ];
        let ports =
            proptest::option::of((any::<u16>(), any::<u16>())).prop_map(|p| p.map(|(a, b)| (a.min(b), a.max(b))));
        (net, ports).prop_map(|(n, p)| PeerRule::new(n, p).unwrap())
    }

    /// Rules whose network holds `ip` (any prefix length), with or without ports.
    fn arb_rule_around(ip: IpAddr) -> impl Strategy<Value = PeerRule> {
        let max = if ip.is_ipv4() { 32u8 } else { 128 };
        let ports =
            proptest::option::of((any::<u16>(), any::<u16>())).prop_map(|p| p.map(|(a, b)| (a.min(b), a.max(b))));
        (0..=max, ports).prop_map(move |(len, p)| PeerRule::new(IpNet::new(ip, len).unwrap(), p).unwrap())
    }

    /// Addresses biased towards the interesting prefixes.
    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
            any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
            (0usize..SPECIAL_PURPOSE_V6.len(), any::<u128>()).prop_map(|(i, r)| {
                let (net, len) = SPECIAL_PURPOSE_V6[i];
                let m = mask128(len);
                IpAddr::V6(((u128::from(net) & m) | (r & !m)).into())
            }),
        ]
    }

    proptest! {
        #[test]
        fn check_never_panics(
            ip in arb_ip(),
            port in any::<u16>(),
            allow in proptest::collection::vec(arb_rule(), 0..4),
            deny in proptest::collection::vec(arb_rule(), 0..4),
            svc_port in any::<u16>(),
        ) {
            let p = PeerPolicy::new(allow, deny, vec![ServiceAddr { ip: Some(ip), port: svc_port }]);
            let v = p.check(SocketAddr::new(ip, port));
            if port == svc_port {
                prop_assert_ne!(v, Verdict::Allow);
            }
        }

        #[test]
        fn mapped_same_verdict_as_v4(
            v4 in any::<u32>(),
            port in any::<u16>(),
            allow in proptest::collection::vec(arb_rule(), 0..4),
            deny in proptest::collection::vec(arb_rule(), 0..4),
        ) {
            let v4 = Ipv4Addr::from(v4);
            let p = PeerPolicy::new(allow, deny, vec![]);
            let plain = p.check(SocketAddr::new(IpAddr::V4(v4), port));
            let mapped = p.check(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), port));
            prop_assert_eq!(plain, mapped);
        }

        #[test]
        fn default_never_allows_special(ip in arb_ip(), port in 1u16..) {
            let v = PeerPolicy::default().check(SocketAddr::new(ip, port));
            if is_special_purpose(ip.to_canonical()) {
                prop_assert_ne!(v, Verdict::Allow);
            }
        }

        #[test]
        fn rule_display_round_trips(r in arb_rule()) {
            prop_assert_eq!(r.to_string().parse::<PeerRule>().unwrap(), r);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<PeerRule>();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// `check_permission` is exactly "`check` allows some port": every port is tried.
        #[test]
        fn permission_is_allowed_iff_some_port_is(
            (ip, allow, deny, services) in arb_ip().prop_flat_map(|ip| {
                let rules = || proptest::collection::vec(prop_oneof![arb_rule(), arb_rule_around(ip)], 0..4);
                let service = (proptest::option::of(Just(ip)), any::<u16>());
                (Just(ip), rules(), rules(), proptest::collection::vec(service, 0..3))
            }),
            own in proptest::option::of((any::<u16>(), any::<u16>())),
        ) {
            let services = services.into_iter().map(|(ip, port)| ServiceAddr { ip, port }).collect();
            let mut p = PeerPolicy::new(allow, deny, services);
            if let Some((a, b)) = own {
                p = p.with_own_relays([ip], a.min(b)..=a.max(b));
            }
            let some_port = (1..=u16::MAX).any(|port| p.permits(SocketAddr::new(ip, port)));
            prop_assert_eq!(p.check_permission(ip).is_allowed(), some_port);
        }
    }
}
