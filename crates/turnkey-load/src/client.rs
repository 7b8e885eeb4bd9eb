//! A compact TURN client (RFC 8656) for load generation: Allocate with the long-term credential
//! dance (401 → REALM/NONCE → authenticated retry, 438 → fresh NONCE), Refresh,
//! CreatePermission, ChannelBind; over UDP it retransmits requests (RFC 8489 §6.2.1).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::proto::{attr, class, method, Incoming, MessageWriter, StunView, TransactionId};
use crate::transport::{Rx, Target, Tx};
use crate::{AddressFamily, LoadError};

/// A username and password for the long-term credential mechanism.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The USERNAME.
    pub username: String,
    /// The password (the key is `MD5(username:realm:password)`).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// What a signed request needs: the username, realm, nonce and long-term key.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    username: String,
    password: String,
    realm: Option<String>,
    realm_override: Option<String>,
    nonce: Option<Vec<u8>>,
    key: [u8; 16],
}

impl Auth {
    /// Auth for `creds`; `realm_override` replaces the server's REALM when set.
    pub fn new(creds: &Credentials, realm_override: Option<String>) -> Self {
        Self { username: creds.username.clone(), password: creds.password.clone(), realm_override, ..Self::default() }
    }

    /// Whether REALM and NONCE are known (the first 401 has been seen).
    pub fn ready(&self) -> bool {
        self.realm.is_some() && self.nonce.is_some()
    }

    /// Learns REALM and NONCE from a 401 or 438 answer.
    pub fn learn(&mut self, realm: Option<&[u8]>, nonce: Option<&[u8]>) {
        if let Some(r) = realm {
            let r = self.realm_override.clone().unwrap_or_else(|| String::from_utf8_lossy(r).into_owned());
            self.key = turnkey_auth::long_term_key(&self.username, &r, &self.password);
            self.realm = Some(r);
        }
        if let Some(n) = nonce {
            self.nonce = Some(n.to_vec());
        }
    }

    /// Appends USERNAME, REALM, NONCE and MESSAGE-INTEGRITY when ready.
    pub fn sign(&self, w: &mut MessageWriter<'_>) {
        if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
            w.attr(attr::USERNAME, self.username.as_bytes())
                .attr(attr::REALM, realm.as_bytes())
                .attr(attr::NONCE, nonce)
                .integrity(&self.key);
        }
    }
}

/// One TURN allocation's control connection.
#[derive(Debug)]
pub struct TurnClient {
    tx: Tx,
    rx: Rx,
    udp: bool,
    auth: Auth,
    timeout: Duration,
    buf: Vec<u8>,
    relayed: Option<SocketAddr>,
    retransmitted: bool,
}

/// A control request's success answer, reduced to what the client uses.
#[derive(Debug, Clone, Copy, Default)]
struct Reply {
    relayed: Option<SocketAddr>,
    lifetime: Option<u32>,
}

impl TurnClient {
    /// Connects to `target`; requests time out after `timeout`.
    pub async fn connect(target: &Target, auth: Auth, timeout: Duration) -> Result<Self, LoadError> {
        let (tx, rx) =
            tokio::time::timeout(timeout, target.connect()).await.map_err(|_| LoadError::Timeout("connect"))??;
        Ok(Self {
            udp: !tx.is_stream(),
            tx,
            rx,
            auth,
            timeout,
            buf: Vec::with_capacity(512),
            relayed: None,
            retransmitted: false,
        })
    }

    /// Allocates a UDP relay with LIFETIME `lifetime`; returns the relayed address.
    pub async fn allocate(&mut self, lifetime: u32) -> Result<SocketAddr, LoadError> {
        self.allocate_family(lifetime, None).await
    }

    /// [`TurnClient::allocate`] asking for a relayed address of `family` (REQUESTED-ADDRESS-FAMILY;
    /// None sends no attribute).
    pub async fn allocate_family(
        &mut self,
        lifetime: u32,
        family: Option<AddressFamily>,
    ) -> Result<SocketAddr, LoadError> {
        let reply = self
            .transact(method::ALLOCATE, "Allocate", |w| {
                w.attr_u32(attr::REQUESTED_TRANSPORT, 17 << 24).attr_u32(attr::LIFETIME, lifetime);
                if let Some(f) = family {
                    w.attr_u32(attr::REQUESTED_ADDRESS_FAMILY, f.attribute());
                }
            })
            .await?;
        let relayed =
            reply.relayed.ok_or_else(|| LoadError::Protocol("Allocate success without XOR-RELAYED-ADDRESS".into()))?;
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    /// Sends one unauthenticated Allocate and returns the error code of the answer (401 expected).
    pub async fn allocate_unauthenticated(&mut self) -> Result<u16, LoadError> {
        let tid = new_tid();
        let mut w = MessageWriter::new(&mut self.buf, method::ALLOCATE | class::REQUEST, tid);
        w.attr_u32(attr::REQUESTED_TRANSPORT, 17 << 24);
        match self.exchange(tid, "Allocate").await? {
            Answer::Error { code, .. } => Ok(code),
            Answer::Success(_) => Ok(0),
        }
    }

    /// Refreshes the allocation; LIFETIME 0 releases it. Returns the granted lifetime.
    pub async fn refresh(&mut self, lifetime: u32) -> Result<u32, LoadError> {
        let reply = self
            .transact(method::REFRESH, "Refresh", |w| {
                w.attr_u32(attr::LIFETIME, lifetime);
            })
            .await?;
        Ok(reply.lifetime.unwrap_or(lifetime))
    }

    /// Installs a permission for `peer`'s IP address.
    pub async fn create_permission(&mut self, peer: SocketAddr) -> Result<(), LoadError> {
        self.transact(method::CREATE_PERMISSION, "CreatePermission", |w| {
            w.xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
        .await
        .map(|_| ())
    }

    /// Binds `channel` (0x4000..=0x4FFF) to `peer`.
    pub async fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<(), LoadError> {
        self.transact(method::CHANNEL_BIND, "ChannelBind", |w| {
            w.attr(attr::CHANNEL_NUMBER, &[(channel >> 8) as u8, channel as u8, 0, 0])
                .xor_addr(attr::XOR_PEER_ADDRESS, peer);
        })
        .await
        .map(|_| ())
    }

    /// Whether the last request was retransmitted (its first answer may have been lost).
    pub fn retransmitted(&self) -> bool {
        self.retransmitted
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// The credential state (for signed keep-alive requests sent by the load loops).
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Splits the client into its connection halves for the load loops.
    pub fn into_parts(self) -> (Tx, Rx, Auth) {
        (self.tx, self.rx, self.auth)
    }

    /// Rebuilds a client from its parts (to release the allocation after the load).
    pub fn from_parts(tx: Tx, rx: Rx, auth: Auth, timeout: Duration) -> Self {
        Self {
            udp: !tx.is_stream(),
            tx,
            rx,
            auth,
            timeout,
            buf: Vec::with_capacity(512),
            relayed: None,
            retransmitted: false,
        }
    }

    /// Runs a request through the long-term credential dance: unauthenticated first when no
    /// nonce is known, then retried once per 401 (new REALM/NONCE) and 438 (new NONCE).
    async fn transact(
        &mut self,
        m: u16,
        name: &'static str,
        attrs: impl Fn(&mut MessageWriter<'_>),
    ) -> Result<Reply, LoadError> {
        let mut retried_401 = false;
        let mut retried_438 = 0;
        loop {
            let tid = new_tid();
            let mut w = MessageWriter::new(&mut self.buf, m | class::REQUEST, tid);
            attrs(&mut w);
            self.auth.sign(&mut w);
            match self.exchange(tid, name).await? {
                Answer::Success(r) => return Ok(r),
                Answer::Error { code: 401, realm, nonce, .. } if !retried_401 && realm.is_some() && nonce.is_some() => {
                    // First 401 of an unauthenticated request: learn REALM/NONCE and sign. A
                    // second 401 (after signing) is a bad credential, reported below.
                    retried_401 = true;
                    self.auth.learn(realm.as_deref(), nonce.as_deref());
                }
                Answer::Error { code: 438, realm, nonce, .. } if retried_438 < 2 && nonce.is_some() => {
                    retried_438 += 1;
                    self.auth.learn(realm.as_deref(), nonce.as_deref());
                }
                Answer::Error { code, reason, .. } => return Err(LoadError::Stun { method: name, code, reason }),
            }
        }
    }

    /// Sends the request in `self.buf` and waits for the answer with `tid`, retransmitting over
    /// UDP (RTO 500 ms, doubling) until the timeout. Other frames are ignored.
    async fn exchange(&mut self, tid: TransactionId, name: &'static str) -> Result<Answer, LoadError> {
        let deadline = Instant::now() + self.timeout;
        self.retransmitted = false;
        let mut rto = Duration::from_millis(500);
        let io = |source| LoadError::Io { context: format!("{name} request"), source };
        self.tx.send(&self.buf).await.map_err(io)?;
        let mut next_send = Instant::now() + rto;
        loop {
            let wake = if self.udp { next_send.min(deadline) } else { deadline };
            let frame = match tokio::time::timeout_at(wake, self.rx.recv()).await {
                Ok(r) => r.map_err(|source| LoadError::Io { context: format!("{name} answer"), source })?,
                Err(_) if Instant::now() >= deadline => return Err(LoadError::Timeout(name)),
                Err(_) => {
                    rto *= 2;
                    self.retransmitted = true;
                    next_send = Instant::now() + rto;
                    self.tx.send(&self.buf).await.map_err(io)?;
                    continue;
                }
            };
            let Incoming::Stun(v) = crate::proto::classify(frame) else {
                continue;
            };
            if v.tid != tid || v.class() == class::REQUEST || v.class() == class::INDICATION {
                continue;
            }
            return Ok(Answer::from_view(&v));
        }
    }
}

enum Answer {
    Success(Reply),
    Error { code: u16, reason: String, realm: Option<Vec<u8>>, nonce: Option<Vec<u8>> },
}

impl Answer {
    fn from_view(v: &StunView<'_>) -> Self {
        if v.class() == class::SUCCESS {
            Answer::Success(Reply {
                relayed: v.xor_addr(attr::XOR_RELAYED_ADDRESS),
                lifetime: v.attr_u32(attr::LIFETIME),
            })
        } else {
            let (code, reason) = v.error_code().unwrap_or((0, "error response without ERROR-CODE"));
            Answer::Error {
                code,
                reason: reason.to_string(),
                realm: v.attr(attr::REALM).map(<[u8]>::to_vec),
                nonce: v.attr(attr::NONCE).map(<[u8]>::to_vec),
            }
        }
    }
}

/// A random transaction id.
pub fn new_tid() -> TransactionId {
    rand::random()
}
