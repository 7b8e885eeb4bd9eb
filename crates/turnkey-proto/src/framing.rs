//! # Stream framing for TURN over TCP and TLS (RFC 8656 §12)
//!
//! Over a stream, STUN messages and ChannelData messages follow each other with no outer
//! framing; each is delimited by its own header:
//!
//! ```text
//! first two bits 00: STUN     | type (2) | length (2) | magic cookie (4) | txid (12) | body  |
//!                             total = 20 + length; length is a multiple of 4
//! first two bits 01: Channel  | channel (2) | length (2) | data | padding to 4 bytes |
//!                             total = 4 + length rounded up to 4 (padding is mandatory over
//!                             streams, RFC 8656 §12.5); channel is 0x4000..=0x7FFF
//! first two bits 1x: neither  -> error
//! ```
//!
//! [`StreamDecoder`] is sans-IO: the driver [`push`](StreamDecoder::push)es whatever the
//! socket returned and then calls [`next_frame`](StreamDecoder::next_frame) until it returns
//! `Ok(None)`. Frames may arrive split at any byte, or many per read. The decoder owns one
//! buffer, grown on demand up to a fixed limit and compacted in place, so decoding allocates
//! nothing per frame and never more than `max_frame + 20 + max_read` bytes per connection,
//! whatever a header announces: a header promising 65535 bytes followed by silence just waits
//! (the driver's idle timeout closes the connection).
//!
//! ## What is rejected, and how early
//!
//! Any error is final: the stream is out of sync, and the connection must be closed. Every
//! check runs on the bytes that have arrived, so garbage is rejected as soon as it is
//! recognisable instead of after a bogus length's worth of bytes:
//!
//! - first byte `0x80..=0xFF`: [`FramingError::NotStunOrChannelData`] at byte 1;
//! - `0x16 0x03` (a TLS record, e.g. a ClientHello sent to the plain TCP port):
//!   [`FramingError::TlsRecord`] at byte 2 (0x16 has the STUN bits 00; without this check it
//!   would still fail the magic cookie by byte 8);
//! - STUN length not a multiple of 4 or above `max_frame`: at byte 4;
//! - STUN magic cookie: compared byte by byte, so a mismatch fails by byte 8 at the latest;
//! - an HTTP request line (`GET `, `POST`, `HEAD`, `PUT `, `OPTI`, `DELE`, `CONN`, `PATC`,
//!   `TRAC`, or the HTTP/2 preface `PRI `): [`FramingError::HttpRequest`] at byte 4. These
//!   start with ASCII letters 0x43..=0x54, whose top bits are 01, so they would otherwise parse
//!   as ChannelData headers (`GET ` = channel 0x4745, a valid RFC 8656 channel, length 0x5420)
//!   and stall waiting for 21 KB. The price is that a genuine ChannelData message whose four
//!   header bytes spell one of these words is rejected; every such header announces at least
//!   16707 bytes (`HEAD`), far beyond any datagram a TURN client relays in practice;
//! - ChannelData length above `max_frame`: at byte 4.
//!
//! The channel number is only checked for the 01 prefix (0x4000..=0x7FFF); whether it is bound,
//! and within 0x4000..=0x4FFF, is the engine's business.
//!
//! [`encode_channel_data_stream`] writes a padded ChannelData message for the other direction.

/// Length of a STUN message header.
pub const STUN_HEADER_LEN: usize = 20;
/// Length of a ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// The STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The default bound on one [`StreamDecoder::push`] (the driver's read buffer size).
pub const DEFAULT_MAX_READ: usize = 64 * 1024;

/// One message cut from the stream. The slices borrow the decoder's buffer until the next
/// call on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole STUN message, header included (20 + length bytes), not yet validated beyond
    /// the header checks described in the [module docs](self).
    Stun(&'a [u8]),
    /// A ChannelData message.
    ChannelData {
        /// The channel number, 0x4000..=0x7FFF.
        channel: u16,
        /// The application data, without header or padding.
        data: &'a [u8],
        /// Header and data without the padding: the message as it would arrive over UDP.
        message: &'a [u8],
    },
}

impl<'a> Frame<'a> {
    /// The message bytes as they would arrive in a UDP datagram (no stream padding).
    #[must_use]
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Frame::Stun(bytes) => bytes,
            Frame::ChannelData { message, .. } => message,
        }
    }
}

/// Why a stream was rejected. Every error is final for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The first byte has its top bit set: neither STUN (00) nor ChannelData (01).
    #[error("not STUN or ChannelData (first byte {first_byte:#04x})")]
    NotStunOrChannelData {
        /// The offending byte.
        first_byte: u8,
    },
    /// The stream starts like an HTTP request.
    #[error("an HTTP request on a TURN stream")]
    HttpRequest,
    /// The stream starts like a TLS record (TLS sent to a plain TCP port).
    #[error("a TLS record on a plain TURN stream")]
    TlsRecord,
    /// A STUN header without the magic cookie.
    #[error("STUN header without the magic cookie")]
    BadMagicCookie,
    /// A STUN length field that is not a multiple of 4.
    #[error("STUN length {length} is not a multiple of 4")]
    LengthNotMultipleOf4 {
        /// The length field.
        length: u16,
    },
    /// A length above the limit (decoder: `max_frame`; encoder: 65535).
    #[error("frame length {length} exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced or requested length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A push that would overflow the decoder's buffer (frames were not drained, or a push
    /// larger than the decoder's `max_read`).
    #[error("stream buffer full: {buffered} buffered + {pushed} pushed exceeds {limit} bytes")]
    BufferFull {
        /// Bytes already buffered.
        buffered: usize,
        /// Bytes in the rejected push.
        pushed: usize,
        /// The buffer limit.
        limit: usize,
    },
    /// Encoder: a channel number outside 0x4000..=0x7FFF.
    #[error("channel number {0:#06x} is outside 0x4000..=0x7FFF")]
    InvalidChannel(u16),
}

/// A sans-IO decoder for a TURN stream; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    /// Buffered bytes; the undecoded ones are `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
    limit: usize,
    failed: Option<FramingError>,
}

impl StreamDecoder {
    /// A decoder accepting length fields up to `max_frame` bytes (capped at 65535, the most a
    /// 16-bit length can say), with pushes of up to [`DEFAULT_MAX_READ`] bytes.
    #[must_use]
    pub fn new(max_frame: usize) -> Self {
        Self::with_max_read(max_frame, DEFAULT_MAX_READ)
    }

    /// Like [`new`](Self::new), with pushes of up to `max_read` bytes. The buffer never holds
    /// more than `max_frame + 20 + max_read` bytes.
    #[must_use]
    pub fn with_max_read(max_frame: usize, max_read: usize) -> Self {
        let max_frame = max_frame.min(usize::from(u16::MAX));
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame,
            limit: (max_frame + STUN_HEADER_LEN).saturating_add(max_read),
            failed: None,
        }
    }

    /// Appends bytes read from the stream. Fails (finally) if the buffer would exceed its
    /// limit: drain [`next_frame`](Self::next_frame) until `Ok(None)` after every push.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FramingError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        self.compact();
        let buffered = self.buf.len();
        let needed = buffered.saturating_add(bytes.len());
        if needed > self.limit {
            return Err(self.fail(FramingError::BufferFull { buffered, pushed: bytes.len(), limit: self.limit }));
        }
        if needed > self.buf.capacity() {
            const INITIAL: usize = 2048;
            let target = needed.max(self.buf.capacity().saturating_mul(2)).max(INITIAL).min(self.limit);
            self.buf.reserve_exact(target - buffered);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the (final) error.
    /// The frame, including ChannelData padding, is consumed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FramingError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        let avail = self.buf.get(self.start..).unwrap_or_default();
        let header = match parse_header(avail, self.max_frame) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(err) => return Err(self.fail(err)),
        };
        let begin = self.start;
        self.start += header.total;
        let message = self.buf.get(begin..begin + header.message_len).unwrap_or_default();
        Ok(Some(match header.kind {
            Kind::Stun => Frame::Stun(message),
            Kind::ChannelData(channel) => Frame::ChannelData {
                channel,
                data: message.get(CHANNEL_DATA_HEADER_LEN..).unwrap_or_default(),
                message,
            },
        }))
    }

    /// Bytes received but not yet returned as frames.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The most bytes the buffer will ever hold.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The error that ended the stream, if any.
    #[must_use]
    pub fn error(&self) -> Option<FramingError> {
        self.failed
    }

    fn fail(&mut self, err: FramingError) -> FramingError {
        self.failed = Some(err);
        self.buf = Vec::new();
        self.start = 0;
        err
    }

    /// Moves the undecoded bytes to the front of the buffer.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start < self.buf.len() {
            self.buf.copy_within(self.start.., 0);
        }
        self.buf.truncate(self.buf.len() - self.start);
        self.start = 0;
    }
}

/// Appends a ChannelData message for a stream (header, `payload`, zero padding to 4 bytes).
///
/// Fails without writing if `channel` is outside 0x4000..=0x7FFF or `payload` is longer than
/// 65535 bytes (a 16-bit length cannot say more, and a wrong length would desync the stream).
pub fn encode_channel_data_stream(channel: u16, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    if channel >> 14 != 0b01 {
        return Err(FramingError::InvalidChannel(channel));
    }
    let Ok(len) = u16::try_from(payload.len()) else {
        return Err(FramingError::TooLarge { length: payload.len(), max: usize::from(u16::MAX) });
    };
    let padding = padding(payload.len());
    out.reserve(CHANNEL_DATA_HEADER_LEN + payload.len() + padding);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0; 3][..padding]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Internals

/// HTTP request prefixes that would otherwise parse as ChannelData headers.
const HTTP_METHODS: [&[u8; 4]; 10] =
    [b"GET ", b"POST", b"HEAD", b"PUT ", b"OPTI", b"DELE", b"CONN", b"PATC", b"TRAC", b"PRI "];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Stun,
    ChannelData(u16),
}

#[derive(Debug, Clone, Copy)]
struct Header {
    kind: Kind,
    /// Header + body, without padding.
    message_len: usize,
    /// Bytes consumed from the stream, padding included.
    total: usize,
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Classifies and validates the frame at the start of `avail`; `Ok(None)` if more bytes are
/// needed (either to validate the header or to complete the frame).
fn parse_header(avail: &[u8], max_frame: usize) -> Result<Option<Header>, FramingError> {
    let Some(&first) = avail.first() else {
        return Ok(None);
    };
    let length = match avail {
        [_, _, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    };
    match first >> 6 {
        0b00 => {
            if avail.get(1) == Some(&0x03) && first == 0x16 {
                return Err(FramingError::TlsRecord);
            }
            if let Some(length) = length {
                if length % 4 != 0 {
                    return Err(FramingError::LengthNotMultipleOf4 { length });
                }
                check_max(length, max_frame)?;
            }
            let cookie = MAGIC_COOKIE.to_be_bytes();
            let got = avail.get(4..).unwrap_or_default();
            if got.iter().zip(cookie.iter()).any(|(a, b)| a != b) {
                return Err(FramingError::BadMagicCookie);
            }
            let Some(length) = length else {
                return Ok(None);
            };
            let message_len = STUN_HEADER_LEN + usize::from(length);
            Ok((avail.len() >= message_len).then_some(Header { kind: Kind::Stun, message_len, total: message_len }))
        }
        0b01 => {
            let (Some(length), Some(head)) = (length, avail.first_chunk::<4>()) else {
                return Ok(None);
            };
            if HTTP_METHODS.contains(&head) {
                return Err(FramingError::HttpRequest);
            }
            check_max(length, max_frame)?;
            let channel = u16::from_be_bytes([head[0], head[1]]);
            let message_len = CHANNEL_DATA_HEADER_LEN + usize::from(length);
            let total = message_len + padding(usize::from(length));
            Ok((avail.len() >= total).then_some(Header { kind: Kind::ChannelData(channel), message_len, total }))
        }
        _ => Err(FramingError::NotStunOrChannelData { first_byte: first }),
    }
}

fn check_max(length: u16, max_frame: usize) -> Result<(), FramingError> {
    let length = usize::from(length);
    if length > max_frame {
        return Err(FramingError::TooLarge { length, max: max_frame });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Stun(Vec<u8>),
        Chan(u16, Vec<u8>),
    }

    impl Owned {
        fn encode(&self, out: &mut Vec<u8>) {
            match self {
                Owned::Stun(m) => out.extend_from_slice(m),
                Owned::Chan(c, d) => encode_channel_data_stream(*c, d, out).unwrap(),
            }
        }
    }

    fn own(f: Frame<'_>) -> Owned {
        match f {
            Frame::Stun(m) => Owned::Stun(m.to_vec()),
            Frame::ChannelData { channel, data, message } => {
                assert_eq!(&message[4..], data);
                assert_eq!(message[..2], channel.to_be_bytes());
                Owned::Chan(channel, data.to_vec())
            }
        }
    }

    fn stun(msg_type: u16, body: &[u8]) -> Vec<u8> {
        let mut m = msg_type.to_be_bytes().to_vec();
        m.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(body);
        m
    }

    /// Drains every frame; returns them and the error, if any.
    fn drain(d: &mut StreamDecoder, out: &mut Vec<Owned>) -> Result<(), FramingError> {
        while let Some(f) = d.next_frame()? {
            out.push(own(f));
        }
        Ok(())
    }

    /// Pushes `bytes` in pieces cut at `cuts`, draining after each push.
    fn decode_split(bytes: &[u8], cuts: &[usize], max_frame: usize) -> Vec<Owned> {
        let mut d = StreamDecoder::new(max_frame);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            let cut = cut.clamp(at, bytes.len());
            d.push(&bytes[at..cut]).unwrap();
            drain(&mut d, &mut out).unwrap();
            at = cut;
        }
        assert_eq!(d.buffered(), 0);
        out
    }

    fn sample_frames() -> Vec<Owned> {
        vec![
            Owned::Stun(stun(0x0001, &[])),
            Owned::Chan(0x4000, b"hello".to_vec()),
            Owned::Chan(0x7fff, vec![]),
            Owned::Stun(stun(0x0003, &[1, 2, 3, 4, 5, 6, 7, 8])),
            Owned::Chan(0x4001, vec![9; 4]),
            Owned::Chan(0x4002, vec![1, 2, 3]),
            Owned::Chan(0x4003, vec![0xff; 2]),
            Owned::Chan(0x4004, vec![0xee; 1]),
        ]
    }

    fn encode_all(frames: &[Owned]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode(&mut bytes);
        }
        bytes
    }

    #[test]
    fn many_frames_in_one_push() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        assert_eq!(decode_split(&bytes, &[], 1500), frames);
    }

    #[test]
    fn split_at_every_boundary_and_byte_by_byte() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        for cut in 0..=bytes.len() {
            assert_eq!(decode_split(&bytes, &[cut], 1500), frames, "cut at {cut}");
        }
        let every: Vec<usize> = (0..bytes.len()).collect();
        assert_eq!(decode_split(&bytes, &every, 1500), frames);
    }

    #[test]
    fn channel_data_padding_is_consumed() {
        let mut bytes = Vec::new();
        encode_channel_data_stream(0x4000, b"abcde", &mut bytes).unwrap();
        assert_eq!(bytes, b"\x40\x00\x00\x05abcde\0\0\0");
        let mut d = StreamDecoder::new(1500);
        d.push(&bytes[..9]).unwrap();
        // Data complete but padding missing: wait for it.
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&bytes[9..]).unwrap();
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f, Frame::ChannelData { channel: 0x4000, data: b"abcde", message: b"\x40\x00\x00\x05abcde" });
        assert_eq!(f.as_bytes(), b"\x40\x00\x00\x05abcde");
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn real_stun_message_from_the_stun_crate() {
        use stun::message::{Message, Setter, BINDING_REQUEST};
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(stun::agent::TransactionId::new()),
            Box::new(stun::fingerprint::FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        let mut d = StreamDecoder::new(1500);
        d.push(&m.raw).unwrap();
        d.push(&m.raw).unwrap();
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Stun(&m.raw)));
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Stun(&m.raw)));
        assert_eq!(d.next_frame().unwrap(), None);
    }

    /// Feeds `bytes` one at a time; returns the 1-based byte count at which an error appeared.
    fn error_at(bytes: &[u8], max_frame: usize) -> Option<(usize, FramingError)> {
        let mut d = StreamDecoder::new(max_frame);
        for (i, b) in bytes.iter().enumerate() {
            d.push(std::slice::from_ref(b)).unwrap();
            match d.next_frame() {
                Err(e) => return Some((i + 1, e)),
                Ok(f) => assert_eq!(f, None),
            }
        }
        None
    }

    #[test]
    fn garbage_is_rejected_promptly() {
        let tls_client_hello =
            [0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(error_at(&tls_client_hello, 65535), Some((2, FramingError::TlsRecord)));
        // A 0x16 that is not followed by 0x03 fails on the cookie, by byte 8.
        let fake = [0x16, 0x00, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x43, 0, 0, 0, 0];
        assert_eq!(error_at(&fake, 65535), Some((8, FramingError::BadMagicCookie)));
        let bad_cookie = [0x00, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0];
        assert_eq!(error_at(&bad_cookie, 65535), Some((5, FramingError::BadMagicCookie)));
        for method in HTTP_METHODS {
            let mut req = method.to_vec();
            req.extend_from_slice(b"/ HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                error_at(&req, 65535),
                Some((4, FramingError::HttpRequest)),
                "{}",
                String::from_utf8_lossy(method)
            );
        }
        for first in 0x80..=0xff {
            assert_eq!(
                error_at(&[first, 0, 0, 0], 65535),
                Some((1, FramingError::NotStunOrChannelData { first_byte: first }))
            );
        }
        assert_eq!(
            error_at(&[0x00, 0x01, 0x00, 0x06], 65535),
            Some((4, FramingError::LengthNotMultipleOf4 { length: 6 }))
        );
        assert_eq!(
            error_at(&[0x00, 0x01, 0x05, 0xe0], 1500),
            Some((4, FramingError::TooLarge { length: 1504, max: 1500 }))
        );
        assert_eq!(
            error_at(&[0x40, 0x00, 0xff, 0xff], 1500),
            Some((4, FramingError::TooLarge { length: 65535, max: 1500 }))
        );
    }

    #[test]
    fn errors_are_final() {
        let mut d = StreamDecoder::new(1500);
        d.push(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(d.next_frame(), Err(FramingError::HttpRequest));
        assert_eq!(d.next_frame(), Err(FramingError::HttpRequest));
        assert_eq!(d.push(&stun(0x0001, &[])), Err(FramingError::HttpRequest));
        assert_eq!(d.error(), Some(FramingError::HttpRequest));
    }

    #[test]
    fn announced_length_followed_by_silence_just_waits() {
        let mut d = StreamDecoder::new(65535);
        d.push(&[0x40, 0x00, 0xff, 0xff]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.buf.capacity() <= 4096, "{}", d.buf.capacity());
        // Drip-feeding the body never grows the buffer beyond the limit.
        let chunk = [0u8; 1000];
        for _ in 0..65 {
            d.push(&chunk).unwrap();
            assert_eq!(d.next_frame().unwrap(), None);
            assert!(d.buf.capacity() <= d.limit());
        }
        d.push(&chunk[..539]).unwrap();
        let f = d.next_frame().unwrap().unwrap();
        assert!(matches!(f, Frame::ChannelData { channel: 0x4000, data, .. } if data.len() == 65535));
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn buffer_limit() {
        let mut d = StreamDecoder::with_max_read(100, 50);
        assert_eq!(d.limit(), 170);
        // An incomplete maximal frame plus one read fits.
        d.push(&[0x40, 0x00, 0x00, 100]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&[0; 96]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&[0; 50]).unwrap();
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.buffered(), 46);
        // Pushing beyond the limit without draining fails.
        let mut d = StreamDecoder::with_max_read(100, 50);
        let err = d.push(&[0x40; 171]).unwrap_err();
        assert_eq!(err, FramingError::BufferFull { buffered: 0, pushed: 171, limit: 170 });
    }

    #[test]
    fn compaction_reuses_the_buffer() {
        let frames = sample_frames();
        let bytes = encode_all(&frames);
        let mut d = StreamDecoder::new(1500);
        let mut out = Vec::new();
        d.push(&bytes).unwrap();
        drain(&mut d, &mut out).unwrap();
        let cap = d.buf.capacity();
        for _ in 0..1000 {
            // Push in two halves so that a partial frame is carried over each time.
            let (a, b) = bytes.split_at(bytes.len() / 2 + 1);
            d.push(a).unwrap();
            drain(&mut d, &mut out).unwrap();
            d.push(b).unwrap();
            drain(&mut d, &mut out).unwrap();
        }
        assert_eq!(d.buf.capacity(), cap);
        assert_eq!(out.len(), frames.len() * 1001);
    }

    #[test]
    fn encoder_rejects_what_it_cannot_frame() {
        let mut out = Vec::new();
        assert_eq!(encode_channel_data_stream(0x3fff, b"x", &mut out), Err(FramingError::InvalidChannel(0x3fff)));
        assert_eq!(encode_channel_data_stream(0x8000, b"x", &mut out), Err(FramingError::InvalidChannel(0x8000)));
        assert_eq!(
            encode_channel_data_stream(0x4000, &[0; 65536], &mut out),
            Err(FramingError::TooLarge { length: 65536, max: 65535 })
        );
        assert!(out.is_empty());
        encode_channel_data_stream(0x4000, &[0; 65535], &mut out).unwrap();
        assert_eq!(out.len(), 4 + 65536);
    }

    fn arb_frame() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (0u16..0x4000, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(t, mut body)| {
                body.truncate(body.len() / 4 * 4);
                // 0x16 0x03 is rejected as TLS.
                let t = if t == 0x1603 { 0x0001 } else { t };
                Owned::Stun(stun(t, &body))
            }),
            (0x4000u16..=0x7fff, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(c, d)| Owned::Chan(c, d)),
        ]
    }

    proptest! {
        #[test]
        fn random_frames_random_splits(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let bytes = encode_all(&frames);
            let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            prop_assert_eq!(decode_split(&bytes, &cuts, 1500), frames);
        }

        #[test]
        fn random_bytes_never_panic(
            prefix in proptest::collection::vec(arb_frame(), 0..3),
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            max_frame in 0usize..70000,
        ) {
            let mut d = StreamDecoder::with_max_read(max_frame, 200);
            let mut out = Vec::new();
            let mut stream = vec![encode_all(&prefix)];
            stream.extend(chunks);
            for chunk in stream.iter().flat_map(|c| c.chunks(200)) {
                // After a full drain at most one partial frame is buffered, so a push of up
                // to max_read bytes always fits.
                prop_assert!(d.push(chunk).is_ok());
                prop_assert!(d.buf.capacity() <= d.limit());
                if drain(&mut d, &mut out).is_err() {
                    prop_assert!(d.push(b"x").is_err());
                    break;
                }
            }
        }
    }
}
