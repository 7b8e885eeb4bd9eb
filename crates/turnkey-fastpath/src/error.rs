//! FastPathError: every way the fast path refuses, typed.

/// Errors of the fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// Built without the kernel program (no clang at build time), or `--fast-path off`.
    #[error("the kernel fast path is unavailable: {0}")]
    Unavailable(String),
    /// The kernel refused to load the program or create its maps (not root, no BPF, verifier).
    #[error("loading the XDP program failed: {0}")]
    Load(String),
    /// The verifier rejected the program (a bug in this build, never an environment problem).
    #[error("the kernel verifier rejected {program}: {log}")]
    Rejected { program: &'static str, log: String },
    /// A map the program declares is missing or of another type (a build mismatch).
    #[error("map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    /// No interface of that name (or index).
    #[error("no network interface {0}")]
    UnknownInterface(String),
    /// Neither native nor generic XDP could attach (`--fast-path xdp` makes this fatal).
    #[error("attaching XDP to {iface} failed: native: {native}; generic: {generic}")]
    Attach { iface: String, native: String, generic: String },
    /// The interface is not attached by this fast path.
    #[error("interface {0} is not attached")]
    NotAttached(String),
    /// A channel number outside 0x4000..=0x7FFF.
    #[error("channel number {0:#06x} is outside 0x4000..=0x7FFF")]
    InvalidChannel(u16),
    /// Client and relayed sides of different families (RFC 6156): relayed in user space.
    #[error("client and relayed address families differ: relayed in user space")]
    MixedFamilies,
    /// A map update or read failed (full map, kernel error).
    #[error("{op} on map {name}: {reason}")]
    MapOp { op: &'static str, name: &'static str, reason: String },
    /// BPF_PROG_TEST_RUN failed.
    #[error("BPF_PROG_TEST_RUN: {0}")]
    TestRun(String),
}
