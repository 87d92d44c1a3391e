# syntax=docker/dockerfile:1
# portcullis: a small, non-root runtime image with the config at /etc/portcullis/gateway.yaml.
#
#   docker build -t portcullis .
#
# The image holds no configuration and no keys: mount both, and run it as a user that can read
# the key (docs/deployment.md has the docker run, compose and Kubernetes forms).
# deploy/gateway.yaml listens on 0.0.0.0 (reachable through -p) and keeps the admin listener on
# 127.0.0.1:9901, where the HEALTHCHECK looks. scripts/dockerfile-build.sh replays the build
# stage in the test command.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits reuse the cached dependency layer. Cargo reads
# every target the manifest declares before it builds any: the benches come in whole (they
# change rarely), and the library, binary and test get empty stand-ins.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir -p src tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && cargo build --release --locked \
    && rm -rf src tests
COPY gateway.yaml ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && strip target/release/portcullis

FROM debian:bookworm-slim
# ca-certificates for https JWKS fetches; nothing else is needed at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin portcullis \
    && mkdir -p /etc/portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
USER 10001:10001
ENV PORTCULLIS_CONFIG=/etc/portcullis/gateway.yaml \
    PORTCULLIS_ADMIN=127.0.0.1:9901
EXPOSE 8443
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["portcullis", "health"]
ENTRYPOINT ["portcullis"]
CMD ["run"]
