# sallyport container image: multi-stage build, debian-slim runtime.
#
#   docker build -t ghcr.io/sallyport/sallyport:0.1.0 .
#
# debian-slim rather than distroless: sessions run a real shell (bash) for
# people and agents, the init container in deploy/deployment.yaml uses
# /bin/sh + install, and preStop uses /bin/sleep. Runs as uid 65532.

FROM rust:1.89-slim-bookworm AS build
# C toolchain extras for aws-lc-sys (russh/rustls crypto) and bundled SQLite.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake perl make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree (see .dockerignore): the manifest names test and bench
# targets, and the binary embeds policies/default.toml.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sallyport \
    && install -D -m 0755 target/release/sallyport /out/sallyport

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates bash openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 sallyport \
    && useradd --uid 65532 --gid 65532 --home-dir /var/lib/sallyport --shell /bin/bash --no-create-home sallyport \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/sallyport
COPY --from=build /out/sallyport /usr/local/bin/sallyport
USER 65532:65532
EXPOSE 2222 8022
ENTRYPOINT ["/usr/local/bin/sallyport"]
CMD ["--config", "/etc/sallyport/sallyport.toml", "serve"]
