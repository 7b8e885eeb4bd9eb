//! Open-file descriptors: the relay and the HTTP listeners share one process limit, so the soft
//! `RLIMIT_NOFILE` is raised to the hard limit at start and the HTTP connection caps are sized
//! from it, leaving the relay its share.
//!
//! Each HTTP listener (issuer, metrics) holds at most an eighth of the limit by default
//! (`max_connections = "auto"`, the default of [`HttpLimitsSettings`]), so a flood of HTTP
//! connections can take at most a quarter of the descriptors; the rest stays for relay sockets,
//! TCP/TLS clients and files. The limit is only known once the process runs, so the config's
//! default is the rule (`auto`), and this module is the one place it is turned into a number.
//!
//! The relay's own caps are held to the descriptors it is left ([`relay_limits`]): every
//! allocation holds a relay socket and every TCP/TLS client a connection, so `max_allocations`
//! plus `max_connections` never exceed three quarters of the limit (less a reserve for listeners
//! and files). A cap the limit cannot carry is lowered at start, with a warning naming both
//! numbers, so a full relay answers 508 (and a full listener refuses connections) instead of
//! failing inside `socket()` or `accept()` with EMFILE.

use turnkey_issuer::HttpLimits;

use turnkey_relay::conn::StreamLimits;
use turnkey_relay::engine::EngineSettings;

use crate::config::values::ConnCap;
use crate::config::HttpLimitsSettings;

/// Descriptors kept back from the relay's share for listeners, the data directory's files,
/// Redis and log output.
const RESERVE: u64 = 64;

/// The relay's allocation and connection caps in force under `nofile` open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCaps {
    /// Allocations (each holds one relay socket).
    pub max_allocations: u32,
    /// TCP/TLS client connections.
    pub max_connections: u32,
}

/// Lowers `engine.max_allocations` and `stream.max_connections` to what `nofile` descriptors can
/// carry next to the HTTP listeners' quarter: connections to a quarter of the relay's share
/// (each TCP/TLS client also holds its allocation's relay socket), allocations to the rest.
/// Logs a warning for each cap lowered; returns the caps in force.
pub fn relay_limits(engine: &mut EngineSettings, stream: &mut StreamLimits, nofile: u64) -> RelayCaps {
    let share = (nofile / 4 * 3).saturating_sub(RESERVE).max(32);
    let conn_room = u32::try_from(share / 4).unwrap_or(u32::MAX);
    if stream.max_connections > conn_room {
        lowered("max_connections", stream.max_connections, StreamLimits::default().max_connections, conn_room, nofile);
        stream.max_connections = conn_room;
    }
    let alloc_room = u32::try_from(share - u64::from(stream.max_connections)).unwrap_or(u32::MAX);
    if engine.max_allocations > alloc_room {
        lowered(
            "max_allocations",
            engine.max_allocations,
            EngineSettings::default().max_allocations,
            alloc_room,
            nofile,
        );
        engine.max_allocations = alloc_room;
    }
    RelayCaps { max_allocations: engine.max_allocations, max_connections: stream.max_connections }
}

/// Logs a lowered cap: a warning when the operator set it, an info line when it is the default.
fn lowered(setting: &str, configured: u32, default: u32, in_force: u32, nofile: u64) {
    if configured == default {
        tracing::info!(setting, default, in_force, nofile, "cap sized to the open-file limit");
    } else {
        tracing::warn!(
            setting,
            configured,
            in_force,
            nofile,
            "cap lowered to what the open-file limit can carry (raise LimitNOFILE / ulimit -n)"
        );
    }
}

/// Grows the process's descriptor table once, at start, to hold the descriptors the relay may
/// use (`caps`' sockets and connections, plus the reserve; at most `nofile`). The kernel grows
/// the table by doubling as descriptors are opened, and in a multithreaded process each growth
/// waits for an RCU grace period (`expand_files` -> `synchronize_rcu`) inside the `socket()` or
/// `accept()` that needed it, on the thread that called it: a shard creating 10,000 allocations
/// was blocked 10 to 50 ms at each doubling (docs/benchmarks.md, "Shard stalls"). A table never
/// shrinks, so one descriptor opened at the top and closed again leaves it grown (about 8 bytes
/// per slot: 560 KiB at the default caps). Returns the slots the table then holds, as
/// `/proc/self/status` tells (`None` if unreadable).
pub fn presize_fd_table(caps: RelayCaps, nofile: u64) -> Option<u64> {
    let want = u64::from(caps.max_allocations) + u64::from(caps.max_connections) + 2 * RESERVE;
    if let Ok(top) = i32::try_from(want.min(nofile.saturating_sub(1))) {
        let grown = std::fs::File::open("/dev/null").map(|f| rustix::io::fcntl_dupfd_cloexec(&f, top));
        match grown {
            Ok(Ok(high)) => drop(high),
            Ok(Err(e)) => tracing::debug!(error = %e, top, "cannot grow the descriptor table"),
            Err(e) => tracing::debug!(error = %e, "cannot grow the descriptor table"),
        }
    }
    fd_table_size()
}

/// The slots of this process's descriptor table (`FDSize` in `/proc/self/status`).
fn fd_table_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("FDSize:")).and_then(|v| v.trim().parse().ok())
}

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
    fn relay_caps_fit_the_descriptors_left_by_http() {
        let (mut e, mut st) = (EngineSettings::default(), StreamLimits::default());
        // 1024: 704 for the relay, a quarter of it for connections.
        let caps = relay_limits(&mut e, &mut st, 1024);
        assert_eq!(caps, RelayCaps { max_allocations: 528, max_connections: 176 });
        assert_eq!((e.max_allocations, st.max_connections), (528, 176));
        let http = http_limits(&unset(), 1024);
        let worst =
            u64::from(caps.max_allocations) + u64::from(caps.max_connections) + 2 * u64::from(http.max_connections);
        assert!(worst + RESERVE <= 1024, "allocations, connections and HTTP together: {worst}");
        // A large limit leaves the configured caps alone.
        let (mut e, mut st) = (EngineSettings::default(), StreamLimits::default());
        let caps = relay_limits(&mut e, &mut st, 1 << 20);
        assert_eq!((caps.max_allocations, caps.max_connections), (50_000, 20_000));
        // Lower explicit caps are kept; a tiny limit still leaves a floor.
        let (mut e, mut st) = (EngineSettings::default(), StreamLimits::default());
        (e.max_allocations, st.max_connections) = (100, 10);
        assert_eq!(relay_limits(&mut e, &mut st, 4096).max_allocations, 100);
        let (mut e, mut st) = (EngineSettings::default(), StreamLimits::default());
        let caps = relay_limits(&mut e, &mut st, 16);
        assert_eq!((caps.max_allocations, caps.max_connections), (24, 8));
    }

    #[test]
    fn the_descriptor_table_is_grown_once_for_the_relays_caps() {
        let nofile = raise_nofile();
        let before = fd_table_size().expect("FDSize in /proc/self/status");
        let caps = RelayCaps { max_allocations: 3000, max_connections: 1000 };
        let after = presize_fd_table(caps, nofile).unwrap();
        let want = (4000 + 2 * RESERVE).min(nofile - 1);
        assert!(after > want && after >= before, "{before} -> {after} slots, wanted {want}");
        // Nothing stays open: the next descriptor is a low one again.
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(std::os::fd::AsRawFd::as_raw_fd(&f) < 1000);
    }

    #[test]
    fn raising_is_idempotent() {
        let a = raise_nofile();
        assert_eq!(raise_nofile(), a);
    }
}
