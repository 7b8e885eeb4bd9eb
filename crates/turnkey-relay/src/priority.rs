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

use std::io;

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
}
