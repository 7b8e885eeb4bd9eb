//! One pacer per data-path loop paces every flow of the loop: at each wake-up every flow's due
//! packets are stamped into one reused buffer and leave as one train per flow (a GSO send over
//! UDP, one write on a stream). Nothing is allocated per packet.
//!
//! By default the pacer wakes on 1 ms tick boundaries and each tick's due packets leave
//! together: the few wake-ups that costs are the cheapest pacing there is, and the relay gets
//! long GSO trains (cheap for it too). A UDP loop's pacer sleeps every gap on the loop's thread
//! ([`Waiting::Wakeups`]), so nothing that arrives meanwhile wakes the loop: after each wake-up's
//! sends it yields once and the loop's receivers and reflectors read everything that arrived,
//! round trips measured to the kernel's arrival stamps ([`crate::rxstamp`]), not to the read.
//! (`--recv-readiness`: [`Waiting::Fine`], gaps of a tick or more on tokio's timer wheel, and
//! the loop woken for every arrival.) With `--pace-burst N`, a loop with more than `N`
//! packets due per tick (where a tick's packets would reach the relay as one burst: 1,400 at
//! 1.4 M packets/s) paces finer instead (either waiting): it wakes every `N / rate` (at least
//! [`MIN_GAP`]) and sends what is due, about `N` packets; flow `i` of `n` is offset by `i / n` of
//! its period so many flows do not fall due together; and it sleeps those sub-millisecond gaps
//! on the loop's thread (µs precise, with the timer slack cut to 1 µs in [`crate::loops`]) after
//! one yield that lets the receivers read what has arrived. At such rates a gap holds dozens of
//! arrivals: they are read in one pass per wake-up, each with its arrival stamp, so the gap
//! does not lengthen a round trip. A stream flow's pacer (one per flow, several on a loop) always waits on the timer: a
//! blocking sleep would hold back the loop's other pacers. (Measured against turnkey on
//! loopback, the finer bursts cost the relay more CPU per packet than tick-sized GSO trains; on
//! a loaded machine they did not move where the ramp's drops happen, on the idle one they made
//! the ramp end on the relay's core instead of its socket buffers: see docs/load.md. The
//! default stays the tick; a capacity test says which it used.)

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

use crate::flow::{FlowCounters, Keepalive, PacketTemplate, SendPlan, Stamp};
use crate::transport::Tx;

/// Packets sent per flow between yields when flooding (one GSO train over UDP).
const FLOOD_BATCH: u64 = 32;
/// Most packets one paced wake-up sends per flow as one train (a pacer woken late catches up in
/// trains of this size instead of one send per packet).
const MAX_BURST: u64 = 64;
/// `--pace-burst`'s default: 0, the 1 ms tick at every rate.
pub const DEFAULT_PACE_BURST: u32 = 0;
/// The burst the tests pace finer with (`--pace-burst 32`).
#[cfg(test)]
const TEST_BURST: u32 = 32;
/// The timer wheel's tick.
const TICK: Duration = Duration::from_millis(1);
/// Shortest gap between two wake-ups of a fine-paced loop (at most 20,000 wake-ups/s).
pub const MIN_GAP: Duration = Duration::from_micros(50);

/// How a pacer waits between its wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Finer than the timer tick when the loop has more than this many packets due per tick
    /// (the loop's UDP pacer with `--recv-readiness`; `--pace-burst`; 0: never); gaps of a tick
    /// or more wait on the timer wheel, so arrivals wake the loop as they come.
    Fine(u32),
    /// As `Fine`, but every wait is slept on the loop's thread, at least a tick apart when not
    /// finer: the loop's receivers and reflectors read their sockets only at the pacer's
    /// wake-ups, everything that arrived meanwhile in one pass (the loop's UDP pacer by
    /// default; round trips stay honest through the kernel's receive stamps, `rxstamp`).
    Wakeups(u32),
    /// On tokio's timer wheel only (a stream flow's pacer).
    Timer,
}

/// A phase's pacing, fixed at its start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Schedule {
    /// Trains per second per flow.
    rate: f64,
    /// Whether flows are offset within their period and gaps slept finer than the tick.
    fine: bool,
    /// Shortest time between two wake-ups (fine pacing).
    gap: Duration,
}

impl Schedule {
    fn new(rate: f64, train: u64, flows: usize, waiting: Waiting) -> Self {
        let pps = rate * train as f64 * flows as f64;
        let burst = match waiting {
            Waiting::Fine(burst) | Waiting::Wakeups(burst) if burst > 0 => f64::from(burst),
            _ => f64::INFINITY,
        };
        let fine = pps * TICK.as_secs_f64() > burst;
        let gap = if fine { Duration::from_secs_f64(burst / pps).max(MIN_GAP) } else { Duration::ZERO };
        Self { rate, fine, gap }
    }

    /// Flow `i`'s offset (of `n`), in periods.
    fn offset(&self, i: usize, n: usize) -> f64 {
        if self.fine {
            i as f64 / n as f64
        } else {
            0.0
        }
    }

    /// When train `k` of flow `i` (of `n`) is due, after the start.
    fn due_at(&self, k: u64, i: usize, n: usize) -> Duration {
        Duration::from_secs_f64((k as f64 + self.offset(i, n)) / self.rate)
    }

    /// Trains of flow `i` (of `n`) due by `elapsed`: those with `due_at(k) <= elapsed`.
    fn trains_due(&self, elapsed: Duration, i: usize, n: usize) -> u64 {
        let x = elapsed.as_secs_f64() * self.rate - self.offset(i, n);
        if x < 0.0 {
            0
        } else {
            x as u64 + 1
        }
    }
}

/// The sending side of one flow in a phase.
#[derive(Debug)]
pub struct FlowSend {
    /// The connection's sending half.
    pub tx: Tx,
    /// The flow's packet, restamped for every send.
    pub tpl: PacketTemplate,
    /// The flow's refreshes during long runs.
    pub keepalive: Keepalive,
    /// (flow, phase), stamped into every packet.
    pub ids: (u32, u32),
    /// Live counters (`sent` updated after every train).
    pub counters: Arc<FlowCounters>,
    /// Receives the final count when the flow stops sending.
    pub done: watch::Sender<Option<u64>>,
    /// Packets sent so far.
    pub sent: u64,
    /// The error that stopped this flow early.
    pub error: Option<io::Error>,
    /// When the flow stopped sending.
    pub ended: Option<Instant>,
}

impl FlowSend {
    /// A flow that has not sent yet.
    pub fn new(
        tx: Tx,
        tpl: PacketTemplate,
        keepalive: Keepalive,
        ids: (u32, u32),
        counters: Arc<FlowCounters>,
        done: watch::Sender<Option<u64>>,
    ) -> Self {
        Self { tx, tpl, keepalive, ids, counters, done, sent: 0, error: None, ended: None }
    }

    fn finish(&mut self, error: Option<io::Error>) {
        self.counters.sent.store(self.sent, Ordering::Relaxed);
        self.error = error;
        self.ended = Some(Instant::now());
        self.done.send_replace(Some(self.sent));
    }

    /// Sends this flow's packets `sent..target` as trains of at most [`MAX_BURST`].
    async fn send_until(&mut self, target: u64, burst: &mut Vec<u8>, epoch: std::time::Instant) -> io::Result<()> {
        let (flow, phase) = self.ids;
        while self.sent < target {
            burst.clear();
            let n = (target - self.sent).min(MAX_BURST);
            let mut size = 0;
            for k in 0..n {
                let frame = self.tpl.stamp(Stamp { flow, phase, seq: self.sent + k, sent_ns: since(epoch) });
                size = frame.len();
                burst.extend_from_slice(frame);
            }
            self.tx.send_train(burst, size).await?;
            self.sent += n;
        }
        Ok(())
    }
}

/// Nanoseconds since `epoch`.
fn since(epoch: std::time::Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Sends every flow's stamped packets at the plan's pace, all flows on one pacer: train `k`
/// (of `plan.train` packets, back to back) of flow `i` is due `k / rate` seconds after the start
/// (`(k + i / n) / rate` when fine-paced). A flow stops at the plan's end or count, or at its first send error (kept in
/// [`FlowSend::error`]); its final count goes to [`FlowSend::done`] as it stops.
pub async fn send_group(flows: &mut [FlowSend], plan: SendPlan, epoch: std::time::Instant, waiting: Waiting) {
    let start = Instant::now();
    let end = start + plan.duration;
    let max = plan.count.unwrap_or(u64::MAX);
    let train = plan.train.max(1);
    let n = flows.len().max(1);
    let schedule = plan.rate.map(|r| Schedule::new(r, train, n, waiting));
    // Every flow's due packets are stamped into this buffer in turn (reused for the whole phase).
    let mut burst = Vec::new();
    let mut running = flows.len();
    while running > 0 {
        let woke = Instant::now();
        if woke >= end {
            break;
        }
        let elapsed = woke - start;
        for (i, f) in flows.iter_mut().enumerate().filter(|(_, f)| f.ended.is_none()) {
            let target = match schedule {
                Some(s) => s.trains_due(elapsed, i, n).saturating_mul(train).min(max),
                None => (f.sent + FLOOD_BATCH).min(max),
            };
            let mut r = f.send_until(target, &mut burst, epoch).await;
            if r.is_ok() {
                r = f.keepalive.tick(&mut f.tx).await;
            }
            match r {
                Err(e) => f.finish(Some(e)),
                Ok(()) if f.sent >= max => f.finish(None),
                Ok(()) => f.counters.sent.store(f.sent, Ordering::Relaxed),
            }
            if f.ended.is_some() {
                running -= 1;
            }
        }
        let Some(s) = schedule.filter(|_| running > 0) else {
            tokio::task::yield_now().await;
            continue;
        };
        // The next train due on any running flow (fine: no sooner than a gap after this wake-up).
        let next = flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.ended.is_none())
            .map(|(i, f)| start + s.due_at(f.sent / train, i, n))
            .min()
            .unwrap_or(end);
        if let Waiting::Wakeups(_) = waiting {
            // Not finer than the tick: the next tick boundary after this wake-up (as tokio's
            // timer wheel would wake it; a gap counted from the wake-up would stretch with
            // every wake-up's own latency and work, and the trains with it).
            let floor = if s.fine {
                woke + s.gap
            } else {
                start + TICK * ((woke - start).as_nanos() / TICK.as_nanos() + 1) as u32
            };
            let next = next.max(floor).min(end);
            sleep_on_thread(next).await;
            continue;
        }
        let next = next.max(woke + s.gap).min(end);
        if s.fine {
            sleep_fine(next).await;
        } else {
            sleep_until(next).await;
        }
    }
    for f in flows.iter_mut().filter(|f| f.ended.is_none()) {
        f.finish(None);
    }
}

/// Waits until `at` (under a tick away): lets the loop's other tasks (its receivers) run once,
/// then sleeps the rest on this thread.
async fn sleep_fine(at: Instant) {
    tokio::task::yield_now().await;
    let left = at.saturating_duration_since(Instant::now());
    if left >= TICK {
        sleep_until(at).await;
    } else if !left.is_zero() {
        // Blocking on purpose: the loop's sockets are read when this returns, in one pass.
        std::thread::sleep(left);
    }
}

/// Waits until `at`: lets the loop's other tasks (its receivers and reflectors) run once, then
/// sleeps the rest on this thread, whatever its length, so nothing that arrives meanwhile wakes
/// the loop.
async fn sleep_on_thread(at: Instant) {
    tokio::task::yield_now().await;
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        // Blocking on purpose: the loop's sockets are read when this returns, in one pass.
        std::thread::sleep(left);
    }
}

#[cfg(test)]
mod tests {
    use turnkey_types::Transport;

    use super::*;
    use crate::client::{Auth, Credentials};
    use crate::flow::{data_of, Received, Wire};
    use crate::transport::Target;

    /// Runs `send_group` over UDP (the fine waiting of a loop's UDP pacer), `flows` flows to one
    /// plain socket read on a thread of its own (so arrival times are the packets', not those of
    /// the pacer's thread), and returns each packet's flow, sequence number, arrival time
    /// (seconds since the first one) and payload length.
    /// What a sink received: (flow, seq, arrival s since the first, payload length, send stamp s).
    fn capture(plan: SendPlan, payload: usize, flows: u32) -> Vec<(u32, u64, f64, usize, f64)> {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _ = socket2::SockRef::from(&sink).set_recv_buffer_size(4 << 20);
        sink.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let to = sink.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 2048];
            let mut first = None;
            while let Ok(n) = sink.recv(&mut buf) {
                let first = *first.get_or_insert_with(std::time::Instant::now);
                let Received::Data(d) = data_of(&buf[..n]) else { panic!("not ChannelData") };
                let s = Stamp::read(d).unwrap();
                out.push((s.flow, s.seq, first.elapsed().as_secs_f64(), d.len(), s.sent_ns as f64 / 1e9));
            }
            out
        });
        // As a data-path loop sets it (loops.rs).
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let senders = rt.block_on(async {
            let target = Target::new(to, Transport::Udp, "x", false, None).unwrap();
            let mut senders = Vec::new();
            for id in 0..flows {
                let (tx, _rx) = target.connect().await.unwrap();
                let creds = Credentials { username: "u".into(), password: "p".into() };
                let ka = Keepalive::new(Auth::new(&creds, None), to, true, 600);
                let tpl = PacketTemplate::new(Wire::Channel, payload, false);
                let (done, _) = watch::channel(None);
                senders.push(FlowSend::new(tx, tpl, ka, (id, 1), Arc::default(), done));
            }
            let epoch = std::time::Instant::now();
            send_group(&mut senders, plan, epoch, Waiting::Fine(TEST_BURST)).await;
            senders
        });
        let got = reader.join().unwrap();
        for f in &senders {
            assert!(f.error.is_none() && f.ended.is_some());
            assert_eq!(*f.done.borrow(), Some(f.sent), "the final count is handed over");
        }
        let sent: u64 = senders.iter().map(|f| f.sent).sum();
        assert_eq!(sent, got.len() as u64, "loopback loses nothing");
        got
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn video_sends_trains_back_to_back_thirty_times_a_second() {
        let plan = SendPlan { rate: Some(30.0), train: 5, duration: Duration::from_millis(1000), count: None };
        let got = capture(plan, 1200, 1);
        // 30 trains in one second (the first at once; one more may fall on the boundary).
        assert!((150..=155).contains(&got.len()), "{} packets", got.len());
        assert_eq!(got.len() % 5, 0, "only whole trains");
        assert!(got.iter().all(|&(_, _, _, len, _)| len == 1200));
        for (k, train) in got.chunks(5).enumerate() {
            let seqs: Vec<u64> = train.iter().map(|p| p.1).collect();
            assert_eq!(seqs, (5 * k as u64..5 * k as u64 + 5).collect::<Vec<_>>());
        }
        // Back to back: a train spreads over far less than the 33 ms between frames, and trains
        // follow the frame clock (medians: a loaded machine may delay a wake-up now and then).
        let spreads: Vec<f64> = got.chunks(5).map(|t| t[4].2 - t[0].2).collect();
        let starts: Vec<f64> = got.chunks(5).map(|t| t[0].2).collect();
        let gaps: Vec<f64> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(median(spreads) < 0.005, "trains are sent back to back");
        let gap = median(gaps);
        assert!((0.025..0.045).contains(&gap), "median gap between trains {gap} s, want 1/30");
    }

    #[test]
    fn smooth_and_audio_pace_one_packet_at_a_time() {
        let plan = SendPlan { rate: Some(50.0), train: 1, duration: Duration::from_millis(1000), count: None };
        let got = capture(plan, 160, 1);
        assert!((50..=51).contains(&got.len()), "{} packets", got.len());
        assert!(got.iter().all(|&(_, _, _, len, _)| len == 160));
        let gap = median(got.windows(2).map(|w| w[1].2 - w[0].2).collect());
        assert!((0.015..0.025).contains(&gap), "packets 20 ms apart, median {gap} s");
    }

    #[test]
    fn a_count_ends_a_train_early() {
        let plan = SendPlan { rate: Some(30.0), train: 4, duration: Duration::from_secs(5), count: Some(10) };
        let got = capture(plan, 100, 1);
        assert_eq!(got.iter().map(|p| p.1).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn flows_on_one_pacer_each_keep_their_own_pace_and_sequence() {
        let plan = SendPlan { rate: Some(50.0), train: 1, duration: Duration::from_millis(1000), count: None };
        let got = capture(plan, 100, 4);
        for flow in 0..4 {
            let mine: Vec<&(u32, u64, f64, usize, f64)> = got.iter().filter(|p| p.0 == flow).collect();
            assert!((50..=51).contains(&mine.len()), "flow {flow}: {} packets", mine.len());
            let seqs: Vec<u64> = mine.iter().map(|p| p.1).collect();
            assert_eq!(seqs, (0..mine.len() as u64).collect::<Vec<_>>(), "flow {flow} in order");
            let gap = median(mine.windows(2).map(|w| w[1].2 - w[0].2).collect());
            assert!((0.015..0.025).contains(&gap), "flow {flow}: packets 20 ms apart, median {gap} s");
        }
    }

    #[test]
    fn flooding_flows_stop_at_their_count() {
        let plan = SendPlan { rate: None, train: 1, duration: Duration::from_secs(10), count: Some(40) };
        let got = capture(plan, 100, 3);
        for flow in 0..3 {
            let seqs: Vec<u64> = got.iter().filter(|p| p.0 == flow).map(|p| p.1).collect();
            assert_eq!(seqs, (0..40).collect::<Vec<_>>(), "flow {flow}");
        }
    }

    #[test]
    fn fine_pacing_starts_above_a_burst_per_tick_and_offsets_the_flows() {
        // --pace-burst 32. 10 flows at 2,000/s: 20 packets per tick, paced by the tick, aligned.
        let slow = Schedule::new(2000.0, 1, 10, Waiting::Fine(TEST_BURST));
        assert!(!slow.fine && slow.gap.is_zero());
        assert_eq!(slow.trains_due(Duration::ZERO, 9, 10), 1, "every flow's first packet at once");
        // 10 flows at 100,000/s: 1,000 per tick, paced every 32 µs -> the 50 µs floor.
        let fast = Schedule::new(100_000.0, 1, 10, Waiting::Fine(TEST_BURST));
        assert!(fast.fine);
        assert_eq!(fast.gap, MIN_GAP);
        // 4 flows at 20,000/s: 80 per tick; wake-ups 400 µs apart (32 packets each).
        let mid = Schedule::new(20_000.0, 1, 4, Waiting::Fine(TEST_BURST));
        assert!(mid.fine);
        assert!((mid.gap.as_secs_f64() - 400e-6).abs() < 1e-9, "{:?}", mid.gap);
        // Flow 2 of 4 sends its train k half a period after flow 0's.
        assert_eq!(mid.due_at(3, 2, 4), Duration::from_secs_f64(3.5 / 20_000.0));
        assert_eq!(mid.trains_due(Duration::from_secs_f64(0.4 / 20_000.0), 2, 4), 0);
        assert_eq!(mid.trains_due(Duration::from_secs_f64(0.6 / 20_000.0), 2, 4), 1);
        // A stream flow's pacer never paces finer than the timer, nor does `--pace-burst 0`.
        assert!(!Schedule::new(100_000.0, 1, 10, Waiting::Timer).fine);
        assert!(!Schedule::new(100_000.0, 1, 10, Waiting::Fine(0)).fine);
        // `--pace-burst 100`: 10 flows at 20,000/s (200 per tick) wake every 500 µs.
        let b100 = Schedule::new(20_000.0, 1, 10, Waiting::Fine(100));
        assert!(b100.fine && (b100.gap.as_secs_f64() - 500e-6).abs() < 1e-9, "{b100:?}");
    }

    #[test]
    fn a_fast_loop_leaves_in_bursts_of_about_fine_burst_not_a_whole_tick() {
        // 4 flows at 20,000 packets/s: a 1 ms tick would send 80 at once; the fine pacer
        // (--pace-burst 32) sends 32 every 400 µs. Bursts: runs of packets stamped under 50 µs
        // apart, by the pacer's own send stamps (arrival times at the sink would merge bursts
        // whenever the sink's thread waits for a core, as in a loaded test run).
        let plan = SendPlan { rate: Some(20_000.0), train: 1, duration: Duration::from_millis(250), count: None };
        let mut got = capture(plan, 100, 4);
        assert!((18_000..=20_100).contains(&got.len()), "{} packets in 0.25 s", got.len());
        got.sort_by(|a, b| a.4.total_cmp(&b.4));
        let mut bursts = vec![1usize];
        for w in got.windows(2) {
            if w[1].4 - w[0].4 < 50e-6 {
                *bursts.last_mut().unwrap() += 1;
            } else {
                bursts.push(1);
            }
        }
        let typical = median(bursts.iter().map(|&b| b as f64).collect());
        assert!(typical <= 48.0, "median burst {typical} packets (want about 32; a 1 ms tick sends 80)");
        assert!(bursts.len() >= 400, "{} bursts in 0.25 s (want about 600; ticks would give 250)", bursts.len());
    }

    #[test]
    fn reading_at_wake_ups_defers_reads_but_not_the_measured_arrival() {
        // 4 flows at 2,000 packets/s each to an echo on a thread of its own; the loop reads the
        // echoes only at its pacer's wake-ups (a tick apart). Each echo's arrival is the
        // kernel's stamp: the reads wait for the next wake-up, the arrival times do not.
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        echo.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let to = echo.local_addr().unwrap();
        let echoer = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1_000));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sent, waits, trips) = rt.block_on(async {
            let target = Target::new(to, Transport::Udp, "x", false, None).unwrap();
            let epoch = std::time::Instant::now();
            let mut senders = Vec::new();
            let mut readers = Vec::new();
            for id in 0..4 {
                let (tx, mut rx) = target.connect().await.unwrap();
                let creds = Credentials { username: "u".into(), password: "p".into() };
                let ka = Keepalive::new(Auth::new(&creds, None), to, true, 600);
                let tpl = PacketTemplate::new(Wire::Channel, 100, false);
                let (done, _) = watch::channel(None);
                senders.push(FlowSend::new(tx, tpl, ka, (id, 1), Arc::default(), done));
                // (read - arrival, arrival - send) of every echo, in ns.
                readers.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    let until = Instant::now() + Duration::from_millis(700);
                    while let Ok(Ok(())) = tokio::time::timeout_at(
                        until,
                        rx.recv_each(epoch, |frame, at| {
                            let read = since(epoch);
                            if let Received::Data(d) = data_of(frame) {
                                let s = Stamp::read(d).unwrap();
                                got.push((read.saturating_sub(at), at.saturating_sub(s.sent_ns)));
                            }
                        }),
                    )
                    .await
                    {}
                    got
                }));
            }
            let plan = SendPlan { rate: Some(2000.0), train: 1, duration: Duration::from_millis(400), count: None };
            send_group(&mut senders, plan, epoch, Waiting::Wakeups(0)).await;
            let mut all = Vec::new();
            for r in readers {
                all.extend(r.await.unwrap());
            }
            let sent: u64 = senders.iter().map(|f| f.sent).sum();
            let (waits, trips): (Vec<f64>, Vec<f64>) = all.into_iter().map(|(w, t)| (w as f64, t as f64)).unzip();
            (sent, waits, trips)
        });
        echoer.join().unwrap();
        assert!(sent >= 3_000, "{sent} packets sent in 0.4 s");
        assert!(waits.len() as u64 >= sent * 9 / 10, "{} of {sent} echoes read", waits.len());
        let (wait, trip) = (median(waits), median(trips));
        // Read at wake-ups a tick apart: an echo waits a good part of a tick to be read...
        assert!(wait >= 150_000.0, "median wait to be read {wait} ns: not read at wake-ups");
        // ...and its round trip is measured to its arrival, not lengthened by that wait (with
        // the readiness path, or the read time taken as the arrival, the wait is near 0).
        assert!(trip < 1_000_000.0, "median round trip {trip} ns to an echo on loopback");
    }
}
