//! Helpers for the operator-path tests (`tests/tests/ops.rs`): the default ports, a STUN Binding
//! probe, readiness polling, the README's first command, and the cached build products under
//! `target/` (release binary, debootstrap root, container base image).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::root;

/// The embedded default's listening ports: (what, port, udp?).
pub const DEFAULT_PORTS: &[(&str, u16, bool)] = &[
    ("STUN/TURN over UDP", 3478, true),
    ("TURN over TCP", 3478, false),
    ("TURN over TLS", 5349, false),
    ("issuer HTTP", 8080, false),
    ("metrics", 9641, false),
];

/// Fails with a clear message if any default port is taken on this machine (a coturn, another
/// turnkey, or a web server on 8080): the tests that start the embedded default need them all.
pub fn assert_default_ports_free() {
    let taken: Vec<String> = DEFAULT_PORTS
        .iter()
        .filter(|(_, port, udp)| {
            if *udp {
                UdpSocket::bind(("0.0.0.0", *port)).is_err()
            } else {
                TcpListener::bind(("0.0.0.0", *port)).is_err()
            }
        })
        .map(|(what, port, udp)| format!("{port}/{} ({what})", if *udp { "udp" } else { "tcp" }))
        .collect();
    assert!(
        taken.is_empty(),
        "the default ports {} are in use on this machine; stop whatever holds them (e.g. `ss -lntup | grep -E ':(3478|5349|8080|9641) '`) and rerun",
        taken.join(", ")
    );
}

/// Sends a STUN Binding request to `addr` and returns whether a Binding success response with
/// the same transaction id came back within `timeout`.
pub fn stun_binding(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }) else { return false };
    let _ = sock.set_read_timeout(Some(timeout));
    let mut req = [0u8; 20];
    req[0..2].copy_from_slice(&0x0001u16.to_be_bytes());
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    let tid: [u8; 12] = std::array::from_fn(|i| (std::process::id() as u8).wrapping_add(i as u8 * 17));
    req[8..20].copy_from_slice(&tid);
    if sock.send_to(&req, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == tid,
        Err(_) => false,
    }
}

/// Status of `GET path` on `addr`, or `None` if nothing answers.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).split_whitespace().nth(1)?.parse().ok()
}

/// Polls until STUN answers on 127.0.0.1:3478/udp and `GET /healthz` on 127.0.0.1:8080 is 200,
/// or `alive()` turns false, or `timeout` passes. Returns whether both answered.
pub fn wait_default_ready(timeout: Duration, mut alive: impl FnMut() -> bool) -> bool {
    let stun: SocketAddr = "127.0.0.1:3478".parse().unwrap();
    let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !alive() {
            return false;
        }
        if stun_binding(stun, Duration::from_millis(300)) && http_status(http, "/healthz") == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    false
}

/// The first command of the README: the first line of its first ```sh block, verbatim.
pub fn readme_first_command() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme.split("```sh\n").nth(1).expect("README.md has no ```sh block");
    block.lines().map(str::trim).find(|l| !l.is_empty()).expect("empty ```sh block").to_owned()
}

/// A directory under the workspace's `target/` for cached products (kept between runs).
pub fn cache_dir(name: &str) -> PathBuf {
    let dir = root().join("target").join("ops").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The release binary (`target/release/turnkey`), built once (the test command builds it; a
/// missing or stale one is rebuilt here). The package selection is the workspace's default
/// members, as in the README's `cargo run --release`, so features unify the same way and the
/// two share one build.
pub fn release_bin() -> PathBuf {
    let st = clean_cargo_env(&mut Command::new("cargo"))
        .args(["build", "--release", "--locked", "--bin", "turnkey"])
        .current_dir(root())
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "cargo build --release failed");
    let p = root().join("target").join("release").join("turnkey");
    assert!(p.exists(), "{} missing", p.display());
    p
}

/// Removes what cargo and nextest set for a test process (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`,
/// `NEXTEST_*`, the test's `LD_LIBRARY_PATH`, ...) from a command that runs cargo, so it sees the
/// environment of a shell: build scripts that watch such variables would otherwise rebuild the
/// release binary the test command already built.
pub fn clean_cargo_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let drop = (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("NEXTEST")
            || k.starts_with("__NEXTEST")
            || k == "LD_LIBRARY_PATH"
            || k == "RUST_TEST_THREADS";
        if drop {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Runs `cmd`, failing with its output when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `path` exists (a shorter `Path::exists`).
pub fn exists(path: impl AsRef<Path>) -> bool {
    path.as_ref().exists()
}

/// A Debian bookworm root filesystem made by `debootstrap --variant=minbase` (Debian's packages
/// are the only download), cached in `target/ops/debootstrap/bookworm` between runs (a cold
/// build takes about three minutes). `TURNKEY_DEBIAN_MIRROR` overrides the mirror. Concurrent
/// callers wait on a lock and share one root; callers must not modify it (copy it first).
pub fn debootstrap_root() -> PathBuf {
    let dir = cache_dir("debootstrap");
    let root = dir.join("bookworm");
    let mirror = std::env::var("TURNKEY_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let script = format!(
        "set -e; cd '{dir}'; if [ ! -e bookworm/.turnkey-debootstrap-ok ]; then \
           rm -rf bookworm.tmp bookworm; \
           debootstrap --variant=minbase bookworm bookworm.tmp '{mirror}' >&2; \
           touch bookworm.tmp/.turnkey-debootstrap-ok; mv bookworm.tmp bookworm; fi",
        dir = dir.display()
    );
    run_ok(Command::new("flock").arg(dir.join(".lock")).args(["sh", "-c", &script]));
    root
}

/// A private copy of [`debootstrap_root`] in `target/ops/<name>` (replaced if present).
pub fn scratch_root(name: &str) -> PathBuf {
    let base = debootstrap_root();
    let copy = root().join("target").join("ops").join(name);
    if copy.exists() {
        run_ok(Command::new("rm").arg("-rf").arg(&copy));
    }
    run_ok(Command::new("cp").arg("-a").arg(&base).arg(&copy));
    copy
}

/// `podman` with its storage under `target/ops/podman/` (so images are cached with the build),
/// runc, and a containers.conf without default ulimits (this sandbox refuses `setrlimit`).
pub fn podman() -> Command {
    let dir = cache_dir("podman");
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").unwrap();
    let mut cmd = Command::new("podman");
    cmd.arg("--root").arg(dir.join("storage")).arg("--runroot").arg(dir.join("run"));
    cmd.args(["--runtime", "runc"]).env("CONTAINERS_CONF", conf);
    cmd
}

/// `localhost/turnkey-base:bookworm`: the [`debootstrap_root`] imported as a base image (once;
/// cached in podman's storage under `target/`).
pub fn container_base() -> &'static str {
    const BASE: &str = "localhost/turnkey-base:bookworm";
    let root = debootstrap_root();
    let exists = podman().args(["image", "exists", BASE]).status().is_ok_and(|s| s.success());
    if !exists {
        let tar = cache_dir("podman").join("base.tar");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .args(["--exclude=./.turnkey-debootstrap-ok", "-cf"])
                .arg(&tar)
                .arg("."),
        );
        run_ok(podman().arg("import").arg(&tar).arg(BASE));
        let _ = std::fs::remove_file(&tar);
    }
    BASE
}
