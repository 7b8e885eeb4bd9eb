//! Persistence of the shared [`RevocationSet`] in `<data_dir>/revocations.json`, and how it
//! reaches relays in other processes.
//!
//! The file is `{"revoked": [{"username": "...", "expiry": <unix>}]}`, rewritten atomically
//! (temp file + rename, 0600) after every revocation. At start it is loaded into the set the relay
//! consults, dropping entries whose credential has expired anyway.
//!
//! Several processes may share one data directory (`turnkey issuer` alone, relays started with
//! `turnkey serve --http off`). Every rewrite happens under an exclusive `flock` on
//! `revocations.lock` and first merges what the file holds, so no writer drops another's entries.
//! Relays hold a [`RevocationWatch`]: a shared `flock` on `revocations.watchers` for as long as they
//! run, and a poll of the file (inode, mtime, length) that merges new entries into their set. A
//! revocation is refused ([`Revoked::Unreachable`]) when no process holds that lock, since no relay
//! would ever see it. The kernel drops the lock when a relay exits, even on SIGKILL.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use turnkey_auth::{RevocationSet, UnixTime};

use crate::error::Error;
use crate::files::write_private;

/// The revocation list inside the data directory.
pub const REVOCATIONS_FILE: &str = "revocations.json";
/// Held (exclusive `flock`) while the list is rewritten.
const WRITE_LOCK_FILE: &str = "revocations.lock";
/// Held (shared `flock`) by every relay that watches the list.
const WATCHERS_FILE: &str = "revocations.watchers";
/// How often a relay looks at the list (see [`RevocationWatch::run`]).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// The shared revocation set plus its file.
#[derive(Debug)]
pub struct RevocationStore {
    set: RevocationSet,
    dir: PathBuf,
    path: PathBuf,
    max_entries: usize,
    write_lock: Mutex<()>,
    /// Whether revocations reach relays by another path than the watched file (fleet mode).
    other_delivery: bool,
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
    /// No relay watches this data directory's list, so the revocation could take effect
    /// nowhere; nothing was added.
    Unreachable,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    revoked: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    username: String,
    expiry: u64,
}

/// Reads the list at `path` into `set` (entries expired at `now` skipped); returns how many
/// entries were new to the set. A missing file is an empty list.
fn merge_file(path: &Path, set: &RevocationSet, now: UnixTime) -> Result<usize, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let file: FileShape = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Malformed { path: path.display().to_string(), message: e.to_string() })?;
    let mut new = 0;
    for e in file.revoked {
        if e.expiry > now.0 && !set.is_revoked(&e.username) {
            set.revoke(&e.username, UnixTime(e.expiry));
            new += 1;
        }
    }
    Ok(new)
}

fn open_lock_file(path: &Path) -> Result<File, Error> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

fn flock(file: &File, op: rustix::fs::FlockOperation, path: &Path) -> Result<bool, Error> {
    match rustix::fs::flock(file, op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::io(format!("locking {}", path.display()), e.into())),
    }
}

/// Whether some process (a relay) holds a [`RevocationWatch`] on `data_dir`.
pub fn relay_watches(data_dir: &Path) -> Result<bool, Error> {
    let path = data_dir.join(WATCHERS_FILE);
    let f = open_lock_file(&path)?;
    // An exclusive lock is granted only if nobody holds the shared one; released on close.
    Ok(!flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive, &path)?)
}

impl RevocationStore {
    /// Loads `<data_dir>/revocations.json` (if present) into `set`, dropping entries expired at
    /// `now`. A missing file is an empty list; a malformed one is an error (refusing to start is
    /// safer than silently un-revoking credentials).
    pub fn load(data_dir: &Path, set: RevocationSet, now: UnixTime, max_entries: usize) -> Result<Self, Error> {
        let path = data_dir.join(REVOCATIONS_FILE);
        merge_file(&path, &set, now)?;
        set.purge_expired(now);
        Ok(Self {
            set,
            dir: data_dir.to_path_buf(),
            path,
            max_entries,
            write_lock: Mutex::new(()),
            other_delivery: false,
        })
    }

    /// Revocations also reach relays another way (fleet mode publishes them through Redis), so
    /// a revocation is not refused when no relay watches this data directory's list.
    pub fn delivered_elsewhere(mut self) -> Self {
        self.other_delivery = true;
        self
    }

    /// The shared set (the relay holds a clone).
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// Revokes `username` until `expiry` and persists the list. Expired entries are purged first.
    /// Refused ([`Revoked::Unreachable`]) when no relay watches the list.
    pub fn revoke(&self, username: &str, expiry: UnixTime, now: UnixTime) -> Result<Revoked, Error> {
        if expiry <= now {
            return Ok(Revoked::AlreadyExpired);
        }
        let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let _file_lock = self.lock_file()?;
        merge_file(&self.path, &self.set, now)?;
        self.set.purge_expired(now);
        if self.set.is_revoked(username) {
            return Ok(Revoked::Already);
        }
        if self.set.len() >= self.max_entries {
            return Ok(Revoked::Full);
        }
        if !self.other_delivery && !relay_watches(&self.dir)? {
            return Ok(Revoked::Unreachable);
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
            let _file_lock = self.lock_file()?;
            merge_file(&self.path, &self.set, now)?;
            self.persist_locked()?;
        }
        Ok(n)
    }

    /// The exclusive lock every writer of the file takes (released when dropped).
    fn lock_file(&self) -> Result<File, Error> {
        let path = self.dir.join(WRITE_LOCK_FILE);
        let f = open_lock_file(&path)?;
        flock(&f, rustix::fs::FlockOperation::LockExclusive, &path)?;
        Ok(f)
    }

    fn persist_locked(&self) -> Result<(), Error> {
        let mut revoked: Vec<Entry> =
            self.set.snapshot().into_iter().map(|(username, e)| Entry { username, expiry: e.0 }).collect();
        revoked.sort_by(|a, b| a.username.cmp(&b.username));
        let bytes = serde_json::to_vec(&FileShape { revoked })
            .map_err(|e| Error::Malformed { path: self.path.display().to_string(), message: e.to_string() })?;
        write_private(&self.path, &bytes)
    }
}

/// A relay's view of `<data_dir>/revocations.json`: holds the watchers lock (so issuers know a
/// relay will see their revocations) and merges the file into the relay's set when it changes.
#[derive(Debug)]
pub struct RevocationWatch {
    set: RevocationSet,
    path: PathBuf,
    seen: Option<(u64, std::time::SystemTime, u64)>,
    _lease: File,
}

impl RevocationWatch {
    /// Takes the watchers lock on `data_dir` and loads the list into `set` (a malformed list is
    /// an error, as in [`RevocationStore::load`]).
    pub fn start(data_dir: &Path, set: RevocationSet, now: UnixTime) -> Result<Self, Error> {
        let lease_path = data_dir.join(WATCHERS_FILE);
        let lease = open_lock_file(&lease_path)?;
        flock(&lease, rustix::fs::FlockOperation::LockShared, &lease_path)?;
        let mut w = Self { set, path: data_dir.join(REVOCATIONS_FILE), seen: None, _lease: lease };
        w.poll(now)?;
        Ok(w)
    }

    /// Merges the file into the set if it changed since the last look (another inode, mtime or
    /// length); returns how many revocations were new. Expired entries are purged.
    pub fn poll(&mut self, now: UnixTime) -> Result<usize, Error> {
        let stamp = match std::fs::metadata(&self.path) {
            Ok(m) => Some(stamp(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
        };
        self.set.purge_expired(now);
        if stamp.is_none() || stamp == self.seen {
            return Ok(0);
        }
        let n = merge_file(&self.path, &self.set, now)?;
        self.seen = stamp;
        Ok(n)
    }

    /// Polls every `interval` forever, reading the time from `clock` (spawn it; abort or drop it
    /// on shutdown, which also releases the watchers lock).
    pub async fn run(self, interval: Duration, clock: crate::Clock) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = self;
        loop {
            tick.tick().await;
            let now = clock();
            // A stat when nothing changed; a read and parse (off the async workers) when it did.
            let Ok((w, result)) = tokio::task::spawn_blocking(move || {
                let r = watch.poll(now);
                (watch, r)
            })
            .await
            else {
                return;
            };
            watch = w;
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(new = n, path = %watch.path.display(), "revocations loaded"),
                Err(e) => tracing::warn!(error = %e, "cannot read the revocation list; keeping the current one"),
            }
        }
    }
}

#[cfg(unix)]
fn stamp(m: &std::fs::Metadata) -> (u64, std::time::SystemTime, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (m.ino(), m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len())
}

#[cfg(not(unix))]
fn stamp(m: &std::fs::Metadata) -> (u64, std::time::SystemTime, u64) {
    (0, m.modified().unwrap_or(std::time::UNIX_EPOCH), m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched(dir: &Path) -> RevocationWatch {
        RevocationWatch::start(dir, RevocationSet::new(), UnixTime(0)).unwrap()
    }

    #[test]
    fn survives_restart_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let _relay = watched(dir.path());
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
        let tmp =
            std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path().extension() != Some("json".as_ref()));
        assert!(tmp
            .map(|e| e.file_name().into_string().unwrap())
            .all(|n| n.starts_with("revocations.") && !n.contains("tmp")));
    }

    #[test]
    fn bounded_and_malformed_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _relay = watched(dir.path());
        let s = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 1).unwrap();
        assert_eq!(s.revoke("9:a", UnixTime(9), UnixTime(0)).unwrap(), Revoked::New);
        assert_eq!(s.revoke("9:b", UnixTime(9), UnixTime(0)).unwrap(), Revoked::Full);
        std::fs::write(dir.path().join("revocations.json"), "{nope").unwrap();
        assert!(RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 1).is_err());
    }

    #[test]
    fn fleet_delivery_needs_no_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 10).unwrap().delivered_elsewhere();
        assert_eq!(s.revoke("9:a", UnixTime(9), UnixTime(0)).unwrap(), Revoked::New);
        assert!(s.set().is_revoked("9:a"));
    }

    #[test]
    fn refused_when_no_relay_watches() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 10).unwrap();
        assert!(!relay_watches(dir.path()).unwrap());
        assert_eq!(s.revoke("9:a", UnixTime(9), UnixTime(0)).unwrap(), Revoked::Unreachable);
        assert!(!s.set().is_revoked("9:a"));
        let relay = watched(dir.path());
        assert!(relay_watches(dir.path()).unwrap());
        assert_eq!(s.revoke("9:a", UnixTime(9), UnixTime(0)).unwrap(), Revoked::New);
        // The relay's lock goes with it.
        drop(relay);
        assert!(!relay_watches(dir.path()).unwrap());
        assert_eq!(s.revoke("9:b", UnixTime(9), UnixTime(0)).unwrap(), Revoked::Unreachable);
    }

    #[test]
    fn relays_see_revocations_of_other_writers_and_writers_keep_each_others() {
        let dir = tempfile::tempdir().unwrap();
        let relay_set = RevocationSet::new();
        let mut relay = RevocationWatch::start(dir.path(), relay_set.clone(), UnixTime(0)).unwrap();
        assert_eq!(relay.poll(UnixTime(0)).unwrap(), 0);
        // Two issuers on the same directory, each with its own in-memory set.
        let a = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 10).unwrap();
        let b = RevocationStore::load(dir.path(), RevocationSet::new(), UnixTime(0), 10).unwrap();
        assert_eq!(a.revoke("90:x", UnixTime(90), UnixTime(0)).unwrap(), Revoked::New);
        assert_eq!(relay.poll(UnixTime(1)).unwrap(), 1);
        assert!(relay_set.is_revoked("90:x"));
        assert_eq!(b.revoke("90:y", UnixTime(90), UnixTime(1)).unwrap(), Revoked::New);
        assert_eq!(relay.poll(UnixTime(2)).unwrap(), 1);
        assert_eq!(relay.poll(UnixTime(2)).unwrap(), 0, "unchanged file: nothing new");
        // b's rewrite kept a's entry.
        let fresh = RevocationSet::new();
        let _ = RevocationStore::load(dir.path(), fresh.clone(), UnixTime(2), 10).unwrap();
        assert!(fresh.is_revoked("90:x") && fresh.is_revoked("90:y"));
        // Expired entries leave the relay's set too.
        relay.poll(UnixTime(90)).unwrap();
        assert!(relay_set.is_empty());
    }
}
