//! The TURN REST credential scheme (draft-uberti-behave-turn-rest, as coturn and eturnal implement it).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use md5::{Digest, Md5};

use crate::error::AuthError;
use crate::mac::hmac_sha1;
use crate::secret::Secret;
use crate::UnixTime;

/// A minted username/password pair.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// `<expiry>:<userid>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// A parsed TURN REST username: `<expiry unix seconds>:<userid>`. The userid is everything after
/// the first colon and may itself contain colons. A bare `<expiry>` (no colon) is accepted with an
/// empty userid, as coturn does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    expiry: UnixTime,
    userid: &'a str,
}

/// The longest username accepted (RFC 8489 §14.3: fewer than 509 bytes).
pub const MAX_USERNAME_LEN: usize = 508;

impl<'a> RestUsername<'a> {
    /// Parses `username`; the expiry must be 1 to 20 ASCII digits that fit in a `u64`.
    pub fn parse(username: &'a str) -> Result<Self, AuthError> {
        if username.len() > MAX_USERNAME_LEN {
            return Err(AuthError::MalformedUsername);
        }
        let (expiry, userid) = match username.split_once(':') {
            Some((e, u)) => (e, u),
            None => (username, ""),
        };
        if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AuthError::MalformedUsername);
        }
        let expiry = expiry.parse::<u64>().map_err(|_| AuthError::MalformedUsername)?;
        Ok(Self { expiry: UnixTime(expiry), userid })
    }

    /// When the credential stops working.
    pub fn expiry(&self) -> UnixTime {
        self.expiry
    }

    /// The user part (what quotas and usage are counted against).
    pub fn userid(&self) -> &'a str {
        self.userid
    }

    /// `Err(Expired)` once `now` has reached the expiry.
    pub fn check_expiry(&self, now: UnixTime) -> Result<(), AuthError> {
        if now >= self.expiry {
            Err(AuthError::Expired)
        } else {
            Ok(())
        }
    }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn password(secret: &Secret, username: &str) -> String {
    STANDARD.encode(hmac_sha1(secret.as_bytes(), &[username.as_bytes()]))
}

/// The RFC 8489 long-term key: `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_userid_with_colons() {
        let u = RestUsername::parse("1700000000:app:user:42").unwrap();
        assert_eq!(u.expiry(), UnixTime(1_700_000_000));
        assert_eq!(u.userid(), "app:user:42");
    }

    #[test]
    fn bare_expiry_has_empty_userid() {
        let u = RestUsername::parse("1700000000").unwrap();
        assert_eq!(u.userid(), "");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", ":user", "abc:user", "-5:user", " 17:user", "99999999999999999999999:u", "1e9:u"] {
            assert_eq!(RestUsername::parse(bad).unwrap_err(), AuthError::MalformedUsername, "{bad}");
        }
        let long = format!("1:{}", "x".repeat(600));
        assert!(RestUsername::parse(&long).is_err());
    }

    #[test]
    fn known_vector_matches_coturn_scheme() {
        // Computed independently: printf '%s' 'user' | openssl dgst -sha1 -hmac 'key' -binary | base64
        // gives the HMAC-SHA1 of "user" under key "key".
        let p = password(&Secret::new("key"), "user");
        assert_eq!(p, "7hn70X4egRo203m9RpFPlFr/D+0=");
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // RFC 5769 §2.4's credentials (after SASLprep); the digest was computed independently with
        // Python's hashlib. The relay's tests check the RFC's MESSAGE-INTEGRITY with this key.
        let key = long_term_key("\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", "example.org", "TheMatrIX");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "e8ca7ad59d5eb0518e312911d2dab2a9");
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = RestUsername::parse(&s);
        }

        #[test]
        fn parse_round_trips(expiry in any::<u64>(), userid in "[ -~]{0,60}") {
            let name = format!("{expiry}:{userid}");
            let u = RestUsername::parse(&name).unwrap();
            prop_assert_eq!(u.expiry(), UnixTime(expiry));
            prop_assert_eq!(u.userid(), userid.as_str());
        }
    }
}
