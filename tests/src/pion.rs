//! pion/turn's TURN client (the Go client under pion/webrtc), built offline from Debian's
//! `golang-go` and `golang-github-pion-turn.v2-dev` in GOPATH mode: the source is
//! `tests/go/pion-client/main.go`, the binary goes to the target directory (never the repo).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{require, root, run_with_timeout};

/// Where Debian installs Go sources (`golang-*-dev` packages).
pub const GOCODE: &str = "/usr/share/gocode";

/// The pion/turn v2 sources the client imports.
const PION_TURN: &str = "src/github.com/pion/turn/v2/client.go";

/// Builds `tests/go/pion-client` and returns its path; `None` (the test skips) when Go or pion is
/// missing outside CI. Several test processes may build at once: each builds to its own file
/// and renames it into place.
pub fn client() -> Option<PathBuf> {
    if !require("go") {
        return None;
    }
    let pion = Path::new(GOCODE).join(PION_TURN);
    if !pion.exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{} is missing (golang-github-pion-turn.v2-dev; the test command installs it)", pion.display());
        }
        eprintln!("SKIP: golang-github-pion-turn.v2-dev not installed (run the README's test command)");
        return None;
    }
    // target/<profile>/deps/<test> -> target/<profile>/go/
    let exe = std::env::current_exe().unwrap();
    let out_dir = exe.parent().unwrap().parent().unwrap().join("go");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("pion-client");
    let tmp = out_dir.join(format!("pion-client.{}", std::process::id()));
    let gopath = format!("{}:{GOCODE}", out_dir.join("gopath").display());
    let mut cmd = Command::new("go");
    cmd.current_dir(root().join("tests/go/pion-client"))
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOCACHE", out_dir.join("cache"))
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(".");
    let built = run_with_timeout(&mut cmd, Duration::from_secs(300));
    assert!(
        built.status.success(),
        "go build of tests/go/pion-client failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    Some(out)
}
