//! The compact encoding of a relay's session index and what changed since its last write.
//!
//! A relay's index is one Redis hash (`<p>session-index:<node>`, see `sessions.rs`). Each
//! session has two fields: `f<id>`, the part that never changes while the allocation lives
//! (transport, client, server and relayed addresses, creation time, username: written once), and
//! `l<id>`, the part that moves (expiry, permission and channel counts, bytes and packets each way,
//! fast path: written again only when one of them changed). Values are space-separated decimals
//! and addresses; the username comes last so it may contain anything. A field `epoch` names the
//! writer's last full write: an incremental write applies only on top of that same full write.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::Transport;

/// The hash field of the writer's epoch.
pub(crate) const EPOCH_FIELD: &str = "epoch";

/// What moves in a live session (compared at each write; only a change is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    /// When it ends unless refreshed (Unix seconds).
    pub expires: u64,
    /// Live permissions.
    pub permissions: u32,
    /// Live channel bindings.
    pub channels: u32,
    /// Payload bytes relayed client -> peers.
    pub bytes_client_to_peer: u64,
    /// Payload bytes relayed peers -> client.
    pub bytes_peer_to_client: u64,
    /// Packets relayed client -> peers.
    pub packets_client_to_peer: u64,
    /// Packets relayed peers -> client.
    pub packets_peer_to_client: u64,
    /// Whether the kernel fast path relays a channel of it.
    pub fast_path: bool,
}

/// One live allocation as a relay's index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedSession {
    /// The allocation id (written as 16 hex digits).
    pub id: u64,
    /// How the client reaches the relay.
    pub transport: Transport,
    /// The client's address.
    pub client: SocketAddr,
    /// The relay's listening address the client talks to.
    pub server: SocketAddr,
    /// The relayed transport address.
    pub relayed: SocketAddr,
    /// When it was created (Unix seconds).
    pub created: u64,
    /// The USERNAME (`<expiry>:<userid>`).
    pub username: String,
    /// What moves.
    pub live: LiveCounts,
}

fn transport_char(t: Transport) -> char {
    match t {
        Transport::Udp => 'u',
        Transport::Tcp => 't',
        Transport::Tls => 's',
    }
}

pub(crate) fn fixed_field(id: u64) -> String {
    format!("f{id:016x}")
}

pub(crate) fn live_field(id: u64) -> String {
    format!("l{id:016x}")
}

impl IndexedSession {
    /// `<u|t|s> <client> <server> <relayed> <created> <username>`.
    pub(crate) fn encode_fixed(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            transport_char(self.transport),
            self.client,
            self.server,
            self.relayed,
            self.created,
            self.username
        )
    }

    /// Reads the session `id` from its two fields; `None` if either is malformed.
    pub(crate) fn decode(id: u64, fixed: &str, live: &str) -> Option<Self> {
        let mut f = fixed.splitn(6, ' ');
        let transport = match f.next()? {
            "u" => Transport::Udp,
            "t" => Transport::Tcp,
            "s" => Transport::Tls,
            _ => return None,
        };
        let client = f.next()?.parse().ok()?;
        let server = f.next()?.parse().ok()?;
        let relayed = f.next()?.parse().ok()?;
        let created = f.next()?.parse().ok()?;
        let username = f.next()?.to_owned();
        Some(Self { id, transport, client, server, relayed, created, username, live: LiveCounts::decode(live)? })
    }
}

impl LiveCounts {
    /// `<expires> <permissions> <channels> <bytes c->p> <bytes p->c> <packets c->p> <packets p->c> <0|1>`.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{} {} {} {} {} {} {} {}",
            self.expires,
            self.permissions,
            self.channels,
            self.bytes_client_to_peer,
            self.bytes_peer_to_client,
            self.packets_client_to_peer,
            self.packets_peer_to_client,
            u8::from(self.fast_path)
        )
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(' ');
        let mut n = || it.next()?.parse::<u64>().ok();
        let c = Self {
            expires: n()?,
            permissions: u32::try_from(n()?).ok()?,
            channels: u32::try_from(n()?).ok()?,
            bytes_client_to_peer: n()?,
            bytes_peer_to_client: n()?,
            packets_client_to_peer: n()?,
            packets_peer_to_client: n()?,
            fast_path: match n()? {
                0 => false,
                1 => true,
                _ => return None,
            },
        };
        it.next().is_none().then_some(c)
    }
}

/// Reads a whole index hash (field, value pairs): its sessions, ascending by id; a session whose
/// fields are missing or malformed is left out.
pub(crate) fn decode_index(fields: HashMap<String, String>) -> Vec<IndexedSession> {
    let mut out: Vec<IndexedSession> = fields
        .iter()
        .filter_map(|(name, fixed)| {
            let id = u64::from_str_radix(name.strip_prefix('f')?, 16).ok()?;
            IndexedSession::decode(id, fixed, fields.get(&live_field(id))?)
        })
        .collect();
    out.sort_unstable_by_key(|s| s.id);
    out
}

/// One write of the index: the hash fields to set and to delete.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IndexWritePlan {
    /// A full rewrite (the hash is replaced) rather than changes on top of the last write.
    pub(crate) full: bool,
    /// `(field, value)` to set.
    pub(crate) set: Vec<(String, String)>,
    /// Fields to delete.
    pub(crate) delete: Vec<String>,
    /// What the index holds once this write applied.
    next: HashMap<u64, LiveCounts>,
}

/// A relay's side of its index: what its last applied write left in Redis, so the next write
/// carries only the changes. Any failed or unconfirmed write makes the next one full.
#[derive(Debug)]
pub struct SessionIndexWriter {
    epoch: String,
    written: HashMap<u64, LiveCounts>,
    synced: bool,
}

impl SessionIndexWriter {
    /// A writer whose full writes are tagged `epoch` (random per process: two processes never
    /// take each other's index as their own).
    pub fn new(epoch: u64) -> Self {
        Self { epoch: format!("{epoch:016x}"), written: HashMap::new(), synced: false }
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// What to write so the index holds `sessions` (full when nothing is known to be there).
    pub(crate) fn plan(&self, sessions: &[IndexedSession]) -> IndexWritePlan {
        let mut p = IndexWritePlan { full: !self.synced, ..IndexWritePlan::default() };
        p.next.reserve(sessions.len());
        for s in sessions {
            let before = if p.full { None } else { self.written.get(&s.id) };
            match before {
                None => {
                    p.set.push((fixed_field(s.id), s.encode_fixed()));
                    p.set.push((live_field(s.id), s.live.encode()));
                }
                Some(l) if *l != s.live => p.set.push((live_field(s.id), s.live.encode())),
                Some(_) => {}
            }
            p.next.insert(s.id, s.live);
        }
        if !p.full {
            for id in self.written.keys().filter(|id| !p.next.contains_key(id)) {
                p.delete.push(fixed_field(*id));
                p.delete.push(live_field(*id));
            }
        }
        p
    }

    /// `plan` is in Redis now.
    pub(crate) fn applied(&mut self, plan: IndexWritePlan) {
        self.written = plan.next;
        self.synced = true;
    }

    /// Redis may not hold what this writer last wrote (a failed write, a lost key): the next
    /// write is full.
    pub(crate) fn lost(&mut self) {
        self.synced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: u64, username: &str) -> IndexedSession {
        IndexedSession {
            id,
            transport: Transport::Tls,
            client: "[2001:db8::7]:53122".parse().unwrap(),
            server: "203.0.113.5:5349".parse().unwrap(),
            relayed: "203.0.113.5:50342".parse().unwrap(),
            created: 1_767_225_600,
            username: username.to_owned(),
            live: LiveCounts { expires: 1_767_226_200, permissions: 1, ..LiveCounts::default() },
        }
    }

    fn apply(index: &mut HashMap<String, String>, p: &IndexWritePlan) {
        if p.full {
            index.clear();
        }
        index.extend(p.set.iter().cloned());
        for f in &p.delete {
            index.remove(f);
        }
    }

    #[test]
    fn a_session_reads_back_as_written_whatever_its_username_holds() {
        let mut s = session(0x8d1f_2c3a_0000_0007, "1767312000:0123456789abcdef:alice in wonderland: 1 2");
        s.live = LiveCounts {
            expires: 9,
            permissions: 3,
            channels: 2,
            bytes_client_to_peer: u64::MAX,
            bytes_peer_to_client: 5,
            packets_client_to_peer: 6,
            packets_peer_to_client: 7,
            fast_path: true,
        };
        let back = IndexedSession::decode(s.id, &s.encode_fixed(), &s.live.encode()).unwrap();
        assert_eq!(back, s);
        assert_eq!(fixed_field(s.id), "f8d1f2c3a00000007");
        for bad_live in ["1 2 3 4 5 6 7", "1 2 3 4 5 6 7 2", "1 2 3 4 5 6 7 0 9", "x 2 3 4 5 6 7 0"] {
            assert!(IndexedSession::decode(s.id, &s.encode_fixed(), bad_live).is_none(), "{bad_live}");
        }
        assert!(IndexedSession::decode(s.id, "q 1.2.3.4:5 1.2.3.4:5 1.2.3.4:5 1 u", &s.live.encode()).is_none());
    }

    #[test]
    fn writes_carry_only_what_changed_and_the_index_always_matches_the_sessions() {
        let mut w = SessionIndexWriter::new(1);
        let mut index = HashMap::new();
        let mut now = vec![session(1, "1:k:a"), session(2, "1:k:b"), session(3, "1:k:c")];
        let p = w.plan(&now);
        assert!(p.full && p.set.len() == 6 && p.delete.is_empty());
        apply(&mut index, &p);
        w.applied(p);

        // Nothing moved: nothing to write.
        let p = w.plan(&now);
        assert!(!p.full && p.set.is_empty() && p.delete.is_empty(), "{p:?}");

        // One session relayed, one ended, one started: its live field, two deletions, two sets.
        now[0].live.bytes_client_to_peer += 100;
        now.remove(1);
        now.push(session(4, "1:k:d"));
        let p = w.plan(&now);
        assert!(!p.full);
        let set: Vec<&str> = p.set.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(set, ["l0000000000000001", "f0000000000000004", "l0000000000000004"]);
        let mut del = p.delete.clone();
        del.sort();
        assert_eq!(del, ["f0000000000000002", "l0000000000000002"]);
        apply(&mut index, &p);
        w.applied(p);
        assert_eq!(decode_index(index.clone()), now);

        // A lost write: the next one is full and replaces whatever Redis held.
        w.lost();
        index.insert("fffffffffffffffff".into(), "junk".into());
        now.pop();
        let p = w.plan(&now);
        assert!(p.full && p.delete.is_empty() && p.set.len() == 4);
        apply(&mut index, &p);
        w.applied(p);
        assert_eq!(decode_index(index), now);
    }

    #[test]
    fn a_session_missing_a_field_is_left_out() {
        let s = session(5, "1:k:a");
        let mut index = HashMap::from([(fixed_field(5), s.encode_fixed()), (EPOCH_FIELD.to_owned(), "x".into())]);
        assert!(decode_index(index.clone()).is_empty());
        index.insert(live_field(5), s.live.encode());
        assert_eq!(decode_index(index), vec![s]);
    }
}
