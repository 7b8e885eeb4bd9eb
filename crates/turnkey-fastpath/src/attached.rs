//! What attaching the relaying program to an interface left behind: how it ended up relaying
//! ([`AttachedMode`]) and the link to detach ([`Attachment`]). A leaf: [`crate::program`] keeps
//! the attachments, [`crate::attach`] makes them.

use aya::programs::xdp::XdpLinkId;

/// How an interface ended up relaying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// XDP in the driver.
    Native,
    /// XDP in the kernel stack (no driver support): still ahead of sockets, slower than native.
    Generic,
    /// Not attached: everything stays in user space, for this reason.
    UserSpace(String),
}

impl AttachedMode {
    /// The metric label (`turnkey_relay_fastpath_mode{mode}`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::UserSpace(_) => "off",
        }
    }
}

/// One attached interface.
#[derive(Debug)]
pub(crate) struct Attachment {
    pub ifindex: u32,
    pub link: XdpLinkId,
    pub mode: AttachedMode,
}
