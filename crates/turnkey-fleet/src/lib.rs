//! # turnkey-fleet: fleet state in Redis
//!
//! Fleet mode runs many relays and issuers as one service. This crate owns everything they share
//! through Redis, behind one handle, [`Fleet`]:
//!
//! - the relay registry: heartbeats ([`Fleet::heartbeat`]) that expire after 3 missed beats,
//!   the list of healthy relays ([`Fleet::healthy_relays`]) and the handout choice
//!   ([`handout::choose`], [`handout::alternate`]: pure functions; the issuer's directory state
//!   around it, told the time: [`directory::Directory`]; a heartbeat's arithmetic: [`beat`]), and
//!   relay state changes announced at once ([`Fleet::relay_changes`]);
//! - revocations: a persisted set plus pub/sub ([`Fleet::revoke`],
//!   [`Fleet::subscribe_revocations`], which replays the set on every (re)connect);
//! - TURN keys (tenants) shared by all issuers ([`Fleet::create_key`], [`Fleet::keys_if_changed`]);
//! - the per-userid allocation quota over all relays ([`Fleet::reserve_allocation`]), crash safe:
//!   a relay's counts leave with its heartbeat;
//! - usage deltas per key, buffered and flushed exactly once ([`Fleet::add_usage`],
//!   [`Fleet::flush_usage`]);
//! - the app endpoints' rate limit across issuers ([`Fleet::rate_limit`]);
//! - the live session index, compact and incremental ([`Fleet::write_session_index`],
//!   [`Fleet::session_indexes`]) and session
//!   ends routed to the owning relay ([`Fleet::request_session_end`], [`Fleet::take_session_ends`]).
//!
//! When Redis cannot be reached every call fails fast with [`FleetError::Unavailable`]; the caller
//! keeps its local state, and a background health check reconnects ([`Fleet::is_up`],
//! `turnkey_fleet_redis_up`). Redis's own clock (`TIME` inside scripts) decides heartbeat ages and
//! rate-limit windows, so the fleet does not depend on its hosts' clocks agreeing; the crate reads
//! the local monotonic clock only for timeouts and the age of its cached relay list.
//!
//! Key names and channels are a contract, listed in `docs/fleet.md`. This crate must not import
//! the relay engine, the issuer or axum: the binary wires it into both. Redis is one primary
//! (optionally with replicas / Sentinel behind one URL), not Redis Cluster: the scripts touch keys
//! they derive from the prefix.

mod background;
pub mod beat;
mod changes;
mod client;
mod config;
pub mod directory;
mod error;
pub mod handout;
mod metrics;
mod names;
mod quota;
mod ratelimit;
mod registry;
mod revocation;
mod sentinel_url;
mod session_codec;
mod sessions;
mod target;
mod tenants;
mod usage;

pub use changes::{Change, RelayChange, RelayChangeEvent};
pub use client::Fleet;
pub use config::{redact_url, FleetConfig, KeyPrefix, RedisUrl};
pub use error::FleetError;
pub use metrics::FleetMetrics;
pub use names::{NodeId, Region, DEFAULT_PREFIX};
pub use ratelimit::RateVerdict;
pub use registry::{AdvertisedUrl, RelayBeat, RelaySnapshot, RelayStatus, Transport};
pub use revocation::{Revocation, RevocationSubscription};
pub use sentinel_url::{is_sentinel_url, SentinelUrl, SENTINEL_PORT};
pub use session_codec::{IndexedSession, LiveCounts, SessionIndexWriter};
pub use sessions::IndexWrite;
pub use target::RedisTarget;
pub use tenants::{KeyRecord, KeysSnapshot};
pub use usage::{UsageBatch, UsageBytes, UsageEntry, UsageTotals};
