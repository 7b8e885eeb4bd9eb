//! The data path of one flow (its sender is paced with the other flows of its loop in
//! [`crate::pacer`]): the receiver that measures round trips, the
//! reflector (the far allocation of a pair, sending every packet back), the UDP echo peer, and
//! the keep-alive refreshes of long runs. Nothing is allocated per packet.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::client::Auth;
pub use crate::packet::{data_of, PacketTemplate, Received, Stamp, Wire, CHANNEL};
use crate::proto::{attr, class, method, MessageWriter};
use crate::transport::{Rx, Tx};

/// How often permissions, channels and allocations are refreshed during long runs.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Live counters of a flow, read by the progress display.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Packets sent in the current phase.
    pub sent: AtomicU64,
    /// Packets back in the current phase.
    pub delivered: AtomicU64,
}

/// What a sender is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct SendPlan {
    /// Trains per second (`None`: flood).
    pub rate: Option<f64>,
    /// Packets per train, sent back to back (1: evenly paced packets).
    pub train: u64,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many packets.
    pub count: Option<u64>,
}

/// Signed refresh requests (Refresh, CreatePermission or ChannelBind) sent during long runs.
#[derive(Debug)]
pub struct Keepalive {
    auth: Auth,
    peer: SocketAddr,
    channel: bool,
    lifetime: u32,
    next: Instant,
    buf: Vec<u8>,
    /// A NONCE learnt from a 438 answer, handed over by the receiver.
    pub fresh_nonce: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Keepalive {
    /// Keep-alive for an allocation whose peer is `peer`.
    pub fn new(auth: Auth, peer: SocketAddr, channel: bool, lifetime: u32) -> Self {
        Self {
            auth,
            peer,
            channel,
            lifetime,
            next: Instant::now() + KEEPALIVE_INTERVAL,
            buf: Vec::with_capacity(256),
            fresh_nonce: Arc::default(),
        }
    }

    /// The credential state (updated by 438 answers).
    pub fn into_auth(self) -> Auth {
        self.auth
    }

    /// The time of the next refresh.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Sends the refreshes if due (answers are read, and ignored, by the receiver).
    pub async fn tick(&mut self, tx: &mut Tx) -> io::Result<()> {
        let now = Instant::now();
        if now < self.next {
            return Ok(());
        }
        self.next = now + KEEPALIVE_INTERVAL;
        if let Ok(mut n) = self.fresh_nonce.lock() {
            if let Some(nonce) = n.take() {
                self.auth.learn(None, Some(&nonce));
            }
        }
        let tid = crate::client::new_tid();
        let mut w = MessageWriter::new(&mut self.buf, method::REFRESH | class::REQUEST, tid);
        w.attr_u32(attr::LIFETIME, self.lifetime);
        self.auth.sign(&mut w);
        tx.send(&self.buf).await?;
        let tid = crate::client::new_tid();
        let m = if self.channel { method::CHANNEL_BIND } else { method::CREATE_PERMISSION };
        let mut w = MessageWriter::new(&mut self.buf, m | class::REQUEST, tid);
        if self.channel {
            w.attr(attr::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0]);
        }
        w.xor_addr(attr::XOR_PEER_ADDRESS, self.peer);
        self.auth.sign(&mut w);
        tx.send(&self.buf).await
    }
}

/// Nanoseconds since `epoch`.
fn since(epoch: std::time::Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// What the receiver saw in one phase.
#[derive(Debug)]
pub struct RecvOutcome {
    /// Packets of this flow and phase received.
    pub delivered: u64,
    /// Packets that arrived after a later one.
    pub reordered: u64,
    /// Round-trip times, microseconds.
    pub rtt: Histogram<u64>,
    /// Error codes of answers to keep-alives.
    pub error_codes: Vec<u16>,
    /// The error that ended reception early.
    pub error: Option<io::Error>,
}

/// Receives the packets of `ids` (flow, phase) until the sender has finished (its final count
/// arrives on `done`) and either everything came back or `drain` has passed.
#[allow(clippy::too_many_arguments)]
pub async fn recv_loop(
    rx: &mut Rx,
    ids: (u32, u32),
    epoch: std::time::Instant,
    mut done: watch::Receiver<Option<u64>>,
    drain: Duration,
    counters: &FlowCounters,
    rtt: Histogram<u64>,
    fresh_nonce: &Mutex<Option<Vec<u8>>>,
    mut keep: Option<(&mut Tx, &mut Keepalive)>,
) -> RecvOutcome {
    let (flow, phase) = ids;
    // A one-way flow's far side has no other task: its keep-alives are sent from here.
    let far_future = Instant::now() + Duration::from_secs(86_400 * 365);
    let tick = sleep_until(keep.as_ref().map_or(far_future, |(_, ka)| ka.next()));
    tokio::pin!(tick);
    let mut out = RecvOutcome { delivered: 0, reordered: 0, rtt, error_codes: Vec::new(), error: None };
    let mut next_seq = 0u64;
    let mut total: Option<u64> = None;
    let deadline = sleep_until(Instant::now() + Duration::from_secs(86_400));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            r = rx.recv_each(epoch, |frame, arrived_ns| {
                let data = match data_of(frame) {
                    Received::Data(d) | Received::Indication(d, _) => d,
                    Received::Error(code, nonce) => {
                        out.error_codes.push(code);
                        learn_stale_nonce(code, nonce, fresh_nonce);
                        return;
                    }
                    Received::Other => return,
                };
                let Some(s) = Stamp::read(data) else { return };
                if s.flow != flow || s.phase != phase {
                    return;
                }
                out.delivered += 1;
                if s.seq < next_seq {
                    out.reordered += 1;
                } else {
                    next_seq = s.seq + 1;
                }
                // Up to the kernel's arrival stamp (UDP), not to when this task got to read it.
                let us = arrived_ns.saturating_sub(s.sent_ns) / 1000;
                out.rtt.saturating_record(us.max(1));
            }) => {
                if let Err(e) = r {
                    out.error = Some(e);
                    break;
                }
                counters.delivered.store(out.delivered, Ordering::Relaxed);
            }
            changed = done.changed(), if total.is_none() => {
                let n = match changed {
                    Ok(()) => *done.borrow(),
                    Err(_) => Some(counters.sent.load(Ordering::Relaxed)),
                };
                if let Some(n) = n {
                    total = Some(n);
                    deadline.as_mut().reset(Instant::now() + drain);
                }
            }
            () = &mut deadline, if total.is_some() => break,
            () = &mut tick, if keep.is_some() => {
                if let Some((tx, ka)) = keep.as_mut() {
                    if let Err(e) = ka.tick(tx).await {
                        out.error = Some(e);
                        break;
                    }
                    tick.as_mut().reset(ka.next());
                }
            }
        }
        if total.is_some_and(|t| out.delivered >= t) {
            break;
        }
    }
    out
}

/// Hands the NONCE of a 438 (stale nonce) answer to the keep-alive that reads `slot`, so its next
/// refreshes are signed with it; any other answer leaves the slot alone.
fn learn_stale_nonce(code: u16, nonce: Option<&[u8]>, slot: &Mutex<Option<Vec<u8>>>) {
    if let (438, Some(n), Ok(mut s)) = (code, nonce, slot.lock()) {
        *s = Some(n.to_vec());
    }
}

/// Reads what a one-way flow's near allocation gets (answers to its keep-alives: its packets
/// arrive at the far side) until `stop` changes; returns the answers' error codes, and hands a
/// 438's NONCE to the keep-alive through `fresh_nonce`.
pub async fn control_loop(
    rx: &mut Rx,
    epoch: std::time::Instant,
    mut stop: watch::Receiver<bool>,
    fresh_nonce: &Mutex<Option<Vec<u8>>>,
) -> Vec<u16> {
    let mut codes = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = rx.recv_each(epoch, |frame, _| {
                if let Received::Error(code, nonce) = data_of(frame) {
                    codes.push(code);
                    learn_stale_nonce(code, nonce, fresh_nonce);
                }
            }) => {
                if r.is_err() {
                    break;
                }
            }
        }
    }
    codes
}

/// The far side of a paired flow: sends every packet back to `back_to` through its own
/// allocation (ChannelData is returned unchanged; a Data indication becomes a Send indication)
/// until `stop` changes, each packet's send stamp moved later by the time it waited here (from
/// its arrival, in ns since `epoch`, the run's). Returns the connection for the release.
pub async fn reflect_loop(
    mut tx: Tx,
    mut rx: Rx,
    mut keepalive: Keepalive,
    mut stop: watch::Receiver<bool>,
    epoch: std::time::Instant,
) -> (Tx, Rx, Keepalive) {
    // What one receive brought back is sent as trains: runs of same-size frames (the pair's
    // packets all have one size) go out as one GSO send over UDP, one write on a stream. The
    // buffers are reused: no allocation per packet.
    let mut out = Vec::with_capacity(65_600);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut indication = Vec::with_capacity(65_600);
    let stream = tx.is_stream();
    let tick = sleep_until(keepalive.next());
    tokio::pin!(tick);
    loop {
        // When this receive's packets leave again (read once per receive, at the first packet).
        let mut now = None;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = rx.recv_each(epoch, |frame, arrived_ns| {
                let (bytes, data_at) = match data_of(frame) {
                    Received::Data(d) => (frame, d.as_ptr() as usize - frame.as_ptr() as usize),
                    Received::Indication(data, peer) => {
                        let tid = [9u8; 12];
                        MessageWriter::new(&mut indication, method::SEND | class::INDICATION, tid)
                            .xor_addr(attr::XOR_PEER_ADDRESS, peer)
                            .attr(attr::DATA, data);
                        // DATA is the last attribute: its value, then its padding.
                        (&indication[..], indication.len() - data.len() - (4 - data.len() % 4) % 4)
                    }
                    Received::Error(code, nonce) => {
                        learn_stale_nonce(code, nonce, &keepalive.fresh_nonce);
                        return;
                    }
                    Received::Other => return,
                };
                // (size, count) runs; a stream needs no runs (one write of everything).
                match runs.last_mut() {
                    Some((size, count)) if stream || *size == bytes.len() => *count += 1,
                    _ => runs.push((bytes.len(), 1)),
                }
                let at = out.len() + data_at;
                out.extend_from_slice(bytes);
                // The time this packet waited here (from the kernel's arrival stamp to its
                // reflection) moves its send stamp later: the round trip the near side measures
                // is the relay's two legs, not how long this loop took to read and reflect.
                let held = now.get_or_insert_with(|| since(epoch)).saturating_sub(arrived_ns);
                if let Some(stamp) = out.get_mut(at..).and_then(|p| Stamp::read(p).map(|s| (s, p))) {
                    let (mut s, p) = stamp;
                    s.sent_ns = s.sent_ns.saturating_add(held);
                    s.write(p);
                }
            }) => {
                if r.is_err() {
                    break;
                }
                let mut at = 0;
                let mut failed = false;
                for &(size, count) in &runs {
                    let len = if stream { out.len() } else { size * count };
                    failed |= tx.send_train(&out[at..at + len], size).await.is_err();
                    at += len;
                }
                out.clear();
                runs.clear();
                if failed {
                    break;
                }
            }
            () = &mut tick => {
                if keepalive.tick(&mut tx).await.is_err() {
                    break;
                }
                tick.as_mut().reset(keepalive.next());
            }
        }
    }
    (tx, rx, keepalive)
}

/// The address the own echo peer binds: the one this host sends from towards `server` (what the
/// kernel's route picks), so the relay can reach it: 127.0.0.1 or ::1 for a server on this
/// machine, the address on the shared link for a server across a veth or a LAN. Loopback when
/// the route cannot be found.
pub fn echo_ip(server: SocketAddr) -> std::net::IpAddr {
    let (any, lo): (SocketAddr, std::net::IpAddr) = if server.is_ipv4() {
        ((std::net::Ipv4Addr::UNSPECIFIED, 0).into(), std::net::Ipv4Addr::LOCALHOST.into())
    } else {
        ((std::net::Ipv6Addr::UNSPECIFIED, 0).into(), std::net::Ipv6Addr::LOCALHOST.into())
    };
    std::net::UdpSocket::bind(any)
        .and_then(|s| s.connect(server).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(lo)
}

/// Binds the own echo peer on `ip`, on a port no TCP listener on this host holds there: a relay
/// on the same host may refuse its own service ports as peers whatever the protocol (turnkey
/// does, security.md), so a peer that drew the number of the relay's TCP or metrics listener
/// would be refused by chance. A port held by a listener is kept bound while the next is drawn.
pub fn bind_echo(ip: std::net::IpAddr) -> io::Result<UdpSocket> {
    let mut held = Vec::new();
    for _ in 0..64 {
        let udp = std::net::UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind((ip, port)) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => held.push(udp),
            _ => {
                udp.set_nonblocking(true)?;
                return UdpSocket::from_std(udp);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "every UDP port drawn has a TCP listener on its number"))
}

/// A UDP echo peer: returns every datagram to its sender until `stop` changes.
pub async fn echo_loop(sock: UdpSocket, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let _ = sock.send_to(&buf[..n], from).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reflection_moves_the_send_stamp_by_the_time_it_waited_to_be_read() {
        use crate::client::Credentials;
        use crate::transport::Target;
        use turnkey_types::Transport;

        // A stand-in for the relay: it sends one stamped ChannelData packet to the reflector,
        // which reads it only 30 ms after its arrival, and gets the reflection back.
        let relay = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        relay.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let target = Target::new(relay.local_addr().unwrap(), Transport::Udp, "x", false, None).unwrap();
        let (tx, rx) = rt.block_on(target.connect()).unwrap();
        // The kernel starts stamping arrivals shortly after the first socket asks (a deferred
        // switch): a run's sockets ask at their set-up, long before data.
        std::thread::sleep(Duration::from_millis(50));
        let epoch = std::time::Instant::now();
        let reflector = tx.local_addr().unwrap();
        let sent_ns = 1_000_000_000;
        let mut tpl = PacketTemplate::new(Wire::Channel, 100, false);
        relay.send_to(tpl.stamp(Stamp { flow: 3, phase: 1, seq: 7, sent_ns }), reflector).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let creds = Credentials { username: "u".into(), password: "p".into() };
        let ka = Keepalive::new(Auth::new(&creds, None), relay.local_addr().unwrap(), true, 600);
        let (stop_tx, stop) = watch::channel(false);
        let task = rt.spawn(reflect_loop(tx, rx, ka, stop, epoch));
        let mut buf = [0u8; 2048];
        let back = rt.block_on(async {
            tokio::task::spawn_blocking(move || {
                let n = relay.recv(&mut buf).unwrap();
                buf[..n].to_vec()
            })
            .await
            .unwrap()
        });
        let _ = stop_tx.send(true);
        let _ = rt.block_on(task);
        let Received::Data(d) = data_of(&back) else { panic!("not ChannelData") };
        let s = Stamp::read(d).unwrap();
        assert_eq!((s.flow, s.phase, s.seq), (3, 1, 7), "the same packet");
        let moved = s.sent_ns - sent_ns;
        assert!(moved >= 25_000_000, "send stamp moved {moved} ns: the 30 ms it waited to be read is in it");
        assert!(moved < 5_000_000_000, "moved {moved} ns");
    }

    #[test]
    fn echo_ip_is_the_source_address_towards_the_server() {
        assert_eq!(echo_ip("127.0.0.1:3478".parse().unwrap()).to_string(), "127.0.0.1");
        assert!(echo_ip("127.0.0.9:3478".parse().unwrap()).is_loopback());
        assert!(echo_ip("[::1]:3478".parse().unwrap()).is_loopback());
    }
}
