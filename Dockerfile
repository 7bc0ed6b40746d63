# syntax=docker/dockerfile:1.7
# Switchboard gateway image: Python 3.11 + the gateway + Deno (PyPI `deno`) + Pyodide (npm),
# all baked in so a pod needs no network at start. Runs as uid 10001 on a read-only root
# file system; writable paths are volumes: /tmp (DENO_DIR) and /var/lib/switchboard (state).
#
#   docker build -t switchboard:0.1.0 --build-arg VERSION=0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg SOURCE_URL="$(git remote get-url origin)" .
#
# Base images are pinned by tag; pin them by digest too in your registry mirror
# (PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG NODE_IMAGE=node:22.21.1-bookworm-slim

# --- Stage 1: Pyodide from the npm registry, exactly as locked -------------------------------
FROM ${NODE_IMAGE} AS pyodide
WORKDIR /build/runtimes
COPY runtimes/package.json runtimes/package-lock.json ./
# --omit=dev drops test data (GitHub's OpenAPI spec); --ignore-scripts runs no install hooks.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error \
 && test -f node_modules/pyodide/pyodide.asm.wasm

# --- Stage 2: the virtualenv (pinned wheels, Deno binary) and the app tree --------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN python -m venv /app/.venv
COPY pyproject.toml requirements.lock README.md ./
COPY gateway/ gateway/
COPY proto/ proto/
COPY policies/ policies/
COPY runtimes/ runtimes/
COPY clients/python/ clients/python/
# Runtime dependencies only, each at the version pinned in requirements.lock; the gateway
# itself as an editable install so /app mirrors the repository layout it is tested in.
RUN /app/.venv/bin/pip install --constraint requirements.lock --editable . \
 && /app/.venv/bin/pip install --no-deps --editable clients/python \
 && /app/.venv/bin/python -c 'import gateway.client, switchboard_client' \
 && chmod 0755 "$(/app/.venv/bin/python -c 'import deno; print(deno.find_deno_bin())')" \
 && /app/.venv/bin/deno --version \
 && /app/.venv/bin/switchboard --help >/dev/null \
 && (/app/.venv/bin/python -m compileall -q /app/gateway /app/.venv/lib \
     || echo "compileall: some files were not byte-compiled (they still import)")
COPY --from=pyodide /build/runtimes/node_modules/ runtimes/node_modules/

# --- Stage 3: the runtime image ---------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="Policy-routing gRPC gateway for AI agents: Rego routes every action to validated tools or a Pyodide code sandbox." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# tini reaps the Deno worker processes and forwards SIGTERM for a graceful drain.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin switchboard \
 && mkdir -p /etc/switchboard/policies /etc/switchboard/secrets /var/lib/switchboard \
 && chown 10001:10001 /var/lib/switchboard

# Code and dependencies are owned by root and read-only for the gateway user.
COPY --from=builder /app /app

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DENO_DIR=/tmp/deno \
    DENO_NO_UPDATE_CHECK=1 \
    DENO_NO_PROMPT=1 \
    HOME=/tmp
WORKDIR /app
USER 10001:10001
EXPOSE 50051 8765
# Kubernetes probes gRPC health (grpc.health.v1); no HEALTHCHECK in the image.
ENTRYPOINT ["/usr/bin/tini", "--", "switchboard"]
CMD ["serve", "--config", "/etc/switchboard/config.yaml"]
