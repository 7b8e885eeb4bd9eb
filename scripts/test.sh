#!/usr/bin/env bash
# The whole test suite: installs the real peers it needs, checks formatting and lints, builds the
# binary the end-to-end tests start, runs every test (unit, property, fuzz-style, end-to-end), and
# each cargo-fuzz target for a few seconds (FUZZ_SECS, default 5; longer runs: scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-tools.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
# The release binary the README's `cargo run --release -- serve`, the .deb and the container image
# use (tests/tests/ops.rs): built once here, with the same package selection as `cargo run`.
cargo build --release --locked --bin turnkey
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads "${TEST_THREADS:-4}"
else
  cargo test --workspace --locked --no-fail-fast
fi
scripts/fuzz.sh "${FUZZ_SECS:-5}"
