//! A real `redis-server` for tests (Debian's package): started on a loopback port below the
//! ephemeral range with its own temp directory, killed or restarted on demand, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `requirepass` (the URL then carries it).
    pub password: Option<String>,
    /// `appendonly yes` with `appendfsync always`: every acknowledged write survives a SIGKILL.
    pub appendonly: bool,
    /// TLS only (`rediss://`): PEM server certificate, key and CA, written to the temp dir.
    pub tls: Option<RedisTls>,
    /// Starts as a replica of the server on this loopback port (`replicaof`, `masterauth` with
    /// the same password): the Sentinel tests' replica.
    pub replica_of: Option<u16>,
}

/// PEM texts for a TLS server.
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl RedisTls {
    /// A certificate for 127.0.0.1 signed by a fresh private CA (`ca_pem`: what clients must be
    /// given to trust it).
    pub fn private_ca() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "turnkey test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf_params.distinguished_name.push(rcgen::DnType::CommonName, "redis test server");
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        Self { cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem(), ca_pem: ca.pem() }
    }
}

/// A running (or stopped, restartable) redis-server.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    opts: RedisOptions,
}

impl RedisServer {
    /// Starts a server, or `None` when `redis-server` is not installed (see [`crate::require`]).
    pub fn start(opts: RedisOptions) -> Option<Self> {
        if !crate::require("redis-server") || !crate::require("redis-cli") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = crate::fixed_port();
        let d = dir.path().to_str().unwrap().to_owned();
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--dir", &d, "--save", "", "--daemonize", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--logfile".into(), dir.path().join("redis.log").to_str().unwrap().to_owned()]);
        if let Some(pw) = &opts.password {
            args.extend(["--requirepass".into(), pw.clone()]);
            if opts.replica_of.is_some() {
                args.extend(["--masterauth".into(), pw.clone()]);
            }
        }
        if let Some(primary) = opts.replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string()]);
        }
        if opts.appendonly {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        }
        match &opts.tls {
            Some(tls) => {
                let write = |name: &str, pem: &str| {
                    let p = dir.path().join(name);
                    std::fs::write(&p, pem).unwrap();
                    p.to_str().unwrap().to_owned()
                };
                let (c, k, ca) =
                    (write("srv.pem", &tls.cert_pem), write("srv.key", &tls.key_pem), write("ca.pem", &tls.ca_pem));
                args.extend(["--port".into(), "0".into(), "--tls-port".into(), port.to_string()]);
                args.extend(["--tls-cert-file".into(), c, "--tls-key-file".into(), k, "--tls-ca-cert-file".into(), ca]);
                args.extend(["--tls-auth-clients".into(), "no".into()]);
                if opts.replica_of.is_some() {
                    args.extend(["--tls-replication".into(), "yes".into()]);
                }
            }
            None => args.extend(["--port".into(), port.to_string()]),
        }
        let mut s = Self { child: None, port, dir, args, opts };
        s.restart();
        Some(s)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://[:password@]127.0.0.1:<port>` (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls.is_some() { "rediss" } else { "redis" };
        match &self.opts.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The CA file clients must trust (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.opts.tls.as_ref().map(|_| self.dir.path().join("ca.pem"))
    }

    /// Starts the server again with the same port, directory and options (after [`Self::kill`]
    /// or [`Self::shutdown`]); waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.cli(&["PING"]).map(|o| o.trim() == "PONG").unwrap_or(false) {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer within 10 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no save, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running server.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([&format!("-{signal}"), &c.id().to_string()]).status();
        }
    }

    /// SIGTERM: redis-server finishes its append-only file and exits.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `redis-cli` against the server; its stdout, or `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pw) = &self.opts.password {
            cmd.env("REDISCLI_AUTH", pw);
        }
        if self.opts.tls.is_some() {
            cmd.args(["--tls", "--cacert", self.dir.path().join("ca.pem").to_str().unwrap()]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.starts_with("ERR") && !text.contains("Could not connect")).then_some(text)
    }

    /// The server's log (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
