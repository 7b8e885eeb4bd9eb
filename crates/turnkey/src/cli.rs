//! Command-line flags. Every flag also reads a `TURNKEY_*` variable; flags beat variables, and both
//! beat the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::FileConfig;

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
    /// Print a TURN REST username/credential pair as JSON.
    Creds(CredsArgs),
    /// Validate a config file, reporting every error at once.
    CheckConfig(CheckArgs),
    /// Run the credential issuer alone (relays run elsewhere, sharing the secret).
    Issuer(Box<IssuerArgs>),
    /// Manage TURN keys (tenants) in the data directory.
    Keys(KeysArgs),
    /// Load-test any TURN server (turnkey, coturn, Cloudflare). Exit 0: the run passed its gates
    /// (`--max-loss`, `--max-p99`); 1: it did not; 2: it could not run.
    Load(Box<turnkey_load::LoadArgs>),
}

/// `turnkey issuer`.
#[derive(Debug, Args, Clone, Default)]
pub struct IssuerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Issuer HTTP listener (default 0.0.0.0:8080).
    #[arg(long, env = "TURNKEY_HTTP")]
    pub http: Option<String>,
    /// Host name put in advertised TURN/STUN URLs.
    #[arg(long, env = "TURNKEY_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Prometheus listener (`off` to disable; default 0.0.0.0:9641).
    #[arg(long, env = "TURNKEY_METRICS")]
    pub metrics: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "TURNKEY_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// `turnkey keys`.
#[derive(Debug, Args, Clone)]
pub struct KeysArgs {
    /// Data directory holding `keys/`.
    #[arg(long, env = "TURNKEY_DATA_DIR", default_value = "./turnkey-data", global = true)]
    pub data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
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
    },
    /// List keys (never tokens), one JSON object per line.
    List,
    /// Delete a key.
    Delete {
        /// The key id.
        id: String,
    },
}

/// Settings shared by every subcommand that reads the config.
#[derive(Debug, Args, Clone, Default)]
pub struct CommonArgs {
    /// TOML config file.
    #[arg(long, env = "TURNKEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (secret, keys, revocations, usage).
    #[arg(long, env = "TURNKEY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// REALM of long-term credentials.
    #[arg(long, env = "TURNKEY_REALM")]
    pub realm: Option<String>,
    /// Shared secret (repeatable, newest first; during rotation give the new one first).
    #[arg(long = "secret", env = "TURNKEY_SECRET", value_delimiter = ',', hide_env_values = true)]
    pub secrets: Vec<String>,
    /// File with one secret per line, newest first.
    #[arg(long, env = "TURNKEY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
}

/// `turnkey serve`.
#[derive(Debug, Args, Clone, Default)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// UDP listening address (repeatable; default 0.0.0.0:3478 and [::]:3478).
    #[arg(long, env = "TURNKEY_UDP", value_delimiter = ',')]
    pub udp: Vec<String>,
    /// TCP listening address (repeatable; default 0.0.0.0:3478 and [::]:3478; `off` disables).
    #[arg(long, env = "TURNKEY_TCP", value_delimiter = ',')]
    pub tcp: Vec<String>,
    /// TLS listening address (repeatable; default 0.0.0.0:5349 and [::]:5349; `off` disables).
    #[arg(long, env = "TURNKEY_TLS", value_delimiter = ',')]
    pub tls: Vec<String>,
    /// TLS certificate chain (PEM); reloaded when the file changes or on SIGHUP.
    #[arg(long, env = "TURNKEY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "TURNKEY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TCP/TLS connections one client IP (IPv6: one /64) may hold (default 64).
    #[arg(long, env = "TURNKEY_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<u32>,
    /// TCP/TLS connections in total (default 20000).
    #[arg(long, env = "TURNKEY_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Seconds allowed for a TLS handshake (default 10).
    #[arg(long, env = "TURNKEY_TLS_HANDSHAKE_TIMEOUT")]
    pub tls_handshake_timeout: Option<u64>,
    /// Seconds a TCP/TLS connection may go without an allocation before it is closed (default 60).
    #[arg(long, env = "TURNKEY_ALLOCATE_TIMEOUT")]
    pub allocate_timeout: Option<u64>,
    /// Seconds a TCP/TLS connection may stay silent before it is closed (default 600).
    #[arg(long, env = "TURNKEY_IDLE_TIMEOUT")]
    pub idle_timeout: Option<u64>,
    /// Address relay sockets bind to (one IPv4 and/or one IPv6; default: the primary IPv4).
    #[arg(long, env = "TURNKEY_RELAY_IP", value_delimiter = ',')]
    pub relay_ip: Vec<String>,
    /// Relay port range LO-HI (default 49152-65535).
    #[arg(long, env = "TURNKEY_RELAY_PORTS")]
    pub relay_ports: Option<String>,
    /// Public address advertised in XOR-RELAYED-ADDRESS (1:1 NAT).
    #[arg(long, env = "TURNKEY_EXTERNAL_IP", value_delimiter = ',')]
    pub external_ip: Vec<String>,
    /// Allow relaying to this CIDR (optionally `:PORT` or `:LO-HI`); repeatable.
    #[arg(long, env = "TURNKEY_ALLOW_PEER", value_delimiter = ',')]
    pub allow_peer: Vec<String>,
    /// Deny relaying to this CIDR (beats allow rules); repeatable.
    #[arg(long, env = "TURNKEY_DENY_PEER", value_delimiter = ',')]
    pub deny_peer: Vec<String>,
    /// Allocations one userid may hold at once (486 past it).
    #[arg(long, env = "TURNKEY_MAX_ALLOCATIONS_PER_USER")]
    pub max_allocations_per_user: Option<u32>,
    /// Allocations this relay holds at once (508 past it).
    #[arg(long, env = "TURNKEY_MAX_ALLOCATIONS")]
    pub max_allocations: Option<u32>,
    /// Per-allocation bandwidth cap in bytes per second (0: none).
    #[arg(long, env = "TURNKEY_BANDWIDTH_LIMIT")]
    pub bandwidth_limit: Option<u64>,
    /// Replies to unauthenticated requests per second per source IP (0: unlimited).
    #[arg(long, env = "TURNKEY_UNAUTH_REPLIES_PER_SEC")]
    pub unauth_replies_per_sec: Option<u32>,
    /// Accept RFC 5766 channel numbers up to 0x7FFF (for older clients).
    #[arg(long, env = "TURNKEY_RFC5766_CHANNEL_NUMBERS")]
    pub rfc5766_channel_numbers: bool,
    /// Prometheus listener (`off` to disable; default 0.0.0.0:9641).
    #[arg(long, env = "TURNKEY_METRICS")]
    pub metrics: Option<String>,
    /// Data-path shards (default: one per core).
    #[arg(long, env = "TURNKEY_SHARDS")]
    pub shards: Option<usize>,
    /// Seconds live allocations are served after SIGTERM before exit.
    #[arg(long, env = "TURNKEY_DRAIN_GRACE")]
    pub drain_grace: Option<u64>,
    /// Log format: text or json.
    #[arg(long, env = "TURNKEY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Issuer HTTP listener (`off` to disable; default 0.0.0.0:8080).
    #[arg(long, env = "TURNKEY_HTTP")]
    pub http: Option<String>,
    /// Host name put in advertised TURN/STUN URLs (default localhost).
    #[arg(long, env = "TURNKEY_PUBLIC_HOST")]
    pub public_host: Option<String>,
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
    #[arg(long, default_value_t = 86_400)]
    pub ttl: u64,
}

/// `turnkey check-config`.
#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// The config file to validate.
    pub file: PathBuf,
}

fn set<T: Clone>(slot: &mut Option<T>, v: &Option<T>) {
    if v.is_some() {
        slot.clone_from(v);
    }
}

fn set_list(slot: &mut Option<Vec<String>>, v: &[String]) {
    if !v.is_empty() {
        *slot = Some(v.to_vec());
    }
}

impl CommonArgs {
    /// Overlays these flags on a file config.
    pub fn apply(&self, f: &mut FileConfig) {
        set(&mut f.data_dir, &self.data_dir);
        set(&mut f.realm, &self.realm);
        set_list(&mut f.secrets, &self.secrets);
        set(&mut f.secret_file, &self.secret_file);
    }

    /// The file config (if any) with these flags applied.
    pub fn load(&self) -> anyhow::Result<FileConfig> {
        let mut f = match &self.config {
            Some(p) => crate::config::load_file(p)?,
            None => FileConfig::default(),
        };
        self.apply(&mut f);
        Ok(f)
    }
}

impl ServeArgs {
    /// The file config with every flag of `serve` applied.
    pub fn load(&self) -> anyhow::Result<FileConfig> {
        let mut f = self.common.load()?;
        let r = &mut f.relay;
        set_list(&mut r.udp, &self.udp);
        set_list(&mut r.tcp, &self.tcp);
        set_list(&mut r.tls, &self.tls);
        set(&mut r.tls_cert, &self.tls_cert);
        set(&mut r.tls_key, &self.tls_key);
        set(&mut r.max_connections_per_ip, &self.max_connections_per_ip);
        set(&mut r.max_connections, &self.max_connections);
        set(&mut r.tls_handshake_timeout, &self.tls_handshake_timeout);
        set(&mut r.allocate_timeout, &self.allocate_timeout);
        set(&mut r.idle_timeout, &self.idle_timeout);
        set_list(&mut r.relay_ip, &self.relay_ip);
        set(&mut r.relay_ports, &self.relay_ports);
        set_list(&mut r.external_ip, &self.external_ip);
        set_list(&mut r.allow_peer, &self.allow_peer);
        set_list(&mut r.deny_peer, &self.deny_peer);
        set(&mut r.max_allocations_per_user, &self.max_allocations_per_user);
        set(&mut r.max_allocations, &self.max_allocations);
        set(&mut r.bandwidth_limit, &self.bandwidth_limit);
        set(&mut r.unauth_replies_per_sec, &self.unauth_replies_per_sec);
        set(&mut r.drain_grace, &self.drain_grace);
        if self.rfc5766_channel_numbers {
            r.rfc5766_channel_numbers = Some(true);
        }
        set(&mut f.metrics.listen, &self.metrics);
        set(&mut f.shards, &self.shards);
        set(&mut f.log_format, &self.log_format);
        set(&mut f.http, &self.http);
        if let Some(h) = &self.public_host {
            f.issuer.public_host.clone_from(h);
        }
        Ok(f)
    }
}

impl IssuerArgs {
    /// The file config with every flag of `issuer` applied.
    pub fn load(&self) -> anyhow::Result<FileConfig> {
        let mut f = self.common.load()?;
        set(&mut f.http, &self.http);
        set(&mut f.metrics.listen, &self.metrics);
        set(&mut f.log_format, &self.log_format);
        if let Some(h) = &self.public_host {
            f.issuer.public_host.clone_from(h);
        }
        Ok(f)
    }
}
