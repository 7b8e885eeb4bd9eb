//! TLS handshakes off the shard thread. A handshake's key exchange and signature cost as much CPU
//! as hundreds of relayed datagrams (an RSA-2048 signature alone is about a millisecond), and a
//! shard that ran them would leave its sockets unread meanwhile: a reconnect storm over TLS would
//! stall every allocation of the shard, UDP ones included. So the shard hands each accepted TLS
//! socket to the handshake runtime (the relay's control runtime, whose threads run below the
//! shards), which runs the handshake and hands the socket and its TLS session back; the shard then
//! serves the connection as any other. Moving a socket between runtimes is a deregistration from
//! one reactor and a registration with the other (`into_std`, `from_std`); the TLS session, and
//! whatever it already read past the handshake, moves with it.
//!
//! Dropping the handshake (its deadline passed, the shard stopped) aborts the job there, which
//! closes the socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::tls::TlsConfigs;

/// A TLS connection whose handshake ran on the handshake runtime, served by a shard.
pub(crate) type TlsConn = tokio_rustls::server::TlsStream<Movable>;

/// A TCP stream that can leave its TLS session for another runtime and come back: while it is
/// away, reads and writes fail with `NotConnected` (nothing uses the session then).
#[derive(Debug)]
pub(crate) struct Movable(Option<TcpStream>);

impl Movable {
    fn take(&mut self) -> io::Result<TcpStream> {
        self.0.take().ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    fn inner(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.0.as_mut().map(Pin::new).ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Movable {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Movable {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Aborts the job when dropped (a handshake given up by the shard).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the TLS handshake of `tcp` (accepted by the calling shard) on `on`, with the
/// configuration `configs` picks for its ClientHello, and returns the connection registered with
/// the calling runtime again.
pub(crate) async fn accept_tls(on: &Handle, tcp: TcpStream, configs: &TlsConfigs) -> io::Result<TlsConn> {
    let std = tcp.into_std()?;
    let configs = configs.clone();
    let mut job = AbortOnDrop(on.spawn(async move {
        let tcp = TcpStream::from_std(std)?;
        let start = tokio_rustls::LazyConfigAcceptor::new(Default::default(), Movable(Some(tcp))).await?;
        let config = configs.choose(&start.client_hello());
        let mut conn = start.into_stream(config).await?;
        let tcp = conn.get_mut().0.take()?;
        Ok::<_, io::Error>((conn, tcp.into_std()?))
    }));
    let (mut conn, std) = (&mut job.0).await.map_err(io::Error::other)??;
    conn.get_mut().0 .0 = Some(TcpStream::from_std(std)?);
    Ok(conn)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::future::Future as _;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;

    /// A relay's side of a test: the handshake runtime (`control`), a shard's runtime, and a
    /// listener on the shard.
    struct Sides {
        control: tokio::runtime::Runtime,
        shard: tokio::runtime::Runtime,
        listener: tokio::net::TcpListener,
    }

    fn sides() -> Sides {
        let control = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shard = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = shard.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        Sides { control, shard, listener }
    }

    fn configs_and_roots() -> (TlsConfigs, rustls::RootCertStore) {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.key_pair.serialize_pem()).unwrap();
        let resolver = crate::tls::CertResolver::load(&c, &k).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ck.cert.der().clone()).unwrap();
        (TlsConfigs::new(resolver).unwrap(), roots)
    }

    /// The handshake completes while the shard's thread is blocked: it ran on the other runtime.
    /// Then the connection, back on the shard, carries data both ways (what the client sent
    /// right after its handshake included).
    #[test]
    fn the_handshake_runs_elsewhere_and_the_connection_comes_back_whole() {
        let (configs, roots) = configs_and_roots();
        let Sides { control, shard, listener } = sides();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        // The client, on a runtime of its own: handshakes, says so, then sends at once.
        let client = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.unwrap();
                done_tx.send(()).unwrap();
                tls.write_all(b"allocate, please").await.unwrap();
                let mut back = [0u8; 5];
                tls.read_exact(&mut back).await.unwrap();
                back
            })
        });
        let (tcp, _) = shard.block_on(listener.accept()).unwrap();
        let mut accept = Box::pin(accept_tls(control.handle(), tcp, &configs));
        // One poll on the shard hands the socket over; then the shard's thread blocks.
        shard.block_on(std::future::poll_fn(|cx| {
            assert!(accept.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        }));
        done_rx.recv_timeout(Duration::from_secs(10)).expect("the handshake completed without the shard's thread");
        let mut conn = shard.block_on(accept).unwrap();
        assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
        let mut got = [0u8; 16];
        shard.block_on(conn.read_exact(&mut got)).unwrap();
        assert_eq!(&got, b"allocate, please");
        shard.block_on(conn.write_all(b"ok 01")).unwrap();
        shard.block_on(conn.flush()).unwrap();
        assert_eq!(&client.join().unwrap(), b"ok 01");
    }

    /// A handshake given up on the shard (its deadline passed) ends on the other runtime too: the
    /// client sees its connection closed.
    #[test]
    fn a_dropped_handshake_closes_the_socket() {
        let (configs, _) = configs_and_roots();
        let Sides { control, shard, listener } = sides();
        let addr = listener.local_addr().unwrap();
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        let (tcp, _) = shard.block_on(listener.accept()).unwrap();
        let r = shard.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), accept_tls(control.handle(), tcp, &configs)).await
        });
        assert!(r.is_err(), "a client that sends nothing never completes a handshake");
        silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        let n = std::io::Read::read(&mut silent, &mut buf).unwrap();
        assert_eq!(n, 0, "closed by the relay");
    }
}
