# agentsync-proxy as a container image.
#
#   docker build -t agentsync-proxy .
#   docker run --rm -p 8080:8080 --stop-timeout 30 \
#     -e AGENTSYNC_PROXY_ALLOWED_CLIENTS=172.16.0.0/12 \
#     -e AGENTSYNC_CLIENT_ID=my-client-id \
#     -e AGENTSYNC_CLIENT_SECRET_FILE=/run/secrets/agentsync_client_secret \
#     -v "$PWD/agentsync_client_secret:/run/secrets/agentsync_client_secret:ro" \
#     agentsync-proxy
#
# Inside a container the proxy must listen on 0.0.0.0 to be reachable at all, and on a
# non-loopback address it refuses to start (exit 2) until AGENTSYNC_PROXY_ALLOWED_CLIENTS says
# who may borrow its credentials: the container network's CIDR (Docker's default bridges are in
# 172.16.0.0/12, a Kubernetes pod CIDR is often 10.0.0.0/8). Clients that call it by a name
# (http://agentsync-proxy:8080) also need that name in AGENTSYNC_PROXY_ALLOWED_HOSTS.
#
# Give the client secret as a mounted file (a Docker or Kubernetes secret), never as an
# environment variable that `docker inspect` shows: AGENTSYNC_CLIENT_SECRET_FILE=/run/secrets/...
# The file must be readable by uid 10001; it is re-read at every token request, so a rotated
# secret needs no restart.
#
# tests/test_container.py builds a virtual environment the way this file does and runs the
# ENTRYPOINT, CMD, ENV and HEALTHCHECK below, since CI has no Docker engine.

# Both stages share one base, so the virtual environment's python links stay valid.
FROM python:3.11-slim-bookworm AS base

# The builder makes the wheel (hatchling comes from the index) and installs it with its
# dependencies, all of which ship as wheels: no compiler is needed anywhere.
FROM base AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY config/ config/
COPY proxy/ proxy/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /src/dist . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src/dist/*.whl

# The final image: the base plus the virtual environment, nothing from the build.
FROM base AS runtime
RUN groupadd --system --gid 10001 agentsync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin agentsync
COPY --from=builder /opt/venv /opt/venv
# AGENTSYNC_PROXY_ALLOWED_CLIENTS is deliberately not set: the operator must choose it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AGENTSYNC_PROXY_LISTEN=0.0.0.0:8080 \
    AGENTSYNC_PROXY_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# Liveness without curl: python's urllib, on the port AGENTSYNC_PROXY_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('AGENTSYNC_PROXY_LISTEN', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/-/healthy', timeout=4)"]
# SIGTERM: stop accepting, report not ready, let in-flight requests finish, exit 0. The exec
# form makes the proxy PID 1, so the signal reaches it rather than a shell. Keep
# AGENTSYNC_PROXY_SHUTDOWN_TIMEOUT (25 s) under the orchestrator's grace period: docker waits
# 10 s unless run with --stop-timeout 30; Kubernetes waits 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["agentsync-proxy"]
CMD ["serve"]
