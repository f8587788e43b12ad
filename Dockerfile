# syntax=docker/dockerfile:1
# pgrelay image: built with the official Rust image, run on a slim Debian as a non-root user.
#   docker build -t pgrelay .
#   docker run --rm -e DATABASE_URL=postgres://… -e PGRELAY_LISTEN=0.0.0.0:4000 -p 4000:4000 pgrelay

# Build stage. Bookworm, like the runtime stage, so the binary's glibc matches.
ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# What the crate needs to build: the manifest and lock, the sources, and what they embed at
# build time (migrations in sql/, trigger SQL in triggers/, the inspector page in static/).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY triggers ./triggers
COPY static ./static
# The cache mounts keep the registry and the target directory between builds, so a source
# change rebuilds only pgrelay; the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgrelay \
    && cp target/release/pgrelay /usr/local/bin/pgrelay

# Runtime stage: the binary only, plus curl for the compose health check (GET /ready).
# The relay talks to PostgreSQL without TLS, so no CA certificates are needed.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --create-home pgrelay
COPY --from=build /usr/local/bin/pgrelay /usr/local/bin/pgrelay
USER pgrelay:pgrelay
WORKDIR /app
# Trigger SQL is built in; mount a directory at /app/triggers to use edited copies.
ENV PGRELAY_LISTEN=0.0.0.0:4000
EXPOSE 4000
# pgrelay handles SIGTERM itself: it drains and closes sockets with 1001, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgrelay"]
CMD ["serve"]
