#!/usr/bin/env python3
"""Side-by-side benchmark: coturn vs turnkey under the same load, in one run.

Servers: coturn 4.6.1 (Debian's `turnserver`, default configuration), turnkey, and, when a
`turnserver` of coturn 4.17.1 is given (`--coturn-4171 PATH` or the COTURN_4171_BIN variable),
that coturn in its fastest configuration: `--udp-gso --multiplex-peer` (which implies sendmmsg
batching and turns `--udp-recvmmsg` on; docs/multiplex-peer.md and docs/PerformanceIterationLog.md
of coturn). Debian ships only 4.6.1; 4.17.1 is built from coturn's upstream tag with its own build
system (`./configure && make`; libevent-dev and libssl-dev) outside this repository.

Each server runs pinned to core 0 (`taskset -c 0`), the load generator (`turnkey load`, release
build) to core 1. Every repetition starts a fresh server. Figures are medians over the
repetitions, with the spread (min..max). Results go to a JSON file and a Markdown section that
docs/benchmarks.md quotes verbatim.

A second turnkey build (`--turnkey-before PATH` or TURNKEY_BEFORE_BIN, e.g. the release binary of
an earlier commit) runs as `turnkey-before` next to the others, so a change is measured before
and after in the same run.

`--no-sessions-variant` (or TURNKEY_BENCH_NO_SESSIONS=1) adds `turnkey-nosessions`: the same
build with `--no-sessions` (no live session listing: shards take no snapshot at their sweep), so
the listing's cost per relayed message is the `turnkey / turnkey-nosessions` column of one run.

`--net veth` runs every server inside a network namespace and the load generator inside a second
one, joined by a veth pair with GRO on both ends (created here, deleted at exit; needs root,
`ip` and `ethtool`): unlike loopback, the veth has a 1500-byte MTU and coalesces received trains
in NAPI as a NIC driver does. The own echo peer then lives in the generator's namespace, across
the veth.

Over a veth each end runs threaded NAPI (bench/vethnet.py): the receive work of the server's end
(XDP, GRO, the stack up to the server's sockets) runs in a kernel thread pinned to core 0 with the
server, the generator end's in one pinned to core 1, for every server alike; otherwise the
receiving side's softirq would run on the sending core and every server's receive path would be
charged to the generator. `--kernel-echo` makes the echo-peer loads' peer answer in the kernel
(bench/bpf/echo_peer.c, tc on the generator's end) instead of in `turnkey load`'s sockets, so the
generator's core only sends and receives at the clients; each run checks that it reflected at
least every datagram the clients got back.

`--wire xdp` (or BENCH_VETH_WIRE=xdp; with `--net veth`) joins the two namespaces through a third
whose two veth ends redirect every frame to each other in XDP (bench/bpf/wire.c): frames reach
the server's end as xdp_frames, as a NIC's driver hands them to XDP, instead of socket buffers the
veth copies into a page before the server end's XDP program. The middle's work runs in its NAPI
threads on the generator's core; both outer ends send full checksums; every server alike.

`--fast-path` (with `--net veth`) adds `turnkey-xdp`: turnkey with `--fast-path xdp`, bound
channels relayed by its XDP program (docs/fastpath.md). For it the veth is prepared as the
kernel path needs: forwarding on the server's end, TX checksum offload off and the XDP_PASS stub
(`turnkey_xdp_pass`, attached with `ip link ... xdpdrv`) on the generator's end, and
`kernel.bpf_stats_enabled` on during the run. Every server's CPU per relayed message is then
also given on its core (`server_core_us_per_msg`: the process and its end's NAPI threads;
`core0_busy_us_per_msg`: all of core 0), with the program's own run time (`bpf_us_per_msg`,
from the server's BPF program file descriptors; inside the NAPI threads' time, not added again)
and where it ran (`xdp_runs_by_cpu`); `with_softirq_us_per_msg` (the process plus all CPUs'
softirq, the method before threaded NAPI) stays in the JSON.

Usage:
    bench/compare.py [--quick] [--reps N] [--out DIR] [--only issuance|profiles|udp]
                     [--coturn-4171 PATH] [--turnkey-before PATH] [--net loopback|veth] [--fast-path]
                     [--kernel-echo] [--wire veth|xdp] [--no-sessions-variant]

`--only udp` is the UDP data path only (issue 17): capacity in pair and echo-peer mode at 100 and
1200 B, the round trip at half load in both modes, and CPU per message for every traffic shape.
Each capacity ramp also records what limited it (`limit`, and the table "what limited each
ramp"): the peak 1 s busy share of the server process, of the server with its veth end's NAPI
thread, of core 0 and of core 1 (the generator's), and the rate the generator offered against the
rate asked at the ramp's top step. A ramp that ended with the generator's core saturated or the
generator behind (under 95% of the rate asked) and the server not saturated is *generator-bound*:
the server's capacity is at least the figure (shown as "≥"). turnkey-xdp's ramp climbs in steps
four times larger than the others'.

Needs: coturn's `turnserver`, `taskset`, `openssl`, `wrk` (Debian; for the issuance figure), and `cargo build --release -p turnkey`
(done by the script). Loopback (or the namespaces it creates) only; every load is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import vethnet

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "turnkey"
SERVER_CORE, LOAD_CORE = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Ramp: offered packets/s (all flows) added per coarse step; 12 steps, then 8 fine steps of 1/8.
COARSE_STEP = 8000
# The kernel fast path's capacity ramp climbs in steps this many times COARSE_STEP.
FAST_STEP_FACTOR = 4
# Relayed messages per second for the CPU-per-message figure (client to client, both ways).
CPU_RATE = 20000
COTURN_FAST = "coturn-4.17.1"
BEFORE = "turnkey-before"
FAST = "turnkey-xdp"
NOSESS = "turnkey-nosessions"
TURNKEY_KINDS = ("turnkey", BEFORE, FAST, NOSESS)


class Net:
    """Where servers and the load generator run: both on loopback (default), or each in its own
    network namespace joined by a veth pair (`veth`), each end's receive work on its own side's
    core (threaded NAPI, bench/vethnet.py)."""

    def __init__(self, kind: str, fast_path: bool = False, kernel_echo: bool = False, wire: str = "veth"):
        self.kind, self.fast_path, self.wire = kind, fast_path, wire
        self.server_ip = self.load_ip = "127.0.0.1"
        self.ns_server = self.ns_load = None
        self.dev_server = self.dev_load = None
        self.napi_server: list[int] = []
        self.napi_load: list[int] = []
        self.napi_mid: list[int] = []
        self.ns_mid: str | None = None
        self.devs_mid: tuple[str, str] | None = None
        self.wire_dir: Path | None = None
        self.echo: vethnet.KernelEcho | None = None
        if kind == "veth":
            tag = f"tkb{os.getpid()}"
            self.ns_server, self.ns_load = f"{tag}a", f"{tag}b"
            # Interface names unique to the run: their NAPI threads are found by name.
            self.dev_server, self.dev_load = f"{tag}s", f"{tag}l"
            self.server_ip, self.load_ip = "10.213.0.1", "10.213.0.2"
            ends = ((self.ns_server, self.dev_server, self.server_ip), (self.ns_load, self.dev_load, self.load_ip))
            if wire == "xdp":
                # The XDP wire (bench/vethnet.py): frames reach the server's end as from a NIC's
                # driver, for every server; the middle's work runs on the generator's core.
                self.ns_mid, self.devs_mid = f"{tag}m", (f"{tag}x", f"{tag}y")
                self.wire_dir = vethnet.create_wire(*ends, (self.ns_mid, *self.devs_mid), VETH_QUEUES)
            else:
                vethnet.create_pair(*ends, VETH_QUEUES)
            sh = lambda *a: subprocess.run(a, check=True, capture_output=True)
            if fast_path:
                # What the kernel path needs on a veth (docs/fastpath.md): forwarding where the
                # program runs, the XDP_PASS stub on the far end (XDP_TX frames are dropped
                # without it), full checksums from the generator's sockets.
                sh("ip", "netns", "exec", self.ns_server, "sh", "-c",
                   f"echo 1 > /proc/sys/net/ipv4/conf/{self.dev_server}/forwarding")
                sh("ip", "netns", "exec", self.ns_load, "ethtool", "-K", self.dev_load, "tx", "off")
                sh("ip", "-n", self.ns_load, "link", "set", "dev", self.dev_load, "xdpdrv", "object",
                   str(xdp_object()), "program", "turnkey_xdp_pass")
            if kernel_echo:
                self.echo = vethnet.KernelEcho(self.ns_load, self.dev_load)
            self.pin_napi()

    def pin_napi(self) -> None:
        """Pins the server end's NAPI thread to the server's core and the generator end's to the
        generator's (again at every server start: a thread the kernel re-created is found anew)."""
        if not self.dev_server:
            return
        self.napi_server = vethnet.napi_threads(self.dev_server)
        self.napi_load = vethnet.napi_threads(self.dev_load)
        if not self.napi_server or not self.napi_load:
            sys.exit(f"no threaded NAPI thread found for {self.dev_server} / {self.dev_load} "
                     f"(server end {self.napi_server}, generator end {self.napi_load})")
        vethnet.pin(self.napi_server, SERVER_CORE)
        vethnet.pin(self.napi_load, LOAD_CORE)
        if self.devs_mid:
            self.napi_mid = [t for d in self.devs_mid for t in vethnet.napi_threads(d)]
            if not self.napi_mid:
                sys.exit(f"no threaded NAPI thread found for the wire's ends {self.devs_mid}")
            vethnet.pin(self.napi_mid, LOAD_CORE)

    def drops(self) -> dict:
        """Packets each veth end dropped so far, received and sent (nothing on loopback)."""
        if not self.dev_server:
            return {}
        out = {"server_end": vethnet.drops(self.ns_server, self.dev_server),
               "generator_end": vethnet.drops(self.ns_load, self.dev_load)}
        if self.devs_mid:
            out["wire_server_side"] = vethnet.drops(self.ns_mid, self.devs_mid[0])
            out["wire_generator_side"] = vethnet.drops(self.ns_mid, self.devs_mid[1])
        return out

    def drops_since(self, before: dict) -> dict:
        """What each veth end dropped since `before` (an earlier `drops()`)."""
        return {e: {d: n - before[e][d] for d, n in c.items()} for e, c in self.drops().items()}

    def napi_server_secs(self) -> float:
        """CPU time of the server end's NAPI thread(s): the server's kernel receive work (XDP, GRO,
        the stack up to its sockets, and XDP_TX)."""
        return vethnet.thread_secs(self.napi_server)

    def in_server_ns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_server, *cmd] if self.ns_server else cmd

    def in_load_ns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns_load, *cmd] if self.ns_load else cmd

    def close(self) -> None:
        for ns in (self.ns_server, self.ns_load, self.ns_mid):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self.wire_dir:
            shutil.rmtree(self.wire_dir, ignore_errors=True)
        if self.echo:
            shutil.rmtree(self.echo.dir, ignore_errors=True)


# Queues of each veth end (bench/vethnet.py): each has its own 256-packet ring and NAPI thread.
VETH_QUEUES = int(os.environ.get("BENCH_VETH_QUEUES", "4"))
# Ramps paced in bursts of about this many packets (`turnkey load --pace-burst`); unset: the tick.
PACE_BURST = os.environ.get("BENCH_PACE_BURST") or None
NET = Net("loopback")
# Traffic shapes for the CPU-per-message comparison, each near CPU_RATE relayed messages/s (every
# packet crosses the relay twice, in pair and in echo-peer mode): smooth pacing at 100 and 1200 B,
# 200 voice calls (50 pkt/s of 160 B each), 48 video calls at 2 Mbit/s (30 frames/s, trains of
# seven 1200 B packets: 210 pkt/s each).
PROFILE_LOADS = {
    "smooth 100 B": ["--flows", "10", "--payload", "100", "--rate", f"{CPU_RATE / 2 / 10:.3f}"],
    "smooth 1200 B": ["--flows", "10", "--payload", "1200", "--rate", f"{CPU_RATE / 2 / 10:.3f}"],
    "audio 160 B": ["--profile", "audio", "--flows", "200"],
    "video 1200 B, 2 Mbit/s": ["--profile", "video", "--bitrate", "2M", "--flows", "48"],
}


def xdp_object() -> Path:
    """The XDP object of the release build (turnkey-fastpath's build.rs output)."""
    found = sorted((ROOT / "target" / "release" / "build").glob("turnkey-fastpath-*/out/turnkey_xdp.o"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit("no turnkey_xdp.o in target/release/build: the release build had no clang (docs/fastpath.md)")
    return found[-1]


def core_busy_secs(core: str) -> float:
    """Busy time of one CPU since boot (/proc/stat: everything but idle and iowait, softirq
    included), in seconds."""
    f = vethnet.cpu_stat(core)
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK if f else 0.0


# A core at or above this share of its time busy over a 1 s window is called saturated.
SATURATED_PCT = 90.0


def softirq_secs() -> float:
    """Softirq time of all CPUs since boot, in seconds (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[7]) / CLK_TCK


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Servers' listening ports come from here: below the kernel's ephemeral range (32768-60999 by
# default) and above the relay ports (10000-29999). A listener port inside the ephemeral range can
# be handed, for UDP, to one of `turnkey load`'s echo sockets on loopback; the relay then refuses
# that peer (403: its own TLS or HTTP port) and a 200-flow load fails now and then.
SERVICE_PORTS = range(30000, 32768)


def service_port(*taken: int | None) -> int:
    """A port free over both TCP and UDP on loopback, from SERVICE_PORTS, none of `taken`."""
    for p in random.sample(SERVICE_PORTS, 200):
        if p in taken:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", p))
                u.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
    sys.exit(f"no free port in {SERVICE_PORTS.start}-{SERVICE_PORTS.stop - 1}")


def free_udp_pair() -> int:
    """A UDP port whose successor is free too (coturn's multiplex-peer binds both)."""
    for _ in range(100):
        p = free_port()
        if p < 65535:
            try:
                with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                    s.bind(("::1", p + 1))
                return p
            except OSError:
                continue
    sys.exit("no free pair of UDP ports")


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A TURN server under test: coturn or turnkey, pinned to SERVER_CORE."""

    def __init__(self, kind: str, secret: str, tls: tuple[Path, Path], http: bool = False,
                 coturn_fast: Path | None = None, before: Path | None = None):
        self.kind, self.secret = kind, secret
        self.http = service_port() if http else None
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
        self.udp = self.tcp = service_port(self.http)
        self.tls = service_port(self.http, self.udp)
        cert, key = tls
        if kind in ("coturn", COTURN_FAST):
            binary = str(coturn_fast) if kind == COTURN_FAST else "turnserver"
            cmd = [
                binary, "-n", f"--listening-ip={NET.server_ip}", f"--listening-port={self.udp}",
                f"--tls-listening-port={self.tls}", f"--relay-ip={NET.server_ip}", "--min-port=10000",
                "--max-port=29999", "--use-auth-secret", f"--static-auth-secret={secret}",
                "--realm=bench", "--allow-loopback-peers", "--no-cli", "--no-dtls", "--relay-threads=1",
                f"--cert={cert}", f"--pkey={key}", f"--log-file={self.dir}/coturn.log", "--simple-log",
                f"--pidfile={self.dir}/pid", f"--db={self.dir}/db", "--total-quota=0", "--user-quota=0",
            ]
            if kind == COTURN_FAST:
                # One relay thread binds the base port (IPv4) and the next (IPv6).
                cmd += ["--udp-gso", "--multiplex-peer", f"--multiplex-peer-port={free_udp_pair()}"]
        else:
            ip = NET.server_ip
            cmd = [
                str(before if kind == BEFORE else BIN), "serve", *({FAST: ["--fast-path", "xdp"], BEFORE: [], NOSESS: ["--fast-path", "off", "--no-sessions"]}.get(kind, ["--fast-path", "off"])), "--data-dir", str(self.dir), f"--secret={secret}",
                "--udp", f"{ip}:{self.udp}", "--tcp", f"{ip}:{self.tcp}",
                "--tls", f"{ip}:{self.tls}", "--tls-cert", str(cert), "--tls-key", str(key),
                "--relay-ip", ip, "--relay-ports", "10000-29999", "--allow-peer", "127.0.0.1",
                # Over the veth: the generator's echo peer, and the server's own relayed
                # addresses (pair mode; an earlier build may not allow those by itself).
                *(["--allow-peer", NET.load_ip, "--allow-peer", NET.server_ip] if NET.ns_load else []),
                "--shards", "1", "--http", f"127.0.0.1:{self.http}" if http else "off", "--metrics", "off", "--max-allocations-per-user", "100000",
                "--unauth-replies-per-sec", "0",
            ]
        self.proc = subprocess.Popen(
            NET.in_server_ns(["taskset", "-c", SERVER_CORE, *cmd]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=raise_nofile, env={**os.environ, "TURNKEY_LOG": "warn"},
        )
        self._wait_ready()
        NET.pin_napi()
        if NET.echo:
            NET.echo.serve(NET.server_ip, self.udp)

    def _wait_ready(self) -> None:
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{self.kind} exited at start with {self.proc.returncode}")
            if NET.ns_load:
                probe = subprocess.run(NET.in_load_ns(["bash", "-c", f"exec 3<>/dev/tcp/{NET.server_ip}/{self.tcp}"]),
                                       capture_output=True)
                if probe.returncode == 0:
                    time.sleep(0.3)
                    return
                time.sleep(0.1)
                continue
            try:
                socket.create_connection(("127.0.0.1", self.tcp), timeout=0.2).close()
                time.sleep(0.3)
                return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"{self.kind} did not start listening")

    def cpu_secs(self) -> tuple[float, float]:
        """User and system CPU of the server process (all threads), in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def bpf_secs(self) -> float:
        """Run time of the BPF programs this process holds (fdinfo's run_time_ns; zero unless
        kernel.bpf_stats_enabled is on)."""
        total = 0
        for fd in Path(f"/proc/{self.proc.pid}/fdinfo").iterdir():
            try:
                info = fd.read_text()
            except OSError:
                continue
            if "prog_type:" in info:
                for line in info.splitlines():
                    if line.startswith("run_time_ns:"):
                        total += int(line.split()[1])
        return total / 1e9

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class CpuCounters:
    """The CPU counters a figure per relayed message is the difference of: the server process (user,
    system), its veth end's NAPI threads, core 0's busy and softirq time, all CPUs' softirq, and
    the run time of the server's BPF programs."""

    def __init__(self, server: Server):
        self.server = server
        self.user, self.sys = server.cpu_secs()
        self.napi, self.core_softirq = NET.napi_server_secs(), vethnet.core_softirq_secs(SERVER_CORE)
        self.core_busy = core_busy_secs(SERVER_CORE)
        self.softirq, self.bpf = softirq_secs(), server.bpf_secs()
        # Where the XDP program ran: its per-CPU counters (one count per run).
        self.xdp = (vethnet.xdp_counts_per_cpu(NET.ns_server, NET.dev_server)
                    if server.kind == FAST and NET.dev_server else {})

    def per_msg(self, msgs: int) -> dict:
        """Each counter's growth since construction in µs per relayed message. `server_core_us_per_msg`
        is the server's cost on its core: process + its veth end's NAPI threads (the BPF run time is
        inside the threads'). Softirq work is inside it too: without IRQ time accounting (this
        kernel's) a tick that lands in a softirq is charged to the task it interrupted as well as
        to the CPU's softirq figure, so adding core 0's softirq would count it twice.
        `core0_busy_us_per_msg` is all of core 0's busy time (on an idle machine the same plus what
        interrupted the idle task); `with_softirq_us_per_msg` is the older figure: process + the
        softirq of all CPUs."""
        now = CpuCounters(self.server)
        d = {k: getattr(now, k) - getattr(self, k)
             for k in ("user", "sys", "napi", "core_softirq", "core_busy", "softirq", "bpf")}
        per = lambda x: 1e6 * x / msgs
        runs = {cpu: n - self.xdp.get(cpu, 0) for cpu, n in now.xdp.items()}
        where = {"xdp_runs_by_cpu": runs,
                 "xdp_runs_on_server_core_pct": 100 * runs.get(int(SERVER_CORE), 0) / max(sum(runs.values()), 1)}
        return {"user_s": d["user"], "sys_s": d["sys"], "msgs": msgs, "us_per_msg": per(d["user"] + d["sys"]),
                "user_us_per_msg": per(d["user"]), "sys_us_per_msg": per(d["sys"]),
                "napi_us_per_msg": per(d["napi"]), "core_softirq_us_per_msg": per(d["core_softirq"]),
                "server_core_us_per_msg": per(d["user"] + d["sys"] + d["napi"]),
                "core0_busy_us_per_msg": per(d["core_busy"]),
                "softirq_us_per_msg": per(d["softirq"]), "bpf_us_per_msg": per(d["bpf"]),
                "with_softirq_us_per_msg": per(d["user"] + d["sys"] + d["softirq"]), **(where if runs else {})}


class CpuPeak:
    """Samples the server's CPU every 0.25 s while a load runs; `peak` is the highest share of one
    core used over any 1 s window. Near 100% the server was the bottleneck; well under it, the
    load generator (or the network stack outside the server) was. `server_side_peak` adds the
    server end's NAPI thread (over a veth: the server's kernel receive work, XDP included, pinned
    to core 0). `server_core_peak` and `load_core_peak` are the same for the two pinned cores as a
    whole (every process and kernel thread on them, softirq included)."""

    def __init__(self, server: Server):
        self.server, self.samples, self.stop = server, [], threading.Event()
        self.cores: list[tuple[float, float, float]] = []
        # The server process plus its end's NAPI thread (over a veth; the process alone otherwise).
        self.side: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            u, s = self.server.cpu_secs()
            t = time.monotonic()
            self.samples.append((t, u + s))
            self.side.append((t, u + s + NET.napi_server_secs()))
            self.cores.append((t, core_busy_secs(SERVER_CORE), core_busy_secs(LOAD_CORE)))
            time.sleep(0.25)

    @staticmethod
    def _peak(samples: list[tuple[float, float]]) -> float:
        best = 0.0
        for i, (t0, c0) in enumerate(samples):
            for t1, c1 in samples[i + 1:]:
                if t1 - t0 >= 1.0:
                    best = max(best, (c1 - c0) / (t1 - t0))
                    break
        return min(100 * best, 100.0)

    @property
    def server_side_peak(self) -> float:
        """Peak share of a core used by the server process and its veth end's NAPI thread together
        (the server's whole receive and relay work)."""
        return self._peak(self.side)

    @property
    def server_core_peak(self) -> float:
        return self._peak([(t, a) for t, a, _ in self.cores])

    @property
    def load_core_peak(self) -> float:
        return self._peak([(t, b) for t, _, b in self.cores])

    def __enter__(self) -> "CpuPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def peak(self) -> float:
        best = 0.0
        for i, (t0, c0) in enumerate(self.samples):
            for t1, c1 in self.samples[i + 1:]:
                if t1 - t0 >= 1.0:
                    best = max(best, (c1 - c0) / (t1 - t0))
                    break
        return 100 * best


def load(server: Server, transport: str, *args: str, ca: Path | None = None) -> dict:
    port = {"udp": server.udp, "tcp": server.tcp, "tls": server.tls}[transport]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [
            "taskset", "-c", LOAD_CORE, str(BIN), "load", "--server", f"{NET.server_ip}:{port}",
            "--transport", transport, f"--secret={server.secret}", "--quiet", "--json", out.name, *args,
        ]
        if transport == "tls":
            cmd += ["--ca", str(ca), "--sni", "localhost"]
        p = subprocess.run(NET.in_load_ns(cmd), capture_output=True, text=True, timeout=600, preexec_fn=raise_nofile)
        if p.returncode == 2:
            sys.exit(f"turnkey load could not start: {p.stderr}")
        return json.loads(Path(out.name).read_text())


def ramp_limit(server_pct: float, side_pct: float, server_core_pct: float, load_core_pct: float,
               offered_share: float, ring_drops: int, at_ceiling: bool) -> str:
    """What limited a capacity ramp, from the peaks of its 1 s windows: the server process (its
    own CPU on core 0), the server with its veth end's NAPI thread (its kernel receive work, XDP
    included), the server's core (core 0 busy), the generator's core (core 1: `turnkey load`, its
    end's NAPI thread and its echo peer), the generator falling behind (it offered under 95% of
    the rate asked at the ramp's top step), or none of them: the veth's rings overflowing (loss
    with packets dropped at the veth, no core saturated), the ramp's ceiling, or loss with no core
    saturated."""
    limits = []
    if server_pct >= SATURATED_PCT:
        limits.append("server process")
    elif side_pct >= SATURATED_PCT:
        limits.append("server + NAPI thread")
    elif server_core_pct >= SATURATED_PCT:
        limits.append("server core")
    if load_core_pct >= SATURATED_PCT:
        limits.append("generator core")
    elif offered_share < GENERATOR_BEHIND:
        limits.append("generator behind")
    if limits:
        return " + ".join(limits)
    if at_ceiling:
        return "ramp ceiling"
    return "veth ring full" if ring_drops else "no core saturated"


# A ramp whose top step was offered under this share of the rate asked ended on the generator.
GENERATOR_BEHIND = 0.95


def top_step(*reports: dict) -> tuple[float, float]:
    """The rate asked (all flows) and offered at the highest step of the given ramp reports."""
    best = (0.0, 0.0)
    for r in reports:
        flows = r.get("flows_established") or r.get("flows_requested") or 1
        for step in (r.get("ramp") or {}).get("steps", []):
            asked = step["rate_per_flow_pps"] * flows
            if asked > best[0]:
                best = (asked, step["traffic"]["offered_pps"])
    return best


def echo_check(s: Server, before: dict, reports: tuple[dict, ...]) -> dict:
    """What the kernel echo peer reflected during a load: at least every datagram the clients got
    back (otherwise the echoes came from elsewhere and the run is not what it claims)."""
    after = NET.echo.counts()
    reflected = after["reflected"] - before["reflected"]
    delivered = sum(st["traffic"]["delivered"] for r in reports for st in (r.get("ramp") or {}).get("steps", [])) \
        if any(r.get("ramp") for r in reports) else sum(r["traffic"]["delivered"] for r in reports)
    if reflected < delivered:
        sys.exit(f"{s.kind}: the kernel echo peer reflected {reflected} datagrams but the clients got {delivered} "
                 "back: echoes came from elsewhere")
    return {"reflected": reflected, "delivered": delivered}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "all": values}


class Bench:
    def __init__(self, reps: int, quick: bool, coturn_fast: Path | None = None, before: Path | None = None,
                 fast_path: bool = False, no_sessions: bool = False):
        self.reps, self.quick, self.coturn_fast, self.before = reps, quick, coturn_fast, before
        self.kinds = ["coturn", *([COTURN_FAST] if coturn_fast else []), *([BEFORE] if before else []), "turnkey",
                      *([NOSESS] if no_sessions else []), *([FAST] if fast_path else [])]
        self.secret = "bench-" + secrets.token_hex(16)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-tls-"))
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             # An end-entity certificate: webpki refuses a CA certificate as a server's.
             "-addext", "basicConstraints=critical,CA:FALSE"],
            check=True, capture_output=True,
        )
        self.tls = (cert, key)
        self.results: dict = {}

    def each(self, fn, *a, pair: bool = False, kinds: list[str] | None = None) -> dict:
        """Runs fn(server, *a) on a fresh server per repetition, the servers taking turns. With
        `pair` (two allocations of the server are each other's peer) coturn 4.17.1 is left out:
        under --multiplex-peer every allocation has the same relayed address, and it refuses a
        ChannelBind to it (400)."""
        kinds = [k for k in (kinds or self.kinds) if not (pair and k == COTURN_FAST)]
        out: dict[str, list] = {kind: [] for kind in kinds}
        for _ in range(self.reps):
            for kind in kinds:
                s = Server(kind, self.secret, self.tls, coturn_fast=self.coturn_fast, before=self.before)
                try:
                    out[kind].append(fn(s, *a))
                finally:
                    s.stop()
        return out

    # Capacity: the highest offered rate with loss at or under 0.1%, found by a coarse ramp then
    # a fine one starting from the coarse result. In pair mode every packet crosses the relay
    # twice (to the far allocation and back), so relayed messages/s = 2 x offered.
    def capacity(self, s: Server, transport: str, flows: int, payload: int, peer: str = "pair") -> dict:
        common = ["--scenario", "ramp", "--flows", str(flows), "--payload", str(payload),
                  "--ramp-loss", "0.1", "--duration", "1", "--drain-ms", "300",
                  *(["--echo-peer"] if peer == "echo" else []),
                  # BENCH_PACE_BURST=N: the generator paces its ramps in bursts of about N packets
                  # instead of a whole 1 ms tick per flow (`turnkey load --pace-burst`), for every
                  # server alike: a tick's burst can overflow a veth's 256-packet rings.
                  *(["--pace-burst", PACE_BURST] if PACE_BURST else [])]
        # The kernel path relays far more than a user-space server on one core: its ramp climbs in
        # steps FAST_STEP_FACTOR times larger, so it can reach several times coturn's figure.
        coarse = COARSE_STEP * (FAST_STEP_FACTOR if s.kind == FAST else 1)
        coarse_step = coarse / flows
        echo0 = NET.echo.counts() if NET.echo and peer == "echo" else None
        drops0 = NET.drops()
        with CpuPeak(s) as cpu:
            r = load(s, transport, *common, "--rate", f"{coarse_step:.3f}", "--ramp-step", f"{coarse_step:.3f}",
                     "--ramp-steps", "20", ca=self.tls[0])
            best = (r["ramp"] or {}).get("max_loss_free_pps") or 0.0
            base = max(best, 1000.0) / flows
            fine = coarse / 8 / flows
            r2 = load(s, transport, *common, "--rate", f"{base:.3f}", "--ramp-step", f"{fine:.3f}",
                      "--ramp-steps", "8", ca=self.tls[0])
        best = max(best, (r2["ramp"] or {}).get("max_loss_free_pps") or 0.0)
        if not best:
            sys.exit(f"{s.kind} {transport}: no loss-free step: {r.get('first_errors')} {r2.get('first_errors')}")
        at_ceiling = r["ramp"]["first_lossy_step"] is None
        server, side = cpu.peak, cpu.server_side_peak
        server_core, load_core = cpu.server_core_peak, cpu.load_core_peak
        asked, offered = top_step(r, r2)
        drops = NET.drops_since(drops0)
        out = {"offered_pps": best, "relayed_msgs_per_s": 2 * best, "server_cpu_peak_pct": server,
               "server_side_peak_pct": side, "server_core_peak_pct": server_core, "load_core_peak_pct": load_core,
               "top_asked_pps": asked, "top_offered_pps": offered, "veth_drops": drops,
               "at_ceiling": at_ceiling,
               "limit": ramp_limit(server, side, server_core, load_core, offered / max(asked, 1.0),
                                   sum(c["tx"] for c in drops.values()), at_ceiling)}
        if echo0 is not None:
            out["kernel_echo"] = echo_check(s, echo0, (r, r2))
        return out

    # CPU per relayed message at a fixed rate both servers sustain.
    def cpu_per_msg(self, s: Server, transport: str, msgs_per_s: int) -> dict:
        flows = 10
        rate = msgs_per_s / 2 / flows
        before = CpuCounters(s)
        r = load(s, transport, "--flows", str(flows), "--rate", f"{rate:.3f}", "--duration", "8", "--drain-ms", "300",
                 ca=self.tls[0])
        return {**before.per_msg(max(2 * r["traffic"]["delivered"], 1)), "loss_pct": r["traffic"]["loss_pct"]}

    # CPU per relayed message for one traffic shape, in pair mode or against the own echo peer.
    def cpu_profile(self, s: Server, load_name: str, peer: str) -> dict:
        extra = ["--echo-peer"] if peer == "echo" else []
        secs = "4" if self.quick else "8"
        before = CpuCounters(s)
        echo0 = NET.echo.counts() if NET.echo and peer == "echo" else None
        r = load(s, "udp", *PROFILE_LOADS[load_name], *extra, "--duration", secs, "--drain-ms", "300",
                 "--concurrency", "32")
        figures = before.per_msg(max(2 * r["traffic"]["delivered"], 1))
        if r["flows_established"] != r["flows_requested"]:
            sys.exit(f"{s.kind} {load_name} {peer}: {r['flows_established']}/{r['flows_requested']} flows: "
                     f"{r.get('first_errors')}")
        if echo0 is not None:
            figures["kernel_echo"] = echo_check(s, echo0, (r,))
        return {**figures, "loss_pct": r["traffic"]["loss_pct"], "offered_pps": r["traffic"]["offered_pps"]}

    def profiles(self) -> dict:
        out: dict = {}
        for load_name in PROFILE_LOADS:
            for peer in ("pair", "echo"):
                key = f"{load_name}, {peer}"
                print(f"cpu per message: {key}", file=sys.stderr, flush=True)
                out[key] = self.each(self.cpu_profile, load_name, peer, pair=peer == "pair")
        return out

    def generator_ceiling(self, s: Server, payload: int = 100) -> dict:
        """What one generator core offers and gets back: 10 flows flooding (`--flood`, no pacing)
        through turnkey-xdp against the echo peer for 3 s. The server's side is the kernel path,
        far from busy, so the generator's core is the limit; the capacity ramps cannot show more
        than this (every packet sent is two relayed messages in echo mode)."""
        with CpuPeak(s) as cpu:
            r = load(s, "udp", "--flows", "10", "--payload", str(payload), "--flood", "--echo-peer", "--duration", "3",
                     "--drain-ms", "300")
        t = r["traffic"]
        return {"offered_pps": t["offered_pps"], "delivered_pps": t["delivered_pps"], "loss_pct": t["loss_pct"],
                "relayed_msgs_per_s": 2 * t["delivered_pps"], "server_side_peak_pct": cpu.server_side_peak,
                "load_core_peak_pct": cpu.load_core_peak, "server_core_peak_pct": cpu.server_core_peak}

    def latency(self, s: Server, offered_pps: float, peer: str = "pair", payload: int = 100) -> dict:
        flows = 10
        r = load(s, "udp", "--flows", str(flows), "--rate", f"{offered_pps / flows:.3f}", "--duration", "5",
                 "--payload", str(payload), *(["--echo-peer"] if peer == "echo" else []))
        rtt = r["traffic"]["rtt_us"]
        return {"p50_us": rtt["p50"], "p99_us": rtt["p99"], "loss_pct": r["traffic"]["loss_pct"]}

    def allocations(self, s: Server) -> dict:
        n = "2000" if self.quick else "6000"
        r = load(s, "udp", "--scenario", "allocations", "--count", n, "--concurrency", "32")
        return {"per_sec": r["allocations"]["per_sec"], "failed": r["allocations"]["failed"],
                "p50_us": r["allocations"]["time_us"]["p50"], "p99_us": r["allocations"]["time_us"]["p99"]}

    def live_rss(self, s: Server) -> dict:
        n = 2000 if self.quick else 10000
        base = s.rss_kib()
        holder = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, str(BIN), "load", "--server", f"127.0.0.1:{s.udp}", f"--secret={s.secret}",
             "--quiet", "--scenario", "allocations", "--count", str(n), "--concurrency", "64", "--hold", "6",
             "--lifetime", "600", "--json", str(self.tmp / "hold.json")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=raise_nofile,
        )
        peak = base
        deadline = time.time() + 120
        while holder.poll() is None and time.time() < deadline:
            peak = max(peak, s.rss_kib())
            time.sleep(0.2)
        holder.wait(timeout=60)
        r = json.loads((self.tmp / "hold.json").read_text())
        ok = r["allocations"]["succeeded"]
        return {"allocations": ok, "base_kib": base, "peak_kib": peak,
                "per_allocation_bytes": 1024 * (peak - base) / max(ok, 1)}

    def unauth_rss(self, s: Server) -> dict:
        n = "50000" if self.quick else "200000"
        base = s.rss_kib()
        r = load(s, "udp", "--scenario", "allocations", "--unauthenticated", "--count", n, "--concurrency", "4")
        time.sleep(0.5)
        return {"sent": int(n), "base_kib": base, "after_kib": s.rss_kib(), "growth_kib": s.rss_kib() - base,
                "answered_401": r["errors"].get("401", 0)}

    def issuance(self) -> list[dict]:
        """Credentials per second from the Cloudflare-compatible endpoint, turnkey on core 0 and
        wrk (one thread, 32 connections) on core 1. coturn has no issuer, so turnkey only."""
        if shutil.which("wrk") is None:
            sys.exit("bench: the issuance figures need wrk (Debian: apt-get install wrk)")
        out = []
        script = self.tmp / "post.lua"
        for _ in range(self.reps):
            s = Server("turnkey", self.secret, self.tls, http=True)
            try:
                keys = s.dir / "keys"
                token_file = next(keys.glob("*.token"))
                key_id, token = token_file.stem, token_file.read_text().strip()
                script.write_text(
                    'wrk.method = "POST"\n'
                    'wrk.body = \'{"ttl": 86400}\'\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {token}"\n'
                )
                url = f"http://127.0.0.1:{s.http}/v1/turn/keys/{key_id}/credentials/generate-ice-servers"
                u0, s0 = s.cpu_secs()
                p = subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", "-c32", "-d8s", "--latency", "-s",
                                    str(script), url], capture_output=True, text=True, timeout=60)
                u1, s1 = s.cpu_secs()
                text = p.stdout
                line = next((l for l in text.splitlines() if l.startswith("Requests/sec:")), None)
                if line is None:
                    sys.exit(f"bench: wrk gave no result:\n{text}\n{p.stderr}")
                rps = float(line.split()[1])
                bad = next((int(l.split()[-1]) for l in text.splitlines() if "Non-2xx" in l), 0)
                if bad:
                    sys.exit(f"issuance: {bad} non-2xx answers:\n{text}")
                lat = {l.split()[0]: l.split()[1] for l in text.splitlines() if l.strip().startswith(("50%", "99%"))}
                out.append({"per_sec": rps, "cpu_us_per_credential": 1e6 * (u1 - u0 + s1 - s0) / max(rps * 8, 1),
                            "p50": lat.get("50%"), "p99": lat.get("99%")})
            finally:
                s.stop()
        return out

    def udp(self) -> None:
        """The UDP data path (issue 17): capacity in pair and echo-peer mode at 100 and 1200 B (10
        flows), the round trip at half of coturn 4.6.1's capacity in each mode (100 B), and CPU per
        message for every traffic shape."""
        cap: dict = {}
        for peer in ("pair", "echo"):
            for payload in (100, 1200):
                key = f"udp {payload} B x 10 flows" + (", echo peer" if peer == "echo" else "")
                print(f"capacity {key}", file=sys.stderr, flush=True)
                cap[key] = self.each(self.capacity, "udp", 10, payload, peer, pair=peer == "pair")
        self.results["udp_capacity"] = cap
        if FAST in self.kinds:
            print("generator ceiling: flood through turnkey-xdp, echo peer", file=sys.stderr, flush=True)
            self.results["generator_ceiling"] = self.each(self.generator_ceiling, kinds=[FAST])[FAST]
        lat: dict = {}
        for peer in ("pair", "echo"):
            key = "udp 100 B x 10 flows" + (", echo peer" if peer == "echo" else "")
            half = statistics.median(x["offered_pps"] for x in cap[key]["coturn"]) / 2
            print(f"latency at {half:.0f} pkt/s, {peer}", file=sys.stderr, flush=True)
            lat[f"{peer}, 100 B, {fmt(half)} pkt/s"] = self.each(self.latency, half, peer, pair=peer == "pair")
        self.results["udp_latency"] = lat
        self.results["profiles"] = self.profiles()

    def run(self, only: str | None) -> None:
        if only == "udp":
            self.udp()
            return
        if only == "issuance":
            self.results["issuance"] = self.issuance()
            return
        if only == "profiles":
            self.results["profiles"] = self.profiles()
            return
        payloads, flow_counts = ([100, 1200], [1, 10, 50]) if not self.quick else ([100], [10])
        cap: dict = {}
        for payload in payloads:
            for flows in flow_counts:
                key = f"udp {payload} B x {flows} flows"
                print(f"capacity {key}", file=sys.stderr, flush=True)
                cap[key] = self.each(self.capacity, "udp", flows, payload, pair=True)
        for payload in payloads:
            key = f"udp {payload} B x 10 flows, echo peer"
            print(f"capacity {key}", file=sys.stderr, flush=True)
            cap[key] = self.each(self.capacity, "udp", 10, payload, "echo")
        for transport in ("tcp", "tls"):
            key = f"{transport} 100 B x 10 flows"
            print(f"capacity {key}", file=sys.stderr, flush=True)
            cap[key] = self.each(self.capacity, transport, 10, 100, pair=True)
        self.results["capacity"] = cap

        self.results["cpu"] = {}
        for transport in ("udp", "tcp", "tls"):
            print(f"cpu per message over {transport}", file=sys.stderr, flush=True)
            self.results["cpu"][transport] = self.each(self.cpu_per_msg, transport, CPU_RATE, pair=True)
        self.results["profiles"] = self.profiles()

        ref = f"udp 100 B x 10 flows"
        coturn_cap = statistics.median(x["offered_pps"] for x in cap[ref]["coturn"])
        print("latency at half of coturn's capacity", file=sys.stderr, flush=True)
        self.results["latency_offered_pps"] = coturn_cap / 2
        self.results["latency"] = self.each(self.latency, coturn_cap / 2, pair=True)

        print("allocations per second", file=sys.stderr, flush=True)
        self.results["allocations"] = self.each(self.allocations)
        print("memory with live allocations", file=sys.stderr, flush=True)
        self.results["live_rss"] = self.each(self.live_rss)
        print("memory after unauthenticated Allocates", file=sys.stderr, flush=True)
        self.results["unauth_rss"] = self.each(self.unauth_rss)
        if shutil.which("wrk"):
            print("credential issuance", file=sys.stderr, flush=True)
            self.results["issuance"] = self.issuance()


def med(runs: list[dict], field: str) -> tuple[float, float, float]:
    v = [r[field] for r in runs]
    return statistics.median(v), min(v), max(v)


def fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def markdown(res: dict, reps: int) -> str:
    lines: list[str] = []
    if "udp_capacity" in res:
        udp_tables(res, lines.append)
    if "capacity" in res:
        relay_tables(res, lines.append)
    if any(NOSESS in runs for runs in res.get("cpu", {}).values()):
        sessions_table(res["cpu"], lines.append)
    if res.get("profiles"):
        profile_table(res["profiles"], lines.append)
    if res.get("issuance"):
        issuance_table(res["issuance"], lines.append)
    lines.append("")
    if res.get("veth"):
        echo = ("the kernel (bench/bpf/echo_peer.c at tc on the generator's end)" if res["veth"]["kernel_echo"]
                else "turnkey load's sockets")
        lines.append("Over a veth: each end's kernel receive work runs in its threaded NAPI thread, pinned to its "
                     f"side's core (server core 0, generator core 1); the echo peer answers in {echo}.")
        if res["veth"].get("wire") == "xdp":
            lines.append("Through the XDP wire (--wire xdp): frames reach the server's end as xdp_frames, as from a "
                         "NIC's driver; the middle namespace's redirects and copies run on the generator's core.")
    lines.append(f"Medians over {reps} repetitions, each on a fresh server.")
    return "\n".join(lines)


def sessions_table(cpu: dict, add) -> None:
    """CPU per relayed message of turnkey with the live session listing (the default) and without
    (`--no-sessions`), per transport, from the same run."""
    add("")
    add(f"| CPU per relayed message (µs, user + system) | turnkey (min..max) | {NOSESS} (min..max) | turnkey / {NOSESS} |")
    add("|---|---|---|---|")
    for transport, runs in cpu.items():
        t, n = med(runs["turnkey"], "us_per_msg"), med(runs[NOSESS], "us_per_msg")
        add(f"| {transport} | {t[0]:.2f} ({t[1]:.2f}..{t[2]:.2f}) | {n[0]:.2f} ({n[1]:.2f}..{n[2]:.2f}) | "
            f"{t[0] / max(n[0], 1e-9):.2f}× |")


def relay_tables(res: dict, add) -> None:
    fast = any(COTURN_FAST in runs for runs in res["capacity"].values())
    add("| load (pair mode unless said, loss ≤ 0.1%) | coturn msgs/s (min..max) | server CPU | turnkey msgs/s (min..max) "
        "| server CPU | turnkey / coturn |" + (f" {COTURN_FAST} fastest msgs/s | server CPU | turnkey / it |" if fast else ""))
    add("|---|---|---|---|---|---|" + ("---|---|---|" if fast else ""))
    for key, runs in res["capacity"].items():
        c, cl, ch = med(runs["coturn"], "relayed_msgs_per_s")
        t, tl, th = med(runs["turnkey"], "relayed_msgs_per_s")
        cc = med(runs["coturn"], "server_cpu_peak_pct")[0]
        tc = med(runs["turnkey"], "server_cpu_peak_pct")[0]
        top = " (ramp ceiling)" if all(r["at_ceiling"] for r in runs["turnkey"]) else ""
        row = (f"| {key} | {fmt(c)} ({fmt(cl)}..{fmt(ch)}) | {cc:.0f}% | {fmt(t)} ({fmt(tl)}..{fmt(th)}){top} | "
               f"{tc:.0f}% | {t / max(c, 1):.2f}× |")
        if fast and COTURN_FAST in runs:
            f, fl, fh = med(runs[COTURN_FAST], "relayed_msgs_per_s")
            fc = med(runs[COTURN_FAST], "server_cpu_peak_pct")[0]
            row += f" {fmt(f)} ({fmt(fl)}..{fmt(fh)}) | {fc:.0f}% | {t / max(f, 1):.2f}× |"
        elif fast:
            row += " n/a (no pair mode under --multiplex-peer) | | |"
        add(row)
    add("")
    add("| figure | coturn median (min..max) | turnkey median (min..max) | turnkey / coturn |")
    add("|---|---|---|---|")
    for transport, runs in res["cpu"].items():
        for field, what in (("us_per_msg", "user + system"), ("user_us_per_msg", "user"), ("sys_us_per_msg", "system")):
            c = med(runs["coturn"], field)
            t = med(runs["turnkey"], field)
            loss = max(r["loss_pct"] for r in runs["coturn"] + runs["turnkey"])
            add(f"| {transport}: server CPU per relayed message at {fmt(CPU_RATE)} msgs/s, {what} (µs; worst loss "
                f"{loss:.2f}%) | {c[0]:.2f} ({c[1]:.2f}..{c[2]:.2f}) | {t[0]:.2f} ({t[1]:.2f}..{t[2]:.2f}) | "
                f"{t[0] / max(c[0], 1e-9):.2f}× |")
    for field, name in (("p50_us", "p50"), ("p99_us", "p99")):
        c = med(res["latency"]["coturn"], field)
        t = med(res["latency"]["turnkey"], field)
        add(f"| round trip {name} at {fmt(res['latency_offered_pps'])} pkt/s offered (µs) | {fmt(c[0])} "
            f"({fmt(c[1])}..{fmt(c[2])}) | {fmt(t[0])} ({fmt(t[1])}..{fmt(t[2])}) | {t[0] / max(c[0], 1):.2f}× |")
    c = med(res["allocations"]["coturn"], "per_sec")
    t = med(res["allocations"]["turnkey"], "per_sec")
    add(f"| allocations per second (401 round included) | {fmt(c[0])} ({fmt(c[1])}..{fmt(c[2])}) | "
        f"{fmt(t[0])} ({fmt(t[1])}..{fmt(t[2])}) | {t[0] / max(c[0], 1):.2f}× |")
    c = med(res["live_rss"]["coturn"], "per_allocation_bytes")
    t = med(res["live_rss"]["turnkey"], "per_allocation_bytes")
    n = res["live_rss"]["turnkey"][0]["allocations"]
    add(f"| RSS per live allocation, {fmt(n)} held (bytes) | {fmt(c[0])} ({fmt(c[1])}..{fmt(c[2])}) | "
        f"{fmt(t[0])} ({fmt(t[1])}..{fmt(t[2])}) | {t[0] / max(c[0], 1):.2f}× |")
    c = med(res["live_rss"]["coturn"], "peak_kib")
    t = med(res["live_rss"]["turnkey"], "peak_kib")
    add(f"| peak RSS with them (KiB) | {fmt(c[0])} | {fmt(t[0])} | {t[0] / max(c[0], 1):.2f}× |")
    c = med(res["unauth_rss"]["coturn"], "growth_kib")
    t = med(res["unauth_rss"]["turnkey"], "growth_kib")
    sent = res["unauth_rss"]["turnkey"][0]["sent"]
    add(f"| RSS growth after {fmt(sent)} unauthenticated Allocates (KiB) | {fmt(c[0])} ({fmt(c[1])}..{fmt(c[2])}) | "
        f"{fmt(t[0])} ({fmt(t[1])}..{fmt(t[2])}) | |")


def udp_tables(res: dict, add) -> None:
    """Capacity and round trips of `--only udp`: one column per server measured (median, min..max),
    then turnkey's ratio to each other server."""
    def table(title: str, rows: dict, field: str, digits: int, scale: float = 1.0) -> None:
        kinds = [k for k in ("coturn", COTURN_FAST, BEFORE, "turnkey", FAST, NOSESS) if any(k in r for r in rows.values())]
        # turnkey against every other server, and turnkey-xdp against every server but itself and
        # the listing-off variant.
        pairs = [(n, d) for n in ("turnkey", FAST) if n in kinds for d in kinds if d != n and not (n == "turnkey"
                 and d == FAST) and not (n == FAST and d == NOSESS)]
        add("")
        add(f"| {title} | " + " | ".join(f"{k} (min..max)" for k in kinds) + " | "
            + " | ".join(f"{n} / {d}" for n, d in pairs) + " |")
        add("|---|" + "---|" * (len(kinds) + len(pairs)))
        for key, runs in rows.items():
            cells, mids = [], {}
            for k in kinds:
                if k not in runs:
                    cells.append("n/a (no pair mode under --multiplex-peer)")
                    continue
                m, lo, hi = (scale * x for x in med(runs[k], field))
                mids[k] = m
                extra, bound = "", ""
                if "server_cpu_peak_pct" in runs[k][0]:
                    extra = f"; CPU {med(runs[k], 'server_cpu_peak_pct')[0]:.0f}%"
                    if all(r["at_ceiling"] for r in runs[k]):
                        extra += " (ramp ceiling)"
                        bound = "≥ "
                    elif all("generator" in r.get("limit", "") and "server" not in r["limit"] for r in runs[k]):
                        # The generator ran out first: the server's capacity is at least this.
                        extra += " (generator-bound)"
                        bound = "≥ "
                cells.append(f"{bound}{fmt(m, digits)} ({fmt(lo, digits)}..{fmt(hi, digits)}){extra}")
            ratios = [f"{mids[n] / max(mids[d], 1e-9):.2f}×" if n in mids and d in mids else "" for n, d in pairs]
            add(f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    table("UDP capacity, relayed msgs/s at loss ≤ 0.1% (server CPU at peak)", res["udp_capacity"],
          "relayed_msgs_per_s", 0)
    limits_table(res["udp_capacity"], add)
    if res.get("generator_ceiling"):
        ceiling_table(res, add)
    lat = res["udp_latency"]
    table("round trip p50 at half of coturn 4.6.1's capacity (µs)", lat, "p50_us", 0)
    table("round trip p99 at half of coturn 4.6.1's capacity (µs)", lat, "p99_us", 0)


def ceiling_table(res: dict, add) -> None:
    """What one generator core offered and got back flooding through turnkey-xdp, against three
    times coturn 4.17.1's echo-peer capacity at 100 B (the issue's capacity target): below it, no
    ramp of this run can show the target and turnkey-xdp's capacity figure is a bound."""
    runs = res["generator_ceiling"]
    off, got, relayed = (med(runs, f) for f in ("offered_pps", "delivered_pps", "relayed_msgs_per_s"))
    c1, side = med(runs, "load_core_peak_pct")[0], med(runs, "server_side_peak_pct")[0]
    echo = res["udp_capacity"].get("udp 100 B x 10 flows, echo peer", {})
    target = ""
    if COTURN_FAST in echo:
        need = 3 * med(echo[COTURN_FAST], "relayed_msgs_per_s")[0]
        target = f" {fmt(need)}: {'reached' if relayed[0] >= need else 'not reached: turnkey-xdp rows are bounds'} |"
    add("")
    add("| generator, one core: 10 flows flooding 100 B through turnkey-xdp, echo peer (median, min..max) | "
        "offered pkt/s | delivered pkt/s | relayed msgs/s | core 1 / server + NAPI busy |"
        + (" 3× coturn-4.17.1's echo capacity |" if target else ""))
    add("|---|---|---|---|---|" + ("---|" if target else ""))
    add(f"| flood, 3 s | {fmt(off[0])} ({fmt(off[1])}..{fmt(off[2])}) | {fmt(got[0])} ({fmt(got[1])}..{fmt(got[2])}) | "
        f"{fmt(relayed[0])} ({fmt(relayed[1])}..{fmt(relayed[2])}) | {c1:.0f}% / {side:.0f}% |{target}")


def limits_table(capacity: dict, add) -> None:
    """What limited each capacity ramp: peak 1 s busy share of the server process, of core 0 (the
    server's core) and of core 1 (the generator's, with the softirq work of what it sends), and
    the verdict of every repetition (`ramp_limit`)."""
    kinds = [k for k in ("coturn", COTURN_FAST, BEFORE, "turnkey", FAST) if any(k in r for r in capacity.values())]
    if not any("limit" in r for runs in capacity.values() for k in runs for r in runs[k]):
        return
    add("")
    add("| what limited each ramp (peak 1 s busy: server process / server + its NAPI threads / core 0 / core 1 "
        "generator; generator's top step offered / asked; packets the veth dropped; verdict) | "
        + " | ".join(kinds) + " |")
    add("|---|" + "---|" * len(kinds))
    for key, runs in capacity.items():
        cells = []
        for k in kinds:
            if k not in runs:
                cells.append("n/a")
                continue
            p = med(runs[k], "server_cpu_peak_pct")[0]
            side = med(runs[k], "server_side_peak_pct")[0] if "server_side_peak_pct" in runs[k][0] else p
            c0 = med(runs[k], "server_core_peak_pct")[0]
            c1 = med(runs[k], "load_core_peak_pct")[0]
            top = (f"; {fmt(med(runs[k], 'top_offered_pps')[0])} / {fmt(med(runs[k], 'top_asked_pps')[0])} pkt/s"
                   if "top_asked_pps" in runs[k][0] else "")
            if runs[k][0].get("veth_drops"):
                dropped = statistics.median(sum(c["tx"] for c in r["veth_drops"].values()) for r in runs[k])
                top += f"; veth drops {fmt(dropped)}"
            verdicts = sorted({r["limit"] for r in runs[k]})
            cells.append(f"{p:.0f}% / {side:.0f}% / {c0:.0f}% / {c1:.0f}%{top}; {', '.join(verdicts)}")
        add(f"| {key} | " + " | ".join(cells) + " |")


def profile_table(profiles: dict, add) -> None:
    """Server CPU per relayed message (user + system, and the user/system split) per traffic shape,
    with turnkey's ratio to every other server measured."""
    kinds = [k for k in ("coturn", COTURN_FAST, BEFORE, "turnkey", NOSESS) if any(k in runs for runs in profiles.values())]
    others = [k for k in kinds if k != "turnkey"]
    add("")
    add("| load (UDP, µs of server CPU per relayed message; user / system) | "
        + " | ".join(f"{k} (min..max)" for k in kinds) + " | "
        + " | ".join(f"turnkey / {k}" for k in others) + " | worst loss |")
    add("|---|" + "---|" * (len(kinds) + len(others) + 1))
    for key, runs in profiles.items():
        cells, totals = [], {}
        for k in kinds:
            if k not in runs:
                cells.append("n/a (no pair mode under --multiplex-peer)")
                continue
            t = med(runs[k], "us_per_msg")
            u = med(runs[k], "user_us_per_msg")[0]
            sy = med(runs[k], "sys_us_per_msg")[0]
            totals[k] = t[0]
            cells.append(f"{t[0]:.2f} ({t[1]:.2f}..{t[2]:.2f}); {u:.2f} / {sy:.2f}")
        ratios = [f"{totals['turnkey'] / max(totals[k], 1e-9):.2f}×" if k in totals else "" for k in others]
        loss = max(r["loss_pct"] for k in runs for r in runs[k])
        add(f"| {key} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {loss:.2f}% |")
    if any(FAST in runs for runs in profiles.values()):
        fast_table(profiles, add)


def fast_table(profiles: dict, add) -> None:
    """With the kernel fast path: CPU per relayed message on the server's core (the server process
    and its veth end's NAPI threads, where XDP and the kernel's receive path run), the threads'
    share, core 0's busy time, the program's own run time and the share of its runs on core 0,
    and turnkey-xdp's ratio to turnkey in user space."""
    kinds = [k for k in ("coturn", COTURN_FAST, "turnkey", FAST) if any(k in runs for runs in profiles.values())]
    add("")
    add("| load (UDP, µs per relayed message on the server's core: process + its NAPI threads; the threads' "
        "share; core 0 busy) | " + " | ".join(f"{k} (min..max)" for k in kinds)
        + f" | {FAST} BPF run time | {FAST} / turnkey |")
    add("|---|" + "---|" * (len(kinds) + 2))
    for key, runs in profiles.items():
        cells, totals = [], {}
        for k in kinds:
            if k not in runs:
                cells.append("n/a")
                continue
            t = med(runs[k], "server_core_us_per_msg")
            napi = med(runs[k], "napi_us_per_msg")[0]
            core = med(runs[k], "core0_busy_us_per_msg")[0]
            totals[k] = t[0]
            cells.append(f"{t[0]:.2f} ({t[1]:.2f}..{t[2]:.2f}); {napi:.2f}; {core:.2f}")
        bpf = f"{med(runs[FAST], 'bpf_us_per_msg')[0]:.3f}" if FAST in runs else ""
        if FAST in runs and "xdp_runs_on_server_core_pct" in runs[FAST][0]:
            bpf += f" ({min(r['xdp_runs_on_server_core_pct'] for r in runs[FAST]):.0f}% of runs on core 0)"
        ratio = f"{totals[FAST] / max(totals['turnkey'], 1e-9):.2f}×" if FAST in totals and "turnkey" in totals else ""
        add(f"| {key} | " + " | ".join(cells) + f" | {bpf} | {ratio} |")


def issuance_table(runs: list[dict], add) -> None:
    r = med(runs, "per_sec")
    cpu = med(runs, "cpu_us_per_credential")
    add("")
    add("| issuer (turnkey only; coturn has none) | median (min..max) |")
    add("|---|---|")
    add(f"| credentials per second, `generate-ice-servers`, 32 connections | {fmt(r[0])} ({fmt(r[1])}..{fmt(r[2])}) |")
    add(f"| server CPU per credential (µs) | {cpu[0]:.1f} ({cpu[1]:.1f}..{cpu[2]:.1f}) |")
    add(f"| latency p50 / p99 (first repetition) | {runs[0]['p50']} / {runs[0]['p99']} |")


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown CPU")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    coturn = subprocess.run(["turnserver", "--version"], capture_output=True, text=True).stdout.strip()
    fast = os.environ.get("COTURN_4171_BIN")
    if fast:
        v = subprocess.run([fast, "--version"], capture_output=True, text=True).stdout.strip()
        coturn += f" (Debian) and {v} (built from source, `--udp-gso --multiplex-peer`)"
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} × {cpu}, {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}, "
            f"coturn {coturn}{'' if fast else ' (Debian)'}, {rustc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one repetition, fewer configurations (about 3 minutes)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench")
    ap.add_argument("--only", choices=["issuance", "profiles", "udp"], help="run only this part")
    ap.add_argument("--turnkey-before", type=Path, default=os.environ.get("TURNKEY_BEFORE_BIN") or None,
                    help="another turnkey binary (e.g. an earlier commit's release build), run as "
                         "turnkey-before next to the others (default: $TURNKEY_BEFORE_BIN)")
    ap.add_argument("--net", choices=["loopback", "veth"], default="loopback",
                    help="veth: servers and load generator in two network namespaces joined by a veth pair")
    ap.add_argument("--fast-path", action="store_true",
                    help="with --net veth: add turnkey with --fast-path xdp (turnkey-xdp) and count softirq and BPF time")
    ap.add_argument("--kernel-echo", action="store_true",
                    help="with --net veth: the echo-peer loads' peer answers in the kernel (bench/bpf/echo_peer.c "
                         "at tc on the generator's veth end) instead of turnkey load's sockets, for every server")
    ap.add_argument("--wire", choices=["veth", "xdp"], default=os.environ.get("BENCH_VETH_WIRE", "veth"),
                    help="with --net veth: xdp joins generator and servers through a middle namespace whose "
                         "XDP program redirects every frame, so frames reach the server's end as from a NIC "
                         "(bench/vethnet.py; default: $BENCH_VETH_WIRE or veth)")
    ap.add_argument("--no-sessions-variant", action="store_true",
                    default=os.environ.get("TURNKEY_BENCH_NO_SESSIONS", "") not in ("", "0"),
                    help="add turnkey-nosessions: turnkey with --no-sessions (the session listing's cost "
                         "per relayed message; default: $TURNKEY_BENCH_NO_SESSIONS)")
    ap.add_argument("--coturn-4171", type=Path, default=os.environ.get("COTURN_4171_BIN") or None,
                    help="turnserver of coturn 4.17.1, run in its fastest configuration next to the others "
                         "(default: $COTURN_4171_BIN; without it only coturn 4.6.1 and turnkey run)")
    a = ap.parse_args()
    if a.coturn_4171:
        a.coturn_4171 = a.coturn_4171.resolve()
        v = subprocess.run([str(a.coturn_4171), "--version"], capture_output=True, text=True).stdout.strip()
        if v != "4.17.1":
            sys.exit(f"{a.coturn_4171} is coturn {v or '?'}, not 4.17.1")
        os.environ["COTURN_4171_BIN"] = str(a.coturn_4171)
    for tool in ("turnserver", "taskset", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/install-test-tools.sh installs coturn)")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 cores: one for the server, one for the load generator")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "turnkey"], cwd=ROOT, check=True)
    reps = 1 if a.quick else a.reps
    global NET
    if a.net == "veth":
        if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ethtool"):
            sys.exit("--net veth needs root, ip and ethtool")
        if a.only not in ("udp", "profiles"):
            sys.exit("--net veth runs the UDP loads only: give --only udp or --only profiles")
    if a.fast_path and a.net != "veth":
        sys.exit("--fast-path needs --net veth (loopback is not a fast path: docs/fastpath.md)")
    if a.kernel_echo and a.net != "veth":
        sys.exit("--kernel-echo needs --net veth")
    if a.kernel_echo and not (shutil.which("clang") and shutil.which("bpftool") and shutil.which("tc")):
        sys.exit("--kernel-echo needs clang, bpftool and tc (scripts/install-test-tools.sh installs them)")
    if a.wire == "xdp" and (a.net != "veth" or not shutil.which("clang")):
        sys.exit("--wire xdp needs --net veth and clang")
    NET = Net(a.net, a.fast_path, a.kernel_echo, a.wire)
    before = a.turnkey_before.resolve() if a.turnkey_before else None
    b = Bench(reps, a.quick, a.coturn_4171, before, a.fast_path, a.no_sessions_variant)
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats.read_text().strip() if a.fast_path else None
    if a.fast_path:
        stats.write_text("1")
    started = time.time()
    try:
        b.run(a.only)
    finally:
        NET.close()
        if stats_before is not None:
            stats.write_text(stats_before)
    a.out.mkdir(parents=True, exist_ok=True)
    b.results["machine"] = machine()
    b.results["pace_burst"] = PACE_BURST
    b.results["net"] = a.net
    if a.net == "veth":
        b.results["veth"] = {"threaded_napi": True, "kernel_echo": a.kernel_echo, "wire": a.wire}
    if before:
        b.results["turnkey_before"] = str(before)
    b.results["minutes"] = round((time.time() - started) / 60, 1)
    (a.out / "compare.json").write_text(json.dumps(b.results, indent=2))
    md = f"Machine: {b.results['machine']}.\n\n" + markdown(b.results, reps) + "\n"
    (a.out / "compare.md").write_text(md)
    print(md)
    print(f"raw results: {a.out / 'compare.json'} ({b.results['minutes']} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
