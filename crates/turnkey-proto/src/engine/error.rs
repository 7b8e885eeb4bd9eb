//! [`StunError`]: every error the engine answers a request with. Each code and its reason phrase
//! are written once, in the table below; handlers return the variant, the answer is encoded where
//! it is sent (`message::add_error`), and metric labels come from the variant, never from bytes.

macro_rules! stun_errors {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $reason:literal;)*) => {
        /// An error response the engine sends (RFC 8489 §14.8, RFC 8656 §19).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum StunError {
            $($(#[$doc])* $name,)*
        }

        impl StunError {
            /// Every error, in code order (the metrics export each label from the start).
            pub const ALL: &[StunError] = &[$(Self::$name),*];

            /// The ERROR-CODE number.
            pub fn code(self) -> u16 {
                match self { $(Self::$name => $code,)* }
            }

            /// The reason phrase sent with the code.
            pub fn reason(self) -> &'static str {
                match self { $(Self::$name => $reason,)* }
            }

            /// The metric label: the code's digits (`"401"`).
            pub fn label(self) -> &'static str {
                match self { $(Self::$name => stringify!($code),)* }
            }
        }
    };
}

stun_errors! {
    /// Fleet mode: this relay is draining or full; ALTERNATE-SERVER names another (RFC 8489 §10).
    TryAlternate = 300, "Try Alternate";
    /// Malformed request, missing or bad attribute, channel rebinding conflict.
    BadRequest = 400, "Bad Request";
    /// Missing, wrong, expired or revoked credentials (answered with a challenge).
    Unauthorized = 401, "Unauthorized";
    /// The peer policy refuses the peer address.
    Forbidden = 403, "Forbidden";
    /// A comprehension-required attribute the server does not understand.
    UnknownAttribute = 420, "Unknown Attribute";
    /// No allocation for the 5-tuple, or an Allocate for one that exists.
    AllocationMismatch = 437, "Allocation Mismatch";
    /// The NONCE expired or is not ours (answered with a fresh one).
    StaleNonce = 438, "Stale Nonce";
    /// The requested relay address family is not offered.
    AddressFamilyNotSupported = 440, "Address Family not Supported";
    /// Another username than the allocation's.
    WrongCredentials = 441, "Wrong Credentials";
    /// REQUESTED-TRANSPORT other than UDP.
    UnsupportedTransport = 442, "Unsupported Transport Protocol";
    /// The peer's address family differs from the relayed address's.
    PeerAddressFamilyMismatch = 443, "Peer Address Family Mismatch";
    /// The user's allocation quota (or its key's monthly cap) is reached.
    AllocationQuotaReached = 486, "Allocation Quota Reached";
    /// No relay port, draining, or the relay-wide allocation, permission or channel limit.
    InsufficientCapacity = 508, "Insufficient Capacity";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_error_classes_and_labels_are_their_digits() {
        let mut seen = std::collections::HashSet::new();
        for e in StunError::ALL {
            assert!(seen.insert(e.code()), "{e:?} repeats a code");
            assert!(e.code() == 300 || (400..600).contains(&e.code()), "{e:?}");
            assert_eq!(e.label(), e.code().to_string());
            assert!(!e.reason().is_empty());
        }
    }
}
