# syntax=docker/dockerfile:1
# One image for every BlameTrail service; the command picks the module (`python -m <module>`):
#   docker build -t blametrail:dev .
#   docker run blametrail:dev blametrail_ingest                    # 8081
#   docker run blametrail:dev blametrail_mappings_api              # 8082
#   docker run blametrail:dev blametrail_normalizer                # 8083 (health)
#   docker run blametrail:dev blametrail_enricher                  # 8084 (health)
#   docker run blametrail:dev blametrail_projector                 # 8085 (health)
#   docker run blametrail:dev blametrail_suspects                  # 8086 (health)
#   docker run blametrail:dev blametrail_sync                      # 8089 (health)
#   docker run blametrail:dev blametrail_web                       # 8087 (the pages)
#   docker run blametrail:dev blametrail_common.cli topics ensure  # one-shot operator commands
#   docker run blametrail:dev blametrail_common.cli db migrate
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: resolve the locked dependencies into /app/.venv ----------------------------------
FROM ${PYTHON_IMAGE} AS build
# Compilers only here, for any dependency that ships no wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
# uv from PyPI, the same version the Makefile uses.
RUN python -m pip install --no-cache-dir --disable-pip-version-check uv==0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# The services that run from this image (devstack and the Sentry stand-in are development only).
ARG PACKAGES="--package blametrail-ingest --package blametrail-mappings-api --package blametrail-normalizer --package blametrail-enricher --package blametrail-projector --package blametrail-suspects --package blametrail-sync --package blametrail-replay --package blametrail-web --package blametrail-reconciler"
# 1. Third-party dependencies only, from the lock: this layer changes only when uv.lock does.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=libs,target=libs \
    --mount=type=bind,source=services,target=services \
    uv sync --frozen --no-dev --no-install-workspace ${PACKAGES}
# 2. Our packages, installed (not editable) into the same venv.
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable ${PACKAGES}

# --- runtime: the venv, tini and a non-root user; no compilers, no uv, no sources -------------
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 blametrail \
 && useradd --system --uid 10001 --gid blametrail --home-dir /app --no-create-home blametrail \
 && mkdir -p /var/lib/blametrail/spool /var/lib/blametrail/normalizer \
 && chown -R 10001:10001 /var/lib/blametrail
COPY --from=build --chown=root:root /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BLAMETRAIL_INGEST_HOST=0.0.0.0 \
    BLAMETRAIL_API_HOST=0.0.0.0 \
    BLAMETRAIL_NORMALIZER_HOST=0.0.0.0 \
    BLAMETRAIL_ENRICHER_HOST=0.0.0.0 \
    BLAMETRAIL_PROJECTION_HOST=0.0.0.0 \
    BLAMETRAIL_SUSPECTS_HOST=0.0.0.0 \
    BLAMETRAIL_INGEST_SPOOL_DIR=/var/lib/blametrail/spool
# faust keeps its data directory under the working directory: a writable volume in compose/k8s.
WORKDIR /var/lib/blametrail/normalizer
USER 10001:10001
EXPOSE 8081 8082 8083 8084 8085 8086
# Whichever service runs answers /healthz on its own port (each container serves exactly one).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u\nports = [os.environ.get(f'BLAMETRAIL_{s}_PORT', d) for s, d in (('INGEST', '8081'), ('API', '8082'), ('NORMALIZER', '8083'), ('ENRICHER', '8084'), ('PROJECTION', '8085'), ('SUSPECTS', '8086'))]\nfor p in ports:\n    try:\n        u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=2)\n        sys.exit(0)\n    except OSError:\n        pass\nsys.exit(1)"]
# tini is PID 1: it forwards SIGTERM to the service (which drains and commits) and reaps zombies.
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m"]
CMD ["blametrail_ingest"]
