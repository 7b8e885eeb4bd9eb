//! Where this process's TURN REST secret comes from, the one place a secret may be created, and
//! the `turnkey creds` command line that matches it.
//!
//! Only `turnkey serve` on its first start (no secret configured, none in the data directory) and
//! `turnkey secret generate` ever create a secret. `turnkey creds` reads one or refuses: a secret
//! it invented would mint credentials no relay accepts.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use turnkey_auth::{Secret, SecretRing};

use crate::config::Settings;
use crate::datadir;

/// Where the secret ring was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--secret` / `TURNKEY_SECRET` / `secrets = [...]`.
    Inline,
    /// `--secret-file` / `TURNKEY_SECRET_FILE` / `secret_file`.
    File(PathBuf),
    /// `<data_dir>/secret` (generated on the first `serve`).
    DataDir(PathBuf),
}

/// May reading the secret create one in the data directory?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `serve` (and `issuer`): the first start of a single host generates it.
    OnFirstStart,
    /// `creds`: never; no secret is an error naming the flags.
    Never,
}

/// The secret ring: inline secrets, else the secret file, else the data directory's secret
/// (generated only with [`Create::OnFirstStart`]). Returns it, where it came from, and whether it
/// was generated now.
pub fn ring(s: &Settings, create: Create) -> anyhow::Result<(SecretRing, Source, bool)> {
    let n = &s.node;
    let (secrets, source, generated) = if !n.secrets.0.is_empty() {
        (n.secrets.0.clone(), Source::Inline, false)
    } else if let Some(path) = &n.secret_file {
        (datadir::read_secrets(path)?, Source::File(path.clone()), false)
    } else {
        let source = Source::DataDir(n.data_dir.clone());
        match create {
            Create::OnFirstStart => {
                let (one, generated) = datadir::secret(&n.data_dir)?;
                (vec![one], source, generated)
            }
            Create::Never => {
                let path = n.data_dir.join(datadir::SECRET_FILE);
                anyhow::ensure!(path.exists(), "{}", missing(&path));
                (datadir::read_secrets(&path)?, source, false)
            }
        }
    };
    let ring = SecretRing::new(secrets.iter().map(|x| Secret::new(x.trim().as_bytes())).collect())?;
    Ok((ring, source, generated))
}

/// Why `turnkey creds` found no secret, and the flags that give it one.
fn missing(path: &Path) -> String {
    format!(
        "no secret: {} does not exist and neither --secret-file nor --secret (TURNKEY_SECRET_FILE, \
         TURNKEY_SECRET) was given. `turnkey creds` never creates a secret (one it invented would \
         mint credentials no relay accepts): pass the relay's own, i.e. the --secret-file or \
         --secret it was started with, or the --data-dir where `turnkey serve` generated it",
        path.display()
    )
}

/// The `turnkey creds` command that mints with the same secret as this process (printed by the
/// banner). An inline secret is never printed: the operator substitutes it.
pub fn creds_command(source: &Source) -> String {
    match source {
        Source::Inline => "turnkey creds --secret <this relay's --secret> --user alice".to_owned(),
        Source::File(p) => format!("turnkey creds --secret-file {} --user alice", p.display()),
        Source::DataDir(d) => format!("turnkey creds --data-dir {} --user alice", d.display()),
    }
}

/// `turnkey secret generate`: a new random secret written to `out` (0600; refuses to replace an
/// existing file, which relays may already share), or printed when `out` is `None`.
pub fn generate(out: Option<&Path>) -> anyhow::Result<()> {
    let secret = datadir::new_secret();
    match out {
        None => println!("{secret}"),
        Some(path) => {
            anyhow::ensure!(
                !path.exists(),
                "{} exists: not replaced (relays and issuers may share it; rotate by adding a line, newest first)",
                path.display()
            );
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            turnkey_files::write_private(path, format!("{secret}\n").as_bytes())?;
            eprintln!("turnkey: wrote a new secret to {} (mode 0600)", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn creds_command_matches_the_source() {
        assert_eq!(
            creds_command(&Source::File("/etc/turnkey/secret".into())),
            "turnkey creds --secret-file /etc/turnkey/secret --user alice"
        );
        assert_eq!(
            creds_command(&Source::DataDir("./r1-data".into())),
            "turnkey creds --data-dir ./r1-data --user alice"
        );
        assert_eq!(creds_command(&Source::Inline), "turnkey creds --secret <this relay's --secret> --user alice");
    }

    #[test]
    fn generate_writes_a_private_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/secret");
        generate(Some(&path)).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.trim().len() >= 43, "{first}");
        let e = generate(Some(&path)).unwrap_err();
        assert!(format!("{e:#}").contains("not replaced"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
