#!/usr/bin/env python3
"""Capacity at <= 0.1% loss with the load offered from the kernel (issue 22's capacity target).

bench/compare.py's capacity ramps send from `turnkey load` on one core. Through the kernel path
that core is the limit long before the server's (docs/benchmarks.md, "The idle-machine run
through the XDP wire"): the ramp then only gives a lower bound. Here the generator's core offers
the traffic from the kernel instead, the same for every server:

- the rig is compare.py's `--net veth --wire xdp` (server on core 0 in its own namespace with its
  veth end's NAPI threads, the wire's end facing it threaded on core 1), with the generator's
  side in softirq NAPI (KNet): no thread woken per burst on the generator's core;
- `turnkey load --echo-peer` sets up the flows as in compare.py's echo-peer ramps (allocations,
  channels bound to the echo peer in the generator's namespace, refreshed) and keeps sending at
  a trickle (2 packets/s per flow); bench/kgen_sniff.py reads each flow's client port and
  channel number off the generator's veth end;
- bench/kgen_inject.c offers the ramp's steps: one ready-made frame per flow (ChannelData whose
  payload starts "TKKGEN01"), flows in turn, sendmmsg on a packet socket that bypasses the qdisc;
- the server relays each to the echo peer, `kgen_sink` (bench/bpf/kgen.c, XDP on the generator's
  end) sends it back, the server relays it to the client, and `kgen_sink` counts and drops it
  there, before any socket: each datagram back is two relayed messages.

Each step offers a rate for STEP_SECS and counts what came back after a drain; the ramp grows
by RAMP_FACTOR until a rate is lossy (more than 0.1% lost, or the injector under 95% of the rate)
in `--trials` trials in a row (default 2: this rig's vCPUs stall now and then, which a server at
its capacity does not need to lose a trial), then bisects BISECT times between the last
loss-free rate and the first lossy one. What limited the ramp is compare.py's `ramp_limit` of
the first lossy rate above the result, naming the veth end whose ring overflowed.

Usage (root, clang, bpftool, cc; coturn 4.17.1 built as docs/benchmarks.md says):
    bench/kcapacity.sh [--reps N] [--coturn-4171 PATH] [--payload B] [--flows N] [--batch N]
                       [--trials N] [--out DIR] [--kinds coturn,coturn-4.17.1,turnkey,turnkey-xdp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare
import vethnet

ROOT = compare.ROOT
KGEN_SRC = ROOT / "bench" / "bpf" / "kgen.c"
INJECT_SRC = ROOT / "bench" / "kgen_inject.c"
SNIFF = ROOT / "bench" / "kgen_sniff.py"
MAGIC = b"TKKGEN01"
STEP_SECS = 2.0
DRAIN_SECS = 0.3
RAMP_START = 20_000.0
RAMP_FACTOR = 1.5
RAMP_TOP = 4_000_000.0
BISECT = 4
LOSS_PCT = 0.1


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class KNet(compare.Net):
    """compare.py's `--net veth --wire xdp` rig with the generator's side in softirq NAPI: the
    generator's veth end and the wire's middle end facing it poll in the softirq raised on the
    core that feeds them (core 1: the injector's sends, the wire's redirects), instead of in
    NAPI threads woken per burst. The server's side is as in compare.py: its end's threads pinned
    to core 0, and the wire's end facing it threaded on core 1, so nothing the generator's side
    does lands on the server's core (each step checks that kgen_sink ran on core 1 only)."""

    def __init__(self) -> None:
        super().__init__("veth", fast_path=True, kernel_echo=False, wire="xdp")
        for ns, dev in ((self.ns_load, self.dev_load), (self.ns_mid, self.devs_mid[1])):
            vethnet.sh("ip", "netns", "exec", ns, "sh", "-c", f"echo 0 > /sys/class/net/{dev}/threaded")

    def pin_napi(self) -> None:
        self.napi_server = vethnet.napi_threads(self.dev_server)
        self.napi_mid = vethnet.napi_threads(self.devs_mid[0])
        if not self.napi_server or not self.napi_mid:
            sys.exit(f"no threaded NAPI thread for {self.dev_server} / {self.devs_mid[0]}")
        vethnet.pin(self.napi_server, compare.SERVER_CORE)
        vethnet.pin(self.napi_mid, compare.LOAD_CORE)


class Template:
    """The injected frame: generator end -> server end, UDP to the server's listener, ChannelData
    of `payload` bytes starting with MAGIC. Client port, channel and UDP checksum are per flow."""

    def __init__(self, src_mac: bytes, dst_mac: bytes, src_ip: str, dst_ip: str, dst_port: int, payload: int):
        self.src_ip, self.dst_ip = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
        self.dst_port, self.payload = dst_port, MAGIC + bytes(payload - len(MAGIC))
        self.udp_len = 8 + 4 + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + self.udp_len, 0, 0x4000, 64, 17, 0, self.src_ip, self.dst_ip)
        ip = ip[:10] + struct.pack("!H", 0xFFFF - csum(ip)) + ip[12:]
        self.head = dst_mac + src_mac + b"\x08\x00" + ip

    def frame(self, port: int, channel: int) -> bytes:
        return self.head + self.udp(port, channel, self.checksum(port, channel))

    def udp(self, port: int, channel: int, check: int) -> bytes:
        return (struct.pack("!HHHH", port, self.dst_port, self.udp_len, check)
                + struct.pack("!HH", channel, len(self.payload)) + self.payload)

    def checksum(self, port: int, channel: int) -> int:
        pseudo = self.src_ip + self.dst_ip + struct.pack("!BBH", 0, 17, self.udp_len)
        c = 0xFFFF - csum(pseudo + self.udp(port, channel, 0))
        return c or 0xFFFF


class Sink:
    """kgen_sink attached to the generator's veth end (replacing the XDP_PASS stub)."""

    def __init__(self, obj: Path):
        ns, dev = compare.NET.ns_load, compare.NET.dev_load
        vethnet.sh("ip", "-force", "-n", ns, "link", "set", "dev", dev, "xdpdrv", "object", str(obj),
                   "section", "xdp", "program", "kgen_sink")
        link = json.loads(vethnet.sh("ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev))[0]
        names = vethnet.prog_maps(link["xdp"]["prog"]["id"])
        self.cfg, self.counts_map = names["kgen_sink_cfg"], names["kgen_rx_counts"]

    def serve(self, ip: str, port: int) -> None:
        vethnet.serve_server(self.cfg, ip, port)

    def counts(self) -> tuple[int, int, int]:
        """Injected datagrams back at their client, datagrams echoed (all CPUs), and how many of
        those the program handled on the server's core (each step checks that it handled none:
        the generator's work would be charged to the server)."""
        dump = json.loads(vethnet.sh("bpftool", "-j", "map", "dump", "id", str(self.counts_map)))
        total = {vethnet.u64(e["key"]): sum(vethnet.u64(v["value"]) for v in e["values"]) for e in dump}
        # (Frames passed on, key 2, may run there: a middle end's IPv6 housekeeping sent from a
        # kworker on any core, say. The generator's traffic is keys 0 and 1.)
        on_server = sum(vethnet.u64(v["value"]) for e in dump for v in e["values"]
                        if v["cpu"] == int(compare.SERVER_CORE) and vethnet.u64(e["key"]) in (0, 1))
        return total.get(0, 0), total.get(1, 0), on_server


def steal_ms(core: str) -> float:
    """Time the hypervisor ran something else while this vCPU had work (/proc/stat steal), ms."""
    fields = vethnet.cpu_stat(core)
    return fields[7] * 1000 / compare.CLK_TCK if fields else 0.0


def build(tmp: Path) -> tuple[Path, Path]:
    obj, inject = tmp / "kgen.o", tmp / "kgen_inject"
    vethnet.compile_bpf(KGEN_SRC, obj)
    vethnet.sh("cc", "-O2", "-Wall", "-o", str(inject), str(INJECT_SRC))
    return obj, inject


class Run:
    def __init__(self, obj: Path, inject: Path, flows: int, payload: int, batch: int, trials: int = 2):
        self.inject, self.flows, self.payload, self.batch, self.trials = inject, flows, payload, batch, trials
        net = compare.NET
        self.sink = Sink(obj)
        self.macs = tuple(bytes.fromhex(vethnet.mac(ns, dev).replace(":", ""))
                          for ns, dev in ((net.ns_load, net.dev_load), (net.ns_server, net.dev_server)))

    def learn(self, server: compare.Server) -> list[tuple[int, int]]:
        """The flows `turnkey load` set up: (client port, channel), seen on the generator's end."""
        net = compare.NET
        p = subprocess.run(net.in_load_ns(["python3", str(SNIFF), net.dev_load, net.server_ip, str(server.udp),
                                           str(self.flows), "30"]), capture_output=True, text=True, timeout=60)
        if p.returncode:
            sys.exit(f"{server.kind}: flows not seen: {p.stderr.strip()}")
        return [tuple(f) for f in json.loads(p.stdout)]

    def step(self, server: compare.Server, frames: str, rate: float) -> dict:
        net = compare.NET
        got0, echoed0, core0_runs0, drops0 = *self.sink.counts(), net.drops()
        steal0 = [steal_ms(c) for c in (compare.SERVER_CORE, compare.LOAD_CORE)]
        with compare.CpuPeak(server) as cpu:
            p = subprocess.run(net.in_load_ns(["taskset", "-c", compare.LOAD_CORE, str(self.inject), net.dev_load,
                                               frames, f"{rate:.0f}", str(STEP_SECS), str(self.batch)]),
                               capture_output=True, text=True, timeout=60)
            time.sleep(DRAIN_SECS)
        if p.returncode:
            sys.exit(f"kgen_inject failed: {p.stderr.strip()}")
        sent = json.loads(p.stdout)
        got, echoed, core0_runs = (a - b for a, b in zip(self.sink.counts(), (got0, echoed0, core0_runs0)))
        if core0_runs:
            sys.exit(f"kgen_sink ran {core0_runs} times on core {compare.SERVER_CORE}, the server's, during a step")
        if got > echoed or got > sent["sent"]:
            # Each datagram back at its client was echoed once and injected once: anything else
            # means the counts are not what this run claims (another sender, a stale sink).
            sys.exit(f"{server.kind}: {got} injected datagrams came back but {echoed} were echoed and "
                     f"{sent['sent']} sent")
        drops = net.drops_since(drops0)
        steal = [steal_ms(c) - s0 for c, s0 in zip((compare.SERVER_CORE, compare.LOAD_CORE), steal0)]
        tried = sent["sent"] + sent["refused"]
        return {"asked_pps": rate, "offered_pps": sent["sent"] / sent["secs"], "sent": sent["sent"],
                "refused": sent["refused"], "skipped": sent["skipped"], "received": got, "echoed": echoed,
                "loss_pct": 100.0 * max(tried - got, 0) / max(tried, 1),
                "server_pct": cpu.peak, "side_pct": cpu.server_side_peak, "core0_pct": cpu.server_core_peak,
                "core1_pct": cpu.load_core_peak, "veth_drops": drops, "steal_ms": steal}

    def lossy(self, s: dict) -> bool:
        return s["loss_pct"] > LOSS_PCT or s["offered_pps"] < compare.GENERATOR_BEHIND * s["asked_pps"]

    def capacity(self, server: compare.Server) -> dict:
        net = compare.NET
        self.sink.serve(net.server_ip, server.udp)
        load = subprocess.Popen(net.in_load_ns([
            "taskset", "-c", compare.LOAD_CORE, str(compare.BIN), "load", "--server",
            f"{net.server_ip}:{server.udp}", f"--secret={server.secret}", "--echo-peer", "--flows", str(self.flows),
            "--payload", str(self.payload), "--rate", "2", "--duration", "900", "--quiet"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            flows = self.learn(server)
            t = Template(self.macs[0], self.macs[1], net.load_ip, net.server_ip, server.udp, self.payload)
            frames = ",".join(t.frame(port, ch).hex() for port, ch in flows)
            steps: list[dict] = []
            rescued: list[float] = []

            def trial(rate: float) -> tuple[dict, bool]:
                """A step at `rate`, repeated while lossy up to self.trials times: the rate is
                lossy only if every trial was (a server at its capacity loses on each; a rare
                stall of this rig's vCPUs does not hit twice in a row)."""
                for n in range(self.trials):
                    s = self.step(server, frames, rate)
                    steps.append(s)
                    report(server, s)
                    if not self.lossy(s):
                        if n:
                            rescued.append(rate)
                        return s, False
                return s, True

            good, bad, rate = None, None, RAMP_START
            while rate <= RAMP_TOP:
                s, lossy = trial(rate)
                if lossy:
                    bad = s
                    break
                good = s
                rate *= RAMP_FACTOR
            for _ in range(BISECT if good and bad else 0):
                s, lossy = trial((good["asked_pps"] + bad["asked_pps"]) / 2)
                if lossy:
                    bad = s
                else:
                    good = s
        finally:
            load.terminate()
            load.wait(timeout=30)
        best = good["offered_pps"] if good else 0.0
        return {"offered_pps": best, "relayed_msgs_per_s": 2 * best, "limit": limit_of(bad), "first_lossy": bad,
                "best_step": good, "steps": steps, "flows": flows, "rescued_rates": rescued}


def limit_of(bad: dict | None) -> str:
    """compare.py's verdict for the first lossy step above the result; a ring that overflowed
    with no core saturated is named, with the hypervisor's steal on the server's core then."""
    if not bad:
        return "ramp top"
    drops = bad["veth_drops"]
    limit = compare.ramp_limit(bad["server_pct"], bad["side_pct"], bad["core0_pct"], bad["core1_pct"],
                               bad["offered_pps"] / bad["asked_pps"],
                               sum(c["tx"] + c["rx"] for c in drops.values()), False)
    if limit == "veth ring full":
        worst = max(drops, key=lambda e: drops[e]["rx"])
        limit = f"{worst.replace('_', ' ')} ring full"
        if bad["steal_ms"][0] > 0:
            limit += f" (core 0 stolen {bad['steal_ms'][0]:.0f} ms)"
    return limit


def report(server: compare.Server, s: dict) -> None:
    print(f"  {server.kind}: {s['asked_pps']:,.0f}/s asked, {s['offered_pps']:,.0f} offered, {s['received']:,} of "
          f"{s['sent'] + s['refused']:,} back (loss {s['loss_pct']:.3f}%), core 0 {s['core0_pct']:.0f}%, "
          f"core 1 {s['core1_pct']:.0f}%, steal {s['steal_ms'][0]:.0f}/{s['steal_ms'][1]:.0f} ms, "
          f"server end ring drops {s['veth_drops'].get('server_end', {}).get('rx', 0)}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--flows", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="frames per injector call (a burst)")
    ap.add_argument("--trials", type=int, default=2,
                    help="a rate counts as lossy only if this many trials at it in a row were (1: the first)")
    ap.add_argument("--kinds", default=None, help="comma-separated servers (default: every one available)")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "kcapacity")
    ap.add_argument("--coturn-4171", type=Path, default=os.environ.get("COTURN_4171_BIN") or None)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    for tool in ("clang", "bpftool", "cc", "ip", "ethtool", "turnserver", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (scripts/install-test-tools.sh installs it)")
    if a.payload < len(MAGIC):
        sys.exit(f"--payload must be at least {len(MAGIC)}")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "turnkey"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kgen-"))
    obj, inject = build(tmp)
    kinds = ["coturn", *([compare.COTURN_FAST] if a.coturn_4171 else []), "turnkey", compare.FAST]
    if a.kinds:
        kinds = [k for k in a.kinds.split(",") if k]
    compare.NET = KNet()
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    stats_before = stats.read_text().strip()
    results: dict = {kind: [] for kind in kinds}
    started = time.time()
    try:
        run = Run(obj, inject, a.flows, a.payload, a.batch, a.trials)
        bench = compare.Bench(a.reps, False, a.coturn_4171.resolve() if a.coturn_4171 else None, fast_path=True)
        for _ in range(a.reps):
            for kind in kinds:
                print(f"capacity: {kind}", file=sys.stderr, flush=True)
                s = compare.Server(kind, bench.secret, bench.tls, coturn_fast=bench.coturn_fast)
                try:
                    results[kind].append(run.capacity(s))
                finally:
                    s.stop()
    finally:
        compare.NET.close()
        stats.write_text(stats_before)
        shutil.rmtree(tmp, ignore_errors=True)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": compare.machine(), "payload": a.payload, "flows": a.flows, "batch": a.batch, "trials": a.trials,
           "step_secs": STEP_SECS, "minutes": round((time.time() - started) / 60, 1), "results": results}
    (a.out / "kcapacity.json").write_text(json.dumps(doc, indent=2))
    md = markdown(doc)
    (a.out / "kcapacity.md").write_text(md)
    print(md)


def markdown(doc: dict) -> str:
    res = doc["results"]
    reps = len(next(iter(res.values())))
    lines = [f"Machine: {doc['machine']}.", "",
             f"Capacity at <= {LOSS_PCT}% loss, udp {doc['payload']} B x {doc['flows']} flows, echo peer, offered "
             f"from the kernel (bench/kcapacity.py; bursts of {doc['batch']}, steps of {doc['step_secs']:g} s, a rate "
             f"lossy after {doc.get('trials', 1)} lossy trial(s) in a row), "
             f"{reps} repetition(s), {doc['minutes']} min. Relayed messages/s = 2 x datagrams back at their "
             "client.", "",
             "| server | relayed msgs/s, median (min..max) | core 0 / core 1 at the best step | rates lossy once, "
             "then not | what limited each ramp (first lossy step) |", "|---|---|---|---|---|"]
    med = {}
    for kind, runs in res.items():
        vals = [r["relayed_msgs_per_s"] for r in runs]
        med[kind] = statistics.median(vals)
        cores = ", ".join(f"{r['best_step']['core0_pct']:.0f}% / {r['best_step']['core1_pct']:.0f}%"
                          if r["best_step"] else "-" for r in runs)
        limits = "; ".join(r["limit"] for r in runs)
        rescued = ", ".join(str(len(r.get("rescued_rates", []))) for r in runs)
        lines.append(f"| {kind} | {med[kind]:,.0f} ({min(vals):,.0f}..{max(vals):,.0f}) | {cores} | {rescued} | {limits} |")
    lines.append("")
    if compare.FAST in med and med.get(compare.COTURN_FAST):
        lines.append(f"turnkey-xdp / coturn-4.17.1: **{med[compare.FAST] / med[compare.COTURN_FAST]:.2f}x** "
                     "(target >= 3x)")
    if compare.FAST in med and med.get("turnkey"):
        lines.append(f"turnkey-xdp / turnkey: {med[compare.FAST] / med['turnkey']:.2f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
