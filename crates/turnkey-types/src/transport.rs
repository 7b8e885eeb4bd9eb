//! [`Transport`]: how a client reaches the relay.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::TypeError;

/// The transport a client reaches the relay over. Part of the 5-tuple: the same address over
/// UDP and over TCP are two different clients. Serialized lower-case (`"udp"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain UDP.
    Udp,
    /// TCP with RFC 8656 §12 stream framing.
    Tcp,
    /// TLS over TCP (`turns:`), same framing.
    Tls,
}

impl Transport {
    /// Every transport, in label order.
    pub const ALL: [Transport; 3] = [Self::Udp, Self::Tcp, Self::Tls];

    /// A stable lower-case name, used in metric labels, logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// Whether messages travel on a byte stream (ChannelData then padded to 4 bytes).
    pub fn is_stream(self) -> bool {
        !matches!(self, Self::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Transport {
    type Err = TypeError;

    fn from_str(s: &str) -> Result<Self, TypeError> {
        Self::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| TypeError::Transport(s.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for t in Transport::ALL {
            assert_eq!(t.to_string().parse::<Transport>(), Ok(t));
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<Transport>(&json).unwrap(), t);
        }
        assert_eq!("TCP".parse::<Transport>(), Ok(Transport::Tcp));
        assert!("quic".parse::<Transport>().is_err());
        assert!(serde_json::from_str::<Transport>("\"Udp\"").is_err(), "JSON is lower-case only");
        assert!(!Transport::Udp.is_stream() && Transport::Tcp.is_stream() && Transport::Tls.is_stream());
    }
}
