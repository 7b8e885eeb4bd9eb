//! One pacer per data-path loop: a single timer (tokio's wheel, 1 ms granularity) paces every
//! flow of the loop. At each wake-up every flow's due packets are stamped into one reused buffer
//! and leave as one train per flow (a GSO send over UDP, one write on a stream), so N flows cost
//! one timer and one task wake-up per tick instead of N. Nothing is allocated per packet.

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

/// Sends every flow's stamped packets at the plan's pace, all flows on one timer: train `k` (of
/// `plan.train` packets, back to back) of each flow is due `k / rate` seconds after the start.
/// A flow stops at the plan's end or count, or at its first send error (kept in
/// [`FlowSend::error`]); its final count goes to [`FlowSend::done`] as it stops.
pub async fn send_group(flows: &mut [FlowSend], plan: SendPlan, epoch: std::time::Instant) {
    let start = Instant::now();
    let end = start + plan.duration;
    let max = plan.count.unwrap_or(u64::MAX);
    let train = plan.train.max(1);
    // Every flow's due packets are stamped into this buffer in turn (reused for the whole phase).
    let mut burst = Vec::new();
    let mut running = flows.len();
    let mut due = 0u64;
    while running > 0 {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let Some(r) = plan.rate {
            due = (((now - start).as_secs_f64() * r) as u64 + 1).saturating_mul(train).min(max);
        }
        for f in flows.iter_mut().filter(|f| f.ended.is_none()) {
            let target = match plan.rate {
                Some(_) => due,
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
        match plan.rate {
            Some(r) if running > 0 => {
                let next = start + Duration::from_secs_f64(due.div_ceil(train) as f64 / r);
                sleep_until(next.min(end)).await;
            }
            _ => tokio::task::yield_now().await,
        }
    }
    for f in flows.iter_mut().filter(|f| f.ended.is_none()) {
        f.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UdpSocket;
    use turnkey_types::Transport;

    use super::*;
    use crate::client::{Auth, Credentials};
    use crate::flow::{data_of, Received, Wire};
    use crate::transport::Target;

    /// Runs `send_group` over UDP, `flows` flows to one plain socket, and returns each packet's
    /// flow, sequence number, arrival time (seconds since the first one) and payload length.
    fn capture(plan: SendPlan, payload: usize, flows: u32) -> Vec<(u32, u64, f64, usize)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let to = sink.local_addr().unwrap();
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
            let recv = async {
                let mut out = Vec::new();
                let mut buf = vec![0u8; 2048];
                let first = std::time::Instant::now();
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), sink.recv(&mut buf)).await {
                    let Received::Data(d) = data_of(&buf[..n]) else { panic!("not ChannelData") };
                    let s = Stamp::read(d).unwrap();
                    out.push((s.flow, s.seq, first.elapsed().as_secs_f64(), d.len()));
                }
                out
            };
            let ((), got) = tokio::join!(send_group(&mut senders, plan, epoch), recv);
            for f in &senders {
                assert!(f.error.is_none() && f.ended.is_some());
                assert_eq!(*f.done.borrow(), Some(f.sent), "the final count is handed over");
            }
            let sent: u64 = senders.iter().map(|f| f.sent).sum();
            assert_eq!(sent, got.len() as u64, "loopback loses nothing");
            got
        })
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
        assert!(got.iter().all(|&(_, _, _, len)| len == 1200));
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
        assert!(got.iter().all(|&(_, _, _, len)| len == 160));
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
            let mine: Vec<&(u32, u64, f64, usize)> = got.iter().filter(|p| p.0 == flow).collect();
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
}
