//! Typed, strict configuration: a TOML file (`--config`), then `TURNKEY_*` environment variables,
//! then flags, each overriding the one before. The layers are merged as TOML first (flags
//! serialize to the same keys as the file), then read once into the types that own the
//! settings: [`EngineSettings`] and [`StreamLimits`] (turnkey-relay), [`IssuerConfig`]
//! (turnkey-issuer), [`UsageConfig`] (turnkey-usage) and this binary's own [`Node`],
//! [`RelaySettings`], [`MetricsSettings`], [`HttpLimitsSettings`] and [`FleetSettings`]. Each default is defined once, in the owning type's
//! `Default`, and `--help` shows it from there. Values are checked while they are parsed;
//! unknown keys and every bad value are reported together, so an operator fixes a config in one
//! round.
//!
//! Adding a setting touches its owning type (field and default), the flag (if it has one) and
//! the documentation; adding an owning type adds one line to [`Settings::owners`].

mod fleet;
mod loader;
pub mod values;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use turnkey_issuer::{HttpLimits, IssuerConfig};
use turnkey_relay::conn::StreamLimits;
use turnkey_relay::engine::EngineSettings;
use turnkey_relay::policy::PeerRule;
use turnkey_types::parse::{in_range, nonzero_secs};
use turnkey_types::{DEFAULT_PORT, DEFAULT_TLS_PORT};
use turnkey_usage::UsageConfig;

pub use fleet::FleetSettings;
pub use loader::{merge, Loader};
use values::{text, text_list, ConnCap, IpPair, Listen, ListenList, LogFormat, PortRange, Realm, Secrets};

/// The data directory when none is configured (`data_dir`, `--data-dir`).
pub const DEFAULT_DATA_DIR: &str = "./turnkey-data";

/// Every setting, in the types that own them.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Top-level keys.
    pub node: Node,
    /// The `[relay]` keys the binary wires: listeners, TLS files, relay addresses, peer rules.
    pub relay: RelaySettings,
    /// The engine's `[relay]` keys.
    pub engine: EngineSettings,
    /// The TCP/TLS `[relay]` keys.
    pub stream: StreamLimits,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[usage]`.
    pub usage: UsageConfig,
    /// `[issuer]`.
    pub issuer: IssuerConfig,
    /// `[http_limits]`.
    pub http_limits: HttpLimitsSettings,
    /// `[fleet]`: Redis and this process's place in the fleet.
    pub fleet: FleetSettings,
}

/// The top-level keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Where the secret, keys, revocations and usage are kept.
    pub data_dir: PathBuf,
    /// REALM of long-term credentials.
    #[serde(with = "text")]
    pub realm: Realm,
    /// Shared secrets, newest first (prefer `secret_file`).
    pub secrets: Secrets,
    /// A file holding one secret per line, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Data-path shards (absent: one per core).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<NonZeroUsize>,
    /// HTTP listener of the credential issuer, or `off`.
    #[serde(with = "text")]
    pub http: Listen,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            realm: Realm::default(),
            secrets: Secrets::default(),
            secret_file: None,
            log_format: LogFormat::Text,
            shards: None,
            http: Listen(Some(([0, 0, 0, 0], 8080).into())),
        }
    }
}

impl Node {
    /// Data-path shards: as configured, else one per core.
    pub fn shards(&self) -> usize {
        self.shards.map_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get), NonZeroUsize::get)
    }
}

/// The `[relay]` keys this binary wires itself (the engine's and the streams' are read into
/// [`EngineSettings`] and [`StreamLimits`] from the same table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RelaySettings {
    /// UDP listening addresses.
    pub udp: ListenList,
    /// TCP listening addresses (`["off"]` or `[]`: none).
    pub tcp: ListenList,
    /// TLS listening addresses (`["off"]` or `[]`: none).
    pub tls: ListenList,
    /// TLS certificate chain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Addresses relay sockets bind to (none: the primary IPv4).
    pub relay_ip: IpPair,
    /// Ports of relay sockets.
    #[serde(with = "text")]
    pub relay_ports: PortRange,
    /// Addresses advertised instead of the relay IPs (1:1 NAT).
    pub external_ip: IpPair,
    /// Peer allow rules (CIDR, optionally with ports).
    #[serde(with = "text_list")]
    pub allow_peer: Vec<PeerRule>,
    /// Peer deny rules.
    #[serde(with = "text_list")]
    pub deny_peer: Vec<PeerRule>,
    /// Seconds live allocations are served after SIGTERM.
    #[serde(with = "turnkey_types::parse::secs")]
    pub drain_grace: Duration,
    /// The kernel fast path: `auto`, `xdp` or `off` (docs/fastpath.md).
    #[serde(with = "text")]
    pub fast_path: turnkey_fastpath::FastPathMode,
    /// The live session listing (`/v1/sessions`, the fleet's session index): `false` turns it
    /// off (shards take no snapshot at their sweep; docs/observability.md).
    pub sessions: bool,
    /// SCHED_FIFO priority of the shard threads, 1 to 99; 0: ordinary threads (docs/relay.md:
    /// what it buys on a busy machine and what it risks).
    #[serde(deserialize_with = "in_range::<_, _, 0, 99>")]
    pub shard_rt_priority: turnkey_relay::priority::ShardPriority,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            udp: ListenList::any(DEFAULT_PORT),
            tcp: ListenList::any(DEFAULT_PORT),
            tls: ListenList::any(DEFAULT_TLS_PORT),
            tls_cert: None,
            tls_key: None,
            relay_ip: IpPair::default(),
            relay_ports: PortRange::default(),
            external_ip: IpPair::default(),
            allow_peer: Vec::new(),
            deny_peer: Vec::new(),
            drain_grace: Duration::from_secs(30),
            fast_path: turnkey_fastpath::FastPathMode::default(),
            sessions: true,
            shard_rt_priority: turnkey_relay::priority::ShardPriority::ORDINARY,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsSettings {
    /// Listening address of `/metrics`, or `off`.
    #[serde(with = "text")]
    pub listen: Listen,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { listen: Listen(Some(([0, 0, 0, 0], 9641).into())) }
    }
}

/// `[http_limits]`: bounds of every HTTP connection, on the issuer's and the metrics listener
/// each (resolved into `turnkey_issuer::HttpLimits` by `fdlimit::http_limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpLimitsSettings {
    /// Seconds a client has to send a request head (from the accept, and again while a kept-alive
    /// connection waits for its next request).
    #[serde(with = "nonzero_secs")]
    pub header_timeout: Duration,
    /// Seconds a connection may move no byte in either direction before it is closed.
    #[serde(with = "nonzero_secs")]
    pub idle_timeout: Duration,
    /// Connections per listener; `auto`: an eighth of the open-file limit, 16 to 4096.
    pub max_connections: ConnCap,
    /// Connections per client IP (IPv6: per /64) per listener (never above `max_connections`).
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub max_connections_per_ip: u32,
}

impl Default for HttpLimitsSettings {
    /// The issuer's [`HttpLimits`] defaults; the connection cap sized from the open-file limit.
    fn default() -> Self {
        let d = HttpLimits::default();
        Self {
            header_timeout: d.header_timeout,
            idle_timeout: d.idle_timeout,
            max_connections: ConnCap::Auto,
            max_connections_per_ip: d.max_connections_per_ip,
        }
    }
}

/// What [`Settings::owners`] hands each owning type to.
pub trait Owners {
    /// `slot` owns keys of `section` (`""`: the top level).
    fn owner<T: Serialize + DeserializeOwned + Default>(&mut self, section: &str, slot: &mut T);
}

impl Owners for Loader {
    fn owner<T: Serialize + DeserializeOwned + Default>(&mut self, section: &str, slot: &mut T) {
        *slot = self.section(section);
    }
}

/// Collects the defaults as a config table.
struct Defaults(toml::Table);

impl Owners for Defaults {
    fn owner<T: Serialize + DeserializeOwned + Default>(&mut self, section: &str, slot: &mut T) {
        let table = loader::to_table(slot);
        if section.is_empty() {
            merge(&mut self.0, table);
        } else {
            merge(&mut self.0, toml::Table::from_iter([(section.to_owned(), toml::Value::Table(table))]));
        }
    }
}

impl Settings {
    /// The one list of owning types and the sections they read.
    pub fn owners(&mut self, o: &mut impl Owners) {
        o.owner("", &mut self.node);
        o.owner("relay", &mut self.relay);
        o.owner("relay", &mut self.engine);
        o.owner("relay", &mut self.stream);
        o.owner("metrics", &mut self.metrics);
        o.owner("usage", &mut self.usage);
        o.owner("issuer", &mut self.issuer);
        o.owner("http_limits", &mut self.http_limits);
        o.owner("fleet", &mut self.fleet);
    }

    /// Reads a merged config table; every error in one message.
    #[cfg(test)]
    pub fn from_table(table: toml::Table) -> anyhow::Result<Self> {
        Self::read(Loader::new(table))
    }

    fn read(mut loader: Loader) -> anyhow::Result<Self> {
        let mut s = Self::default();
        s.owners(&mut loader);
        s.check(&mut loader);
        loader.finish().map_err(anyhow::Error::msg)?;
        Ok(s)
    }

    /// Reads the config file at `path` (if any) with `overlay` (env and flags) merged over it.
    pub fn load(path: Option<&Path>, overlay: toml::Table) -> anyhow::Result<Self> {
        let mut table = match path {
            Some(p) => read_table(p)?,
            None => toml::Table::new(),
        };
        merge(&mut table, overlay.clone());
        let loader = Loader::new(table).overridden_by(&overlay);
        match path {
            Some(p) => Self::read(loader).with_context(|| format!("invalid config {}", p.display())),
            None => Self::read(loader),
        }
    }

    /// Every default, as a config table (the source of the defaults `--help` shows).
    pub fn defaults() -> toml::Table {
        let mut d = Defaults(toml::Table::new());
        Self::default().owners(&mut d);
        d.0
    }

    /// Whether `[issuer.advertise]` was configured (else the actual listeners are advertised).
    pub fn advertise_explicit(&self) -> bool {
        self.issuer.advertise != turnkey_issuer::AdvertiseConfig::default()
    }

    /// The checks that span several keys.
    fn check(&self, loader: &mut Loader) {
        if self.relay.tls_cert.is_some() != self.relay.tls_key.is_some() {
            loader.error("relay.tls_cert and relay.tls_key: give both or neither");
        }
    }
}

/// Reads a TOML file as a table (syntax errors only; the keys are read by [`Settings`]).
pub fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
    text.parse::<toml::Table>()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("invalid config {}", path.display()))
}

#[cfg(test)]
mod tests;
