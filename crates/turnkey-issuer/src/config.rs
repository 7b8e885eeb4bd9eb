//! [`IssuerConfig`]: every setting of the issuer. The `turnkey` binary embeds it under `[issuer]`
//! in its TOML file; unknown keys are refused at every level, and every field has a default, so an
//! empty `[issuer]` table is a valid configuration.
//!
//! Parsed, not validated: each value is checked while it deserializes (`turnkey_types::parse`),
//! and the rules that span several keys (`default_ttl <= max_ttl`, an upstream's token source,
//! ...) run once at the end of the same deserialization and report every broken rule together.
//! A deserialized `IssuerConfig` is valid; nothing checks it again.
//!
//! ```toml
//! [issuer]
//! public_host = "turn.example.com"
//! default_ttl = 86400
//! max_ttl = 172800
//! max_body_bytes = 16384
//!
//! [issuer.advertise]            # what the credential responses list, in this order
//! stun = [{ port = 3478 }]
//! turn_udp = [{ port = 3478 }, { port = 443, host = "turn2.example.com" }]
//! turn_tcp = [{ port = 3478 }]
//! turns_tls = [{ port = 5349 }]
//!
//! [issuer.app]                  # browser-facing /api/... endpoints
//! key = "0123456789abcdef0123456789abcdef"
//! allowed_origins = ["https://app.example.com"]
//! allow_credentials = false
//! rate_limit = { requests = 10, window_secs = 300, max_clients = 65536 }
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [issuer.app.shape]            # default answer shape per endpoint ("array" or "object")
//! "GET /api/turn-credentials" = "object"
//!
//! [issuer.upstream]             # optional: Cloudflare as fallback or merged
//! mode = "fallback"             # or "merge"
//! base_url = "https://rtc.live.cloudflare.com/v1/turn"
//! key_id = "..."
//! token_file = "/run/secrets/cloudflare-turn-token"   # or token_env = "CF_TURN_TOKEN"
//! ```

use std::path::PathBuf;

use ipnet::IpNet;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use turnkey_types::parse::{in_range, nonblank};
use turnkey_types::KeyId;
use turnkey_types::{DEFAULT_PORT, DEFAULT_TLS_PORT};

use crate::ice_shape::Shape;
use crate::origin::check_allowed_origin;

/// The largest TTL the Cloudflare API accepts (48 h); `max_ttl` may be lower, never higher.
pub const ABSOLUTE_MAX_TTL: u64 = 172_800;
/// The TTL of credentials when nothing names one (24 h): `default_ttl`, `turnkey creds --ttl`.
pub const DEFAULT_TTL: u64 = 86_400;

/// The issuer's configuration (`[issuer]` in the binary's TOML file). Its `Deserialize` checks
/// the rules across keys after the derived one checked each value (`remote = "Self"`: the derive
/// writes inherent functions that the trait impls below wrap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// Host name (or IP literal) put in the advertised URLs when an entry names no host.
    #[serde(deserialize_with = "nonblank")]
    pub public_host: String,
    /// The listeners put in credential responses, per transport.
    pub advertise: AdvertiseConfig,
    /// TTL in seconds when a request names none (default 86400; 1 to `max_ttl`).
    #[serde(deserialize_with = "in_range::<_, _, 1, ABSOLUTE_MAX_TTL>")]
    pub default_ttl: u64,
    /// Largest TTL a request may ask for (default and upper bound 172800). A key's own
    /// `max_ttl` may lower it further.
    #[serde(deserialize_with = "in_range::<_, _, 1, ABSOLUTE_MAX_TTL>")]
    pub max_ttl: u64,
    /// Largest accepted request body in bytes (default 16384); larger bodies get 413.
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub max_body_bytes: usize,
    /// Most revocations kept at once (default 100000); beyond it revoke answers 503.
    pub max_revocations: usize,
    /// Fleet mode: relays per answer (default 2, so ICE has a second relay if one fails; 1 to 16).
    #[serde(deserialize_with = "in_range::<_, _, 1, 16>")]
    pub relays_per_answer: usize,
    /// Fleet mode: seconds the last relay listing is still handed out while Redis is
    /// unreachable (default 30); after that the issuer falls back (upstream, else 503).
    pub listing_max_stale_secs: u64,
    /// The browser-facing endpoints.
    pub app: AppConfig,
    /// Cloudflare as upstream; absent means no upstream.
    pub upstream: Option<UpstreamConfig>,
    /// File holding the operator token (at least 16 characters): its bearer sees and ends every
    /// key's live sessions (`/v1/sessions`). Absent: only `turnkey keys create --admin` keys do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

impl Serialize for IssuerConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        IssuerConfig::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for IssuerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let c = IssuerConfig::deserialize(d)?;
        match c.broken_rules().as_slice() {
            [] => Ok(c),
            broken => Err(D::Error::custom(broken.join("; "))),
        }
    }
}

impl IssuerConfig {
    /// The rules that span several keys, each broken one described (every value on its own
    /// was checked while it deserialized).
    fn broken_rules(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.default_ttl > self.max_ttl {
            broken.push(format!("default_ttl ({}) must not exceed max_ttl ({})", self.default_ttl, self.max_ttl));
        }
        let a = &self.advertise;
        if a.turn_udp.is_empty() && a.turn_tcp.is_empty() && a.turns_tls.is_empty() {
            broken.push("advertise must list at least one TURN listener".to_owned());
        }
        if self.app.rate_limit.requests > 0 && self.app.rate_limit.window_secs == 0 {
            broken.push("app.rate_limit.window_secs must be positive while requests is".to_owned());
        }
        if let Some(u) = &self.upstream {
            if u.key_id.is_empty() {
                broken.push("upstream.key_id is required".to_owned());
            }
            if u.token_file.is_none() && u.token_env.is_none() {
                broken.push("upstream needs token_file or token_env".to_owned());
            }
            if u.refresh_threshold_secs >= u.ttl {
                broken.push(format!(
                    "upstream.refresh_threshold_secs ({}) must be below upstream.ttl ({})",
                    u.refresh_threshold_secs, u.ttl
                ));
            }
        }
        broken
    }
}

impl Default for IssuerConfig {
    fn default() -> Self {
        Self {
            public_host: "localhost".to_owned(),
            advertise: AdvertiseConfig::default(),
            default_ttl: DEFAULT_TTL,
            max_ttl: ABSOLUTE_MAX_TTL,
            max_body_bytes: 16 * 1024,
            max_revocations: 100_000,
            relays_per_answer: 2,
            listing_max_stale_secs: 30,
            app: AppConfig::default(),
            upstream: None,
            admin_token_file: None,
        }
    }
}

/// One advertised listener: a port and, optionally, a host other than `public_host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host name or IP literal (IPv6 without brackets); `public_host` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint on `public_host`.
    pub fn port(port: u16) -> Self {
        Self { host: None, port }
    }
}

/// The listeners advertised in credential responses. Order in the answer: the STUN entry (all
/// `stun` URLs), then one TURN entry with the `turn_udp`, `turn_tcp` and `turns_tls` URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvertiseConfig {
    /// `stun:` URLs (default port 3478).
    pub stun: Vec<Endpoint>,
    /// `turn:...?transport=udp` URLs (default port 3478).
    pub turn_udp: Vec<Endpoint>,
    /// `turn:...?transport=tcp` URLs (default port 3478).
    pub turn_tcp: Vec<Endpoint>,
    /// `turns:...?transport=tcp` URLs (TURN over TLS, default port 5349).
    pub turns_tls: Vec<Endpoint>,
}

impl Default for AdvertiseConfig {
    fn default() -> Self {
        Self {
            stun: vec![Endpoint::port(DEFAULT_PORT)],
            turn_udp: vec![Endpoint::port(DEFAULT_PORT)],
            turn_tcp: vec![Endpoint::port(DEFAULT_PORT)],
            turns_tls: vec![Endpoint::port(DEFAULT_TLS_PORT)],
        }
    }
}

/// The browser-facing endpoints (`/api/turn-credentials`, `/api/turn/credentials`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// The key id these endpoints issue for. When absent the binary passes the default key
    /// (see `IssuerDeps::app_key`); with neither, the endpoints answer 503 with `fallback: true`.
    pub key: Option<KeyId>,
    /// Exact origins allowed to call from a browser: `https://host[:port]`, `http://...`,
    /// `chrome-extension://<id>` or `moz-extension://<uuid>` (see [`crate::check_allowed_origin`]).
    /// Requests whose `Origin` is neither listed nor the issuer's own origin are refused with 403.
    #[serde(deserialize_with = "allowed_origins")]
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to allowed origins (never with `*`: the
    /// issuer always echoes the one exact origin).
    pub allow_credentials: bool,
    /// Per-client-IP rate limit.
    pub rate_limit: RateLimitConfig,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs). Empty: the header is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// The `iceServers` shape each endpoint answers when the request names none with `?shape=`.
    pub shape: AppShapes,
}

/// Every origin of `allowed_origins` checked while parsing (the first bad one is named).
fn allowed_origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    for o in &list {
        check_allowed_origin(o).map_err(|why| D::Error::custom(format!("`{o}`: {why}")))?;
    }
    Ok(list)
}

/// An `http://` or `https://` URL.
fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if !(s.starts_with("https://") || s.starts_with("http://")) {
        return Err(D::Error::custom(format!("`{s}` is not an http(s) URL")));
    }
    Ok(s)
}

/// The default answer shape per app endpoint (`[issuer.app.shape]`, keyed by method and path).
/// Each is `"array"` (the default) or `"object"`; a request's `?shape=object|array` wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppShapes {
    /// `GET /api/turn-credentials`.
    #[serde(rename = "GET /api/turn-credentials")]
    pub get_turn_credentials: Shape,
    /// `POST /api/turn-credentials`.
    #[serde(rename = "POST /api/turn-credentials")]
    pub post_turn_credentials: Shape,
    /// `POST /api/turn/credentials`.
    #[serde(rename = "POST /api/turn/credentials")]
    pub post_turn_slash_credentials: Shape,
}

/// A fixed-window limit per client (IPv4 address or IPv6 /64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests allowed per window (default 10). 0 disables the limit.
    pub requests: u32,
    /// Window length in seconds (default 300).
    pub window_secs: u64,
    /// Most clients tracked at once (default 65536); when full, new clients are refused (429)
    /// until windows expire, so memory stays bounded.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { requests: 10, window_secs: 300, max_clients: 65_536 }
    }
}

/// How upstream credentials are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// Serve upstream credentials only when the local relays cannot (not ready, or the key's
    /// bandwidth cap is reached).
    #[default]
    Fallback,
    /// Append the upstream ICE servers after the local ones (array shape only); when the local
    /// relays cannot serve, the upstream servers alone.
    Merge,
}

/// The Cloudflare TURN API used as upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `fallback` (default) or `merge`.
    pub mode: UpstreamMode,
    /// Base URL up to `/v1/turn` (default `https://rtc.live.cloudflare.com/v1/turn`).
    #[serde(deserialize_with = "http_url")]
    pub base_url: String,
    /// The upstream TURN key id.
    pub key_id: String,
    /// File holding the upstream API token (surrounding whitespace trimmed).
    pub token_file: Option<PathBuf>,
    /// Name of an environment variable holding the token (used when `token_file` is absent).
    pub token_env: Option<String>,
    /// TTL asked of the upstream, seconds (default 172800, the most Cloudflare grants, so one
    /// upstream credential outlives many requests' TTLs). A request asking more gets a fetch
    /// with its own TTL.
    #[serde(deserialize_with = "in_range::<_, _, 1, ABSOLUTE_MAX_TTL>")]
    pub ttl: u64,
    /// Timeout of one upstream try (connect to last body byte), milliseconds (default 1200).
    #[serde(deserialize_with = "in_range::<_, _, 1, { u64::MAX }>")]
    pub timeout_ms: u64,
    /// Tries per upstream fetch, the first included (default 2).
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub retries: u32,
    /// Backoff before the second try, milliseconds; doubled before each further try (default 300).
    /// With the defaults a hanging upstream fails a fetch after 1200 + 300 + 1200 = 2700 ms.
    pub backoff_base_ms: u64,
    /// A cached upstream credential is reused until this many seconds before it expires
    /// (default 3600), and only for requests whose TTL it outlives.
    pub refresh_threshold_secs: u64,
    /// Consecutive failed fetches that open the circuit (default 5).
    #[serde(deserialize_with = "in_range::<_, _, 1, { u32::MAX as u64 }>")]
    pub circuit_failure_threshold: u32,
    /// Seconds the circuit stays open, counted from when the failure that opened it was
    /// recorded, before one probe is let through (default 30).
    pub circuit_cooldown_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            mode: UpstreamMode::Fallback,
            base_url: "https://rtc.live.cloudflare.com/v1/turn".to_owned(),
            key_id: String::new(),
            token_file: None,
            token_env: None,
            ttl: ABSOLUTE_MAX_TTL,
            timeout_ms: 1_200,
            retries: 2,
            backoff_base_ms: 300,
            refresh_threshold_secs: 3_600,
            circuit_failure_threshold: 5,
            circuit_cooldown_secs: 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_is_the_default_and_valid() {
        let c: IssuerConfig = toml::from_str("").unwrap();
        assert_eq!(c, IssuerConfig::default());
        assert_eq!(c.default_ttl, 86_400);
        assert_eq!(c.app.rate_limit.requests, 10);
        assert_eq!(c.app.rate_limit.window_secs, 300);
        assert_eq!(c.advertise.turns_tls, vec![Endpoint::port(5349)]);
    }

    #[test]
    fn full_example_parses() {
        let src = r#"
            public_host = "turn.example.com"
            max_ttl = 3600
            default_ttl = 600
            [advertise]
            stun = [{ port = 3478 }]
            turn_udp = [{ port = 3478 }, { port = 443, host = "turn2.example.com" }]
            [app]
            key = "0123456789abcdef0123456789abcdef"
            allowed_origins = ["https://app.example.com"]
            trusted_proxies = ["10.0.0.0/8", "::1/128"]
            rate_limit = { requests = 5, window_secs = 60 }
            [upstream]
            mode = "merge"
            key_id = "abc"
            token_env = "CF_TOKEN"
            retries = 2
        "#;
        let c: IssuerConfig = toml::from_str(src).unwrap();
        assert_eq!(c.advertise.turn_udp[1].host.as_deref(), Some("turn2.example.com"));
        assert_eq!(c.app.rate_limit.max_clients, 65_536);
        let u = c.upstream.unwrap();
        assert_eq!(u.mode, UpstreamMode::Merge);
        assert_eq!(u.refresh_threshold_secs, 3600);
        assert_eq!((u.ttl, u.timeout_ms, u.backoff_base_ms), (172_800, 1_200, 300));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<IssuerConfig>("typo = 1").is_err());
        assert!(toml::from_str::<IssuerConfig>("[app]\norigins = []").is_err());
        assert!(toml::from_str::<IssuerConfig>("[upstream]\nmode = \"both\"").is_err());
        for src in [
            "max_ttl = 172801",
            "default_ttl = 0",
            "max_ttl = 100\ndefault_ttl = 200",
            "[app]\nallowed_origins = [\"*\"]",
            "[app]\nallowed_origins = [\"chrome-extension://*\"]",
            "[app]\nallowed_origins = [\"moz-extension://not-a-uuid\"]",
            "[app]\nallowed_origins = [\"https://app.example.com/\"]",
            "[upstream]\nkey_id = \"k\"\ntoken_env = \"T\"\ntimeout_ms = 0",
            "[app]\nkey = \"not/a key:id\"",
            "[upstream]\nkey_id = \"k\"",
            "relays_per_answer = 0",
            "relays_per_answer = 17",
            "public_host = \" \"",
            "max_body_bytes = 0",
            "[app]\nrate_limit = { requests = 1, window_secs = 0 }",
            "[advertise]\nturn_udp = []\nturn_tcp = []\nturns_tls = []",
            "[upstream]\nkey_id = \"k\"\ntoken_env = \"T\"\nbase_url = \"ftp://x\"",
            "[upstream]\nkey_id = \"k\"\ntoken_env = \"T\"\nttl = 3600",
        ] {
            assert!(toml::from_str::<IssuerConfig>(src).is_err(), "{src}");
        }
    }

    #[test]
    fn every_broken_rule_across_keys_is_reported_at_once() {
        let src = "max_ttl = 100\ndefault_ttl = 200\n[advertise]\nturn_udp = []\nturn_tcp = []\nturns_tls = []\n[upstream]\nttl = 60";
        let e = toml::from_str::<IssuerConfig>(src).unwrap_err().to_string();
        for part in [
            "default_ttl (200) must not exceed max_ttl (100)",
            "at least one TURN listener",
            "key_id is required",
            "token_file or token_env",
            "below upstream.ttl",
        ] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        let back: IssuerConfig = toml::from_str(&toml::to_string(&IssuerConfig::default()).unwrap()).unwrap();
        assert_eq!(back, IssuerConfig::default(), "the defaults serialize and parse back");
    }

    #[test]
    fn app_shapes_per_endpoint_and_extension_origins() {
        let src = r#"
            [app]
            allowed_origins = ["https://app.example.com", "chrome-extension://gjiajdnndcdbgggopkgjioifknkmklcb",
                               "moz-extension://0f9c0a1e-4b6d-4c1a-9e2f-3a5b7c9d1e2f"]
            [app.shape]
            "GET /api/turn-credentials" = "object"
            "POST /api/turn/credentials" = "array"
        "#;
        let c: IssuerConfig = toml::from_str(src).unwrap();
        assert_eq!(c.app.shape.get_turn_credentials, Shape::Object);
        assert_eq!(c.app.shape.post_turn_credentials, Shape::Array);
        assert_eq!(c.app.shape.post_turn_slash_credentials, Shape::Array);
        for bad in [
            "[app.shape]\n\"GET /api/turn/credentials\" = \"object\"",
            "[app.shape]\n\"GET /api/turn-credentials\" = \"objects\"",
            "[app.shape]\nget = \"object\"",
        ] {
            assert!(toml::from_str::<IssuerConfig>(bad).is_err(), "{bad}");
        }
    }
}
