# Multi-stage build: dependencies compile in their own cached layer; the runtime image is
# Debian slim with one static-ish binary, running as an unprivileged user. Public CA roots
# are compiled into the binary (webpki-roots), so the image needs no CA bundle. No
# `# syntax=` line: BuildKit would fetch a frontend image from a registry; the built-in
# Dockerfile frontend is enough, so only the two base images are ever pulled.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only: a placeholder crate with the real manifest and lock file, so this
#    layer is rebuilt only when Cargo.toml or Cargo.lock change. Cargo.toml declares the
#    bench targets, whose files must exist for it to parse: placeholders too.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src sql/migrations benches \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for bench in probe_cost ingest evaluator wire_accuracy footprint; do echo 'fn main() {}' > "benches/$bench.rs"; done \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/vantage-* target/release/deps/vantage-* target/release/deps/libvantage-*
# 2. The application itself.
COPY src src
COPY sql sql
# The release profile's line tables are stripped from the image's copy (they doubled the
# image); backtraces still name functions through the symbol table, which is kept.
RUN cargo build --release --locked --bin vantage \
 && strip --strip-debug target/release/vantage

FROM debian:bookworm-slim
# User and group share one fixed id (10001), so `USER`, file ownership and volume
# permissions all agree.
RUN groupadd --system --gid 10001 vantage \
 && useradd --system --uid 10001 --gid vantage --home-dir /var/lib/vantage --create-home vantage \
 && mkdir -p /var/lib/vantage/spool && chown vantage:vantage /var/lib/vantage/spool
COPY --from=build /src/target/release/vantage /usr/local/bin/vantage
USER 10001:10001
ENV VANTAGE_LOG_FORMAT=json \
    VANTAGE_LISTEN=0.0.0.0:9790 \
    VANTAGE_SPOOL_DIR=/var/lib/vantage/spool
VOLUME ["/var/lib/vantage/spool"]
EXPOSE 9790
# The binary checks itself: a real probe of its own /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["vantage", "check", "--timeout", "3s", "http://127.0.0.1:9790/healthz"]
ENTRYPOINT ["vantage"]
CMD ["run"]
