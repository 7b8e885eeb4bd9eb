//! One IPv6 UDP socket configured as every other (GRO on, receive timestamps asked for), held
//! for the life of the process, so that no socket the process makes or closes switches one of the
//! kernel's static keys between off and on.
//!
//! Three kernel switches count the sockets that want them, and each 0 <-> 1 transition patches
//! kernel text and synchronises every CPU with inter-processor interrupts
//! (`static_key_slow_inc` / `_dec`, `smp_text_poke_batch_finish`):
//!
//! - turning UDP GRO on (`udp_tunnel_encap_enable`) counts the socket in the IPv4 UDP
//!   encapsulation key, and an IPv6 socket in the IPv6 one as well; its close uncounts it;
//! - asking for receive timestamps (`SO_TIMESTAMPNS`, which `quinn-udp` 0.6 sets) counts it in the
//!   "stamp received packets" key until its close (turning the option off again does not), the
//!   switch itself done by a kernel worker.
//!
//! `quinn-udp` 0.5 probed the kernel on every `UdpSocketState::new` with a throwaway `[::]:0`
//! socket, GRO on, then closed: with no other IPv6 socket holding GRO (a relay on IPv4, turnkey-load
//! over IPv4) that was two transitions per relay socket, on the shard's thread (the allocation
//! stall in docs/benchmarks.md, "Allocation creation"). 0.6 probes the socket it is given and
//! opens none, but the relay's own sockets still turn GRO and timestamps on and close: without
//! this socket, the first relay socket made while the process holds none (at start, or after the
//! last allocation ended) would switch the keys on and the close of the last one off again, on the
//! shard's thread; a relay whose allocations come and go one at a time would patch kernel code
//! twice per allocation (measured: 1,253 IPIs for 200 IPv4 sockets made and closed one after the
//! other without this socket, none beyond the baseline with it; docs/benchmarks.md, "Allocation
//! creation without quinn-udp's probe sockets"). With this socket holding all three keys, every
//! relay socket's enable and disable are plain atomic counts.
//!
//! The price: while the process lives, the kernel looks up a GRO socket for each UDP packet it
//! could coalesce and stamps the time on each packet it receives, as it does anyway while any
//! relay socket is open. On a host without IPv6 the socket is IPv4 (it then holds the IPv4 keys,
//! the only ones the process's IPv4 sockets move).

use std::net::{SocketAddr, UdpSocket};
use std::sync::OnceLock;

use quinn_udp::{UdpSockRef, UdpSocketState};

/// Makes sure the process holds its socket (made on the first call; later calls only look) and
/// returns its address. `None` when none could be made (no loopback address to bind).
pub(crate) fn pin() -> Option<SocketAddr> {
    static PIN: OnceLock<Option<UdpSocket>> = OnceLock::new();
    PIN.get_or_init(|| {
        let s = UdpSocket::bind(("::1", 0)).or_else(|_| UdpSocket::bind(("127.0.0.1", 0))).ok()?;
        // `new` turns GRO and receive timestamps on, as on every socket the process configures.
        UdpSocketState::new(UdpSockRef::from(&s)).ok()?;
        Some(s)
    })
    .as_ref()
    .and_then(|s| s.local_addr().ok())
}
