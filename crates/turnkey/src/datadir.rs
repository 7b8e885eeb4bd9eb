//! The data directory: created on first start (0700), holding the generated secret (0600).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use turnkey_files::write_private;

/// File name of the generated secret inside the data directory.
pub const SECRET_FILE: &str = "secret";

/// Creates `dir` (and parents) with mode 0700 if missing.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        turnkey_files::create_private_dir(dir).context("cannot create the data directory")?;
    }
    Ok(())
}

/// Fails unless a file can be created, written and removed in `dir` (usage, revocations and keys
/// are saved there; finding out at the first save would lose them).
pub fn check_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".write-test-{}", std::process::id()));
    let result = fs::write(&probe, b"ok").and_then(|()| fs::remove_file(&probe));
    result.with_context(|| format!("data directory {} is not writable", dir.display()))
}

/// Reads the data directory's secret, generating a random one (0600) on first use.
/// Returns the secret and whether it was generated now.
pub fn secret(dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = dir.join(SECRET_FILE);
    if path.exists() {
        let s = read_secrets(&path)?;
        let first = s.into_iter().next().with_context(|| format!("{} is empty", path.display()))?;
        return Ok((first, false));
    }
    ensure(dir)?;
    let secret = new_secret();
    write_private(&path, format!("{secret}\n").as_bytes())?;
    Ok((secret, true))
}

/// A new random secret: 32 bytes from the OS-seeded CSPRNG, base64url without padding.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Directory (inside the data directory) of the generated TLS certificate.
pub const TLS_DIR: &str = "tls";

/// The self-signed certificate and key in `<dir>/tls/{cert.pem,key.pem}`, generated (key 0600)
/// for `names` on first use. Returns their paths and whether they were generated now.
pub fn self_signed_tls(dir: &Path, names: Vec<String>) -> anyhow::Result<(PathBuf, PathBuf, bool)> {
    let tls = dir.join(TLS_DIR);
    let (cert, key) = (tls.join("cert.pem"), tls.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key, false));
    }
    ensure(dir)?;
    turnkey_files::create_private_dir(&tls)?;
    let ck = rcgen::generate_simple_self_signed(names).context("cannot generate a TLS certificate")?;
    write_private(&key, ck.key_pair.serialize_pem().as_bytes())?;
    write_private(&cert, ck.cert.pem().as_bytes())?;
    turnkey_files::set_mode(&cert, 0o644)?;
    Ok((cert, key, true))
}

/// Reads one secret per line (blank lines and `#` comments skipped), newest first.
pub fn read_secrets(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read secret file {}", path.display()))?;
    let secrets: Vec<String> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect();
    anyhow::ensure!(!secrets.is_empty(), "secret file {} holds no secret", path.display());
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_tls_is_generated_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, fresh) = self_signed_tls(dir.path(), vec!["localhost".into()]).unwrap();
        assert!(fresh);
        let pem = fs::read_to_string(&c).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE"));
        let (c2, _, fresh) = self_signed_tls(dir.path(), vec!["localhost".into()]).unwrap();
        assert!(!fresh);
        assert_eq!(fs::read_to_string(c2).unwrap(), pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn writable_directory_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        check_writable(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let missing = dir.path().join("missing");
        let e = check_writable(&missing).unwrap_err();
        assert!(format!("{e:#}").contains("is not writable"), "{e:#}");
    }

    #[test]
    fn secret_is_generated_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (a, fresh) = secret(&data).unwrap();
        assert!(fresh);
        assert!(a.len() >= 43);
        let (b, fresh) = secret(&data).unwrap();
        assert!(!fresh);
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(data.join(SECRET_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let mode = fs::metadata(&data).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }
}
