//! Attaching the program to interfaces: `--fast-path auto|xdp|off` semantics. `auto` tries native
//! XDP, then generic XDP, then leaves the interface to user space (with the reason); `xdp` tries
//! native then generic and is an error if neither attaches; `off` attaches nothing. Attachments are
//! bpf_links owned by this process: they detach on drop, on `detach`, and when the process dies
//! (a crash leaves nothing attached). An older program attached through netlink (a turnkey from
//! before links, or `ip link set ... xdp`) blocks a link: when that program is turnkey's own it is
//! replaced, anything else is reported.

use std::process::Command;
use std::str::FromStr;

use aya::programs::xdp::XdpLinkId;
use aya::programs::XdpMode;

use crate::attached::{AttachedMode, Attachment};
use crate::error::FastPathError;
use crate::program::{FastPath, PASS_STUB_NAME, PROGRAM_NAME};

/// `--fast-path` / `[relay] fast_path`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FastPathMode {
    /// Native XDP, else generic XDP, else user space (logged with the reason).
    #[default]
    Auto,
    /// Native XDP, else generic XDP, else fail at start.
    Xdp,
    /// Never attach.
    Off,
}

impl FastPathMode {
    /// The setting's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Off => "off",
        }
    }
}

impl std::fmt::Display for FastPathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FastPathMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "xdp" => Ok(Self::Xdp),
            "off" => Ok(Self::Off),
            other => Err(format!("fast_path must be auto, xdp or off, not {other:?}")),
        }
    }
}

/// An interface's index in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> Result<u32, FastPathError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| FastPathError::UnknownInterface(iface.to_string()))
}

/// The interface that carries `ip` (what `auto` attaches to for a relay address), in the calling
/// thread's network namespace; None when no interface has it (a wildcard, or not local).
pub fn interface_of(ip: std::net::IpAddr) -> Option<String> {
    let ip = ip.to_canonical();
    nix::ifaddrs::getifaddrs().ok()?.find_map(|ifa| {
        let addr = ifa.address?;
        let found = match ip {
            std::net::IpAddr::V4(v4) => addr.as_sockaddr_in().is_some_and(|a| a.ip() == u32::from(v4)),
            std::net::IpAddr::V6(v6) => addr.as_sockaddr_in6().is_some_and(|a| a.ip() == v6),
        };
        found.then_some(ifa.interface_name)
    })
}

/// Whether forwarding is on for an interface, per family (`net.ipv4.conf.IF.forwarding`,
/// `net.ipv6.conf.IF.forwarding`). bpf_fib_lookup answers only for an ingress interface with
/// forwarding on; without it the program passes every datagram of that family to user space as
/// `forwarding_off`. docs/fastpath.md says what turning it on means for a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forwarding {
    pub ipv4: bool,
    pub ipv6: bool,
}

/// Reads [`Forwarding`] for `iface` in the calling thread's network namespace.
pub fn forwarding(iface: &str) -> Forwarding {
    let on = |family: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{iface}/forwarding"))
            .is_ok_and(|v| v.trim() != "0")
    };
    Forwarding { ipv4: on("ipv4"), ipv6: on("ipv6") }
}

impl FastPath {
    /// Attaches the relaying program to `iface` per `mode`; returns how it ended up. `Off` and an
    /// `Auto` that could not attach return `UserSpace` with the reason (log it); `Xdp` that could
    /// not attach is an error.
    pub fn attach(&mut self, iface: &str, mode: FastPathMode) -> Result<AttachedMode, FastPathError> {
        if mode == FastPathMode::Off {
            return Ok(AttachedMode::UserSpace("fast_path = off".to_string()));
        }
        if let Some(a) = self.attached.get(iface) {
            return Ok(a.mode.clone());
        }
        let index = ifindex(iface)?;
        match self.attach_index(iface, index, PROGRAM_NAME) {
            Ok((link, how)) => {
                self.allow_egress(index)?;
                let f = forwarding(iface);
                if !f.ipv4 || !f.ipv6 {
                    tracing::warn!(
                        iface,
                        ipv4 = f.ipv4,
                        ipv6 = f.ipv6,
                        "fast path attached, but forwarding is off on the interface for a family: its datagrams stay in user space (docs/fastpath.md)"
                    );
                }
                self.attached.insert(iface.to_string(), Attachment { ifindex: index, link, mode: how.clone() });
                Ok(how)
            }
            Err(e) if mode == FastPathMode::Auto => Ok(AttachedMode::UserSpace(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Attaches the XDP_PASS stub to `iface` (native): the far end of a veth whose near end relays
    /// with XDP_TX / redirect must run an XDP program for those frames to arrive. Detached on drop.
    pub fn attach_pass_stub(&mut self, iface: &str) -> Result<(), FastPathError> {
        let index = ifindex(iface)?;
        let prog = self.program(PASS_STUB_NAME)?;
        prog.attach_to_if_index(index, XdpMode::Driver).map_err(|e| FastPathError::Attach {
            iface: iface.to_string(),
            native: e.to_string(),
            generic: "not tried".to_string(),
        })?;
        Ok(())
    }

    fn attach_index(
        &mut self,
        iface: &str,
        index: u32,
        name: &str,
    ) -> Result<(XdpLinkId, AttachedMode), FastPathError> {
        let mut replaced = false;
        loop {
            let prog = self.program(name)?;
            let native = match prog.attach_to_if_index(index, XdpMode::Driver) {
                Ok(link) => return Ok((link, AttachedMode::Native)),
                Err(e) => error_chain(&e),
            };
            let generic = match prog.attach_to_if_index(index, XdpMode::Skb) {
                Ok(link) => return Ok((link, AttachedMode::Generic)),
                Err(e) => error_chain(&e),
            };
            // A stale turnkey program attached through netlink (no link to die with its process)
            // blocks both: replace it once.
            if !replaced && stale_turnkey_program(iface) {
                tracing::warn!(iface, "replacing a stale turnkey XDP program left attached by an earlier run");
                detach_netlink(iface);
                replaced = true;
                continue;
            }
            return Err(FastPathError::Attach { iface: iface.to_string(), native, generic });
        }
    }

    /// Detaches the program from `iface` (drop detaches every interface).
    pub fn detach(&mut self, iface: &str) -> Result<(), FastPathError> {
        let a = self.attached.remove(iface).ok_or_else(|| FastPathError::NotAttached(iface.to_string()))?;
        let _ = self.tx_ports.remove(a.ifindex);
        let prog = self.program(PROGRAM_NAME)?;
        prog.detach(a.link).map_err(|e| FastPathError::Attach {
            iface: iface.to_string(),
            native: format!("detach: {e}"),
            generic: String::new(),
        })
    }

    /// The interfaces attached and how.
    pub fn attached(&self) -> Vec<(String, AttachedMode)> {
        self.attached.iter().map(|(k, a)| (k.clone(), a.mode.clone())).collect()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Whether `ip -d link show` reports turnkey's program attached to `iface` (through netlink).
fn stale_turnkey_program(iface: &str) -> bool {
    Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            s.contains("\"xdp\"") && s.contains(&format!("\"name\":\"{PROGRAM_NAME}\""))
        })
}

fn detach_netlink(iface: &str) {
    for mode in ["xdpdrv", "xdpgeneric"] {
        let _ = Command::new("ip").args(["link", "set", "dev", iface, mode, "off"]).output();
    }
}
