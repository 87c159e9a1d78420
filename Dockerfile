# drawbridge container image.
#
#   docker build -t drawbridge:local .
#   docker run --rm -p 8080:8080 -p 8443:8443 -p 127.0.0.1:9090:9090 \
#     -e DRAWBRIDGE_ADMIN_TOKEN=... drawbridge:local
#
# The default command serves /etc/drawbridge/conf/drawbridge.yaml
# (conf/docker.yaml), whose pages are /etc/drawbridge/static/*.html: the
# repository's conf/ + static/ layout, since files named in a config are
# resolved relative to its folder (`../static/error.html`). Mount your own
# config over it (and pages under /etc/drawbridge/static), or pass another
# command, e.g. `check -c /etc/drawbridge/conf/drawbridge.yaml` or
# `demo-upstream --name app-01 --listen 0.0.0.0:8081`.

# ---------------------------------------------------------------- build stage
FROM rust:1-bookworm AS builder

# cmake: needed by the native zlib-ng build of a Pingora dependency.
# wrk, curl and llvm-tools: the profile-guided optimisation's training run.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake wrk curl \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools

WORKDIR /src
COPY . .
# The production profile (fat LTO) with profile-guided optimisation: an
# instrumented build serves a short loopback training load, then the final
# build uses its profile (deploy/pgo/build.sh; about 1.3x the requests per
# CPU-second of the plain build). `--build-arg PGO=0` builds without it.
ARG PGO=1
RUN if [ "$PGO" = 1 ]; then \
      CARGO_FLAGS=--locked NO_INSTALL=1 deploy/pgo/build.sh \
      && cp target/pgo/production/drawbridge /usr/local/bin/drawbridge; \
    else \
      cargo build --profile production --locked \
      && cp target/production/drawbridge /usr/local/bin/drawbridge; \
    fi

# -------------------------------------------------------------- runtime stage
FROM debian:bookworm-slim

# ca-certificates for outbound TLS, curl for the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# Unprivileged user; the state directory is the only place it writes
# (plus the upgrade socket and pid file in /tmp).
RUN groupadd --system --gid 10001 drawbridge \
 && useradd --system --uid 10001 --gid drawbridge --home-dir /var/lib/drawbridge \
      --no-create-home --shell /usr/sbin/nologin drawbridge \
 && install -d -o drawbridge -g drawbridge -m 0750 /var/lib/drawbridge

COPY --from=builder /usr/local/bin/drawbridge /usr/local/bin/drawbridge
COPY static /etc/drawbridge/static
COPY conf/docker.yaml /etc/drawbridge/conf/drawbridge.yaml
# A self-signed certificate for the HTTPS listener's first start; mount real
# ones over these two files (see conf/docker.yaml).
RUN drawbridge self-signed-cert /etc/drawbridge/tls --name localhost \
 && chown -R drawbridge:drawbridge /etc/drawbridge/tls

ENV RUST_LOG=info
WORKDIR /var/lib/drawbridge
USER drawbridge:drawbridge

# Runtime state (maintenance switches, drained servers, weights): keep it
# across container restarts and image upgrades.
VOLUME /var/lib/drawbridge

# 8080 proxy (http), 8443 proxy (https, HTTP/2), 9090 admin API and
# /healthz, 9091 Prometheus /metrics.
EXPOSE 8080 8443 9090 9091

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/healthz || exit 1

ENTRYPOINT ["drawbridge"]
CMD ["run", "-c", "/etc/drawbridge/conf/drawbridge.yaml"]
