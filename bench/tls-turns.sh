#!/usr/bin/env bash
# The shard loop's turns during a TLS reconnect storm: the relay (one shard, core 0, its own
# self-signed certificate) and `turnkey load --scenario allocations --transport tls` (core 1):
# COUNT allocations, CONCURRENCY at a time, each a new TCP connection and TLS handshake. Prints the
# storm's allocation rate and the relay's loop turns over the storm by bucket
# (turnkey_relay_shard_turn_seconds): TLS handshakes run on the shard thread, every handshake's
# crypto is a shard turn; off it (crates/turnkey-relay/src/handshake.rs) they are not.
#
#   bench/tls-turns.sh SERVER_TURNKEY [COUNT] [CONCURRENCY]
#   bench/tls-turns.sh target/release/turnkey 2000 64
#
# KEY=rsa serves an RSA-2048 certificate (openssl) instead of the generated ECDSA P-256 one.
set -uo pipefail
[ $# -ge 1 ] || { sed -n 2,13p "$0"; exit 2; }
SERVER=$(realpath "$1"); COUNT=${2:-2000}; CONC=${3:-64}
HERE=$(dirname "$(realpath "$0")")
DIR=$(mktemp -d); SPID=
trap 'kill $SPID 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
read -r PORT TPORT MPORT < <(python3 "$HERE/freeport.py" 3)
SECRET=bench-$RANDOM$RANDOM
CERT=()
if [ "${KEY:-}" = rsa ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/key.pem" -out "$DIR/cert.pem" -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost >/dev/null 2>&1 || exit 1
  CERT=(--tls-cert "$DIR/cert.pem" --tls-key "$DIR/key.pem")
fi
TURNKEY_LOG=warn taskset -c 0 "$SERVER" serve --data-dir "$DIR/data" --secret="$SECRET" \
  --udp 127.0.0.1:$PORT --tcp 127.0.0.1:$PORT --tls 127.0.0.1:$TPORT "${CERT[@]}" --relay-ip 127.0.0.1 \
  --shards 1 --http off --metrics 127.0.0.1:$MPORT --max-allocations-per-user 1000000 \
  --max-connections-per-ip 100000 --unauth-replies-per-sec 0 >"$DIR/server.log" 2>&1 &
SPID=$!
metrics() { curl -s "http://127.0.0.1:$MPORT/metrics"; }
for _ in $(seq 100); do metrics >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
metrics >"$DIR/before"
taskset -c 1 "$SERVER" load --server 127.0.0.1:$TPORT --transport tls --insecure --secret "$SECRET" \
  --scenario allocations --count "$COUNT" --concurrency "$CONC" --quiet --json "$DIR/load.json" >"$DIR/load.log" 2>&1
metrics >"$DIR/after"
python3 - "$DIR/before" "$DIR/after" "$DIR/load.json" <<'EOF'
import json, re, sys
def buckets(path):
    out = {}
    for line in open(path):
        m = re.match(r'turnkey_relay_shard_turn_seconds_bucket\{.*le="([^"]+)".*\} (\S+)', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(2))
    return out
b, a = buckets(sys.argv[1]), buckets(sys.argv[2])
r = json.load(open(sys.argv[3]))["allocations"]
d = {k: a[k] - b.get(k, 0) for k in a}
total = d.get("+Inf", 0)
print(f"{r['succeeded']} of {r['attempted']} TLS allocations, {r['per_sec']:.0f}/s, "
      f"time to allocate p50 {r['time_us']['p50'] / 1e3:.2f} ms p99 {r['time_us']['p99'] / 1e3:.2f} ms; "
      f"{total:.0f} loop turns")
for k in sorted((k for k in d if k != "+Inf"), key=float):
    if 0.0005 <= float(k) <= 0.05:
        print(f"  over {float(k) * 1e3:g} ms: {total - d[k]:.0f}")
EOF
