//! Integration tests: the real router served on 127.0.0.1:0, driven over HTTP, with a local
//! double of Cloudflare's TURN API as upstream.

// Test code: helpers outside `#[test]` functions panic on purpose when something is off.
#![allow(clippy::unwrap_used)]

mod api;
mod app;
mod cloudflare_double;
mod fleet;
mod harness;
mod selftest;
mod shapes;
mod upstream;
mod upstream_paused;
mod upstream_timing;
