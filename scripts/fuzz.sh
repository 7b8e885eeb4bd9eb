#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (libFuzzer, with sanitizers):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# SECONDS_PER_TARGET defaults to 300; the test command (scripts/test.sh) runs each for 5 s.
# Targets: stun_engine, channel_data, stream_framing, rest_username, config, issuer_body (all by
# default). Each starts from the committed seed corpus fuzz/corpus/<target>/ (built by
# fuzz/seeds.py from the test vectors) plus what earlier runs found in fuzz/work/<target>/
# (not committed). A crash stops the run with a non-zero exit, and its input is saved in
# fuzz/artifacts/<target>/; replay it with `RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET FILE`.
#
# cargo-fuzz passes nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-300}"
shift || true
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi

cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/$t"
  echo "fuzz: $t for ${secs}s"
  log="fuzz/work/$t.log"
  rc=0
  cargo fuzz run -O "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$log" || true
  if [ "$rc" -ne 0 ]; then
    grep -E -A20 'panicked|==[0-9]+==ERROR|SUMMARY' "$log" | head -60 >&2 || true
    echo "fuzz: $t FAILED (log $log, input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
done
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
