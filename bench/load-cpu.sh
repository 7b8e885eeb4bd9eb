#!/usr/bin/env bash
# Generator CPU per packet (issue 23): `turnkey load` builds and coturn's turnutils_uclient, the
# same load against the same turnkey server, server on core 0 and generator on core 1, loopback.
# Pair mode, 10 flows (uclient: 20 clients in pairs) of 100-byte packets, 160,000 packets sent by
# the near sides; flooding, and paced at 20,000 packets/s (10 flows x 2,000/s; uclient: 20 clients
# x one message per ms). CPU (user + system, from /usr/bin/time, + the generator's NAPI thread
# over a veth, printed as cpu U+S+N) is divided by the 160,000
# packets sent (each is also received back, so per packet sent *and* received, halve it).
# A LOAD_BIN that has `--one-way` also runs one way ("one-way" rows): the far allocation only
# receives and measures, so each packet crosses the relay once, as uclient's do, and the
# generator sends and receives each packet once: the like-for-like row against uclient.
#
# NET=veth runs the server and the generator each in its own network namespace joined by a veth
# (bench/vethnet.py: threaded NAPI, each end's receive thread pinned to its side's core). On
# loopback a sender's system call carries each datagram through the receiver's whole kernel
# receive path: the generator is charged for the server's receive work and the server for the
# generator's. Over the veth each side's receive path runs in its own end's NAPI thread, which is
# added to that side's CPU: the generator's figure is then its own sends, its own kernel receive
# path and its user space, as on a real network.
#
#   bench/load-cpu.sh SERVER_TURNKEY LOAD_BIN [LOAD_BIN ...]
#   bench/load-cpu.sh target/release/turnkey /tmp/base/turnkey-load target/release/turnkey-load
#
# FLOOD=0 skips the flooding runs, UCLIENT=0 uclient's, PAIR=0 the pair-mode (round-trip) ones.
# Each LOAD_BIN is a `turnkey-load` (or `turnkey`, called as `turnkey load`) binary. A fresh
# server per run. Run it on an otherwise idle machine; REPS (default 3) repetitions each.
set -uo pipefail
[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
SERVER=$(realpath "$1"); shift
HERE=$(dirname "$(realpath "$0")")
REPS=${REPS:-3}
DIR=$(mktemp -d); trap 'kill $SPID 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
SECRET=bench-$RANDOM$RANDOM
SPID=
NET=${NET:-loopback}
SIP=127.0.0.1 SNS=() GNS=() TAG=
if [ "$NET" = veth ]; then
  TAG=tkc$$
  python3 "$HERE/vethnet.py" up "$TAG" 0 1 || exit 1
  trap 'kill $SPID 2>/dev/null; wait 2>/dev/null; python3 "$HERE/vethnet.py" down "$TAG"; rm -rf "$DIR"' EXIT
  SIP=10.213.0.1 SNS=(ip netns exec "${TAG}a") GNS=(ip netns exec "${TAG}b")
elif [ "$NET" != loopback ]; then
  echo "NET must be loopback or veth" >&2; exit 2
fi
# CPU seconds of the generator end's NAPI threads (its kernel receive path; 0 on loopback).
napi_secs() { if [ -n "$TAG" ]; then python3 "$HERE/vethnet.py" napi-secs "${TAG}l"; else echo 0; fi; }
start_server() {
  [ -n "$SPID" ] && { kill $SPID 2>/dev/null; wait $SPID 2>/dev/null || true; }
  rm -rf "$DIR/data"
  # A port free over both TCP and UDP (the server listens on both).
  PORT=$("${SNS[@]}" python3 "$HERE/freeport.py")
  TURNKEY_LOG=warn "${SNS[@]}" taskset -c 0 "$SERVER" serve --data-dir "$DIR/data" --secret="$SECRET" \
    --udp $SIP:$PORT --tcp $SIP:$PORT --tls off --relay-ip $SIP \
    --relay-ports 10000-29999 --allow-peer $SIP --shards 1 --http off --metrics off \
    --max-allocations-per-user 100000 --unauth-replies-per-sec 0 --rfc5766-channel-numbers >/dev/null 2>&1 &
  SPID=$!
  for _ in $(seq 50); do "${SNS[@]}" bash -c "exec 3<>/dev/tcp/$SIP/$PORT" 2>/dev/null && break; sleep 0.1; done
}
# run NAME CMD...: prints NAME, CPU seconds, µs per packet sent, and the generator's own figures.
run() {
  local name=$1; shift
  start_server
  local args=("${@//@PORT@/$PORT}")
  local napi0; napi0=$(napi_secs)
  "${GNS[@]}" /usr/bin/time -f "%U %S" -o "$DIR/time" taskset -c 1 "${args[@]}" >"$DIR/out" 2>&1
  [ -n "${VERBOSE:-}" ] && cat "$DIR/out"
  read -r u s < <(tail -1 "$DIR/time")
  # The generator end's kernel receive work (veth's NAPI thread; 0 on loopback), counted in.
  local n; n=$(python3 -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$napi0" "$(napi_secs)")
  local extra=""
  if [ -s "$DIR/report.json" ]; then
    extra=$(python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["traffic"]; print("sent %d delivered %d loss %.3f%% in %.2f s, %.0f pkt/s" % (t["sent"], t["delivered"], t["loss_pct"], t["elapsed_secs"], t["offered_pps"]))' "$DIR/report.json")
    rm -f "$DIR/report.json"
  else
    extra=$(grep -E "Total transmit time|Total lost packets" "$DIR/out" | sed 's/^[0-9]*: *: *//' | tr '\n' ' ' | cut -c1-160)
  fi
  python3 -c 'import sys; u,s,n=map(float,sys.argv[2:5]); print(f"{sys.argv[1]:<40} cpu {u:.2f}+{s:.2f}+{n:.2f} s  {1e6*(u+s+n)/160000:.2f} us/packet sent  {sys.argv[5]}")' "$name" "$u" "$s" "$n" "$extra"
}
loadcmd() { case "$(basename "$1")" in turnkey) echo "$1 load";; *) echo "$1";; esac; }
has_one_way() { $1 --help 2>/dev/null | grep -q -- --one-way; }
for rep in $(seq "$REPS"); do
  for bin in "$@"; do
    L=$(loadcmd "$(realpath "$bin")")
    [ "${FLOOD:-1}" = 0 ] && continue
    [ "${PAIR:-1}" != 0 ] && run "$bin flood #$rep" $L --server $SIP:@PORT@ --secret "$SECRET" --flows 10 --count 16000 --flood --quiet --json "$DIR/report.json" --drain-ms 500
    has_one_way "$L" && run "$bin flood one-way #$rep" $L --one-way --server $SIP:@PORT@ --secret "$SECRET" --flows 10 --count 16000 --flood --quiet --json "$DIR/report.json" --drain-ms 500
  done
  [ "${FLOOD:-1}" != 0 ] && [ "${UCLIENT:-1}" != 0 ] && run "uclient flood #$rep" turnutils_uclient -y -c -m 20 -n 8000 -l 100 -z 0 -W "$SECRET" -u bench -p @PORT@ $SIP
  for bin in "$@"; do
    L=$(loadcmd "$(realpath "$bin")")
    [ "${PAIR:-1}" != 0 ] && run "$bin 20k/s #$rep" $L --server $SIP:@PORT@ --secret "$SECRET" --flows 10 --count 16000 --rate 2000 --quiet --json "$DIR/report.json" --drain-ms 500
    has_one_way "$L" && run "$bin 20k/s one-way #$rep" $L --one-way --server $SIP:@PORT@ --secret "$SECRET" --flows 10 --count 16000 --rate 2000 --quiet --json "$DIR/report.json" --drain-ms 500
  done
  [ "${UCLIENT:-1}" != 0 ] && run "uclient 20k/s #$rep" turnutils_uclient -y -c -m 20 -n 8000 -l 100 -z 1 -W "$SECRET" -u bench -p @PORT@ $SIP
done
