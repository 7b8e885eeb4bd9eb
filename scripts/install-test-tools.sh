#!/usr/bin/env bash
# Installs the real peers the test suite drives, when missing:
#   coturn (turnutils_uclient, turnserver), prometheus (prometheus, promtool), chromium (the
#   self-test page's browser test), redis-server (fleet mode's shared state; redis-server,
#   redis-cli; redis-sentinel for the failover tests), iproute2 and ethtool (the veth namespace tests) from Debian, aioice and
#   schemathesis (the OpenAPI fuzzer) from PyPI, cargo-fuzz (the fuzz targets in fuzz/) from
#   crates.io, prlimit (util-linux, the HTTP flood test); golang-go and golang-github-pion-turn.v2-dev
#   (pion/turn's client), firefox-esr and libnss3-tools (Firefox's browser tests); for the operator
#   paths (tests/tests/ops.rs):
#   debootstrap, podman, runc, docker-compose and systemd-analyze from Debian, cargo-deb from
#   crates.io, kubernetes-validate from PyPI; for the kernel fast path (crates/turnkey-fastpath):
#   clang and libbpf-dev (build.rs compiles the XDP program) and bpftool from Debian.
# Under CI=true a tool that cannot be installed is an error; elsewhere it is reported and the tests
# that need it skip with a printed reason.
set -uo pipefail

need_apt=()
command -v turnutils_uclient >/dev/null 2>&1 || need_apt+=(coturn)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || need_apt+=(prometheus)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
{ command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; } || need_apt+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need_apt+=(redis-sentinel)
# The veth tests switch GRO on with ethtool; `ip` (iproute2) makes the namespaces.
command -v ethtool >/dev/null 2>&1 || need_apt+=(ethtool)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)  # the docs' command blocks (tests/tests/docs.rs)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
# The 2-minute soak (tests/tests/soak.rs runs scripts/soak.sh): certificates and the issuer API.
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
{ command -v c++ >/dev/null 2>&1; } || need_apt+=(g++)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
command -v podman >/dev/null 2>&1 || need_apt+=(podman)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# pion/turn's client (tests/tests/pion_turn.rs) is built offline in GOPATH mode from Debian's Go
# sources; Firefox (firefox-esr) is the second browser of the browser tests, with certutil
# (libnss3-tools) for the test CA in its profile.
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
[ -f /usr/share/gocode/src/github.com/pion/turn/v2/client.go ] || need_apt+=(golang-github-pion-turn.v2-dev)
command -v firefox-esr >/dev/null 2>&1 || need_apt+=(firefox-esr)
command -v certutil >/dev/null 2>&1 || need_apt+=(libnss3-tools)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need_apt+=(libbpf-dev)
command -v bpftool >/dev/null 2>&1 || need_apt+=(bpftool)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

fail=0
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-test-tools: apt-get install ${need_apt[*]}"
  as_root apt-get update -qq >/dev/null && \
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null || fail=1
fi
# The packaged turnserver service must not hold the default ports during tests.
if command -v systemctl >/dev/null 2>&1; then
  as_root systemctl stop coturn >/dev/null 2>&1 || true
  as_root systemctl stop prometheus >/dev/null 2>&1 || true
  as_root systemctl stop redis-server >/dev/null 2>&1 || true
  as_root systemctl stop redis-sentinel >/dev/null 2>&1 || true
fi

if ! python3 -c 'import aioice' >/dev/null 2>&1; then
  echo "install-test-tools: pip install aioice"
  python3 -m pip install -q aioice >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages aioice >/dev/null 2>&1 || fail=1
fi

if ! python3 -c 'import schemathesis' >/dev/null 2>&1; then
  echo "install-test-tools: pip install schemathesis"
  python3 -m pip install -q 'schemathesis>=4,<5' >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages 'schemathesis>=4,<5' >/dev/null 2>&1 || fail=1
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "install-test-tools: cargo install --locked cargo-fuzz"
  cargo install -q --locked cargo-fuzz >/dev/null 2>&1 || fail=1
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "install-test-tools: pip install kubernetes-validate"
  python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 || python3 -m pip install -q --break-system-packages kubernetes-validate >/dev/null 2>&1 || fail=1
fi

if ! cargo deb --version >/dev/null 2>&1; then
  echo "install-test-tools: cargo install --locked cargo-deb"
  cargo install --locked cargo-deb >/dev/null 2>&1 || fail=1
fi

missing=()
command -v turnutils_uclient >/dev/null 2>&1 || missing+=(turnutils_uclient)
command -v turnserver >/dev/null 2>&1 || missing+=(turnserver)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-cli)
command -v redis-sentinel >/dev/null 2>&1 || missing+=(redis-sentinel)
command -v ethtool >/dev/null 2>&1 || missing+=(ethtool)
command -v ip >/dev/null 2>&1 || missing+=(ip)
python3 -c 'import aioice' >/dev/null 2>&1 || missing+=(aioice)
python3 -c 'import schemathesis' >/dev/null 2>&1 || missing+=(schemathesis)
command -v prlimit >/dev/null 2>&1 || missing+=(prlimit)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v curl >/dev/null 2>&1 || missing+=(curl)
cargo fuzz --version >/dev/null 2>&1 || missing+=(cargo-fuzz)
[ -f /usr/share/gocode/src/github.com/pion/turn/v2/client.go ] || missing+=(golang-github-pion-turn.v2-dev)
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
for t in go firefox-esr certutil; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
for t in debootstrap podman runc docker-compose systemd-analyze kubernetes-validate cargo-deb clang bpftool; do
  command -v "$t" >/dev/null 2>&1 || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-tools: missing after install: ${missing[*]}" >&2
  if [ "${CI:-}" = "true" ]; then exit 1; fi
fi
exit 0
