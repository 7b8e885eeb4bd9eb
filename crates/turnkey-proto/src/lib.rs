//! # turnkey-proto: the relay's sans-IO TURN engine
//!
//! The TURN engine ([`engine`]: allocations, permissions, channels, lifetimes, quotas, its
//! events and counts), the peer policy ([`policy`]), RFC 8656 §12 stream framing ([`framing`]),
//! the connection decisions of the stream drivers ([`conn`]), the address newtypes and the time
//! the engine is told ([`types`]) and the relay's settings ([`settings`]). Nothing here opens a
//! socket, spawns a task or reads the clock: the drivers in `turnkey-relay` do, and hand the
//! engine the time and the bytes.

pub mod conn;
pub mod engine;
pub mod fleet;
pub mod framing;
pub mod loglimit;
pub mod policy;
pub mod ports;
pub mod settings;
pub mod types;
pub mod usage;

pub use types::{ChannelNumber, ClientAddr, FiveTuple, Now, PeerAddr, RelayHandle, Transport};
