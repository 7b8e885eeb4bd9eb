#!/usr/bin/env python3
"""Which side's UDP socket buffers overflow during a load run: samples `ss -uanpm` twice a
second until SIGTERM (or SECS seconds) and prints, for the server (its pid) and for the
generator (every UDP socket connected to the server's port), how many sockets were seen, the
datagrams each side's sockets dropped (the `d` of skmem: full receive buffer), and the fullest
receive queue seen against the buffer size. Used by bench/load-capacity.sh.

    bench/udpdrops.py SERVER_PID SERVER_PORT [SECS]
"""
import re
import signal
import subprocess
import sys
import time

pid, port = sys.argv[1], sys.argv[2]
deadline = time.time() + float(sys.argv[3]) if len(sys.argv) > 3 else None
seen = {}  # (side, local address) -> (drops, fullest queue, buffer)
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_term)


def sample():
    out = subprocess.run(["ss", "-uanpm"], capture_output=True, text=True).stdout.splitlines()[1:]
    key = None
    for line in out:
        if not line[:1].isspace():
            f = line.split()
            local, peer = f[3], f[4]
            if f'pid={pid},' in line:
                key = ("server", local)
            elif peer.endswith(f":{port}"):
                key = ("generator", local)
            else:
                key = None
        m = re.search(r"skmem:\(r(\d+),rb(\d+),.*,d(\d+)\)", line)
        if m and key:
            r, rb, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
            old = seen.get(key, (0, 0, rb))
            seen[key] = (max(old[0], d), max(old[1], r), rb)


while not stop and (deadline is None or time.time() < deadline):
    sample()
    time.sleep(0.5)
for side in ("server", "generator"):
    rows = [v for (s, _), v in seen.items() if s == side]
    if not rows:
        print(f"{side}: no UDP socket seen")
        continue
    drops = sum(r[0] for r in rows)
    worst = max(rows, key=lambda r: r[1] / max(r[2], 1))
    print(f"{side}: {len(rows)} UDP sockets, {drops} datagrams dropped at full receive buffers, "
          f"fullest queue {worst[1]} of {worst[2]} bytes")
