# turnkey container image (docs/deploy.md#container-image).
#   docker build -t turnkey .                       build from source (stage `build`)
#   docker build --target prebuilt -t turnkey .     copy an existing target/release/turnkey
# BUILDER and BASE choose the images: the tests build offline from a Debian root made with
# debootstrap (`--build-arg BASE=localhost/turnkey-base:bookworm --target prebuilt`).
ARG BUILDER=docker.io/library/rust:1-bookworm
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests tests
COPY docs/api docs/api
# The commit for `turnkey --version` and turnkey_build_info (no .git in the build context).
ARG TURNKEY_GIT_COMMIT=unknown
ENV TURNKEY_GIT_COMMIT=${TURNKEY_GIT_COMMIT}
RUN cargo build --release --locked -p turnkey --bin turnkey \
 && install -m 0755 target/release/turnkey /turnkey

FROM ${BASE} AS runtime-base
# A fixed non-root user; /var/lib/turnkey is its data directory (secret, keys, usage).
RUN groupadd --system --gid 10001 turnkey \
 && useradd --system --uid 10001 --gid turnkey --home-dir /var/lib/turnkey --shell /usr/sbin/nologin turnkey \
 && install -d -o turnkey -g turnkey -m 0700 /var/lib/turnkey \
 && install -d -m 0755 /etc/turnkey
COPY deploy/packaging/turnkey.toml /etc/turnkey/turnkey.toml
VOLUME ["/var/lib/turnkey"]
# STUN/TURN (udp, tcp), TURN over TLS, the issuer, metrics. The relay port range
# (49152-65535/udp by default) must be reachable too: run with --network host, or publish a
# narrowed range (docs/deploy.md).
EXPOSE 3478/udp 3478/tcp 5349/tcp 8080/tcp 9641/tcp
# /readyz answers 200 when the relay is up, not draining and below capacity (bash's /dev/tcp:
# no curl in the image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /readyz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
USER turnkey:turnkey
WORKDIR /var/lib/turnkey
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/turnkey"]
CMD ["serve", "--config", "/etc/turnkey/turnkey.toml"]

# The binary from the build context (target/release/turnkey, built on a bookworm-compatible host).
FROM runtime-base AS prebuilt
COPY target/release/turnkey /usr/bin/turnkey

# Default target: the binary built from source above.
FROM runtime-base AS runtime
COPY --from=build /turnkey /usr/bin/turnkey
