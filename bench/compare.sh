#!/usr/bin/env bash
# coturn vs turnkey side by side on this machine: server pinned to core 0, `turnkey load` to core 1.
# Writes target/bench/compare.{json,md}; docs/benchmarks.md quotes compare.md.
#   bench/compare.sh            full run (3 repetitions, about 15 minutes on 2 cores)
#   bench/compare.sh --quick    one repetition, fewer configurations (a few minutes)
#   bench/compare.sh --only profiles   CPU per message for the smooth/audio/video traffic shapes
# With COTURN_4171_BIN=/path/to/turnserver (coturn 4.17.1, built from its upstream tag outside this
# repository) every run adds that coturn in its fastest configuration (--udp-gso --multiplex-peer).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
