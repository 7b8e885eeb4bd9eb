#!/usr/bin/env bash
# What one allocation costs the relay: its CPU time (task-clock of the whole process, perf stat)
# and, with STRACE=1, its system calls (strace -c of every thread), over one `turnkey load
# --scenario allocations` run that creates N allocations (64 at a time), holds them HOLD seconds
# (default 1) and releases them. The relay is started as bench/stall.sh starts it: one shard, fleet
# mode on a throwaway redis-server, UDP on loopback, unauthenticated replies unlimited.
# Prints the load's report line and CPU (or syscalls) per allocation.
#
#   BIN=target/release/turnkey N=10000 bench/alloc_cost.sh            # CPU per allocation
#   STRACE=1 BIN=target/release/turnkey N=10000 bench/alloc_cost.sh   # syscalls per allocation
#
# strace slows every syscall of the relay by an order of magnitude: its run counts calls, the
# other measures time. Needs root for perf/strace on another process (or a permissive
# kernel.perf_event_paranoid / ptrace_scope). Run on an otherwise idle machine.
set -euo pipefail
BIN=${BIN:-target/release/turnkey}
N=${N:-10000}
HOLD=${HOLD:-1}
D=$(mktemp -d)
RP=$(python3 "$(dirname "$(realpath "$0")")/freeport.py")
cleanup() { kill "${MPID:-}" "${TPID:-}" "${RPID:-}" 2>/dev/null || true; wait "${MPID:-}" 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
redis-server --port "$RP" --bind 127.0.0.1 --save '' --daemonize no --dir "$D" >/dev/null 2>&1 &
RPID=$!
for _ in $(seq 50); do redis-cli -p "$RP" PING 2>/dev/null | grep -q PONG && break; sleep 0.1; done
SECRET=alloc-cost-secret
"$BIN" serve --udp 127.0.0.1:0 --tcp off --tls off --http off --metrics 127.0.0.1:0 \
  --relay-ip 127.0.0.1 --shards 1 --redis "redis://127.0.0.1:$RP" --node-id cost --secret "$SECRET" \
  --data-dir "$D/data" --allow-peer 127.0.0.1 --max-allocations-per-user "$N" \
  --unauth-replies-per-sec 0 >"$D/out" 2>"$D/err" &
TPID=$!
for _ in $(seq 100); do grep -q "turnkey listening" "$D/out" && break; sleep 0.2; done
UDP=$(grep "turnkey listening" "$D/out" | tr ' ' '\n' | grep "^udp=" | cut -d= -f2)
CREDS=$("$BIN" creds --secret "$SECRET" --user cost --ttl 3600)
U=$(echo "$CREDS" | python3 -c 'import json,sys;print(json.load(sys.stdin)["username"])')
P=$(echo "$CREDS" | python3 -c 'import json,sys;print(json.load(sys.stdin)["credential"])')
sleep 1 # the relay's start-up work done before counting
if [ "${STRACE:-0}" = 1 ]; then
  strace -c -f -q -p "$TPID" -o "$D/measure" &
else
  perf stat -e task-clock -p "$TPID" -o "$D/measure" &
fi
MPID=$!
sleep 0.5
"$BIN" load --server "$UDP" --user "$U" --password "$P" --scenario allocations --count "$N" \
  --concurrency 64 --hold "$HOLD" --quiet --json "$D/load.json" >"$D/load.out" 2>"$D/load.err" || { cat "$D/load.err"; exit 1; }
sleep 1 # the releases' last replies
kill -INT "$MPID"; wait "$MPID" 2>/dev/null || true; MPID=
python3 - "$D/load.json" "$D/measure" "$N" "${STRACE:-0}" <<'PY'
import json, re, sys
load, measure, n, strace = json.load(open(sys.argv[1])), open(sys.argv[2]).read(), int(sys.argv[3]), sys.argv[4] == "1"
a = load["allocations"]
t = a["time_us"]
print(f"load: {a['succeeded']} of {a['attempted']} allocated ({a['failed']} failed), {a['per_sec']:.0f} a second, "
      f"time to allocate p50 {t['p50'] / 1000:.1f} ms, p99 {t['p99'] / 1000:.1f} ms")
if strace:
    # strace -c rows: % time, seconds, usecs/call, calls, [errors], syscall
    rows = [l.split() for l in measure.splitlines() if re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+", l)]
    calls = {r[-1]: int(r[3]) for r in rows if r[-1] != "total"}
    total = sum(calls.values())
    print(f"syscalls: {total} in all, {total / n:.2f} per allocation")
    for name, c in sorted(calls.items(), key=lambda x: -x[1])[:14]:
        print(f"  {name:<16} {c:>8}  {c / n:6.2f} per allocation")
else:
    ms = float(re.search(r"([\d.,]+)\s+msec task-clock", measure).group(1).replace(",", ""))
    print(f"relay CPU: {ms:.0f} ms in all, {ms * 1000 / n:.1f} us per allocation (created, held, released)")
PY
