//! # turnkey-files: private files in the data directory
//!
//! The one place the data directory's private files are written: directories are created with
//! mode 0700 and files are written atomically with mode 0600 (a temp file beside the target,
//! fsync, rename, then an fsync of the directory), so a concurrent reader never sees half a file
//! and a crash leaves either the old or the new content. The relay binary (secret, TLS key), the
//! issuer (keys, revocations) and the usage ledger all write through it.
//!
//! Errors are plain [`std::io::Error`]s carrying the path; each caller wraps them in its own
//! error type.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `dir` and its missing parents with mode 0700 (existing directories are left as they
/// are).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| with_path("cannot create directory", dir, e))
}

/// Writes `bytes` to `path` with mode 0600, atomically: a uniquely named temp file in the same
/// directory (created exclusively, so two writers never share one), fsync, rename over `path`,
/// fsync of the directory. On failure the temp file is removed and `path` is untouched.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp =
        path.with_file_name(format!(".{name}.tmp.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(with_path("cannot write", path, e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename durable; failing here only weakens crash safety.
        let _ = fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Sets the permission bits of `path` (no-op off Unix).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| with_path("cannot chmod", path, e))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

fn with_path(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_replace_atomically_with_private_mode_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        create_private_dir(&sub).unwrap();
        let f = sub.join("secret");
        write_private(&f, b"one").unwrap();
        write_private(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("secret")], "no temp file left behind");
        #[cfg(unix)]
        {
            assert_eq!(mode(&f), 0o600);
            assert_eq!(mode(&sub), 0o700);
        }
    }

    #[test]
    fn a_failed_write_names_the_path_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = write_private(&dir.path().join("missing/x"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/x"), "{err}");
        let f = dir.path().join("keep");
        write_private(&f, b"old").unwrap();
        // A directory in the way of the rename: the write fails, the target is untouched.
        assert!(write_private(dir.path(), b"new").is_err());
        assert_eq!(fs::read(&f).unwrap(), b"old");
    }
}
