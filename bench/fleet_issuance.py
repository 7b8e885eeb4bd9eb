#!/usr/bin/env python3
"""Cost per issued credential, fleet mode vs single node, measured the way docs/benchmarks.md
measures issuance: the issuer pinned to core 0, `wrk -t1 -c32 -d8s` on core 1 POSTing
`{"ttl": 86400}` with the key's bearer token to generate-ice-servers. The figure is the issuer
process's CPU time (utime + stime from /proc) per credential, which depends less on other load
than the rate does. Single node: `turnkey serve` (relay and issuer in one process). Fleet:
redis-server, one relay (`serve --http off --redis`) and `turnkey issuer --redis`; only the
issuer's CPU is counted (relays and Redis are not on the issuance path).

Usage: bench/fleet_issuance.py [path/to/turnkey] [repetitions]   (needs wrk, redis-server, taskset)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.argv[1] if len(sys.argv) > 1 else "target/release/turnkey").resolve()
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
TICK = os.sysconf("SC_CLK_TCK")
SECRET = "bench-fleet-secret"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(args, ready, core=None):
    cmd = ([ "taskset", "-c", core] if core else []) + args
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline()
        if not line:
            sys.exit(f"{args[:2]} exited before it was ready")
        if line.startswith(ready):
            return p, dict(kv.split("=", 1) for kv in line[len(ready):].split() if "=" in kv)


def wrk(url, token):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.body = \'{"ttl": 86400}\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "Bearer {token}"\n')
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", "-d8s", "-s", f.name, url],
                         capture_output=True, text=True).stdout
    os.unlink(f.name)
    n = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"bench: {non2xx.group(1)} answers were not 201:\n{out}")
    return n


def measure(pid, url, token):
    before = cpu_seconds(pid)
    t0 = time.monotonic()
    n = wrk(url, token)
    secs = time.monotonic() - t0
    return {"credentials": n, "per_second": n / secs, "cpu_us_per_credential": (cpu_seconds(pid) - before) * 1e6 / n}


def single():
    d = tempfile.mkdtemp()
    p, a = start([str(BIN), "serve", "--data-dir", d, "--udp", "127.0.0.1:0", "--tcp", "off", "--tls", "off",
                  "--http", "127.0.0.1:0", "--metrics", "off", "--relay-ip", "127.0.0.1", "--shards", "1"],
                 "turnkey listening ", core="0")
    try:
        keys = Path(d, "keys")
        tok = next(keys.glob("*.token"))
        url = f"http://{a['http']}/v1/turn/keys/{tok.stem}/credentials/generate-ice-servers"
        return measure(p.pid, url, tok.read_text().strip())
    finally:
        p.kill()
        p.wait()


def fleet():
    d = tempfile.mkdtemp()
    port = 17000 + os.getpid() % 1000
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d],
                             stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    url = f"redis://127.0.0.1:{port}"
    procs = [redis]
    try:
        key = json.loads(subprocess.run([str(BIN), "keys", "create", "--redis", url], capture_output=True,
                                        text=True, check=True).stdout)
        relay, _ = start([str(BIN), "serve", "--data-dir", d + "/r", "--udp", "127.0.0.1:0", "--tcp", "off", "--tls",
                          "off", "--http", "off", "--metrics", "off", "--relay-ip", "127.0.0.1", "--public-host",
                          "127.0.0.1", "--shards", "1", "--redis", url, "--node-id", "r1", "--secret", SECRET],
                         "turnkey listening ")
        procs.append(relay)
        iss, a = start([str(BIN), "issuer", "--data-dir", d + "/i", "--http", "127.0.0.1:0", "--metrics", "off",
                        "--redis", url, "--node-id", "i1", "--secret", SECRET], "turnkey issuer listening ", core="0")
        procs.append(iss)
        time.sleep(2.5)  # the issuer's relay listing
        gen = f"http://{a['http']}/v1/turn/keys/{key['id']}/credentials/generate-ice-servers"
        return measure(iss.pid, gen, key["token"])
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()


def median(xs):
    return sorted(xs)[len(xs) // 2]


if __name__ == "__main__":
    runs = {"single": [], "fleet": []}
    for _ in range(REPS):
        runs["single"].append(single())
        runs["fleet"].append(fleet())
    out = {}
    for mode, rs in runs.items():
        out[mode] = {
            "per_second_median": round(median([r["per_second"] for r in rs])),
            "cpu_us_per_credential_median": round(median([r["cpu_us_per_credential"] for r in rs]), 1),
            "runs": rs,
        }
    s, f = out["single"]["cpu_us_per_credential_median"], out["fleet"]["cpu_us_per_credential_median"]
    out["fleet_credentials_per_core_second_vs_single"] = round(s / f, 2)
    print(json.dumps(out, indent=1))
