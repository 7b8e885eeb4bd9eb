//! TLS for TURN over TLS (RFC 8656 §3.1, RFC 7443): rustls with the ring provider, TLS 1.2 and
//! 1.3, ALPN `stun.turn`, and a certificate that is reloaded without restart.
//!
//! [`CertResolver`] holds the current certificate behind a lock read once per handshake; it
//! re-reads the PEM files when their contents change
//! ([`CertResolver::reload_if_changed`], polled by [`CertResolver::watch`]) or when asked
//! ([`CertResolver::reload`], which the binary calls on SIGHUP). A file that fails to load keeps
//! the previous certificate in service (and is retried on the next poll).

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[allow(clippy::disallowed_types, reason = "reload bookkeeping: locked on a reload check, never per packet")]
use std::sync::Mutex;
#[allow(clippy::disallowed_types, reason = "the certificate: swapped on reload, read once per handshake")]
use std::sync::RwLock;
use std::time::Duration;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{version, ServerConfig};

use crate::RelayError;

/// The ALPN protocol id of TURN (RFC 7443).
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";
/// How often [`CertResolver::watch`] looks at the files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// A digest of a file's contents (`None`: unreadable). Contents, not modification times: a
/// replacement within the file system's timestamp granularity, of the same size, is still seen.
type Stamp = Option<u64>;

/// The relay's certificate, reloadable at run time.
#[derive(Debug)]
#[allow(clippy::disallowed_types, reason = "reload bookkeeping: locked on a reload check, never per packet")]
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Stamp, Stamp)>,
}

fn stamp(p: &Path) -> Stamp {
    use std::hash::{Hash as _, Hasher as _};
    let bytes = std::fs::read(p).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn tls_err(path: &Path, what: impl std::fmt::Display) -> RelayError {
    RelayError::Tls(format!("{}: {what}", path.display()))
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, RelayError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert, e))?;
    if chain.is_empty() {
        return Err(tls_err(cert, "no CERTIFICATE in the file"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| tls_err(key, e))
}

impl CertResolver {
    /// Loads the certificate chain and key (PEM); fails if either is unreadable or they mismatch.
    #[allow(clippy::disallowed_types, reason = "reload bookkeeping: locked on a reload check, never per packet")]
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>, RelayError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let seen = (stamp(&cert_path), stamp(&key_path));
        let ck = load_certified_key(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(Self { cert_path, key_path, provider, current: RwLock::new(Arc::new(ck)), seen: Mutex::new(seen) }))
    }

    /// Re-reads the files now; on error the previous certificate stays in service.
    pub fn reload(&self) -> Result<(), RelayError> {
        let seen = (stamp(&self.cert_path), stamp(&self.key_path));
        let ck = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(())
    }

    /// Reloads if either file's contents changed since the last load.
    /// `Ok(true)` when a new certificate is in service.
    pub fn reload_if_changed(&self) -> Result<bool, RelayError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// The certificate in service.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Polls the files every `interval` and reloads them when they change (runs forever).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be loaded; keeping the old one")
                }
            }
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The two server configurations: one selecting ALPN `stun.turn`, for clients that offer it (or
/// offer nothing), and one without ALPN for clients offering only other protocols (rustls would
/// otherwise abort their handshake; coturn likewise continues without ALPN).
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
}

impl TlsConfigs {
    /// TLS 1.2 and 1.3 server configurations serving `resolver`'s certificate.
    pub fn new(resolver: Arc<CertResolver>) -> Result<Self, RelayError> {
        let build = |alpn: bool| -> Result<Arc<ServerConfig>, RelayError> {
            let mut c = ServerConfig::builder_with_provider(resolver.provider.clone())
                .with_protocol_versions(&[&version::TLS13, &version::TLS12])
                .map_err(|e| RelayError::Tls(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            if alpn {
                c.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
            }
            Ok(Arc::new(c))
        };
        Ok(Self { with_alpn: build(true)?, without_alpn: build(false)? })
    }

    /// The configuration for a client that sent `hello`.
    pub fn choose(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        let offers_other = hello.alpn().is_some_and(|mut offered| !offered.any(|p| p == ALPN_STUN_TURN));
        if offers_other {
            self.without_alpn.clone()
        } else {
            self.with_alpn.clone()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        // Write via rename, as certificate tools do.
        std::fs::write(dir.join("c.tmp"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("k.tmp"), ck.key_pair.serialize_pem()).unwrap();
        std::fs::rename(dir.join("c.tmp"), &c).unwrap();
        std::fs::rename(dir.join("k.tmp"), &k).unwrap();
        (c, k, ck.cert.der().to_vec())
    }

    fn served(r: &CertResolver) -> Vec<u8> {
        r.current().cert[0].to_vec()
    }

    #[test]
    fn loads_and_reloads_when_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, first) = write_pair(dir.path(), "one.example");
        let r = CertResolver::load(&c, &k).unwrap();
        assert_eq!(served(&r), first);
        assert!(!r.reload_if_changed().unwrap(), "unchanged files are not reloaded");
        let (_, _, second) = write_pair(dir.path(), "two.example");
        assert_ne!(first, second);
        assert!(r.reload_if_changed().unwrap());
        assert_eq!(served(&r), second);
        assert!(!r.reload_if_changed().unwrap());
    }

    #[test]
    fn a_broken_update_keeps_the_old_certificate_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, first) = write_pair(dir.path(), "one.example");
        let r = CertResolver::load(&c, &k).unwrap();
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(r.reload_if_changed().is_err());
        assert_eq!(served(&r), first);
        // Still seen as changed: retried on the next poll, and works once the files are whole.
        assert!(r.reload_if_changed().is_err());
        let (_, _, third) = write_pair(dir.path(), "three.example");
        assert!(r.reload_if_changed().unwrap());
        assert_eq!(served(&r), third);
    }

    #[test]
    fn mismatched_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _, _) = write_pair(dir.path(), "one.example");
        let other = rcgen::KeyPair::generate().unwrap();
        let k2 = dir.path().join("other.pem");
        std::fs::write(&k2, other.serialize_pem()).unwrap();
        let err = CertResolver::load(&c, &k2).unwrap_err();
        assert!(err.to_string().contains("other.pem"), "{err}");
        assert!(CertResolver::load(dir.path().join("missing.pem"), &k2).is_err());
    }

    #[test]
    fn reload_without_change_swaps_in_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, first) = write_pair(dir.path(), "one.example");
        let r = CertResolver::load(&c, &k).unwrap();
        r.reload().unwrap();
        assert_eq!(served(&r), first);
        let configs = TlsConfigs::new(r).unwrap();
        assert_eq!(configs.with_alpn.alpn_protocols, vec![ALPN_STUN_TURN.to_vec()]);
        assert!(configs.without_alpn.alpn_protocols.is_empty());
    }
}
