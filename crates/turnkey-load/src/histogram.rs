//! Latency histograms of a run: how one is made (microseconds, 1 µs to 1 h, 3 significant
//! digits) and how it travels in a JSON report (HdrHistogram V2, base64), so reports of several
//! processes merge exactly. A leaf: the report writes them, the merge reads and adds them.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

use crate::LoadError;

/// A new histogram of microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| LoadError::Protocol(format!("histogram: {e}")))
}

/// `h` as HdrHistogram V2 (uncompressed) bytes in standard base64; empty for no samples.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return String::new();
    }
    let mut buf = Vec::new();
    match V2Serializer::new().serialize(h, &mut buf) {
        Ok(_) => base64::engine::general_purpose::STANDARD.encode(buf),
        Err(_) => String::new(),
    }
}

/// The histogram [`encode_histogram`] wrote (an empty one for `""`).
pub fn decode_histogram(s: &str) -> Result<Histogram<u64>, LoadError> {
    if s.is_empty() {
        return new_histogram();
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| LoadError::Report(format!("histogram is not base64: {e}")))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| LoadError::Report(format!("histogram does not decode: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_round_trip() {
        let mut h = new_histogram().unwrap();
        for v in [1, 7, 900, 12_345, 3_000_000] {
            h.record(v).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode_histogram("").unwrap().is_empty());
        assert!(decode_histogram("not base64!").is_err());
    }
}
