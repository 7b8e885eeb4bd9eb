//! STUN message validation, integrity and response building on top of the webrtc-rs `stun` crate.
//!
//! The crate's decoder is lenient (it accepts trailing bytes and lengths that are not multiples of
//! four, and it reads attributes after MESSAGE-INTEGRITY), so every datagram is walked here first:
//! lengths checked before use, FINGERPRINT verified when present, and attributes after
//! MESSAGE-INTEGRITY dropped before any handler sees them.

use stun::attributes::{AttrType, ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY};
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::{fingerprint_value, FINGERPRINT};
use stun::integrity::MessageIntegrity;
use stun::message::{Message, MessageClass, MessageType, Setter, MAGIC_COOKIE};
use turnkey_auth::hmac_sha1_verify;

use super::error::StunError;

const HEADER: usize = 20;
const MI_LEN: usize = 20;

/// A request or indication that passed framing checks.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Decoded message; attributes after MESSAGE-INTEGRITY removed.
    pub msg: Message,
    /// Byte offset of the MESSAGE-INTEGRITY attribute header, if present.
    pub mi_offset: Option<usize>,
}

/// Why a datagram was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    Framing,
    Fingerprint,
}

/// Validates and decodes a STUN message occupying exactly `buf`.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, Malformed> {
    if buf.len() < HEADER || buf[0] & 0xC0 != 0 {
        return Err(Malformed::Framing);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if cookie != MAGIC_COOKIE || !len.is_multiple_of(4) || HEADER + len != buf.len() {
        return Err(Malformed::Framing);
    }
    // Walk the attributes: every length is checked before use.
    let mut off = HEADER;
    let mut index = 0usize;
    let mut mi: Option<(usize, usize)> = None; // (byte offset, attribute index)
    let mut fingerprint: Option<usize> = None;
    while off < buf.len() {
        if off + 4 > buf.len() || fingerprint.is_some() {
            // Truncated header, or anything after FINGERPRINT (it must be last).
            return Err(Malformed::Framing);
        }
        let typ = u16::from_be_bytes([buf[off], buf[off + 1]]);
        let alen = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
        let padded = (alen + 3) & !3;
        if off + 4 + padded > buf.len() {
            return Err(Malformed::Framing);
        }
        if typ == ATTR_MESSAGE_INTEGRITY.0 && mi.is_none() {
            if alen != MI_LEN {
                return Err(Malformed::Framing);
            }
            mi = Some((off, index));
        } else if typ == ATTR_FINGERPRINT.0 {
            if alen != 4 {
                return Err(Malformed::Framing);
            }
            fingerprint = Some(off);
        }
        off += 4 + padded;
        index += 1;
    }
    if let Some(fp) = fingerprint {
        let got = u32::from_be_bytes([buf[fp + 4], buf[fp + 5], buf[fp + 6], buf[fp + 7]]);
        if got != fingerprint_value(&buf[..fp]) {
            return Err(Malformed::Fingerprint);
        }
    }
    let mut msg = Message::new();
    msg.raw.clear();
    msg.raw.extend_from_slice(buf);
    msg.decode().map_err(|_| Malformed::Framing)?;
    if let Some((_, idx)) = mi {
        // Attributes after MESSAGE-INTEGRITY are ignored (RFC 8489 §14.5); MI itself stays so
        // `contains` answers for it.
        msg.attributes.0.truncate(idx + 1);
    } else if fingerprint.is_some() {
        msg.attributes.0.retain(|a| a.typ != ATTR_FINGERPRINT);
    }
    Ok(Parsed { msg, mi_offset: mi.map(|(o, _)| o) })
}

/// Whether the MESSAGE-INTEGRITY of `raw` (at `mi_offset`) was computed with `key`.
pub(crate) fn integrity_matches(raw: &[u8], mi_offset: usize, key: &[u8]) -> bool {
    // The HMAC covers the header with its length set as if MESSAGE-INTEGRITY were last.
    let adjusted = ((mi_offset - HEADER + 4 + MI_LEN) as u16).to_be_bytes();
    let expected = &raw[mi_offset + 4..mi_offset + 4 + MI_LEN];
    hmac_sha1_verify(key, &[&raw[..2], &adjusted, &raw[4..mi_offset]], expected)
}

/// Comprehension-required attribute types this server understands.
pub(crate) fn is_known_required(t: AttrType) -> bool {
    use stun::attributes::*;
    matches!(
        t,
        ATTR_MAPPED_ADDRESS
            | ATTR_USERNAME
            | ATTR_MESSAGE_INTEGRITY
            | ATTR_ERROR_CODE
            | ATTR_UNKNOWN_ATTRIBUTES
            | ATTR_REALM
            | ATTR_NONCE
            | ATTR_XORMAPPED_ADDRESS
            | ATTR_CHANNEL_NUMBER
            | ATTR_LIFETIME
            | ATTR_XOR_PEER_ADDRESS
            | ATTR_DATA
            | ATTR_XOR_RELAYED_ADDRESS
            | ATTR_EVEN_PORT
            | ATTR_REQUESTED_TRANSPORT
            | ATTR_DONT_FRAGMENT
            | ATTR_RESERVATION_TOKEN
            | ATTR_REQUESTED_ADDRESS_FAMILY
            | ATTR_PRIORITY
            | ATTR_USE_CANDIDATE
            | ATTR_PADDING
            | ATTR_RESPONSE_PORT
            | ATTR_CHANGE_REQUEST
    ) || t == ATTR_MESSAGE_INTEGRITY_SHA256
}

/// The unknown comprehension-required attributes of `msg` (for a 420 answer).
pub(crate) fn unknown_required(msg: &Message) -> Vec<AttrType> {
    msg.attributes.0.iter().map(|a| a.typ).filter(|t| t.required() && !is_known_required(*t)).collect()
}

/// A response to `req` of the given class, with the request's transaction id.
pub(crate) fn response(req: &Message, class: MessageClass) -> Message {
    let mut m = Message::new();
    m.set_type(MessageType::new(req.typ.method, class));
    m.transaction_id = req.transaction_id;
    m.write_header();
    m
}

/// Adds attributes; a setter only fails on values we never produce (oversized reasons).
pub(crate) fn add(m: &mut Message, setter: &dyn Setter) {
    if let Err(e) = setter.add_to(m) {
        tracing::debug!(error = %e, "failed to add attribute");
    }
}

/// Adds ERROR-CODE: the error's code and reason phrase.
pub(crate) fn add_error(m: &mut Message, e: StunError) {
    add(m, &ErrorCodeAttribute { code: ErrorCode(e.code()), reason: e.reason().as_bytes().to_vec() });
}

/// Finishes a message: MESSAGE-INTEGRITY with `key` (when the request was authenticated) and
/// FINGERPRINT, and returns its bytes.
pub(crate) fn finish(mut m: Message, key: Option<&[u8; 16]>) -> Vec<u8> {
    if let Some(k) = key {
        add(&mut m, &MessageIntegrity(k.to_vec()));
    }
    add(&mut m, &FINGERPRINT);
    m.raw
}
