//! A compact STUN/TURN codec (RFC 8489, RFC 8656), hand-rolled for the hot path: messages are
//! written into caller-owned buffers and read in place, so the send and receive loops allocate
//! nothing per packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use turnkey_auth::hmac_sha1;

/// The STUN magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Size of the STUN header.
pub const HEADER_LEN: usize = 20;

/// STUN/TURN methods.
pub mod method {
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// STUN message classes, as the bits they set in the message type.
pub mod class {
    pub const REQUEST: u16 = 0x0000;
    pub const INDICATION: u16 = 0x0010;
    pub const SUCCESS: u16 = 0x0100;
    pub const ERROR: u16 = 0x0110;
    /// The mask selecting the class bits.
    pub const MASK: u16 = 0x0110;
}

/// Attribute types used by the client.
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
}

/// The 96-bit transaction id.
pub type TransactionId = [u8; 12];

/// Writes one STUN message into a reused buffer. The header length is kept current after each
/// attribute, so the buffer always holds a well-formed message.
#[derive(Debug)]
pub struct MessageWriter<'a> {
    buf: &'a mut Vec<u8>,
    tid: TransactionId,
}

impl<'a> MessageWriter<'a> {
    /// Clears `buf` and writes a header for `msg_type` (method | class).
    pub fn new(buf: &'a mut Vec<u8>, msg_type: u16, tid: TransactionId) -> Self {
        buf.clear();
        buf.extend_from_slice(&msg_type.to_be_bytes());
        buf.extend_from_slice(&0u16.to_be_bytes());
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&tid);
        Self { buf, tid }
    }

    fn set_len(&mut self) {
        let len = (self.buf.len() - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends an attribute, padded to 4 bytes.
    pub fn attr(&mut self, typ: u16, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&typ.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = padding(value.len());
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self.set_len();
        self
    }

    /// Appends a 32-bit attribute.
    pub fn attr_u32(&mut self, typ: u16, v: u32) -> &mut Self {
        self.attr(typ, &v.to_be_bytes())
    }

    /// Appends an XOR-encoded address attribute (XOR-PEER-ADDRESS and friends).
    pub fn xor_addr(&mut self, typ: u16, addr: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = encode_xor_addr(addr, &self.tid, &mut v);
        self.attr(typ, &v[..n])
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 keyed with `key`) over everything written so far.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        // The length field must count the MESSAGE-INTEGRITY attribute itself (RFC 8489 §14.5).
        let len = (self.buf.len() - HEADER_LEN + 24) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        let mac = hmac_sha1(key, &[self.buf]);
        self.attr(attr::MESSAGE_INTEGRITY, &mac)
    }
}

/// Bytes of padding after a value of `len` bytes.
pub const fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Writes the XOR-address value of `addr` into `out`; returns its length (8 or 20).
pub fn encode_xor_addr(addr: SocketAddr, tid: &TransactionId, out: &mut [u8; 20]) -> usize {
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = 0;
            out[1] = 0x01;
            let x = u32::from(ip) ^ MAGIC_COOKIE;
            out[4..8].copy_from_slice(&x.to_be_bytes());
            8
        }
        IpAddr::V6(ip) => {
            out[0] = 0;
            out[1] = 0x02;
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ mask[i];
            }
            20
        }
    }
}

/// Decodes an XOR-address value.
pub fn decode_xor_addr(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 8 {
        return None;
    }
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match v[1] {
        0x01 => {
            let x = u32::from_be_bytes([v[4], v[5], v[6], v[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port))
        }
        0x02 if v.len() >= 20 => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            mask[4..].copy_from_slice(tid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}

/// A received frame, classified without copying.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// ChannelData: channel number and application data (padding excluded).
    ChannelData { channel: u16, data: &'a [u8] },
    /// A STUN message.
    Stun(StunView<'a>),
    /// Anything else (dropped).
    Invalid,
}

/// Classifies a datagram or a stream frame.
pub fn classify(buf: &[u8]) -> Incoming<'_> {
    match buf.first() {
        Some(b) if b & 0xC0 == 0x40 && buf.len() >= 4 => {
            let channel = u16::from_be_bytes([buf[0], buf[1]]);
            let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            match buf.get(4..4 + len) {
                Some(data) => Incoming::ChannelData { channel, data },
                None => Incoming::Invalid,
            }
        }
        Some(b) if b & 0xC0 == 0 => match StunView::parse(buf) {
            Some(v) => Incoming::Stun(v),
            None => Incoming::Invalid,
        },
        _ => Incoming::Invalid,
    }
}

/// A parsed view of a STUN message borrowing the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct StunView<'a> {
    /// Method and class bits.
    pub msg_type: u16,
    /// The transaction id.
    pub tid: TransactionId,
    body: &'a [u8],
}

impl<'a> StunView<'a> {
    /// Parses the header and checks the length and the magic cookie.
    pub fn parse(buf: &'a [u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        if msg_type & 0xC000 != 0
            || len & 3 != 0
            || u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE
        {
            return None;
        }
        let body = buf.get(HEADER_LEN..HEADER_LEN + len)?;
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&buf[8..20]);
        Some(Self { msg_type, tid, body })
    }

    /// The method (class bits removed).
    pub fn method(&self) -> u16 {
        self.msg_type & !class::MASK & 0x3FFF
    }

    /// The class bits.
    pub fn class(&self) -> u16 {
        self.msg_type & class::MASK
    }

    /// The attributes in order, as `(type, value)` (padding excluded); stops at a malformed one.
    pub fn attrs(&self) -> AttrIter<'a> {
        AttrIter { rest: self.body }
    }

    /// The first attribute of type `typ`.
    pub fn attr(&self, typ: u16) -> Option<&'a [u8]> {
        self.attrs().find(|(t, _)| *t == typ).map(|(_, v)| v)
    }

    /// An XOR-address attribute, decoded.
    pub fn xor_addr(&self, typ: u16) -> Option<SocketAddr> {
        decode_xor_addr(self.attr(typ)?, &self.tid)
    }

    /// ERROR-CODE as `(class * 100 + number, reason)`.
    pub fn error_code(&self) -> Option<(u16, &'a str)> {
        let v = self.attr(attr::ERROR_CODE)?;
        if v.len() < 4 {
            return None;
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        Some((code, std::str::from_utf8(&v[4..]).unwrap_or("")))
    }

    /// A 32-bit attribute.
    pub fn attr_u32(&self, typ: u16) -> Option<u32> {
        let v = self.attr(typ)?;
        Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
    }
}

/// Iterator over STUN attributes.
#[derive(Debug, Clone)]
pub struct AttrIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            return None;
        }
        let typ = u16::from_be_bytes([self.rest[0], self.rest[1]]);
        let len = u16::from_be_bytes([self.rest[2], self.rest[3]]) as usize;
        let value = self.rest.get(4..4 + len)?;
        let next = (4 + len + padding(len)).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some((typ, value))
    }
}

/// Writes a ChannelData header for `len` bytes of data into `out[..4]`.
pub fn channel_header(channel: u16, len: usize, out: &mut [u8]) {
    out[..2].copy_from_slice(&channel.to_be_bytes());
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn xor_addresses_round_trip() {
        for a in ["127.0.0.1:3478", "[::1]:50000", "[2001:db8::7]:1"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut v = [0u8; 20];
            let n = encode_xor_addr(addr, &TID, &mut v);
            assert_eq!(decode_xor_addr(&v[..n], &TID), Some(addr));
        }
    }

    #[test]
    fn integrity_verifies_with_the_stun_crate() {
        let key = turnkey_auth::long_term_key("user", "realm", "pass");
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method::ALLOCATE | class::REQUEST, TID);
        w.attr_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
            .attr(attr::USERNAME, b"user")
            .attr(attr::REALM, b"realm")
            .attr(attr::NONCE, b"abcde")
            .integrity(&key);
        let mut m = stun::message::Message::new();
        m.unmarshal_binary(&buf).unwrap();
        let i =
            stun::integrity::MessageIntegrity::new_long_term_integrity("user".into(), "realm".into(), "pass".into());
        i.check(&mut m).unwrap();
        let v = StunView::parse(&buf).unwrap();
        assert_eq!(v.method(), method::ALLOCATE);
        assert_eq!(v.class(), class::REQUEST);
        assert_eq!(v.attr(attr::NONCE), Some(&b"abcde"[..]));
        assert_eq!(v.attr_u32(attr::REQUESTED_TRANSPORT), Some(17 << 24));
    }

    #[test]
    fn error_code_and_classify() {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, method::ALLOCATE | class::ERROR, TID);
        w.attr(attr::ERROR_CODE, &[0, 0, 4, 38, b'S', b't']);
        match classify(&buf) {
            Incoming::Stun(v) => {
                assert_eq!(v.class(), class::ERROR);
                assert_eq!(v.error_code(), Some((438, "St")));
            }
            other => panic!("{other:?}"),
        }
        let cd = [0x40, 0x00, 0x00, 0x03, 9, 8, 7, 0];
        match classify(&cd) {
            Incoming::ChannelData { channel, data } => {
                assert_eq!(channel, 0x4000);
                assert_eq!(data, &[9, 8, 7]);
            }
            other => panic!("{other:?}"),
        }
        // Length field larger than the datagram: dropped.
        assert!(matches!(classify(&[0x40, 0, 0, 9, 1]), Incoming::Invalid));
        assert!(matches!(classify(&[0xFF; 24]), Incoming::Invalid));
        assert!(matches!(classify(&buf[..10]), Incoming::Invalid));
    }

    #[test]
    fn attribute_iteration_stops_on_truncation() {
        let mut buf = Vec::new();
        MessageWriter::new(&mut buf, method::DATA | class::INDICATION, TID).attr(attr::DATA, b"xyz");
        // Claim a longer attribute than present.
        buf[22..24].copy_from_slice(&100u16.to_be_bytes());
        let v = StunView::parse(&buf).unwrap();
        assert_eq!(v.attrs().count(), 0);
    }
}
