//! # turnkey-issuer: the TURN credential issuer
//!
//! This crate owns:
//! - the Cloudflare-compatible TURN credential API (`/v1/turn/keys/{id}/credentials/...`:
//!   generate-ice-servers, generate, revoke) with per-key bearer tokens ([`KeyStore`]);
//! - the browser-facing endpoints (`/api/turn-credentials`, `/api/turn/credentials`) with their
//!   per-client rate limit and exact-origin CORS;
//! - revocation persistence ([`RevocationStore`]) into the [`turnkey_auth::RevocationSet`] that
//!   the relay consults;
//! - the Cloudflare upstream client ([`UpstreamClient`]: cache, refresh, retries, circuit
//!   breaker) and the fallback/merge policy;
//! - `GET /api/bandwidth-status` (measured usage of the app key against its monthly cap);
//! - `/healthz`, `/readyz`, `/openapi.yaml`, and the issuer metrics ([`IssuerMetrics`]);
//! - fleet mode ([`RelayDirectory`], [`FleetState`], shared [`KeyStore`]): the handout of
//!   healthy relays from a registry the binary keeps, `GET /v1/fleet`, the shared rate limit
//!   and fleet-wide revocations;
//! - live sessions (`GET /v1/sessions`, `DELETE /v1/sessions/{id}`) from a [`SessionSource`]
//!   the binary provides, scoped per key (operator tokens see all);
//! - `/test`, the browser self-test page ([`SELFTEST_HTML`], served with [`selftest_csp`]);
//! - [`serve`], the bounded HTTP server (header and idle timeouts, total and per-IP connection
//!   caps: [`HttpLimits`]) the binary also runs `/metrics` on.
//!
//! It must not import the relay engine (`turnkey-relay`) nor bind sockets itself: the binary
//! hands [`serve`] an already bound listener, and the relay's readiness arrives through the
//! [`RelayStatus`] trait. Credentials are minted by `turnkey-auth`; time comes from the
//! [`Clock`] in the state, never from the system clock inside handlers.
//!
//! Entry points for the binary: [`IssuerState::new`] from [`IssuerDeps`], [`router`], [`serve`],
//! [`run_maintenance`], [`ensure_default_key`], and the `keys_*` functions for
//! `turnkey keys create|list|delete`.

mod api;
mod app;
mod bandwidth;
mod bearer;
mod body;
mod cli;
mod clock;
mod config;
mod error;
mod files;
mod fleet;
mod http;
mod ice;
mod ice_shape;
mod issue;
mod keys;
mod metrics;
mod origin;
mod ratelimit;
mod revocations;
mod router;
mod selftest;
mod sessions;
mod sessions_api;
mod state;
mod upstream;

pub use bandwidth::{bandwidth_status_body, BandwidthStatus, GB, UNLIMITED};
pub use body::CredentialRequest;
pub use cli::{keys_create, keys_delete, keys_list};
pub use clock::{system_clock, Clock};
pub use config::{
    AdvertiseConfig, AppConfig, AppShapes, Endpoint, IssuerConfig, RateLimitConfig, UpstreamConfig, UpstreamMode,
    ABSOLUTE_MAX_TTL, DEFAULT_TTL,
};
pub use error::{ApiError, Error, UpstreamFailure};
pub use fleet::{FleetFuture, FleetListing, FleetRelay, FleetState, HandoutRelay, RelayDirectory};
pub use http::{serve, HttpLimits};
pub use ice::{sanitize_custom_id, userid, Advertised, MAX_CUSTOM_ID_LEN};
pub use ice_shape::{IceServer, IceServersArray, IceServersObject, Shape};
pub use keys::{
    ensure_default_key, is_valid_key_id, AdminToken, DefaultKey, KeyInfo, KeyOptions, KeyStore, NewKey, SharedKey,
    TokenCheck,
};
pub use metrics::IssuerMetrics;
pub use origin::check_allowed_origin;
pub use ratelimit::{client_ip, RateLimiter, Verdict};
pub use revocations::{relay_watches, RevocationStore, RevocationWatch, Revoked, REVOCATIONS_FILE, WATCH_INTERVAL};
pub use router::{router, run_maintenance, OPENAPI_YAML};
pub use selftest::{selftest_csp, SELFTEST_HTML};
pub use sessions::{
    is_session_id, select, split_userid, Scope, Session, SessionPage, SessionQuery, SessionSource, SessionTransport,
    SessionsFailure, DEFAULT_LIMIT, MAX_LIMIT,
};
pub use state::{BandwidthUsage, FixedRelayStatus, FleetDeps, IssuerDeps, IssuerState, RelayStatus};
pub use upstream::{Served, UpstreamClient};
