//! Live sessions: `GET /v1/sessions`, `GET /v1/sessions/{id}` and `DELETE /v1/sessions/{id}`.
//!
//! The binary implements [`SessionSource`] over the relay in this process (its node-wide session
//! table) or, in fleet mode, over the fleet's session index in Redis; this crate knows neither.
//!
//! Scoping: a key's bearer token sees only the sessions of credentials issued for that key; an
//! operator token (a key created with `turnkey keys create --admin`, or the token in
//! `[issuer] admin_token_file`) sees all. Another key's session is 404, exactly like an id that
//! does not exist (no existence oracle). Listing is in ascending id order; `cursor` is the
//! `next_cursor` of the previous page (opaque to clients).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::fleet::FleetFuture;
use crate::ice::key_of_userid;
use crate::keys::is_valid_key_id;

/// Sessions per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// A client's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionTransport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl SessionTransport {
    /// `udp`, `tcp` or `tls`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "udp" => Some(Self::Udp),
            "tcp" => Some(Self::Tcp),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }
}

/// One live allocation (the JSON of `GET /v1/sessions`; docs/api/openapi.yaml `Session`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The allocation's id (16 hex digits).
    pub id: String,
    /// The relay node holding it.
    pub node: String,
    /// The TURN key (tenant) the credential was issued for; `null` for credentials minted
    /// outside the issuer (e.g. `turnkey creds`).
    pub key: Option<String>,
    /// The user part of the username (the `customIdentifier`, or a random `~...` id).
    pub user: String,
    /// The USERNAME (`<expiry>:<userid>`).
    pub username: String,
    /// How the client reaches the relay.
    pub transport: SessionTransport,
    /// The client's address as the relay sees it.
    pub client: SocketAddr,
    /// The relay's listening address the client talks to.
    pub server: SocketAddr,
    /// The relayed transport address(es) (XOR-RELAYED-ADDRESS).
    pub relayed: Vec<SocketAddr>,
    /// Live permissions.
    pub permissions: u32,
    /// Live channel bindings.
    pub channels: u32,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// When it ends unless refreshed (Unix seconds).
    pub expires: u64,
    /// Payload bytes relayed client -> peers.
    pub bytes_client_to_peer: u64,
    /// Payload bytes relayed peers -> client.
    pub bytes_peer_to_client: u64,
    /// Packets relayed client -> peers.
    pub packets_client_to_peer: u64,
    /// Packets relayed peers -> client.
    pub packets_peer_to_client: u64,
    /// Whether the allocation is relayed by the kernel fast path (false until it exists).
    pub fast_path: bool,
}

/// The key and user of a userid: `<key id>:<user>` for issued credentials, else no key.
pub fn split_userid(userid: &str) -> (Option<String>, String) {
    let key = key_of_userid(userid);
    match userid.split_once(':') {
        Some((k, user)) if k == key && is_valid_key_id(k) => (Some(k.to_owned()), user.to_owned()),
        _ => (None, userid.to_owned()),
    }
}

/// Who asks: an operator sees every session, a key only its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every session.
    All,
    /// The sessions of this key.
    Key(String),
}

impl Scope {
    pub(crate) fn allows(&self, s: &Session) -> bool {
        match self {
            Self::All => true,
            Self::Key(k) => s.key.as_deref() == Some(k),
        }
    }
}

/// The filters and page of a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only this user (the user part of the username).
    pub user: Option<String>,
    /// Only this key.
    pub key: Option<String>,
    /// Only clients at this IP.
    pub client_ip: Option<IpAddr>,
    /// Only this relay node.
    pub node: Option<String>,
    /// Only this transport.
    pub transport: Option<SessionTransport>,
    /// Page size (1..=[`MAX_LIMIT`]).
    pub limit: usize,
    /// Sessions after this id.
    pub cursor: Option<String>,
}

impl SessionQuery {
    /// Parses query pairs; every bad parameter is a 400 naming it; unknown parameters too.
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, ApiError> {
        let mut q = Self { limit: DEFAULT_LIMIT, ..Self::default() };
        for (name, value) in pairs {
            match name.as_str() {
                "user" => q.user = Some(value.clone()),
                "key" => q.key = Some(value.clone()),
                "node" => q.node = Some(value.clone()),
                "client_ip" => {
                    q.client_ip =
                        Some(value.parse().map_err(|_| ApiError::BadRequest("client_ip must be an IP address"))?);
                }
                "transport" => {
                    q.transport = Some(
                        SessionTransport::parse(value)
                            .ok_or(ApiError::BadRequest("transport must be udp, tcp or tls"))?,
                    );
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or(ApiError::BadRequest("limit must be an integer from 1 to 1000"))?;
                }
                "cursor" => {
                    if !is_session_id(value) {
                        return Err(ApiError::BadRequest("cursor must be a next_cursor of an earlier page"));
                    }
                    q.cursor = Some(value.clone());
                }
                _ => {
                    return Err(ApiError::BadRequest(
                        "unknown query parameter (user, key, client_ip, node, transport, limit, cursor)",
                    ))
                }
            }
        }
        Ok(q)
    }

    fn matches(&self, s: &Session) -> bool {
        self.user.as_ref().is_none_or(|u| *u == s.user)
            && self.key.as_ref().is_none_or(|k| s.key.as_ref() == Some(k))
            && self.client_ip.is_none_or(|ip| ip == s.client.ip())
            && self.node.as_ref().is_none_or(|n| *n == s.node)
            && self.transport.is_none_or(|t| t == s.transport)
            && self.cursor.as_ref().is_none_or(|c| s.id > *c)
    }
}

/// Whether `s` looks like a session id (16 lowercase hex digits).
pub fn is_session_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// One page of a listing (the JSON of `GET /v1/sessions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    /// The sessions, ascending by id.
    pub sessions: Vec<Session>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The page of `all` that `scope` may see and `q` selects (ascending id order).
pub fn select(mut all: Vec<Session>, scope: &Scope, q: &SessionQuery) -> SessionPage {
    all.retain(|s| scope.allows(s) && q.matches(s));
    let more = all.len() > q.limit;
    if more {
        // Only the page is sorted: the `limit` smallest ids first (linear), then those.
        all.select_nth_unstable_by(q.limit, |a, b| a.id.cmp(&b.id));
        all.truncate(q.limit);
    }
    all.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let next_cursor = more.then(|| all[q.limit - 1].id.clone());
    SessionPage { sessions: all, next_cursor }
}

/// Why the sessions could not be read or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsFailure {
    /// No relay reports sessions to this process (`turnkey issuer` outside a fleet): it never
    /// will, so 501, not 503.
    NoRelay,
    /// The listing is turned off on this node (`[relay] sessions = false`): 501.
    Disabled,
    /// The shared store is unreachable (fleet mode).
    Unavailable,
    /// The owning relay did not confirm the end in time.
    NotConfirmed,
}

impl From<SessionsFailure> for ApiError {
    fn from(f: SessionsFailure) -> Self {
        match f {
            SessionsFailure::NoRelay => ApiError::SessionsNotServed(
                "this issuer runs without a relay or fleet, so no relay reports sessions to it: ask the \
                 relay's own HTTP listener (turnkey serve) or run the issuer in fleet mode (--redis)",
            ),
            SessionsFailure::Disabled => ApiError::SessionsNotServed(
                "the session listing is turned off on this relay ([relay] sessions = false, --no-sessions)",
            ),
            SessionsFailure::Unavailable => ApiError::SessionsUnavailable("fleet state unavailable, retry"),
            SessionsFailure::NotConfirmed => {
                ApiError::SessionsUnavailable("the relay did not confirm the end yet, retry")
            }
        }
    }
}

/// Where the sessions come from (implemented by the binary).
pub trait SessionSource: Send + Sync + 'static {
    /// Every live session (the whole fleet's in fleet mode).
    fn list(&self) -> FleetFuture<'_, Result<Vec<Session>, SessionsFailure>>;

    /// Ends `session` on its relay and waits until it is gone; `Ok(false)`: it was already gone.
    fn end<'a>(&'a self, session: &'a Session) -> FleetFuture<'a, Result<bool, SessionsFailure>>;
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn session(id: &str, key: Option<&str>, user: &str, transport: SessionTransport) -> Session {
        Session {
            id: id.to_owned(),
            node: "n1".to_owned(),
            key: key.map(str::to_owned),
            user: user.to_owned(),
            username: format!("1:{user}"),
            transport,
            client: "192.0.2.1:5000".parse().unwrap(),
            server: "192.0.2.9:3478".parse().unwrap(),
            relayed: vec!["192.0.2.9:50000".parse().unwrap()],
            permissions: 0,
            channels: 0,
            created: 1,
            expires: 2,
            bytes_client_to_peer: 0,
            bytes_peer_to_client: 0,
            packets_client_to_peer: 0,
            packets_peer_to_client: 0,
            fast_path: false,
        }
    }

    const KA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn userids_split_into_key_and_user() {
        assert_eq!(split_userid(&format!("{KA}:alice")), (Some(KA.to_owned()), "alice".to_owned()));
        assert_eq!(split_userid("alice"), (None, "alice".to_owned()));
        // The one key-id rule (turnkey_types::KeyId): any 1-64 of [A-Za-z0-9._-] is a key id.
        assert_eq!(split_userid("nothex:alice"), (Some("nothex".to_owned()), "alice".to_owned()));
        assert_eq!(split_userid("not/a key:alice"), (None, "not/a key:alice".to_owned()));
    }

    #[test]
    fn pages_follow_the_cursor_in_id_order_within_the_scope() {
        let all: Vec<Session> = (0..25u64)
            .map(|i| {
                let key = if i % 2 == 0 { KA } else { KB };
                session(&format!("{:016x}", 100 - i), Some(key), &format!("u{i}"), SessionTransport::Udp)
            })
            .collect();
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
        };
        let mut q = SessionQuery::from_pairs(&pairs(&[("limit", "5")])).unwrap();
        let mut seen = Vec::new();
        loop {
            let page = select(all.clone(), &Scope::Key(KA.to_owned()), &q);
            seen.extend(page.sessions.iter().map(|s| s.id.clone()));
            assert!(page.sessions.iter().all(|s| s.key.as_deref() == Some(KA)));
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen.len(), 13);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let q = SessionQuery::from_pairs(&pairs(&[("user", "u3"), ("transport", "udp")])).unwrap();
        assert_eq!(select(all.clone(), &Scope::All, &q).sessions.len(), 1);
        assert!(select(all, &Scope::Key(KA.to_owned()), &q).sessions.is_empty());
    }

    #[test]
    fn bad_parameters_are_400() {
        for (n, v) in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "x"),
            ("transport", "sctp"),
            ("client_ip", "1.2.3"),
            ("cursor", "zz"),
            ("token", "x"),
        ] {
            let e = SessionQuery::from_pairs(&[(n.to_owned(), v.to_owned())]).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{n}={v}");
        }
    }
}
