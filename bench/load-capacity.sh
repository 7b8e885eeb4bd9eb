#!/usr/bin/env bash
# Capacity ramp against turnkey user space (issue 23): does the ramp end on the server's core?
# The server (one shard, --fast-path off) runs on core 0 with its Prometheus endpoint on; the
# generator on core 1 raises the rate of 10 pair flows of 100-byte packets step by step (SECS a
# step, default 10) until loss
# exceeds LOSS_PCT, scraping the server's CPU counter before and after every step
# (--server-metrics). Prints every step (offered packets/s, loss, the server's
# CPU % of one core and its CPU per relayed message), the capacity (the highest loss-free
# step) with the server's CPU there, the generator's CPU over the whole run, and which side's
# UDP sockets dropped datagrams at full receive buffers (bench/udpdrops.py). The ramp ended on
# the server when the server's CPU there is >= 95%.
#
#   bench/load-capacity.sh SERVER_TURNKEY LOAD_BIN [START_PER_FLOW STEP_PER_FLOW STEPS LOSS_PCT]
#   bench/load-capacity.sh target/release/turnkey target/release/turnkey-load 2000 2000 30 1
#   SECS=3 bench/load-capacity.sh ...   # shorter steps
#   PACE_BURST=0 bench/load-capacity.sh ...   # --pace-burst 0: the 1 ms tick at every rate
#
# LOAD_BIN is a `turnkey-load` (or `turnkey`, called as `turnkey load`). Run it on an otherwise
# idle machine: other processes on core 0 cap the server below 100% and end the ramp early.
set -uo pipefail
[ $# -ge 2 ] || { sed -n 2,19p "$0"; exit 2; }
SERVER=$(realpath "$1")
LOAD=$(realpath "$2")
START=${3:-2000} STEP=${4:-2000} STEPS=${5:-30} LOSS=${6:-1} SECS=${SECS:-10}
case "$(basename "$LOAD")" in turnkey) LOADCMD=("$LOAD" load);; *) LOADCMD=("$LOAD");; esac
DIR=$(mktemp -d); SPID=
trap 'kill $SPID 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
SECRET=bench-$RANDOM$RANDOM
# Ports free over both TCP and UDP (the server listens on both).
read -r PORT MPORT < <(python3 "$(dirname "$(realpath "$0")")/freeport.py" 2)
TURNKEY_LOG=warn taskset -c 0 "$SERVER" serve --data-dir "$DIR/data" --secret="$SECRET" \
  --udp 127.0.0.1:$PORT --tcp 127.0.0.1:$PORT --tls off --relay-ip 127.0.0.1 \
  --relay-ports 10000-29999 --allow-peer 127.0.0.1 --shards 1 --http off \
  --metrics 127.0.0.1:$MPORT --fast-path off \
  --max-allocations-per-user 100000 --unauth-replies-per-sec 0 >"$DIR/server.log" 2>&1 &
SPID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$MPORT) 2>/dev/null && break; sleep 0.1; done
# Where datagrams are dropped: the server's sockets or the generator's (sampled during the run).
python3 "$(dirname "$(realpath "$0")")/udpdrops.py" "$SPID" "$PORT" >"$DIR/drops" 2>&1 &
DPID=$!
nstat -n 2>/dev/null
# Core 0's busy and idle time (all processes): a server below 95% on a busy core shares it.
cpu0() { awk '/^cpu0 / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
read -r B0 I0 < <(cpu0)
EXTRA=(); [ -n "${PACE_BURST:-}" ] && EXTRA=(--pace-burst "$PACE_BURST")
/usr/bin/time -f "%U %S %e" -o "$DIR/time" taskset -c 1 "${LOADCMD[@]}" --server 127.0.0.1:$PORT --secret "$SECRET" --threads 1 "${EXTRA[@]}" \
  --scenario ramp --flows 10 --payload 100 --rate "$START" --ramp-step "$STEP" --ramp-steps "$STEPS" \
  --ramp-loss "$LOSS" --duration "$SECS" --drain-ms 300 --quiet --json "$DIR/ramp.json" \
  --server-metrics "http://127.0.0.1:$MPORT/metrics" >"$DIR/out" 2>&1
kill -TERM $DPID 2>/dev/null; wait $DPID 2>/dev/null
read -r B1 I1 < <(cpu0)
[ -s "$DIR/ramp.json" ] || { cat "$DIR/out" "$DIR/server.log"; exit 1; }
python3 - "$DIR/ramp.json" "$DIR/time" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["ramp"]
print(f"{'per flow':>9} {'offered pkt/s':>14} {'loss %':>8} {'server CPU %':>13} {'server us/msg':>14}")
for s in r["steps"]:
    t, c = s["traffic"], s.get("server_cost") or {}
    print(f"{s['rate_per_flow_pps']:>9.0f} {t['offered_pps']:>14.0f} {t['loss_pct']:>8.3f} "
          f"{c.get('cpu_pct', float('nan')):>13.1f} {c.get('cpu_us_per_message', float('nan')):>14.3f}")
best = [s for s in r["steps"] if s["traffic"]["loss_pct"] <= r["threshold_pct"]]
if not best:
    print("no loss-free step"); sys.exit(1)
top = best[-1]
cpu = (top.get("server_cost") or {}).get("cpu_pct", float("nan"))
where = "the server's core" if cpu >= 95 else "NOT the server's core (server below 95%)"
ceiling = " (ramp ceiling: no lossy step)" if r.get("first_lossy_step") is None else ""
print(f"capacity {top['traffic']['offered_pps']:.0f} pkt/s offered{ceiling}, server CPU {cpu:.1f}% there: ended on {where}")
if r.get("first_lossy_step") is not None:
    lossy = r["steps"][r["first_lossy_step"]]
    c = (lossy.get("server_cost") or {}).get("cpu_pct", float("nan"))
    print(f"first lossy step: {lossy['traffic']['offered_pps']:.0f} pkt/s offered, {lossy['traffic']['loss_pct']:.2f}% lost, server CPU {c:.1f}%")
u, s_, e = (float(x) for x in open(sys.argv[2]).read().split()[-3:])
print(f"generator (core 1) over the whole run: {u:.2f}+{s_:.2f} s CPU in {e:.1f} s, {100 * (u + s_) / e:.0f}% of its core on average")
EOF
cat "$DIR/drops"
echo "machine-wide UDP counters over the run: $(nstat 2>/dev/null | awk '/^Udp(InErrors|RcvbufErrors|SndbufErrors)/ {printf "%s %s  ", $1, $2}')"
echo "core 0 (the server's, all processes) over the run: $(( 100 * (B1 - B0) / (B1 - B0 + I1 - I0 + 1) ))% busy"
