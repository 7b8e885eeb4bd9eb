//! The app endpoints' rate limit, shared by every issuer: a fixed window per client counted in
//! Redis (`<p>rl:<window_secs>:<client>:<window index>`, expiring with its window). Windows are
//! aligned on Redis's clock, so every issuer agrees which window a request falls in: 10 requests
//! per 5 minutes per client means 10 across the fleet.

use std::sync::OnceLock;

use redis::Script;

use crate::{Fleet, FleetError};

/// The limiter's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    /// Go ahead.
    Allow,
    /// Refused; retry after this many seconds (at least 1).
    Limited {
        /// Seconds until the window ends.
        retry_after: u64,
    },
}

const RATE_LUA: &str = r"
local now = tonumber(redis.call('TIME')[1])
local w = tonumber(ARGV[2])
local idx = math.floor(now / w)
local k = KEYS[1] .. ':' .. idx
local n = redis.call('INCR', k)
if n == 1 then redis.call('EXPIRE', k, w + 1) end
if n > tonumber(ARGV[1]) then
  local left = (idx + 1) * w - now
  if left < 1 then left = 1 end
  return left
end
return 0
";

static RATE: OnceLock<Script> = OnceLock::new();

impl Fleet {
    /// Counts one request from `client` (an address, or an IPv6 /64, as the issuer buckets it)
    /// against `limit` requests per `window_secs` across the fleet. `limit` 0 allows everything
    /// without a Redis call.
    pub async fn rate_limit(&self, client: &str, limit: u32, window_secs: u64) -> Result<RateVerdict, FleetError> {
        if limit == 0 {
            return Ok(RateVerdict::Allow);
        }
        let window_secs = window_secs.max(1);
        let key = self.inner.names.rate(window_secs, client);
        let left: u64 = self
            .inner
            .call("rate limit", |mut c| async move {
                let mut inv = RATE.get_or_init(|| Script::new(RATE_LUA)).prepare_invoke();
                inv.key(key).arg(limit).arg(window_secs);
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(if left == 0 { RateVerdict::Allow } else { RateVerdict::Limited { retry_after: left } })
    }
}
