#!/usr/bin/env bash
# Builds target/debian/turnkey_<version>-1_amd64.deb with crates.io's cargo-deb
# (`cargo install --locked cargo-deb`): the release binary, deploy/systemd/turnkey.service,
# /etc/turnkey/turnkey.toml (deploy/packaging/turnkey.toml), and the man pages and shell
# completions generated from the real CLI by `turnkey gen-docs`. Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The same package selection as the README's `cargo run --release` (the workspace's default
# members), so one release build serves both (features unify per selection).
cargo build --release --locked --bin turnkey >&2
rm -rf target/release/turnkey-docs
target/release/turnkey gen-docs target/release/turnkey-docs
gzip -9n target/release/turnkey-docs/man/man1/*.1
cargo deb -p turnkey --no-build --locked "$@"
