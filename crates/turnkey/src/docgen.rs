//! `turnkey gen-docs DIR` (for packagers, outside the documented CLI): the man pages and shell completions, generated from the real
//! CLI definition (clap_mangen, clap_complete), so they cannot drift from the flags. The Debian
//! package ships them (`deploy/packaging/build-deb.sh`).

use std::path::Path;

use anyhow::Context as _;
use clap_complete::Shell;

use crate::cli;

/// Writes `DIR/man/man1/turnkey.1`, one `turnkey-<sub>.1` per subcommand (a tree `MANPATH`
/// can point at), and
/// `DIR/completions/{turnkey.bash,_turnkey,turnkey.fish}`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man").join("man1");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("cannot create {}", man.display()))?;
    std::fs::create_dir_all(&completions).with_context(|| format!("cannot create {}", completions.display()))?;

    // The same command `turnkey --help` prints, with each default drawn from its owning type.
    let cmd = cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("cannot write man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut c = cmd.clone();
        clap_complete::generate_to(shell, &mut c, "turnkey", &completions)
            .with_context(|| format!("cannot write {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn man_pages_and_completions_cover_the_real_cli() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let man = std::fs::read_to_string(dir.path().join("man/man1/turnkey.1")).unwrap();
        assert!(man.contains(".TH turnkey 1"), "{man}");
        let serve = std::fs::read_to_string(dir.path().join("man/man1/turnkey-serve.1")).unwrap();
        for flag in ["relay\\-ports", "allow\\-peer", "drain\\-grace", "public\\-host"] {
            assert!(serve.contains(flag), "turnkey-serve.1 lacks --{flag}");
        }
        let bash = std::fs::read_to_string(dir.path().join("completions/turnkey.bash")).unwrap();
        assert!(bash.contains("--relay-ports") && bash.contains("check-config"));
        assert!(!bash.contains("gen-docs"), "the packagers' command is not part of the documented CLI");
        assert!(dir.path().join("completions/_turnkey").is_file());
        assert!(dir.path().join("completions/turnkey.fish").is_file());
    }
}
