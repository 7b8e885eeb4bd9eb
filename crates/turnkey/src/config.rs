//! Typed, strict configuration: a TOML file (`--config`), then `TURNKEY_*` environment variables,
//! then flags, each overriding the one before. Unknown keys are errors, and every error in a file is
//! reported at once (unknown keys and invalid values together), so an operator fixes a config in
//! one round.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Deserialize;
use turnkey_relay::conn::StreamLimits;
use turnkey_relay::policy::PeerRule;

/// The configuration file's shape. Every field is optional: the embedded default needs none.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where the secret, keys, revocations and usage are kept.
    pub data_dir: Option<PathBuf>,
    /// REALM of long-term credentials.
    pub realm: Option<String>,
    /// Shared secrets, newest first (prefer `secret_file`).
    pub secrets: Option<Vec<String>>,
    /// A file holding one secret per line, newest first.
    pub secret_file: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// Data-path shards (default: one per core).
    pub shards: Option<usize>,
    /// HTTP listener of the credential issuer ("off" disables it; default 0.0.0.0:8080).
    pub http: Option<String>,
    /// The credential issuer (`[issuer]`, see docs/issuer.md).
    #[serde(default)]
    pub issuer: turnkey_issuer::IssuerConfig,
    /// Relay settings.
    #[serde(default)]
    pub relay: RelayFile,
    /// Metrics listener.
    #[serde(default)]
    pub metrics: MetricsFile,
    /// Usage accounting (`[usage]`, see docs/observability.md).
    #[serde(default)]
    pub usage: UsageConfigFile,
    /// Bounds of the HTTP listeners (issuer and metrics).
    #[serde(default)]
    pub http_limits: HttpLimitsFile,
}

/// `[http_limits]`: bounds of every HTTP connection, on the issuer and the metrics listener each.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimitsFile {
    /// Seconds allowed for a request head (default 10).
    pub header_timeout: Option<u64>,
    /// Seconds a connection may move no byte before it is closed (default 60).
    pub idle_timeout: Option<u64>,
    /// Connections per listener (default: an eighth of the open-file limit, 16 to 4096).
    pub max_connections: Option<u32>,
    /// Connections per client IP (IPv6: per /64) per listener (default 64, at most max_connections).
    pub max_connections_per_ip: Option<u32>,
}

/// `[usage]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfigFile {
    /// Day of the month (1-28, UTC) on which monthly totals reset (default 1).
    pub reset_day: Option<u32>,
    /// Seconds between writes of `<data_dir>/usage.json` (1-10, default 5).
    pub flush_interval: Option<u64>,
    /// Stop relaying for a key at its monthly cap, not only stop issuing (default false).
    pub enforce_on_relay: Option<bool>,
}

/// `[relay]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    /// UDP listening addresses.
    pub udp: Option<Vec<String>>,
    /// TCP listening addresses (`["off"]` or `[]`: none).
    pub tcp: Option<Vec<String>>,
    /// TLS listening addresses (`["off"]` or `[]`: none).
    pub tls: Option<Vec<String>>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// TCP/TLS connections per client IP (IPv6: per /64).
    pub max_connections_per_ip: Option<u32>,
    /// TCP/TLS connections in total.
    pub max_connections: Option<u32>,
    /// Seconds allowed for a TLS handshake.
    pub tls_handshake_timeout: Option<u64>,
    /// Seconds a connection may go without an allocation.
    pub allocate_timeout: Option<u64>,
    /// Seconds a connection may stay silent.
    pub idle_timeout: Option<u64>,
    /// Largest STUN/ChannelData length field accepted on streams.
    pub max_frame: Option<usize>,
    /// Frames queued towards one stream client before further ones are dropped.
    pub outbound_queue: Option<usize>,
    /// Addresses relay sockets bind to (at most one IPv4 and one IPv6).
    pub relay_ip: Option<Vec<String>>,
    /// `LO-HI`.
    pub relay_ports: Option<String>,
    /// Addresses advertised instead of the relay IPs (1:1 NAT).
    pub external_ip: Option<Vec<String>>,
    /// Peer allow rules (CIDR, optionally with ports).
    pub allow_peer: Option<Vec<String>>,
    /// Peer deny rules.
    pub deny_peer: Option<Vec<String>>,
    /// Allocations per userid.
    pub max_allocations_per_user: Option<u32>,
    /// Allocations in total.
    pub max_allocations: Option<u32>,
    /// Permissions per allocation.
    pub max_permissions: Option<usize>,
    /// Channels per allocation.
    pub max_channels: Option<usize>,
    /// Per-allocation bandwidth cap in bytes per second (0: none).
    pub bandwidth_limit: Option<u64>,
    /// Longest allocation lifetime in seconds.
    pub max_lifetime: Option<u64>,
    /// Nonce lifetime in seconds.
    pub nonce_lifetime: Option<u64>,
    /// Unauthenticated replies per second per source IP.
    pub unauth_replies_per_sec: Option<u32>,
    /// Accept RFC 5766 channel numbers (0x4000-0x7FFF).
    pub rfc5766_channel_numbers: Option<bool>,
    /// SOFTWARE attribute value (none by default).
    pub software: Option<String>,
    /// Seconds live allocations are served after SIGTERM.
    pub drain_grace: Option<u64>,
}

/// `[metrics]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsFile {
    /// Listening address of `/metrics` ("off" disables it).
    pub listen: Option<String>,
}

/// Loads and strictly parses a config file; every unknown key is listed in one error.
pub fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    parse_file(&text).with_context(|| format!("invalid config {}", path.display()))
}

/// Parses config text (see [`load_file`]).
pub fn parse_file(text: &str) -> anyhow::Result<FileConfig> {
    let de = toml::Deserializer::new(text);
    let mut unknown = Vec::new();
    let lenient: Result<Lenient, _> = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()));
    let mut errors: Vec<String> =
        unknown.iter().map(|k| format!("unknown key `{}`", k.replace(".?", "").replace("?.", ""))).collect();
    match toml::from_str::<FileConfig>(text) {
        Ok(cfg) if errors.is_empty() => return Ok(cfg),
        Ok(_) => {}
        Err(e) => {
            if lenient.is_err() || errors.is_empty() {
                errors.push(e.message().to_owned());
            }
        }
    }
    bail!("{}", errors.join("; "))
}

/// The same shape without `deny_unknown_fields`, to collect every unknown key in one pass.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Lenient {
    data_dir: Option<PathBuf>,
    realm: Option<String>,
    secrets: Option<Vec<String>>,
    secret_file: Option<PathBuf>,
    log_format: Option<String>,
    shards: Option<usize>,
    http: Option<String>,
    // Checked strictly by its own type (first error only).
    issuer: Option<toml::Value>,
    #[serde(default)]
    relay: Option<LenientRelay>,
    #[serde(default)]
    metrics: Option<LenientMetrics>,
    #[serde(default)]
    usage: Option<LenientUsage>,
    #[serde(default)]
    http_limits: Option<LenientHttpLimits>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LenientHttpLimits {
    header_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LenientUsage {
    reset_day: Option<u32>,
    flush_interval: Option<u64>,
    enforce_on_relay: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LenientRelay {
    udp: Option<Vec<String>>,
    tcp: Option<Vec<String>>,
    tls: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_connections_per_ip: Option<u32>,
    max_connections: Option<u32>,
    tls_handshake_timeout: Option<u64>,
    allocate_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    max_frame: Option<usize>,
    outbound_queue: Option<usize>,
    relay_ip: Option<Vec<String>>,
    relay_ports: Option<String>,
    external_ip: Option<Vec<String>>,
    allow_peer: Option<Vec<String>>,
    deny_peer: Option<Vec<String>>,
    max_allocations_per_user: Option<u32>,
    max_allocations: Option<u32>,
    max_permissions: Option<usize>,
    max_channels: Option<usize>,
    bandwidth_limit: Option<u64>,
    max_lifetime: Option<u64>,
    nonce_lifetime: Option<u64>,
    unauth_replies_per_sec: Option<u32>,
    rfc5766_channel_numbers: Option<bool>,
    software: Option<String>,
    drain_grace: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct LenientMetrics {
    listen: Option<String>,
}

/// Validated settings the binary runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub realm: String,
    pub secrets: Vec<String>,
    pub secret_file: Option<PathBuf>,
    pub log_json: bool,
    pub shards: usize,
    pub udp: Vec<SocketAddr>,
    pub udp_is_default: bool,
    pub tcp: Vec<SocketAddr>,
    pub tcp_is_default: bool,
    pub tls: Vec<SocketAddr>,
    pub tls_is_default: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub stream: StreamLimits,
    pub relay_v4: Option<IpAddr>,
    pub relay_v6: Option<IpAddr>,
    pub relay_ports: RangeInclusive<u16>,
    pub external_v4: Option<IpAddr>,
    pub external_v6: Option<IpAddr>,
    pub allow_peer: Vec<PeerRule>,
    pub deny_peer: Vec<PeerRule>,
    pub max_allocations_per_user: u32,
    pub max_allocations: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub bandwidth_limit: u64,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub unauth_replies_per_sec: u32,
    pub rfc5766_channel_numbers: bool,
    pub software: Option<String>,
    pub drain_grace: Duration,
    pub metrics: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub issuer: turnkey_issuer::IssuerConfig,
    /// Whether `[issuer.advertise]` was configured (else the actual listeners are advertised).
    pub advertise_explicit: bool,
    /// `[usage] reset_day`.
    pub usage_reset_day: u32,
    /// `[usage] flush_interval`.
    pub usage_flush_interval: Duration,
    /// `[usage] enforce_on_relay`.
    pub usage_enforce_on_relay: bool,
    /// `[http_limits]` (the connection caps are sized from the open-file limit when unset).
    pub http_limits: HttpLimitsSettings,
}

/// Validated `[http_limits]`.
#[derive(Debug, Clone)]
pub struct HttpLimitsSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
}

/// Default UDP listeners.
pub const DEFAULT_UDP: [&str; 2] = ["0.0.0.0:3478", "[::]:3478"];
/// Default TCP listeners.
pub const DEFAULT_TCP: [&str; 2] = ["0.0.0.0:3478", "[::]:3478"];
/// Default TLS listeners.
pub const DEFAULT_TLS: [&str; 2] = ["0.0.0.0:5349", "[::]:5349"];
/// Default issuer listener.
pub const DEFAULT_HTTP: &str = "0.0.0.0:8080";
/// Default metrics listener.
pub const DEFAULT_METRICS: &str = "0.0.0.0:9641";

fn http_limits(h: &HttpLimitsFile, errors: &mut Vec<String>) -> HttpLimitsSettings {
    let mut at_least_one = |key: &str, v: Option<u64>| {
        if v == Some(0) {
            errors.push(format!("http_limits.{key}: must be at least 1"));
        }
        v.filter(|n| *n > 0)
    };
    let header = at_least_one("header_timeout", h.header_timeout).unwrap_or(10);
    let idle = at_least_one("idle_timeout", h.idle_timeout).unwrap_or(60);
    let total = at_least_one("max_connections", h.max_connections.map(u64::from));
    let per_ip = at_least_one("max_connections_per_ip", h.max_connections_per_ip.map(u64::from));
    HttpLimitsSettings {
        header_timeout: Duration::from_secs(header),
        idle_timeout: Duration::from_secs(idle),
        max_connections: total.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        max_connections_per_ip: per_ip.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    }
}

/// Validates a merged file config, collecting every error.
pub fn validate(f: &FileConfig) -> anyhow::Result<Settings> {
    let mut errors = Vec::new();
    let r = &f.relay;
    let mut addrs = |key: &str, list: &[String]| -> Vec<SocketAddr> {
        list.iter()
            .filter_map(|s| match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(format!("{key}: `{s}` is not an IP:port address"));
                    None
                }
            })
            .collect()
    };
    let udp_is_default = r.udp.is_none();
    let udp_list: Vec<String> = r.udp.clone().unwrap_or_else(|| DEFAULT_UDP.iter().map(|s| s.to_string()).collect());
    let udp = addrs("relay.udp", &udp_list);
    // `off` (alone) or an empty list disables a stream listener kind.
    let stream_list = |v: &Option<Vec<String>>, default: &[&str]| -> Vec<String> {
        match v {
            None => default.iter().map(|s| s.to_string()).collect(),
            Some(l) if l.len() == 1 && l[0] == "off" => Vec::new(),
            Some(l) => l.clone(),
        }
    };
    let tcp_is_default = r.tcp.is_none();
    let tcp = addrs("relay.tcp", &stream_list(&r.tcp, &DEFAULT_TCP));
    let tls_is_default = r.tls.is_none();
    let tls = addrs("relay.tls", &stream_list(&r.tls, &DEFAULT_TLS));
    let mut ips = |key: &str, list: &[String]| -> (Option<IpAddr>, Option<IpAddr>) {
        let (mut v4, mut v6) = (None, None);
        for s in list {
            match s.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V4(_)) if v4.is_none() => v4 = Some(ip),
                Ok(ip @ IpAddr::V6(_)) if v6.is_none() => v6 = Some(ip),
                Ok(_) => errors.push(format!("{key}: at most one IPv4 and one IPv6 address")),
                Err(_) => errors.push(format!("{key}: `{s}` is not an IP address")),
            }
        }
        (v4, v6)
    };
    let (relay_v4, relay_v6) = ips("relay.relay_ip", r.relay_ip.as_deref().unwrap_or_default());
    let (external_v4, external_v6) = ips("relay.external_ip", r.external_ip.as_deref().unwrap_or_default());
    let relay_ports = match parse_port_range(r.relay_ports.as_deref().unwrap_or("49152-65535")) {
        Ok(p) => p,
        Err(e) => {
            errors.push(format!("relay.relay_ports: {e}"));
            49152..=65535
        }
    };
    let mut rules = |key: &str, list: &[String]| -> Vec<PeerRule> {
        list.iter()
            .filter_map(|s| match s.parse::<PeerRule>() {
                Ok(rule) => Some(rule),
                Err(e) => {
                    errors.push(format!("{key}: `{s}`: {e}"));
                    None
                }
            })
            .collect()
    };
    let allow_peer = rules("relay.allow_peer", r.allow_peer.as_deref().unwrap_or_default());
    let deny_peer = rules("relay.deny_peer", r.deny_peer.as_deref().unwrap_or_default());
    let log_json = match f.log_format.as_deref().unwrap_or("text") {
        "text" => false,
        "json" => true,
        other => {
            errors.push(format!("log_format: `{other}` is not `text` or `json`"));
            false
        }
    };
    let metrics = match f.metrics.listen.as_deref().unwrap_or(DEFAULT_METRICS) {
        "off" => None,
        s => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!("metrics.listen: `{s}` is not an IP:port address or `off`"));
                None
            }
        },
    };
    let http = match f.http.as_deref().unwrap_or(DEFAULT_HTTP) {
        "off" => None,
        s => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!("http: `{s}` is not an IP:port address or `off`"));
                None
            }
        },
    };
    if let Err(e) = f.issuer.validate() {
        errors.push(format!("issuer: {e}"));
    }
    let realm = f.realm.clone().unwrap_or_else(|| "turnkey".to_owned());
    if realm.is_empty() || realm.len() > 127 {
        errors.push("realm: must be 1 to 127 characters".to_owned());
    }
    let max_lifetime = r.max_lifetime.unwrap_or(3600);
    if max_lifetime == 0 {
        errors.push("relay.max_lifetime: must be at least 1 second".to_owned());
    }
    if r.tls_cert.is_some() != r.tls_key.is_some() {
        errors.push("relay.tls_cert and relay.tls_key: give both or neither".to_owned());
    }
    let d = StreamLimits::default();
    let mut positive = |key: &str, v: Option<u64>, default: u64| -> u64 {
        match v {
            Some(0) => {
                errors.push(format!("relay.{key}: must be at least 1"));
                default
            }
            Some(n) => n,
            None => default,
        }
    };
    let stream = StreamLimits {
        max_connections_per_ip: positive("max_connections_per_ip", r.max_connections_per_ip.map(u64::from), 64)
            .try_into()
            .unwrap_or(u32::MAX),
        max_connections: positive("max_connections", r.max_connections.map(u64::from), 20_000)
            .try_into()
            .unwrap_or(u32::MAX),
        tls_handshake_timeout: Duration::from_secs(positive("tls_handshake_timeout", r.tls_handshake_timeout, 10)),
        allocate_timeout: Duration::from_secs(positive("allocate_timeout", r.allocate_timeout, 60)),
        idle_timeout: Duration::from_secs(positive("idle_timeout", r.idle_timeout, 600)),
        max_frame: r.max_frame.unwrap_or(d.max_frame),
        outbound_queue: r.outbound_queue.unwrap_or(d.outbound_queue),
    };
    if !(512..=65_535).contains(&stream.max_frame) {
        errors.push("relay.max_frame: must be 512 to 65535".to_owned());
    }
    if !(1..=65_536).contains(&stream.outbound_queue) {
        errors.push("relay.outbound_queue: must be 1 to 65536".to_owned());
    }
    if f.shards == Some(0) {
        errors.push("shards: must be at least 1 (omit it for one per core)".to_owned());
    }
    if let Some(secrets) = &f.secrets {
        if secrets.iter().any(|s| s.trim().is_empty()) {
            errors.push("secrets: secrets must not be empty".to_owned());
        }
    }
    let usage_reset_day = f.usage.reset_day.unwrap_or(1);
    if !(1..=28).contains(&usage_reset_day) {
        errors.push("usage.reset_day: must be 1 to 28".to_owned());
    }
    let usage_flush = f.usage.flush_interval.unwrap_or(5);
    if !(1..=10).contains(&usage_flush) {
        errors.push("usage.flush_interval: must be 1 to 10 seconds".to_owned());
    }
    let http_limits = http_limits(&f.http_limits, &mut errors);
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(Settings {
        http_limits,
        usage_reset_day,
        usage_flush_interval: Duration::from_secs(usage_flush),
        usage_enforce_on_relay: f.usage.enforce_on_relay.unwrap_or(false),
        data_dir: f.data_dir.clone().unwrap_or_else(|| PathBuf::from("./turnkey-data")),
        realm,
        secrets: f.secrets.clone().unwrap_or_default(),
        secret_file: f.secret_file.clone(),
        log_json,
        shards: f.shards.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        udp,
        udp_is_default,
        tcp,
        tcp_is_default,
        tls,
        tls_is_default,
        tls_cert: r.tls_cert.clone(),
        tls_key: r.tls_key.clone(),
        stream,
        relay_v4,
        relay_v6,
        relay_ports,
        external_v4,
        external_v6,
        allow_peer,
        deny_peer,
        max_allocations_per_user: r.max_allocations_per_user.unwrap_or(100),
        max_allocations: r.max_allocations.unwrap_or(50_000),
        max_permissions: r.max_permissions.unwrap_or(64),
        max_channels: r.max_channels.unwrap_or(64),
        bandwidth_limit: r.bandwidth_limit.unwrap_or(0),
        max_lifetime: Duration::from_secs(max_lifetime),
        nonce_lifetime: Duration::from_secs(r.nonce_lifetime.unwrap_or(600).max(1)),
        unauth_replies_per_sec: r.unauth_replies_per_sec.unwrap_or(50),
        rfc5766_channel_numbers: r.rfc5766_channel_numbers.unwrap_or(false),
        software: r.software.clone(),
        drain_grace: Duration::from_secs(r.drain_grace.unwrap_or(30)),
        metrics,
        http,
        advertise_explicit: f.issuer.advertise != turnkey_issuer::AdvertiseConfig::default(),
        issuer: f.issuer.clone(),
    })
}

/// Parses `LO-HI` (inclusive, LO <= HI, not 0).
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("`{s}` is not LO-HI"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("`{lo}` is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("`{hi}` is not a port"))?;
    if lo == 0 || lo > hi {
        return Err(format!("`{s}`: need 1 <= LO <= HI"));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_embedded_default() {
        let s = validate(&parse_file("").unwrap()).unwrap();
        assert_eq!(s.udp.len(), 2);
        assert_eq!(s.tcp.len(), 2);
        assert_eq!(s.tls.len(), 2);
        assert_eq!(s.tls[0].port(), 5349);
        assert_eq!(s.stream.allocate_timeout, Duration::from_secs(60));
        assert_eq!(s.relay_ports, 49152..=65535);
        assert_eq!(s.max_lifetime, Duration::from_secs(3600));
        assert!(s.allow_peer.is_empty());
    }

    #[test]
    fn every_unknown_key_is_reported_at_once() {
        let err = parse_file("bogus = 1\n[relay]\nudpp = []\nmax_allocations = 3\n[nope]\nx = 1\n").unwrap_err();
        let msg = format!("{err:#}");
        for k in ["bogus", "relay.udpp", "nope"] {
            assert!(msg.contains(k), "{msg}");
        }
    }

    #[test]
    fn every_invalid_value_is_reported_at_once() {
        let f = parse_file(
            "log_format = \"xml\"\n[relay]\nudp = [\"nope\"]\nrelay_ports = \"9-1\"\nallow_peer = [\"300.0.0.0/8\"]\nrelay_ip = [\"x\"]\n",
        )
        .unwrap();
        let msg = format!("{:#}", validate(&f).unwrap_err());
        for part in ["log_format", "relay.udp", "relay.relay_ports", "relay.allow_peer", "relay.relay_ip"] {
            assert!(msg.contains(part), "{part} missing in {msg}");
        }
    }

    #[test]
    fn stream_listeners_and_limits() {
        let s = validate(
            &parse_file("[relay]\ntcp = [\"off\"]\ntls = [\"127.0.0.1:443\"]\nallocate_timeout = 5\nmax_connections_per_ip = 3\n")
                .unwrap(),
        )
        .unwrap();
        assert!(s.tcp.is_empty());
        assert_eq!(s.tls, vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
        assert_eq!(s.stream.allocate_timeout, Duration::from_secs(5));
        assert_eq!(s.stream.max_connections_per_ip, 3);
        let f = parse_file(
            "[relay]\ntcp = [\"x\"]\ntls_cert = \"/c.pem\"\nidle_timeout = 0\nmax_frame = 10\noutbound_queue = 0\n",
        )
        .unwrap();
        let msg = format!("{:#}", validate(&f).unwrap_err());
        for part in ["relay.tcp", "tls_key", "relay.idle_timeout", "relay.max_frame", "relay.outbound_queue"] {
            assert!(msg.contains(part), "{part} missing in {msg}");
        }
        let err = parse_file("[relay]\ntlss = []\nmax_frame = 1000\n").unwrap_err();
        assert!(format!("{err:#}").contains("relay.tlss"));
    }

    #[test]
    fn usage_section() {
        let s =
            validate(&parse_file("[usage]\nreset_day = 15\nflush_interval = 2\nenforce_on_relay = true\n").unwrap())
                .unwrap();
        assert_eq!(
            (s.usage_reset_day, s.usage_flush_interval, s.usage_enforce_on_relay),
            (15, Duration::from_secs(2), true)
        );
        let d = validate(&parse_file("").unwrap()).unwrap();
        assert_eq!(
            (d.usage_reset_day, d.usage_flush_interval, d.usage_enforce_on_relay),
            (1, Duration::from_secs(5), false)
        );
        let msg = format!(
            "{:#}",
            validate(&parse_file("[usage]\nreset_day = 31\nflush_interval = 60\n").unwrap()).unwrap_err()
        );
        assert!(msg.contains("usage.reset_day") && msg.contains("usage.flush_interval"), "{msg}");
        assert!(parse_file("[usage]\nresetday = 1\n").is_err());
    }

    #[test]
    fn http_limits_section() {
        let text =
            "[http_limits]\nheader_timeout = 3\nidle_timeout = 30\nmax_connections = 100\nmax_connections_per_ip = 5\n";
        let h = validate(&parse_file(text).unwrap()).unwrap().http_limits;
        assert_eq!((h.header_timeout, h.idle_timeout), (Duration::from_secs(3), Duration::from_secs(30)));
        assert_eq!((h.max_connections, h.max_connections_per_ip), (Some(100), Some(5)));
        let d = validate(&parse_file("").unwrap()).unwrap().http_limits;
        assert_eq!((d.header_timeout, d.idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
        assert_eq!((d.max_connections, d.max_connections_per_ip), (None, None));
        let msg = format!(
            "{:#}",
            validate(&parse_file("[http_limits]\nheader_timeout = 0\nmax_connections = 0\n").unwrap()).unwrap_err()
        );
        assert!(msg.contains("http_limits.header_timeout") && msg.contains("http_limits.max_connections"), "{msg}");
        let msg = format!("{:#}", parse_file("[http_limits]\nheader_timeot = 1\n").unwrap_err());
        assert!(msg.contains("unknown key `http_limits.header_timeot`"), "{msg}");
    }

    #[test]
    fn type_errors_are_reported() {
        assert!(parse_file("[relay]\nmax_allocations = \"many\"\n").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("1000-2000").unwrap(), 1000..=2000);
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("2000-1000").is_err());
        assert!(parse_port_range("abc").is_err());
    }
}

#[cfg(test)]
mod deploy_examples {
    use super::*;

    /// Every example config shipped in `deploy/` parses and validates.
    #[test]
    fn every_deploy_example_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut seen = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "toml") {
                    let f = load_file(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                    validate(&f).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                    seen += 1;
                }
            }
        }
        assert!(seen >= 2, "expected example configs in deploy/");
    }
}
