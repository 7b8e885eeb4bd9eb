//! Two network namespaces joined by a veth pair, for tests that need a real link: unlike
//! loopback (MTU 65536, GSO trains handed over whole), a veth has a 1500-byte MTU and, with GRO
//! switched on, coalesces received trains in NAPI as a NIC driver does.
//!
//! [`VethPair::new`] creates them (unique names per process and call) and deletes them on drop,
//! also when the test panics. Where namespaces cannot be made (no root, no `ip`, a container
//! without CAP_SYS_ADMIN) it returns None after printing why; under `CI=true` it panics instead.
//! [`Netns::enter`] runs a closure on a thread inside a namespace: sockets it creates stay in
//! that namespace and can be used from any thread afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One named network namespace (`ip netns`).
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Its name (for `ip -n NAME ...` or `ip netns exec NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread moved into this namespace and returns its result.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `ip -n NAME ARGS...`, panicking with its output when it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Two namespaces, `a` and `b`, joined by a veth pair (`veth0` in each), with IPv4 and IPv6
/// addresses, loopback up, and GRO on both ends. Deleted on drop.
#[derive(Debug)]
pub struct VethPair {
    /// The first namespace.
    pub a: Netns,
    /// The second namespace.
    pub b: Netns,
}

/// `veth0`'s IPv4 address in namespace `a`.
pub const A_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1));
/// `veth0`'s IPv4 address in namespace `b`.
pub const B_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));
/// `veth0`'s IPv6 address in namespace `a`.
pub const A_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1));
/// `veth0`'s IPv6 address in namespace `b`.
pub const B_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2));

impl VethPair {
    /// Creates the pair, or says why it cannot (None; a panic under `CI=true`).
    pub fn new() -> Option<Self> {
        if let Err(why) = ip(&["netns", "list"]) {
            return skip(&format!("`ip` does not work here: {why}"));
        }
        sweep_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("tkns-{}-{n}", std::process::id());
        let (a, b) = (format!("{base}-a"), format!("{base}-b"));
        if let Err(why) = ip(&["netns", "add", &a]) {
            return skip(&format!("cannot create a network namespace (needs root / CAP_SYS_ADMIN): {why}"));
        }
        // From here on the drop cleans up whatever was made.
        let pair = Self { a: Netns { name: a }, b: Netns { name: b } };
        ip(&["netns", "add", &pair.b.name]).unwrap_or_else(|e| panic!("{e}"));
        pair.a.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", &pair.b.name]);
        for (ns, v4, v6) in [(&pair.a, A_V4, A_V6), (&pair.b, B_V4, B_V6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "veth0"]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "veth0", "nodad"]);
            ns.ip(&["link", "set", "lo", "up"]);
            // GRO on a veth needs its NAPI mode: `ethtool -K veth0 gro on` switches it on.
            ns.ip(&["link", "set", "veth0", "up"]);
            let gro = Command::new("ip")
                .args(["netns", "exec", ns.name(), "ethtool", "-K", "veth0", "gro", "on"])
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into()) });
            if let Err(e) = gro {
                panic!("ethtool -K veth0 gro on failed (scripts/install-test-tools.sh installs ethtool): {e}");
            }
        }
        Some(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns.name()]);
        }
    }
}

/// Deletes namespaces left by test processes that no longer run (killed before their drop).
fn sweep_stale() {
    let Ok(list) = ip(&["netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix("tkns-").and_then(|r| r.split('-').next()) else { continue };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn skip<T>(why: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("network namespace tests cannot run: {why} (CI must not skip them)");
    }
    eprintln!("SKIP: {why}");
    None
}
