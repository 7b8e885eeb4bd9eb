//! The outbound queue of one TCP/TLS connection: frames for the client, bounded in bytes and in
//! frames, filled by the shard (which never waits) and drained by the connection's writer task.
//!
//! Each frame is copied once, into one ring buffer, and the writer writes straight from it: over
//! TCP as many queued bytes as the socket takes, over TLS the rest of the front frame (so each
//! frame travels in its own TLS record). The ring grows with what is queued, never past
//! `max_bytes`, and an emptied queue gives back what it grew for a burst. Both ends live on the
//! shard's thread; neither holds the queue across an await.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Capacity an empty queue keeps; more is given back once the queue is drained.
const KEEP: usize = 16 * 1024;

/// Creates a queue holding at most `max_bytes` bytes and `max_frames` frames.
pub(crate) fn out_queue(max_bytes: usize, max_frames: usize) -> (OutSender, OutReceiver) {
    let inner = Rc::new(RefCell::new(Inner {
        bytes: VecDeque::new(),
        frames: VecDeque::new(),
        front_written: 0,
        max_bytes,
        max_frames: max_frames.max(1),
        closed: false,
        waker: None,
    }));
    (OutSender(inner.clone()), OutReceiver(inner))
}

/// The shard's end: queues frames without waiting. Dropping it closes the queue; the writer
/// then flushes what is queued and ends.
#[derive(Debug)]
pub(crate) struct OutSender(Rc<RefCell<Inner>>);

/// The writer's end.
#[derive(Debug)]
pub(crate) struct OutReceiver(Rc<RefCell<Inner>>);

#[derive(Debug)]
struct Inner {
    /// Queued bytes, front first.
    bytes: VecDeque<u8>,
    /// Lengths of the queued frames, front first.
    frames: VecDeque<u32>,
    /// Bytes of the front frame already written.
    front_written: usize,
    max_bytes: usize,
    max_frames: usize,
    closed: bool,
    waker: Option<Waker>,
}

impl OutSender {
    /// Queues `frame`; `false` (and nothing queued) if it does not fit.
    #[inline]
    pub fn push(&self, frame: &[u8]) -> bool {
        let q = &mut *self.0.borrow_mut();
        let need = q.bytes.len() + frame.len();
        let Ok(len) = u32::try_from(frame.len()) else { return false };
        if q.closed || q.frames.len() >= q.max_frames || need > q.max_bytes {
            return false;
        }
        if need > q.bytes.capacity() {
            // Doubling, but never past the bound.
            let target = (q.bytes.capacity() * 2).clamp(need, q.max_bytes);
            q.bytes.reserve_exact(target - q.bytes.len());
        }
        q.bytes.extend(frame);
        q.frames.push_back(len);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        true
    }

    /// Bytes queued now.
    #[cfg(test)]
    pub fn queued_bytes(&self) -> usize {
        self.0.borrow().bytes.len()
    }
}

impl Drop for OutSender {
    fn drop(&mut self) {
        let q = &mut *self.0.borrow_mut();
        q.closed = true;
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

impl OutReceiver {
    /// `Ready(true)` once bytes are queued, `Ready(false)` once the queue is closed and empty.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let q = &mut *self.0.borrow_mut();
        if !q.bytes.is_empty() {
            Poll::Ready(true)
        } else if q.closed {
            Poll::Ready(false)
        } else {
            q.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Calls `f` with the next bytes to write: every contiguous queued byte, or with `per_frame`
    /// only the rest of the front frame. Empty when nothing is queued.
    pub fn with_chunk<R>(&self, per_frame: bool, f: impl FnOnce(&[u8]) -> R) -> R {
        let q = self.0.borrow();
        let (front, _) = q.bytes.as_slices();
        let n = match (per_frame, q.frames.front()) {
            (true, Some(&len)) => front.len().min(len as usize - q.front_written),
            _ => front.len(),
        };
        f(&front[..n])
    }

    /// Marks the first `n` queued bytes written.
    pub fn consume(&self, n: usize) {
        let q = &mut *self.0.borrow_mut();
        let n = n.min(q.bytes.len());
        q.bytes.drain(..n);
        q.front_written += n;
        while let Some(&len) = q.frames.front() {
            if q.front_written < len as usize {
                break;
            }
            q.front_written -= len as usize;
            q.frames.pop_front();
        }
        if q.bytes.is_empty() {
            q.front_written = 0;
            if q.bytes.capacity() > KEEP {
                q.bytes.shrink_to(KEEP);
                q.frames.shrink_to(KEEP / 64);
            }
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.borrow().bytes.is_empty()
    }

    /// Bytes the queue holds memory for (its ring's capacity).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.0.borrow().bytes.capacity()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn drain(rx: &OutReceiver, per_frame: bool, max_write: usize) -> Vec<Vec<u8>> {
        let mut writes = Vec::new();
        while !rx.is_empty() {
            let chunk = rx.with_chunk(per_frame, |c| c[..c.len().min(max_write)].to_vec());
            rx.consume(chunk.len());
            writes.push(chunk);
        }
        writes
    }

    #[test]
    fn bounded_in_bytes_and_in_frames() {
        let (tx, rx) = out_queue(4096, 100);
        assert!((0..4).all(|_| tx.push(&[7; 1000])));
        assert!(!tx.push(&[7; 1000]), "4,000 + 1,000 bytes exceed 4,096");
        assert!(tx.push(&[7; 96]), "what fits is still queued");
        assert_eq!(tx.queued_bytes(), 4096);
        assert!(rx.capacity() <= 4096, "the ring never grows past the bound: {}", rx.capacity());
        drain(&rx, false, usize::MAX);
        let (tx, _rx) = out_queue(1 << 20, 3);
        assert!((0..3).all(|_| tx.push(&[1; 8])));
        assert!(!tx.push(&[1; 8]), "the frame bound holds too");
    }

    #[test]
    fn tcp_writes_everything_queued_and_tls_one_frame_at_a_time() {
        let (tx, rx) = out_queue(1 << 16, 100);
        for i in 1..=3u8 {
            assert!(tx.push(&vec![i; usize::from(i) * 4]));
        }
        assert_eq!(drain(&rx, false, usize::MAX).concat(), [vec![1; 4], vec![2; 8], vec![3; 12]].concat());
        for i in 1..=3u8 {
            assert!(tx.push(&vec![i; usize::from(i) * 4]));
        }
        // Per frame, and a partial write continues the same frame.
        let writes = drain(&rx, true, 6);
        assert_eq!(writes, vec![vec![1; 4], vec![2; 6], vec![2; 2], vec![3; 6], vec![3; 6]]);
    }

    #[test]
    fn an_emptied_queue_gives_back_its_burst_memory() {
        let (tx, rx) = out_queue(1 << 20, 1 << 16);
        while tx.push(&[0; 1200]) {}
        assert!(rx.capacity() >= 1 << 19);
        drain(&rx, false, 65_536);
        assert!(rx.capacity() <= KEEP, "{}", rx.capacity());
    }

    #[test]
    fn closing_wakes_the_writer_and_it_sees_the_rest_first() {
        let (tx, rx) = out_queue(1024, 10);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert_eq!(rx.poll_ready(&mut cx), Poll::Pending);
        assert!(tx.push(b"last"));
        drop(tx);
        assert_eq!(rx.poll_ready(&mut cx), Poll::Ready(true));
        rx.consume(4);
        assert_eq!(rx.poll_ready(&mut cx), Poll::Ready(false));
    }
}
