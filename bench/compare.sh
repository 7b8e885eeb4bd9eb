#!/usr/bin/env bash
# coturn vs turnkey side by side on this machine: server pinned to core 0, `turnkey load` to core 1.
# Writes target/bench/compare.{json,md}; docs/benchmarks.md quotes compare.md.
#   bench/compare.sh            full run (3 repetitions, about 15 minutes on 2 cores)
#   bench/compare.sh --quick    one repetition, fewer configurations (a few minutes)
#   bench/compare.sh --only profiles   CPU per message for the smooth/audio/video traffic shapes
#   bench/compare.sh --only udp --net veth --fast-path --kernel-echo   the kernel fast path: two
#     namespaces on a veth, each end's NAPI threads on its side's core, the echo peer in the kernel
#     (root, clang, bpftool, tc; docs/benchmarks.md "The kernel fast path"); add --wire xdp to have
#     frames reach the server's end as from a NIC (a middle namespace redirecting them in XDP)
# With COTURN_4171_BIN=/path/to/turnserver (coturn 4.17.1, built from its upstream tag outside this
# repository) every run adds that coturn in its fastest configuration (--udp-gso --multiplex-peer).
# Nothing here fetches or builds coturn. The build used for docs/benchmarks.md (Debian 12):
#   apt-get install build-essential pkg-config libssl-dev libevent-dev libsqlite3-dev
#   git clone --depth 1 --branch 4.17.1 https://github.com/coturn/coturn.git coturn-4.17.1
#   cd coturn-4.17.1 && CFLAGS="-O2 -g" ./configure --prefix="$PWD/inst" && make -j"$(nproc)"
#   COTURN_4171_BIN="$PWD/bin/turnserver" bench/compare.sh
# Give CFLAGS: coturn's configure adds no optimisation flag of its own (it compiles with -g only),
# where Debian's package build passes -O2.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/compare.py "$@"
