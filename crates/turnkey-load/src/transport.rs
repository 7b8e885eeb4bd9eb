//! Connections to the TURN server over UDP, TCP and TLS, split into a sending and a receiving
//! half so the load loops can run them in separate tasks. Receiving yields whole frames (a
//! datagram, or one RFC 8656 §12 frame cut from the stream) borrowed from a reused buffer.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{self, CryptoProvider};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_rustls::TlsConnector;

use turnkey_batch::{Outgoing, UdpIo, MAX_GSO_BYTES, MAX_GSO_SEGMENT_V4, MAX_GSO_SEGMENT_V6};
use turnkey_types::Transport;

use crate::framing::StreamBuf;
use crate::rxstamp::{self, StampedBatch};
use crate::LoadError;

/// Where and how to connect: the server address, the transport, and for TLS the connector and
/// the name to verify.
#[derive(Clone)]
pub struct Target {
    /// The server's address.
    pub server: SocketAddr,
    /// The transport.
    pub kind: Transport,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("server", &self.server).field("kind", &self.kind).finish()
    }
}

impl Target {
    /// A target; for TLS, `insecure` accepts any certificate, else `ca` (PEM) or the web PKI
    /// roots verify it against `sni`.
    pub fn new(
        server: SocketAddr,
        kind: Transport,
        sni: &str,
        insecure: bool,
        ca: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let tls = match kind {
            Transport::Tls => Some((tls_connector(insecure, ca)?, server_name(sni)?)),
            _ => None,
        };
        Ok(Self { server, kind, tls })
    }

    /// The same transport and TLS settings towards another server; `sni` replaces the name to
    /// verify (TLS), else the current one is kept.
    pub fn with_server(&self, server: SocketAddr, sni: Option<&str>) -> Result<Self, LoadError> {
        let tls = match (&self.tls, sni) {
            (Some((connector, _)), Some(sni)) => Some((connector.clone(), server_name(sni)?)),
            (tls, _) => tls.clone(),
        };
        Ok(Self { server, kind: self.kind, tls })
    }

    /// Opens a new connection (a fresh UDP 5-tuple, or a TCP/TLS connection).
    pub async fn connect(&self) -> Result<(Tx, Rx), LoadError> {
        let io_err = |context: &str| {
            let context = context.to_string();
            move |source| LoadError::Io { context, source }
        };
        match (self.kind, &self.tls) {
            (Transport::Udp, _) => {
                let bind: SocketAddr = if self.server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(bind).await.map_err(io_err("bind UDP"))?;
                set_buffers(&sock);
                sock.connect(self.server).await.map_err(io_err("connect UDP"))?;
                let io = Arc::new(UdpIo::new(&sock).map_err(io_err("UDP offload"))?);
                rxstamp::enable(&sock).map_err(io_err("SO_TIMESTAMPNS"))?;
                let sock = Arc::new(sock);
                let tx = Tx::Udp(UdpTx { sock: sock.clone(), io, to: self.server });
                Ok((tx, Rx::Udp(UdpRx { sock, own: StampedBatch::new(1), next: 0 })))
            }
            (Transport::Tcp, _) => {
                let s = TcpStream::connect(self.server).await.map_err(io_err("connect TCP"))?;
                s.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
                let (r, w) = s.into_split();
                Ok((Tx::Stream(Box::new(w)), Rx::Stream(Box::new(r), StreamBuf::new())))
            }
            (Transport::Tls, Some((connector, name))) => {
                let s = TcpStream::connect(self.server).await.map_err(io_err("connect TCP"))?;
                s.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
                let tls = connector.connect(name.clone(), s).await.map_err(|e| LoadError::Tls(e.to_string()))?;
                let (r, w) = tokio::io::split(tls);
                Ok((Tx::Stream(Box::new(w)), Rx::Stream(Box::new(r), StreamBuf::new())))
            }
            (Transport::Tls, None) => Err(LoadError::Tls("no TLS configuration".into())),
        }
    }
}

/// The sending half of a connection.
pub enum Tx {
    /// A connected UDP socket, batched (GSO) through turnkey-batch.
    Udp(UdpTx),
    /// The write half of a TCP or TLS stream.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
}

/// A connected UDP socket's sending side.
#[derive(Debug)]
pub struct UdpTx {
    sock: Arc<UdpSocket>,
    io: Arc<UdpIo>,
    to: SocketAddr,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tx::Udp(_) => "Tx::Udp",
            Tx::Stream(_) => "Tx::Stream",
        })
    }
}

impl Tx {
    /// Sends one frame (a datagram, or bytes on the stream; the caller pads ChannelData).
    pub async fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match self {
            Tx::Udp(u) => u.sock.send(frame).await.map(|_| ()),
            Tx::Stream(w) => w.write_all(frame).await,
        }
    }

    /// Sends `count` frames of `size` bytes each, back to back in `frames`: over UDP as GSO
    /// trains (one `sendmsg` per up to 64 datagrams; one per datagram where GSO is missing or
    /// the frames are too large to be segments), on a stream with one write.
    pub async fn send_train(&mut self, frames: &[u8], size: usize) -> io::Result<()> {
        match self {
            Tx::Udp(u) => {
                let limit = if u.to.is_ipv4() { MAX_GSO_SEGMENT_V4 } else { MAX_GSO_SEGMENT_V6 };
                let segs =
                    if size == 0 || size > limit { 1 } else { u.io.max_gso_segments().min(MAX_GSO_BYTES / size) };
                for piece in frames.chunks(size.max(1) * segs.max(1)) {
                    let out = Outgoing {
                        to: u.to,
                        ecn: None,
                        contents: piece,
                        segment_size: (piece.len() > size).then_some(size),
                    };
                    loop {
                        u.sock.writable().await?;
                        match u.sock.try_io(tokio::io::Interest::WRITABLE, || u.io.send(&*u.sock, &out)) {
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            r => {
                                r?;
                                break;
                            }
                        }
                    }
                }
                Ok(())
            }
            Tx::Stream(w) => w.write_all(frames).await,
        }
    }

    /// The local address of a UDP connection (`None` on a stream).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Tx::Udp(u) => u.sock.local_addr().ok(),
            Tx::Stream(_) => None,
        }
    }

    /// Whether the transport is a stream (ChannelData must then be padded).
    pub fn is_stream(&self) -> bool {
        matches!(self, Tx::Stream(_))
    }
}

/// The receiving half of a connection.
pub enum Rx {
    /// A connected UDP socket (GRO on) and its own one-buffer batch for [`Rx::recv`].
    Udp(UdpRx),
    /// The read half of a TCP or TLS stream and its framing buffer.
    Stream(Box<dyn AsyncRead + Send + Unpin>, StreamBuf),
}

/// A connected UDP socket's receiving side (GRO on, every datagram stamped by the kernel on
/// arrival: [`rxstamp`]).
#[derive(Debug)]
pub struct UdpRx {
    sock: Arc<UdpSocket>,
    /// One 64 KiB buffer: a datagram, or a GRO train whose segments [`Rx::recv`] returns one
    /// by one (`next`: how many it returned).
    own: StampedBatch,
    next: usize,
}

thread_local! {
    /// The data path's receive buffers, one set per thread (never held across an await): one
    /// `recvmmsg` fills up to 32 of them, each a datagram or a GRO train.
    static BATCH: std::cell::RefCell<StampedBatch> = std::cell::RefCell::new(StampedBatch::new(rxstamp::MAX_SLOTS));
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rx::Udp(..) => "Rx::Udp",
            Rx::Stream(..) => "Rx::Stream",
        })
    }
}

impl Rx {
    /// Receives the next frame. Cancel-safe: a cancelled call loses no bytes.
    pub async fn recv(&mut self) -> io::Result<&[u8]> {
        match self {
            Rx::Udp(u) => {
                loop {
                    if u.own.datagrams().nth(u.next).is_some() {
                        break;
                    }
                    u.next = 0;
                    u.sock.readable().await?;
                    let epoch = std::time::Instant::now();
                    match u.sock.try_io(tokio::io::Interest::READABLE, || u.own.recv(&*u.sock, epoch)) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => r?,
                    };
                }
                u.next += 1;
                Ok(u.own.datagrams().nth(u.next - 1).map_or(&[][..], |(d, _)| d))
            }
            Rx::Stream(r, sb) => loop {
                match sb.next_frame() {
                    Ok(Some(range)) => return Ok(sb.slice(range)),
                    Ok(None) => {}
                    Err(e) => return Err(unframeable(e)),
                }
                let n = r.read(sb.spare()).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                sb.filled(n);
            },
        }
    }

    /// Waits for data and hands `f` every frame one receive brought, with its arrival time in
    /// nanoseconds since `epoch`: over UDP one `recvmmsg` (GRO trains split back into
    /// datagrams), each datagram at the time the kernel stamped it on arrival; on a stream one
    /// read (every whole frame in the buffer), at the time of the read. `f` runs synchronously;
    /// no buffer is allocated. Cancel-safe.
    pub async fn recv_each(&mut self, epoch: std::time::Instant, mut f: impl FnMut(&[u8], u64)) -> io::Result<()> {
        match self {
            Rx::Udp(u) => {
                // Segments left over from `recv` first (received before this call: their time
                // is not known against `epoch`, so now).
                let now = epoch.elapsed().as_nanos() as u64;
                let left: usize = u.own.datagrams().skip(u.next).map(|(d, _)| f(d, now)).count();
                u.next += left;
                if left > 0 {
                    return Ok(());
                }
                loop {
                    u.sock.readable().await?;
                    // A batch shorter than the buffers means the queue is empty: readiness is
                    // cleared with it (as the relay does), so the next datagram raises a new
                    // event and the `recvmmsg` that would only return `WouldBlock` is saved.
                    // (tokio keeps readiness that arrived meanwhile: nothing is missed.)
                    let mut got = 0;
                    let r = u.sock.try_io(tokio::io::Interest::READABLE, || {
                        BATCH.with(|b| {
                            let mut b = b.borrow_mut();
                            got = b.recv(&*u.sock, epoch)?;
                            b.datagrams().for_each(|(d, at)| f(d, at));
                            if got < b.slots() {
                                return Err(io::ErrorKind::WouldBlock.into());
                            }
                            Ok(())
                        })
                    });
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        r => return r,
                    }
                }
            }
            Rx::Stream(r, sb) => loop {
                let mut any = false;
                let now = epoch.elapsed().as_nanos() as u64;
                loop {
                    match sb.next_frame() {
                        Ok(Some(range)) => {
                            f(sb.slice(range), now);
                            any = true;
                        }
                        Ok(None) => break,
                        Err(e) => return Err(unframeable(e)),
                    }
                }
                if any {
                    return Ok(());
                }
                let n = r.read(sb.spare()).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                sb.filled(n);
            },
        }
    }
}

/// Socket buffers asked for on every UDP socket of the data path: a relay forwarding a burst
/// (GRO trains of up to 64 datagrams) must not overflow the generator's default 208 KiB, or the
/// run measures the generator's buffers instead of the server.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Best effort: the kernel caps both at `net.core.{r,w}mem_max`.
pub fn set_buffers(sock: &UdpSocket) {
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(UDP_SOCKET_BUFFER);
}

fn unframeable(e: impl std::fmt::Debug) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unframeable stream: {e:?}"))
}

fn server_name(sni: &str) -> Result<ServerName<'static>, LoadError> {
    ServerName::try_from(sni.to_string()).map_err(|e| LoadError::Args(format!("invalid TLS server name {sni:?}: {e}")))
}

fn tls_connector(insecure: bool, ca: Option<&Path>) -> Result<TlsConnector, LoadError> {
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LoadError::Tls(e.to_string()))?;
    let config = if insecure {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))).with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|source| LoadError::Io { context: format!("read CA file {}", path.display()), source })?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| LoadError::Tls(format!("CA file: {e}")))?;
                    roots.add(cert).map_err(|e| LoadError::Tls(format!("CA file: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(LoadError::Tls(format!("no certificate in {}", path.display())));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `--insecure`: accepts any certificate, still checking handshake signatures.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
