//! RFC 8656 §12 stream framing: bytes pushed in fuzzed chunk sizes must cut into the same frames
//! as the whole stream pushed at once, every frame lies within the announced bounds, and
//! ChannelData re-encoded and decoded again comes back the same.
#![no_main]

use turnkey_relay::framing::{encode_channel_data_stream, Frame, StreamDecoder};

fn frames(chunks: &mut dyn Iterator<Item = &[u8]>, max_frame: usize) -> (Vec<(bool, Vec<u8>)>, bool) {
    let mut d = StreamDecoder::new(max_frame);
    let mut out = Vec::new();
    for chunk in chunks {
        if d.push(chunk).is_err() {
            return (out, true);
        }
        loop {
            match d.next_frame() {
                Ok(Some(Frame::Stun(b))) => {
                    assert!(b.len() >= 20 && b.len() <= 20 + max_frame);
                    out.push((true, b.to_vec()));
                }
                Ok(Some(Frame::ChannelData { channel, data, message })) => {
                    assert!(data.len() <= max_frame);
                    assert_eq!(&message[4..], data);
                    assert_eq!(message[..2], channel.to_be_bytes());
                    let mut v = channel.to_be_bytes().to_vec();
                    v.extend_from_slice(data);
                    out.push((false, v));
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(d.buffered() <= d.limit());
    }
    (out, false)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&sizes, stream)) = data.split_first() else { return };
    let max_frame = 512 + usize::from(sizes) * 256;
    let (whole, whole_err) = frames(&mut std::iter::once(stream), max_frame);
    let step = usize::from(sizes % 17) + 1;
    let (chunked, chunked_err) = frames(&mut stream.chunks(step), max_frame);
    if !whole_err && !chunked_err {
        assert_eq!(whole, chunked, "chunking changed the frames");
    }
    for (_, f) in whole.iter().filter(|(is_stun, _)| !is_stun) {
        let channel = u16::from_be_bytes([f[0], f[1]]);
        let mut enc = Vec::new();
        encode_channel_data_stream(channel, &f[2..], &mut enc).expect("a decoded frame re-encodes");
        let (again, err) = frames(&mut std::iter::once(&enc[..]), max_frame);
        assert!(!err);
        assert_eq!(again, vec![(false, f.clone())]);
    }
});
