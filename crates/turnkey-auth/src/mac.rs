//! HMAC-SHA1, the one MAC of the TURN REST scheme, the stateless nonces and STUN's
//! MESSAGE-INTEGRITY (RFC 8489 §14.5). Every crate that needs it (the relay's integrity check,
//! `turnkey-load`'s requests) uses this copy.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Length of an HMAC-SHA1 tag.
pub const HMAC_SHA1_LEN: usize = 20;

/// `HMAC-SHA1(key, parts[0] || parts[1] || ...)`: the parts are fed in order, so a caller can MAC
/// a message with one field rewritten without copying it.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; HMAC_SHA1_LEN] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha1>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is `HMAC-SHA1(key, parts...)`, compared in constant time.
pub fn hmac_sha1_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    tag.len() == HMAC_SHA1_LEN && bool::from(hmac_sha1(key, parts).ct_eq(tag))
}

/// Constant-time equality of two byte strings (length is not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2202_vector_and_split_input() {
        // RFC 2202 §3, test case 2: key "Jefe", data "what do ya want for nothing?".
        let expected = [
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84, 0xdf, 0x9c, 0x25, 0x9a,
            0x7c, 0x79,
        ];
        assert_eq!(hmac_sha1(b"Jefe", &[b"what do ya want for nothing?"]), expected);
        assert_eq!(hmac_sha1(b"Jefe", &[b"what do ya ", b"", b"want for nothing?"]), expected);
        assert!(hmac_sha1_verify(b"Jefe", &[b"what do ya want ", b"for nothing?"], &expected));
        let mut wrong = expected;
        wrong[19] ^= 1;
        assert!(!hmac_sha1_verify(b"Jefe", &[b"what do ya want for nothing?"], &wrong));
        assert!(!hmac_sha1_verify(b"Jefe", &[b"what do ya want for nothing?"], &expected[..19]));
    }
}
