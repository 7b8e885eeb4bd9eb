//! TURN keys (tenants): one JSON file per key in `<data_dir>/keys/`, `0600`.
//!
//! A key file `<id>.json` holds `{"id", "token_sha256", "max_ttl", "monthly_bandwidth_bytes",
//! "created"}`: the token itself is shown once by [`KeyStore::create`] and never stored (except for
//! the embedded default key, whose token is written to `<id>.token`, `0600`, so the operator can
//! read it). Only the SHA-256 of a token is held in memory and compared in constant time.
//!
//! A running server sees keys created or deleted by another process (`turnkey keys create`):
//! every authentication stats the key's file and re-reads it when its mtime or size changed; a
//! token that matches no known key triggers a rescan when the directory changed since the last
//! one (so a new key's token on another key's path is recognised: 403, not 401); and
//! [`KeyStore::reload`] rescans the whole directory.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;
use crate::files::{create_private_dir, hex, unhex32, write_private};

/// What is known about a key (never its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    /// 32 lowercase hex characters.
    pub id: String,
    /// Lowers the issuer's `max_ttl` for this key.
    #[serde(default)]
    pub max_ttl: Option<u64>,
    /// Monthly relayed-bytes cap (enforced by the bandwidth accounting; stored here).
    #[serde(default)]
    pub monthly_bandwidth_bytes: Option<u64>,
    /// Creation time, Unix seconds.
    #[serde(default)]
    pub created: u64,
    /// An operator key: its token sees every key's live sessions (`GET /v1/sessions`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// A freshly created key: the only moment its token is visible.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct NewKey {
    /// The key id.
    pub id: String,
    /// The API token (43 base64url characters, 256 random bits).
    pub token: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").field("id", &self.id).field("token", &"<redacted>").finish()
    }
}

/// The key the embedded default uses, as [`ensure_default_key`] found or created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultKey {
    /// The key id.
    pub id: String,
    /// Where its token is (`<data_dir>/keys/<id>.token`), when that file exists.
    pub token_path: Option<PathBuf>,
    /// Whether it was created by this call.
    pub created: bool,
}

/// Options for a new key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// See [`KeyInfo::max_ttl`].
    pub max_ttl: Option<u64>,
    /// See [`KeyInfo::monthly_bandwidth_bytes`].
    pub monthly_bandwidth_bytes: Option<u64>,
    /// See [`KeyInfo::admin`].
    pub admin: bool,
}

/// Outcome of checking a bearer token against a key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token belongs to the key.
    Valid(KeyInfo),
    /// The token belongs to another existing key.
    OtherKey,
    /// The token belongs to no key, or the key does not exist.
    Invalid,
}

/// A key as the fleet shares it: what is known about it and the SHA-256 of its token (64
/// lowercase hex characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    /// The key.
    pub info: KeyInfo,
    /// SHA-256 of its token, hex.
    pub token_sha256: String,
}

/// The key directory and an in-memory cache of it, or (fleet mode, [`KeyStore::shared`]) a copy
/// of the fleet's keys replaced as a whole by the binary. Cloning shares the cache.
#[derive(Debug, Clone)]
pub struct KeyStore {
    /// `None`: shared (fleet) keys, no directory.
    dir: Option<PathBuf>,
    cache: Arc<RwLock<HashMap<String, Cached>>>,
    /// The directory's mtime at the last full scan.
    dir_stamp: Arc<Mutex<Option<SystemTime>>>,
}

/// Whether `hash` is the token hash of any cached key. The hash of a 256-bit random token
/// reveals nothing useful through timing, and the loop visits every key regardless.
fn belongs_to_any(cache: &HashMap<String, Cached>, hash: &[u8; 32]) -> bool {
    let mut any = false;
    for c in cache.values() {
        any |= bool::from(c.hash.ct_eq(hash));
    }
    any
}

#[derive(Debug, Clone)]
struct Cached {
    info: KeyInfo,
    hash: [u8; 32],
    stamp: (Option<SystemTime>, u64),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(flatten)]
    info: KeyInfo,
    token_sha256: String,
}

/// Whether `id` is a key id: the workspace's one rule ([`turnkey_types::KeyId`]: 1-64 characters
/// of `A-Z a-z 0-9 . _ -`; the 32 hex characters this crate generates are one case).
pub fn is_valid_key_id(id: &str) -> bool {
    turnkey_types::KeyId::is_valid(id)
}

/// Creates the embedded default key on first start (no key in `<data_dir>/keys/`), writing its
/// token to `<data_dir>/keys/<id>.token` (0600). On later starts returns the oldest key that has a
/// token file, else the oldest key.
pub fn ensure_default_key(data_dir: &Path, now_unix: u64) -> Result<DefaultKey, Error> {
    let store = KeyStore::open(data_dir)?;
    let mut keys = store.list()?;
    if keys.is_empty() {
        let new = store.create(KeyOptions::default(), now_unix)?;
        let path = store.token_path(&new.id);
        write_private(&path, format!("{}\n", new.token).as_bytes())?;
        return Ok(DefaultKey { id: new.id, token_path: Some(path), created: true });
    }
    keys.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    let with_token = keys.iter().find(|k| store.token_path(&k.id).exists());
    let (key, token_path) = match with_token {
        Some(k) => (k, Some(store.token_path(&k.id))),
        None => (&keys[0], None),
    };
    Ok(DefaultKey { id: key.id.clone(), token_path, created: false })
}

impl KeyStore {
    /// Opens (creating it, 0700) `<data_dir>/keys/` and loads every key.
    pub fn open(data_dir: &Path) -> Result<Self, Error> {
        let dir = data_dir.join("keys");
        create_private_dir(&dir)?;
        let store = Self { dir: Some(dir), cache: Arc::default(), dir_stamp: Arc::default() };
        store.reload()?;
        Ok(store)
    }

    /// An empty store of shared (fleet) keys, filled by [`KeyStore::replace_all`]; it reads no
    /// directory and cannot create or delete keys (the binary does that in the fleet).
    pub fn shared() -> Self {
        Self { dir: None, cache: Arc::default(), dir_stamp: Arc::default() }
    }

    /// Replaces every key of a shared store (the fleet's current keys). Keys with a malformed
    /// hash or id are skipped with a warning.
    pub fn replace_all(&self, keys: Vec<SharedKey>) {
        let mut fresh = HashMap::with_capacity(keys.len());
        for k in keys {
            match unhex32(&k.token_sha256).filter(|_| is_valid_key_id(&k.info.id)) {
                Some(hash) => {
                    fresh.insert(k.info.id.clone(), Cached { info: k.info, hash, stamp: (None, 0) });
                }
                None => tracing::warn!(key = %k.info.id, "skipping a malformed shared key"),
            }
        }
        *self.write_cache() = fresh;
    }

    /// A new key's id, token and record (with the token's SHA-256, hex), stored nowhere yet:
    /// [`KeyStore::create`] writes it to the directory, the binary to the fleet.
    pub fn generate(opts: KeyOptions, now_unix: u64) -> (NewKey, SharedKey) {
        let mut rng = rand::thread_rng();
        let mut id_bytes = [0u8; 16];
        rng.fill_bytes(&mut id_bytes);
        let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut token_bytes = [0u8; 32];
        rng.fill_bytes(&mut token_bytes);
        let token = URL_SAFE_NO_PAD.encode(token_bytes);
        let info = KeyInfo {
            id: id.clone(),
            max_ttl: opts.max_ttl,
            monthly_bandwidth_bytes: opts.monthly_bandwidth_bytes,
            created: now_unix,
            admin: opts.admin,
        };
        let shared = SharedKey { info, token_sha256: hex(&token_hash(&token)) };
        (NewKey { id, token }, shared)
    }

    /// Creates a key; the returned token is shown once and only its hash is stored.
    pub fn create(&self, opts: KeyOptions, now_unix: u64) -> Result<NewKey, Error> {
        if self.dir.is_none() {
            return Err(Error::SharedKeys);
        }
        let (new, shared) = Self::generate(opts, now_unix);
        let file = KeyFile { info: shared.info, token_sha256: shared.token_sha256 };
        let id = new.id.clone();
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Malformed { path: id.clone(), message: e.to_string() })?;
        write_private(&self.key_path(&id), &json)?;
        self.refresh(&id)?;
        Ok(new)
    }

    /// The oldest key (by creation time, then id): the app endpoints' key in fleet mode when
    /// none is configured, the same on every issuer.
    pub fn oldest(&self) -> Option<KeyInfo> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.values().map(|c| &c.info).min_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id))).cloned()
    }

    /// The key `token` belongs to, if any (bearer check of endpoints that name no key).
    pub fn check_any(&self, token: &str) -> Option<KeyInfo> {
        let hash = token_hash(token);
        if self.dir_changed() {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "key directory rescan failed");
            }
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for c in cache.values() {
            if bool::from(c.hash.ct_eq(&hash)) {
                found = Some(c.info.clone());
            }
        }
        found
    }

    /// Every key, sorted by id (rescans the directory first).
    pub fn list(&self) -> Result<Vec<KeyInfo>, Error> {
        self.reload()?;
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<KeyInfo> = cache.values().map(|c| c.info.clone()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// Deletes a key (and its token file, if any). `Err(NoSuchKey)` when it does not exist.
    pub fn delete(&self, id: &str) -> Result<(), Error> {
        if self.dir.is_none() {
            return Err(Error::SharedKeys);
        }
        if !is_valid_key_id(id) {
            return Err(Error::InvalidKeyId);
        }
        let path = self.key_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoSuchKey(id.to_owned())),
            Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
        }
        let _ = fs::remove_file(self.token_path(id));
        self.write_cache().remove(id);
        Ok(())
    }

    /// Rescans the directory: new and changed key files are (re)read, vanished ones dropped.
    /// A malformed key file is skipped with a warning (it must not take the other keys down).
    pub fn reload(&self) -> Result<(), Error> {
        let Some(dir) = &self.dir else { return Ok(()) };
        // Stamp first: a change during the scan makes the next check rescan again.
        *self.dir_stamp.lock().unwrap_or_else(|p| p.into_inner()) = fs::metadata(dir).and_then(|m| m.modified()).ok();
        let rd = fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let mut seen = Vec::new();
        for entry in rd.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !is_valid_key_id(id) {
                continue;
            }
            seen.push(id.to_owned());
            if let Err(e) = self.refresh(id) {
                tracing::warn!(key = id, error = %e, "skipping unreadable key file");
            }
        }
        self.write_cache().retain(|id, _| seen.contains(id));
        Ok(())
    }

    /// Checks `token` against key `id`, picking up changes to that key's file first.
    pub fn check_token(&self, id: &str, token: &str) -> TokenCheck {
        let hash = token_hash(token);
        if is_valid_key_id(id) {
            if let Err(e) = self.refresh(id) {
                tracing::warn!(key = id, error = %e, "cannot read key file");
            }
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(id) {
            if bool::from(c.hash.ct_eq(&hash)) {
                return TokenCheck::Valid(c.info.clone());
            }
        }
        if belongs_to_any(&cache, &hash) {
            return TokenCheck::OtherKey;
        }
        drop(cache);
        // A key created by another process (`turnkey keys create`) since the last scan: rescan,
        // but only when the directory changed, so unknown tokens cost one stat.
        if self.dir_changed() {
            if let Err(e) = self.reload() {
                tracing::warn!(error = %e, "key directory rescan failed");
            }
            if belongs_to_any(&self.cache.read().unwrap_or_else(|p| p.into_inner()), &hash) {
                return TokenCheck::OtherKey;
            }
        }
        TokenCheck::Invalid
    }

    /// Whether the directory's mtime differs from the one seen by the last [`KeyStore::reload`].
    fn dir_changed(&self) -> bool {
        let Some(dir) = &self.dir else { return false };
        let now = fs::metadata(dir).and_then(|m| m.modified()).ok();
        *self.dir_stamp.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Whether key `id` exists (as of its file now).
    pub fn get(&self, id: &str) -> Option<KeyInfo> {
        if !is_valid_key_id(id) {
            return None;
        }
        let _ = self.refresh(id);
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.get(id).map(|c| c.info.clone())
    }

    /// The token file of the embedded default key.
    pub fn token_path(&self, id: &str) -> PathBuf {
        self.dir.as_deref().unwrap_or(Path::new("")).join(format!("{id}.token"))
    }

    fn key_path(&self, id: &str) -> PathBuf {
        self.dir.as_deref().unwrap_or(Path::new("")).join(format!("{id}.json"))
    }

    fn write_cache(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Cached>> {
        self.cache.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads one key file if its mtime or size changed; forgets the key if the file is gone.
    fn refresh(&self, id: &str) -> Result<(), Error> {
        if self.dir.is_none() {
            return Ok(());
        }
        let path = self.key_path(id);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.write_cache().remove(id);
                return Ok(());
            }
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        let stamp = (meta.modified().ok(), meta.len());
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            if cache.get(id).is_some_and(|c| c.stamp == stamp) {
                return Ok(());
            }
        }
        let malformed = |message: String| Error::Malformed { path: path.display().to_string(), message };
        let bytes = fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let file: KeyFile = serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if file.info.id != id {
            return Err(malformed("id does not match the file name".into()));
        }
        let hash =
            unhex32(&file.token_sha256).ok_or_else(|| malformed("token_sha256 is not 64 hex characters".into()))?;
        self.write_cache().insert(id.to_owned(), Cached { info: file.info, hash, stamp });
        Ok(())
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The operator token of `[issuer] admin_token_file`: only its SHA-256 is held.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The shortest operator token accepted (a guessable token would open every tenant's data).
    pub const MIN_LEN: usize = 16;

    /// Reads the token from `path` (surrounding whitespace trimmed).
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let token = text.trim();
        if token.len() < Self::MIN_LEN || token.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "admin_token_file {}: the token must be at least {} characters without spaces",
                path.display(),
                Self::MIN_LEN
            )));
        }
        Ok(Self(token_hash(token)))
    }

    /// Whether `token` is the operator token (constant time).
    pub fn matches(&self, token: &str) -> bool {
        bool::from(self.0.ct_eq(&token_hash(token)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_are_read_trimmed_and_short_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(&p, "  a-long-enough-operator-token \n").unwrap();
        let t = AdminToken::read(&p).unwrap();
        assert!(t.matches("a-long-enough-operator-token"));
        assert!(!t.matches("a-long-enough-operator-toke"));
        assert!(!format!("{t:?}").contains("operator"));
        fs::write(&p, "short").unwrap();
        assert!(matches!(AdminToken::read(&p), Err(Error::Config(_))));
        assert!(matches!(AdminToken::read(&dir.path().join("missing")), Err(Error::Io { .. })));
    }

    #[test]
    fn create_check_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let a = store.create(KeyOptions::default(), 1).unwrap();
        let b = store.create(KeyOptions::default(), 2).unwrap();
        assert!(is_valid_key_id(&a.id));
        assert!(a.token.len() >= 43);
        assert!(matches!(store.check_token(&a.id, &a.token), TokenCheck::Valid(_)));
        assert_eq!(store.check_token(&a.id, &b.token), TokenCheck::OtherKey);
        assert_eq!(store.check_token(&a.id, "nope"), TokenCheck::Invalid);
        assert_eq!(store.check_token("zz", &a.token), TokenCheck::OtherKey);
        // The token is not on disk.
        let on_disk = fs::read_to_string(dir.path().join("keys").join(format!("{}.json", a.id))).unwrap();
        assert!(!on_disk.contains(&a.token));
        store.delete(&a.id).unwrap();
        assert_eq!(store.check_token(&a.id, &a.token), TokenCheck::Invalid);
        assert!(matches!(store.delete(&a.id), Err(Error::NoSuchKey(_))));
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = ensure_default_key(dir.path(), 5).unwrap();
        assert!(d.created);
        let token_path = d.token_path.clone().unwrap();
        let mode = fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_file = dir.path().join("keys").join(format!("{}.json", d.id));
        assert_eq!(fs::metadata(key_file).unwrap().permissions().mode() & 0o777, 0o600);
        // Second start: same key, not created again.
        let again = ensure_default_key(dir.path(), 6).unwrap();
        assert_eq!(again.id, d.id);
        assert!(!again.created);
        let token = fs::read_to_string(token_path).unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert!(matches!(store.check_token(&d.id, token.trim()), TokenCheck::Valid(_)));
    }

    #[test]
    fn another_process_creating_and_deleting_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let running = KeyStore::open(dir.path()).unwrap();
        let cli = KeyStore::open(dir.path()).unwrap();
        let k = cli.create(KeyOptions::default(), 1).unwrap();
        assert!(matches!(running.check_token(&k.id, &k.token), TokenCheck::Valid(_)));
        // A key the running store has never looked at: its token on another key's path is that
        // other key's token (403), not an unknown one (401).
        let a = running.create(KeyOptions::default(), 1).unwrap();
        let b = cli.create(KeyOptions::default(), 2).unwrap();
        assert_eq!(running.check_token(&a.id, &b.token), TokenCheck::OtherKey);
        assert_eq!(running.check_token(&a.id, "unknown"), TokenCheck::Invalid);
        cli.delete(&k.id).unwrap();
        assert_eq!(running.check_token(&k.id, &k.token), TokenCheck::Invalid);
        // A malformed file is skipped, not fatal.
        fs::write(dir.path().join("keys").join(format!("{}.json", "a".repeat(32))), "{").unwrap();
        running.reload().unwrap();
        assert_eq!(running.list().unwrap().len(), 2);
    }
}
