//! Installing and running turnkey the way operators do: the README's first command verbatim,
//! the systemd unit, the Debian package, the container image, the compose file and the
//! Kubernetes manifests. Tests whose names end in `_on_default_ports` bind the embedded
//! default's fixed ports (3478, 5349, 8080, 9641); `.config/nextest.toml` runs them one at a time.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use turnkey_e2e::ops::{assert_default_ports_free, clean_cargo_env, readme_first_command, run_ok, wait_default_ready};
use turnkey_e2e::{bin, require, root};

/// The README's first command, extracted from README.md (so the two cannot drift), run as
/// written from a fresh directory inside the checkout: STUN answers on 127.0.0.1:3478/udp, the
/// issuer on 127.0.0.1:8080, and SIGTERM stops it with exit status 0.
#[test]
fn readme_first_command_serves_on_default_ports() {
    let cmd = readme_first_command();
    assert_eq!(cmd, "cargo run --release -- serve", "the README's first command changed; update this test's intent");
    assert_default_ports_free();
    // A fresh working directory (the command creates ./turnkey-data/ there); cargo finds the
    // workspace from it.
    let cwd = root().join("target").join("ops").join("readme");
    let _ = std::fs::remove_dir_all(&cwd);
    std::fs::create_dir_all(&cwd).unwrap();
    // `exec`: the shell becomes cargo, and `cargo run` execs turnkey on Unix, so the child's pid
    // is turnkey's. Its own process group, so the signal reaches it even if cargo did not exec.
    let mut child = {
        use std::os::unix::process::CommandExt as _;
        let mut sh = Command::new("sh");
        clean_cargo_env(&mut sh)
            .arg("-c")
            .arg(format!("exec {cmd}"))
            .current_dir(&cwd)
            .env("TURNKEY_LOG", "info")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect::<Vec<_>>());
    let stderr = std::thread::spawn(move || {
        BufReader::new(err).lines().map_while(Result::ok).inspect(|l| eprintln!("[readme] {l}")).collect::<Vec<_>>()
    });
    // The test command builds the release binary first; a cold `cargo run --release` may take
    // many minutes on two cores, hence the long bound.
    let started = Instant::now();
    let ready = wait_default_ready(Duration::from_secs(1800), || child.try_wait().ok().flatten().is_none());
    let ready_after = started.elapsed();
    let pgid = child.id();
    let kill = |sig: &str| {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg("--").arg(format!("-{pgid}")).status();
    };
    kill("TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            kill("KILL");
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap().join("\n");
    let stderr = stderr.join().unwrap().join("\n");
    let ctx = format!("stdout:\n{stdout}\nstderr (tail):\n{}", tail(&stderr, 40));
    assert!(ready, "`{cmd}` never answered STUN on 127.0.0.1:3478 and HTTP on 127.0.0.1:8080\n{ctx}");
    eprintln!("`{cmd}` ready after {ready_after:?}");
    let status = status.unwrap_or_else(|| panic!("`{cmd}` did not exit within 60 s of SIGTERM\n{ctx}"));
    assert_eq!(status.code(), Some(0), "`{cmd}` must exit 0 on SIGTERM ({status})\n{ctx}");
    // The banner names usable addresses, never a wildcard.
    assert!(stdout.contains("turnkey: TURN URLs: turn:"), "{ctx}");
    let human: Vec<&str> = stdout.lines().filter(|l| l.starts_with("turnkey: ")).collect();
    for l in &human {
        assert!(!l.contains("0.0.0.0") && !l.contains("[::]"), "the banner names a wildcard address: {l}\n{ctx}");
    }
    assert!(
        cwd.join("turnkey-data").join("secret").is_file(),
        "the embedded default keeps its secret in ./turnkey-data\n{ctx}"
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `deploy/systemd/turnkey.service` passes `systemd-analyze verify` (with the unit, the binary,
/// `/bin/kill` and the generated man pages in an alternate root, so nothing is installed on
/// this machine; any warning fails the test too), keeps the hardening the deployment guide
/// promises, and rates at most 2.0 ("OK") in `systemd-analyze security`.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !require("systemd-analyze") {
        return;
    }
    let unit_path = root().join("deploy/systemd/turnkey.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let keys: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |k: &str| -> Vec<&str> { keys.iter().filter(|(key, _)| *key == k).map(|(_, v)| *v).collect() };
    let one = |k: &str| -> &str {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k}= must be set once in {}", unit_path.display());
        v[0]
    };
    assert_eq!(one("DynamicUser"), "yes");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("StateDirectory"), "turnkey");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(one("ExecStart").starts_with("/usr/bin/turnkey serve --config /etc/turnkey/turnkey.toml"));
    // Descriptors for the default connection and allocation limits (20000 + 50000) and more.
    let nofile: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(nofile >= 20_000 + 50_000 + 1024, "LimitNOFILE={nofile}");
    // The stop timeout outlasts the drain of the config the package installs.
    let stop: u64 = one("TimeoutStopSec").parse().unwrap();
    let conf = std::fs::read_to_string(root().join("deploy/packaging/turnkey.toml")).unwrap();
    let conf: toml::Table = conf.parse().unwrap();
    let grace = conf["relay"]["drain_grace"].as_integer().unwrap() as u64;
    assert!(stop > grace + 5, "TimeoutStopSec={stop} must exceed drain_grace={grace} with a margin");

    // An alternate root: the unit, the binary, kill, the host's unit files, the man pages.
    let r = tempfile::tempdir().unwrap();
    let p = |rel: &str| r.path().join(rel);
    for d in ["usr/bin", "bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(p(d)).unwrap();
    }
    std::fs::copy(bin(), p("usr/bin/turnkey")).unwrap();
    std::fs::copy(which("kill"), p("bin/kill")).unwrap();
    std::fs::copy(&unit_path, p("etc/systemd/system/turnkey.service")).unwrap();
    run_ok(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system").arg(p("usr/lib/systemd/")));
    run_ok(Command::new(bin()).arg("gen-docs").arg(p("gen")));
    let out = Command::new("systemd-analyze")
        .args(["verify", "--root"])
        .arg(r.path())
        .arg("turnkey.service")
        .env("MANPATH", p("gen/man"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {}\n{text}", out.status);

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--root"])
        .arg(r.path())
        .arg("turnkey.service")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for turnkey.service: "))
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    assert!(level <= 2.0, "exposure level {level} > 2.0:\n{text}");
}

/// The absolute path of an executable on PATH (not a shell builtin).
fn which(tool: &str) -> std::path::PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{tool}` not found on PATH"))
}

/// `cargo deb` (deploy/packaging/build-deb.sh) builds `turnkey_<version>_amd64.deb` with the
/// binary, the unit, `/etc/turnkey/turnkey.toml`, man pages and completions; it installs with
/// `dpkg -i` into a Debian bookworm root made by debootstrap, where `turnkey --version` and
/// `turnkey check-config /etc/turnkey/turnkey.toml` run, and `dpkg --purge` removes it again.
#[test]
fn debian_package_installs_runs_and_purges_in_debootstrap_root() {
    if !(require("debootstrap") && require("cargo-deb") && require("dpkg-deb") && require("chroot")) {
        return;
    }
    let out = run_ok(clean_cargo_env(Command::new(root().join("deploy/packaging/build-deb.sh")).current_dir(root())));
    let deb = std::path::PathBuf::from(out.lines().last().unwrap().trim());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(deb.file_name().unwrap().to_str().unwrap(), format!("turnkey_{version}_amd64.deb"));

    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for want in [
        "./usr/bin/turnkey",
        "./etc/turnkey/turnkey.toml",
        "/systemd/system/turnkey.service",
        "./usr/share/man/man1/turnkey.1.gz",
        "./usr/share/man/man1/turnkey-serve.1.gz",
        "./usr/share/bash-completion/completions/turnkey",
        "./usr/share/zsh/vendor-completions/_turnkey",
        "./usr/share/fish/vendor_completions.d/turnkey.fish",
    ] {
        assert!(contents.contains(want), "{} lacks {want}:\n{contents}", deb.display());
    }
    let conffiles = run_ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles"));
    assert!(conffiles.contains("/etc/turnkey/turnkey.toml"), "{conffiles}");

    let r = turnkey_e2e::ops::scratch_root("deb-root");
    std::fs::copy(&deb, r.join("tmp/turnkey.deb")).unwrap();
    let chroot =
        |args: &[&str]| run_ok(Command::new("chroot").arg(&r).args(args).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"));
    chroot(&["dpkg", "-i", "/tmp/turnkey.deb"]);
    let host_version = run_ok(Command::new(root().join("target/release/turnkey")).arg("--version"));
    let version_out = chroot(&["turnkey", "--version"]);
    assert_eq!(version_out, host_version);
    assert!(version_out.starts_with(&format!("turnkey {version} (commit ")), "{version_out}");
    let checked = chroot(&["turnkey", "check-config", "/etc/turnkey/turnkey.toml"]);
    assert_eq!(checked.trim(), "/etc/turnkey/turnkey.toml: ok");
    let status = chroot(&["dpkg-query", "-W", "-f", "${Status} ${Version}", "turnkey"]);
    assert_eq!(status, format!("install ok installed {version}"));
    chroot(&["dpkg", "--purge", "turnkey"]);
    for gone in ["usr/bin/turnkey", "etc/turnkey/turnkey.toml", "usr/share/man/man1/turnkey.1.gz"] {
        assert!(!r.join(gone).exists(), "{gone} left behind after dpkg --purge");
    }
    let _ = std::fs::remove_dir_all(&r);
}

/// The `Dockerfile` builds (target `prebuilt`, from a Debian base made offline with debootstrap)
/// into an image that runs as a non-root user with the data directory as a volume, exposes the
/// default ports and declares a HEALTHCHECK on /readyz; run with the host's network, STUN, the
/// issuer and /metrics answer, the health check passes, and `podman stop` (SIGTERM) exits 0.
#[test]
fn container_image_serves_stun_issuer_and_metrics_on_default_ports() {
    use turnkey_e2e::ops::{container_base, http_status, podman, release_bin, stun_binding};
    if !(require("podman") && require("runc") && require("debootstrap")) {
        return;
    }
    assert_default_ports_free();
    release_bin();
    let base = container_base();
    const IMAGE: &str = "localhost/turnkey:test";
    run_ok(
        podman()
            .args(["build", "--format", "docker", "--network", "host", "--target", "prebuilt"])
            .arg("--build-arg")
            .arg(format!("BASE={base}"))
            .args(["-t", IMAGE, "."])
            .current_dir(root()),
    );
    let inspect = run_ok(podman().args(["image", "inspect", IMAGE]));
    let img: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let cfg = &img[0]["Config"];
    assert_eq!(cfg["User"], "turnkey:turnkey", "{cfg:#}");
    assert!(cfg["Volumes"].get("/var/lib/turnkey").is_some(), "{cfg:#}");
    for port in ["3478/udp", "3478/tcp", "5349/tcp", "8080/tcp", "9641/tcp"] {
        assert!(cfg["ExposedPorts"].get(port).is_some(), "EXPOSE lacks {port}: {cfg:#}");
    }
    let health = img[0]["Healthcheck"]["Test"].to_string();
    assert!(health.contains("/readyz"), "HEALTHCHECK: {health}");

    let name = format!("turnkey-test-{}", std::process::id());
    let _ = podman().args(["rm", "-f", &name]).output();
    run_ok(podman().args(["run", "-d", "--name", &name, "--network", "host", IMAGE]));
    let running = || {
        podman()
            .args(["inspect", "-f", "{{.State.Running}}", &name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    };
    let ready = wait_default_ready(Duration::from_secs(60), running);
    let logs = || {
        let o = podman().args(["logs", &name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    if !ready {
        let l = logs();
        let _ = podman().args(["rm", "-f", &name]).output();
        panic!("the container never answered STUN on 3478/udp and HTTP on 8080:\n{l}");
    }
    let result = std::panic::catch_unwind(|| {
        assert!(stun_binding("127.0.0.1:3478".parse().unwrap(), Duration::from_secs(2)));
        assert_eq!(http_status("127.0.0.1:8080".parse().unwrap(), "/readyz"), Some(200));
        let (status, metrics) = turnkey_e2e::http("127.0.0.1:9641".parse().unwrap(), "GET", "/metrics", &[], None);
        assert_eq!(status, 200);
        assert!(metrics.contains("turnkey_build_info{"), "{metrics}");
        // The image's own HEALTHCHECK command passes.
        run_ok(podman().args(["healthcheck", "run", &name]));
        // It runs as the non-root user, with the data directory on the volume.
        let id = run_ok(podman().args(["exec", &name, "id", "-u"]));
        assert_eq!(id.trim(), "10001");
        run_ok(podman().args(["exec", &name, "test", "-f", "/var/lib/turnkey/secret"]));
        run_ok(podman().args(["stop", "-t", "45", &name]));
        let code = run_ok(podman().args(["inspect", "-f", "{{.State.ExitCode}}", &name]));
        assert_eq!(code.trim(), "0", "exit status after SIGTERM");
    });
    let l = logs();
    let _ = podman().args(["rm", "-f", &name]).output();
    if let Err(e) = result {
        eprintln!("container logs:\n{l}");
        std::panic::resume_unwind(e);
    }
}

/// `deploy/compose/compose.yaml` is valid for Debian's docker-compose (`config` parses and
/// resolves it without a daemon), mounts the shipped rules and dashboard that exist, and its
/// Prometheus config with the shipped rules passes `promtool check config`.
#[test]
fn compose_file_is_valid() {
    if !(require("docker-compose") && require("promtool")) {
        return;
    }
    let compose = root().join("deploy/compose/compose.yaml");
    let out = run_ok(
        Command::new("docker-compose").arg("-f").arg(&compose).arg("config").env("GRAFANA_ADMIN_PASSWORD", "test-only"),
    );
    for service in ["turnkey:", "redis:", "prometheus:", "grafana:"] {
        assert!(out.contains(&format!("  {service}")), "no {service} service:\n{out}");
    }
    // Every bind-mounted host path exists (the rules and the dashboard are the shipped ones).
    let mut mounts = 0;
    for line in out.lines().map(str::trim).filter(|l| l.starts_with("- /")) {
        let host = line.trim_start_matches("- ").split(':').next().unwrap();
        assert!(std::path::Path::new(host).exists(), "{host} (mounted by {}) is missing", compose.display());
        mounts += 1;
    }
    assert!(out.contains("deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml"), "{out}");
    assert!(out.contains("deploy/grafana/turnkey.json:/var/lib/grafana/dashboards/turnkey/turnkey.json"), "{out}");
    assert!(mounts >= 4, "{out}");
    // Without the Grafana password the file refuses to resolve (no default admin password).
    let no_pw = Command::new("docker-compose")
        .arg("-f")
        .arg(&compose)
        .arg("config")
        .env_remove("GRAFANA_ADMIN_PASSWORD")
        .output()
        .unwrap();
    assert!(!no_pw.status.success(), "compose must require GRAFANA_ADMIN_PASSWORD");

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root().join("deploy/compose/prometheus.yml"), dir.path().join("prometheus.yml")).unwrap();
    std::fs::copy(root().join("deploy/prometheus/alerts.yml"), dir.path().join("alerts.yml")).unwrap();
    let checked = run_ok(Command::new("promtool").arg("check").arg("config").arg(dir.path().join("prometheus.yml")));
    assert!(checked.contains("SUCCESS"), "{checked}");
}

/// `deploy/kubernetes/` renders (render.py, the kustomize subset it uses) into objects that all
/// pass `kubernetes-validate --strict` against the Kubernetes schemas; the two custom resources
/// (ServiceMonitor, PrometheusRule) carry the shipped alert rules verbatim and pass `promtool`;
/// the configs the pods mount pass `turnkey check-config`; the relay's grace period covers
/// preStop plus the drain.
#[test]
fn kubernetes_manifests_validate_and_configs_check() {
    if !(require("kubernetes-validate") && require("promtool")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rendered = run_ok(Command::new("python3").arg(root().join("deploy/kubernetes/render.py")));
    let all = dir.path().join("all.yaml");
    std::fs::write(&all, &rendered).unwrap();
    // Split into files the checks below need (PyYAML comes with kubernetes-validate).
    let split = r#"
import sys, yaml
out = sys.argv[2]
docs = list(yaml.safe_load_all(open(sys.argv[1])))
alerts = yaml.safe_load(open(sys.argv[3]))
kinds = []
for d in docs:
    kinds.append(d["kind"])
    if d["kind"] == "ConfigMap":
        for name, text in d["data"].items():
            open(f"{out}/{name}", "w").write(text)
    if d["kind"] == "PrometheusRule":
        assert d["spec"] == alerts, "the PrometheusRule's spec differs from deploy/prometheus/alerts.yml"
        yaml.safe_dump(d["spec"], open(f"{out}/rules.yml", "w"))
    if d["kind"] == "DaemonSet":
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert pod["hostNetwork"] is True
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        pre = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre[0] == "sleep"
        print(f"grace {pod['terminationGracePeriodSeconds']} prestop {pre[1]}")
    if d["kind"] == "Deployment" and d["metadata"]["name"] == "turnkey-issuer":
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "turnkey", d["metadata"]
print("kinds " + ",".join(sorted(kinds)))
"#;
    let info = run_ok(
        Command::new("python3")
            .args(["-c", split])
            .arg(&all)
            .arg(dir.path())
            .arg(root().join("deploy/prometheus/alerts.yml")),
    );
    let kinds = info.lines().find_map(|l| l.strip_prefix("kinds ")).unwrap();
    for k in
        ["DaemonSet", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "ConfigMap"]
    {
        assert!(kinds.split(',').any(|x| x == k), "no {k} in the kustomization: {kinds}");
    }
    let grace_line = info.lines().find(|l| l.starts_with("grace ")).unwrap();
    let nums: Vec<u64> = grace_line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let relay_conf = std::fs::read_to_string(dir.path().join("relay.toml")).unwrap();
    let drain: u64 = relay_conf.parse::<toml::Table>().unwrap()["relay"]["drain_grace"].as_integer().unwrap() as u64;
    assert!(
        nums[0] > nums[1] + drain,
        "terminationGracePeriodSeconds {} must exceed preStop {} + drain_grace {drain}",
        nums[0],
        nums[1]
    );

    // Every built-in object validates against the schemas; only the two CRDs have none.
    let out = Command::new("kubernetes-validate").args(["--strict"]).arg(&all).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
    let crds = text.lines().filter(|l| l.contains("Couldn't find schema for kind")).collect::<Vec<_>>();
    assert_eq!(passed + crds.len(), rendered.lines().filter(|l| l.starts_with("kind: ")).count(), "{text}");
    for l in &crds {
        assert!(l.contains("ServiceMonitor") || l.contains("PrometheusRule"), "unvalidated object: {l}");
    }
    let rules = run_ok(Command::new("promtool").args(["check", "rules"]).arg(dir.path().join("rules.yml")));
    assert!(rules.contains("SUCCESS"), "{rules}");
    for conf in ["relay.toml", "issuer.toml"] {
        let p = dir.path().join(conf);
        let ok = run_ok(Command::new(bin()).arg("check-config").arg(&p));
        assert!(ok.trim().ends_with(": ok"), "{conf}: {ok}");
    }
}
