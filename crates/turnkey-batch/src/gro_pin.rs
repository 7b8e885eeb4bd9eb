//! One IPv6 UDP socket with GRO on, held for the life of the process, so that configuring a
//! socket does not make the kernel rewrite its own code twice.
//!
//! `quinn-udp`'s `UdpSocketState::new` probes the kernel on every call: it binds a throwaway
//! `[::]:0` socket, turns UDP GRO on and closes it. Turning GRO on enables the kernel's IPv6
//! UDP encapsulation static key and closing the socket disables it again; when no other IPv6
//! socket of the machine has GRO on (a relay on IPv4 addresses, turnkey-load over IPv4), each
//! of those two changes is a 0 <-> 1 transition, which patches kernel text and synchronises
//! every CPU with inter-processor interrupts (`static_key_slow_inc` / `_dec`,
//! `smp_text_poke_batch_finish`). The relay creates one socket per allocation on a shard's
//! thread, so an Allocate burst held that shard for tens of milliseconds (docs/benchmarks.md,
//! "Shard stalls"). With this socket holding the key at one or more, the probes' enable and
//! disable are plain atomic counts. (While the key is on, the kernel's receive offload looks up
//! a socket for each IPv6 UDP packet it could coalesce, as it does anyway whenever an IPv6
//! socket of the machine has GRO on, such as a relay listening on an IPv6 address.)

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;

use quinn_udp::{UdpSockRef, UdpSocketState};

/// Makes sure the process holds its GRO socket (made on the first call; later calls only
/// look) and returns its address. `None` when none could be made (no IPv6 on this host: the
/// probes then fall back to IPv4, whose key the process's own IPv4 sockets with GRO on hold).
pub(crate) fn pin() -> Option<SocketAddr> {
    static PIN: OnceLock<Option<UdpSocket>> = OnceLock::new();
    PIN.get_or_init(|| {
        let s = UdpSocket::bind(("::1", 0)).ok()?;
        // `new` turns GRO on (and probes once more, this one time).
        UdpSocketState::new(UdpSockRef::from(&s)).ok()?;
        Some(s)
    })
    .as_ref()
    .and_then(|s| s.local_addr().ok())
}
