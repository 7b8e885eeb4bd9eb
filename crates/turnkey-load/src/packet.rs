//! The packets of a flow: the stamp every payload starts with (flow, phase, sequence number,
//! send time), the template that frames a payload once (ChannelData header or Send indication)
//! so each send only writes the stamp, and the classification of received frames.

use std::net::SocketAddr;

use crate::framing::stream_channel_frame_len;
use crate::proto::{attr, channel_header, class, method, Incoming, MessageWriter, HEADER_LEN};

/// The channel number every flow binds (one per allocation, so one suffices).
pub const CHANNEL: u16 = 0x4000;

/// How a flow addresses its peer through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// ChannelData on [`CHANNEL`], bound to the peer.
    Channel,
    /// Send indications to the peer.
    Send(SocketAddr),
}

/// The header the sender writes at the start of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The flow's index.
    pub flow: u32,
    /// The phase (ramp step), so late packets of an earlier phase are not counted.
    pub phase: u32,
    /// Sequence number within the phase.
    pub seq: u64,
    /// Send time, nanoseconds since the run's epoch.
    pub sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp into `payload[..24]`.
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..4].copy_from_slice(&self.flow.to_be_bytes());
        payload[4..8].copy_from_slice(&self.phase.to_be_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a stamp from a payload.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..24)?;
        let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        Some(Self { flow: u32_at(0), phase: u32_at(4), seq: u64_at(8), sent_ns: u64_at(16) })
    }
}

/// A packet whose framing (ChannelData header or Send indication) is written once; each send
/// only stamps the payload.
#[derive(Debug, Clone)]
pub struct PacketTemplate {
    buf: Vec<u8>,
    payload_at: usize,
    payload_len: usize,
}

impl PacketTemplate {
    /// A packet of `payload` bytes; ChannelData is padded to 4 bytes on streams.
    pub fn new(wire: Wire, payload: usize, stream: bool) -> Self {
        let filler = |buf: &mut Vec<u8>, n: usize| buf.extend((0..n).map(|i| (i % 251) as u8));
        match wire {
            Wire::Channel => {
                let len = if stream { stream_channel_frame_len(payload) } else { 4 + payload };
                let mut buf = vec![0u8; 4];
                channel_header(CHANNEL, payload, &mut buf);
                filler(&mut buf, payload);
                buf.resize(len, 0);
                Self { buf, payload_at: 4, payload_len: payload }
            }
            Wire::Send(peer) => {
                let mut buf = Vec::with_capacity(payload + 64);
                let mut data = Vec::with_capacity(payload);
                filler(&mut data, payload);
                MessageWriter::new(&mut buf, method::SEND | class::INDICATION, [7u8; 12])
                    .xor_addr(attr::XOR_PEER_ADDRESS, peer)
                    .attr(attr::DATA, &data);
                let payload_at = buf.len() - payload - crate::proto::padding(payload);
                Self { buf, payload_at, payload_len: payload }
            }
        }
    }

    /// Stamps the payload and returns the frame to send.
    pub fn stamp(&mut self, s: Stamp) -> &[u8] {
        s.write(&mut self.buf[self.payload_at..self.payload_at + self.payload_len]);
        &self.buf
    }
}

/// The application data in a received frame: ChannelData, or the DATA of a Data indication.
pub fn data_of(frame: &[u8]) -> Received<'_> {
    match crate::proto::classify(frame) {
        Incoming::ChannelData { data, .. } => Received::Data(data),
        Incoming::Stun(v) if v.class() == class::INDICATION && v.method() == method::DATA => {
            match (v.attr(attr::DATA), v.xor_addr(attr::XOR_PEER_ADDRESS)) {
                (Some(d), Some(peer)) => Received::Indication(d, peer),
                _ => Received::Other,
            }
        }
        Incoming::Stun(v) if v.class() == class::ERROR => {
            let code = v.error_code().map_or(0, |c| c.0);
            Received::Error(code, v.attr(attr::NONCE))
        }
        _ => Received::Other,
    }
}

/// A received frame, classified for the load loops.
#[derive(Debug)]
pub enum Received<'a> {
    /// ChannelData.
    Data(&'a [u8]),
    /// A Data indication from a peer.
    Indication(&'a [u8], SocketAddr),
    /// An error answer (to a keep-alive): code and NONCE.
    Error(u16, Option<&'a [u8]>),
    /// Anything else.
    Other,
}

/// Size of the STUN overhead of a Send indication to an IPv4 peer (for documentation and tests).
pub const SEND_OVERHEAD_V4: usize = HEADER_LEN + 12 + 4;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StunView;

    #[test]
    fn stamp_round_trips() {
        let s = Stamp { flow: 7, phase: 3, seq: u64::MAX - 1, sent_ns: 123_456_789_012 };
        let mut p = [0u8; 24];
        s.write(&mut p);
        assert_eq!(Stamp::read(&p), Some(s));
        assert_eq!(Stamp::read(&p[..23]), None);
    }

    #[test]
    fn channel_template_is_padded_only_on_streams() {
        let mut udp = PacketTemplate::new(Wire::Channel, 101, false);
        let mut tcp = PacketTemplate::new(Wire::Channel, 101, true);
        let s = Stamp { flow: 1, phase: 1, seq: 5, sent_ns: 9 };
        assert_eq!(udp.stamp(s).len(), 105);
        let f = tcp.stamp(s).to_vec();
        assert_eq!(f.len(), 108);
        assert_eq!(crate::framing::stream_frame_len(&f), Ok(Some(108)));
        match data_of(&f) {
            Received::Data(d) => {
                assert_eq!(d.len(), 101);
                assert_eq!(Stamp::read(d), Some(s));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn send_template_is_a_valid_send_indication() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut t = PacketTemplate::new(Wire::Send(peer), 100, false);
        let s = Stamp { flow: 2, phase: 0, seq: 1, sent_ns: 2 };
        let f = t.stamp(s).to_vec();
        assert_eq!(f.len(), SEND_OVERHEAD_V4 + 100);
        let v = StunView::parse(&f).unwrap();
        assert_eq!(v.method(), method::SEND);
        assert_eq!(v.class(), class::INDICATION);
        assert_eq!(v.xor_addr(attr::XOR_PEER_ADDRESS), Some(peer));
        assert_eq!(Stamp::read(v.attr(attr::DATA).unwrap()), Some(s));
        // Also valid to the stun crate.
        let mut m = stun::message::Message::new();
        m.unmarshal_binary(&f).unwrap();
    }
}
