//! The binary's config loader (`turnkey check-config`, `--config`, flags): any TOML table is read
//! into the owning types of `Settings::owners`, collecting every unknown key and bad value. Any
//! text must give settings or an error, never a panic. The loader is the binary's own
//! `crates/turnkey/src/config/` (mod.rs with loader.rs and values.rs), compiled in here by path.
#![no_main]

#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../crates/turnkey/src/config/mod.rs"]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(table) = text.parse::<toml::Table>() else { return };
    // As flags and variables over no file (the path `--config` and `check-config` take reads the
    // file into the same table first).
    let _ = config::Settings::load(None, table);
});
