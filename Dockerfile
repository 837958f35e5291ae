# orapush with Oracle Instant Client Basic Light, for the Oracle sources.
#   docker build -t orapush .                                  (the service)
#   docker build --target contract-tests -t orapush-tests .    (tests/compose/e2e.sh)
# Instant Client is downloaded from Oracle under Oracle's license; point
# INSTANT_CLIENT_URL at your own copy where the build cannot reach it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin orapush

FROM debian:bookworm-slim AS instantclient
ARG INSTANT_CLIENT_URL=https://download.oracle.com/otn_software/linux/instantclient/instantclient-basiclite-linuxx64.zip
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl unzip \
 && rm -rf /var/lib/apt/lists/*
RUN curl -fsSL -o /tmp/instantclient.zip "$INSTANT_CLIENT_URL" \
 && mkdir -p /opt/oracle \
 && unzip -q /tmp/instantclient.zip -d /opt/oracle \
 && mv /opt/oracle/instantclient_* /opt/oracle/instantclient \
 && rm /tmp/instantclient.zip

# The contract suite (tests/contract.rs) against a real Oracle: run by
# tests/compose/e2e.sh with ORAPUSH_TEST_ORACLE pointing at the compose database.
FROM build AS contract-tests
RUN apt-get update && apt-get install -y --no-install-recommends libaio1 && rm -rf /var/lib/apt/lists/*
COPY --from=instantclient /opt/oracle/instantclient /opt/oracle/instantclient
RUN echo /opt/oracle/instantclient > /etc/ld.so.conf.d/oracle-instantclient.conf && ldconfig
RUN cargo test --release --locked --test contract --no-run
# ORAPUSH_TEST_ORACLE (set at run time) turns the Oracle tests on (build.rs).
CMD ["cargo", "test", "--release", "--locked", "--test", "contract", "--", "--test-threads=1", "oracle"]

FROM debian:bookworm-slim AS runtime
# libaio1 is Instant Client's one system dependency on bookworm (trixie:
# libaio1t64 plus a libaio.so.1 symlink).
RUN apt-get update && apt-get install -y --no-install-recommends libaio1 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=instantclient /opt/oracle/instantclient /opt/oracle/instantclient
RUN echo /opt/oracle/instantclient > /etc/ld.so.conf.d/oracle-instantclient.conf && ldconfig
COPY --from=build /src/target/release/orapush /usr/local/bin/orapush
WORKDIR /var/lib/orapush
ENV ORAPUSH__SERVER__LISTEN=0.0.0.0:8080 RUST_LOG=info
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=24 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["/usr/local/bin/orapush"]
CMD ["serve"]
