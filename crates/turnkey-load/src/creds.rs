//! Where the load's TURN credentials come from: given on the command line, minted locally from a
//! TURN REST secret, or fetched once from an issuer in Cloudflare's API shape (with `--server`;
//! without it the issuer is asked per allocation or flow: [`crate::ice`]).

use std::time::{SystemTime, UNIX_EPOCH};

use turnkey_auth::{Secret, SecretRing, UnixTime};

use crate::args::LoadArgs;
use crate::client::Credentials;
pub use crate::ice::pick_turn_credentials;
use crate::issuer::IssuerClient;
use crate::LoadError;

/// The credential source chosen by the arguments.
#[derive(Debug)]
pub enum CredentialSource {
    /// One username/password for every allocation (`--user/--password`, or fetched from an issuer).
    Fixed(Credentials),
    /// Minted per allocation from a shared secret (`--secret`), user id `user` or `user-<n>`.
    Secret {
        /// The ring holding the secret.
        ring: SecretRing,
        /// The user id prefix.
        user: String,
        /// The credential lifetime in seconds.
        ttl: u64,
    },
    /// No credentials (unauthenticated Allocates only).
    None,
}

impl CredentialSource {
    /// Builds the source. With `--issuer` and `--server`, the issuer is asked once, here (with
    /// `--issuer` alone every allocation or flow asks it).
    pub async fn from_args(args: &LoadArgs, issuer: Option<&IssuerClient>) -> Result<Self, LoadError> {
        if let Some(secret) = &args.secret {
            let ring = SecretRing::new(vec![Secret::new(secret.as_bytes())])
                .map_err(|e| LoadError::Credentials(e.to_string()))?;
            return Ok(Self::Secret {
                ring,
                user: args.user.clone().unwrap_or_else(|| "turnkey-load".into()),
                ttl: args.credential_ttl,
            });
        }
        if let (Some(user), Some(password)) = (&args.user, &args.password) {
            return Ok(Self::Fixed(Credentials { username: user.clone(), password: password.clone() }));
        }
        if let Some(issuer) = issuer {
            let body = issuer.fetch().await?;
            return pick_turn_credentials(&body).map(Self::Fixed);
        }
        Ok(Self::None)
    }

    /// The credentials for allocation number `n`.
    pub fn for_allocation(&self, n: u64) -> Result<Credentials, LoadError> {
        match self {
            Self::Fixed(c) => Ok(c.clone()),
            Self::Secret { ring, user, ttl } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                let c = ring
                    .mint(&format!("{user}-{n}"), UnixTime(now), *ttl)
                    .map_err(|e| LoadError::Credentials(e.to_string()))?;
                Ok(Credentials { username: c.username, password: c.password })
            }
            Self::None => Ok(Credentials { username: String::new(), password: String::new() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_credentials_verify() {
        let src = CredentialSource::Secret {
            ring: SecretRing::new(vec![Secret::new("s3cret")]).unwrap(),
            user: "load".into(),
            ttl: 60,
        };
        let c = src.for_allocation(7).unwrap();
        assert!(c.username.ends_with(":load-7"));
        let ring = SecretRing::new(vec![Secret::new("s3cret")]).unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(ring.verify_password(&c.username, &c.password, UnixTime(now)).is_ok());
    }
}
