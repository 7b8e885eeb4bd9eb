//! Persistence of the shared [`RevocationSet`] in `<data_dir>/revocations.json`.
//!
//! The file is `{"revoked": [{"username": "...", "expiry": <unix>}]}`, rewritten atomically
//! (temp file + rename, 0600) after every revocation. At start it is loaded into the set the relay
//! consults, dropping entries whose credential has expired anyway.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use turnkey_auth::{RevocationSet, UnixTime};

use crate::error::Error;
use crate::files::write_private;

/// The shared revocation set plus its file.
#[derive(Debug)]
pub struct RevocationStore {
    set: RevocationSet,
    path: PathBuf,
    max_entries: usize,
    write_lock: Mutex<()>,
}

/// What [`RevocationStore::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Newly revoked.
    New,
    /// Was already revoked.
    Already,
    /// The credential has already expired; nothing to keep.
    AlreadyExpired,
    /// The set holds `max_entries`; nothing was added.
    Full,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    revoked: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    username: String,
    expiry: u64,
}

impl RevocationStore {
    /// Loads `<data_dir>/revocations.json` (if present) into `set`, dropping entries expired at
    /// `now`. A missing file is an empty list; a malformed one is an error (refusing to start is
    /// safer than silently un-revoking credentials).
    pub fn load(data_dir: &Path, set: RevocationSet, now: UnixTime, max_entries: usize) -> Result<Self, Error> {
        let path = data_dir.join("revocations.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: File = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::Malformed { path: path.display().to_string(), message: e.to_string() })?;
                for e in file.revoked {
                    if e.expiry > now.0 {
                        set.revoke(&e.username, UnixTime(e.expiry));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        set.purge_expired(now);
        Ok(Self { set, path, max_entries, write_lock: Mutex::new(()) })
    }

    /// The shared set (the relay holds a clone).
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// Revokes `username` until `expiry` and persists the list. Expired entries are purged first.
    pub fn revoke(&self, username: &str, expiry: UnixTime, now: UnixTime) -> Result<Revoked, Error> {
        if expiry <= now {
            return Ok(Revoked::AlreadyExpired);
        }
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.set.purge_expired(now);
        if self.set.is_revoked(username) {
            return Ok(Revoked::Already);
        }
        if self.set.len() >= self.max_entries {
            return Ok(Revoked::Full);
        }
        self.set.revoke(username, expiry);
        self.persist_locked()?;
        Ok(Revoked::New)
    }

    /// Drops expired entries and rewrites the file if any were dropped.
    pub fn purge(&self, now: UnixTime) -> Result<usize, Error> {
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.set.purge_expired(now);
        if n > 0 {
            self.persist_locked()?;
        }
        Ok(n)
    }

    fn persist_locked(&self) -> Result<(), Error> {
        let mut revoked: Vec<Entry> =
            self.set.snapshot().into_iter().map(|(username, e)| Entry { username, expiry: e.0 }).collect();
        revoked.sort_by(|a, b| a.username.cmp(&b.username));
        let bytes = serde_json::to_vec(&File { revoked })
            .map_err(|e| Error::Malformed { path: self.path.display().to_string(), message: e.to_string() })?;
        write_private(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_restart_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(100), 10).unwrap();
        assert_eq!(s.revoke("200:a", UnixTime(200), UnixTime(100)).unwrap(), Revoked::New);
        assert_eq!(s.revoke("200:a", UnixTime(200), UnixTime(100)).unwrap(), Revoked::Already);
        assert_eq!(s.revoke("300:b", UnixTime(300), UnixTime(100)).unwrap(), Revoked::New);
        assert_eq!(s.revoke("50:c", UnixTime(50), UnixTime(100)).unwrap(), Revoked::AlreadyExpired);
        // Restart at t=250: "200:a" has expired and is dropped, "300:b" is still revoked.
        let set = RevocationSet::new();
        let s2 = RevocationStore::load(dir.path(), set.clone(), UnixTime(250), 10).unwrap();
        assert!(set.is_revoked("300:b"));
        assert!(!set.is_revoked("200:a"));
        assert_eq!(s2.set().len(), 1);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn bounded_and_malformed_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 1).unwrap();
        assert_eq!(s.revoke("9:a", UnixTime(9), UnixTime(0)).unwrap(), Revoked::New);
        assert_eq!(s.revoke("9:b", UnixTime(9), UnixTime(0)).unwrap(), Revoked::Full);
        std::fs::write(dir.path().join("revocations.json"), "{nope").unwrap();
        assert!(RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 1).is_err());
    }
}
