//! turnkey's kernel fast path: ChannelData on bound channels relayed by an XDP program
//! (`bpf/turnkey_xdp.c`), both directions, IPv4 and IPv6, hairpin included. User space keeps every
//! decision: the driver writes the program's maps (channels, allocations with deadlines and byte
//! budgets, the relay's addresses) through [`FastPath`] and reads its counters; whatever the
//! program is unsure of goes to user space (XDP_PASS) and is counted by [`PassReason`].
//!
//! Built without clang, [`OBJECT`] is `None`, [`AVAILABLE`] is false and [`UNAVAILABLE`] says why:
//! the relay then runs in user space and logs that once. docs/fastpath.md has the operator's view.

mod abi;
mod attach;
mod attached;
mod entry;
mod error;
mod metrics;
mod program;
mod slots;
mod stats;

pub use attach::{forwarding, ifindex, interface_of, FastPathMode, Forwarding};
pub use attached::AttachedMode;
pub use entry::{AllocKey, AllocationEntry, ChannelBinding, KernelClock, KernelDeadline, MAX_ALLOCATIONS};
pub use error::FastPathError;
pub use metrics::FastPathMetrics;
pub use program::{action, FastPath, RunStats, TestRunOutcome, PASS_STUB_NAME, PROGRAM_NAME};
pub use stats::{AllocCounters, PassReason, ProgramCounters};

/// The compiled program (clang at build time), or `None` when the build had no clang.
#[cfg(turnkey_fastpath_bpf)]
pub const OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnkey_xdp.o")));
/// The compiled program (clang at build time), or `None` when the build had no clang.
#[cfg(not(turnkey_fastpath_bpf))]
pub const OBJECT: Option<&[u8]> = None;

/// Whether this build carries the kernel program.
pub const AVAILABLE: bool = OBJECT.is_some();

/// Why the fast path is unavailable in this build (empty when it is available).
pub const UNAVAILABLE: &str = env!("TURNKEY_FASTPATH_UNAVAILABLE");
