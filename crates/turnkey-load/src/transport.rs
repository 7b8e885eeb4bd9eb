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

use crate::args::TransportKind;
use crate::framing::StreamBuf;
use crate::LoadError;

/// Where and how to connect: the server address, the transport, and for TLS the connector and
/// the name to verify.
#[derive(Clone)]
pub struct Target {
    /// The server's address.
    pub server: SocketAddr,
    /// The transport.
    pub kind: TransportKind,
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
        kind: TransportKind,
        sni: &str,
        insecure: bool,
        ca: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let tls = match kind {
            TransportKind::Tls => Some((tls_connector(insecure, ca)?, server_name(sni)?)),
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
            (TransportKind::Udp, _) => {
                let bind: SocketAddr = if self.server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = UdpSocket::bind(bind).await.map_err(io_err("bind UDP"))?;
                sock.connect(self.server).await.map_err(io_err("connect UDP"))?;
                let sock = Arc::new(sock);
                Ok((Tx::Udp(sock.clone()), Rx::Udp(sock, vec![0u8; 65_536].into_boxed_slice())))
            }
            (TransportKind::Tcp, _) => {
                let s = TcpStream::connect(self.server).await.map_err(io_err("connect TCP"))?;
                s.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
                let (r, w) = s.into_split();
                Ok((Tx::Stream(Box::new(w)), Rx::Stream(Box::new(r), StreamBuf::new())))
            }
            (TransportKind::Tls, Some((connector, name))) => {
                let s = TcpStream::connect(self.server).await.map_err(io_err("connect TCP"))?;
                s.set_nodelay(true).map_err(io_err("TCP_NODELAY"))?;
                let tls = connector.connect(name.clone(), s).await.map_err(|e| LoadError::Tls(e.to_string()))?;
                let (r, w) = tokio::io::split(tls);
                Ok((Tx::Stream(Box::new(w)), Rx::Stream(Box::new(r), StreamBuf::new())))
            }
            (TransportKind::Tls, None) => Err(LoadError::Tls("no TLS configuration".into())),
        }
    }
}

/// The sending half of a connection.
pub enum Tx {
    /// A connected UDP socket.
    Udp(Arc<UdpSocket>),
    /// The write half of a TCP or TLS stream.
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
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
            Tx::Udp(s) => s.send(frame).await.map(|_| ()),
            Tx::Stream(w) => w.write_all(frame).await,
        }
    }

    /// Whether the transport is a stream (ChannelData must then be padded).
    pub fn is_stream(&self) -> bool {
        matches!(self, Tx::Stream(_))
    }
}

/// The receiving half of a connection.
pub enum Rx {
    /// A connected UDP socket and its datagram buffer.
    Udp(Arc<UdpSocket>, Box<[u8]>),
    /// The read half of a TCP or TLS stream and its framing buffer.
    Stream(Box<dyn AsyncRead + Send + Unpin>, StreamBuf),
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
            Rx::Udp(s, buf) => {
                let n = s.recv(buf).await?;
                Ok(&buf[..n])
            }
            Rx::Stream(r, sb) => loop {
                match sb.next_frame() {
                    Ok(Some(range)) => return Ok(sb.slice(range)),
                    Ok(None) => {}
                    Err(e) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unframeable stream: {e:?}")))
                    }
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
