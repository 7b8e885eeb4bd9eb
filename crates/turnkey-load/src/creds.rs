//! Where the load's TURN credentials come from: given on the command line, minted locally from a
//! TURN REST secret, or fetched once from an issuer in Cloudflare's API shape.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use turnkey_auth::{Secret, SecretRing, UnixTime};

use crate::args::LoadArgs;
use crate::client::Credentials;
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
    /// Builds the source; an issuer is asked once, here.
    pub async fn from_args(args: &LoadArgs) -> Result<Self, LoadError> {
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
        if let (Some(url), Some(key_id), Some(token_file)) = (&args.issuer, &args.key_id, &args.token_file) {
            let token = std::fs::read_to_string(token_file).map_err(|source| LoadError::Io {
                context: format!("read token file {}", token_file.display()),
                source,
            })?;
            return fetch_issued(url, key_id, token.trim(), args.credential_ttl).await.map(Self::Fixed);
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

/// POSTs `{url}/keys/{key_id}/credentials/generate-ice-servers` with `{"ttl": ttl}` and picks the
/// TURN username and credential from the answer.
pub async fn fetch_issued(url: &str, key_id: &str, token: &str, ttl: u64) -> Result<Credentials, LoadError> {
    let endpoint = format!("{}/keys/{}/credentials/generate-ice-servers", url.trim_end_matches('/'), key_id);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(|e| LoadError::Issuer(e.to_string()))?;
    let resp = client
        .post(&endpoint)
        .bearer_auth(token)
        .json(&serde_json::json!({ "ttl": ttl }))
        .send()
        .await
        .map_err(|e| LoadError::Issuer(format!("POST {endpoint}: {}", e.without_url())))?;
    let status = resp.status();
    if !status.is_success() {
        // The body is not echoed: an issuer's error bodies are not ours to print.
        return Err(LoadError::Issuer(format!("POST {endpoint}: HTTP {status}")));
    }
    let body = resp.bytes().await.map_err(|e| LoadError::Issuer(format!("reading answer: {}", e.without_url())))?;
    pick_turn_credentials(&body)
}

#[derive(Deserialize)]
struct IceAnswer {
    #[serde(rename = "iceServers")]
    ice_servers: IceServers,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IceServers {
    List(Vec<IceServer>),
    One(IceServer),
}

#[derive(Deserialize)]
struct IceServer {
    username: Option<String>,
    credential: Option<String>,
}

/// Picks the first ICE server entry with a username and credential (array or single object).
pub fn pick_turn_credentials(body: &[u8]) -> Result<Credentials, LoadError> {
    let answer: IceAnswer =
        serde_json::from_slice(body).map_err(|e| LoadError::Issuer(format!("unexpected answer: {e}")))?;
    let servers = match answer.ice_servers {
        IceServers::List(v) => v,
        IceServers::One(s) => vec![s],
    };
    servers
        .into_iter()
        .find_map(|s| match (s.username, s.credential) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => None,
        })
        .ok_or_else(|| LoadError::Issuer("no TURN username/credential in the answer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_turn_entry_from_array_shape() {
        let body = br#"{"iceServers":[{"urls":["stun:a:3478"]},{"urls":["turn:a:3478?transport=udp"],"username":"u1","credential":"c1"}]}"#;
        let c = pick_turn_credentials(body).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u1", "c1"));
    }

    #[test]
    fn picks_turn_entry_from_object_shape() {
        let body = br#"{"iceServers":{"urls":["turn:a:3478"],"username":"u2","credential":"c2"}}"#;
        assert_eq!(pick_turn_credentials(body).unwrap().username, "u2");
    }

    #[test]
    fn rejects_answers_without_credentials() {
        assert!(pick_turn_credentials(br#"{"iceServers":[{"urls":["stun:a"]}]}"#).is_err());
        assert!(pick_turn_credentials(b"not json").is_err());
    }

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
