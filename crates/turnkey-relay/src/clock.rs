//! The drivers' one reading of the clock for the engine (which is only ever told the time: it
//! cannot read it, `turnkey-proto` has no clock function).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::types::Now;

/// The current time, monotonic and wall clock, read from the system.
#[allow(clippy::disallowed_methods, reason = "the drivers' one reading of the clock for the engine")]
pub fn now() -> Now {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    Now::new(Instant::now(), wall)
}
