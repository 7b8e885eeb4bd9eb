#!/usr/bin/env bash
# Where a turnkey server's CPU goes under one UDP load: user and system time per relayed message
# (from /proc/PID/stat) and a `perf record` profile split by DSO (kernel, turnkey, libc) with the
# top symbols. Used for the before/after profiles in docs/benchmarks.md (issue 17).
#
#   bench/profile.sh BIN [turnkey load arguments...]
#   bench/profile.sh target/release/turnkey --echo-peer --flows 10 --payload 100 --rate 1000
#   bench/profile.sh /tmp/before/turnkey --echo-peer --profile video --bitrate 2M --flows 48
#
# The server (BIN serve, one shard, the flags of bench/compare.py) runs on core 0, the load
# generator (this tree's target/release/turnkey) on core 1, on loopback. The load runs 14 s; the
# server is measured over 8 s of it, starting 4 s in. Writes the perf data to
# target/bench/profile-<pid>.data. Needs perf (Debian: linux-perf) and root (or
# kernel.perf_event_paranoid <= 1). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
BIN=$(realpath "$1"); shift
LOAD=target/release/turnkey
command -v perf >/dev/null || { echo "perf is missing (apt-get install linux-perf)"; exit 2; }
[ -x "$LOAD" ] || cargo build --release --locked -p turnkey
OUT=target/bench; mkdir -p "$OUT"
DIR=$(mktemp -d); trap 'kill $SPID 2>/dev/null && wait $SPID 2>/dev/null; rm -rf "$DIR"' EXIT
SECRET=profile-$RANDOM$RANDOM
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$DIR/key.pem" \
  -out "$DIR/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
TURNKEY_LOG=warn taskset -c 0 "$BIN" serve --data-dir "$DIR/data" --secret="$SECRET" \
  --udp 127.0.0.1:$PORT --tcp 127.0.0.1:$PORT --tls 127.0.0.1:0 --tls-cert "$DIR/cert.pem" \
  --tls-key "$DIR/key.pem" --relay-ip 127.0.0.1 --relay-ports 10000-29999 --allow-peer 127.0.0.1 \
  --shards 1 --http off --metrics off --max-allocations-per-user 100000 --unauth-replies-per-sec 0 \
  >/dev/null 2>&1 &
SPID=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
taskset -c 1 "$LOAD" load --server 127.0.0.1:$PORT --secret="$SECRET" --quiet --duration 14 \
  --concurrency 32 --json "$DIR/report.json" "$@" >/dev/null 2>&1 &
LPID=$!
sleep 4
ticks() { awk '{print $14, $15}' /proc/$SPID/stat; }
read -r u0 s0 < <(ticks)
DATA="$OUT/profile-$SPID.data"
perf record -q -e cpu-clock -F 2000 -g -p $SPID -o "$DATA" -- sleep 8 >/dev/null 2>&1
read -r u1 s1 < <(ticks)
wait $LPID || true
python3 - "$DIR/report.json" "$((u1 - u0))" "$((s1 - s0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); u, s, hz = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t = r["traffic"]
# Messages relayed in the 8 s window: every delivered packet crossed the relay twice, spread
# evenly over the sending time.
msgs = 2 * t["delivered"] * 8 / max(t["elapsed_secs"], 1)
print(f"load: {t['offered_pps']:.0f} pkt/s offered, loss {t['loss_pct']:.2f}%, about {msgs:,.0f} relayed messages in 8 s")
print(f"server CPU per relayed message: {1e6 * (u + s) / hz / msgs:.2f} µs "
      f"(user {1e6 * u / hz / msgs:.2f}, system {1e6 * s / hz / msgs:.2f})")
PY
echo "perf samples by DSO:"
perf report -i "$DATA" --no-children --sort dso -g none --percent-limit 1 2>/dev/null | grep -E '^ +[0-9]' | head -6
echo "top symbols:"
perf report -i "$DATA" --no-children --sort dso,sym -g none --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | head -16
