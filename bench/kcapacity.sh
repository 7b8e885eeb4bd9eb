#!/usr/bin/env bash
# Capacity at <= 0.1% loss with the load offered from the kernel (bench/kcapacity.py): every
# server on core 0 behind the XDP wire, the generator's core offering ChannelData on a packet
# socket and answering and counting it in XDP, no socket touching a datagram on its side.
#   COTURN_4171_BIN=/path/to/turnserver bench/kcapacity.sh [--reps N] [--kinds turnkey-xdp,...]
# Root, clang, bpftool, cc (scripts/install-test-tools.sh); docs/benchmarks.md,
# "Capacity with a kernel generator", has the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/kcapacity.py "$@"
