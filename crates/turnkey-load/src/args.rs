//! The command line of `turnkey load` ([`LoadArgs`]) and its validation into a [`Plan`].

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};

use turnkey_types::Transport;

use crate::LoadError;

/// Arguments of `turnkey load`: drive a TURN server and measure it.
#[derive(Debug, Clone, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct LoadArgs {
    /// `merge` or `report` (without one: run a load).
    #[command(subcommand)]
    pub action: Option<LoadAction>,
    /// TURN server, HOST:PORT. Optional with --issuer: each allocation (allocations) or flow
    /// (relay, ramp) then goes to the first TURN URL of --transport in a fresh issuer answer.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "issuer")]
    pub server: Option<String>,
    /// Transport to the server.
    #[arg(long, default_value = "udp", value_parser = parse_transport())]
    pub transport: Transport,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Scenario::Relay)]
    pub scenario: Scenario,
    /// How data is sent through the relay: ChannelData or Send/Data indications.
    #[arg(long, value_enum, default_value_t = Mode::Channel)]
    pub mode: Mode,
    /// Number of flows (relay, ramp).
    #[arg(long, default_value_t = 1)]
    pub flows: u32,
    /// Application payload per packet, in bytes (at least 24: flow, phase, sequence, timestamp).
    /// Default: 100 (smooth), 160 (audio), 1200 (video).
    #[arg(long, value_name = "BYTES")]
    pub payload: Option<usize>,
    /// Traffic shape of each flow (relay): `smooth` paces --rate evenly; `audio` sends 50
    /// packets/s of 160 B; `video` sends 30 frames/s, each a back-to-back train of 1200 B
    /// packets sized to --bitrate.
    #[arg(long, value_enum, default_value_t = Profile::Smooth)]
    pub profile: Profile,
    /// Video: bits per second per flow (payload bits), e.g. `2M`, `500k`, `1500000`.
    #[arg(long, value_name = "BPS", value_parser = parse_bitrate)]
    pub bitrate: Option<u64>,
    /// Packets per second per flow (relay, smooth profile); starting rate (ramp); allocations
    /// per second in total (allocations, unlimited if unset).
    #[arg(long, value_name = "PPS", conflicts_with = "flood")]
    pub rate: Option<f64>,
    /// Send as fast as possible (relay).
    #[arg(long)]
    pub flood: bool,
    /// Sending time in seconds (per step for ramp). Default 10 (3 per ramp step) unless --count.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Packets per flow (relay) or allocations (allocations) to send, then stop.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Allocations set up (relay, ramp) or attempted (allocations) at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,
    /// Long-term credential user name (with --secret: the user id the name is minted for).
    #[arg(long)]
    pub user: Option<String>,
    /// Long-term credential password (may start with `-`).
    #[arg(long, requires = "user", allow_hyphen_values = true)]
    pub password: Option<String>,
    /// TURN REST shared secret: mint `expiry:user` credentials locally (may start with `-`).
    #[arg(long, conflicts_with_all = ["password", "issuer"], allow_hyphen_values = true)]
    pub secret: Option<String>,
    /// Realm for the long-term key (default: the REALM the server sends).
    #[arg(long)]
    pub realm: Option<String>,
    /// Lifetime of minted or issued credentials, in seconds.
    #[arg(long, default_value_t = 86_400)]
    pub credential_ttl: u64,
    /// Credential issuer base URL in Cloudflare's API shape (e.g. https://rtc.live.cloudflare.com/v1/turn).
    #[arg(long, requires_all = ["key_id", "token_file"], conflicts_with = "password")]
    pub issuer: Option<String>,
    /// TURN key id at the issuer.
    #[arg(long)]
    pub key_id: Option<String>,
    /// File holding the issuer API token (bearer).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Send to this UDP echo peer instead of pairing allocations (relay, ramp).
    #[arg(long, value_name = "ADDR", conflicts_with = "echo_peer")]
    pub peer_addr: Option<String>,
    /// Run an own UDP echo peer, one socket per flow, instead of pairing allocations; it binds the
    /// address this host sends from towards --server (loopback for a server on this machine).
    #[arg(long)]
    pub echo_peer: bool,
    /// Pair mode, one way: the far allocation of each flow only receives, and each packet's
    /// one-way delay is measured (both ends are in this process, on one clock), instead of being
    /// sent back for a round trip. One relay crossing per packet sent, as `turnutils_uclient -y`
    /// measures: half the relay's and the generator's work per packet.
    #[arg(long, conflicts_with_all = ["echo_peer", "peer_addr"])]
    pub one_way: bool,
    /// TLS: accept any server certificate.
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
    /// TLS: trust the certificates in this PEM file (default: the web PKI roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// TLS: server name to verify (default: the host of --server).
    #[arg(long)]
    pub sni: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Fail (exit non-zero) when the loss exceeds this percentage.
    #[arg(long, value_name = "PCT")]
    pub max_loss: Option<f64>,
    /// Fail (exit non-zero) when the 99th percentile round trip exceeds this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_p99: Option<f64>,
    /// Ramp: rate added per flow at each step (default: the starting rate).
    #[arg(long, value_name = "PPS")]
    pub ramp_step: Option<f64>,
    /// Ramp: most steps to run.
    #[arg(long, default_value_t = 10)]
    pub ramp_steps: u32,
    /// Ramp: loss percentage that ends the ramp.
    #[arg(long, value_name = "PCT", default_value_t = 1.0)]
    pub ramp_loss: f64,
    /// Allocation LIFETIME requested, in seconds.
    #[arg(long, default_value_t = 600)]
    pub lifetime: u32,
    /// Address family of the relayed addresses, sent as REQUESTED-ADDRESS-FAMILY (RFC 8656
    /// §7.1). Default: no attribute, so the server picks (IPv4 per the RFC).
    #[arg(long, value_enum, value_name = "FAMILY")]
    pub family: Option<AddressFamily>,
    /// Time allowed for one request (with retransmissions over UDP), in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// Time to wait for packets still in flight after sending stops, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub drain_ms: u64,
    /// Allocations: keep every allocation for this many seconds before releasing them all.
    #[arg(long, value_name = "SECS")]
    pub hold: Option<f64>,
    /// Allocations: send only unauthenticated Allocates (each answered 401) from one socket.
    #[arg(long)]
    pub unauthenticated: bool,
    /// Never print live progress, even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    /// Threads generating load, each a loop pinned to one core, flows spread over them (default:
    /// every core this process may run on).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Most packets a loop's UDP pacer sends at one wake-up: a loop with more than this due per
    /// 1 ms timer tick paces in sub-millisecond gaps instead (default 0: the 1 ms tick at every
    /// rate).
    #[arg(long, value_name = "PACKETS", default_value_t = crate::pacer::DEFAULT_PACE_BURST)]
    pub pace_burst: u32,
    /// Wake a loop whenever a datagram arrives (readiness), as before; by default a paced UDP
    /// loop reads its sockets only at its pacer's wake-ups, round trips measured from the
    /// kernel's receive stamps (fewer wake-ups per packet).
    #[arg(long)]
    pub recv_readiness: bool,
    /// Worker mode: coordinate with the other workers of the run through this Redis
    /// (`redis://`, `rediss://`, or a Sentinel-monitored primary:
    /// `redis+sentinel://h1:26379,h2:26379/mymaster`, `rediss+sentinel://`): a start barrier,
    /// disjoint user names, results published.
    #[arg(long, value_name = "URL", requires_all = ["run_id", "workers"])]
    pub coordinate: Option<String>,
    /// Worker mode: CA certificate(s) (PEM) of the coordinating Redis servers, for `rediss://` and
    /// `rediss+sentinel://` with a private CA (default: the system's roots).
    #[arg(long, value_name = "FILE", requires = "coordinate")]
    pub coordinate_ca_file: Option<PathBuf>,
    /// Worker mode: the run's name, shared by its workers (letters, digits, `-`, `_`, `.`).
    #[arg(long, value_name = "ID", requires = "coordinate")]
    pub run_id: Option<String>,
    /// Worker mode: how many workers the run has (the barrier waits for all of them).
    #[arg(long, value_name = "N", requires = "coordinate")]
    pub workers: Option<u32>,
    /// Worker mode: seconds to wait at the start barrier for every worker.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub barrier_timeout: f64,
    /// Worker mode: the first worker waits for every result and prints (and writes to --json)
    /// the merged report instead of its own.
    #[arg(long, requires = "coordinate")]
    pub merge_report: bool,
    /// The target's Prometheus endpoint (e.g. http://relay:9090/metrics): scraped before and
    /// after the run for `process_cpu_seconds_total` (and turnkey's relayed-packet counters) to
    /// report the server's CPU per relayed message.
    #[arg(long, value_name = "URL")]
    pub server_metrics: Option<String>,
}

/// `turnkey load merge|report`: combine the results of several workers.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadAction {
    /// Merge JSON reports (`--json` of each worker) exactly: counts summed, latency histograms
    /// merged, per-relay rows kept.
    Merge(MergeArgs),
    /// Merge the results a coordinated run's workers published in Redis (waits for each worker
    /// to finish or be found dead).
    Report(ReportArgs),
}

/// `turnkey load merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// The JSON reports to merge.
    #[arg(required = true, value_name = "REPORT.json")]
    pub files: Vec<PathBuf>,
    /// Write the merged report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `turnkey load report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The Redis the workers coordinated through (every form `--coordinate` takes).
    #[arg(long, value_name = "URL")]
    pub coordinate: String,
    /// CA certificate(s) (PEM) of the coordinating Redis servers (`rediss://`,
    /// `rediss+sentinel://`; default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub coordinate_ca_file: Option<PathBuf>,
    /// The run's name.
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// Seconds to wait for running workers to publish their results.
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub wait: f64,
    /// Write the merged report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// The traffic shape of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// `--rate` packets per second, evenly paced (or `--flood`).
    Smooth,
    /// A voice call: 50 packets per second of 160 B (20 ms of G.711).
    Audio,
    /// A video call: 30 frames per second, each a back-to-back train of 1200 B packets carrying
    /// `--bitrate` / 30 bits.
    Video,
}

/// Audio profile: packets per second per flow.
pub const AUDIO_PPS: f64 = 50.0;
/// Audio profile: payload bytes.
pub const AUDIO_PAYLOAD: usize = 160;
/// Video profile: frames per second per flow.
pub const VIDEO_FPS: f64 = 30.0;
/// Video profile: payload bytes per packet.
pub const VIDEO_PAYLOAD: usize = 1200;
/// Video profile: the bitrate when --bitrate is not given.
pub const VIDEO_DEFAULT_BITRATE: u64 = 2_000_000;
/// Smooth profile: the payload when --payload is not given.
pub const SMOOTH_PAYLOAD: usize = 100;

/// How a flow's packets are paced: `trains_per_sec` times a second, `train` packets back to
/// back (`trains_per_sec` None: as fast as possible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Trains per second (`None`: flood).
    pub trains_per_sec: Option<f64>,
    /// Packets per train (1 for smooth and audio).
    pub train: u64,
}

impl Pace {
    /// Packets per second (`None`: flood).
    pub fn pps(&self) -> Option<f64> {
        self.trains_per_sec.map(|r| r * self.train as f64)
    }
}

/// Parses a bitrate: a number with an optional `k`, `M` or `G` suffix (decimal, bits/s).
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| format!("not a bitrate: {s:?} (e.g. 2M, 500k, 1500000)"))?;
    let bps = v * mult;
    if !(1.0..=1e11).contains(&bps) {
        return Err(format!("bitrate out of range: {s:?}"));
    }
    Ok(bps.round() as u64)
}

/// `--transport`: one of [`Transport`]'s names, each described in `--help`, and listed in the
/// error for any other value.
fn parse_transport() -> impl TypedValueParser<Value = Transport> {
    let values = Transport::ALL.map(|t| {
        PossibleValue::new(t.as_str()).help(match t {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP with RFC 8656 §12 framing",
            Transport::Tls => "TLS over TCP",
        })
    });
    PossibleValuesParser::new(values).try_map(|name| name.parse::<Transport>())
}

/// The address family an Allocate requests (REQUESTED-ADDRESS-FAMILY, RFC 8656 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressFamily {
    /// An IPv4 relayed address (0x01).
    Ipv4,
    /// An IPv6 relayed address (0x02).
    Ipv6,
}

impl AddressFamily {
    /// The attribute's value: the family byte, then 3 reserved zero bytes.
    pub fn attribute(self) -> u32 {
        match self {
            Self::Ipv4 => 0x01 << 24,
            Self::Ipv6 => 0x02 << 24,
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N flows relayed at a fixed rate: throughput, loss, round-trip time.
    Relay,
    /// Allocation storm: allocations per second, time to allocate, failures by code.
    Allocations,
    /// Raise the rate step by step until loss exceeds a threshold.
    Ramp,
}

/// How data goes through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// ChannelBind, then ChannelData.
    Channel,
    /// CreatePermission, then Send and Data indications.
    Send,
}

/// Smallest payload: flow id, phase, sequence number, send timestamp.
pub const MIN_PAYLOAD: usize = 24;
/// Largest payload that fits a UDP datagram with the TURN overhead.
pub const MAX_PAYLOAD: usize = 65_000;
/// The time cap when only `--count` bounds a run.
pub const COUNT_TIME_CAP: Duration = Duration::from_secs(300);

/// When to stop sending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// Stop after this much time.
    pub duration: Duration,
    /// Stop after this many packets (per flow) or allocations.
    pub count: Option<u64>,
}

impl LoadArgs {
    /// Checks the arguments that clap cannot, and derives the run's bound.
    pub fn bound(&self) -> Result<Bound, LoadError> {
        let bad = |m: String| Err(LoadError::Args(m));
        if !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&self.payload()) {
            return bad(format!("--payload must be {MIN_PAYLOAD} to {MAX_PAYLOAD} bytes"));
        }
        if self.flows == 0 || self.concurrency == 0 {
            return bad("--flows and --concurrency must be at least 1".into());
        }
        for (name, v) in [
            ("--rate", self.rate),
            ("--ramp-step", self.ramp_step),
            ("--duration", self.duration),
            ("--hold", self.hold),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return bad(format!("{name} must be a positive number"));
                }
            }
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return bad("--timeout must be a positive number".into());
        }
        if self.threads == Some(0) || self.workers == Some(0) {
            return bad("--threads and --workers must be at least 1".into());
        }
        if !(self.barrier_timeout.is_finite() && self.barrier_timeout > 0.0) {
            return bad("--barrier-timeout must be a positive number".into());
        }
        if let Some(id) = &self.run_id {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if id.is_empty() || id.len() > 64 || !id.chars().all(ok) {
                return bad("--run-id: 1 to 64 letters, digits, '-', '_' or '.'".into());
            }
        }
        if self.count == Some(0) {
            return bad("--count must be at least 1".into());
        }
        if self.scenario == Scenario::Ramp && self.flood {
            return bad("--flood cannot be used with --scenario ramp".into());
        }
        if self.profile != Profile::Smooth {
            if self.scenario != Scenario::Relay {
                return bad("--profile audio and video are for --scenario relay (scale them with --flows)".into());
            }
            if self.rate.is_some() || self.flood {
                return bad("--profile audio and video set their own pace: no --rate or --flood".into());
            }
        }
        if self.bitrate.is_some() && self.profile != Profile::Video {
            return bad("--bitrate needs --profile video".into());
        }
        if self.secret.is_none() && self.issuer.is_none() && self.password.is_none() {
            if self.user.is_some() {
                return bad("--user needs --password or --secret".into());
            }
            if !self.unauthenticated {
                return bad("credentials needed: --user/--password, --secret, or --issuer/--key-id/--token-file".into());
            }
        }
        if self.server.is_none() {
            if self.issuer.is_none() {
                return bad("--server is needed (or --issuer to ask it for relays)".into());
            }
            if self.unauthenticated {
                return bad("--unauthenticated needs --server".into());
            }
        }
        let default = match self.scenario {
            Scenario::Ramp => 3.0,
            _ => 10.0,
        };
        let duration = match (self.duration, self.count) {
            (Some(d), _) => Duration::from_secs_f64(d),
            (None, Some(_)) => COUNT_TIME_CAP,
            (None, None) => Duration::from_secs_f64(default),
        };
        Ok(Bound { duration, count: self.count })
    }

    /// The per-flow rate in packets per second (`None`: flood). Relay default: 50 pps.
    pub fn flow_rate(&self) -> Option<f64> {
        self.pace().pps()
    }

    /// Payload bytes per packet: --payload, else the profile's.
    pub fn payload(&self) -> usize {
        self.payload.unwrap_or(match self.profile {
            Profile::Smooth => SMOOTH_PAYLOAD,
            Profile::Audio => AUDIO_PAYLOAD,
            Profile::Video => VIDEO_PAYLOAD,
        })
    }

    /// How each flow's packets are paced (relay).
    pub fn pace(&self) -> Pace {
        match self.profile {
            Profile::Smooth if self.flood => Pace { trains_per_sec: None, train: 1 },
            Profile::Smooth => Pace { trains_per_sec: Some(self.rate.unwrap_or(50.0)), train: 1 },
            Profile::Audio => Pace { trains_per_sec: Some(AUDIO_PPS), train: 1 },
            Profile::Video => {
                let bits = self.bitrate.unwrap_or(VIDEO_DEFAULT_BITRATE) as f64;
                let per_frame = bits / VIDEO_FPS / (self.payload() * 8) as f64;
                Pace { trains_per_sec: Some(VIDEO_FPS), train: (per_frame.ceil() as u64).max(1) }
            }
        }
    }

    /// The host part of `--server`, for TLS verification (`None` without `--server`).
    pub fn server_host(&self) -> Option<&str> {
        let s = self.server.as_deref()?;
        Some(match s.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(extra: &[&str]) -> LoadArgs {
        let mut v = vec!["x", "--server", "127.0.0.1:3478", "--user", "u", "--password", "p"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).unwrap().args
    }

    #[test]
    fn merge_and_report_need_no_server_and_a_run_does() {
        let a = Cli::try_parse_from(["x", "merge", "a.json", "b.json", "--json", "m.json"]).unwrap().args;
        let Some(LoadAction::Merge(m)) = a.action else { panic!("not merge") };
        assert_eq!(m.files, [PathBuf::from("a.json"), PathBuf::from("b.json")]);
        assert_eq!(m.json, Some(PathBuf::from("m.json")));
        let a = Cli::try_parse_from(["x", "report", "--coordinate", "redis://h", "--run-id", "r1"]).unwrap().args;
        assert!(matches!(a.action, Some(LoadAction::Report(ReportArgs { wait: 600.0, .. }))));
        assert!(Cli::try_parse_from(["x", "merge"]).is_err(), "merge needs files");
        assert!(Cli::try_parse_from(["x", "--flows", "2"]).is_err(), "a run needs --server");
        // Worker mode needs its three flags together; the run id is checked.
        assert!(Cli::try_parse_from(["x", "--server", "h:1", "--coordinate", "redis://h"]).is_err());
        let w = parse(&["--coordinate", "redis://h", "--run-id", "bad id", "--workers", "3"]);
        assert!(w.bound().is_err());
        let w = parse(&["--coordinate", "redis://h", "--run-id", "run-1", "--workers", "3", "--threads", "2"]);
        assert_eq!((w.workers, w.threads), (Some(3), Some(2)));
        assert!(w.bound().is_ok());
        assert!(parse(&["--threads", "0"]).bound().is_err());
    }

    #[test]
    fn defaults_bound_to_ten_seconds() {
        let a = parse(&[]);
        let b = a.bound().unwrap();
        assert_eq!(b.duration, Duration::from_secs(10));
        assert_eq!(b.count, None);
        assert_eq!(a.flow_rate(), Some(50.0));
        assert_eq!(a.server_host(), Some("127.0.0.1"));
    }

    #[test]
    fn count_alone_is_capped_in_time() {
        let b = parse(&["--count", "5"]).bound().unwrap();
        assert_eq!(b.duration, COUNT_TIME_CAP);
        assert_eq!(b.count, Some(5));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--payload", "8"]).bound().is_err());
        assert!(parse(&["--rate", "0"]).bound().is_err());
        assert!(parse(&["--count", "0"]).bound().is_err());
        assert!(Cli::try_parse_from(["x", "--server", "a:1", "--rate", "5", "--flood"]).is_err());
        let no_creds = Cli::try_parse_from(["x", "--server", "a:1"]).unwrap().args;
        assert!(no_creds.bound().is_err());
    }

    #[test]
    fn secrets_and_passwords_may_start_with_a_dash() {
        // Generated URL-safe base64 secrets start with `-` one time in 64.
        let a = Cli::try_parse_from(["x", "--server", "a:1", "--secret", "-c2Vj", "--flows", "2"]).unwrap().args;
        assert_eq!((a.secret.as_deref(), a.flows), (Some("-c2Vj"), 2));
        let a = Cli::try_parse_from(["x", "--server", "a:1", "--user", "u", "--password", "-p"]).unwrap().args;
        assert_eq!(a.password.as_deref(), Some("-p"));
    }

    #[test]
    fn profiles_set_size_and_pace() {
        let a = parse(&[]);
        assert_eq!((a.payload(), a.pace()), (100, Pace { trains_per_sec: Some(50.0), train: 1 }));
        let a = parse(&["--profile", "audio"]);
        assert_eq!(
            (a.payload(), a.pace(), a.flow_rate()),
            (160, Pace { trains_per_sec: Some(50.0), train: 1 }, Some(50.0))
        );
        assert!(a.bound().is_ok());
        // 2 Mbit/s at 30 frames/s is 8,333 bytes a frame: seven 1200 B packets.
        let a = parse(&["--profile", "video"]);
        assert_eq!((a.payload(), a.pace()), (1200, Pace { trains_per_sec: Some(30.0), train: 7 }));
        assert_eq!(a.flow_rate(), Some(210.0));
        let a = parse(&["--profile", "video", "--bitrate", "500k"]);
        assert_eq!(a.pace().train, 2);
        let a = parse(&["--profile", "video", "--bitrate", "10k"]);
        assert_eq!(a.pace().train, 1, "a frame is at least one packet");
        let a = parse(&["--profile", "video", "--bitrate", "2M", "--payload", "600"]);
        assert_eq!(a.pace().train, 14);
    }

    #[test]
    fn profiles_refuse_what_contradicts_them() {
        for bad in [
            &["--profile", "audio", "--rate", "10"][..],
            &["--profile", "video", "--scenario", "ramp"],
            &["--profile", "audio", "--scenario", "allocations"],
            &["--bitrate", "2M"],
            &["--profile", "audio", "--bitrate", "2M"],
        ] {
            assert!(parse(bad).bound().is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["x", "--server", "a:1", "--profile", "video", "--bitrate", "fast"]).is_err());
        assert!(Cli::try_parse_from(["x", "--server", "a:1", "--profile", "video", "--flood"])
            .is_ok_and(|c| c.args.bound().is_err()));
    }

    #[test]
    fn bitrates_parse_with_decimal_suffixes() {
        assert_eq!(parse_bitrate("2M"), Ok(2_000_000));
        assert_eq!(parse_bitrate("500k"), Ok(500_000));
        assert_eq!(parse_bitrate("1.5m"), Ok(1_500_000));
        assert_eq!(parse_bitrate("64000"), Ok(64_000));
        assert_eq!(parse_bitrate("1G"), Ok(1_000_000_000));
        for bad in ["", "M", "-1M", "0", "2Mb", "nan", "1e30"] {
            assert!(parse_bitrate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_is_optional_with_an_issuer_only() {
        assert!(Cli::try_parse_from(["x", "--secret", "s"]).is_err(), "--server or --issuer");
        let issuer = ["x", "--issuer", "http://127.0.0.1:1/v1/turn", "--key-id", "k", "--token-file", "t"];
        let a = Cli::try_parse_from(issuer).unwrap().args;
        assert_eq!((a.server.as_deref(), a.server_host()), (None, None));
        assert!(a.bound().is_ok());
        let mut v = issuer.to_vec();
        v.extend(["--scenario", "allocations", "--unauthenticated"]);
        assert!(Cli::try_parse_from(v).unwrap().args.bound().is_err(), "unauthenticated needs --server");
        assert!(Cli::try_parse_from(["x", "--issuer", "http://h/v1/turn"]).is_err(), "key id and token file too");
    }

    #[test]
    fn ipv6_host_for_sni() {
        let mut a = parse(&[]);
        a.server = Some("[::1]:5349".into());
        assert_eq!(a.server_host(), Some("::1"));
    }

    #[test]
    fn family_is_requested_only_when_given() {
        assert_eq!(parse(&[]).family, None);
        assert_eq!(parse(&["--family", "ipv4"]).family, Some(AddressFamily::Ipv4));
        assert_eq!(parse(&["--family", "ipv6"]).family, Some(AddressFamily::Ipv6));
        assert!(Cli::try_parse_from(["x", "--server", "h:1", "--family", "inet6"]).is_err());
        // RFC 8656 §18.6: the family byte (0x01 IPv4, 0x02 IPv6), then 3 reserved bytes.
        assert_eq!(AddressFamily::Ipv4.attribute().to_be_bytes(), [1, 0, 0, 0]);
        assert_eq!(AddressFamily::Ipv6.attribute().to_be_bytes(), [2, 0, 0, 0]);
    }
}
