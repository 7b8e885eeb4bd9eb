//! The relay's threads by priority: the shards relay; everything else waits for them.
//!
//! A relay process runs its shards (one thread each, the data path) beside a control runtime (the
//! issuer API, the fleet's Redis traffic, certificate reloads, the usage flush, metrics). On a
//! machine with few cores the control work competes with the shards for them: a burst of it (a
//! revocation ending thousands of allocations sends thousands of fleet updates; a reload parses a
//! certificate) would deschedule a shard for milliseconds, which a client sees as a stall. The
//! control runtime's threads therefore run at a lower priority ([`lower_this_thread`], called
//! when each of them starts): the scheduler hands a shard its core as soon as it has work, and
//! the control work takes what is left. The shards keep the process's priority: they are started
//! by the thread that runs `turnkey_relay::run`, never by a lowered one (a thread inherits its
//! creator's nice value).
//!
//! That leaves the machine's other processes: on a machine where they keep every core busy, the
//! fair scheduler still makes a woken shard wait its turn for milliseconds (docs/benchmarks.md,
//! "Shard stalls": every long loop turn traced there was the shard waiting for a CPU, not
//! working). An operator who wants the shards served first can opt in to a real-time priority
//! (`[relay] shard_rt_priority`, [`realtime_this_thread`]): SCHED_FIFO, so a shard that has work
//! preempts every ordinary thread at once. The risk is the other side of that: a shard busy
//! without pause keeps ordinary threads off its core (the control runtime, sshd, the kernel's
//! own workers) except for the kernel's real-time throttling share (`sched_rt_runtime_us`, 5 %
//! by default); docs/relay.md says when to use it.

use std::io;
use std::num::NonZeroU8;

/// The nice value the control threads add to the process's (0 to 19; 10: about a tenth of a
/// shard's share of a contended core).
pub const CONTROL_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`CONTROL_NICE`] (Linux: nice values are per thread).
/// Lowering never needs a privilege; a failure leaves the thread as it was.
pub fn lower_this_thread() -> io::Result<()> {
    let target = (this_thread_nice()? + CONTROL_NICE).min(19);
    rustix::process::setpriority_process(Some(rustix::thread::gettid()), target)?;
    Ok(())
}

/// How the shard threads are scheduled: as ordinary threads (the default), or under SCHED_FIFO at
/// a real-time priority from 1 to 99 (`[relay] shard_rt_priority`; 0 in the setting is
/// ordinary). Valid by construction: [`realtime_this_thread`] takes it unchecked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct ShardPriority(Option<NonZeroU8>);

impl ShardPriority {
    /// Ordinary threads.
    pub const ORDINARY: Self = Self(None);

    /// The SCHED_FIFO priority, `None` for ordinary threads.
    #[must_use]
    pub fn realtime(self) -> Option<u8> {
        self.0.map(NonZeroU8::get)
    }
}

impl TryFrom<u64> for ShardPriority {
    type Error = String;

    /// 0: ordinary threads; 1 to 99: that SCHED_FIFO priority.
    fn try_from(v: u64) -> Result<Self, String> {
        match v {
            0 => Ok(Self::ORDINARY),
            1..=99 => Ok(Self(NonZeroU8::new(v as u8))),
            _ => Err(format!("must be 0 to 99, not {v}")),
        }
    }
}

impl From<ShardPriority> for u64 {
    fn from(p: ShardPriority) -> u64 {
        p.realtime().map_or(0, u64::from)
    }
}

/// Runs the calling thread under SCHED_FIFO at `priority`'s real-time priority, with
/// SCHED_RESET_ON_FORK so that a thread it starts is an ordinary one again; nothing for
/// [`ShardPriority::ORDINARY`]. Needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least the priority;
/// a failure leaves the thread as it was.
#[allow(unsafe_code, reason = "sched_setscheduler has no safe wrapper in rustix or std")]
pub fn realtime_this_thread(priority: ShardPriority) -> io::Result<()> {
    let Some(priority) = priority.realtime() else { return Ok(()) };
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is this thread.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy (`libc::SCHED_OTHER`, `libc::SCHED_FIFO`, ...), without
/// the reset-on-fork flag.
#[allow(unsafe_code, reason = "sched_getscheduler has no safe wrapper in rustix or std")]
pub fn this_thread_policy() -> io::Result<i32> {
    // SAFETY: no pointer is passed; pid 0 is this thread.
    let r = unsafe { libc::sched_getscheduler(0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r & !libc::SCHED_RESET_ON_FORK)
    }
}

/// The calling thread's nice value.
pub fn this_thread_nice() -> io::Result<i32> {
    Ok(rustix::process::getpriority_process(Some(rustix::thread::gettid()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_calling_thread_is_lowered_and_its_children_inherit_it() {
        let before = this_thread_nice().unwrap();
        let (lowered, child) = std::thread::spawn(|| {
            lower_this_thread().unwrap();
            let lowered = this_thread_nice().unwrap();
            let child = std::thread::spawn(|| this_thread_nice().unwrap()).join().unwrap();
            (lowered, child)
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + CONTROL_NICE).min(19));
        assert_eq!(child, lowered, "a thread started by a lowered one is lowered too");
        assert_eq!(this_thread_nice().unwrap(), before, "the caller's thread keeps its priority");
    }

    /// Needs root (CAP_SYS_NICE), as the test command runs; fails, never skips, without it.
    #[test]
    fn a_realtime_thread_runs_fifo_and_the_threads_it_starts_do_not() {
        let (policy, child) = std::thread::spawn(|| {
            realtime_this_thread(ShardPriority::try_from(7).unwrap()).unwrap();
            let policy = this_thread_policy().unwrap();
            let child = std::thread::spawn(|| this_thread_policy().unwrap()).join().unwrap();
            (policy, child)
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_FIFO);
        assert_eq!(child, libc::SCHED_OTHER, "SCHED_RESET_ON_FORK: a started thread is ordinary");
        assert_eq!(this_thread_policy().unwrap(), libc::SCHED_OTHER, "the caller's thread is unchanged");
        assert_eq!(ShardPriority::try_from(0), Ok(ShardPriority::ORDINARY));
        assert_eq!(ShardPriority::try_from(99).unwrap().realtime(), Some(99));
        assert!(ShardPriority::try_from(100).is_err());
        std::thread::spawn(|| {
            realtime_this_thread(ShardPriority::ORDINARY).unwrap();
            assert_eq!(this_thread_policy().unwrap(), libc::SCHED_OTHER, "ordinary stays ordinary");
        })
        .join()
        .unwrap();
    }
}
