//! Open-file descriptors: the relay and the HTTP listeners share one process limit, so the soft
//! `RLIMIT_NOFILE` is raised to the hard limit at start and the HTTP connection caps are sized
//! from it, leaving the relay its share.
//!
//! Each HTTP listener (issuer, metrics) holds at most an eighth of the limit by default
//! (`max_connections = "auto"`, the default of [`HttpLimitsSettings`]), so a flood of HTTP
//! connections can take at most a quarter of the descriptors; the rest stays for relay sockets,
//! TCP/TLS clients and files. The limit is only known once the process runs, so the config's
//! default is the rule (`auto`), and this module is the one place it is turned into a number.

use turnkey_issuer::HttpLimits;

use crate::config::values::ConnCap;
use crate::config::HttpLimitsSettings;

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    if current.current.is_some() && current.current != current.maximum {
        let raised = Rlimit { current: current.maximum, maximum: current.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                let now = current.maximum.unwrap_or(u64::MAX);
                tracing::info!(from = soft, to = now, "raised the open-file limit");
                return now;
            }
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open-file limit"),
        }
    }
    soft
}

/// The HTTP limits of each listener: the configured values, `max_connections = "auto"` resolved
/// to an eighth of `nofile` (16 to 4096), the per-IP cap never above the total.
pub fn http_limits(s: &HttpLimitsSettings, nofile: u64) -> HttpLimits {
    let max_connections = match s.max_connections {
        ConnCap::Auto => u32::try_from((nofile / 8).clamp(16, 4096)).unwrap_or(4096),
        ConnCap::Fixed(n) => n.get(),
    };
    HttpLimits {
        header_timeout: s.header_timeout,
        idle_timeout: s.idle_timeout,
        max_connections,
        max_connections_per_ip: s.max_connections_per_ip.min(max_connections),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn unset() -> HttpLimitsSettings {
        HttpLimitsSettings::default()
    }

    #[test]
    fn http_caps_leave_the_relay_three_quarters_of_the_descriptors() {
        let l = http_limits(&unset(), 1024);
        assert_eq!((l.max_connections, l.max_connections_per_ip), (128, 64));
        assert!(u64::from(2 * l.max_connections) <= 1024 / 4);
        assert_eq!(http_limits(&unset(), 64).max_connections, 16);
        assert_eq!(http_limits(&unset(), 1 << 20).max_connections, 4096);
        let mut explicit = unset();
        explicit.max_connections = ConnCap::Fixed(NonZeroU32::new(10).unwrap());
        let l = http_limits(&explicit, 1024);
        assert_eq!((l.max_connections, l.max_connections_per_ip), (10, 10));
    }

    #[test]
    fn raising_is_idempotent() {
        let a = raise_nofile();
        assert_eq!(raise_nofile(), a);
    }
}
