//! # turnkey-relay: the TURN relay
//!
//! Owns the sans-IO TURN engine ([`engine`]: allocations, permissions, channels, lifetimes, quotas,
//! peer policy), its drivers ([`udp`]: client-facing sockets sharded across cores with
//! SO_REUSEPORT, relay sockets; [`stream`]: TURN over TCP and TLS, with [`conn`] deciding
//! connection limits and timeouts and [`tls`] the reloadable certificate), batched UDP I/O with GSO
//! and GRO ([`batch`]), the relay's metrics ([`metrics`]) and the [`run`] entry point.
//!
//! It must not import axum or the issuer: credentials reach it through `turnkey-auth`
//! (secret ring, nonces, revocation set) and nothing else.

pub mod batch;
pub mod conn;
pub mod engine;
mod error;
pub mod fleet;
pub mod framing;
pub mod loglimit;
pub mod metrics;
mod outq;
pub mod policy;
pub mod sessions;
pub mod settings;
pub mod types;
pub mod usage;

pub use error::RelayError;
pub use types::{ChannelNumber, ClientAddr, FiveTuple, Now, PeerAddr, RelayHandle, Transport};
mod server;
mod shard;
pub mod stream;
pub mod tls;
pub mod udp;
mod udp_batch;

pub use server::{run, BoundSockets, RelayConfig};
