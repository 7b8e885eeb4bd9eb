use crate::error::AuthError;
use crate::mac::ct_eq;
use crate::rest::{self, Credential};
use crate::secret::Secret;
use crate::UnixTime;

/// The configured secrets, newest first: credentials are signed with the newest and accepted if
/// any configured secret produced them. Removing a secret from the ring stops its credentials.
#[derive(Debug, Clone)]
pub struct SecretRing {
    secrets: Vec<Secret>,
}

impl SecretRing {
    /// Builds a ring from secrets ordered newest first. Empty secrets are refused.
    pub fn new(secrets: Vec<Secret>) -> Result<Self, AuthError> {
        if secrets.is_empty() || secrets.iter().any(|s| s.as_bytes().is_empty()) {
            return Err(AuthError::NoSecret);
        }
        Ok(Self { secrets })
    }

    /// The secret new credentials are signed with.
    pub fn newest(&self) -> &Secret {
        &self.secrets[0]
    }

    /// Every accepted secret, newest first.
    pub fn secrets(&self) -> &[Secret] {
        &self.secrets
    }

    /// Mints a credential for `userid` valid for `ttl_secs` from `now`, signed with the newest secret.
    pub fn mint(&self, userid: &str, now: UnixTime, ttl_secs: u64) -> Result<Credential, AuthError> {
        if ttl_secs == 0 {
            return Err(AuthError::InvalidTtl(ttl_secs));
        }
        let expiry = now.0.checked_add(ttl_secs).ok_or(AuthError::InvalidTtl(ttl_secs))?;
        let username = format!("{expiry}:{userid}");
        let password = rest::password(self.newest(), &username);
        Ok(Credential { username, password })
    }

    /// The password each configured secret gives `username`, newest first. The relay derives the
    /// long-term keys from these and accepts a message whose integrity matches any of them.
    pub fn passwords<'a>(&'a self, username: &'a str) -> impl Iterator<Item = String> + 'a {
        self.secrets.iter().map(move |s| rest::password(s, username))
    }

    /// Checks a username/password pair as a TURN server in `use-auth-secret` mode would: the
    /// username parses, has not expired at `now`, and some configured secret produced `password`.
    pub fn verify_password<'a>(
        &self,
        username: &'a str,
        password: &str,
        now: UnixTime,
    ) -> Result<rest::RestUsername<'a>, AuthError> {
        let parsed = rest::RestUsername::parse(username)?;
        parsed.check_expiry(now)?;
        let ok = self.passwords(username).any(|p| ct_eq(p.as_bytes(), password.as_bytes()));
        if ok {
            Ok(parsed)
        } else {
            Err(AuthError::BadCredential)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(names: &[&str]) -> SecretRing {
        SecretRing::new(names.iter().map(|n| Secret::new(n.as_bytes())).collect()).unwrap()
    }

    #[test]
    fn empty_rings_and_secrets_are_refused() {
        assert_eq!(SecretRing::new(vec![]).unwrap_err(), AuthError::NoSecret);
        assert_eq!(SecretRing::new(vec![Secret::new("")]).unwrap_err(), AuthError::NoSecret);
    }

    #[test]
    fn debug_never_shows_secret() {
        let r = ring(&["hunter2-not-a-real-secret"]);
        assert!(!format!("{r:?}").contains("hunter2"));
    }

    #[test]
    fn zero_and_overflowing_ttl_refused() {
        let r = ring(&["k"]);
        assert_eq!(r.mint("u", UnixTime(10), 0).unwrap_err(), AuthError::InvalidTtl(0));
        assert!(r.mint("u", UnixTime(u64::MAX), 5).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(userid in "[a-zA-Z0-9:_.@-]{0,40}", now in 0u64..4_000_000_000, ttl in 1u64..200_000) {
            let r = ring(&["test-secret-a"]);
            let c = r.mint(&userid, UnixTime(now), ttl).unwrap();
            let parsed = r.verify_password(&c.username, &c.password, UnixTime(now)).unwrap();
            prop_assert_eq!(parsed.userid(), userid.as_str());
            prop_assert_eq!(parsed.expiry(), UnixTime(now + ttl));
        }

        #[test]
        fn expiry_is_strict(now in 0u64..4_000_000_000, ttl in 1u64..200_000, late in 1u64..1000) {
            let r = ring(&["test-secret-a"]);
            let c = r.mint("alice", UnixTime(now), ttl).unwrap();
            prop_assert!(r.verify_password(&c.username, &c.password, UnixTime(now + ttl - 1)).is_ok());
            prop_assert_eq!(
                r.verify_password(&c.username, &c.password, UnixTime(now + ttl + late)).unwrap_err(),
                AuthError::Expired
            );
        }

        #[test]
        fn tampering_is_detected(idx in 0usize..64, flip in 1u8..=255) {
            let r = ring(&["test-secret-a"]);
            let c = r.mint("bob:device:1", UnixTime(1000), 3600).unwrap();
            let mut user = c.username.clone().into_bytes();
            let i = idx % user.len();
            user[i] ^= flip;
            if let Ok(tampered) = String::from_utf8(user) {
                prop_assert!(r.verify_password(&tampered, &c.password, UnixTime(1000)).is_err());
            }
            let mut pass = c.password.clone().into_bytes();
            let j = idx % pass.len();
            pass[j] ^= flip;
            if let Ok(tampered) = String::from_utf8(pass) {
                prop_assert!(r.verify_password(&c.username, &tampered, UnixTime(1000)).is_err());
            }
        }

        #[test]
        fn rotation(userid in "[a-z]{1,10}") {
            let old = ring(&["old-secret"]);
            let rotated = ring(&["new-secret", "old-secret"]);
            let retired = ring(&["new-secret"]);
            let c_old = old.mint(&userid, UnixTime(0), 100).unwrap();
            let c_new = rotated.mint(&userid, UnixTime(0), 100).unwrap();
            // During rotation both are accepted, new credentials are signed with the newest.
            prop_assert!(rotated.verify_password(&c_old.username, &c_old.password, UnixTime(1)).is_ok());
            prop_assert!(retired.verify_password(&c_new.username, &c_new.password, UnixTime(1)).is_ok());
            // A removed secret stops working.
            prop_assert_eq!(
                retired.verify_password(&c_old.username, &c_old.password, UnixTime(1)).unwrap_err(),
                AuthError::BadCredential
            );
        }
    }
}
