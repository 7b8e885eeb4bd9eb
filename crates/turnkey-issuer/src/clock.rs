//! The issuer's clock, as a function told to it: handlers and the upstream client read the
//! time only through it, so tests drive time by hand.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use turnkey_auth::UnixTime;

/// The clock, as a function: handlers read the time only through it.
pub type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| UnixTime(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())))
}
