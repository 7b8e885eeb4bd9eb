#!/usr/bin/env bash
# Soak test (issue 13; not in CI): `turnkey load` over UDP, TCP and TLS at once for DURATION
# seconds, with allocation churn, revocations through the issuer API and TLS certificate reloads
# (SIGHUP) during the run. Every second the relay's RSS, open descriptors and relay counts go into
# <out>/samples.csv. Pass: zero loss on every load, every revocation refused afterwards, every
# reload served, and no growth of RSS or descriptors beyond the bounds below between the end of
# the warm-up and the end of the run.
#
#   scripts/soak.sh                      # 10 minutes, release build, rates below
#   DURATION=120 scripts/soak.sh         # a 2-minute run
#   TURNKEY_BIN=target/debug/turnkey SCALE=0.1 DURATION=120 scripts/soak.sh   # debug build, 10% load
#
# Rates: half of turnkey's one-core capacity in docs/benchmarks.md (10 flows, 100 B, pair mode:
# UDP 70,742, TCP 132,193 and TLS 88,264 offered pkt/s), split over the three transports, which
# run at once on the same relay: each transport gets a third of half its own capacity. SCALE
# multiplies them (a debug build or a busy machine).
#
# Environment: DURATION (s, default 600), SCALE (default 1), FLOWS (per transport, default 10),
# WARMUP (s, default 60), RSS_BOUND_KIB (default 32768), FD_BOUND (default 32), OUT (default
# target/soak/<time>), TURNKEY_BIN (default: target/release/turnkey, built if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
SCALE=${SCALE:-1}
FLOWS=${FLOWS:-10}
WARMUP=${WARMUP:-60}
RSS_BOUND_KIB=${RSS_BOUND_KIB:-32768}
FD_BOUND=${FD_BOUND:-32}
OUT=${OUT:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -z "${TURNKEY_BIN:-}" ]]; then
  cargo build --release -p turnkey >&2
  TURNKEY_BIN=target/release/turnkey
fi
for tool in openssl python3 curl; do
  command -v "$tool" >/dev/null || { echo "soak: $tool is needed" >&2; exit 2; }
done
(( DURATION > WARMUP + 30 )) || { echo "soak: DURATION must exceed WARMUP + 30 s" >&2; exit 2; }

rate() { python3 -c "print(max(1, int($1 * $SCALE / 6 / $FLOWS)))"; }
UDP_RATE=$(rate 70742)
TCP_RATE=$(rate 132193)
TLS_RATE=$(rate 88264)

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA="$OUT/data"
TLSDIR="$OUT/tls"
mkdir -p "$TLSDIR"
chmod 700 "$OUT"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -n "${SERVER:-}" ]] && kill "$SERVER" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

# A CA the loads trust, and a leaf certificate for localhost reissued at every reload.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=soak-ca \
  -keyout "$TLSDIR/ca.key" -out "$TLSDIR/ca.pem" 2>/dev/null
leaf() {
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$TLSDIR/key.new" -out "$TLSDIR/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$TLSDIR/ext"
  openssl x509 -req -in "$TLSDIR/leaf.csr" -CA "$TLSDIR/ca.pem" -CAkey "$TLSDIR/ca.key" -CAcreateserial \
    -days 2 -extfile "$TLSDIR/ext" -out "$TLSDIR/cert.new" 2>/dev/null
  mv "$TLSDIR/key.new" "$TLSDIR/key.pem"
  mv "$TLSDIR/cert.new" "$TLSDIR/cert.pem"
}
leaf

# The listening ports: free ones below the kernel's ephemeral range. A SO_REUSEPORT bind to port
# 0 by any other process of this user (a test of the suite running beside the soak) may be handed
# a port in that range that a reuseport group already holds and join it: the kernel then spreads
# the relay's clients over one more socket, and the datagrams hashed to it, or to the relay's other
# shard, are lost (one second of UDP loss with `no_allocation` drops, seen in the test command).
# No port-0 bind lands below the range.
read -r UDP_PORT TCP_PORT TLS_PORT < <(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
found = []
while len(found) < 3:
    port = random.randrange(max(1024, low - 12000), low)
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM); t.bind(("127.0.0.1", port))
    except OSError:
        continue
    u.close(); t.close()
    if port not in found:
        found.append(port)
print(*found)
PY
)
# The relay logs every allocation it creates and ends (with the reason) and every stream
# connection it closes, as JSON lines with their time: the summary lines them up with the drops.
TURNKEY_LOG=${SOAK_LOG:-info,turnkey_relay::shard=debug,turnkey_relay::stream=debug} \
"$TURNKEY_BIN" serve --data-dir "$DATA" --udp "127.0.0.1:$UDP_PORT" --tcp "127.0.0.1:$TCP_PORT" \
  --tls "127.0.0.1:$TLS_PORT" \
  --tls-cert "$TLSDIR/cert.pem" --tls-key "$TLSDIR/key.pem" --http 127.0.0.1:0 --metrics 127.0.0.1:0 \
  --relay-ip 127.0.0.1 --allow-peer 127.0.0.1 --public-host 127.0.0.1 --unauth-replies-per-sec 0 \
  --max-allocations-per-user 100000 --log-format json >"$OUT/serve.out" 2>"$OUT/serve.log" &
SERVER=$!
for _ in $(seq 100); do grep -q '^turnkey listening ' "$OUT/serve.out" 2>/dev/null && break; sleep 0.2; done
line=$(grep '^turnkey listening ' "$OUT/serve.out") || { echo "soak: turnkey did not start" >&2; cat "$OUT/serve.log" >&2; exit 1; }
addr() { tr ' ' '\n' <<<"$line" | sed -n "s/^$1=//p" | cut -d, -f1; }
UDP=$(addr udp); TCP=$(addr tcp); TLS=$(addr tls); HTTP=$(addr http); METRICS=$(addr metrics)
SECRET=$(cat "$DATA/secret")
KEYTOKEN=$(ls "$DATA"/keys/*.token | head -1)
KEY=$(basename "$KEYTOKEN" .token)
TOKEN=$(cat "$KEYTOKEN")
echo "soak: $DURATION s, UDP/TCP/TLS $FLOWS flows at $UDP_RATE/$TCP_RATE/$TLS_RATE pkt/s each; out $OUT" >&2

# The three loads, for the whole run, zero loss allowed.
for t in udp tcp tls; do
  case $t in udp) server=$UDP r=$UDP_RATE ;; tcp) server=$TCP r=$TCP_RATE ;; tls) server=$TLS r=$TLS_RATE ;; esac
  "$TURNKEY_BIN" load --server "$server" --transport "$t" --ca "$TLSDIR/ca.pem" --sni localhost \
    --secret "$SECRET" --flows "$FLOWS" --rate "$r" --duration "$DURATION" --max-loss 0 --quiet \
    --json "$OUT/load-$t.json" >"$OUT/load-$t.txt" 2>&1 &
  pids+=($!)
  eval "LOAD_$t=$!"
done

# Allocation churn: allocate and release, 20 per second, over each transport in turn.
(
  end=$((SECONDS + DURATION - 5))
  i=0
  while (( SECONDS < end )); do
    t=(udp tcp tls); t=${t[$((i % 3))]}
    case $t in udp) server=$UDP ;; tcp) server=$TCP ;; tls) server=$TLS ;; esac
    echo "$(date +%s.%N) churn $i $t" >>"$OUT/events"
    "$TURNKEY_BIN" load --server "$server" --transport "$t" --ca "$TLSDIR/ca.pem" --sni localhost \
      --secret "$SECRET" --user "churn-$i" --scenario allocations --count 100 --concurrency 4 --rate 20 \
      --quiet --json "$OUT/churn-last.json" >>"$OUT/churn.txt" 2>&1 || echo "churn $i failed" >>"$OUT/failures"
    i=$((i + 1))
    echo "$i" >"$OUT/churn"
  done
) &
pids+=($!)

# Revocations every 10 s: an issued credential holds an allocation, is revoked through the API
# (204), the held allocation is ended by the relay, and a new Allocate with it is refused.
issue() {
  curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"ttl": 3600}' "http://$HTTP/v1/turn/keys/$KEY/credentials/generate" |
    python3 -c 'import json,sys; s=json.load(sys.stdin)["iceServers"]; print(s["username"], s["credential"])'
}
(
  end=$((SECONDS + DURATION - 20))
  n=0
  while (( SECONDS < end )); do
    read -r user pass < <(issue)
    echo "$(date +%s.%N) revocation-hold $n $user" >>"$OUT/events"
    "$TURNKEY_BIN" load --server "$UDP" --user "$user" --password "$pass" --scenario allocations --count 1 \
      --hold 8 --quiet >/dev/null 2>&1 &
    holder=$!
    sleep 2
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" \
      "http://$HTTP/v1/turn/keys/$KEY/credentials/$user/revoke")
    [[ $code == 204 ]] || echo "revocation $n: HTTP $code" >>"$OUT/failures"
    echo "$(date +%s.%N) revoked $n" >>"$OUT/events"
    sleep 1
    echo "$(date +%s.%N) revoked-retry-over-tcp $n" >>"$OUT/events"
    "$TURNKEY_BIN" load --server "$TCP" --transport tcp --user "$user" --password "$pass" \
      --scenario allocations --count 1 --quiet --json "$OUT/revoked-retry.json" >/dev/null 2>&1 || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(r["allocations"]["succeeded"] != 0 or "401" not in r["errors"])' \
      "$OUT/revoked-retry.json" || echo "revocation $n: the revoked credential was not refused with 401" >>"$OUT/failures"
    wait "$holder" 2>/dev/null || true
    n=$((n + 1))
    echo "$n" >"$OUT/revocations"
    sleep 7
  done
) &
pids+=($!)

# Certificate reloads every 30 s: a new leaf, SIGHUP, and the TLS port serves it.
fingerprint() {
  openssl s_client -connect "$TLS" -servername localhost </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 2>/dev/null
}
(
  end=$((SECONDS + DURATION - 10))
  n=0
  sleep 15
  while (( SECONDS < end )); do
    leaf
    want=$(openssl x509 -in "$TLSDIR/cert.pem" -noout -fingerprint -sha256)
    kill -HUP "$SERVER"
    echo "$(date +%s.%N) reload $n" >>"$OUT/events"
    sleep 1
    got=$(fingerprint)
    [[ $got == "$want" ]] || echo "reload $n: served $got, want $want" >>"$OUT/failures"
    n=$((n + 1))
    echo "$n" >"$OUT/reloads"
    sleep 29
  done
) &
pids+=($!)

# Samples: one line per second.
# Drops by the relay's reason, TCP/TLS connections closed by the write timeout, the longest shard
# stall so far (turnkey_relay_shard_stall_max_seconds: what a packet waited, scheduling included)
# and the longest shard loop turn so far (turnkey_relay_shard_turn_max_seconds: the relay's own
# work), and the Unix time (to line up with
# <out>/events: each revocation, the TCP retry with the revoked credential, each reload).
# The kernel's own UDP drops (a full socket receive buffer: /proc/net/udp{,6}, "drops") on the
# sockets each side holds open now: the relay's (kernel_drops_relay) and the three loads'
# (kernel_drops_load, their client and peer sockets). A packet lost there was never seen by the
# relay's counters or was lost after the relay sent it; the generator's `lost` counts both.
kernel_drops() { # relay-pid load-pid...: "relay drops,load drops,foreign sockets" (below)
  python3 - "$UDP_PORT" "$TCP_PORT" "$TLS_PORT" "$@" <<'PY'
import os, sys
def inodes(pids):
    found = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    found.add(link[8:-1])
        except OSError:
            pass
    return found
udp_port, tcp_ports = int(sys.argv[1]), {int(sys.argv[2]), int(sys.argv[3])}
relay, load = inodes(sys.argv[4:5]), inodes(sys.argv[5:])
drops, foreign = {}, 0
for table, stream in (("/proc/net/udp", False), ("/proc/net/udp6", False), ("/proc/net/tcp", True), ("/proc/net/tcp6", True)):
    try:
        for line in open(table).readlines()[1:]:
            f = line.split()
            port = int(f[1].rsplit(":", 1)[1], 16)
            if stream:
                foreign += f[3] == "0A" and port in tcp_ports and f[9] not in relay
            else:
                drops[f[9]] = drops.get(f[9], 0) + int(f[-1])
                foreign += port == udp_port and f[9] not in relay
    except OSError:
        pass
print(f"{sum(drops.get(i, 0) for i in relay)},{sum(drops.get(i, 0) for i in load)},{foreign}")
PY
}
# Every reason label, in these columns' order (turnkey_relay_dropped_packets_total,
# turnkey_relay_allocations_ended_total, turnkey_relay_auth_failures_total): a second's drops
# are told apart by reason, next to the allocations that ended and the requests refused in it.
DROPS="no_permission denied_peer rate_cap queue_full malformed no_allocation reply_limited usage_cap"
ENDS="expired deallocated revoked closed killed shutdown"
AUTHS="missing_integrity bad_request stale_nonce wrong_realm wrong_credentials malformed_username expired revoked bad_credential"
header="t,rss_kib,fds,allocations,connections,relayed_packets,dropped_packets,dropped_queue_full,dropped_other"
header+=",write_timeouts,stall_max_ms,turn_max_ms,unix,kernel_drops_relay,kernel_drops_load,foreign_sockets"
header+=",allocations_udp,allocations_tcp,allocations_tls,relayed_udp,relayed_tcp,relayed_tls,allocate_failed"
for r in $DROPS; do header+=",drop_$r"; done
for r in $ENDS; do header+=",ended_$r"; done
for r in $AUTHS; do header+=",auth_$r"; done
echo "$header" >"$OUT/samples.csv"
start=$SECONDS
while (( SECONDS - start < DURATION )) && kill -0 "$SERVER" 2>/dev/null; do
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status")
  fds=$(ls "/proc/$SERVER/fd" | wc -l)
  kd=$(kernel_drops "$SERVER" "$LOAD_udp" "$LOAD_tcp" "$LOAD_tls")
  curl -s "http://$METRICS/metrics" | awk -v t=$((SECONDS - start)) -v rss="$rss" -v fds="$fds" \
    -v unix="$(date +%s.%N)" -v kd="$kd" -v drops="$DROPS" -v ends="$ENDS" -v auths="$AUTHS" '
    function label(name) { return match($0, name "=\"[^\"]*\"") ? substr($0, RSTART + length(name) + 2, RLENGTH - length(name) - 3) : "" }
    /^turnkey_relay_allocations[ {]/ { a += $NF; at[label("transport")] += $NF }
    /^turnkey_relay_connections[ {]/ { c += $NF }
    /^turnkey_relay_relayed_packets_total[ {]/ { p += $NF; pt[label("transport")] += $NF }
    /^turnkey_relay_dropped_packets_total[ {]/ { d += $NF; dr[label("reason")] += $NF }
    /^turnkey_relay_allocations_ended_total[ {]/ { er[label("reason")] += $NF }
    /^turnkey_relay_auth_failures_total[ {]/ { ar[label("reason")] += $NF }
    /^turnkey_relay_allocation_attempts_total[ {]/ { if (label("result") != "success") af += $NF }
    /^turnkey_relay_connections_closed_total[ {].*reason="write_timeout"/ { w += $NF }
    /^turnkey_relay_shard_stall_max_seconds[ {]/ { if ($NF * 1000 > s) s = $NF * 1000 }
    /^turnkey_relay_shard_turn_max_seconds[ {]/ { if ($NF * 1000 > tm) tm = $NF * 1000 }
    END {
      q = dr["queue_full"]
      line = sprintf("%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%.1f,%.1f,%s,%s", t, rss, fds, a, c, p, d, q, d - q, w, s, tm, unix, kd)
      line = line sprintf(",%d,%d,%d,%d,%d,%d,%d", at["udp"], at["tcp"], at["tls"], pt["udp"], pt["tcp"], pt["tls"], af)
      n = split(drops, x, " "); for (i = 1; i <= n; i++) line = line "," dr[x[i]] + 0
      n = split(ends, x, " "); for (i = 1; i <= n; i++) line = line "," er[x[i]] + 0
      n = split(auths, x, " "); for (i = 1; i <= n; i++) line = line "," ar[x[i]] + 0
      print line
    }' >>"$OUT/samples.csv"
  sleep 1
done

status=0
for t in udp tcp tls; do
  p=$(eval echo "\$LOAD_$t")
  if ! wait "$p"; then echo "load over $t failed (exit status)" >>"$OUT/failures"; fi
done
kill -0 "$SERVER" 2>/dev/null || echo "turnkey exited during the run" >>"$OUT/failures"
# The shards' loop turns over the whole run (the histogram, summed over shards) for the summary.
curl -s "http://$METRICS/metrics" | awk '/^turnkey_relay_shard_turn_seconds_bucket/ {
    match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n[le] += $NF; if (!(le in seen)) { seen[le] = 1; order[++k] = le } }
  END { for (i = 1; i <= k; i++) print order[i], n[order[i]] }' >"$OUT/turns.txt" || true
sleep 2
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done

python3 - "$OUT" "$WARMUP" "$RSS_BOUND_KIB" "$FD_BOUND" <<'EOF' || status=1
import csv, json, os, sys
out, warmup, rss_bound, fd_bound = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = list(csv.DictReader(open(f"{out}/samples.csv")))
def mean(key, sel):
    v = [int(r[key]) for r in sel]
    return sum(v) / len(v)
warm = [r for r in rows if warmup <= int(r["t"]) < warmup + 30]
last = rows[-30:]
problems = []
for key, bound in (("rss_kib", rss_bound), ("fds", fd_bound)):
    a, b = mean(key, warm), mean(key, last)
    print(f"{key}: {a:.0f} after warm-up, {b:.0f} at the end (growth {b - a:+.0f}, bound {bound})")
    if b - a > bound:
        problems.append(f"{key} grew by {b - a:.0f} (bound {bound})")
print(f"rss_kib: max {max(int(r['rss_kib']) for r in rows)}; fds: max {max(int(r['fds']) for r in rows)}")
end = rows[-1]
by_reason = ", ".join(f"{k[5:]} {end[k]}" for k in end if k.startswith("drop_") and end[k] != "0")
print(f"relay drops: queue_full {end['dropped_queue_full']}, other {end['dropped_other']} ({by_reason or 'none'}); "
      f"write timeouts {end['write_timeouts']}; longest shard stall {end['stall_max_ms']} ms, "
      f"longest loop turn {end['turn_max_ms']} ms")
turns = [l.split() for l in open(f"{out}/turns.txt")] if os.path.exists(f"{out}/turns.txt") else []
if turns:
    # Cumulative buckets to counts per bucket: the whole run's loop turns by length.
    prev, parts = 0.0, []
    for le, n in turns:
        n = float(n)
        if n > prev:
            parts.append(f"<={le}s: {n - prev:.0f}")
        prev = n
    print(f"shard loop turns ({prev:.0f}): " + ", ".join(parts))
# (The largest sample: a socket's count goes with it when it closes, the loads' at their end.)
print(f"kernel UDP drops (full receive buffers) on the relay's sockets: "
      f"{max(int(r['kernel_drops_relay']) for r in rows)}, "
      f"on the loads' sockets: {max(int(r['kernel_drops_load']) for r in rows)}")
def relay_log():
    # The relay's JSON log: (unix time, level, message, fields) per line.
    import datetime
    lines = []
    try:
        for raw in open(f"{out}/serve.log"):
            try:
                j = json.loads(raw)
                ts = datetime.datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError):
                continue
            f = j.get("fields", {})
            lines.append((ts, j.get("level", ""), f.pop("message", ""), f))
    except OSError:
        pass
    return lines
log = relay_log()
created = {f.get("id"): ts for ts, _, m, f in log if m == "allocation created"}
events = []
if os.path.exists(f"{out}/events"):
    for line in open(f"{out}/events"):
        ts, _, what = line.strip().partition(" ")
        events.append((float(ts), what))
def explain(a, b):
    # What happened in the second before sample b: events, allocations ended (reason, age) and
    # the relay's other log lines, so a drop is read next to its cause.
    lo, hi = float(a["unix"]) - 2, float(b["unix"])
    for ts, what in events:
        if lo <= ts <= hi:
            print(f"    event at unix {ts:.3f}: {what}")
    ends = {}
    for ts, level, m, f in log:
        if not lo <= ts <= hi:
            continue
        if m == "allocation ended":
            age = ts - created[f.get("id")] if f.get("id") in created else None
            ends[f.get("reason")] = ends.get(f.get("reason"), 0) + 1
            if age is None or age > 20:
                print(f"    relay at unix {ts:.3f}: allocation ended after {age if age is None else round(age, 1)} s: {f}")
        elif m not in ("allocation created", "connection closed"):
            print(f"    relay at unix {ts:.3f}: {level} {m} {f}")
    if ends:
        print(f"    allocations ended in the window: {ends}")
counters = [k for k in rows[0] if k.startswith(("drop_", "ended_", "auth_"))] + ["allocate_failed"]
for a, b in zip(rows, rows[1:]):
    if int(b["dropped_packets"]) > int(a["dropped_packets"]):
        why = ", ".join(f"{k[5:]} +{int(b[k]) - int(a[k])}" for k in counters
                        if k.startswith("drop_") and int(b[k]) > int(a[k]))
        print(f"drops at t={b['t']} (unix {b['unix']}): +{int(b['dropped_packets']) - int(a['dropped_packets'])} ({why})")
        moved = ", ".join(f"{k} +{int(b[k]) - int(a[k])}" for k in counters
                          if not k.startswith("drop_") and int(b[k]) > int(a[k]))
        print(f"    in that second: stall max {b['stall_max_ms']} ms, turn max {b['turn_max_ms']} ms; foreign sockets on the relay's ports "
              f"{b['foreign_sockets']}; {moved or 'no allocation ended, no refusal'}")
        explain(a, b)
    if int(b["foreign_sockets"]) > 0:
        print(f"foreign sockets on the relay's listening ports at t={b['t']} (unix {b['unix']}): "
              f"{b['foreign_sockets']} (another process joined its SO_REUSEPORT group)")
    for side in ("relay", "load"):
        k = f"kernel_drops_{side}"
        if int(b[k]) > int(a[k]):
            print(f"kernel drops on the {side}'s sockets at t={b['t']} (unix {b['unix']}): +{int(b[k]) - int(a[k])}")
for t in ("udp", "tcp", "tls"):
    try:
        tr = json.load(open(f"{out}/load-{t}.json"))["traffic"]
    except (OSError, ValueError, KeyError) as e:
        problems.append(f"no report for {t}: {e}")
        continue
    print(f"{t}: sent {tr['sent']}, delivered {tr['delivered']}, lost {tr['lost']}")
    if tr["lost"] != 0 or tr["sent"] == 0:
        problems.append(f"{t}: lost {tr['lost']} of {tr['sent']}")
for name in ("churn", "revocations", "reloads"):
    n = open(f"{out}/{name}").read().strip() if os.path.exists(f"{out}/{name}") else "0"
    print(f"{name}: {n}")
    if n == "0":
        problems.append(f"no {name} happened")
if os.path.exists(f"{out}/failures"):
    problems += open(f"{out}/failures").read().splitlines()
for p in problems:
    print(f"FAIL: {p}")
print("PASS" if not problems else "FAIL")
sys.exit(1 if problems else 0)
EOF
exit $status
