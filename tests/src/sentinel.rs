//! A Sentinel-monitored Redis for tests (Debian's `redis-server` and `redis-sentinel`): one
//! primary, one replica and three sentinels on loopback ports, a quorum of 2 and a short
//! `down-after-milliseconds`, so a SIGKILLed primary is replaced within a few seconds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::{RedisOptions, RedisServer, RedisTls};

/// The name the sentinels monitor the primary under.
pub const SERVICE: &str = "mymaster";
/// How long the sentinels wait before they call the primary down.
pub const DOWN_AFTER_MS: u64 = 1000;

/// One running `redis-sentinel`.
#[derive(Debug)]
struct Sentinel {
    child: Child,
    port: u16,
}

/// A primary, its replica and three sentinels.
#[derive(Debug)]
pub struct SentinelSet {
    /// The servers: `[0]` starts as the primary, `[1]` as its replica.
    pub servers: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
    password: Option<String>,
    tls: bool,
    dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts everything and waits until every sentinel knows the primary and its replica,
    /// or `None` when `redis-server` / `redis-sentinel` is not installed (see [`crate::require`]).
    pub fn start(password: Option<&str>) -> Option<Self> {
        Self::start_with(password, None)
    }

    /// [`Self::start`] with TLS everywhere (servers, replication, sentinels: TLS ports only, one
    /// certificate for 127.0.0.1); the URL is then `rediss+sentinel://` and [`Self::ca_file`]
    /// the CA to trust.
    pub fn start_with(password: Option<&str>, tls: Option<RedisTls>) -> Option<Self> {
        if !crate::require("redis-sentinel") {
            return None;
        }
        let opts = RedisOptions { password: password.map(str::to_owned), tls: tls.clone(), ..RedisOptions::default() };
        let primary = RedisServer::start(opts.clone())?;
        let replica = RedisServer::start(RedisOptions { replica_of: Some(primary.port()), ..opts })?;
        let dir = tempfile::tempdir().unwrap();
        let tls_conf = match &tls {
            None => String::new(),
            Some(t) => {
                let write = |name: &str, pem: &str| {
                    let p = dir.path().join(name);
                    std::fs::write(&p, pem).unwrap();
                    p.display().to_string()
                };
                let (c, k, ca) =
                    (write("srv.pem", &t.cert_pem), write("srv.key", &t.key_pem), write("ca.pem", &t.ca_pem));
                format!(
                    "tls-cert-file {c}\ntls-key-file {k}\ntls-ca-cert-file {ca}\ntls-auth-clients no\n\
                     tls-replication yes\n"
                )
            }
        };
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = crate::fixed_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let ports = if tls.is_some() { format!("port 0\ntls-port {port}\n") } else { format!("port {port}\n") };
            let mut text = format!(
                "{ports}{tls_conf}bind 127.0.0.1\ndaemonize no\ndir {d}\nlogfile {d}/sentinel-{i}.log\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {p} 2\n\
                 sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SERVICE} 5000\nsentinel parallel-syncs {SERVICE} 1\n",
                d = dir.path().display(),
                p = primary.port()
            );
            if let Some(pw) = password {
                text.push_str(&format!("sentinel auth-pass {SERVICE} {pw}\n"));
            }
            std::fs::write(&conf, text).unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-sentinel");
            sentinels.push(Sentinel { child, port });
        }
        let set = Self {
            servers: vec![primary, replica],
            sentinels,
            password: password.map(str::to_owned),
            tls: tls.is_some(),
            dir,
        };
        set.wait_ready();
        Some(set)
    }

    /// Until the replica is in sync and every sentinel knows it and the other sentinels.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced =
                self.servers[1].cli(&["INFO", "replication"]).is_some_and(|i| i.contains("master_link_status:up"));
            let known = (0..3).all(|i| {
                let info = self.sentinel_cli(i, &["SENTINEL", "MASTER", SERVICE]).unwrap_or_default();
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| l.trim() == name)
                        .and_then(|p| lines.get(p + 1))
                        .map(|v| v.trim().to_owned())
                };
                field("num-slaves").as_deref() == Some("1") && field("num-other-sentinels").as_deref() == Some("2")
            });
            if synced && known {
                return;
            }
            assert!(Instant::now() < deadline, "sentinels not ready within 30 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://[:password@]127.0.0.1:<s1>,127.0.0.1:<s2>,127.0.0.1:<s3>/mymaster`
    /// (`rediss+sentinel://` with TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let auth = self.password.as_ref().map(|pw| format!(":{pw}@")).unwrap_or_default();
        let scheme = if self.tls { "rediss+sentinel" } else { "redis+sentinel" };
        format!("{scheme}://{auth}{}/{SERVICE}", hosts.join(","))
    }

    /// The CA file clients must trust (TLS only).
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// The port the sentinels currently name as the primary's.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.sentinel_cli(0, &["SENTINEL", "get-master-addr-by-name", SERVICE])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// The server the sentinels currently name as the primary.
    pub fn primary(&self) -> Option<&RedisServer> {
        let port = self.primary_port()?;
        self.servers.iter().find(|s| s.port() == port)
    }

    /// Waits until the sentinels name a primary other than the server on `old` and that server
    /// answers as a primary; returns the moment it did.
    pub fn wait_failover(&self, old: u16, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(p) = self.primary_port().filter(|p| *p != old) {
                let s = self.servers.iter().find(|s| s.port() == p).expect("a known server");
                if s.cli(&["ROLE"]).is_some_and(|r| r.starts_with("master")) {
                    return Instant::now();
                }
            }
            assert!(Instant::now() < deadline, "no failover within {within:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sentinel_cli(&self, i: usize, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.sentinels[i].port.to_string()]);
        if self.tls {
            cmd.args(["--tls", "--cacert", self.dir.path().join("ca.pem").to_str().unwrap()]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every sentinel's and server's log (for assertion messages).
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for i in 0..self.sentinels.len() {
            let log = std::fs::read_to_string(self.dir.path().join(format!("sentinel-{i}.log"))).unwrap_or_default();
            all.push_str(&format!("--- sentinel {i}\n{log}"));
        }
        for (i, s) in self.servers.iter().enumerate() {
            all.push_str(&format!("--- server {i} (port {})\n{}", s.port(), s.log()));
        }
        all
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}
