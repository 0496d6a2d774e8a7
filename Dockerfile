# syntax=docker/dockerfile:1.7
# The image of each service; SERVICE names the workspace member, which is also its console command:
#   docker build --build-arg SERVICE=chat-gateway -t chat-gateway .   # WebSocket gateway, GATEWAY_PORT 3000
#   docker build --build-arg SERVICE=llm-worker -t llm-worker .       # /health, /metrics on WORKER_METRICS_PORT 3200
#   docker build --build-arg SERVICE=chat-monitor -t chat-monitor .   # monitor, MONITOR_PORT 3100
# Build from the repository root, which holds the uv workspace and its lock.
# Steps (uv's Docker guide): the member's third-party dependencies from uv.lock first (a layer that
# survives source edits), then the workspace code, non-editable; only the virtualenv reaches the
# slim runtime image, which runs as a non-root user. The last stages set what differs per service.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
# No default: every build names its service (without SERVICE the last FROM has no base and fails).
ARG SERVICE

FROM ${UV_IMAGE} AS uv

# Every pyproject.toml of the workspace plus the lock, and nothing else: this stage's output changes
# only when a manifest or the lock does, so the dependency layer below stays cached.
FROM ${PYTHON_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN mkdir /manifests \
 && find . -name pyproject.toml -not -path "./.venv/*" -exec cp --parents {} /manifests/ \; \
 && cp uv.lock /manifests/

FROM ${PYTHON_IMAGE} AS builder
ARG SERVICE
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
COPY --from=manifests /manifests/ ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-workspace --package "${SERVICE}"
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable --package "${SERVICE}"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chat
# The virtualenv stays owned by root: the service only reads it.
COPY --from=builder /app/.venv /app/.venv
COPY deploy/docker/healthcheck.py /app/healthcheck.py
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
STOPSIGNAL SIGTERM

# One stage per service, named after its member: its port, the role its health check asks /readyz
# for, and its command. Exec form, literally: the service is PID 1 and receives SIGTERM itself (graceful
# shutdown), no shell between, which is why these are stages and not build arguments (CMD and
# HEALTHCHECK do not expand them).
FROM runtime AS chat-gateway
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "gateway"]
CMD ["chat-gateway"]

FROM runtime AS llm-worker
EXPOSE 3200
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "worker"]
CMD ["llm-worker"]

FROM runtime AS chat-monitor
EXPOSE 3100
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "monitor"]
CMD ["chat-monitor"]

# The image: the stage of the service asked for (BuildKit builds only the stages it needs).
FROM ${SERVICE}
