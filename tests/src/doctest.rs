//! The docs' command blocks, run as written: every ```sh block of README.md and docs/*.md is
//! executed (bash, `set -euo pipefail`) unless an HTML comment right before it says why it cannot
//! run locally. A doc that stops matching the product then fails CI.
//!
//! Markers (the line before the fence; invisible when the Markdown is rendered):
//!
//! - none: the block runs and must exit 0;
//! - `<!-- doc-test: skip: REASON -->`: not run here (a remote host, kubectl, a cloud, root,
//!   a release build, a benchmark); the reason is required;
//! - `<!-- doc-test: background: READY -->`: a server: started, and running once its output
//!   shows READY; it serves the blocks after it in the same file and is stopped at the end.
//!
//! Blocks of one file share a fresh working directory (files one block creates, the next reads)
//! and a port map: every `:PORT` (and `port=PORT`, `--port PORT`) in a block is replaced by a free port, the
//! same one for the same documented port throughout the file. `turnkey` and `turnkey-load` on
//! `PATH` are the binaries under test; `deploy/`, `docs/`, `bench/` and `scripts/` link to the
//! repository's; the embedded default's listeners (3478, 5349, 8080, 9641)
//! come from `TURNKEY_*` variables on the mapped ports, so a plain `turnkey serve` serves there.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, fixed_port, root};

/// How a block is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Runs; must exit 0.
    Run,
    /// Not run locally, for this reason.
    Skip(String),
    /// A server kept running for the blocks after it; ready when its output shows this text.
    Background(String),
}

/// One fenced shell block.
#[derive(Debug, Clone)]
pub struct Block {
    /// `file:line` of the opening fence.
    pub at: String,
    pub kind: Kind,
    pub text: String,
}

const SHELLS: [&str; 4] = ["sh", "bash", "shell", "console"];

/// The shell blocks of `markdown` (`name` for messages). A marker that is not understood, or a
/// skip without a reason, is an error: nothing is skipped silently.
pub fn blocks(name: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let lang = info.trim().to_owned();
        i += 1;
        let mut body = Vec::new();
        while i < lines.len() && !lines[i].starts_with("```") {
            body.push(lines[i]);
            i += 1;
        }
        i += 1;
        if !SHELLS.contains(&lang.as_str()) {
            continue;
        }
        let at = format!("{name}:{}", start + 1);
        let marker = lines[..start].iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim());
        let kind = match marker.and_then(|m| m.strip_prefix("<!-- doc-test:")) {
            None => Kind::Run,
            Some(m) => {
                let m = m.strip_suffix("-->").ok_or_else(|| format!("{at}: unterminated doc-test marker"))?.trim();
                if let Some(reason) = m.strip_prefix("skip:") {
                    if reason.trim().is_empty() {
                        return Err(format!("{at}: a skipped block must say why"));
                    }
                    Kind::Skip(reason.trim().to_owned())
                } else if let Some(ready) = m.strip_prefix("background:") {
                    Kind::Background(ready.trim().to_owned())
                } else if m == "run" {
                    Kind::Run
                } else {
                    return Err(format!("{at}: unknown doc-test marker {m:?}"));
                }
            }
        };
        out.push(Block { at, kind, text: body.join("\n") });
    }
    Ok(out)
}

/// Documented ports to the free ports a run uses (one file's worth).
#[derive(Debug, Default)]
pub struct Ports(HashMap<u16, u16>);

impl Ports {
    fn get(&mut self, documented: u16) -> u16 {
        *self.0.entry(documented).or_insert_with(fixed_port)
    }

    /// `text` with every `:PORT`, `port=PORT` and `--port PORT` (1024 and up) replaced.
    pub fn substitute(&mut self, text: &str) -> String {
        let b = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < b.len() {
            let lead = if b[i] == b':' {
                Some(1)
            } else if text[i..].starts_with("port=") {
                Some(5)
            } else if text[i..].starts_with("--port ") {
                Some(7)
            } else {
                None
            };
            if let Some(n) = lead {
                let digits = text[i + n..].bytes().take_while(u8::is_ascii_digit).count();
                let next_ok = !text[i + n + digits..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
                let prev_ok = n > 1 || (i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b']'));
                if (4..=5).contains(&digits) && next_ok && prev_ok {
                    if let Ok(port) = text[i + n..i + n + digits].parse::<u16>() {
                        if port >= 1024 {
                            out.push_str(&text[i..i + n]);
                            out.push_str(&self.get(port).to_string());
                            i += n + digits;
                            continue;
                        }
                    }
                }
            }
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

/// A directory holding `turnkey` (and `turnkey-load`) links to the binaries under test.
fn bin_dir(work: &Path) -> PathBuf {
    let dir = work.join(".doc-test-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let turnkey = bin();
    std::os::unix::fs::symlink(&turnkey, dir.join("turnkey")).unwrap();
    let load = turnkey.with_file_name("turnkey-load");
    if load.exists() {
        std::os::unix::fs::symlink(&load, dir.join("turnkey-load")).unwrap();
    }
    dir
}

/// A started background block.
struct Server {
    at: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // The whole process group: the shell and what it started.
        let pgid = self.child.id();
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{pgid}")]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
        let _ = self.child.wait();
    }
}

/// What running one file's blocks did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `file:line` of each block run (background ones included).
    pub ran: Vec<String>,
    /// `file:line: reason` of each skipped block.
    pub skipped: Vec<String>,
}

/// Runs the blocks of `file` (relative to the workspace root) in order; panics with the block,
/// as run, and its output when one fails.
pub fn run_file(file: &str, block_timeout: Duration) -> Outcome {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let blocks = blocks(file, &text).unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let bins = bin_dir(work.path());
    // The repository's own files, read-only by relative path (`deploy/...`, `bench/...`).
    for dir in ["deploy", "docs", "bench", "scripts"] {
        std::os::unix::fs::symlink(root().join(dir), work.path().join(dir)).unwrap();
    }
    let mut ports = Ports::default();
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let env: Vec<(&str, String)> = vec![
        ("PATH", path),
        ("TURNKEY_UDP", listen(ports.get(3478))),
        ("TURNKEY_TCP", listen(ports.get(3478))),
        ("TURNKEY_TLS", listen(ports.get(5349))),
        ("TURNKEY_HTTP", listen(ports.get(8080))),
        ("TURNKEY_METRICS", listen(ports.get(9641))),
    ];
    let mut servers: Vec<Server> = Vec::new();
    let mut outcome = Outcome::default();
    for b in blocks {
        let script = format!("set -euo pipefail\n{}\n", ports.substitute(&b.text));
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(&script).current_dir(work.path()).stdin(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        match &b.kind {
            Kind::Skip(reason) => outcome.skipped.push(format!("{}: {reason}", b.at)),
            Kind::Background(ready) => {
                let log = work.path().join(format!(".doc-test-{}.log", servers.len()));
                let f = std::fs::File::create(&log).unwrap();
                cmd.stdout(f.try_clone().unwrap()).stderr(f);
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
                let child = cmd.spawn().unwrap();
                let server = Server { at: b.at.clone(), child, log };
                wait_ready(&server, ready, &script);
                servers.push(server);
                outcome.ran.push(b.at.clone());
            }
            Kind::Run => {
                let out = crate::run_with_timeout(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), block_timeout);
                let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
                if !out.status.success() {
                    let logs: String =
                        servers.iter().map(|s| format!("\n--- server {}:\n{}", s.at, tail(&s.log))).collect();
                    panic!(
                        "{} failed ({:?}):\n--- block as run:\n{script}\n--- output:\n{text}{logs}",
                        b.at, out.status
                    );
                }
                eprintln!(
                    "{} ok:\n{}",
                    b.at,
                    text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
                );
                outcome.ran.push(b.at.clone());
            }
        }
    }
    drop(servers);
    outcome
}

fn wait_ready(server: &Server, ready: &str, script: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&server.log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains(ready) {
            return;
        }
        let exited = std::process::Command::new("kill").args(["-0", &server.child.id().to_string()]).status();
        let alive = exited.is_ok_and(|s| s.success());
        assert!(
            alive && Instant::now() < deadline,
            "{} never showed {ready:?}:\n--- block as run:\n{script}\n--- output:\n{text}",
            server.at
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_ports() {
        let md = "x\n```sh\nturnkey serve\n```\n<!-- doc-test: skip: needs kubectl -->\n```sh\nkubectl apply\n```\n\
                  <!-- doc-test: background: turnkey listening -->\n\n```bash\nturnkey serve --udp 127.0.0.1:3479\n```\n```text\nnot run\n```\n";
        let b = blocks("f.md", md).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].kind, Kind::Run);
        assert_eq!(b[1].kind, Kind::Skip("needs kubectl".into()));
        assert_eq!(b[2].kind, Kind::Background("turnkey listening".into()));
        assert_eq!(b[2].at, "f.md:11");
        assert!(blocks("f.md", "<!-- doc-test: skip: -->\n```sh\nx\n```\n").is_err());
        assert!(blocks("f.md", "<!-- doc-test: maybe -->\n```sh\nx\n```\n").is_err());
        let mut p = Ports::default();
        let s = p.substitute(
            "--udp 127.0.0.1:3478 --tls [::1]:5349 redis://h:6379/0 port=3478 --port 6379 1767312000:alice 10:30 --count 10000",
        );
        let a = p.get(3478);
        assert!(s.starts_with(&format!("--udp 127.0.0.1:{a} --tls [::1]:")), "{s}");
        assert!(s.contains(&format!("port={a}")) && s.contains("1767312000:alice") && s.contains("10:30"), "{s}");
        assert!(!s.contains(":6379") && s.ends_with("--count 10000"), "{s}");
        assert!(s.contains(&format!("--port {}", p.get(6379))), "{s}");
    }
}
