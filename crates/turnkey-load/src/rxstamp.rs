//! Receiving with the kernel's receive time: one `recvmmsg` into reused buffers, each datagram (or
//! GRO train, split back at its segment size) handed over with the time the kernel stamped it on
//! arrival (`SO_TIMESTAMPNS`), converted to nanoseconds since the run's epoch. A round trip is then
//! measured up to the packet's arrival, not up to the moment a receiver got round to reading it:
//! the loop may read its sockets only at its pacer's wake-ups without lengthening the round trips
//! it reports. (`turnkey-batch` turns quinn-udp's timestamps off again: its control buffer has no
//! room for one beside a GRO train's other messages; this is the generator's own small receive
//! path. Sending still goes through `turnkey-batch`.)

// `unsafe` here, and only here in this crate: `recvmmsg` with control messages through libc.
// turnkey-batch reads no timestamp (it turns quinn-udp's off), rustix has no `recvmmsg`, and nix
// 0.26's `recvmmsg` reuses headers the kernel rewrote (the name and control lengths it returns),
// which fails (EFAULT) or truncates the control data from the second call on. Each block states
// why it is sound; the tests below run every path.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

/// Bytes per receive buffer: more than any datagram or GRO train (the kernel caps one at 64 KiB).
const SLOT: usize = 65_536;
/// Control bytes per message: the timestamp (32), GRO's segment size (24), and room for the
/// packet-info message the batch layer enables on the socket.
const CONTROL: usize = 256;
/// Most buffers one `recvmmsg` fills.
pub const MAX_SLOTS: usize = 32;

/// Asks the kernel to stamp every datagram `sock` receives (software receive time; the kernel
/// switches stamping on shortly after the first socket of the machine asks, so a datagram that
/// arrives in that instant is stamped when read, as without stamps), and to
/// stop attaching the TOS / traffic class the batch layer asked for (the generator reads no
/// ECN).
pub fn enable(sock: &impl AsFd) -> io::Result<()> {
    // Only the one of the socket's family exists: the other's error means nothing.
    let _ = rustix::net::sockopt::set_ip_recvtos(sock, false);
    let _ = rustix::net::sockopt::set_ipv6_recvtclass(sock, false);
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor, and a pointer to a c_int with its exact length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Control buffers, 8-byte aligned as `cmsghdr` needs.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Control([u8; CONTROL]);

thread_local! {
    /// The control buffers of a `recvmmsg`, one set per thread (a call never awaits, and a batch
    /// stays free to move between threads with its socket).
    static CONTROLS: std::cell::RefCell<[Control; MAX_SLOTS]> =
        const { std::cell::RefCell::new([Control([0; CONTROL]); MAX_SLOTS]) };
}

/// Receive buffers for one `recvmmsg`, reused from call to call (nothing allocated per call).
pub struct StampedBatch {
    buf: Vec<u8>,
    slots: usize,
    /// Per filled buffer: (bytes, GRO segment size, arrival in ns since the epoch).
    meta: Vec<(usize, usize, u64)>,
}

impl std::fmt::Debug for StampedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StampedBatch").field("slots", &self.slots).field("filled", &self.meta.len()).finish()
    }
}

impl StampedBatch {
    /// Buffers for `slots` datagrams or GRO trains per call (1 to [`MAX_SLOTS`]).
    pub fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        Self { buf: vec![0; slots * SLOT], slots, meta: Vec::with_capacity(slots) }
    }

    /// How many buffers one call can fill.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// One non-blocking `recvmmsg` on `sock`; returns how many buffers it filled (`WouldBlock`
    /// when nothing was queued; the batch is then empty). Arrival times are nanoseconds since
    /// `epoch` (the read time for a datagram the kernel did not stamp).
    pub fn recv(&mut self, sock: &impl AsFd, epoch: Instant) -> io::Result<usize> {
        self.meta.clear();
        let slots = self.slots;
        CONTROLS.with(|c| {
            let mut controls = c.borrow_mut();
            // SAFETY: all-zero iovec and mmsghdr are valid values (null pointers, zero lengths);
            // every one passed to the kernel is filled in below.
            let mut iov: [libc::iovec; MAX_SLOTS] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; MAX_SLOTS] = unsafe { std::mem::zeroed() };
            for (k, (chunk, ctl)) in self.buf.chunks_mut(SLOT).zip(controls.iter_mut()).enumerate() {
                iov[k] = libc::iovec { iov_base: chunk.as_mut_ptr().cast(), iov_len: chunk.len() };
                let h = &mut hdrs[k].msg_hdr;
                h.msg_iov = &raw mut iov[k];
                h.msg_iovlen = 1;
                h.msg_control = ctl.0.as_mut_ptr().cast();
                h.msg_controllen = CONTROL as _;
            }
            // SAFETY: the first `slots` headers point at buffers of the stated lengths (this
            // batch's slots, this thread's control buffers), all alive and unaliased for the
            // call; no address is asked for.
            let n = unsafe {
                libc::recvmmsg(
                    sock.as_fd().as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    slots as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            // One pair of clock reads per call maps the kernel's wall-clock stamps onto the epoch.
            let read_ns = epoch.elapsed().as_nanos() as u64;
            let real_now = realtime_ns();
            for h in &hdrs[..n as usize] {
                let len = h.msg_len as usize;
                let (segment, stamp) = parse_control(&h.msg_hdr);
                let arrived = match stamp {
                    Some(ts) if ts <= real_now => read_ns.saturating_sub(real_now - ts),
                    _ => read_ns,
                };
                self.meta.push((len, segment.filter(|&s| s > 0).unwrap_or(len), arrived));
            }
            Ok(n as usize)
        })
    }

    /// Every datagram of the last call, in order, with its arrival (ns since the epoch): GRO
    /// trains split back at their segment size.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], u64)> + '_ {
        self.buf
            .chunks(SLOT)
            .zip(&self.meta)
            .flat_map(|(chunk, &(len, seg, at))| chunk[..len].chunks(seg.max(1)).map(move |d| (d, at)))
    }
}

/// The GRO segment size and the receive stamp (wall clock, ns) in one message's control data.
fn parse_control(h: &libc::msghdr) -> (Option<usize>, Option<u64>) {
    let (mut segment, mut stamp) = (None, None);
    // SAFETY: the CMSG macros walk the control data the kernel just wrote, bounded by the
    // `msg_controllen` it returned; each value is read unaligned at its type's size.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let ts = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                    stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                (libc::SOL_UDP, libc::UDP_GRO) => {
                    segment = Some(std::ptr::read_unaligned(data.cast::<libc::c_int>()) as usize);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    (segment, stamp)
}

/// The wall clock (the kernel stamps received datagrams with it), ns.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        // Set up as the data path's sockets are: the batch layer's options first.
        turnkey_batch::UdpIo::new(&rx).unwrap();
        enable(&rx).unwrap();
        // The kernel turns stamping on shortly after the first socket asks (a deferred switch).
        std::thread::sleep(Duration::from_millis(50));
        (rx, tx)
    }

    #[test]
    fn a_datagram_is_stamped_at_arrival_not_at_its_read() {
        let (rx, tx) = pair();
        let epoch = Instant::now();
        let before = epoch.elapsed().as_nanos() as u64;
        tx.send(b"hello").unwrap();
        let after_send = epoch.elapsed().as_nanos() as u64;
        // Read 30 ms after the datagram arrived: its time must be the arrival's.
        std::thread::sleep(Duration::from_millis(30));
        let mut b = StampedBatch::new(4);
        assert_eq!(b.recv(&rx, epoch).unwrap(), 1);
        let read = epoch.elapsed().as_nanos() as u64;
        let got: Vec<(&[u8], u64)> = b.datagrams().collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, b"hello");
        let at = got[0].1;
        // (1 ms of slack on each side for the two clocks' mapping.)
        assert!(at + 1_000_000 >= before, "stamped {at} before the send at {before}");
        assert!(at <= after_send + 1_000_000, "stamped {at}, sent by {after_send}");
        assert!(read - at >= 25_000_000, "stamped {at} ns, read at {read} ns: the read time, not the arrival");
    }

    #[test]
    fn an_empty_queue_would_block_and_many_datagrams_come_in_one_call() {
        let (rx, tx) = pair();
        let epoch = Instant::now();
        let mut b = StampedBatch::new(MAX_SLOTS);
        assert_eq!(b.recv(&rx, epoch).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        for k in 0..5u8 {
            tx.send(&[k; 10]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(b.recv(&rx, epoch).unwrap(), 5);
        let got: Vec<u8> = b.datagrams().map(|(d, _)| d[0]).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        let times: Vec<u64> = b.datagrams().map(|(_, t)| t).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "arrivals in order: {times:?}");
        // The same buffers serve call after call (the kernel rewrites the headers' lengths).
        for round in 0..3u8 {
            tx.send(&[round; 7]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(b.recv(&rx, epoch).unwrap(), 1, "round {round}");
            assert_eq!(b.datagrams().map(|(d, _)| d.to_vec()).collect::<Vec<_>>(), [vec![round; 7]]);
        }
    }

    #[test]
    fn a_gro_train_is_split_at_its_segment_size() {
        // Through the batch layer: GRO on the receiver, a GSO train of 4 x 100 B from the sender.
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let io_rx = turnkey_batch::UdpIo::new(&rx).unwrap();
        enable(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let io_tx = turnkey_batch::UdpIo::new(&tx).unwrap();
        let frames: Vec<u8> = (0..4u8).flat_map(|k| [k; 100]).collect();
        let segmented = io_tx.max_gso_segments() > 1;
        let out = turnkey_batch::Outgoing {
            to: rx.local_addr().unwrap(),
            ecn: None,
            contents: &frames,
            segment_size: segmented.then_some(100),
        };
        if segmented {
            io_tx.send(&tx, &out).unwrap();
        } else {
            for piece in frames.chunks(100) {
                tx.send_to(piece, rx.local_addr().unwrap()).unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
        let epoch = Instant::now();
        let mut b = StampedBatch::new(8);
        let filled = b.recv(&rx, epoch).unwrap();
        let got: Vec<(u8, usize)> = b.datagrams().map(|(d, _)| (d[0], d.len())).collect();
        assert_eq!(got, [(0, 100), (1, 100), (2, 100), (3, 100)]);
        if segmented && io_rx.gro() {
            assert_eq!(filled, 1, "one GRO train in one buffer");
        }
    }
}
