//! `[relay] fast_path` at start: loads the kernel fast path and attaches it to the interface that
//! carries each UDP listening address and relay address (docs/fastpath.md).
//!
//! - `off`: nothing is loaded.
//! - `auto`: native XDP, else generic, else user space, each interface's outcome and reason logged
//!   once. Interfaces left to user space on purpose: loopback (generic XDP only, partial
//!   checksums, and shared by every local process), an interface with forwarding off for the
//!   address's family (`bpf_fib_lookup` would pass every datagram), an interface another live
//!   process holds an XDP program on (links cannot be replaced; only a stale turnkey program left
//!   by netlink is), a wildcard or non-local address.
//! - `xdp`: every such case is an error at start instead.
//!
//! The returned [`KernelPath`] owns the attachments: dropping it (after the relay's drain)
//! detaches the program.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use turnkey_fastpath::{AttachedMode, FastPath, FastPathMetrics, FastPathMode};
use turnkey_relay::fastpath::KernelPath;
use turnkey_relay::udp::RelayAddrs;

/// Why an address stays in user space before any attach is tried, or the interface to attach.
fn interface_for(ip: IpAddr) -> Result<String, String> {
    if ip.is_unspecified() {
        return Err(format!("{ip} is a wildcard address: the fast path needs the relay's own address"));
    }
    let Some(iface) = turnkey_fastpath::interface_of(ip) else {
        return Err(format!("no interface carries {ip}"));
    };
    if iface == "lo" {
        // Generic XDP only, partial checksums the program cannot update, and shared by every
        // local process (the test suite's many turnkeys): never attached, in any mode.
        return Err(
            "loopback stays in user space (generic XDP only, partial checksums, shared by every local process)"
                .to_string(),
        );
    }
    let f = turnkey_fastpath::forwarding(&iface);
    let on = if ip.is_ipv4() { f.ipv4 } else { f.ipv6 };
    if !on {
        let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        return Err(format!(
            "forwarding is off on {iface} (net.{family}.conf.{iface}.forwarding=0): bpf_fib_lookup would pass every datagram"
        ));
    }
    Ok(iface)
}

/// Applies the mode at start; an error stops `serve`. `Ok(None)`: everything in user space.
pub fn start(
    mode: FastPathMode,
    udp_listeners: &[SocketAddr],
    relay: &RelayAddrs,
    registry: &prometheus::Registry,
) -> anyhow::Result<Option<Arc<KernelPath>>> {
    if mode == FastPathMode::Off {
        return Ok(None);
    }
    let unavailable = |why: String| -> anyhow::Result<Option<Arc<KernelPath>>> {
        if mode == FastPathMode::Xdp {
            anyhow::bail!("fast_path = xdp, but XDP cannot be attached: {why} (docs/fastpath.md)");
        }
        tracing::info!(reason = %why, "fast path: user space");
        Ok(None)
    };
    if !turnkey_fastpath::AVAILABLE {
        return unavailable(turnkey_fastpath::UNAVAILABLE.to_string());
    }
    if udp_listeners.is_empty() {
        return unavailable("no UDP listener".to_string());
    }
    let metrics = FastPathMetrics::register(registry)?;
    let relay_ips: Vec<IpAddr> = [relay.v4, relay.v6].into_iter().flatten().collect();
    let addrs: Vec<IpAddr> = udp_listeners.iter().map(SocketAddr::ip).chain(relay_ips.iter().copied()).collect();
    // Which interface each address needs, before anything is loaded (loopback-only processes,
    // such as the test suite's, never load the program).
    let mut wanted: Vec<(IpAddr, String)> = Vec::new();
    for ip in addrs {
        match interface_for(ip) {
            Ok(iface) => wanted.push((ip, iface)),
            Err(why) if mode == FastPathMode::Xdp => anyhow::bail!("fast_path = xdp: {why} (docs/fastpath.md)"),
            Err(why) => {
                if let Some(iface) = turnkey_fastpath::interface_of(ip) {
                    metrics.set_mode(&iface, &AttachedMode::UserSpace(why.clone()));
                }
                tracing::info!(address = %ip, reason = %why, "fast path: user space for this address");
            }
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    let mut fp = match FastPath::load() {
        Ok(fp) => fp,
        Err(e) => return unavailable(e.to_string()),
    };
    // Each interface once: its outcome, and the addresses it carries.
    let mut outcome: BTreeMap<String, AttachedMode> = BTreeMap::new();
    let mut served: Vec<IpAddr> = Vec::new();
    for (ip, iface) in wanted {
        let how = match outcome.get(&iface) {
            Some(how) => how.clone(),
            None => {
                let how = fp.attach(&iface, mode)?;
                match &how {
                    AttachedMode::UserSpace(why) => {
                        tracing::info!(interface = %iface, reason = %why, "fast path: user space (interface taken or XDP refused)")
                    }
                    m => tracing::info!(interface = %iface, mode = m.label(), "fast path: XDP attached"),
                }
                metrics.set_mode(&iface, &how);
                outcome.insert(iface.clone(), how.clone());
                how
            }
        };
        if !matches!(how, AttachedMode::UserSpace(_)) {
            served.push(ip);
        }
    }
    let listeners: Vec<SocketAddr> = udp_listeners.iter().filter(|a| served.contains(&a.ip())).copied().collect();
    let relays: Vec<IpAddr> = relay_ips.into_iter().filter(|ip| served.contains(ip)).collect();
    if listeners.is_empty() || relays.is_empty() {
        for (iface, _) in outcome {
            metrics.set_mode(&iface, &AttachedMode::UserSpace("no listener and relay address here".to_string()));
        }
        return unavailable("no UDP listener and relay address on an attached interface".to_string());
    }
    for a in &listeners {
        fp.add_listener(*a)?;
    }
    for ip in &relays {
        fp.add_relay_ip(*ip)?;
    }
    Ok(Some(Arc::new(KernelPath::new(fp, metrics, listeners, relays))))
}
