//! `[relay] fast_path` at start. The relay does not feed the kernel fast path's maps yet (that
//! comes with the engine's channel and allocation events), so nothing is attached: `auto` relays in
//! user space and says why once, `xdp` refuses to start (it must fail when it cannot attach),
//! `off` is silent. docs/fastpath.md.

use turnkey_fastpath::FastPathMode;

/// Applies the mode at start; an error stops `serve`.
pub fn start(mode: FastPathMode) -> anyhow::Result<()> {
    let why = if turnkey_fastpath::AVAILABLE {
        "the relay does not feed the kernel fast path yet".to_string()
    } else {
        turnkey_fastpath::UNAVAILABLE.to_string()
    };
    match mode {
        FastPathMode::Off => Ok(()),
        FastPathMode::Auto => {
            tracing::info!(reason = %why, "fast path: user space");
            Ok(())
        }
        FastPathMode::Xdp => anyhow::bail!("fast_path = xdp, but XDP cannot be attached: {why} (docs/fastpath.md)"),
    }
}
