//! # turnkey-relay: the TURN relay
//!
//! Drives the sans-IO TURN engine of `turnkey-proto` ([`engine`]: allocations, permissions,
//! channels, lifetimes, quotas, peer policy) with its drivers ([`udp`]: client-facing sockets
//! sharded across cores with SO_REUSEPORT, relay sockets; [`stream`]: TURN over TCP and TLS, with
//! [`conn`] deciding connection limits and timeouts and [`tls`] the reloadable certificate),
//! batched UDP I/O with GSO and GRO ([`batch`]), the relay's metrics ([`metrics`]) and the
//! [`run`] entry point.
//!
//! It must not import axum or the issuer: credentials reach it through `turnkey-auth`
//! (secret ring, nonces, revocation set) and nothing else.

/// Batched UDP I/O (GSO/GRO over quinn-udp) lives in its own crate, shared with `turnkey-load`;
/// re-exported under its old path so the drivers and tests keep `batch::...`.
pub use turnkey_batch as batch;
mod bind;
mod clients;
pub mod clock;
mod error;
pub mod fastpath;
mod handshake;
pub mod loopclock;
pub mod metrics;
mod outq;
pub mod own_peers;
pub mod priority;
mod relay_ports;
// The sans-IO parts live in turnkey-proto; re-exported under their old paths.
pub use turnkey_proto::{conn, engine, fleet, framing, loglimit, policy, settings, types, usage};
pub mod sessions;

pub use error::RelayError;
pub use types::{ChannelNumber, ClientAddr, FiveTuple, Now, PeerAddr, RelayHandle, Transport};
mod server;
mod shard;
pub mod snapshot_round;
pub mod stream;
mod stream_conn;
pub mod tls;
pub mod udp;
mod udp_batch;
mod udp_sock;

pub use server::{run, BoundSockets, RelayConfig};
