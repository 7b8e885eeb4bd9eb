//! Live sessions in the binary: the relay's node-wide session table as the issuer's
//! [`SessionSource`] (`turnkey serve`), the source of a node whose listing is off, and the
//! conversion of the relay's snapshots into the API's [`Session`] JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
        transport: match s.tuple.transport {
            Transport::Udp => SessionTransport::Udp,
            Transport::Tcp => SessionTransport::Tcp,
            Transport::Tls => SessionTransport::Tls,
        },
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
