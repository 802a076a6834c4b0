# syntax=docker/dockerfile:1
# One image for every PRX CI binary: the six services and the `prx-ci` CLI, on distroless (glibc
# and CA certificates, no shell, no package manager), running as non-root. ENTRYPOINT is unset;
# the command picks the binary, and the default is the ingress:
#
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" -t prx-ci .
#   docker run prx-ci prx-ci-dispatcher --config /etc/prx-ci/prx-ci.toml
#
# docs/operations.md, "The container image". services/ops/tests/deploy.rs checks this file
# (hadolint; the binaries against the workspace's).

# The workspace's rust-version (Cargo.toml); the test above checks that they agree.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-trixie AS builder
WORKDIR /src
COPY . .
# The binaries by name rather than `--workspace --bins`: that would also build the chaos driver
# (tests/chaos), whose prx-ci-shared "testing" feature would then be unified into every binary.
# The registry and target/ are cache mounts, in no layer, so the binaries are copied out in the
# same step. --strip-debug drops the line tables and keeps the symbols, so a panic's backtrace
# still names its functions.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
      --bin prx-ci \
      --bin prx-ci-ingress \
      --bin prx-ci-dispatcher \
      --bin prx-ci-build-watcher \
      --bin prx-ci-publisher \
      --bin prx-ci-notifier \
      --bin prx-ci-ops \
    && mkdir /out \
    && for bin in prx-ci prx-ci-ingress prx-ci-dispatcher prx-ci-build-watcher prx-ci-publisher prx-ci-notifier prx-ci-ops; do \
         strip --strip-debug -o "/out/$bin" "target/release/$bin"; \
       done

# Debian 13 (glibc, libgcc, CA certificates), as the builder, so the binaries run on the glibc
# they were linked against. Not Debian 12: distroless updates a Debian release's images until one
# year after the next release (SUPPORT_POLICY.md), so cc-debian12's ended in August 2026. The
# :nonroot tag's user is 65532.
FROM gcr.io/distroless/cc-debian13:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="prx-ci" \
      org.opencontainers.image.description="PRX CI: webhook-driven builds, notifications and deploy pointers over NATS JetStream (every service binary and the prx-ci CLI)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

# The binaries built and stripped above, onto distroless's PATH.
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532

# Each service serves /healthz on its own address, so the container sets PRX_CI_HEALTHZ_URL
# (docker-compose.yml does); without it the check fails and says so. The probe gives up after
# 3 s, inside Docker's 5 s timeout, so a hung service shows the probe's message.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD ["prx-ci", "healthz"]

CMD ["prx-ci-ingress"]
