//! ChannelData (RFC 8656 §12): fuzzed channel numbers, lengths and padding, from clients that
//! first allocate, permit and bind channels with fuzzed attributes, plus peer data towards them.
#![no_main]

#[path = "common.rs"]
mod common;

use turnkey_relay::engine::{PEER_HEADROOM, PEER_TAILROOM};
use turnkey_relay::{PeerAddr, RelayHandle};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut h = common::Harness::new();
    for (op, rec) in common::records(data).take(64) {
        let from = common::Harness::tuple(op >> 3);
        match op & 7 {
            // Control messages, signed, so channels really get bound.
            0 | 1 => h.signed(from, rec),
            // ChannelData: force the first two bits to 01.
            2..=5 => {
                let mut cd = rec.to_vec();
                if let Some(b) = cd.first_mut() {
                    *b = 0x40 | (*b & 0x3F);
                }
                h.raw(from, &cd);
            }
            // Data from a peer to relay socket `rec[0]`, from port `rec[1]`.
            6 => {
                let (&r, rest) = rec.split_first().unwrap_or((&1, &[]));
                let port = 1024 + u16::from(rest.first().copied().unwrap_or(0));
                let peer = PeerAddr(std::net::SocketAddr::from(([8, 8, 8, 8], port)));
                let mut buf = vec![0u8; PEER_HEADROOM + rest.len() + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + rest.len()].copy_from_slice(rest);
                let _ = h.engine.handle_peer(h.now, RelayHandle(u32::from(r % 8)), peer, &mut buf, rest.len());
            }
            _ => h.advance(rec.first().copied().unwrap_or(1)),
        }
    }
});
