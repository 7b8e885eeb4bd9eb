#!/usr/bin/env bash
# The shard loop's turns while many allocations are relayed by the kernel fast path: the relay
# (one shard, `--fast-path xdp`, core 0) in one namespace, `turnkey load` (core 1) in another,
# joined by a veth (bench/vethnet.py); FLOWS pair flows (2 x FLOWS allocations, each with a channel
# in the kernel) at 2 packets/s each. Once every allocation is up, the relay's loop-turn histogram
# (turnkey_relay_shard_turn_seconds) is read before and after a WINDOW-second steady window and
# the turns of that window are printed by bucket: with the kernel's counters of every allocation
# read in one turn, each collect round (every 500 ms) shows as one long turn; in bounded steps it
# does not.
#
#   bench/fastpath-turns.sh SERVER_TURNKEY [FLOWS] [WINDOW_SECS]
#   bench/fastpath-turns.sh target/release/turnkey 5000 10
#
# Root, clang (the XDP program), an otherwise idle machine; the load generator is SERVER_TURNKEY's
# own `turnkey load`.
set -uo pipefail
[ $# -ge 1 ] || { sed -n 2,15p "$0"; exit 2; }
SERVER=$(realpath "$1"); FLOWS=${2:-5000}; WINDOW=${3:-10}
HERE=$(dirname "$(realpath "$0")")
TAG=tkt$$ SIP=10.213.0.1 PORT=3478 MPORT=9641
DIR=$(mktemp -d); SPID= LPID=
cleanup() {
  [ -n "$LPID" ] && kill "$LPID" 2>/dev/null
  [ -n "$SPID" ] && kill "$SPID" 2>/dev/null
  wait 2>/dev/null
  python3 "$HERE/vethnet.py" down "$TAG"
  rm -rf "$DIR"
}
trap cleanup EXIT
python3 "$HERE/vethnet.py" up "$TAG" 0 1 || exit 1
S=(ip netns exec "${TAG}a") G=(ip netns exec "${TAG}b")
# bpf_fib_lookup answers only on an interface that forwards (docs/fastpath.md).
"${S[@]}" sysctl -qw net.ipv4.conf.all.forwarding=1 "net.ipv4.conf.${TAG}s.forwarding=1"
SECRET=bench-$RANDOM$RANDOM
ulimit -n "$(ulimit -Hn)"
TURNKEY_LOG=warn "${S[@]}" taskset -c 0 "$SERVER" serve --data-dir "$DIR/data" --secret="$SECRET" \
  --udp $SIP:$PORT --tcp $SIP:$PORT --tls off --relay-ip $SIP --relay-ports 10000-60000 \
  --allow-peer $SIP --shards 1 --http off --metrics $SIP:$MPORT --fast-path xdp \
  --max-allocations-per-user 1000000 --unauth-replies-per-sec 0 >"$DIR/server.log" 2>&1 &
SPID=$!
metrics() { "${S[@]}" curl -s "http://$SIP:$MPORT/metrics"; }
for _ in $(seq 100); do metrics >/dev/null 2>&1 && break; sleep 0.1; done
"${G[@]}" taskset -c 1 "$SERVER" load --server $SIP:$PORT --secret "$SECRET" --flows "$FLOWS" --rate 2 \
  --duration $((WINDOW + 20)) --concurrency 64 --quiet --json "$DIR/load.json" >"$DIR/load.log" 2>&1 &
LPID=$!
want=$((2 * FLOWS))
for _ in $(seq 240); do
  n=$(metrics | awk '/^turnkey_relay_allocations[ {]/ {s += $NF} END {print s + 0}')
  [ "${n%.*}" -ge "$want" ] && break
  sleep 0.5
done
[ "${n%.*}" -ge "$want" ] || { echo "only $n of $want allocations came up"; tail -n 5 "$DIR/load.log" "$DIR/server.log"; exit 1; }
sleep 3   # the channels are bound and the set-up's turns are behind
metrics >"$DIR/before"
sleep "$WINDOW"
metrics >"$DIR/after"
python3 - "$DIR/before" "$DIR/after" "$WINDOW" "$want" <<'EOF'
import re, sys
def buckets(path):
    out, total = {}, {}
    for line in open(path):
        m = re.match(r'turnkey_relay_shard_turn_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
        m = re.match(r'turnkey_relay_fastpath_packets_total\{.*\} (\S+)', line)
        if m:
            total["fp"] = total.get("fp", 0) + float(m.group(1))
    return out, total
(b, fb), (a, fa) = buckets(sys.argv[1]), buckets(sys.argv[2])
window, allocs = sys.argv[3], sys.argv[4]
d = {k: a[k] - b.get(k, 0) for k in a}
total = d.get("+Inf", 0)
print(f"{allocs} allocations in the kernel; {total:.0f} loop turns in a {window} s window "
      f"({fa.get('fp', 0) - fb.get('fp', 0):.0f} datagrams relayed by the kernel meanwhile)")
for k in sorted((k for k in d if k != "+Inf"), key=float):
    if float(k) >= 0.0005:
        print(f"  over {float(k) * 1e3:g} ms: {total - d[k]:.0f}")
EOF
grep -E "sent|lost" "$DIR/load.log" | head -2
