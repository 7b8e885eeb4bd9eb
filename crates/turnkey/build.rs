//! Records the git commit the binary is built from as `TURNKEY_GIT_COMMIT` (`turnkey --version`
//! and the `turnkey_build_info` metric). `TURNKEY_GIT_COMMIT` in the build environment wins (for
//! builds from a source tarball or a container context without `.git`); with neither, "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TURNKEY_GIT_COMMIT");
    let commit = match std::env::var("TURNKEY_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to, and packed refs.
            // Only files that exist: cargo treats a missing one as always changed.
            let watch = |p: PathBuf| {
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            };
            if let Some(dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) {
                watch(dir.join("HEAD"));
            }
            if let Some(common) = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from) {
                watch(common.join("packed-refs"));
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch(common.join(r));
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=TURNKEY_GIT_COMMIT={commit}");
}
