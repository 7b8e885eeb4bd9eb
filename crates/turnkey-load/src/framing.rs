//! RFC 8656 §12 stream framing: over TCP and TLS, STUN messages and ChannelData follow each other
//! on the byte stream, and ChannelData is padded to a multiple of 4 bytes.

use crate::proto::{padding, HEADER_LEN};

/// Why a stream cannot be framed (the connection is unusable after this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first two bits are neither STUN (00) nor ChannelData (01).
    UnknownFrame(u8),
}

/// The length of the first complete frame in `buf`, padding included; `Ok(None)` when more bytes
/// are needed.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let total = match buf[0] & 0xC0 {
        0x00 => HEADER_LEN + len,
        0x40 => 4 + len + padding(len),
        _ => return Err(FrameError::UnknownFrame(buf[0])),
    };
    Ok((buf.len() >= total).then_some(total))
}

/// The number of bytes a ChannelData frame carrying `data_len` bytes takes on a stream.
pub const fn stream_channel_frame_len(data_len: usize) -> usize {
    4 + data_len + padding(data_len)
}

/// A growable read buffer holding the not-yet-consumed part of a stream.
#[derive(Debug)]
pub struct StreamBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl StreamBuf {
    /// A buffer able to hold any frame (a STUN message or ChannelData is at most 65,555 bytes).
    pub fn new() -> Self {
        Self { buf: vec![0u8; 128 * 1024].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Takes the next complete frame's range in the buffer, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<(usize, usize)>, FrameError> {
        match stream_frame_len(&self.buf[self.start..self.end])? {
            Some(n) => {
                let s = self.start;
                self.start += n;
                Ok(Some((s, s + n)))
            }
            None => Ok(None),
        }
    }

    /// The bytes of a range returned by [`Self::next_frame`].
    pub fn slice(&self, range: (usize, usize)) -> &[u8] {
        &self.buf[range.0..range.1]
    }

    /// Space to read into, after moving unconsumed bytes to the front when needed.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < 70 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`Self::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }
}

impl Default for StreamBuf {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_is_padded_on_streams() {
        // 5 bytes of data: 4 header + 5 + 3 padding.
        let frame = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(stream_frame_len(&frame), Ok(Some(12)));
        assert_eq!(stream_frame_len(&frame[..11]), Ok(None));
        assert_eq!(stream_channel_frame_len(5), 12);
        assert_eq!(stream_channel_frame_len(100), 104);
        assert_eq!(stream_channel_frame_len(0), 4);
    }

    #[test]
    fn stun_frames_use_header_length() {
        let mut m = vec![0x01, 0x13, 0x00, 0x08];
        m.extend_from_slice(&[0u8; 24]);
        assert_eq!(stream_frame_len(&m), Ok(Some(28)));
        assert_eq!(stream_frame_len(&m[..27]), Ok(None));
        assert_eq!(stream_frame_len(&m[..3]), Ok(None));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(stream_frame_len(&[0x80, 0, 0, 0]), Err(FrameError::UnknownFrame(0x80)));
    }

    #[test]
    fn stream_buf_splits_coalesced_and_partial_frames() {
        let a = [0x40, 0x00, 0x00, 0x02, 7, 7, 0, 0];
        let mut b = vec![0x01, 0x17, 0x00, 0x04];
        b.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        b.extend_from_slice(&[0u8; 12]);
        b.extend_from_slice(&[0, 0x13, 0, 0]);
        let mut stream = a.to_vec();
        stream.extend_from_slice(&b);
        let mut sb = StreamBuf::new();
        // Deliver the bytes in awkward pieces.
        let mut frames = Vec::new();
        for chunk in stream.chunks(3) {
            let spare = sb.spare();
            spare[..chunk.len()].copy_from_slice(chunk);
            sb.filled(chunk.len());
            while let Some(r) = sb.next_frame().unwrap() {
                frames.push(sb.slice(r).to_vec());
            }
        }
        assert_eq!(frames, vec![a.to_vec(), b]);
    }
}
