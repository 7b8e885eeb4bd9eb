//! The binary's config loader (`turnkey check-config`, `--config`): strict TOML parsing that
//! collects every unknown key, then validation that collects every bad value. Any text must give
//! settings or an error, never a panic; what parses must validate or report errors.
#![no_main]

#[allow(dead_code, clippy::all)]
#[path = "../../crates/turnkey/src/config.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(f) = config::parse_file(text) {
        let _ = config::validate(&f);
    }
});
