//! Command-line flags. Every flag also reads a `TURNKEY_*` variable; flags beat variables, and both
//! beat the config file.

use std::path::PathBuf;

use clap::{Args, Command as ClapCommand, CommandFactory as _, Parser, Subcommand};
use serde::Serialize;

use crate::config::values::ConnCap;
use crate::config::Settings;

/// turnkey: a self-hosted TURN relay and TURN credential issuer.
#[derive(Debug, Parser)]
#[command(name = "turnkey", version = crate::obs::LONG_VERSION, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay (and its metrics endpoint) with the embedded default or a config.
    Serve(Box<ServeArgs>),
    /// Print a TURN REST username/credential pair as JSON (never creates a secret).
    Creds(CredsArgs),
    /// Create the shared secret for `--secret-file` (`turnkey secret generate --out FILE`).
    Secret(SecretArgs),
    /// Validate a config file, reporting every error at once.
    CheckConfig(CheckArgs),
    /// Run the credential issuer alone (relays run elsewhere, sharing the secret).
    Issuer(Box<IssuerArgs>),
    /// Manage TURN keys (tenants) in the data directory, or in the fleet's Redis (`--redis`).
    Keys(KeysArgs),
    /// Print the fleet's relays with health and load (from Redis, or an issuer's `/v1/fleet`).
    Fleet(FleetCmdArgs),
    /// Print live sessions (allocations), or end one with `kill ID` (from an issuer's
    /// `/v1/sessions`, or from the fleet's Redis).
    Sessions(SessionsArgs),
    /// Load-test any TURN server (turnkey, coturn, Cloudflare). Exit 0: the run passed its gates
    /// (`--max-loss`, `--max-p99`); 1: it did not; 2: it could not run.
    Load(Box<turnkey_load::LoadArgs>),
}

/// `turnkey issuer`.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct IssuerArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs,
}

/// `turnkey keys`.
#[derive(Debug, Args, Clone)]
pub struct KeysArgs {
    /// Data directory holding `keys/`.
    #[arg(long, env = "TURNKEY_DATA_DIR", default_value = crate::config::DEFAULT_DATA_DIR, global = true)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// Reaching the fleet's Redis from a one-shot command (`turnkey keys`, `turnkey fleet`).
#[derive(Debug, Args, Clone)]
pub struct RedisArgs {
    /// Fleet mode: the fleet's Redis URL (`redis://`, `rediss://`, or Sentinel's
    /// `redis+sentinel://h1:26379,h2:26379/mymaster`); keys then live there.
    #[arg(long, env = "TURNKEY_REDIS", hide_env_values = true, global = true)]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "TURNKEY_REDIS_PREFIX", default_value = turnkey_fleet::DEFAULT_PREFIX, global = true)]
    pub redis_prefix: String,
    /// CA certificate(s) (PEM) of the Redis server, for `rediss://` and `rediss+sentinel://`
    /// (default: system roots).
    #[arg(long, env = "TURNKEY_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
}

/// `turnkey fleet`: from Redis (`--redis`) or from an issuer (`--issuer URL --token T`).
#[derive(Debug, Args, Clone)]
pub struct FleetCmdArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// An issuer's base URL (`http://host:8080`): print its `GET /v1/fleet`.
    #[arg(long, conflicts_with = "redis")]
    pub issuer: Option<String>,
    /// Any TURN key's API token, for `--issuer`.
    #[arg(long, env = "TURNKEY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the listing as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `turnkey sessions [kill ID]`: from an issuer (`--issuer URL --token T`) or Redis (`--redis`).
#[derive(Debug, Args, Clone)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// An issuer's base URL (`http://host:8080`): use its `/v1/sessions`.
    #[arg(long, conflicts_with = "redis", global = true)]
    pub issuer: Option<String>,
    /// A key's API token (its sessions only), or an operator token (every key's), for `--issuer`.
    #[arg(long, env = "TURNKEY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub filters: SessionFilters,
    /// Print at most this many sessions (default: all).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON (an array of sessions) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// `kill ID` ends one session.
    #[command(subcommand)]
    pub action: Option<SessionsAction>,
}

/// The filters of `turnkey sessions` (the API's query parameters).
#[derive(Debug, Args, Clone, Default)]
pub struct SessionFilters {
    /// Only this user (the `customIdentifier`, or the user part of the username).
    #[arg(long)]
    pub user: Option<String>,
    /// Only this TURN key's sessions.
    #[arg(long)]
    pub key: Option<String>,
    /// Only clients at this IP address.
    #[arg(long)]
    pub client_ip: Option<String>,
    /// Only this relay node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only this transport (`udp`, `tcp`, `tls`).
    #[arg(long)]
    pub transport: Option<String>,
}

/// `turnkey sessions kill ID`.
#[derive(Debug, Subcommand, Clone)]
pub enum SessionsAction {
    /// End one session now (its client's next request gets 437).
    Kill {
        /// The session id (16 hex digits, from the listing).
        id: String,
    },
}

/// `turnkey keys create|list|delete`.
#[derive(Debug, Subcommand, Clone)]
pub enum KeysAction {
    /// Create a key; prints `{"id": ..., "token": ...}` once.
    Create {
        /// Largest TTL this key may ask for, in seconds.
        #[arg(long)]
        max_ttl: Option<u64>,
        /// Monthly relayed-bandwidth cap in bytes.
        #[arg(long)]
        monthly_bandwidth_bytes: Option<u64>,
        /// An operator key: its token lists and ends every key's live sessions.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never tokens), one JSON object per line.
    List,
    /// Delete a key.
    Delete {
        /// The key id.
        id: String,
    },
}

/// Settings shared by every subcommand that reads the config (top-level keys).
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct CommonArgs {
    /// TOML config file.
    #[arg(long, env = "TURNKEY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory (secret, keys, revocations, usage).
    #[arg(long, env = "TURNKEY_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// REALM of long-term credentials.
    #[arg(long, env = "TURNKEY_REALM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Shared secret (repeatable, newest first; during rotation give the new one first).
    #[arg(long = "secret", env = "TURNKEY_SECRET", value_delimiter = ',', hide_env_values = true)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// File with one secret per line, newest first.
    #[arg(long, env = "TURNKEY_SECRET_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

/// Flags of the long-running services (`serve`, `issuer`): top-level keys, `[metrics]` and
/// `[issuer]`.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct ServiceArgs {
    /// Issuer HTTP listener (`off` to disable).
    #[arg(long, env = "TURNKEY_HTTP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "TURNKEY_LOG_FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "MetricsArgs::is_empty")]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    #[serde(skip_serializing_if = "IssuerFlags::is_empty")]
    pub issuer: IssuerFlags,
    #[command(flatten)]
    #[serde(skip_serializing_if = "HttpLimitArgs::is_empty")]
    pub http_limits: HttpLimitArgs,
    #[command(flatten)]
    #[serde(skip_serializing_if = "FleetArgs::is_empty")]
    pub fleet: FleetArgs,
}

/// `[metrics]` flags.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct MetricsArgs {
    /// Prometheus listener (`off` to disable).
    #[arg(long = "metrics", env = "TURNKEY_METRICS", value_name = "METRICS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl MetricsArgs {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
    }
}

/// `[issuer]` flags.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct IssuerFlags {
    /// Host name put in advertised TURN/STUN URLs.
    #[arg(long, env = "TURNKEY_PUBLIC_HOST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_host: Option<String>,
    /// Fleet mode: relays per credential answer.
    #[arg(long, env = "TURNKEY_RELAYS_PER_ANSWER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relays_per_answer: Option<usize>,
}

impl IssuerFlags {
    fn is_empty(&self) -> bool {
        self.public_host.is_none() && self.relays_per_answer.is_none()
    }
}

/// `[http_limits]` flags: bounds of the HTTP listeners (issuer and metrics). Each flag is named
/// `--http-KEY` and sets `http_limits.KEY`.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct HttpLimitArgs {
    /// Seconds an HTTP client has to send a request head.
    #[arg(long, env = "TURNKEY_HTTP_HEADER_TIMEOUT")]
    #[serde(rename = "header_timeout", skip_serializing_if = "Option::is_none")]
    pub http_header_timeout: Option<u64>,
    /// Seconds an HTTP connection may move no byte before it is closed.
    #[arg(long, env = "TURNKEY_HTTP_IDLE_TIMEOUT")]
    #[serde(rename = "idle_timeout", skip_serializing_if = "Option::is_none")]
    pub http_idle_timeout: Option<u64>,
    /// HTTP connections per listener (`auto`: an eighth of the open-file limit, 16 to 4096).
    #[arg(long, env = "TURNKEY_HTTP_MAX_CONNECTIONS")]
    #[serde(rename = "max_connections", skip_serializing_if = "Option::is_none")]
    pub http_max_connections: Option<ConnCap>,
    /// HTTP connections per client IP (IPv6: per /64) per listener.
    #[arg(long, env = "TURNKEY_HTTP_MAX_CONNECTIONS_PER_IP")]
    #[serde(rename = "max_connections_per_ip", skip_serializing_if = "Option::is_none")]
    pub http_max_connections_per_ip: Option<u32>,
}

impl HttpLimitArgs {
    fn is_empty(&self) -> bool {
        self.http_header_timeout.is_none()
            && self.http_idle_timeout.is_none()
            && self.http_max_connections.is_none()
            && self.http_max_connections_per_ip.is_none()
    }
}

/// `[fleet]` flags: joining a fleet (fleet mode starts when `--redis` is given).
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct FleetArgs {
    /// Redis URL (`redis://[:password@]host[:port][/db]`, `rediss://`, or a Sentinel-monitored
    /// primary `redis+sentinel://[:password@]h1:26379,h2:26379/mymaster`, `rediss+sentinel://`):
    /// join a fleet.
    #[arg(long, env = "TURNKEY_REDIS", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "TURNKEY_REDIS_PREFIX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_prefix: Option<String>,
    /// CA certificate(s) (PEM) of the Redis server, for `rediss://` and `rediss+sentinel://`
    /// (default: system roots).
    #[arg(long, env = "TURNKEY_REDIS_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// This process's name in the fleet (default: the host name).
    #[arg(long, env = "TURNKEY_NODE_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// This process's region label (issuers prefer relays of their region).
    #[arg(long, env = "TURNKEY_REGION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl FleetArgs {
    fn is_empty(&self) -> bool {
        self.redis.is_none()
            && self.redis_prefix.is_none()
            && self.redis_ca_file.is_none()
            && self.node_id.is_none()
            && self.region.is_none()
    }
}

/// `turnkey serve`.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub service: ServiceArgs,
    /// Data-path shards (default: one per core).
    #[arg(long, env = "TURNKEY_SHARDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// `[relay]` flags of `turnkey serve`.
#[derive(Debug, Args, Clone, Default, Serialize)]
pub struct RelayArgs {
    /// UDP listening address (repeatable).
    #[arg(long, env = "TURNKEY_UDP", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub udp: Vec<String>,
    /// TCP listening address (repeatable; `off` disables).
    #[arg(long, env = "TURNKEY_TCP", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<String>,
    /// TLS listening address (repeatable; `off` disables).
    #[arg(long, env = "TURNKEY_TLS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<String>,
    /// TLS certificate chain (PEM); reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "TURNKEY_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "TURNKEY_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// TCP/TLS connections one client IP (IPv6: one /64) may hold.
    #[arg(long, env = "TURNKEY_MAX_CONNECTIONS_PER_IP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// TCP/TLS connections in total.
    #[arg(long, env = "TURNKEY_MAX_CONNECTIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Seconds allowed for a TLS handshake.
    #[arg(long, env = "TURNKEY_TLS_HANDSHAKE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_handshake_timeout: Option<u64>,
    /// Seconds a TCP/TLS connection may go without an allocation before it is closed.
    #[arg(long, env = "TURNKEY_ALLOCATE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocate_timeout: Option<u64>,
    /// Seconds a TCP/TLS connection may stay silent before it is closed.
    #[arg(long, env = "TURNKEY_IDLE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<u64>,
    /// Bytes queued towards one TCP/TLS client before its packets are dropped.
    #[arg(long, env = "TURNKEY_OUTBOUND_QUEUE_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_queue_bytes: Option<usize>,
    /// Seconds a write to a TCP/TLS client may make no progress before the connection is closed.
    #[arg(long, env = "TURNKEY_WRITE_TIMEOUT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<u64>,
    /// Address relay sockets bind to (one IPv4 and/or one IPv6; default: the primary IPv4).
    #[arg(long, env = "TURNKEY_RELAY_IP", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relay_ip: Vec<String>,
    /// Relay port range LO-HI.
    #[arg(long, env = "TURNKEY_RELAY_PORTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_ports: Option<String>,
    /// Public address advertised in XOR-RELAYED-ADDRESS (1:1 NAT).
    #[arg(long, env = "TURNKEY_EXTERNAL_IP", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_ip: Vec<String>,
    /// Allow relaying to this CIDR (optionally `:PORT` or `:LO-HI`); repeatable.
    #[arg(long, env = "TURNKEY_ALLOW_PEER", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_peer: Vec<String>,
    /// Deny relaying to this CIDR (beats allow rules); repeatable.
    #[arg(long, env = "TURNKEY_DENY_PEER", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny_peer: Vec<String>,
    /// Allocations one userid may hold at once (486 past it).
    #[arg(long, env = "TURNKEY_MAX_ALLOCATIONS_PER_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_allocations_per_user: Option<u32>,
    /// Allocations this relay holds at once (508 past it).
    #[arg(long, env = "TURNKEY_MAX_ALLOCATIONS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_allocations: Option<u32>,
    /// Per-allocation bandwidth cap in bytes per second (0: none).
    #[arg(long, env = "TURNKEY_BANDWIDTH_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Replies to unauthenticated requests per second per source IP (0: unlimited).
    #[arg(long, env = "TURNKEY_UNAUTH_REPLIES_PER_SEC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unauth_replies_per_sec: Option<u32>,
    /// Accept RFC 5766 channel numbers up to 0x7FFF (for older clients).
    #[arg(long, env = "TURNKEY_RFC5766_CHANNEL_NUMBERS")]
    #[serde(skip_serializing_if = "is_false")]
    pub rfc5766_channel_numbers: bool,
    /// Seconds live allocations are served after SIGTERM before exit.
    #[arg(long, env = "TURNKEY_DRAIN_GRACE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_grace: Option<u64>,
    /// Kernel fast path for bound channels: auto, xdp or off (docs/fastpath.md).
    #[arg(long, env = "TURNKEY_FAST_PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<String>,
    /// Turn the live session listing off (`[relay] sessions = false`): no snapshot at the
    /// sweeps, no fleet session index, `/v1/sessions` answers 501.
    #[arg(long, env = "TURNKEY_NO_SESSIONS")]
    #[serde(rename = "sessions", skip_serializing_if = "is_false", serialize_with = "negated")]
    pub no_sessions: bool,
    /// SCHED_FIFO priority of the shard threads, 1 to 99 (0: ordinary threads; needs
    /// CAP_SYS_NICE; docs/relay.md).
    #[arg(long, env = "TURNKEY_SHARD_RT_PRIORITY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_rt_priority: Option<u64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `--no-sessions` is `sessions = false`.
fn negated<S: serde::Serializer>(b: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bool(!*b)
}

/// `turnkey creds`.
#[derive(Debug, Args, Clone)]
pub struct CredsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The userid to mint for.
    #[arg(long)]
    pub user: String,
    /// Validity in seconds.
    #[arg(long, default_value_t = turnkey_issuer::DEFAULT_TTL)]
    pub ttl: u64,
}

/// `turnkey secret`.
#[derive(Debug, Args, Clone)]
pub struct SecretArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SecretAction,
}

/// `turnkey secret generate`.
#[derive(Debug, Subcommand, Clone)]
pub enum SecretAction {
    /// A new random secret (32 bytes, base64url): written to `--out` (mode 0600, never replacing
    /// an existing file), else printed.
    Generate {
        /// The secret file to create (e.g. /etc/turnkey/secret, then `--secret-file` it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `turnkey check-config`.
#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// The config file to validate.
    pub file: PathBuf,
}

/// The flags of a subcommand as a config table: the keys they set, nothing else.
pub fn overlay(flags: &impl Serialize) -> anyhow::Result<toml::Table> {
    Ok(toml::Table::try_from(flags)?)
}

/// Appends `[default: ...]` to the help of every flag of `G` whose key (its id without `prefix`)
/// has a default in `section` of `defaults`, so `--help` shows the default the owning type
/// defines.
fn help_defaults<G: Args>(mut cmd: ClapCommand, section: &str, prefix: &str, defaults: &toml::Table) -> ClapCommand {
    let table = if section.is_empty() { Some(defaults) } else { defaults.get(section).and_then(toml::Value::as_table) };
    let Some(table) = table else { return cmd };
    for arg in G::augment_args(ClapCommand::new("group")).get_arguments() {
        let id = arg.get_id().as_str();
        let key = id.strip_prefix(prefix).unwrap_or(id);
        let Some(v) = table.get(key).and_then(show) else { continue };
        cmd = cmd.mut_arg(id, |a| {
            let help = a.get_help().map(ToString::to_string).unwrap_or_default();
            a.help(format!("{help} [default: {v}]"))
        });
    }
    cmd
}

fn show(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Array(a) if a.is_empty() => None,
        toml::Value::Array(a) => Some(a.iter().filter_map(show).collect::<Vec<_>>().join(",")),
        toml::Value::Table(_) => None,
        other => Some(other.to_string()),
    }
}

/// The command line, with the defaults of [`Settings`] in the help of `serve` and `issuer`.
pub fn command() -> ClapCommand {
    let d = Settings::defaults();
    let service = |c: ClapCommand| {
        let c = help_defaults::<CommonArgs>(c, "", "", &d);
        let c = help_defaults::<ServiceArgs>(c, "", "", &d);
        let c = help_defaults::<MetricsArgs>(c, "metrics", "", &d);
        let c = help_defaults::<HttpLimitArgs>(c, "http_limits", "http_", &d);
        let c = help_defaults::<FleetArgs>(c, "fleet", "", &d);
        help_defaults::<IssuerFlags>(c, "issuer", "", &d)
    };
    Cli::command()
        .mut_subcommand("serve", |c| help_defaults::<RelayArgs>(service(c), "relay", "", &d))
        .mut_subcommand("issuer", service)
}

impl CommonArgs {
    /// The settings: the config file (if any) with these flags applied.
    pub fn load(&self) -> anyhow::Result<Settings> {
        Settings::load(self.config.as_deref(), overlay(self)?)
    }
}

impl ServeArgs {
    /// The settings: the config file with every flag of `serve` applied.
    pub fn load(&self) -> anyhow::Result<Settings> {
        Settings::load(self.common.config.as_deref(), overlay(self)?)
    }
}

impl IssuerArgs {
    /// The settings: the config file with every flag of `issuer` applied.
    pub fn load(&self) -> anyhow::Result<Settings> {
        Settings::load(self.common.config.as_deref(), overlay(self)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::FromArgMatches as _;
    use serde::Deserialize;

    use turnkey_relay::conn::StreamLimits;

    use super::*;
    use crate::config::{merge, Loader};

    /// A setting added the way every setting is: a field and its default in the owning type...
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(default)]
    struct Throwaway {
        #[serde(with = "turnkey_types::parse::nonzero_secs")]
        linger: Duration,
    }

    impl Default for Throwaway {
        fn default() -> Self {
            Self { linger: Duration::from_secs(42) }
        }
    }

    /// ...and its flag, which serializes to the same key.
    #[derive(Debug, Args, Clone, Default, Serialize)]
    struct ThrowawayArgs {
        /// Seconds to linger.
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        linger: Option<u64>,
    }

    /// Reads the throwaway owner next to the engine's settings in the shared `[relay]` table,
    /// with `args` (flags) over `file`.
    fn read(file: &str, args: &[&str]) -> Result<(Throwaway, turnkey_relay::engine::EngineSettings), String> {
        let cmd = ThrowawayArgs::augment_args(ClapCommand::new("t"));
        let flags = ThrowawayArgs::from_arg_matches(&cmd.get_matches_from(args)).unwrap();
        let mut table: toml::Table = file.parse().unwrap();
        merge(&mut table, toml::Table::from_iter([("relay".to_owned(), toml::Value::Table(overlay(&flags).unwrap()))]));
        let mut loader = Loader::new(table);
        let t = loader.section::<Throwaway>("relay");
        let e = loader.section::<turnkey_relay::engine::EngineSettings>("relay");
        loader.finish().map(|()| (t, e))
    }

    #[test]
    fn a_new_setting_needs_only_its_owner_and_its_flag() {
        // The default, defined once, in the owner.
        assert_eq!(read("", &["t"]).unwrap().0.linger, Duration::from_secs(42));
        // The file sets it beside another owner's key; the flag beats the file.
        let (t, e) = read("[relay]\nlinger = 5\nmax_channels = 3\n", &["t"]).unwrap();
        assert_eq!((t.linger, e.max_channels), (Duration::from_secs(5), 3));
        assert_eq!(read("[relay]\nlinger = 5\n", &["t", "--linger", "6"]).unwrap().0.linger, Duration::from_secs(6));
        // Bad values (file or flag) and unknown keys are reported together.
        let msg = read("[relay]\nlingr = 1\nmax_channels = \"x\"\n", &["t", "--linger", "0"]).unwrap_err();
        for part in ["unknown key `relay.lingr`", "relay.linger: must be at least 1", "relay.max_channels"] {
            assert!(msg.contains(part), "{part} missing in {msg}");
        }
        // --help shows the owner's default.
        let defaults =
            toml::Table::from_iter([("relay".to_owned(), toml::Value::Table(config_table(&Throwaway::default())))]);
        let mut cmd =
            help_defaults::<ThrowawayArgs>(ThrowawayArgs::augment_args(ClapCommand::new("t")), "relay", "", &defaults);
        let help = cmd.render_help().to_string();
        assert!(help.contains("Seconds to linger [default: 42]"), "{help}");
    }

    fn config_table<T: Serialize>(v: &T) -> toml::Table {
        toml::Table::try_from(v).unwrap()
    }

    #[test]
    fn serve_flags_overlay_the_keys_they_name() {
        let cli = Cli::try_parse_from([
            "turnkey",
            "serve",
            "--realm",
            "r",
            "--metrics",
            "off",
            "--public-host",
            "h",
            "--udp",
            "127.0.0.1:1,127.0.0.1:2",
            "--idle-timeout",
            "3",
            "--outbound-queue-bytes",
            "65536",
            "--write-timeout",
            "4",
            "--rfc5766-channel-numbers",
            "--http-header-timeout",
            "4",
            "--http-max-connections",
            "9",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        let s = args.load().unwrap();
        assert_eq!(s.node.realm.as_str(), "r");
        assert_eq!(s.metrics.listen.0, None);
        assert_eq!(s.issuer.public_host, "h");
        assert_eq!(s.relay.udp.addrs.len(), 2);
        assert_eq!(s.stream.idle_timeout, Duration::from_secs(3));
        assert_eq!(s.stream.outbound_queue_bytes, 65_536);
        assert_eq!(s.stream.write_timeout, Duration::from_secs(4));
        assert!(s.engine.rfc5766_channel_numbers);
        assert_eq!(s.http_limits.header_timeout, Duration::from_secs(4));
        assert_eq!(s.http_limits.max_connections.to_string(), "9");
        // The relay's own connection flags stay the relay's.
        assert_eq!(s.stream.max_connections, StreamLimits::default().max_connections);
        // Unset flags leave the defaults.
        assert_eq!(s.engine.max_allocations, turnkey_relay::engine::EngineSettings::default().max_allocations);
        assert_eq!(s.http_limits.idle_timeout, crate::config::HttpLimitsSettings::default().idle_timeout);
    }

    /// The settings `turnkey serve --realm r --metrics off EXTRA...` runs with.
    fn serve_settings(extra: &[&str]) -> anyhow::Result<crate::config::Settings> {
        let mut argv = vec!["turnkey", "serve", "--realm", "r", "--metrics", "off"];
        argv.extend_from_slice(extra);
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { panic!("not serve") };
        args.load()
    }

    #[test]
    fn no_sessions_turns_the_listing_off() {
        assert!(serve_settings(&[]).unwrap().relay.sessions);
        assert!(!serve_settings(&["--no-sessions"]).unwrap().relay.sessions);
    }

    #[test]
    fn shard_rt_priority_flag_reaches_the_relay_settings_and_is_checked_there() {
        let load = serve_settings;
        assert_eq!(load(&[]).unwrap().relay.shard_rt_priority.realtime(), None);
        assert_eq!(load(&["--shard-rt-priority", "50"]).unwrap().relay.shard_rt_priority.realtime(), Some(50));
        let msg = format!("{:#}", load(&["--shard-rt-priority", "100"]).unwrap_err());
        assert!(msg.contains("relay.shard_rt_priority") && msg.contains("0 to 99"), "{msg}");
    }

    #[test]
    fn http_limit_flags_reach_http_limits_on_issuer_too() {
        let cli = Cli::try_parse_from([
            "turnkey",
            "issuer",
            "--http-idle-timeout",
            "7",
            "--http-max-connections",
            "auto",
            "--http-max-connections-per-ip",
            "3",
        ])
        .unwrap();
        let Command::Issuer(args) = cli.command else { panic!("not issuer") };
        let h = args.load().unwrap().http_limits;
        assert_eq!((h.idle_timeout, h.max_connections_per_ip), (Duration::from_secs(7), 3));
        assert_eq!(h.max_connections, ConnCap::Auto);
        let e = Cli::try_parse_from(["turnkey", "issuer", "--http-idle-timeout", "0"]).unwrap();
        let Command::Issuer(args) = e.command else { panic!("not issuer") };
        let msg = format!("{:#}", args.load().unwrap_err());
        assert!(msg.contains("http_limits.idle_timeout (from a flag or TURNKEY_* variable)"), "{msg}");
    }

    #[test]
    fn fleet_flags_on_serve_and_issuer() {
        for sub in ["serve", "issuer"] {
            let argv = [
                "turnkey",
                sub,
                "--redis",
                "redis://:pw@127.0.0.1:7000",
                "--redis-prefix",
                "t1:",
                "--node-id",
                "n-1",
                "--region",
                "eu",
            ];
            let cli = Cli::try_parse_from(argv).unwrap();
            let s = match cli.command {
                Command::Serve(a) => a.load().unwrap(),
                Command::Issuer(a) => a.load().unwrap(),
                _ => panic!("{sub}"),
            };
            let cfg = s.fleet.config().unwrap();
            assert_eq!(
                (cfg.url.as_str(), cfg.prefix.as_str(), cfg.node_id.as_str()),
                ("redis://:pw@127.0.0.1:7000", "t1:", "n-1")
            );
            assert_eq!(cfg.region.map(|r| r.as_str().to_owned()).as_deref(), Some("eu"));
            let help = command().find_subcommand_mut(sub).unwrap().render_help().to_string();
            assert!(help.contains("[default: turnkey:]"), "{help}");
        }
        let cli = Cli::try_parse_from(["turnkey", "issuer", "--redis", "http://x", "--node-id", "a b"]).unwrap();
        let Command::Issuer(a) = cli.command else { panic!("not issuer") };
        let msg = format!("{:#}", a.load().unwrap_err());
        assert!(msg.contains("fleet.node_id (from a flag") && msg.contains("redis://"), "{msg}");
    }
}
