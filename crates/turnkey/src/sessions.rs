//! Live sessions in the binary: the relay's node-wide session table as the issuer's
//! [`SessionSource`] (`turnkey serve`), the source of a node whose listing is off, and the
//! conversion of the relay's snapshots into the API's [`Session`] JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use turnkey_fleet::{IndexedSession, LiveCounts};
use turnkey_issuer::{FleetFuture, Session, SessionSource, SessionTransport, SessionsFailure};
use turnkey_relay::engine::{AllocationId, SessionSnapshot};
use turnkey_relay::sessions::SessionTable;
use turnkey_relay::Transport;

/// How long `DELETE /v1/sessions/{id}` waits for the owning shard's sweep to end the session
/// (sweeps run every 500 ms; the rest is headroom for a loaded host).
pub(crate) const END_TIMEOUT: Duration = Duration::from_secs(5);

/// The API's view of one relay snapshot on node `node`.
pub(crate) fn to_session(s: &SessionSnapshot, node: &str) -> Session {
    let (key, user) = turnkey_issuer::split_userid(&s.userid);
    Session {
        id: s.id.to_string(),
        node: node.to_owned(),
        key,
        user,
        username: s.username.to_string(),
        transport: api_transport(s.tuple.transport),
        client: s.tuple.client.0,
        server: s.tuple.server,
        relayed: vec![s.relayed],
        permissions: s.permissions,
        channels: s.channels,
        created: s.created,
        expires: s.expires,
        bytes_client_to_peer: s.bytes_client_to_peer,
        bytes_peer_to_client: s.bytes_peer_to_client,
        packets_client_to_peer: s.packets_client_to_peer,
        packets_peer_to_client: s.packets_peer_to_client,
        fast_path: s.fast_path,
    }
}

/// A snapshot as the fleet's session index holds it.
pub(crate) fn to_indexed(s: &SessionSnapshot) -> IndexedSession {
    IndexedSession {
        id: s.id.0,
        transport: s.tuple.transport,
        client: s.tuple.client.0,
        server: s.tuple.server,
        relayed: s.relayed,
        created: s.created,
        username: s.username.to_string(),
        live: LiveCounts {
            expires: s.expires,
            permissions: s.permissions,
            channels: s.channels,
            bytes_client_to_peer: s.bytes_client_to_peer,
            bytes_peer_to_client: s.bytes_peer_to_client,
            packets_client_to_peer: s.packets_client_to_peer,
            packets_peer_to_client: s.packets_peer_to_client,
            fast_path: s.fast_path,
        },
    }
}

/// The API's view of a session read from relay `node`'s index (key and user from the username,
/// `<expiry>:<userid>`).
pub(crate) fn from_indexed(s: IndexedSession, node: &str) -> Session {
    let userid = s.username.split_once(':').map_or(s.username.as_str(), |(_, u)| u);
    let (key, user) = turnkey_issuer::split_userid(userid);
    let l = s.live;
    Session {
        id: AllocationId(s.id).to_string(),
        node: node.to_owned(),
        key,
        user,
        transport: api_transport(s.transport),
        client: s.client,
        server: s.server,
        relayed: vec![s.relayed],
        permissions: l.permissions,
        channels: l.channels,
        created: s.created,
        expires: l.expires,
        bytes_client_to_peer: l.bytes_client_to_peer,
        bytes_peer_to_client: l.bytes_peer_to_client,
        packets_client_to_peer: l.packets_client_to_peer,
        packets_peer_to_client: l.packets_peer_to_client,
        fast_path: l.fast_path,
        username: s.username,
    }
}

fn api_transport(t: Transport) -> SessionTransport {
    match t {
        Transport::Udp => SessionTransport::Udp,
        Transport::Tcp => SessionTransport::Tcp,
        Transport::Tls => SessionTransport::Tls,
    }
}

/// Ends `id` through `table` and waits until its shard no longer lists it.
pub(crate) async fn end_local(table: &SessionTable, id: AllocationId) -> Result<bool, SessionsFailure> {
    if !table.request_end(id) {
        return Ok(false);
    }
    let deadline = Instant::now() + END_TIMEOUT;
    while table.is_listed(id) {
        if Instant::now() >= deadline {
            return Err(SessionsFailure::NotConfirmed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

/// The sessions of the relay in this process.
pub(crate) struct LocalSessions {
    pub(crate) table: Arc<SessionTable>,
    pub(crate) node: String,
}

impl SessionSource for LocalSessions {
    fn list(&self) -> FleetFuture<'_, Result<Vec<Session>, SessionsFailure>> {
        Box::pin(async move {
            let snaps = self.table.snapshots();
            Ok(snaps.iter().flat_map(|v| v.iter()).map(|s| to_session(s, &self.node)).collect())
        })
    }

    fn end<'a>(&'a self, session: &'a Session) -> FleetFuture<'a, Result<bool, SessionsFailure>> {
        Box::pin(async move {
            match AllocationId::parse(&session.id) {
                Some(id) => end_local(&self.table, id).await,
                None => Ok(false),
            }
        })
    }
}

/// A node with `[relay] sessions = false`: every listing and end answers that it is off.
pub(crate) struct SessionsOff;

impl SessionSource for SessionsOff {
    fn list(&self) -> FleetFuture<'_, Result<Vec<Session>, SessionsFailure>> {
        Box::pin(async { Err(SessionsFailure::Disabled) })
    }

    fn end<'a>(&'a self, _: &'a Session) -> FleetFuture<'a, Result<bool, SessionsFailure>> {
        Box::pin(async { Err(SessionsFailure::Disabled) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use turnkey_relay::{ClientAddr, FiveTuple};

    use super::*;

    #[test]
    fn a_session_read_from_the_fleet_index_is_the_one_listed_locally() {
        let key = "0123456789abcdef0123456789abcdef";
        for (username, userid) in [
            (format!("1767312000:{key}:alice"), format!("{key}:alice")),
            ("1767312000:carol:x y".to_owned(), "carol:x y".to_owned()),
            ("1767312000:bob".to_owned(), "bob".to_owned()),
        ] {
            let s = SessionSnapshot {
                id: AllocationId(0x8d1f_2c3a_0000_0007),
                username: Arc::from(username.as_str()),
                userid: Arc::from(userid.as_str()),
                tuple: FiveTuple {
                    transport: Transport::Tcp,
                    client: ClientAddr("198.51.100.7:53122".parse().unwrap()),
                    server: "203.0.113.5:3478".parse().unwrap(),
                },
                relayed: "203.0.113.5:50342".parse().unwrap(),
                permissions: 1,
                channels: 2,
                created: 1_767_225_600,
                expires: 1_767_226_200,
                bytes_client_to_peer: 1_843_200,
                bytes_peer_to_client: 2_210_400,
                packets_client_to_peer: 1536,
                packets_peer_to_client: 1842,
                fast_path: true,
            };
            assert_eq!(from_indexed(to_indexed(&s), "relay-1"), to_session(&s, "relay-1"), "{username}");
        }
    }
}
