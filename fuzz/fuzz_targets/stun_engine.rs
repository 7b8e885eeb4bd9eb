//! STUN parsing and validation, and every request handler: each record is one message from one
//! of a few 5-tuples, handed over raw or re-signed with valid long-term credentials (so the
//! fuzzed attributes reach Allocate, Refresh, CreatePermission, ChannelBind and Send), with time
//! moving between records. No input may panic, and every reply must decode as STUN.
#![no_main]

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut h = common::Harness::new();
    for (op, rec) in common::records(data).take(64) {
        let from = common::Harness::tuple(op >> 2);
        match op & 3 {
            0 => h.raw(from, rec),
            1 | 2 => h.signed(from, rec),
            _ => h.advance(rec.first().copied().unwrap_or(1)),
        }
    }
});
