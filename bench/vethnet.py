"""The veth side of bench/compare.py (`--net veth`): where each side's kernel receive work runs,
and the kernel echo peer (`--kernel-echo`).

**Threaded NAPI.** A veth's receive work (NAPI poll: XDP, GRO, the IP and UDP stack up to the
socket) normally runs in the softirq the *sender* raises, on the sender's core: every server's
receive path, turnkey's XDP program included, would be charged to the load generator's core. With
threaded NAPI (`/sys/class/net/DEV/threaded`) each veth's poll runs in its own kernel thread,
`napi/DEV-ID`; compare.py pins the server end's thread to the server's core and the generator
end's to the generator's, for every server alike. A veth has NAPI once GRO is on or an XDP program
is attached; with GRO on it keeps it (and its thread) across attach and detach.

**XDP wire** (`BENCH_VETH_WIRE=xdp`, `compare.py --wire xdp`, `create_wire`). A veth copies
every socket-sent buffer into a page before the receiving end's XDP program runs (a socket's
buffer head is no page fragment), a cost native XDP on a NIC does not have. The wire puts a third
namespace between the two ends whose two veth ends redirect every frame to each other in XDP
(`bench/bpf/wire.c`): frames then reach the server's end as xdp_frames, as from a NIC's driver,
and the copy happens in the middle, on the generator's core, for every server alike.

**Kernel echo peer.** `bench/bpf/echo_peer.c`, a tc ingress program on the generator's end of the
veth, answers every datagram a server relays to a peer in the generator's namespace in the
kernel, as `turnkey load --echo-peer`'s sockets would (same addresses and ports), so the
generator's core only sends and receives at the clients. The server sees the same packets either
way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
# How the generator's frames reach the server's end: `veth` (one veth pair) or `xdp` (the XDP wire).
WIRE = os.environ.get("BENCH_VETH_WIRE", "veth")
ECHO_SRC = Path(__file__).resolve().parent / "bpf" / "echo_peer.c"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def compile_bpf(src: Path, obj: Path, *defines: str) -> Path:
    """Compiles the benchmark's BPF program `src` (bench/bpf/) into `obj` with Debian's clang."""
    sh("clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", *defines, "-c", str(src),
       "-o", str(obj))
    return obj


def prog_maps(prog: int) -> dict[str, int]:
    """The maps of BPF program `prog` by name (their ids)."""
    ids = json.loads(sh("bpftool", "-j", "prog", "show", "id", str(prog)))["map_ids"]
    return {json.loads(sh("bpftool", "-j", "map", "show", "id", str(m)))["name"]: m for m in ids}


def serve_server(cfg_map: int, ip: str, port: int) -> None:
    """Writes the server under test into a program's one-entry `struct bench_server` map
    (bench/bpf/bench.h): its IPv4 address and UDP listener port."""
    value = [str(b) for b in socket.inet_aton(ip) + port.to_bytes(2, "big") + b"\0\0"]
    sh("bpftool", "map", "update", "id", str(cfg_map), "key", "0", "0", "0", "0", "value", *value)


def map_totals(counters_map: int) -> dict[int, int]:
    """A per-CPU counters map (bench.h's BENCH_MAPS) summed over the CPUs, by key."""
    dump = json.loads(sh("bpftool", "-j", "map", "dump", "id", str(counters_map)))
    return {u64(e["key"]): sum(u64(v["value"]) for v in e["values"]) for e in dump}


def cpu_stat(core: str) -> list[int]:
    """The /proc/stat fields of one CPU (user nice system idle iowait irq softirq steal ...), in
    clock ticks."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            return [int(x) for x in line.split()[1:]]
    return []


def set_threaded(ns: str, dev: str) -> None:
    """Switches the veth end `dev` (in namespace `ns`) to threaded NAPI; GRO must be on already."""
    sh("ip", "netns", "exec", ns, "sh", "-c", f"echo 1 > /sys/class/net/{dev}/threaded")


def create_pair(server: tuple[str, str, str], load: tuple[str, str, str], queues: int) -> None:
    """Two new namespaces joined by a veth pair: `server` and `load` are (namespace, device,
    IPv4 address in a /24) of each end. Each end gets `queues` queues, GRO on, TSO off and threaded
    NAPI (pin its threads with `pin`)."""
    for ns, _, _ in (server, load):
        sh("ip", "netns", "add", ns)
    # `queues` queues each way: a veth's receive ring holds 256 packets per queue, and a
    # generator's burst (one pacer tick of every flow) overflows a single one long before either
    # core is busy; flows spread over the queues by their hash, as over a NIC's.
    q = str(queues)
    sh("ip", "link", "add", server[1], "numtxqueues", q, "numrxqueues", q, "netns", server[0],
       "type", "veth", "peer", "name", load[1], "numtxqueues", q, "numrxqueues", q, "netns", load[0])
    for ns, dev, ip in (server, load):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # GRO on a veth needs its NAPI mode, which this switches on; threaded NAPI then runs each
        # end's receive work in a kernel thread pinned to that side's core. With TCP segmentation
        # offload on, a veth hands a socket's datagrams to the other end's backlog on the sending
        # core instead of its NAPI ring (unless an XDP program or checksum offload off makes them
        # eligible): off, as it is unused by UDP.
        sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on", "tso", "off")
        set_threaded(ns, dev)


WIRE_SRC = Path(__file__).resolve().parent / "bpf" / "wire.c"


def mac(ns: str, dev: str) -> str:
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev))[0]["address"]


def create_wire(server: tuple[str, str, str], load: tuple[str, str, str], middle: tuple[str, str, str],
                queues: int) -> Path:
    """`BENCH_VETH_WIRE=xdp` / `compare.py --wire xdp`: the `server` and `load` ends (namespace,
    device, IPv4 address in a /24) as in create_pair, joined through a third namespace `middle`
    (namespace, the device facing the server, the one facing the generator) by two veth pairs.
    bench/bpf/wire.c on both middle ends redirects every frame to the other middle end, so frames
    reach the server's end as xdp_frames, as a NIC's driver hands them to XDP: no copy of the
    generator's socket buffers on the server's side (a veth copies each one into a page before its
    XDP program), and none of the server's sends copied on its core either (they are copied by the
    middle end, on the generator's core). The outer ends keep GRO, threaded NAPI and their queues;
    static neighbour entries make the middle transparent at layer 2. Both outer ends send full
    checksums (`tx off`): a partial checksum does not survive a redirect, for any server.
    Returns the build directory of the wire's objects (remove it when done)."""
    for ns in (server[0], load[0], middle[0]):
        sh("ip", "netns", "add", ns)
    q = str(queues)
    mid_ns, mid_s, mid_l = middle
    for (ns, dev, _), mid in ((server, mid_s), (load, mid_l)):
        sh("ip", "link", "add", dev, "numtxqueues", q, "numrxqueues", q, "netns", ns,
           "type", "veth", "peer", "name", mid, "numtxqueues", q, "numrxqueues", q, "netns", mid_ns)
    sh("ip", "-n", mid_ns, "link", "set", "lo", "up")
    for ns, dev, ip in (server, load):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on", "tso", "off", "tx", "off")
        set_threaded(ns, dev)
    build = Path(tempfile.mkdtemp(prefix="bench-wire-"))
    index = {d: json.loads(sh("ip", "-n", mid_ns, "-j", "link", "show", "dev", d))[0]["ifindex"]
             for d in (mid_s, mid_l)}
    for dev, other in ((mid_s, mid_l), (mid_l, mid_s)):
        obj = compile_bpf(WIRE_SRC, build / f"wire-{dev}.o", f"-DWIRE_TO={index[other]}")
        sh("ip", "-n", mid_ns, "link", "set", "dev", dev, "xdpdrv", "object", str(obj), "section", "xdp")
        sh("ip", "-n", mid_ns, "link", "set", dev, "up")
        # (XDP gave the middle end its NAPI; threaded, its thread is pinned to the generator's core.)
        set_threaded(mid_ns, dev)
    for (ns, dev, _), (far_ns, far_dev, far_ip) in ((server, load), (load, server)):
        sh("ip", "-n", ns, "neigh", "replace", far_ip, "lladdr", mac(far_ns, far_dev), "dev", dev, "nud", "permanent")
    return build


def napi_threads(dev: str) -> list[int]:
    """The NAPI kernel threads of `dev` (named `napi/DEV-ID`; interface names are unique to the
    run, so no other run's thread matches)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith(f"napi/{dev}-"):
            found.append(int(p.name))
    return sorted(found)


# NAPI threads' real-time priority: a NIC's NAPI poll runs in softirq, which preempts every task on
# its core; a SCHED_OTHER thread would wait behind whatever else runs there while the veth's
# 256-entry ring overflows.
NAPI_PRIORITY = 50


def pin(pids: list[int], core: str) -> None:
    """Pins NAPI threads to `core` at SCHED_FIFO NAPI_PRIORITY."""
    for pid in pids:
        os.sched_setaffinity(pid, {int(core)})
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(NAPI_PRIORITY))


def drops(ns: str, dev: str) -> dict:
    """Packets a veth end dropped: `rx` (what it was handed from the other end and could not take)
    and `tx` (what it could not hand to the other end: that end's ring full, XDP frames refused)."""
    link = json.loads(sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev))[0]
    stats = link.get("stats64") or link.get("stats") or {}
    return {d: int(stats.get(d, {}).get("dropped", 0)) for d in ("rx", "tx")}


def affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def thread_secs(pids: list[int]) -> float:
    """User + system CPU time of the given threads (kernel threads: system), in seconds; a thread
    that went away counts nothing from then on."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def core_softirq_secs(core: str) -> float:
    """Softirq time of one CPU since boot, in seconds (/proc/stat)."""
    fields = cpu_stat(core)
    return fields[6] / CLK_TCK if fields else 0.0


class KernelEcho:
    """bench/bpf/echo_peer.c compiled with clang and attached at tc ingress of the generator's veth
    end; `serve(ip, port)` points it at a server, `counts()` reads what it reflected."""

    def __init__(self, ns: str, dev: str):
        self.ns, self.dev = ns, dev
        self.dir = Path(tempfile.mkdtemp(prefix="bench-echo-"))
        obj = compile_bpf(ECHO_SRC, self.dir / "echo_peer.o")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "clsact")
        sh("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", dev, "ingress", "bpf", "direct-action",
           "object-file", str(obj), "section", "tc")
        net = json.loads(sh("ip", "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", dev))
        progs = [t["id"] for entry in net for t in entry.get("tc", []) if t.get("kind") == "clsact/ingress"]
        if len(progs) != 1:
            raise RuntimeError(f"kernel echo: expected one tc ingress program on {dev}, found {net}")
        names = prog_maps(progs[0])
        self.cfg_map, self.counters_map = names["echo_cfg"], names["echo_counters"]

    def serve(self, ip: str, port: int) -> None:
        """Reflect what the server at `ip` sends from any port but its UDP listener `port`."""
        serve_server(self.cfg_map, ip, port)

    def counts(self) -> dict:
        """Datagrams reflected, their payload bytes and the packets let through, all CPUs."""
        total = map_totals(self.counters_map)
        return {"reflected": total.get(0, 0), "bytes": total.get(1, 0), "passed": total.get(2, 0)}


def u64(value) -> int:
    """A map value as bpftool prints it: a number with BTF, raw bytes ("0x01", ...) without."""
    return value if isinstance(value, int) else int.from_bytes(bytes(int(b, 16) for b in value), "little")


def xdp_counts_per_cpu(ns: str, dev: str, counters: str = "fp_counters") -> dict[int, int]:
    """The per-CPU counters map `counters` of the XDP program attached to `dev`, summed over its
    keys per CPU: which cores the program ran on ({} when none is attached)."""
    link = json.loads(sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev))[0]
    prog = (link.get("xdp") or {}).get("prog", {}).get("id")
    if not prog:
        return {}
    m = prog_maps(prog).get(counters)
    if m is None:
        return {}
    per: dict[int, int] = {}
    for e in json.loads(sh("bpftool", "-j", "map", "dump", "id", str(m))):
        for v in e["values"]:
            per[v["cpu"]] = per.get(v["cpu"], 0) + u64(v["value"])
    return per


def main(argv: list[str]) -> None:
    """For shell benchmarks (bench/load-cpu.sh NET=veth):
    `up TAG SERVER_CORE LOAD_CORE` makes namespaces TAGa (server end TAGs, 10.213.0.1) and TAGb
    (generator end TAGl, 10.213.0.2) with each end's NAPI threads pinned to its side's core;
    `napi-secs DEV` prints the CPU seconds of DEV's NAPI threads; `down TAG` removes both.
    With BENCH_VETH_WIRE=xdp, `up` joins them through the XDP wire (namespace TAGm, middle ends
    TAGx and TAGy, their NAPI threads on the generator's core)."""
    if len(argv) == 4 and argv[0] == "up":
        tag, server_core, load_core = argv[1:]
        server, load = (f"{tag}a", f"{tag}s", "10.213.0.1"), (f"{tag}b", f"{tag}l", "10.213.0.2")
        queues = int(os.environ.get("BENCH_VETH_QUEUES", "4"))
        devs = [(server[1], server_core), (load[1], load_core)]
        if WIRE == "xdp":
            middle = (f"{tag}m", f"{tag}x", f"{tag}y")
            shutil.rmtree(create_wire(server, load, middle, queues), ignore_errors=True)
            devs += [(middle[1], load_core), (middle[2], load_core)]
        else:
            create_pair(server, load, queues)
        for dev, core in devs:
            threads = napi_threads(dev)
            if not threads:
                raise SystemExit(f"no threaded NAPI thread found for {dev}")
            pin(threads, core)
    elif len(argv) == 2 and argv[0] == "napi-secs":
        print(f"{thread_secs(napi_threads(argv[1])):.3f}")
    elif len(argv) == 2 and argv[0] == "down":
        for ns in (f"{argv[1]}a", f"{argv[1]}b", f"{argv[1]}m"):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    else:
        raise SystemExit(main.__doc__)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
