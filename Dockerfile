# orapush with Oracle Instant Client Basic Light, for the Oracle sources.
#   docker build -t orapush .                                  (the service)
#   docker build --target contract-tests -t orapush-tests .    (tests/compose/e2e.sh, tests/compose/bench.sh)
# Instant Client is downloaded from Oracle under Oracle's license; point
# INSTANT_CLIENT_URL at your own copy where the build cannot reach it.
# Oracle publishes Instant Client for Linux x86-64 and arm64 only: the zip
# is picked by the target architecture (docker build --platform linux/arm64
# on Apple Silicon or Graviton builds the arm64 one), and the build fails
# unless the library loads, so a broken image never gets to start.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin orapush

FROM debian:bookworm-slim AS instantclient
# Set by BuildKit for the platform being built; the legacy builder leaves it
# empty, and then the image's own architecture is the target.
ARG TARGETARCH
ARG INSTANT_CLIENT_URL=
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/*
# The versionless links always serve the latest release; the arm64 zip has
# a hyphen where the x86-64 one has none.
RUN set -eu; \
    arch="${TARGETARCH:-$(dpkg --print-architecture)}"; \
    url="$INSTANT_CLIENT_URL"; \
    if [ -z "$url" ]; then \
      case "$arch" in \
        amd64) zip=instantclient-basiclite-linuxx64.zip ;; \
        arm64) zip=instantclient-basiclite-linux-arm64.zip ;; \
        *) echo "Oracle publishes no Instant Client for linux/$arch (only amd64 and arm64)." >&2; \
           echo "Build with --platform linux/amd64 or linux/arm64, or set --build-arg INSTANT_CLIENT_URL=<a zip for $arch>." >&2; \
           exit 1 ;; \
      esac; \
      url="https://download.oracle.com/otn_software/linux/instantclient/$zip"; \
    fi; \
    echo "Instant Client for $arch: $url"; \
    curl -fsSL -o /tmp/instantclient.zip "$url"; \
    mkdir -p /opt/oracle; \
    unzip -q /tmp/instantclient.zip -d /opt/oracle; \
    mv /opt/oracle/instantclient_* /opt/oracle/instantclient; \
    rm /tmp/instantclient.zip

# The contract suite (tests/contract.rs) against a real Oracle, and the
# compose bench (benches/bridge.rs --target-ws): run by tests/compose/e2e.sh
# and tests/compose/bench.sh on the compose network.
FROM build AS contract-tests
# libaio1: Instant Client's one system dependency on bookworm, amd64 and
# arm64 alike (trixie renames it libaio1t64, without the libaio.so.1 name).
RUN apt-get update && apt-get install -y --no-install-recommends libaio1 && rm -rf /var/lib/apt/lists/*
COPY --from=instantclient /opt/oracle/instantclient /opt/oracle/instantclient
RUN echo /opt/oracle/instantclient > /etc/ld.so.conf.d/oracle-instantclient.conf && ldconfig
# Fail here, not in the first test, when the library cannot load: it must be
# in the loader's cache with every dependency found, and the orapush binary
# the build stage made must load it (no extra build).
RUN ldconfig -p | grep -q 'libclntsh\.so' \
 || { echo "libclntsh.so is not in the ldconfig cache" >&2; exit 1; }
RUN set -e; deps="$(ldd /opt/oracle/instantclient/libclntsh.so)"; \
    if echo "$deps" | grep 'not found'; then echo "Instant Client misses the libraries above" >&2; exit 1; fi
RUN target/release/orapush check-client
RUN cargo test --release --locked --test contract --no-run \
 && cargo bench --locked --bench bridge --no-run
# ORAPUSH_TEST_ORACLE (set at run time) turns the Oracle tests on (build.rs).
CMD ["cargo", "test", "--release", "--locked", "--test", "contract", "--", "--test-threads=1", "oracle"]

FROM debian:bookworm-slim AS runtime
# libaio1 is Instant Client's one system dependency on bookworm, on amd64
# and arm64 (trixie: libaio1t64 plus a libaio.so.1 symlink).
RUN apt-get update && apt-get install -y --no-install-recommends libaio1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=instantclient /opt/oracle/instantclient /opt/oracle/instantclient
RUN echo /opt/oracle/instantclient > /etc/ld.so.conf.d/oracle-instantclient.conf && ldconfig
COPY --from=build /src/target/release/orapush /usr/local/bin/orapush
# The image build fails, instead of every container start, when Instant
# Client cannot load (wrong architecture, a missing libaio): check-client
# loads it and prints its version, or exits 1 with the DPI-1047 guidance.
RUN orapush check-client
WORKDIR /var/lib/orapush
ENV ORAPUSH__SERVER__LISTEN=0.0.0.0:8080 RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=24 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/orapush"]
CMD ["serve"]
